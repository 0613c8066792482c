//! Behaviour 6: conntrack maps a handshake's flow to a redirected port onto
//! the listen port.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::{
    at, attempt_handshake, describe_handshake, host, HandshakeOutcome, HANDSHAKE_TIMEOUT,
};
use super::context::Context;
use super::verdict::Verdict;
use crate::bounds::{Invalid, Limit};
use crate::conntrack;
use crate::scenario::setup::Setup;
use crate::scenario::topology::Addrs;

/// Conntrack maps a flow to `port` onto the listen port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackRedirect {
    pub port: u16,
}

/// A redirected UDP port of the relay.
const PORT: Limit = Limit::new(
    "port",
    1,
    65535,
    "it is the relay's UDP port the client's flow goes to, and port 0 carries no UDP",
);

impl Check for ConntrackRedirect {
    const INFO: Info = Info {
        results: "conntrack/redirect-PORT",
        behaviours: "6",
        description: "conntrack shows the client's flow to PORT answered from the listen port",
        timeout: HANDSHAKE_TIMEOUT,
        needs_wireguard: true,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "port = 53",
        limits: &[PORT],
        capture_first: true,
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![(format!("conntrack/redirect-{}", self.port), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        Ok(PORT.check(self.port)?)
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        conntrack_redirect(ctx, self.port)
    }
}

fn conntrack_redirect(ctx: &mut Context, port: u16) -> Result<Verdict> {
    let Addrs {
        client_seen: client_public,
        relay_public,
        ..
    } = *ctx.a();
    let listen = ctx.topo.listen_port;
    let expected = format!(
        "a conntrack entry {}:SPORT -> {} whose reply comes from {}",
        host(client_public),
        at(relay_public, port),
        at(relay_public, listen)
    );
    if let Err(why) = ctx.topo.wg() {
        return Ok(Verdict::unsupported(expected, why));
    }
    let (sport, outcome) = attempt_handshake(ctx, port, None)?;
    if !matches!(outcome, HandshakeOutcome::Completed { .. }) {
        return Ok(Verdict::judge(
            false,
            expected,
            describe_handshake(ctx.a(), &outcome, sport, port),
        ));
    }
    let table = ctx.conntrack_text()?;
    let entry = conntrack::parse(&table).into_iter().find(|e| {
        e.protocol == "udp"
            && e.original.src == client_public
            && e.original.dst == relay_public
            && e.original.sport == Some(sport)
            && e.original.dport == Some(port)
    });
    Ok(match entry {
        None => Verdict::judge(
            false,
            expected,
            format!(
                "no conntrack entry for {} -> {}",
                at(client_public, sport),
                at(relay_public, port)
            ),
        ),
        Some(e) => Verdict::judge(
            e.reply.src == relay_public
                && e.reply.sport == Some(listen)
                && e.reply.dst == client_public
                && e.reply.dport == Some(sport),
            expected,
            e.line,
        ),
    })
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn names_its_port() {
        let s = scenario_with("kind = \"conntrack-redirect\"\nport = 4000").unwrap();
        assert_eq!(s.checks[0].result_names(), ["conntrack/redirect-4000"]);
        assert!(scenario_with("kind = \"conntrack-redirect\"\nport = 0").is_err());
    }
}

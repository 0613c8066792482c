//! Behaviours 3 and 5: TCP, UDP and ICMP echo from the client cross the
//! tunnel and the masquerade, reach the internet host from the relay's
//! address, and the replies come back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::{
    describe_seen, ensure_tunnel, exchange, masq_expectation, reply_text, seen_source,
    EXCHANGE_TIMEOUT,
};
use super::context::Context;
use super::verdict::Verdict;
use crate::agent::probes::{self};
use crate::bounds::Invalid;
use crate::scenario::setup::Setup;
use crate::scenario::topology::Addrs;
use crate::types::Protocol;

/// Traffic from the client crosses the tunnel and the NAT, and replies return.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    pub protocols: Vec<Protocol>,
}

impl Check for Forward {
    const INFO: Info = Info {
        results: "forward/tcp, forward/udp, forward/icmp",
        behaviours: "3, 5",
        description: "the client's packet crosses tunnel and NAT, reaches the internet host from the relay's address, and the reply returns",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "protocols = [\"udp\"]",
        limits: &[],
        capture_first: true,
    };
    type Case = Protocol;

    fn cases(&self) -> Vec<(String, Protocol)> {
        self.protocols
            .iter()
            .map(|p| (format!("forward/{p}"), *p))
            .collect()
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        if self.protocols.is_empty() {
            return Err(
                "check forward has nothing to check: name tcp, udp or icmp in `protocols`".into(),
            );
        }
        Ok(())
    }

    fn run(&self, ctx: &mut Context, proto: &Protocol) -> Result<Verdict> {
        forward(ctx, *proto)
    }
}

fn forward(ctx: &mut Context, proto: Protocol) -> Result<Verdict> {
    let Addrs {
        relay_wan,
        internet,
        ..
    } = *ctx.a();
    let expected = masq_expectation(ctx.a(), &proto.to_string().to_uppercase());
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let (reply, tag) = match proto {
        Protocol::Tcp => {
            let tag = ctx.tag("tcp");
            let dest = SocketAddr::new(internet, probes::TCP_PORT);
            (
                exchange(|wait| probes::tcp_echo(&ctx.topo.client, dest, &tag, wait)),
                tag,
            )
        }
        Protocol::Udp => {
            let tag = ctx.tag("udp");
            let dest = SocketAddr::new(internet, probes::UDP_PORT);
            (
                exchange(|wait| probes::udp_echo(&ctx.topo.client, dest, &tag, wait)),
                tag,
            )
        }
        Protocol::Icmp => {
            let id = rand::random::<u16>();
            let icmp = ctx.topo.client_icmp(ctx.family)?;
            let mut seq = 0u16;
            let reply = exchange(|wait| {
                let deadline = Instant::now() + wait;
                let mut got = None;
                while got.is_none() && Instant::now() < deadline {
                    seq += 1;
                    icmp.send_echo(internet, id, seq)?;
                    got = icmp.await_echo_reply(
                        id,
                        seq,
                        (Instant::now() + Duration::from_millis(500)).min(deadline),
                    );
                }
                match got {
                    Some(_) => Ok(()),
                    None => Err(anyhow::anyhow!("no echo reply within {wait:?}")),
                }
            });
            (reply, probes::echo_tag(id, seq))
        }
    };
    let seen = seen_source(ctx, &tag)?;
    let masqueraded = seen.as_ref().map(|s| s.source) == Some(relay_wan);
    let reply_text = reply_text(&reply);
    Ok(Verdict::judge(
        masqueraded && reply.is_ok(),
        expected,
        format!("{}; {reply_text}", describe_seen(ctx.a(), &seen)),
    ))
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn one_result_per_protocol() {
        let s = scenario_with("kind = \"forward\"\nprotocols = [\"tcp\", \"icmp\"]").unwrap();
        assert_eq!(s.checks[0].result_names(), ["forward/tcp", "forward/icmp"]);
        assert!(scenario_with("kind = \"forward\"\nprotocols = []")
            .unwrap_err()
            .contains("nothing to check"));
    }
}

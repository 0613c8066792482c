//! Behaviour 1: a WireGuard handshake completes through the plain port and
//! through every redirected one, each from a fresh source port with a
//! fresh peer.

use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::check::{ports_given, Check, Info, Phase};
use super::common::{
    at, attempt_handshake, describe_handshake, HandshakeOutcome, HANDSHAKE_TIMEOUT,
};
use super::context::Context;
use super::verdict::Verdict;
use crate::bounds::{Invalid, Limit};
use crate::scenario::setup::Setup;
use crate::scenario::topology::Addrs;

/// A handshake completes with the client's endpoint at each port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handshake {
    pub ports: Vec<u16>,
}

/// Each port is a handshake with a fresh peer, one after another.
const PORTS: Limit = Limit::new(
    "ports",
    1,
    32,
    "each port is a handshake with a fresh peer that waits up to 12 s when the kernel fails it: 32 ports take at most 6.4 min per family of a run's 10 min default --timeout",
)
.on("the number of ports");

impl Check for Handshake {
    const INFO: Info = Info {
        results: "handshake/PORT",
        behaviours: "1, 5",
        description: "a WireGuard handshake completes with the client's endpoint at the relay's PORT, from a fresh source port",
        timeout: HANDSHAKE_TIMEOUT,
        needs_wireguard: true,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "ports = [53]",
        limits: &[PORTS],
        capture_first: true,
    };
    type Case = u16;

    fn cases(&self) -> Vec<(String, u16)> {
        self.ports
            .iter()
            .map(|p| (format!("handshake/{p}"), *p))
            .collect()
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        ports_given("handshake", &self.ports, &PORTS)
    }

    fn run(&self, ctx: &mut Context, port: &u16) -> Result<Verdict> {
        handshake(ctx, *port, true)
    }
}

/// How long to wait before concluding that no handshake happens, when the
/// relay does not tell us sooner with an ICMP error.
pub const NO_HANDSHAKE_WAIT: Duration = Duration::from_secs(6);

pub fn handshake(ctx: &mut Context, port: u16, expect: bool) -> Result<Verdict> {
    let Addrs { relay_public, .. } = *ctx.a();
    let wait = (!expect).then_some(NO_HANDSHAKE_WAIT);
    let expected = if expect {
        format!("a WireGuard handshake via {}", at(relay_public, port))
    } else {
        format!("no WireGuard handshake via {}", at(relay_public, port))
    };
    if let Err(why) = ctx.topo.wg() {
        return Ok(Verdict::unsupported(expected, why));
    }
    let (sport, outcome) = attempt_handshake(ctx, port, wait)?;
    let ok = if expect {
        outcome.completed_via(at(relay_public, port))
    } else {
        !matches!(outcome, HandshakeOutcome::Completed { .. })
    };
    Ok(Verdict::judge(
        ok,
        expected,
        describe_handshake(ctx.a(), &outcome, sport, port),
    ))
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn one_result_per_port() {
        let s = scenario_with("kind = \"handshake\"\nports = [51820, 53]").unwrap();
        assert_eq!(
            s.checks[0].result_names(),
            ["handshake/51820", "handshake/53"]
        );
        assert!(scenario_with("kind = \"handshake\"\nports = []").is_err());
    }
}

//! Behaviour 1, the other side: no handshake completes through a port
//! outside the redirected ranges.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::check::{ports_given, Check, Info, Phase};
use super::context::Context;
use super::verdict::Verdict;
use crate::bounds::{Invalid, Limit};
use crate::scenario::setup::Setup;

/// No handshake completes with the client's endpoint at each port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoHandshake {
    pub ports: Vec<u16>,
}

/// Each port waits out the handshake that must not complete.
const PORTS: Limit = Limit::new(
    "ports",
    1,
    32,
    "each port is a result of its own that waits 6 s for a handshake that must not complete (unless an ICMP error says so sooner): 32 ports take up to 3.2 min per family even when all pass",
)
.on("the number of ports");

impl Check for NoHandshake {
    const INFO: Info = Info {
        results: "no-handshake/PORT",
        behaviours: "1",
        description: "no WireGuard handshake completes at PORT (ended early by the relay's ICMP port unreachable)",
        timeout: super::handshake::NO_HANDSHAKE_WAIT,
        needs_wireguard: true,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "ports = [33434]",
        limits: &[PORTS],
        capture_first: true,
    };
    type Case = u16;

    fn cases(&self) -> Vec<(String, u16)> {
        self.ports
            .iter()
            .map(|p| (format!("no-handshake/{p}"), *p))
            .collect()
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        ports_given("no-handshake", &self.ports, &PORTS)
    }

    fn run(&self, ctx: &mut Context, port: &u16) -> Result<Verdict> {
        super::handshake::handshake(ctx, *port, false)
    }
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn one_result_per_port() {
        let s = scenario_with("kind = \"no-handshake\"\nports = [51821]").unwrap();
        assert_eq!(s.checks[0].result_names(), ["no-handshake/51821"]);
    }
}

//! Behaviour 1, the other side: no handshake completes through a port
//! outside the redirected ranges.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::check::{ports_given, Check, Info, Phase};
use super::context::Context;
use super::verdict::Verdict;
use crate::scenario::setup::Setup;

/// No handshake completes with the client's endpoint at each port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoHandshake {
    pub ports: Vec<u16>,
}

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
    };
    type Case = u16;

    fn cases(&self) -> Vec<(String, u16)> {
        self.ports
            .iter()
            .map(|p| (format!("no-handshake/{p}"), *p))
            .collect()
    }

    fn validate(&self, _: &Setup) -> Result<(), String> {
        ports_given("no-handshake", &self.ports)
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

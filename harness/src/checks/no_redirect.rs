//! Behaviour 1, the other side: a plain UDP datagram to a port outside the
//! redirected ranges does not reach the relay's listen port.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::check::{ports_given, Check, Info, Phase};
use super::context::Context;
use super::verdict::Verdict;
use crate::bounds::{Invalid, Limit};
use crate::scenario::setup::Setup;

/// A plain UDP datagram to each port does not reach the listen port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoRedirect {
    pub ports: Vec<u16>,
}

/// Each port waits out the datagram that must not arrive.
const PORTS: Limit = Limit::new(
    "ports",
    1,
    32,
    "each port is a result of its own that waits 3 s for a datagram that must not arrive (unless an ICMP error says so sooner): 32 ports take up to 96 s per family even when all pass",
)
.on("the number of ports");

impl Check for NoRedirect {
    const INFO: Info = Info {
        results: "no-redirect/PORT",
        behaviours: "1",
        description: "a plain UDP datagram to PORT does not reach the listen port",
        timeout: super::redirect::REDIRECT_ABSENT_WAIT,
        needs_wireguard: false,
        phase: Phase::BeforeTunnel,
        per_family: true,
        example: "ports = [33434]",
        limits: &[PORTS],
        capture_first: true,
    };
    type Case = u16;

    fn cases(&self) -> Vec<(String, u16)> {
        self.ports
            .iter()
            .map(|p| (format!("no-redirect/{p}"), *p))
            .collect()
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        ports_given("no-redirect", &self.ports, &PORTS)
    }

    fn run(&self, ctx: &mut Context, port: &u16) -> Result<Verdict> {
        super::redirect::udp_redirect(ctx, *port, false)
    }
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn one_result_per_port() {
        let s = scenario_with("kind = \"no-redirect\"\nports = [33434]").unwrap();
        assert_eq!(s.checks[0].result_names(), ["no-redirect/33434"]);
    }
}

//! A relay slowed on purpose, for the negative control of the gate's
//! performance comparison: its own nftables table drops what the relay
//! forwards beyond a rate, whatever NAT backend the run uses. It changes
//! nothing a correctness check looks at below that rate.

use std::fmt;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::agent::netns::Netns;
use crate::bounds::{Invalid, Limit};

/// The table the fault lives in (never one natvet's backends use).
pub const TABLE: &str = "natvet_perf_fault";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PerfFault {
    /// The relay forwards at most `pps` packets a second (both directions
    /// together) and drops the rest.
    RateLimit { pps: u32 },
}

pub const PPS: Limit = Limit::new(
    "pps",
    10,
    1_000_000,
    "below 10 packets a second even a handshake and its probes' setup exchanges are dropped, and nftables' limit takes rates up to a million a second",
);

impl PerfFault {
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            PerfFault::RateLimit { pps } => Ok(PPS.check(*pps)?),
        }
    }

    /// The nftables script that makes the fault.
    pub fn script(&self) -> String {
        match self {
            PerfFault::RateLimit { pps } => format!(
                "table inet {TABLE} {{\n  chain forward {{\n    type filter hook forward priority -5; policy accept;\n    limit rate over {pps}/second burst {pps} packets drop\n  }}\n}}\n"
            ),
        }
    }

    /// Make it in the relay's namespace.
    pub fn make(&self, relay: &Netns) -> Result<()> {
        let inv = crate::nat::Invocation {
            program: "/usr/sbin/nft",
            args: vec!["-f", "-"],
        };
        crate::agent::topology::run_in(relay, &inv, Some(&self.script())).map(|_| ())
    }
}

impl fmt::Display for PerfFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PerfFault::RateLimit { pps } => {
                write!(f, "the relay forwards at most {pps} packets/s")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_is_a_table_of_its_own() {
        let f = PerfFault::RateLimit { pps: 500 };
        let s = f.script();
        assert!(s.starts_with("table inet natvet_perf_fault {"), "{s}");
        assert!(s.contains("limit rate over 500/second burst 500 packets drop"));
        assert!(PerfFault::RateLimit { pps: 5 }.validate().is_err());
    }
}

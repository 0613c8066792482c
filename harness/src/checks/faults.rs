//! Faults made on purpose while a check runs: for negative controls, and to
//! see that a soak notices an outage and when it began.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::agent::netns::Netns;
use crate::types::IpNet;

/// An nftables table that makes the relay behave like a kernel whose NAT
/// loses UDP replies: every UDP packet of a translated flow (redirect or
/// masquerade) travelling in the reply direction is dropped, forwarded or
/// sent by the relay itself. Untranslated flows (the plain listen port)
/// and TCP and ICMP are untouched. For the negative control of that
/// kernel, and for the benchmark of how long such a kernel takes to vet.
pub const LOSE_NAT_UDP_REPLIES: &str = "table inet kernel_bug {
	chain forwarded_replies {
		type filter hook forward priority 10; policy accept;
		ct direction reply ct status dnat meta l4proto udp drop
		ct direction reply ct status snat meta l4proto udp drop
	}
	chain local_replies {
		type filter hook output priority 10; policy accept;
		ct direction reply ct status dnat meta l4proto udp drop
		ct direction reply ct status snat meta l4proto udp drop
	}
}
";

/// Something done to the relay `at` seconds into the sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub at: u32,
    pub kind: FaultKind,
    /// How long it lasts (`outage`).
    #[serde(default = "default_fault_seconds")]
    pub seconds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `conntrack -F` on the relay, as a careless deploy script does: the
    /// redirect's translation of each session's flow is forgotten, so the
    /// relay answers from its listen port instead of the port the client
    /// chose.
    ConntrackFlush,
    /// For `seconds`, the relay drops what it forwards to the internet
    /// host (a blackhole route): an outage.
    Outage,
}

pub(crate) fn default_fault_seconds() -> u32 {
    5
}

/// Make `faults` on the relay at their times (from the sessions' start).
/// Best effort: a fault that cannot be made is told to the host.
pub fn make_faults(faults: &[Fault], relay: &Netns, internet: IpNet) {
    let start = Instant::now();
    let mut order: Vec<&Fault> = faults.iter().collect();
    order.sort_by_key(|f| f.at);
    for f in order {
        let at = Duration::from_secs(u64::from(f.at));
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let made = match f.kind {
            FaultKind::ConntrackFlush => ["ipv4", "ipv6"].into_iter().try_for_each(|family| {
                let inv = crate::nat::Invocation {
                    program: "/usr/sbin/conntrack",
                    args: vec!["-F", "-f", family],
                };
                crate::agent::topology::run_in(relay, &inv, None).map(|_| ())
            }),
            FaultKind::Outage => {
                crate::agent::netlink::blackhole(relay, internet, true).and_then(|()| {
                    std::thread::sleep(Duration::from_secs(u64::from(f.seconds)));
                    crate::agent::netlink::blackhole(relay, internet, false)
                })
            }
        };
        let message = match made {
            Ok(()) => format!("session fault made on purpose at {} s: {:?}", f.at, f.kind),
            Err(e) => format!(
                "session fault {:?} at {} s could not be made: {e:#}",
                f.kind, f.at
            ),
        };
        crate::agent::channel::send(&crate::protocol::GuestMessage::Note { message });
    }
}

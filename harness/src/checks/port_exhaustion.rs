//! Behaviour 7, exhaustion: a small masquerade port range fills, the flows
//! beyond it are dropped cleanly, and the ones inside keep working.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::{
    at, conntrack_counters, ensure_tunnel, flush_conntrack, translated_sources, udp_flows,
    EXCHANGE_TIMEOUT,
};
use super::context::Context;
use super::verdict::Verdict;
use crate::agent::probes::{self};
use crate::bounds::{Invalid, Limit};
use crate::scenario::setup::Setup;
use crate::scenario::topology::Addrs;
use crate::types::PortRange;

/// More flows than `relay.masquerade_ports` holds: the range fills, the
/// rest are dropped cleanly, and the flows that got a port keep working.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortExhaustion {
    #[serde(default = "default_flows_beyond")]
    pub beyond: u32,
    /// The range the check expects to fill; default relay.masquerade_ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
}

fn default_flows_beyond() -> u32 {
    4
}

/// The most ports the check fills: one flow each.
const RANGE: Limit = Limit::new(
    "range",
    1,
    1024,
    "natvet opens a UDP flow (a socket on the client) for each port of the range and waits for them all within the check's 10 s: 1024 flows plus `beyond` fit in that time and in a descriptor and about 4 KiB of the guest each",
)
.on("the number of ports in range");

/// The relay's own range, when the check fills it.
const MASQUERADE_PORTS: Limit = Limit::new(
    "masquerade_ports",
    1,
    1024,
    "the port-exhaustion check fills this range, a UDP flow (a socket on the client) for each of its ports, all within its 10 s",
)
.on("the number of ports in relay.masquerade_ports");

/// The flows opened past the range.
const BEYOND: Limit = Limit::new(
    "beyond",
    1,
    1024,
    "these flows must find no port and be dropped, and each is a socket on the client like the range's own: at most as many as the range may hold",
);

impl Check for PortExhaustion {
    const INFO: Info = Info {
        results: "port-exhaustion",
        behaviours: "7",
        description: "with relay.masquerade_ports (or the check's own `range`), as many flows as the range holds get ports in it and the extra ones are dropped cleanly; the first keep working",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "",
        limits: &[RANGE, MASQUERADE_PORTS, BEYOND],
        capture_first: true,
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![("port-exhaustion".into(), ())]
    }

    fn validate(&self, setup: &Setup) -> Result<(), Invalid> {
        let relay = setup.relay;
        if self.range.is_none() && relay.masquerade_ports.is_none() || !relay.masquerade {
            return Err(
                "check port-exhaustion needs relay.masquerade = true and relay.masquerade_ports (e.g. \"40000-40007\") to exhaust"
                    .into(),
            );
        }
        if let Some(r) = relay.masquerade_ports {
            MASQUERADE_PORTS.check_at(r.size(), &["relay", "masquerade_ports"])?;
        }
        if let Some(r) = self.range {
            RANGE.check(r.size())?;
        }
        BEYOND.check(self.beyond)?;
        Ok(())
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        port_exhaustion(ctx, self.beyond, self.range)
    }
}

/// Fill `relay.masquerade_ports` with flows to one destination, plus
/// `beyond` more: exactly as many flows as the range holds get a port inside
/// it and replies; the rest are dropped (no port is left for their tuple);
/// the flows that got a port still work afterwards; nothing hangs. The
/// relay's conntrack table is flushed at the end, so the filled range does
/// not spill into later checks.
fn port_exhaustion(ctx: &mut Context, beyond: u32, range: Option<PortRange>) -> Result<Verdict> {
    let Addrs {
        relay_wan,
        internet,
        ..
    } = *ctx.a();
    // Default: the range the relay's masquerade rule uses.
    let rule_range = ctx.rules.masquerade.iter().find_map(|m| m.ports);
    let Some(range) = range.or(rule_range) else {
        return Ok(Verdict::unsupported(
            "a masquerade port range to exhaust",
            "the scenario sets no relay.masquerade_ports",
        ));
    };
    // At most 65536 + u32::MAX: validate keeps both far smaller.
    let size = range.size();
    let total = size.saturating_add(beyond);
    let expected = format!(
        "of {total} UDP flows to {}, exactly {size} get a port in {range} and replies, the other {beyond} are dropped, and the first {size} still work afterwards",
        at(internet, probes::UDP_PORT)
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    // Start from an empty range: earlier checks' flows may still hold ports.
    flush_conntrack(ctx)?;
    // Flows in the range, then the ones that cannot fit: wait until the
    // range's worth is answered (milliseconds, more on a busy guest), then
    // one more resend round for any that should not be. The packets of the
    // flows that find no port are dropped by conntrack on purpose:
    // kernel-health is told how many.
    let relay = ctx.topo.relay.clone();
    let before = conntrack_counters(&relay)?;
    let (flows, answered) = udp_flows(ctx, total, EXCHANGE_TIMEOUT, Some(size as usize))?;
    let after = conntrack_counters(&relay)?;
    let deliberate = ctx.deliberate_losses.get_or_insert_with(BTreeMap::new);
    for name in crate::conntrack::TROUBLE_COUNTERS {
        let caused = after
            .get(name)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(name).copied().unwrap_or(0));
        *deliberate
            .entry((relay.name.clone(), name.to_string()))
            .or_insert(0) += caused;
    }
    let tags: Vec<&str> = flows.iter().map(|(t, _)| t.as_str()).collect();
    let seen = translated_sources(ctx, &tags)?;
    let replies = answered.iter().filter(|a| **a).count() as u32;
    let in_range: BTreeSet<u16> = seen
        .iter()
        .flatten()
        .filter(|s| s.source == relay_wan)
        .filter_map(|s| s.source_port)
        .filter(|p| range.contains(*p))
        .collect();
    let outside = seen
        .iter()
        .flatten()
        .filter(|s| s.source_port.is_some_and(|p| !range.contains(p)))
        .count();
    // The flows that got a port keep it.
    let dest = SocketAddr::new(internet, probes::UDP_PORT);
    let mut still = 0;
    for ((_, s), got) in flows.iter().zip(&answered) {
        if *got {
            let tag = ctx.tag("again");
            s.set_nonblocking(false)?;
            if probes::udp_echo_on(s, dest, &tag, Duration::from_secs(3)).is_ok() {
                still += 1;
            }
        }
    }
    flush_conntrack(ctx)?;
    let ok = replies == size && in_range.len() as u32 == size && outside == 0 && still == size;
    Ok(Verdict::judge(
        ok,
        expected,
        format!(
            "{replies} of {total} flows answered, on {} distinct ports in {range}, {outside} outside it; {still} of the answered flows still worked afterwards",
            in_range.len()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn needs_a_range_to_fill_and_keeps_it_small() {
        assert!(scenario_with("kind = \"port-exhaustion\"").is_ok());
        let none = crate::scenario::Scenario::parse(
            "name = \"t\"\n[relay]\n[[check]]\nkind = \"port-exhaustion\"\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(none.contains("relay.masquerade_ports"), "{none}");
        let wide = scenario_with("kind = \"port-exhaustion\"\nrange = \"1000-9000\"").unwrap_err();
        assert!(
            wide.contains("line 6: check port-exhaustion: value out of range: the number of ports in range = 8001 must be between 1 and 1024 because"),
            "{wide}"
        );
        let beyond = scenario_with("kind = \"port-exhaustion\"\nbeyond = 4294967295").unwrap_err();
        assert!(
            beyond.contains("line 6:")
                && beyond.contains("beyond = 4294967295 must be between 1 and 1024"),
            "{beyond}"
        );
        // The relay's range is limited where it is written.
        let relay = crate::scenario::Scenario::parse(
            "name = \"t\"\n[relay]\nmasquerade_ports = \"1-65535\"\n[[check]]\nkind = \"port-exhaustion\"\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(
            relay.contains("line 3:") && relay.contains("relay.masquerade_ports = 65535"),
            "{relay}"
        );
    }
}

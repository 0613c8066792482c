//! Behaviour 7: many concurrent UDP flows all get replies and distinct
//! translated ports.

use std::collections::BTreeSet;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::{
    ensure_tunnel, translated_sources, udp_flows, EXCHANGE_TIMEOUT, TRANSFER_TIMEOUT,
};
use super::context::Context;
use super::patience::{self, Awaited};
use super::verdict::Verdict;
use crate::bounds::{Invalid, Limit};
use crate::scenario::setup::Setup;
use crate::scenario::topology::Addrs;

/// Many concurrent UDP flows all get replies and distinct translated ports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManyFlows {
    #[serde(default = "default_flows")]
    pub flows: u32,
}

fn default_flows() -> u32 {
    200
}

/// The most flows: each holds memory in the guest until the check ends.
const FLOWS: Limit = Limit::new(
    "flows",
    1,
    10_000,
    "each flow holds about 4 KiB in the guest until the check ends (a UDP socket on the client, 2.7 KiB as measured on a host kernel, its conntrack entries in the client's and the relay's namespaces, its tag and the probe server's record of it) and a descriptor of the agent's 65536: 10000 flows take about 40 MiB of the 384 MiB default guest, three runs at once 120 MiB",
);

impl Check for ManyFlows {
    const INFO: Info = Info {
        results: "many-flows/N",
        behaviours: "7",
        description: "N concurrent UDP flows (200 by default) all get replies, from the relay's address, on N distinct ports",
        timeout: TRANSFER_TIMEOUT,
        needs_wireguard: false,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "",
        limits: &[FLOWS],
        capture_first: true,
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![(format!("many-flows/{}", self.flows), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        Ok(FLOWS.check(self.flows)?)
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        many_flows(ctx, self.flows)
    }
}

/// Many concurrent UDP flows through the tunnel and the masquerade: every one
/// answered, every one from the relay's address, each on a port of its own.
fn many_flows(ctx: &mut Context, n: u32) -> Result<Verdict> {
    let Addrs {
        relay_wan,
        internet,
        ..
    } = *ctx.a();
    let expected = format!(
        "{n} concurrent UDP flows reach {internet} from {relay_wan} on {n} distinct ports, and every reply returns"
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let wait = patience::wait(Awaited::Reply, EXCHANGE_TIMEOUT);
    let start = std::time::Instant::now();
    let (flows, answered) = udp_flows(ctx, n, wait, None)?;
    if answered.iter().all(|a| *a) {
        patience::observed(Awaited::Reply, start.elapsed());
    }
    let tags: Vec<&str> = flows.iter().map(|(t, _)| t.as_str()).collect();
    let seen = translated_sources(ctx, &tags)?;
    let replies = answered.iter().filter(|a| **a).count();
    let from_relay = seen
        .iter()
        .flatten()
        .filter(|s| s.source == relay_wan)
        .count();
    let ports: BTreeSet<u16> = seen
        .iter()
        .flatten()
        .filter_map(|s| s.source_port)
        .collect();
    let ok = replies == flows.len() && from_relay == flows.len() && ports.len() == flows.len();
    Ok(Verdict::judge(
        ok,
        expected,
        format!(
            "{replies} of {} flows answered{}; {from_relay} arrived from {relay_wan}, on {} distinct ports",
            flows.len(),
            if replies < flows.len() {
                format!(" within {:.1} s{}", wait.as_secs_f32(), patience::why(Awaited::Reply, wait, EXCHANGE_TIMEOUT))
            } else {
                String::new()
            },
            ports.len()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn names_its_flow_count() {
        let s = scenario_with("kind = \"many-flows\"").unwrap();
        assert_eq!(s.checks[0].result_names(), ["many-flows/200"]);
        assert!(scenario_with("kind = \"many-flows\"\nflows = 0").is_err());
        // Tens of GB of sockets in a 384 MiB guest: refused before boot.
        let e = scenario_with("kind = \"many-flows\"\nflows = 1000000000").unwrap_err();
        assert!(e.contains("line 6: check many-flows: value out of range: flows = 1000000000 must be between 1 and 10000 because"), "{e}");
    }
}

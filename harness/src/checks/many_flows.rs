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
use super::verdict::Verdict;
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
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![(format!("many-flows/{}", self.flows), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), String> {
        if self.flows == 0 {
            return Err("check many-flows has nothing to check: `flows` must be above 0".into());
        }
        Ok(())
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
    let (flows, answered) = udp_flows(ctx, n, EXCHANGE_TIMEOUT, None)?;
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
            "{replies} of {} flows answered; {from_relay} arrived from {relay_wan}, on {} distinct ports",
            flows.len(),
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
    }
}

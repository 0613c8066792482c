//! Behaviour 17: the kernel log holds no sign of trouble, and conntrack's
//! statistics in every namespace of the run count no unexplained loss.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::conntrack_counters;
use super::context::Context;
use super::verdict::Verdict;
use crate::bounds::Invalid;
use crate::scenario::setup::Setup;

/// No WARN, BUG, oops, soft lockup or RCU stall in the kernel log; no
/// failed insert, drop or early drop in conntrack's statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelHealth {}

impl Check for KernelHealth {
    const INFO: Info = Info {
        results: "kernel-health",
        behaviours: "17",
        description: "no WARN, BUG, oops, soft lockup or RCU stall in the kernel log during the scenario (and none on the console); conntrack statistics in every namespace of the scenario count no failed insert, drop or early drop",
        timeout: Duration::ZERO,
        needs_wireguard: false,
        phase: Phase::AfterTunnel,
        per_family: false,
        example: "",
        limits: &[],
        capture_first: true,
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![("kernel-health".into(), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        Ok(())
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        kernel_health(ctx)
    }
}

/// Behaviour 17: the kernel log holds no sign of trouble, and conntrack in
/// every namespace of the scenario lost nothing (its statistics count no
/// failed insert, no drop, no early drop). The namespaces are the run's
/// own, so the counters cover exactly this scenario with this backend.
fn kernel_health(ctx: &mut Context) -> Result<Verdict> {
    let more = ctx.kmsg.drain();
    ctx.dmesg.extend(more);
    let (artifacts, bad): (Vec<&String>, Vec<&String>) = ctx
        .dmesg
        .iter()
        .filter(|l| crate::kernel_log::is_unhealthy(l))
        .partition(|l| crate::kernel_log::emulator_artifact(l).is_some());
    let mut observed = if bad.is_empty() {
        format!(
            "{} kernel log lines during the scenario, none alarming",
            ctx.dmesg.len()
        )
    } else {
        bad.iter()
            .take(10)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    for line in artifacts.iter().take(3) {
        let why = crate::kernel_log::emulator_artifact(line).unwrap_or_default();
        observed.push_str(&format!("; set aside, {why}: {line}"));
    }
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut on_purpose: BTreeMap<String, u64> = BTreeMap::new();
    let mut losses = Vec::new();
    for ns in &ctx.topo.namespaces {
        let counters = conntrack_counters(ns)?;
        for name in crate::conntrack::TROUBLE_COUNTERS {
            let n = counters.get(name).copied().unwrap_or(0);
            let allowed = ctx
                .deliberate_losses
                .as_ref()
                .and_then(|d| d.get(&(ns.name.clone(), name.to_string())))
                .copied()
                .unwrap_or(0);
            *totals.entry(name.to_string()).or_insert(0) += n;
            *on_purpose.entry(name.to_string()).or_insert(0) += allowed;
            if n > allowed {
                losses.push(format!("{name} {} unexplained in {}", n - allowed, ns.name));
            }
        }
    }
    let list = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    observed.push_str(&format!(
        "; conntrack statistics of {} namespaces: {}",
        ctx.topo.namespaces.len(),
        list(&totals)
    ));
    if ctx.deliberate_losses.is_some() {
        observed.push_str(&format!(
            " (caused on purpose by port-exhaustion: {})",
            list(&on_purpose)
        ));
    }
    if !losses.is_empty() {
        observed.push_str(&format!("; {}", losses.join("; ")));
    }
    Ok(Verdict::judge(
        bad.is_empty() && losses.is_empty(),
        "no WARN, BUG, oops, lockup or RCU stall in the kernel log; conntrack counts no failed insert, drop or early drop",
        observed,
    ))
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn runs_once_per_scenario_run() {
        let s = scenario_with("kind = \"kernel-health\"").unwrap();
        assert_eq!(s.checks[0].result_names(), ["kernel-health"]);
        // Both families: the kernel's health is judged once per run.
        let s = crate::scenario::Scenario::parse(
            "name = \"t\"\n[relay]\nfamilies = [\"ipv4\", \"ipv6\"]\n[[check]]\nkind = \"kernel-health\"\n[[check]]\nkind = \"forward\"\nprotocols = [\"udp\"]\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            s.result_names(),
            ["kernel-health", "forward/udp", "ipv6/forward/udp"]
        );
    }
}

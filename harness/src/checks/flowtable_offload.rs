//! Behaviour 15: with a flowtable beside the masquerade, a forwarded flow
//! is offloaded and still translated.

use std::net::{SocketAddr, UdpSocket};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::exchange;
use super::common::{at, describe_seen, ensure_tunnel, seen_source, EXCHANGE_TIMEOUT};
use super::context::Context;
use super::verdict::Verdict;
use crate::agent::probes::{self};
use crate::bounds::Invalid;
use crate::scenario::setup::Setup;

/// A UDP flow through tunnel and NAT is offloaded to the relay's
/// flowtable: its conntrack entry says [OFFLOAD].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowtableOffload {}

impl Check for FlowtableOffload {
    const INFO: Info = Info {
        results: "flowtable/offload",
        behaviours: "15",
        description: "with relay.flowtable, a UDP flow through tunnel and masquerade is offloaded: its conntrack entry says [OFFLOAD] (the kernel's flowtable engaged), and it still reaches the internet host translated",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "",
        limits: &[],
        capture_first: true,
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![("flowtable/offload".into(), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        Ok(())
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        flowtable_offload(ctx)
    }
}

/// A UDP flow through tunnel and masquerade, a few exchanges long, must end
/// up in the relay's flowtable: conntrack marks offloaded entries [OFFLOAD]
/// (or [HW_OFFLOAD]). Without a flowtable in the scenario the check still
/// runs, and fails: that is its negative control.
fn flowtable_offload(ctx: &mut Context) -> Result<Verdict> {
    let a = *ctx.a();
    let expected = format!(
        "a UDP flow from the client to {} is offloaded to the relay's flowtable (its conntrack entry says [OFFLOAD]) and reaches the internet host from {}",
        at(a.internet, probes::UDP_PORT),
        a.relay_wan
    );
    if let Some(Err((status, why))) = &ctx.flowtable {
        return Ok(Verdict {
            status: *status,
            expected,
            observed: why.clone(),
            series: None,
        });
    }
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let any = ctx.any();
    let socket = ctx
        .topo
        .client
        .run(|| UdpSocket::bind(any).context("binding a UDP socket on the client"))?;
    let sport = socket.local_addr()?.port();
    let dest = SocketAddr::new(a.internet, probes::UDP_PORT);
    // The first exchange makes the flow established; the next packets are
    // the ones the forward hook offloads.
    let mut tags = Vec::new();
    for _ in 0..5 {
        let tag = ctx.tag("offload");
        if let Err(e) = exchange(|wait| probes::udp_echo_on(&socket, dest, &tag, wait)) {
            return Ok(Verdict::judge(
                false,
                expected,
                format!("the UDP flow did not work: {e:#}"),
            ));
        }
        tags.push(tag);
    }
    let last = tags.last().map(String::as_str).unwrap_or_default();
    let seen = seen_source(ctx, last)?;
    let table = ctx.conntrack_text()?;
    let entry = table.lines().find(|l| {
        l.contains(&format!("sport={sport} "))
            && l.contains(&format!("dst={}", a.internet))
            && l.starts_with("udp")
    });
    let offloaded = entry.is_some_and(|l| l.contains("OFFLOAD]"));
    let masqueraded = seen.as_ref().map(|s| s.source) == Some(a.relay_wan);
    let observed = format!(
        "{}; conntrack: {}",
        describe_seen(ctx.a(), &seen),
        entry.unwrap_or("no entry for the flow")
    );
    Ok(Verdict::judge(offloaded && masqueraded, expected, observed))
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn one_result() {
        let s = scenario_with("kind = \"flowtable-offload\"").unwrap();
        assert_eq!(s.checks[0].result_names(), ["flowtable/offload"]);
    }
}

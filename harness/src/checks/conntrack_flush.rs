//! Behaviour 12, flush: after `conntrack -F` on the relay, traffic recovers.

use std::net::{SocketAddr, UdpSocket};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::exchange;
use super::common::{describe_seen, ensure_tunnel, flush_conntrack, seen_source, EXCHANGE_TIMEOUT};
use super::context::Context;
use super::verdict::Verdict;
use crate::agent::probes::{self};
use crate::bounds::Invalid;
use crate::scenario::setup::Setup;
use crate::scenario::topology::Addrs;

/// After `conntrack -F` on the relay, a flow that worked works again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackFlush {}

impl Check for ConntrackFlush {
    const INFO: Info = Info {
        results: "conntrack/flush",
        behaviours: "12",
        description: "after `conntrack -F` on the relay, an existing and a new UDP flow are translated again and answered",
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
        vec![("conntrack/flush".into(), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        Ok(())
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        conntrack_flush(ctx)
    }
}

/// Flush the relay's conntrack table while a UDP flow is in use: the next
/// datagram of that flow, and a new flow, are translated again and answered.
fn conntrack_flush(ctx: &mut Context) -> Result<Verdict> {
    let Addrs {
        relay_wan,
        internet,
        ..
    } = *ctx.a();
    let expected = format!(
        "after `conntrack -F` on the relay, the same UDP socket and a new one still reach {internet} from {relay_wan} and get replies"
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let dest = SocketAddr::new(internet, probes::UDP_PORT);
    let any = ctx.any();
    let socket = ctx
        .topo
        .client
        .run(|| UdpSocket::bind(any).context("binding a UDP socket on the client"))?;
    let before = ctx.tag("flush-before");
    if let Err(e) = exchange(|wait| probes::udp_echo_on(&socket, dest, &before, wait)) {
        return Ok(Verdict::judge(
            false,
            expected,
            format!("the flow did not work even before the flush: {e:#}"),
        ));
    }
    flush_conntrack(ctx)?;
    let mut parts = Vec::new();
    let mut ok = true;
    let fresh = ctx
        .topo
        .client
        .run(|| UdpSocket::bind(any).context("binding a UDP socket on the client"))?;
    for (what, sock) in [("the same socket", &socket), ("a new socket", &fresh)] {
        let tag = ctx.tag("flush-after");
        let reply = exchange(|wait| probes::udp_echo_on(sock, dest, &tag, wait));
        let seen = seen_source(ctx, &tag)?;
        let masqueraded = seen.as_ref().map(|s| s.source) == Some(relay_wan);
        ok &= masqueraded && reply.is_ok();
        parts.push(format!(
            "{what}: {}; {}",
            describe_seen(ctx.a(), &seen),
            match reply {
                Ok(()) => "the reply returned".to_string(),
                Err(e) => format!("no reply ({e:#})"),
            }
        ));
    }
    Ok(Verdict::judge(ok, expected, parts.join("; ")))
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn one_result() {
        let s = scenario_with("kind = \"conntrack-flush\"").unwrap();
        assert_eq!(s.checks[0].result_names(), ["conntrack/flush"]);
    }
}

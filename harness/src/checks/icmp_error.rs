//! Behaviour 9: an ICMP port unreachable generated beyond the NAT reaches
//! the client, its embedded header translated back.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::{at, ensure_tunnel, host, EXCHANGE_TIMEOUT};
use super::context::Context;
use super::patience::{self, Awaited};
use super::verdict::Verdict;
use crate::agent::probes::IcmpPacket;
use crate::bounds::Invalid;
use crate::scenario::setup::Setup;
use crate::scenario::topology::Addrs;

/// An ICMP port unreachable from beyond the NAT reaches the client,
/// translated back to the client's own address and port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpError {}

impl Check for IcmpError {
    const INFO: Info = Info {
        results: "icmp-error/port-unreachable",
        behaviours: "9",
        description: "an ICMP port unreachable from beyond the NAT reaches the client with the embedded header translated back",
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
        vec![("icmp-error/port-unreachable".into(), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        Ok(())
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        icmp_error(ctx)
    }
}

/// A UDP port nothing listens on at the internet host.
pub const CLOSED_PORT: u16 = 9;

/// A UDP datagram through tunnel and NAT to a closed port beyond the relay:
/// the internet host's ICMP port unreachable goes to the relay's public
/// address, and conntrack must translate it back (outer and embedded headers)
/// so the client sees its own address and port in it.
fn icmp_error(ctx: &mut Context) -> Result<Verdict> {
    let Addrs {
        internet,
        tunnel_client,
        ..
    } = *ctx.a();
    let expected = format!(
        "the ICMP port unreachable {internet} sends for udp/{CLOSED_PORT} reaches the client with the embedded source translated back to {}:SPORT",
        host(tunnel_client)
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let any = ctx.any();
    let topo = &ctx.topo;
    let icmp_sock = topo.client_icmp(ctx.family)?;
    let socket = topo
        .client
        .run(|| UdpSocket::bind(any).context("binding a UDP socket on the client"))?;
    let sport = socket.local_addr()?.port();
    icmp_sock.drain();
    let start = Instant::now();
    let mut last_send: Option<Instant> = None;
    let mut other: Option<IcmpPacket> = None;
    let wait = patience::wait(Awaited::Reply, EXCHANGE_TIMEOUT);
    while start.elapsed() < wait {
        if last_send.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            socket
                .send_to(b"natvet-icmp-error", (internet, CLOSED_PORT))
                .context("sending to the closed port")?;
            last_send = Some(Instant::now());
        }
        let Some(icmp) = icmp_sock.recv() else {
            continue;
        };
        if !icmp.is_unreachable() || icmp.inner_dport != Some(CLOSED_PORT) {
            continue;
        }
        let translated = icmp.inner_src == Some(tunnel_client) && icmp.inner_sport == Some(sport);
        let observed = format!(
            "after {} ms the client got ICMP unreachable (code {}) from {}, embedded source {}",
            start.elapsed().as_millis(),
            icmp.code,
            icmp.source,
            match (icmp.inner_src, icmp.inner_sport) {
                (Some(a), Some(p)) => at(a, p).to_string(),
                _ => "unreadable".into(),
            },
        );
        if translated && icmp.source == internet && icmp.is_port_unreachable() {
            patience::observed(Awaited::Reply, start.elapsed());
            return Ok(Verdict::judge(true, expected, observed));
        }
        other = Some(icmp);
    }
    let observed = match other {
        Some(icmp) => format!(
            "only an untranslated or unexpected ICMP error arrived: from {}, code {}, embedded source {}",
            icmp.source,
            icmp.code,
            match (icmp.inner_src, icmp.inner_sport) {
                (Some(a), Some(p)) => at(a, p).to_string(),
                _ => "unreadable".into(),
            }
        ),
        None => format!(
            "no ICMP error reached the client within {:.1} s (client port {sport}){}",
            wait.as_secs_f32(),
            patience::why(Awaited::Reply, wait, EXCHANGE_TIMEOUT)
        ),
    };
    Ok(Verdict::judge(false, expected, observed))
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn one_result() {
        let s = scenario_with("kind = \"icmp-error\"").unwrap();
        assert_eq!(s.checks[0].result_names(), ["icmp-error/port-unreachable"]);
    }
}

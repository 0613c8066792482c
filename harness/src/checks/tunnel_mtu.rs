//! Behaviours 9 and 10: a full-size packet through the tunnel is forwarded,
//! or, where the path is smaller, draws the right ICMP.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::{at, describe_seen, ensure_tunnel, seen_source, EXCHANGE_TIMEOUT};
use super::context::Context;
use super::patience::{self, Awaited};
use super::verdict::Verdict;
use crate::agent::probes::{self, IcmpPacket};
use crate::bounds::{Invalid, Limit};
use crate::scenario::setup::Setup;
use crate::types::Family;

/// A full-size datagram (the tunnel's MTU, DF set) from the client: it
/// crosses tunnel and NAT intact, or, with `icmp_mtu`, the relay answers
/// "fragmentation needed" / "packet too big" with that MTU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelMtu {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_mtu: Option<u32>,
}

/// The MTU an expected ICMP error carries: a link's.
const ICMP_MTU: Limit = Limit::new(
    "icmp_mtu",
    1280,
    9000,
    "the ICMP error carries the MTU of the smaller link on the path (relay.wan_mtu or a [[topology.link]]'s mtu), and natvet's links are 1280-9000",
);

impl Check for TunnelMtu {
    const INFO: Info = Info {
        results: "tunnel-mtu/full-size, tunnel-mtu/icmp-MTU",
        behaviours: "9, 10",
        description: "a datagram of the tunnel's full MTU (1420, DF) crosses tunnel and masquerade intact; with icmp_mtu (and a smaller relay.wan_mtu) the relay answers fragmentation needed / packet too big with that MTU instead",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "",
        limits: &[ICMP_MTU],
        capture_first: true,
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        let name = match self.icmp_mtu {
            None => "tunnel-mtu/full-size".to_string(),
            Some(m) => format!("tunnel-mtu/icmp-{m}"),
        };
        vec![(name, ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        if let Some(m) = self.icmp_mtu {
            ICMP_MTU.check(m)?;
        }
        Ok(())
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        tunnel_mtu(ctx, self.icmp_mtu)
    }
}

/// A datagram that fills the tunnel's MTU, with DF set, from the client to
/// the internet host's echo server. Without `icmp_mtu` it must arrive intact
/// from the relay's address and its full-size reply must come back; with it,
/// the relay (whose wan link is smaller) must answer with ICMP
/// "fragmentation needed" (IPv4) or "packet too big" (IPv6) carrying that MTU.
fn tunnel_mtu(ctx: &mut Context, icmp_mtu: Option<u32>) -> Result<Verdict> {
    let a = *ctx.a();
    let header = if a.family == Family::Ipv6 {
        40 + 8
    } else {
        20 + 8
    };
    let size = ctx.topo.tunnel_mtu() as usize - header;
    let expected = match icmp_mtu {
        None => format!(
            "a {} byte packet (the tunnel's MTU, DF) reaches {} intact from {} and its reply returns",
            ctx.topo.tunnel_mtu(),
            at(a.internet, probes::UDP_PORT),
            a.relay_wan
        ),
        Some(m) => format!(
            "a {} byte packet (DF) through the tunnel draws an ICMP {} with MTU {m} (from the relay or a router beyond it), whose embedded header is the client's own packet ({} as source)",
            ctx.topo.tunnel_mtu(),
            if a.family == Family::Ipv6 {
                "packet too big"
            } else {
                "fragmentation needed"
            },
            a.tunnel_client
        ),
    };
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let any = ctx.any();
    let family = ctx.family;
    let socket = ctx.topo.client.run(|| {
        let s = UdpSocket::bind(any).context("binding a UDP socket on the client")?;
        set_dont_fragment(&s, family)?;
        Ok(s)
    })?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let own_port = socket.local_addr()?.port();
    let tag = ctx.tag("mtu");
    let mut payload = tag.clone().into_bytes();
    payload.resize(size, b'.');
    let dest = SocketAddr::new(a.internet, probes::UDP_PORT);
    let icmp_sock = ctx.topo.client_icmp(family)?;
    icmp_sock.drain();
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut reply: Option<usize> = None;
    let mut too_big: Option<IcmpPacket> = None;
    let mut send_error: Option<String> = None;
    let wait = patience::wait(Awaited::Reply, EXCHANGE_TIMEOUT);
    while start.elapsed() < wait && reply.is_none() && too_big.is_none() {
        if let Err(e) = socket.send_to(&payload, dest) {
            // EMSGSIZE: the kernel already learned a smaller path MTU.
            send_error = Some(e.to_string());
        }
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if buf[..n] == payload[..] {
                reply = Some(n);
                patience::observed(Awaited::Reply, start.elapsed());
            }
        }
        while let Some(icmp) = icmp_sock.recv() {
            if icmp.is_too_big() {
                too_big = Some(icmp);
            }
        }
    }
    // The echo server files a datagram under its whole text, padding
    // included. After an ICMP error nothing reached it: no need to wait.
    let seen = if too_big.is_some() && reply.is_none() {
        ctx.topo
            .internet_host()?
            .seen(&String::from_utf8_lossy(&payload))
    } else {
        seen_source(ctx, &String::from_utf8_lossy(&payload))?
    };
    let observed = match (&reply, &too_big) {
        (Some(n), _) => format!(
            "{}; the {n} byte reply returned",
            describe_seen(ctx.a(), &seen)
        ),
        (None, Some(icmp)) => format!(
            "{} answered ICMP type {} code {} with MTU {}, about a packet from {}",
            icmp.source,
            icmp.icmp_type,
            icmp.code,
            icmp.mtu,
            match (icmp.inner_src, icmp.inner_sport) {
                (Some(ip), Some(p)) => at(ip, p).to_string(),
                (Some(ip), None) => ip.to_string(),
                _ => "an unreadable header".into(),
            }
        ),
        (None, None) => format!(
            "{}; no reply and no ICMP error within {:.1} s{}{}",
            describe_seen(ctx.a(), &seen),
            wait.as_secs_f32(),
            send_error
                .map(|e| format!(" (send: {e})"))
                .unwrap_or_default(),
            patience::why(Awaited::Reply, wait, EXCHANGE_TIMEOUT)
        ),
    };
    let ok = match icmp_mtu {
        None => reply.is_some() && seen.as_ref().map(|s| s.source) == Some(a.relay_wan),
        Some(m) => too_big.as_ref().is_some_and(|i| {
            i.mtu == m && i.inner_src == Some(a.tunnel_client) && i.inner_sport == Some(own_port)
        }),
    };
    Ok(Verdict::judge(ok, expected, observed))
}

/// Set DF (path MTU discovery "do") on a UDP socket.
fn set_dont_fragment(s: &UdpSocket, family: Family) -> Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name, value) = match family {
        Family::Ipv4 => (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        ),
        Family::Ipv6 => (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        ),
    };
    // SAFETY: setsockopt on a socket we own, with an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setting DF on the socket");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn names_what_it_expects() {
        let s = scenario_with("kind = \"tunnel-mtu\"").unwrap();
        assert_eq!(s.checks[0].result_names(), ["tunnel-mtu/full-size"]);
        let s = scenario_with("kind = \"tunnel-mtu\"\nicmp_mtu = 1400").unwrap();
        assert_eq!(s.checks[0].result_names(), ["tunnel-mtu/icmp-1400"]);
    }
}

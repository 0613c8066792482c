//! Pieces several checks share: bringing the tunnel up, a handshake
//! attempt, the flows and what the internet host saw of them, and how to
//! say so in an observation.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::context::Context;
use super::patience::{self, Awaited};
use crate::agent::netns::Netns;
use crate::agent::probes::{self, IcmpPacket};
use crate::agent::topology::run_in;
use crate::scenario::topology::Addrs;

/// How long a handshake that should happen may take: WireGuard retries an
/// initiation after 5 s (REKEY_TIMEOUT), so this allows two retries.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(12);

/// How long an exchange that should work may take (resends included).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a transfer may take once connected.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

/// An address and port as people write them ("192.0.2.1:53", "[2001:db8::1]:53").
pub fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// An address ready to be followed by ":PORT".
pub fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// Resent copies of one datagram that reached the responder from another
/// source than the first: the flow's translation changed between copies.
pub fn later_sources(whose: &str, seen: &probes::Echoed) -> String {
    match seen.sources.get(1..) {
        Some(rest) if !rest.is_empty() => format!(
            "; {whose} later copies came from {}",
            rest.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => String::new(),
    }
}

/// What happened when the client tried to reach the relay at one port.
pub enum HandshakeOutcome {
    /// `seen`: the client's endpoint as the relay learned it (through any
    /// NAT); `relay`: the relay's endpoint as the client holds it after the
    /// handshake (WireGuard moves it to wherever the response came from).
    Completed {
        after: Duration,
        seen: Option<SocketAddr>,
        relay: Option<SocketAddr>,
    },
    Refused {
        after: Duration,
        icmp: IcmpPacket,
    },
    Silent {
        waited: Duration,
        /// Why natvet waited no longer (empty: the full timeout).
        why: String,
    },
}

impl HandshakeOutcome {
    /// A handshake completed through `chosen`, and the client still sends
    /// there: a response from any other address or port would have moved
    /// its endpoint (WireGuard follows authenticated packets), which a
    /// client behind a strict firewall or NAT never receives.
    pub fn completed_via(&self, chosen: SocketAddr) -> bool {
        match self {
            HandshakeOutcome::Completed { relay, .. } => *relay == Some(chosen),
            _ => false,
        }
    }
}

/// Point the client at `relay_public:port` from a fresh source port, with a
/// fresh peer (no session), send one packet into the tunnel and watch:
/// for `wait`, or (None) as long as a handshake that should happen may take
/// ([`patience`]: the full [`HANDSHAKE_TIMEOUT`] until the guest has seen
/// a handshake).
pub fn attempt_handshake(
    ctx: &mut Context,
    port: u16,
    wait: Option<Duration>,
) -> Result<(u16, HandshakeOutcome)> {
    let should = wait.is_none();
    let wait = wait.unwrap_or_else(|| patience::wait(Awaited::Handshake, HANDSHAKE_TIMEOUT));
    let Addrs {
        relay_public,
        internet,
        ..
    } = *ctx.a();
    let sport = ctx.topo.fresh_client_port();
    // The peer is replaced: whatever tunnel was up is gone.
    ctx.tunnel_up = None;
    let any = ctx.any();
    let topo = &ctx.topo;
    let icmp_sock = topo.client_icmp(ctx.family)?;
    let (client_wg, relay_wg) = topo.wg().map_err(anyhow::Error::msg)?;
    icmp_sock.drain();
    let (allowed, keepalive) = topo.client_peer();
    client_wg.set_only_peer(
        &relay_wg.public_key(),
        Some(SocketAddr::new(relay_public, port)),
        &allowed,
        Some(sport),
        keepalive,
    )?;
    // Any packet routed into wg0 makes WireGuard initiate a handshake.
    let trigger = topo
        .client
        .run(|| UdpSocket::bind(any).context("binding trigger socket"))?;
    trigger
        .send_to(b"natvet-trigger", (internet, 9))
        .context("sending a packet into the tunnel")?;
    let start = Instant::now();
    loop {
        let state = client_wg.peer_state()?;
        if let Some(s) = state.filter(|s| s.last_handshake.is_some()) {
            let after = start.elapsed();
            patience::observed(Awaited::Handshake, after);
            let seen = relay_wg.peer_state()?.and_then(|p| p.endpoint);
            return Ok((
                sport,
                HandshakeOutcome::Completed {
                    after,
                    seen,
                    relay: s.endpoint,
                },
            ));
        }
        // recv waits up to 20 ms, which paces this loop.
        if let Some(icmp) = icmp_sock.recv() {
            if icmp.is_unreachable()
                && icmp.source == relay_public
                && icmp.inner_proto == Some(17)
                && icmp.inner_dport == Some(port)
            {
                return Ok((
                    sport,
                    HandshakeOutcome::Refused {
                        after: start.elapsed(),
                        icmp,
                    },
                ));
            }
        }
        if start.elapsed() >= wait {
            return Ok((
                sport,
                HandshakeOutcome::Silent {
                    waited: start.elapsed(),
                    why: if should {
                        patience::why(Awaited::Handshake, wait, HANDSHAKE_TIMEOUT)
                    } else {
                        String::new()
                    },
                },
            ));
        }
    }
}

pub fn describe_handshake(a: &Addrs, outcome: &HandshakeOutcome, sport: u16, port: u16) -> String {
    let Addrs {
        client_seen: client_public,
        relay_public,
        ..
    } = *a;
    match outcome {
        HandshakeOutcome::Completed { after, seen, relay } => {
            let chosen = at(relay_public, port);
            let moved = match relay {
                Some(r) if *r != chosen => format!(
                    ", but the response came from {r}: the client's endpoint moved there"
                ),
                _ => String::new(),
            };
            format!(
                "handshake completed after {} ms (client {} -> {chosen}){moved}",
                after.as_millis(),
                seen.unwrap_or_else(|| at(client_public, sport)),
            )
        }
        HandshakeOutcome::Refused { after, icmp } => format!(
            "no handshake: {} answered ICMP destination unreachable (code {}) for udp/{port} after {} ms",
            icmp.source,
            icmp.code,
            after.as_millis()
        ),
        HandshakeOutcome::Silent { waited, why } => format!(
            "no handshake and no ICMP error within {:.1} s{why}",
            waited.as_secs_f32()
        ),
    }
}

/// Bring the data tunnel up through the plain listen port, over the current
/// family (once, until a handshake check points the client elsewhere).
pub fn ensure_tunnel(ctx: &mut Context) -> Result<std::result::Result<(), String>> {
    // A veth stand-in needs no handshake.
    if ctx.tunnel_up == Some(ctx.family) || ctx.topo.wg().is_err() {
        return Ok(Ok(()));
    }
    let listen = ctx.topo.listen_port;
    let (sport, outcome) = attempt_handshake(ctx, listen, None)?;
    if let HandshakeOutcome::Completed { .. } = outcome {
        ctx.tunnel_up = Some(ctx.family);
        Ok(Ok(()))
    } else {
        Ok(Err(format!(
            "the tunnel did not come up through the plain port, so nothing could be forwarded: {}",
            describe_handshake(ctx.a(), &outcome, sport, listen)
        )))
    }
}

/// An exchange that should work: `f` is given how long it may wait for its
/// reply ([`patience`]: the full [`EXCHANGE_TIMEOUT`] until the guest has
/// seen a reply), its success counts towards the waits that follow,
/// and its failure says how long natvet waited, and why no longer.
pub fn exchange<T>(f: impl FnOnce(Duration) -> Result<T>) -> Result<T> {
    let wait = patience::wait(Awaited::Reply, EXCHANGE_TIMEOUT);
    let start = Instant::now();
    match f(wait) {
        Ok(v) => {
            patience::observed(Awaited::Reply, start.elapsed());
            Ok(v)
        }
        Err(e) => {
            let why = patience::why(Awaited::Reply, wait, EXCHANGE_TIMEOUT);
            if why.is_empty() {
                Err(e)
            } else {
                Err(anyhow::anyhow!("{e:#}{why}"))
            }
        }
    }
}

/// How an exchange's reply went, for an observation.
pub fn reply_text(reply: &Result<()>) -> String {
    match reply {
        Ok(()) => "the reply returned".to_string(),
        Err(e) => format!("no reply ({e:#})"),
    }
}

pub fn masq_expectation(a: &Addrs, what: &str) -> String {
    let Addrs {
        relay_wan,
        internet,
        ..
    } = *a;
    format!("{what} from the client reaches {internet} from {relay_wan} (masqueraded) and the reply returns")
}

/// What the internet host recorded for `tag`. The kernel answers an ICMP echo
/// before the recording thread has run, so give the record a moment to land.
pub fn seen_source(ctx: &Context, tag: &str) -> Result<Option<probes::Seen>> {
    let host = ctx.topo.internet_host()?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let seen = host.seen(tag);
        if seen.is_some() || Instant::now() >= deadline {
            return Ok(seen);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn describe_seen(a: &Addrs, seen: &Option<probes::Seen>) -> String {
    let Addrs { internet, .. } = *a;
    match seen {
        None => format!("{internet} received nothing"),
        Some(s) => match s.source_port {
            Some(p) => format!("{internet} received it from {}", at(s.source, p)),
            None => format!("{internet} received it from {}", s.source),
        },
    }
}

/// `conntrack -S` in `ns`, summed over CPUs.
pub fn conntrack_counters(ns: &Netns) -> Result<BTreeMap<String, u64>> {
    let stats = crate::nat::Invocation {
        program: "/usr/sbin/conntrack",
        args: vec!["-S"],
    };
    let text = run_in(ns, &stats, None)
        .with_context(|| format!("reading conntrack statistics in {}", ns.name))?;
    Ok(crate::conntrack::parse_stats(&text))
}

pub fn flush_conntrack(ctx: &Context) -> Result<()> {
    for family in ["ipv4", "ipv6"] {
        let inv = crate::nat::Invocation {
            program: "/usr/sbin/conntrack",
            args: vec!["-F", "-f", family],
        };
        run_in(&ctx.topo.relay, &inv, None).context("flushing the relay's conntrack table")?;
    }
    Ok(())
}

/// A UDP flow of the client: its tag and its socket.
pub type Flow = (String, UdpSocket);

/// Open `n` UDP sockets on the client and send one tagged datagram from each
/// to the internet host's echo server, resending the unanswered ones each
/// second until all are answered or `timeout`; with `enough`, also until
/// that many are answered and one more resend round found no other.
/// Returns the sockets and which were answered.
pub fn udp_flows(
    ctx: &mut Context,
    n: u32,
    timeout: Duration,
    enough: Option<usize>,
) -> Result<(Vec<Flow>, Vec<bool>)> {
    let Addrs { internet, .. } = *ctx.a();
    let any = ctx.any();
    let tags: Vec<String> = (0..n).map(|_| ctx.tag("flow")).collect();
    let sockets = ctx.topo.client.run(|| {
        (0..n)
            .map(|_| {
                let s = UdpSocket::bind(any).context("binding a UDP socket on the client")?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let flows: Vec<Flow> = tags.into_iter().zip(sockets).collect();
    let dest = SocketAddr::new(internet, probes::UDP_PORT);
    let mut answered = vec![false; flows.len()];
    let start = Instant::now();
    let mut last_send: Option<Instant> = None;
    let mut buf = [0u8; 256];
    let mut enough_at: Option<Instant> = None;
    while start.elapsed() < timeout && answered.iter().any(|a| !a) {
        if let Some(k) = enough {
            if answered.iter().filter(|a| **a).count() >= k {
                let at = *enough_at.get_or_insert_with(Instant::now);
                if at.elapsed() >= Duration::from_millis(1100) {
                    break;
                }
            }
        }
        if last_send.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            for ((tag, s), done) in flows.iter().zip(&answered) {
                if !done {
                    // A full socket buffer just means this one waits for the next round.
                    let _ = s.send_to(tag.as_bytes(), dest);
                }
            }
            last_send = Some(Instant::now());
        }
        let mut progress = false;
        for ((tag, s), done) in flows.iter().zip(answered.iter_mut()) {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                if &buf[..n] == tag.as_bytes() {
                    *done = true;
                    progress = true;
                }
            }
        }
        if !progress {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok((flows, answered))
}

/// The translated source the internet host saw for each tag.
pub fn translated_sources(ctx: &Context, tags: &[&str]) -> Result<Vec<Option<probes::Seen>>> {
    let host = ctx.topo.internet_host()?;
    Ok(tags.iter().map(|t| host.seen(t)).collect())
}

/// What the relay knows of its peer, for an observation.
pub fn relay_view(ctx: &Context) -> String {
    let Ok((_, relay_wg)) = ctx.topo.wg() else {
        return String::new();
    };
    match relay_wg.peer_state() {
        Ok(Some(p)) => {
            let endpoint = p
                .endpoint
                .map(|e| e.to_string())
                .unwrap_or_else(|| "none".into());
            let handshake = p
                .last_handshake
                .and_then(|t| t.elapsed().ok())
                .map(|d| format!("{:.1} s ago", d.as_secs_f32()))
                .unwrap_or_else(|| "never".into());
            format!("; the relay's peer endpoint is {endpoint}, last handshake {handshake}")
        }
        Ok(None) => "; the relay has no peer".into(),
        Err(e) => format!("; the relay's peer could not be read: {e:#}"),
    }
}

/// The relay sends `tag` from `from` (its tunnel address) to `sock` on the
/// client through the tunnel every 300 ms until `sock` receives it or `wait`
/// passes: the time it took, if it arrived. Whether anything from the relay
/// still gets through to the client (its NAT's or firewall's mapping held).
pub fn relay_reaches(
    relay: &Netns,
    from: IpAddr,
    sock: &UdpSocket,
    tag: &str,
    wait: Duration,
) -> Result<Option<Duration>> {
    let dest = sock
        .local_addr()
        .context("reading the client socket's address")?;
    let relay_sock =
        relay.run(|| UdpSocket::bind((from, 0)).context("binding a UDP socket on the relay"))?;
    // For a blocking socket; a non-blocking one ignores it.
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let start = Instant::now();
    let mut last_send: Option<Instant> = None;
    let mut buf = [0u8; 512];
    while start.elapsed() < wait {
        if last_send.is_none_or(|t| t.elapsed() >= Duration::from_millis(300)) {
            relay_sock
                .send_to(tag.as_bytes(), dest)
                .context("sending from the relay into the tunnel")?;
            last_send = Some(Instant::now());
        }
        let mut got = false;
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            got = true;
            if &buf[..n] == tag.as_bytes() {
                return Ok(Some(start.elapsed()));
            }
        }
        if !got {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(None)
}

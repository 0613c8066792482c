//! Behaviour 19: a relay at production scale. Hundreds of peers, each a
//! client of its own, open thousands of UDP flows and TCP connections at
//! once, from source ports chosen as real clients choose them: at random,
//! the same ports on many clients. The masquerade must give every flow a
//! tuple of its own and every flow must be answered; then, with the table
//! full, flows keep opening and closing, and each new one must be answered
//! too.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::{conntrack_counters, HANDSHAKE_TIMEOUT};
use super::context::Context;
use super::verdict::Verdict;
use crate::agent::clients::{self, Client, MAX_CLIENTS, SPARE};
use crate::agent::netns::Netns;
use crate::agent::probes::{self, InternetHost};
use crate::scenario::setup::Setup;
use crate::scenario::topology::Addrs;

/// `peers` clients with `flows` flows among them at once (`tcp` of them TCP
/// connections, the rest UDP), then `churn` flows a second opened and
/// closed for `churn_seconds` while the table is full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayScale {
    #[serde(default = "default_peers")]
    pub peers: u32,
    #[serde(default = "default_flows")]
    pub flows: u32,
    #[serde(default = "default_tcp")]
    pub tcp: u32,
    #[serde(default = "default_churn")]
    pub churn: u32,
    #[serde(default = "default_churn_seconds")]
    pub churn_seconds: u32,
}

fn default_peers() -> u32 {
    200
}
fn default_flows() -> u32 {
    10_000
}
fn default_tcp() -> u32 {
    1000
}
fn default_churn() -> u32 {
    200
}
fn default_churn_seconds() -> u32 {
    5
}

/// The most flows the check opens: one socket each in the agent.
const MAX_FLOWS: u32 = 40_000;
/// How long the flows may take to be answered once sent, resends included.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);
/// The first source port clients draw from.
const POOL_START: u16 = 20_000;

impl Check for RelayScale {
    const INFO: Info = Info {
        results: "relay-scale/PEERSxFLOWS",
        behaviours: "19",
        description: "PEERS clients (each its own WireGuard peer) open FLOWS concurrent masqueraded flows (`tcp` of them TCP connections), from random source ports shared between clients: every flow reaches the internet host from the relay's address on a port of its own and is answered; then `churn` flows a second open and close while the table is full, each answered; conntrack drops nothing",
        timeout: Duration::from_secs(120),
        needs_wireguard: true,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "peers = 4\nflows = 40\ntcp = 8\nchurn = 4\nchurn_seconds = 1",
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![(format!("relay-scale/{}x{}", self.peers, self.flows), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), String> {
        let most_peers = MAX_CLIENTS - SPARE;
        if !(1..=most_peers).contains(&self.peers) {
            return Err(format!(
                "check relay-scale: peers {} is outside 1-{most_peers} (each is a client in the tunnel's network)",
                self.peers
            ));
        }
        if self.flows < self.peers || self.flows > MAX_FLOWS {
            return Err(format!(
                "check relay-scale: flows {} must be at least one per peer and at most {MAX_FLOWS} (each is a socket in the guest)",
                self.flows
            ));
        }
        if self.tcp > self.flows || self.churn > 5000 || self.churn_seconds > 600 {
            return Err(
                "check relay-scale: tcp is at most flows, churn at most 5000 a second for at most 600 s"
                    .into(),
            );
        }
        Ok(())
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        let a = *ctx.a();
        let expected = format!(
            "{} clients open {} concurrent flows ({} TCP) to {} from random source ports they share: each reaches it from {} on a port of its own and is answered; then {} flows a second open and close for {} s, each answered; conntrack counts no drop or failed insert",
            self.peers, self.flows, self.tcp, a.internet, a.relay_wan, self.churn, self.churn_seconds
        );
        if let Err(why) = ctx.topo.wg() {
            return Ok(Verdict::unsupported(expected, why));
        }
        let mut made = Vec::new();
        let outcome = self.scale(ctx, &a, &mut made);
        for c in &made {
            let _ = clients::remove(&ctx.topo, c);
            clients::forget(&ctx.topo, c);
        }
        let (ok, observed) = outcome?;
        Ok(Verdict::judge(ok, expected, observed))
    }
}

impl RelayScale {
    fn scale(
        &self,
        ctx: &mut Context,
        a: &Addrs,
        made: &mut Vec<Client>,
    ) -> Result<(bool, String)> {
        let f = a.family;
        let setup_start = Instant::now();
        let endpoint = SocketAddr::new(a.relay_public, ctx.topo.listen_port);
        for _ in 0..self.peers {
            let index = ctx.topo.fresh_client_index();
            let port = ctx.topo.fresh_client_port();
            made.push(clients::add(&ctx.topo, index, endpoint, port, None)?);
        }
        note(format!(
            "{} clients up in {:.1} s",
            made.len(),
            setup_start.elapsed().as_secs_f64()
        ));
        let addrs: Vec<IpAddr> = made
            .iter()
            .map(|c| c.addr(f).context("a client has no address of the family"))
            .collect::<Result<_>>()?;
        let relay = ctx.topo.relay.clone();
        let stats_before = conntrack_counters(&relay)?;
        // Every peer's handshake first: a flood of first packets would wait
        // in WireGuard's queue of 128 per peer.
        let handshakes = handshake_all(ctx, made, &addrs, a)?;
        let setup = setup_start.elapsed();
        note(format!(
            "{handshakes} handshakes after {:.1} s",
            setup.as_secs_f64()
        ));
        if handshakes < made.len() {
            return Ok((
                false,
                format!(
                    "only {handshakes} of {} clients completed a handshake within {} s",
                    made.len(),
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            ));
        }
        let udp_n = (self.flows - self.tcp) as usize;
        let tcp_n = self.tcp as usize;
        let mut rng = StdRng::from_entropy();
        // Source ports as real clients pick them: at random, from a pool
        // small enough that many clients use the same ports.
        let per_peer = udp_n.div_ceil(addrs.len()).max(1);
        let pool = (per_peer * 2).max(16) as u16;
        let tags_base = ctx.tag("scale");
        let topo = &ctx.topo;
        let host = topo.internet_host()?;
        let start = Instant::now();
        let mut udp = open_udp(&topo.client, &addrs, udp_n, pool, &mut rng, &tags_base)?;
        let udp_dest = SocketAddr::new(a.internet, probes::UDP_PORT);
        let answered = exchange_udp(&mut udp, udp_dest, ANSWER_WITHIN);
        let udp_secs = start.elapsed().as_secs_f64();
        note(format!(
            "{answered} of {udp_n} UDP flows answered in {udp_secs:.1} s"
        ));
        let tcp_start = Instant::now();
        let mut tcp = open_tcp(
            &topo.client,
            &addrs,
            tcp_n,
            pool,
            &mut rng,
            &tags_base,
            a.internet,
        )?;
        let tcp_secs = tcp_start.elapsed().as_secs_f64();
        note(format!(
            "{} of {tcp_n} TCP connections up in {tcp_secs:.1} s",
            tcp.iter().filter(|t| t.greeted).count()
        ));
        let table = conntrack_count(&relay);
        // What the internet host saw of each flow.
        let (udp_ports, udp_masq) = seen_ports(host, udp.iter().map(|u| u.tag.as_str()), a);
        let (tcp_ports, tcp_masq) = seen_ports(host, tcp.iter().map(|t| t.tag.as_str()), a);
        let tcp_up = tcp.iter().filter(|t| t.greeted).count();
        let shared = shared_ports(&udp);
        // Churn: flows close and new ones open while the table is full.
        let churn =
            self.churn_flows(&topo.client, host, &mut udp, &mut tcp, pool, &tags_base, a)?;
        let stats_after = conntrack_counters(&relay)?;
        let losses: Vec<String> = crate::conntrack::TROUBLE_COUNTERS
            .iter()
            .filter_map(|name| {
                let n = stats_after
                    .get(*name)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(stats_before.get(*name).copied().unwrap_or(0));
                (n > 0).then(|| format!("{name} {n}"))
            })
            .collect();
        let ok = answered == udp_n
            && udp_ports == udp_n
            && udp_masq == udp_n
            && tcp_up == tcp_n
            && tcp_ports == tcp_n
            && tcp_masq == tcp_n
            && churn.answered == churn.opened
            && losses.is_empty();
        let rate = |n: usize, s: f64| n as f64 / s.max(1e-3);
        let observed = format!(
            "{} clients up in {:.1} s; {answered} of {udp_n} UDP flows answered in {udp_secs:.1} s ({:.0} flows/s), from {udp_masq} via {}, on {udp_ports} distinct ports ({shared} source ports were used by more than one client, from a pool of {pool}); {tcp_up} of {tcp_n} TCP connections up in {tcp_secs:.1} s ({:.0}/s), from {tcp_masq} via {}, on {tcp_ports} distinct ports; the relay's conntrack table held {} entries; churn: {} of {} new flows answered in {} s ({:.0} a second); conntrack {}",
            made.len(),
            setup.as_secs_f64(),
            rate(udp_n, udp_secs),
            a.relay_wan,
            rate(tcp_n, tcp_secs),
            a.relay_wan,
            table.map(|n| n.to_string()).unwrap_or_else(|| "an unknown number of".into()),
            churn.answered,
            churn.opened,
            self.churn_seconds,
            rate(churn.opened, f64::from(self.churn_seconds.max(1))),
            if losses.is_empty() {
                "lost nothing".to_string()
            } else {
                format!("counted {}", losses.join(", "))
            }
        );
        Ok((ok, observed))
    }

    /// Close and open flows at `churn` a second: half UDP, half TCP (as far
    /// as there are TCP connections).
    #[allow(clippy::too_many_arguments)]
    fn churn_flows(
        &self,
        ns: &Netns,
        host: &InternetHost,
        udp: &mut [UdpFlow],
        tcp: &mut [TcpFlow],
        pool: u16,
        tags: &str,
        a: &Addrs,
    ) -> Result<Churned> {
        let mut rng = StdRng::from_entropy();
        let mut out = Churned::default();
        if self.churn == 0 || self.churn_seconds == 0 || udp.is_empty() {
            return Ok(out);
        }
        let every = Duration::from_secs(1) / self.churn;
        let start = Instant::now();
        let until = Duration::from_secs(u64::from(self.churn_seconds));
        let udp_dest = SocketAddr::new(a.internet, probes::UDP_PORT);
        let mut fresh_udp: Vec<UdpFlow> = Vec::new();
        let mut fresh_tcp: Vec<TcpFlow> = Vec::new();
        let mut n = 0u32;
        while start.elapsed() < until {
            let tag = format!("{tags}-churn{n}");
            if n % 2 == 1 && !tcp.is_empty() {
                let i = rng.gen_range(0..tcp.len());
                let addr = tcp[i].addr;
                // Closing one: the old connection's FIN; a new one in its place.
                if let Some(s) = &tcp[i].stream {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
                // A port of the kernel's choosing: one of the pool may still
                // be held by this client's other connections.
                if let Ok(t) = connect_one(ns, addr, 0, a.internet, &tag) {
                    tcp[i] = t;
                    fresh_tcp.push(TcpFlow::marker(&tcp[i]));
                } else {
                    fresh_tcp.push(TcpFlow::failed(addr, tag));
                }
            } else {
                let i = rng.gen_range(0..udp.len());
                let addr = udp[i].addr;
                let flow = bind_udp(ns, addr, pool, &mut rng, tag)?;
                udp[i] = flow;
                fresh_udp.push(UdpFlow::marker(&udp[i])?);
            }
            out.opened += 1;
            n += 1;
            let next = every * n;
            if let Some(wait) = next.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        // The new UDP flows: answered (resends allowed)?
        exchange_udp(&mut fresh_udp, udp_dest, Duration::from_secs(10));
        let masqueraded = |tag: &str| host.seen(tag).is_some_and(|s| s.source == a.relay_wan);
        out.answered = fresh_udp
            .iter()
            .filter(|u| u.answered && masqueraded(&u.tag))
            .count()
            + fresh_tcp
                .iter()
                .filter(|t| t.greeted && masqueraded(&t.tag))
                .count();
        Ok(out)
    }
}

#[derive(Default)]
struct Churned {
    opened: usize,
    answered: usize,
}

/// One UDP flow: a client's socket and the tag it sends.
struct UdpFlow {
    addr: IpAddr,
    socket: UdpSocket,
    tag: String,
    answered: bool,
}

impl UdpFlow {
    /// A second handle on the same socket, to wait for its answer later.
    fn marker(f: &UdpFlow) -> Result<UdpFlow> {
        Ok(UdpFlow {
            addr: f.addr,
            socket: f.socket.try_clone()?,
            tag: f.tag.clone(),
            answered: false,
        })
    }
}

/// One TCP connection, echoing lines (the probe server's LOOP).
struct TcpFlow {
    addr: IpAddr,
    stream: Option<TcpStream>,
    tag: String,
    greeted: bool,
}

impl TcpFlow {
    fn marker(f: &TcpFlow) -> TcpFlow {
        TcpFlow {
            addr: f.addr,
            stream: None,
            tag: f.tag.clone(),
            greeted: f.greeted,
        }
    }

    fn failed(addr: IpAddr, tag: String) -> TcpFlow {
        TcpFlow {
            addr,
            stream: None,
            tag,
            greeted: false,
        }
    }
}

/// One datagram from each client into its tunnel, until the relay has
/// completed a handshake with each; how many did.
fn handshake_all(ctx: &Context, made: &[Client], addrs: &[IpAddr], a: &Addrs) -> Result<usize> {
    let (_, relay_wg) = ctx.topo.wg().map_err(anyhow::Error::msg)?;
    let keys: Vec<wireguard_control::Key> = made.iter().map(|c| c.wg.public_key()).collect();
    let triggers: Vec<UdpSocket> = ctx.topo.client.run(|| {
        addrs
            .iter()
            .map(|addr| UdpSocket::bind((*addr, 0)).context("binding a trigger socket"))
            .collect()
    })?;
    let start = Instant::now();
    let mut done = 0;
    while start.elapsed() < HANDSHAKE_TIMEOUT {
        for t in &triggers {
            let _ = t.send_to(b"natvet-trigger", (a.internet, 9));
        }
        std::thread::sleep(Duration::from_millis(500));
        done = relay_wg
            .peer_states()?
            .iter()
            .filter(|(k, p)| keys.contains(k) && p.last_handshake.is_some())
            .count();
        if done == made.len() {
            break;
        }
    }
    Ok(done)
}

/// A UDP socket on `addr` from a random port of the pool (another one if
/// that is taken on this address).
fn bind_udp(ns: &Netns, addr: IpAddr, pool: u16, rng: &mut StdRng, tag: String) -> Result<UdpFlow> {
    let ports: Vec<u16> = (0..pool).map(|p| POOL_START + p).collect();
    let first = rng.gen_range(0..ports.len());
    ns.run(|| {
        for k in 0..ports.len() {
            let port = ports[(first + k) % ports.len()];
            if let Ok(s) = UdpSocket::bind((addr, port)) {
                s.set_nonblocking(true)?;
                return Ok(UdpFlow {
                    addr,
                    socket: s,
                    tag: tag.clone(),
                    answered: false,
                });
            }
        }
        anyhow::bail!("no free port of {pool} on {addr}")
    })
}

/// `n` UDP flows spread over the clients, each from a random port.
fn open_udp(
    ns: &Netns,
    addrs: &[IpAddr],
    n: usize,
    pool: u16,
    rng: &mut StdRng,
    tags: &str,
) -> Result<Vec<UdpFlow>> {
    let mut ports: Vec<u16> = (0..pool).map(|p| POOL_START + p).collect();
    let mut flows = Vec::with_capacity(n);
    // All sockets in one thread of the namespace: a thread per socket would
    // cost more than the sockets.
    ns.run(|| {
        for (i, chunk) in (0..n)
            .collect::<Vec<_>>()
            .chunks(n.div_ceil(addrs.len()).max(1))
            .enumerate()
        {
            let addr = addrs[i % addrs.len()];
            ports.shuffle(rng);
            for (j, k) in chunk.iter().enumerate() {
                let port = ports[j % ports.len()];
                let s = UdpSocket::bind((addr, port))
                    .with_context(|| format!("binding {addr} port {port}"))?;
                s.set_nonblocking(true)?;
                flows.push(UdpFlow {
                    addr,
                    socket: s,
                    tag: format!("{tags}-u{k}"),
                    answered: false,
                });
            }
        }
        Ok(())
    })?;
    Ok(flows)
}

/// Send each flow's datagram, paced, and again while unanswered (more
/// rounds while they still bring answers); how many were answered.
fn exchange_udp(flows: &mut [UdpFlow], dest: SocketAddr, within: Duration) -> usize {
    const BATCH: usize = 256;
    let start = Instant::now();
    let mut buf = [0u8; 256];
    let poll = |flows: &mut [UdpFlow], buf: &mut [u8]| {
        for f in flows.iter_mut().filter(|f| !f.answered) {
            while let Ok((n, _)) = f.socket.recv_from(buf) {
                if &buf[..n] == f.tag.as_bytes() {
                    f.answered = true;
                }
            }
        }
    };
    let mut last = usize::MAX;
    let mut quiet_rounds = 0;
    while start.elapsed() < within {
        let waiting: Vec<usize> = (0..flows.len()).filter(|i| !flows[*i].answered).collect();
        if waiting.is_empty() {
            break;
        }
        if waiting.len() == last {
            quiet_rounds += 1;
            if quiet_rounds >= 3 {
                break;
            }
        } else {
            quiet_rounds = 0;
        }
        last = waiting.len();
        for batch in waiting.chunks(BATCH) {
            for i in batch {
                // A full buffer only delays a datagram to the next round.
                let _ = flows[*i].socket.send_to(flows[*i].tag.as_bytes(), dest);
            }
            std::thread::sleep(Duration::from_millis(5));
            poll(flows, &mut buf);
        }
        let round = Instant::now();
        while round.elapsed() < Duration::from_secs(1) {
            poll(flows, &mut buf);
            if flows.iter().all(|f| f.answered) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    flows.iter().filter(|f| f.answered).count()
}

/// A TCP connection from `addr`:`port` to the probe server, greeted.
fn connect_one(
    ns: &Netns,
    addr: IpAddr,
    port: u16,
    internet: IpAddr,
    tag: &str,
) -> Result<TcpFlow> {
    let dest = SocketAddr::new(internet, probes::TCP_PORT);
    let mut stream = ns.run(|| {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(dest),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.bind(&SocketAddr::new(addr, port).into())
            .with_context(|| format!("binding {addr} port {port}"))?;
        s.connect_timeout(&dest.into(), HANDSHAKE_TIMEOUT)
            .with_context(|| format!("connecting to {dest} from {addr}:{port}"))?;
        Ok(TcpStream::from(s))
    })?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.write_all(format!("LOOP {tag}\n").as_bytes())?;
    let mut greeting = vec![0u8; tag.len() + 1];
    let greeted = stream.read_exact(&mut greeting).is_ok();
    Ok(TcpFlow {
        addr,
        stream: Some(stream),
        tag: tag.to_string(),
        greeted,
    })
}

/// `n` TCP connections spread over the clients, opened all at once
/// (non-blocking), each from a random port, then greeted.
fn open_tcp(
    ns: &Netns,
    addrs: &[IpAddr],
    n: usize,
    pool: u16,
    rng: &mut StdRng,
    tags: &str,
    internet: IpAddr,
) -> Result<Vec<TcpFlow>> {
    let dest = SocketAddr::new(internet, probes::TCP_PORT);
    let mut pending: Vec<(IpAddr, socket2::Socket, String)> = Vec::with_capacity(n);
    let mut used: HashMap<IpAddr, BTreeSet<u16>> = HashMap::new();
    ns.run(|| {
        for k in 0..n {
            let addr = addrs[k % addrs.len()];
            let taken = used.entry(addr).or_default();
            let mut port = POOL_START + rng.gen_range(0..pool);
            while taken.contains(&port) {
                port = POOL_START + rng.gen_range(0..pool.max(1));
                if taken.len() >= usize::from(pool) {
                    anyhow::bail!("more TCP connections per client than ports in the pool");
                }
            }
            taken.insert(port);
            let s = socket2::Socket::new(
                socket2::Domain::for_address(dest),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            s.bind(&SocketAddr::new(addr, port).into())
                .with_context(|| format!("binding {addr} port {port}"))?;
            s.set_nonblocking(true)?;
            // EINPROGRESS: the handshake goes on while we open the rest.
            let _ = s.connect(&dest.into());
            pending.push((addr, s, format!("{tags}-t{k}")));
        }
        Ok(())
    })?;
    // Wait for each to connect, then send its LOOP command and read the greeting.
    let start = Instant::now();
    let mut flows: Vec<TcpFlow> = Vec::with_capacity(n);
    let mut state: Vec<(usize, Vec<u8>)> = vec![(0, Vec::new()); pending.len()];
    let mut buf = [0u8; 256];
    while start.elapsed() < ANSWER_WITHIN && state.iter().any(|s| s.0 < 2) {
        let mut progress = false;
        for ((_, s, tag), st) in pending.iter().zip(state.iter_mut()) {
            match st.0 {
                // Connected once the peer address is known.
                0 if s.peer_addr().is_ok() => {
                    let mut w: &socket2::Socket = s;
                    if w.write_all(format!("LOOP {tag}\n").as_bytes()).is_ok() {
                        st.0 = 1;
                        progress = true;
                    }
                }
                1 => {
                    let mut r: &socket2::Socket = s;
                    if let Ok(k) = r.read(&mut buf) {
                        if k > 0 {
                            st.1.extend_from_slice(&buf[..k]);
                            progress = true;
                        }
                    }
                    if st.1.len() > tag.len() {
                        st.0 = 2;
                    }
                }
                _ => {}
            }
        }
        if !progress {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for ((addr, s, tag), st) in pending.into_iter().zip(state) {
        let greeted = st.0 == 2 && st.1.starts_with(tag.as_bytes());
        flows.push(TcpFlow {
            addr,
            stream: Some(TcpStream::from(s)),
            tag,
            greeted,
        });
    }
    Ok(flows)
}

/// Of the flows with these tags, how many distinct source ports the
/// internet host saw, and how many came from the relay's address.
fn seen_ports<'t>(
    host: &InternetHost,
    tags: impl Iterator<Item = &'t str>,
    a: &Addrs,
) -> (usize, usize) {
    let mut ports = BTreeSet::new();
    let mut masq = 0;
    for tag in tags {
        if let Some(s) = host.seen(tag) {
            if s.source == a.relay_wan {
                masq += 1;
                if let Some(p) = s.source_port {
                    ports.insert(p);
                }
            }
        }
    }
    (ports.len(), masq)
}

/// How many source ports more than one client used: the collisions the
/// masquerade had to resolve.
fn shared_ports(flows: &[UdpFlow]) -> usize {
    let mut by_port: HashMap<u16, BTreeSet<IpAddr>> = HashMap::new();
    for f in flows {
        if let Ok(local) = f.socket.local_addr() {
            by_port.entry(local.port()).or_default().insert(f.addr);
        }
    }
    by_port.values().filter(|s| s.len() > 1).count()
}

/// Tell the host how far the check has come: it counts a silent guest as
/// hung, and a person waiting likes to know.
fn note(what: String) {
    crate::agent::channel::send(&crate::protocol::GuestMessage::Note {
        message: format!("relay-scale: {what}"),
    });
}

/// The relay's conntrack table size, as its namespace counts it.
fn conntrack_count(relay: &Netns) -> Option<u64> {
    relay
        .run(|| {
            Ok(std::fs::read_to_string(
                "/proc/sys/net/netfilter/nf_conntrack_count",
            )?)
        })
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn bounded_and_named_by_size() {
        let s = scenario_with("kind = \"relay-scale\"").unwrap();
        assert_eq!(s.checks[0].result_names(), ["relay-scale/200x10000"]);
        for bad in ["peers = 0", "peers = 300", "flows = 100000", "tcp = 20000"] {
            assert!(
                scenario_with(&format!("kind = \"relay-scale\"\n{bad}")).is_err(),
                "{bad}"
            );
        }
    }
}

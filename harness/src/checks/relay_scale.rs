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
use crate::bounds::{Invalid, Limit};
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

/// The clients.
const PEERS: Limit = Limit::new(
    "peers",
    1,
    (MAX_CLIENTS - SPARE) as u64,
    "each is a client of its own in the tunnel's network, which holds 239 beyond the scenario's addresses, 8 of them kept for peers the relay holds without a client",
);
/// The concurrent flows.
const FLOWS: Limit = Limit::new(
    "flows",
    1,
    20_000,
    "each flow is a socket held open until the check ends, about 4 KiB of the guest with its conntrack entries and the probe server's record (20000 take about 80 MiB of the 384 MiB default guest), and the clients' shared source-port pool, twice the flows per peer above port 20000, must stay below 65536",
);
/// TCP connections among the flows, and among the churned ones.
const TCP: Limit = Limit::new(
    "tcp",
    0,
    2000,
    "each TCP connection is also a thread of the internet host's probe server (its stacks and task, about 40 KiB of the guest) and two sockets: 2000 take about 80 MiB",
)
.on("tcp + the churned TCP connections (half of churn x churn_seconds when tcp > 0)");
/// New flows a second while the table is full.
const CHURN: Limit = Limit::new(
    "churn",
    0,
    5000,
    "each churned flow is opened and answered while the table is full, and a one-vCPU guest opens a few thousand a second at most",
);
/// How long the churn goes on.
const CHURN_SECONDS: Limit = Limit::new(
    "churn_seconds",
    0,
    600,
    "the guest churns in silence and the host stops a guest silent past --check-timeout (120 s by default, raise it for longer churns)",
)
.unit(" s");
/// Sockets open at once: the churned flows are opened before the churn.
const SOCKETS: Limit = Limit::new(
    "churn",
    1,
    30_000,
    "the flows and every churned flow are open at once (the churned ones are opened before the churn starts), about 4 KiB of the guest each: 30000 take about 120 MiB of the 384 MiB default guest, within the agent's 65536 descriptors",
)
.on("flows + churn x churn_seconds");
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
        limits: &[PEERS, FLOWS, TCP, CHURN, CHURN_SECONDS, SOCKETS],
        capture_first: false,
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![(format!("relay-scale/{}x{}", self.peers, self.flows), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        PEERS.check(self.peers)?;
        FLOWS.check(self.flows)?;
        if self.flows < self.peers {
            return Err(format!(
                "check relay-scale: flows {} must be at least one per peer ({} peers): raise flows or lower peers",
                self.flows, self.peers
            )
            .into());
        }
        if self.tcp > self.flows {
            return Err(format!(
                "check relay-scale: tcp {} is more than flows {}: the TCP connections are some of the flows",
                self.tcp, self.flows
            )
            .into());
        }
        CHURN.check(self.churn)?;
        CHURN_SECONDS.check(self.churn_seconds)?;
        // All four at most their limits above: no overflow in u64.
        let churned = u64::from(self.churn) * u64::from(self.churn_seconds);
        let sockets = u64::from(self.flows) + churned;
        SOCKETS.check_derived(
            sockets,
            format!(
                "{} + {} x {} = {sockets}",
                self.flows, self.churn, self.churn_seconds
            ),
        )?;
        let churned_tcp = if self.tcp > 0 { churned / 2 } else { 0 };
        let tcp = u64::from(self.tcp) + churned_tcp;
        TCP.check_derived(tcp, format!("{} + {churned_tcp} = {tcp}", self.tcp))?;
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
        let removed = clients::remove_all(&ctx.topo, &made);
        // Thousands of flows from these clients: the relay forgets them all
        // (as port-exhaustion does), so that later checks start clean.
        super::common::flush_conntrack(ctx)?;
        let (ok, observed) = outcome?;
        removed?;
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
        // Validate keeps this below 65536 - POOL_START (flows <= 20000).
        let pool = u16::try_from((per_peer * 2).max(16))
            .ok()
            .filter(|p| POOL_START.checked_add(*p).is_some())
            .context("the source-port pool does not fit below port 65536: lower flows per peer")?;
        let tags_base = ctx.tag("scale");
        let topo = &ctx.topo;
        let host = topo.internet_host()?;
        // TCP first: its connections stay up (conntrack keeps them for
        // days) while the UDP flows, whose entries live 30 s, come after.
        let tcp_start = Instant::now();
        let tcp_dest = SocketAddr::new(a.internet, probes::TCP_PORT);
        let pending = tcp_sockets(
            &topo.client,
            &addrs,
            tcp_n,
            pool,
            true,
            &mut rng,
            &format!("{tags_base}-t"),
            tcp_dest,
        )?;
        let mut tcp = greet_all(pending, Some(tcp_dest), ANSWER_WITHIN);
        let tcp_secs = tcp_start.elapsed().as_secs_f64();
        note(format!(
            "{} of {tcp_n} TCP connections up in {tcp_secs:.1} s",
            tcp.iter().filter(|t| t.greeted).count()
        ));
        let start = Instant::now();
        let mut udp = open_udp(
            &topo.client,
            &addrs,
            udp_n,
            pool,
            true,
            &mut rng,
            &tags_base,
        )?;
        let udp_dest = SocketAddr::new(a.internet, probes::UDP_PORT);
        let answered = exchange_udp(&mut udp, udp_dest, ANSWER_WITHIN);
        let udp_secs = start.elapsed().as_secs_f64();
        note(format!(
            "{answered} of {udp_n} UDP flows answered in {udp_secs:.1} s"
        ));
        let table = conntrack_count(&relay);
        // What the internet host saw of each flow.
        let (udp_ports, udp_masq) = seen_ports(host, udp.iter().map(|u| u.tag.as_str()), a);
        let (tcp_ports, tcp_masq) = seen_ports(host, tcp.iter().map(|t| t.tag.as_str()), a);
        let tcp_up = tcp.iter().filter(|t| t.greeted).count();
        let shared = shared_ports(&udp);
        // Churn: flows close and new ones open while the table is full.
        let churn = self.churn_flows(
            &topo.client,
            host,
            &addrs,
            &mut udp,
            &mut tcp,
            pool,
            &tags_base,
            a,
        )?;
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
            rate(churn.opened, churn.seconds),
            if losses.is_empty() {
                "lost nothing".to_string()
            } else {
                format!("counted {}", losses.join(", "))
            }
        );
        Ok((ok, observed))
    }

    /// Close and open flows at `churn` a second: half UDP, half TCP (as far
    /// as there are TCP connections). The new flows' sockets are made
    /// beforehand, so the pace is the flows', not natvet's.
    #[allow(clippy::too_many_arguments)]
    fn churn_flows(
        &self,
        ns: &Netns,
        host: &InternetHost,
        addrs: &[IpAddr],
        udp: &mut [UdpFlow],
        tcp: &mut [TcpFlow],
        pool: u16,
        tags: &str,
        a: &Addrs,
    ) -> Result<Churned> {
        let mut rng = StdRng::from_entropy();
        let mut out = Churned::default();
        // At most 5000 x 600: validate's limits.
        let total = self.churn.saturating_mul(self.churn_seconds) as usize;
        if total == 0 || udp.is_empty() {
            return Ok(out);
        }
        let n_tcp = if tcp.is_empty() { 0 } else { total / 2 };
        let udp_dest = SocketAddr::new(a.internet, probes::UDP_PORT);
        let tcp_dest = SocketAddr::new(a.internet, probes::TCP_PORT);
        let mut spare_udp = open_udp(
            ns,
            addrs,
            total - n_tcp,
            pool,
            false,
            &mut rng,
            &format!("{tags}-cu"),
        )?;
        let mut spare_tcp = tcp_sockets(
            ns,
            addrs,
            n_tcp,
            pool,
            false,
            &mut rng,
            &format!("{tags}-ct"),
            tcp_dest,
        )?;
        let mut fresh_udp: Vec<UdpFlow> = Vec::new();
        let mut connecting: Vec<Pending> = Vec::new();
        let every = Duration::from_secs(1) / self.churn;
        let start = Instant::now();
        for n in 0..total {
            let take_tcp = n % 2 == 1 && !spare_tcp.is_empty();
            if take_tcp {
                let i = rng.gen_range(0..tcp.len());
                // One connection closes (its FIN), a new one opens.
                if let Some(s) = &tcp[i].stream {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
                tcp[i].stream = None;
                if let Some(p) = spare_tcp.pop() {
                    start_connect(&p, tcp_dest);
                    connecting.push(p);
                }
            } else if let Some(flow) = spare_udp.pop() {
                // One flow goes quiet (its socket closed), a new one starts.
                let i = rng.gen_range(0..udp.len());
                let _ = flow.socket.send_to(flow.tag.as_bytes(), udp_dest);
                fresh_udp.push(UdpFlow::marker(&flow)?);
                udp[i] = flow;
            }
            out.opened += 1;
            let next = every * (n as u32 + 1);
            if let Some(wait) = next.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        out.seconds = start.elapsed().as_secs_f64();
        // The new flows: answered (resends allowed)? connected and greeted?
        // As long as answers still come (a busy guest answers late, not
        // wrongly): `exchange_udp` stops after three rounds without one.
        exchange_udp(&mut fresh_udp, udp_dest, ANSWER_WITHIN);
        let fresh_tcp = greet_all(connecting, None, ANSWER_WITHIN);
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
    /// How long opening them took (the rate reached).
    seconds: f64,
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
    stream: Option<TcpStream>,
    tag: String,
    greeted: bool,
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

/// `n` UDP flows spread over the clients, each from a random port.
/// (`from_pool` false: ports of the kernel's choosing, which are random too).
fn open_udp(
    ns: &Netns,
    addrs: &[IpAddr],
    n: usize,
    pool: u16,
    from_pool: bool,
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
                let port = if from_pool { ports[j % ports.len()] } else { 0 };
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

/// A TCP socket bound on a client, not yet connected.
struct Pending {
    socket: socket2::Socket,
    tag: String,
}

/// `n` TCP sockets spread over the clients, bound to random ports of the
/// pool (distinct per client), or with `from_pool` false to ports of the
/// kernel's choosing; non-blocking, not connected yet.
#[allow(clippy::too_many_arguments)]
fn tcp_sockets(
    ns: &Netns,
    addrs: &[IpAddr],
    n: usize,
    pool: u16,
    from_pool: bool,
    rng: &mut StdRng,
    tags: &str,
    family_of: SocketAddr,
) -> Result<Vec<Pending>> {
    let mut used: HashMap<IpAddr, BTreeSet<u16>> = HashMap::new();
    ns.run(|| {
        let mut out = Vec::with_capacity(n);
        for k in 0..n {
            let addr = addrs[k % addrs.len()];
            let port = if from_pool {
                let taken = used.entry(addr).or_default();
                if taken.len() >= usize::from(pool) {
                    anyhow::bail!("more TCP connections per client than ports in the pool");
                }
                let mut port = POOL_START + rng.gen_range(0..pool);
                while taken.contains(&port) {
                    port = POOL_START + rng.gen_range(0..pool);
                }
                taken.insert(port);
                port
            } else {
                0
            };
            let s = socket2::Socket::new(
                socket2::Domain::for_address(family_of),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            s.bind(&SocketAddr::new(addr, port).into())
                .with_context(|| format!("binding {addr} port {port}"))?;
            s.set_nonblocking(true)?;
            out.push(Pending {
                socket: s,
                tag: format!("{tags}{k}"),
            });
        }
        Ok(out)
    })
}

/// Start connecting (EINPROGRESS: the handshake goes on in the kernel).
fn start_connect(p: &Pending, dest: SocketAddr) {
    let _ = p.socket.connect(&dest.into());
}

/// How many connections are in their handshake at once: a burst of a
/// thousand SYNs at once overflows a one-CPU guest's backlog (1,000
/// packets), and real clients do not all connect in the same millisecond.
const CONNECT_WINDOW: usize = 64;

/// With `dest`, connect each socket (`CONNECT_WINDOW` in their handshake at
/// a time); without, they are connecting already. Then, as each comes up,
/// send its LOOP command and read the probe server's greeting.
fn greet_all(pending: Vec<Pending>, dest: Option<SocketAddr>, within: Duration) -> Vec<TcpFlow> {
    let start = Instant::now();
    let mut state: Vec<(u8, Vec<u8>)> = vec![(0, Vec::new()); pending.len()];
    let mut started = if dest.is_some() { 0 } else { pending.len() };
    let mut buf = [0u8; 256];
    while start.elapsed() < within && state.iter().any(|s| s.0 < 2) {
        if let Some(dest) = dest {
            let busy = state[..started].iter().filter(|s| s.0 < 2).count();
            for p in pending
                .iter()
                .skip(started)
                .take(CONNECT_WINDOW.saturating_sub(busy))
            {
                start_connect(p, dest);
                started += 1;
            }
        }
        let mut progress = false;
        for (p, st) in pending.iter().zip(state.iter_mut()).take(started) {
            match st.0 {
                // Connected once the peer address is known.
                0 if p.socket.peer_addr().is_ok() => {
                    let mut w: &socket2::Socket = &p.socket;
                    if w.write_all(format!("LOOP {}\n", p.tag).as_bytes()).is_ok() {
                        st.0 = 1;
                        progress = true;
                    }
                }
                1 => {
                    let mut r: &socket2::Socket = &p.socket;
                    if let Ok(k) = r.read(&mut buf) {
                        if k > 0 {
                            st.1.extend_from_slice(&buf[..k]);
                            progress = true;
                        }
                    }
                    if st.1.len() > p.tag.len() {
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
    pending
        .into_iter()
        .zip(state)
        .map(|(p, st)| {
            let greeted = st.0 == 2 && st.1.starts_with(p.tag.as_bytes());
            TcpFlow {
                stream: Some(TcpStream::from(p.socket)),
                tag: p.tag,
                greeted,
            }
        })
        .collect()
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

//! Behaviour 20: peers come and go while flows are live. A client leaves
//! (its peer is removed from the relay) with a flow open: whoever still
//! sends to it must get the relay's ICMP error back, about its own datagram
//! as it sent it. A new client takes the address the departed one left: it
//! must receive none of the old client's traffic. And while the relay adds
//! and removes peers all the time, the other clients' flows go on.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::{at, HANDSHAKE_TIMEOUT};
use super::context::Context;
use super::verdict::Verdict;
use crate::agent::clients::{self, Client, MAX_CLIENTS};
use crate::agent::probes::{self, IcmpSocket};
use crate::bounds::{Invalid, Limit};
use crate::protocol::Series;
use crate::scenario::setup::Setup;
use crate::scenario::topology::Addrs;

/// `peers` clients keep a UDP flow going while one client leaves, a new one
/// takes its address, and the relay adds and removes `rate` peers a second
/// for `seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerChurn {
    #[serde(default = "default_peers")]
    pub peers: u32,
    #[serde(default = "default_rate")]
    pub rate: u32,
    #[serde(default = "default_seconds")]
    pub seconds: u32,
    /// The relay forgets a departed client's flows (its conntrack entries)
    /// before its address goes to a new client, as relays do. `false` is a
    /// negative control: the new client then gets the old one's traffic.
    #[serde(default = "yes")]
    pub forget: bool,
    /// Which addresses the churned peers take: `spare` ones, or (a negative
    /// control: a relay that hands out addresses still in use) the staying
    /// clients' own, which takes their traffic away.
    #[serde(default)]
    pub churn_addresses: ChurnAddresses,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChurnAddresses {
    #[default]
    Spare,
    InUse,
}

fn yes() -> bool {
    true
}

fn default_peers() -> u32 {
    8
}
fn default_rate() -> u32 {
    20
}
fn default_seconds() -> u32 {
    4
}

/// The port the departing client's flow talks to on the internet host: a
/// socket of the check's own, so it can go on sending to the client's
/// mapping after the client has left.
const STAY_PORT: u16 = 8090;
/// How long the internet host goes on sending to a departed client.
const AFTER_DEPARTURE: Duration = Duration::from_secs(3);

/// What each of the check's results is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Departed,
    AddressReused,
    Steady,
}

/// The staying clients: besides them, the departing one and the one that
/// takes its address, the relay's spare addresses go to the churned peers.
const PEERS: Limit = Limit::new(
    "peers",
    1,
    (MAX_CLIENTS - clients::SPARE - 2) as u64,
    "each is a client of its own in the tunnel's network, which holds 239 beyond the scenario's addresses: 8 are kept for the churned peers and 2 for the departing client and its successor",
);
/// Peers added and removed a second.
const RATE: Limit = Limit::new(
    "rate",
    1,
    1000,
    "each churned peer is a key generated and a peer added and removed on the relay's WireGuard interface, which takes about a millisecond on a guest",
);
/// How long the churn goes on.
const SECONDS: Limit = Limit::new(
    "seconds",
    1,
    600,
    "the guest churns in silence and the host stops a guest silent past --check-timeout (120 s by default, raise it for longer churns); ten minutes is as long as the check's records are sized for (peers x seconds below)",
)
.unit(" s");
/// Echoes of the staying clients, each kept until the end.
const PEER_SECONDS: Limit = Limit::new(
    "seconds",
    1,
    4000,
    "each staying client echoes twice a second and every echo is kept until the end (about 300 bytes with the probe server's record of it) and searched for its reply: 4000 peer-seconds (100 peers for 40 s, 10 for 400 s) are 8000 echoes, about 2.4 MiB of the guest",
)
.on("peers x seconds");

impl Check for PeerChurn {
    const INFO: Info = Info {
        results: "peer-churn/departed, peer-churn/address-reused, peer-churn/steady",
        behaviours: "20",
        description: "a client leaves with a flow open: the internet host still sending to it gets the relay's ICMP error about its own datagram (not about the tunnel address); a new client given the departed one's address receives none of its traffic and its own flow works; while the relay adds and removes `rate` peers a second, `peers` other clients' flows keep being answered",
        timeout: Duration::from_secs(30),
        needs_wireguard: true,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "",
        limits: &[PEERS, RATE, SECONDS, PEER_SECONDS],
        capture_first: true,
    };
    const TOGETHER: bool = true;
    type Case = Part;

    fn cases(&self) -> Vec<(String, Part)> {
        vec![
            ("peer-churn/departed".into(), Part::Departed),
            ("peer-churn/address-reused".into(), Part::AddressReused),
            ("peer-churn/steady".into(), Part::Steady),
        ]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        PEERS.check(self.peers)?;
        RATE.check(self.rate)?;
        SECONDS.check(self.seconds)?;
        let product = u64::from(self.peers) * u64::from(self.seconds);
        PEER_SECONDS.check_derived(
            product,
            format!("{} x {} = {product}", self.peers, self.seconds),
        )?;
        Ok(())
    }

    fn run(&self, ctx: &mut Context, part: &Part) -> Result<Verdict> {
        Ok(self.run_together(ctx, &[*part])?.remove(0))
    }

    fn run_together(&self, ctx: &mut Context, parts: &[Part]) -> Result<Vec<Verdict>> {
        let a = *ctx.a();
        if let Err(why) = ctx.topo.wg() {
            return Ok(parts
                .iter()
                .map(|p| Verdict::unsupported(self.expectation(&a, *p, None), why.clone()))
                .collect());
        }
        let mut made: Vec<Client> = Vec::new();
        let outcome = self.churn(ctx, &a, &mut made);
        for c in &made {
            let _ = clients::remove(&ctx.topo, c);
            clients::forget(&ctx.topo, c);
        }
        let o = outcome?;
        Ok(parts
            .iter()
            .map(|p| {
                let expected = self.expectation(&a, *p, o.departed_addr);
                match p {
                    Part::Departed => Verdict::judge(o.departed.0, expected, o.departed.1.clone()),
                    Part::AddressReused => Verdict::judge(o.reused.0, expected, o.reused.1.clone()),
                    Part::Steady => Verdict::judge(o.steady.0, expected, o.steady.1.clone())
                        .with_series(o.series.clone()),
                }
            })
            .collect())
    }
}

/// What the three parts concluded: (ok, observed) each.
struct Outcome {
    departed_addr: Option<IpAddr>,
    departed: (bool, String),
    reused: (bool, String),
    steady: (bool, String),
    series: Series,
}

impl PeerChurn {
    fn expectation(&self, a: &Addrs, part: Part, departed: Option<IpAddr>) -> String {
        let who = departed
            .map(|d| format!("client {d}"))
            .unwrap_or_else(|| "a client".into());
        match part {
            Part::Departed => format!(
                "after {who} leaves (its peer removed from the relay) with a flow open, {} still sending to the flow's mapping on {} gets ICMP destination unreachable about its own datagram as it sent it (to {}), not about the client's tunnel address",
                a.internet, a.relay_wan, a.relay_wan
            ),
            Part::AddressReused => format!(
                "a new client given {who}'s tunnel address, once the relay has forgotten the old flows, receives none of what {} still sends to the old mapping, and its own flow reaches {} from {} and is answered",
                a.internet, a.internet, a.relay_wan
            ),
            Part::Steady => format!(
                "while the relay adds and removes {} peers a second for {} s, each of {} clients' UDP flows keeps being answered",
                self.rate, self.seconds, self.peers
            ),
        }
    }

    fn churn(&self, ctx: &mut Context, a: &Addrs, made: &mut Vec<Client>) -> Result<Outcome> {
        let f = a.family;
        let endpoint = SocketAddr::new(a.relay_public, ctx.topo.listen_port);
        // The clients that stay, each with an echo flow.
        for _ in 0..self.peers {
            let index = ctx.topo.fresh_client_index();
            let port = ctx.topo.fresh_client_port();
            made.push(clients::add(&ctx.topo, index, endpoint, port, None)?);
        }
        let staying: Vec<(UdpSocket, String)> = made
            .iter()
            .map(|c| {
                let addr = c.addr(f).context("a staying client has no address")?;
                let s = ctx.topo.client.run(|| {
                    let s =
                        UdpSocket::bind((addr, 0)).context("binding a staying client's socket")?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })?;
                Ok((s, ctx.tag("stay")))
            })
            .collect::<Result<_>>()?;
        // The client that leaves, talking to a socket of the internet host's.
        let index = ctx.topo.fresh_client_index();
        let port = ctx.topo.fresh_client_port();
        let leaver = clients::add(&ctx.topo, index, endpoint, port, None)?;
        let leaver_addr = leaver
            .addr(f)
            .context("the departing client has no address")?;
        let far = ctx.topo.internet.run(|| {
            let s = UdpSocket::bind((a.internet, STAY_PORT)).with_context(|| {
                format!("binding {} on the internet host", at(a.internet, STAY_PORT))
            })?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(s)
        })?;
        let near = ctx.topo.client.run(|| {
            let s = UdpSocket::bind((leaver_addr, 0))
                .context("binding the departing client's socket")?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(s)
        })?;
        let near_port = near.local_addr()?.port();
        let tag = ctx.tag("departing");
        let mapping = first_exchange(&near, &far, SocketAddr::new(a.internet, STAY_PORT), &tag)?;
        made.push(leaver);
        let Some(mapping) = mapping else {
            let why = format!(
                "the departing client's flow never worked (nothing reached {} within {} s)",
                at(a.internet, STAY_PORT),
                HANDSHAKE_TIMEOUT.as_secs()
            );
            return Ok(Outcome {
                departed_addr: Some(leaver_addr),
                departed: (false, why.clone()),
                reused: (false, why.clone()),
                steady: (false, why),
                series: Series::default(),
            });
        };
        let icmp = IcmpSocket::open(&ctx.topo.internet, f == crate::types::Family::Ipv6)?;
        icmp.drain();
        // The departure: the relay removes the peer; the flow stays in conntrack.
        let (_, relay_wg) = ctx.topo.wg().map_err(anyhow::Error::msg)?;
        let leaver = made.last().context("the departing client")?;
        relay_wg.remove_peer(&leaver.wg.public_key())?;
        let departed = watch_departure(&far, &icmp, mapping, a, leaver_addr);
        // The departed client's socket goes with it (its port is the new
        // client's to hold).
        drop(near);
        // The relay forgets the departed client's flows, as relays do before
        // they give its address to someone else; a new client takes it.
        if self.forget {
            clients::forget(&ctx.topo, leaver);
        }
        clients::remove(&ctx.topo, leaver)?;
        made.pop();
        let newcomer_port = ctx.topo.fresh_client_port();
        let newcomer = clients::add(&ctx.topo, index, endpoint, newcomer_port, None)?;
        made.push(newcomer);
        let newcomer = made.last().context("the new client")?;
        let reused = self.reused(ctx, newcomer, &far, mapping, near_port, a)?;
        // Steady churn on the relay while the staying clients' flows go on.
        let in_use: Vec<Vec<(IpAddr, u8)>> = made
            .iter()
            .take(staying.len())
            .map(|c| c.tunnel.iter().map(|n| (n.addr, n.prefix)).collect())
            .collect();
        let (steady, series) = self.steady(ctx, &staying, &in_use, a)?;
        Ok(Outcome {
            departed_addr: Some(leaver_addr),
            departed,
            reused,
            steady,
            series,
        })
    }

    /// The new client holds a socket on the departed one's port too: it
    /// must get nothing of the old flow; its own flow must work.
    fn reused(
        &self,
        ctx: &mut Context,
        newcomer: &Client,
        far: &UdpSocket,
        mapping: SocketAddr,
        old_port: u16,
        a: &Addrs,
    ) -> Result<(bool, String)> {
        let addr = newcomer
            .addr(a.family)
            .context("the new client has no address")?;
        let (trap, own) = ctx.topo.client.run(|| {
            let trap = UdpSocket::bind((addr, old_port))
                .context("binding the departed client's port on the new client")?;
            trap.set_nonblocking(true)?;
            let own = UdpSocket::bind((addr, 0)).context("binding the new client's socket")?;
            Ok((trap, own))
        })?;
        let tag = ctx.tag("newcomer");
        let dest = SocketAddr::new(a.internet, probes::UDP_PORT);
        let works = probes::udp_echo_on(&own, dest, &tag, HANDSHAKE_TIMEOUT).is_ok();
        let seen = ctx.topo.internet_host()?.seen(&tag);
        let masqueraded = seen.as_ref().map(|s| s.source) == Some(a.relay_wan);
        // The internet host keeps sending to the old mapping.
        let mut leaked = 0u32;
        let mut buf = [0u8; 512];
        let start = Instant::now();
        let mut sent = 0u32;
        while start.elapsed() < Duration::from_secs(2) {
            let _ = far.send_to(b"for-the-departed", mapping);
            sent += 1;
            std::thread::sleep(Duration::from_millis(100));
            while let Ok((n, _)) = trap.recv_from(&mut buf) {
                if &buf[..n] == b"for-the-departed" {
                    leaked += 1;
                }
            }
        }
        let ok = leaked == 0 && works && masqueraded;
        Ok((
            ok,
            format!(
                "the new client at {addr} received {leaked} of {sent} datagrams sent to the old mapping {mapping}; its own flow {} and reached {} from {}",
                if works { "was answered" } else { "got no answer" },
                a.internet,
                seen.map(|s| s.source.to_string())
                    .unwrap_or_else(|| "nowhere".into())
            ),
        ))
    }

    /// Add and remove peers on the relay at `rate` a second for `seconds`
    /// while every staying client echoes twice a second; all answered?
    fn steady(
        &self,
        ctx: &mut Context,
        staying: &[(UdpSocket, String)],
        in_use: &[Vec<(IpAddr, u8)>],
        a: &Addrs,
    ) -> Result<((bool, String), Series)> {
        let (_, relay_wg) = ctx.topo.wg().map_err(anyhow::Error::msg)?;
        let dest = SocketAddr::new(a.internet, probes::UDP_PORT);
        let duration = Duration::from_secs(u64::from(self.seconds));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let topo = &ctx.topo;
        let (churned, errors, flows) = std::thread::scope(|s| {
            let churn = s.spawn(|| {
                let mut done = 0u32;
                let mut errors = Vec::new();
                let start = Instant::now();
                let every = Duration::from_secs(1) / self.rate;
                let mut slot = 0u32;
                while start.elapsed() < duration {
                    let key = wireguard_control::KeyPair::generate().public;
                    let allowed: Vec<(IpAddr, u8)> = match self.churn_addresses {
                        // Addresses no client of the run is given.
                        ChurnAddresses::Spare => {
                            let index = MAX_CLIENTS - 1 - (slot % clients::SPARE);
                            topo.families
                                .iter()
                                .filter_map(|f| clients::tunnel_address(&topo.spec, *f, index))
                                .map(|n| (n.addr, n.prefix))
                                .collect()
                        }
                        ChurnAddresses::InUse => in_use
                            .get(slot as usize % in_use.len().max(1))
                            .cloned()
                            .unwrap_or_default(),
                    };
                    slot += 1;
                    let step = relay_wg
                        .add_peer(&key, &allowed, None)
                        .and_then(|()| relay_wg.remove_peer(&key));
                    match step {
                        Ok(()) => done += 1,
                        Err(e) => errors.push(format!("{e:#}")),
                    }
                    let next = every * done.max(1);
                    if let Some(wait) = next.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                (done, errors)
            });
            let flows = echo_flows(staying, dest, &stop);
            let (done, errors) = churn
                .join()
                .unwrap_or((0, vec!["the churn thread panicked".into()]));
            (done, errors, flows)
        });
        let (sent, answered, series) = flows;
        let ok = errors.is_empty() && sent > 0 && answered == sent;
        let observed = format!(
            "the relay added and removed {churned} peers in {} s ({:.1} a second); the {} staying clients' flows: {answered} of {sent} echoes answered{}",
            self.seconds,
            f64::from(churned) / f64::from(self.seconds),
            staying.len(),
            errors
                .first()
                .map(|e| format!("; changing the relay's peers failed: {e}"))
                .unwrap_or_default()
        );
        Ok(((ok, observed), series))
    }
}

/// The departing client's first exchange with the internet host's socket:
/// the mapping (the relay's address and port) the internet host saw.
fn first_exchange(
    near: &UdpSocket,
    far: &UdpSocket,
    far_addr: SocketAddr,
    tag: &str,
) -> Result<Option<SocketAddr>> {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    while start.elapsed() < HANDSHAKE_TIMEOUT {
        near.send_to(tag.as_bytes(), far_addr)
            .context("sending from the departing client")?;
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            if let Ok((n, from)) = far.recv_from(&mut buf) {
                if &buf[..n] == tag.as_bytes() {
                    far.send_to(&buf[..n], from)
                        .context("answering the departing client")?;
                    return Ok(Some(from));
                }
            }
        }
    }
    Ok(None)
}

/// The internet host goes on sending to the departed client's mapping:
/// the ICMP errors it gets back, judged.
fn watch_departure(
    far: &UdpSocket,
    icmp: &IcmpSocket,
    mapping: SocketAddr,
    a: &Addrs,
    client: IpAddr,
) -> (bool, String) {
    let start = Instant::now();
    let mut last_send: Option<Instant> = None;
    let mut sent = 0u32;
    let mut errors = Vec::new();
    while start.elapsed() < AFTER_DEPARTURE {
        if last_send.is_none_or(|t| t.elapsed() >= Duration::from_millis(300)) {
            let _ = far.send_to(b"to-the-departed", mapping);
            sent += 1;
            last_send = Some(Instant::now());
        }
        while let Some(p) = icmp.recv() {
            if p.is_unreachable() && p.inner_proto == Some(17) && p.inner_sport == Some(STAY_PORT) {
                errors.push(p);
            }
        }
        // One error is the answer; a few more confirm it is not a fluke.
        if errors.len() >= 2 {
            break;
        }
    }
    let about_own = |p: &probes::IcmpPacket| {
        p.inner_src == Some(a.internet)
            && p.inner_dst == Some(mapping.ip())
            && p.inner_dport == Some(mapping.port())
    };
    let show = |p: &probes::IcmpPacket| {
        format!(
            "from {}, type {} code {}, about a datagram to {}",
            p.source,
            p.icmp_type,
            p.code,
            match (p.inner_dst, p.inner_dport) {
                (Some(d), Some(port)) => at(d, port).to_string(),
                _ => "an unreadable header".into(),
            }
        )
    };
    match errors.first() {
        None => (
            false,
            format!(
                "{} sent {sent} datagrams to {mapping} after the client {client} left, and got no ICMP error back within {} s",
                a.internet,
                AFTER_DEPARTURE.as_secs()
            ),
        ),
        Some(p) => (
            errors.iter().all(about_own),
            format!(
                "after the client {client} left, {} got {} ICMP error(s) for its {sent} datagrams to {mapping}: {}",
                a.internet,
                errors.len(),
                show(p)
            ),
        ),
    }
}

/// Echo twice a second on every staying client's socket until `stop`:
/// (sent, answered after resends, per-second series).
fn echo_flows(
    flows: &[(UdpSocket, String)],
    dest: SocketAddr,
    stop: &std::sync::atomic::AtomicBool,
) -> (u32, u32, Series) {
    const EVERY: Duration = Duration::from_millis(500);
    let start = Instant::now();
    // (tag, socket index, first sent, last sent, answered)
    let mut probes: Vec<(String, usize, Duration, Duration, bool)> = Vec::new();
    let mut next = Duration::ZERO;
    let mut seq = 0u32;
    let mut buf = [0u8; 512];
    let stopping = || stop.load(std::sync::atomic::Ordering::SeqCst);
    let mut settle: Option<Instant> = None;
    loop {
        let now = start.elapsed();
        if !stopping() && now >= next {
            for (i, (s, base)) in flows.iter().enumerate() {
                let tag = format!("{base}-{seq}");
                let _ = s.send_to(tag.as_bytes(), dest);
                probes.push((tag, i, now, now, false));
            }
            seq += 1;
            next += EVERY;
        }
        for (i, (s, _)) in flows.iter().enumerate() {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                let got = &buf[..n];
                if let Some(p) = probes
                    .iter_mut()
                    .find(|p| p.1 == i && p.0.as_bytes() == got)
                {
                    p.4 = true;
                }
            }
        }
        // A datagram lost on a busy guest is sent again, twice at most.
        for p in probes.iter_mut().filter(|p| !p.4) {
            if now >= p.3 + Duration::from_secs(1) && now < p.2 + Duration::from_millis(3500) {
                let _ = flows[p.1].0.send_to(p.0.as_bytes(), dest);
                p.3 = now;
            }
        }
        if stopping() {
            let since = *settle.get_or_insert_with(Instant::now);
            if probes.iter().all(|p| p.4) || since.elapsed() >= Duration::from_millis(3500) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let steps = (start.elapsed().as_secs() + 1) as usize;
    let mut sent = vec![0u32; steps];
    let mut answered = vec![0u32; steps];
    for p in &probes {
        let k = (p.2.as_secs() as usize).min(steps - 1);
        sent[k] += 1;
        answered[k] += u32::from(p.4);
    }
    let stopped_at_ms = sent
        .iter()
        .zip(&answered)
        .position(|(s, a)| a < s)
        .map(|k| k as u64 * 1000);
    let total = probes.len() as u32;
    let ok = probes.iter().filter(|p| p.4).count() as u32;
    (
        total,
        ok,
        Series {
            step_ms: 1000,
            sent,
            answered,
            stopped_at_ms,
        },
    )
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn three_results_and_bounded_parameters() {
        let s = scenario_with("kind = \"peer-churn\"").unwrap();
        assert_eq!(
            s.checks[0].result_names(),
            [
                "peer-churn/departed",
                "peer-churn/address-reused",
                "peer-churn/steady"
            ]
        );
        assert!(scenario_with("kind = \"peer-churn\"\npeers = 0").is_err());
        assert!(scenario_with("kind = \"peer-churn\"\nrate = 0").is_err());
    }
}

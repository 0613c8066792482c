//! Behaviour 18: a client on a restrictive network (a stateful firewall or
//! NAT in front of it that lets in only replies from exactly where it sent)
//! keeps a WireGuard session through each redirected port, for longer than
//! conntrack's state changes, through quiet periods bridged by keepalives;
//! and WireGuard's endpoint stays the port the client chose.
//!
//! One session per port, all at once: each is a client of its own
//! (`agent::clients`) with a UDP flow, an ICMP echo stream and a TCP
//! connection through its tunnel to the internet host, masqueraded by the
//! relay. A reply from any other port than the chosen one never reaches
//! the client (its firewall drops it) or moves WireGuard's endpoint: both
//! fail the session.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::check::{ports_given, Check, Info, Phase};
use super::common::{at, relay_reaches, EXCHANGE_TIMEOUT, HANDSHAKE_TIMEOUT};
use super::context::Context;
use super::faults::{make_faults, Fault};
use super::patience::{self, Awaited};
use super::verdict::Verdict;
use crate::agent::clients::{self, Client, MAX_CLIENTS};
use crate::agent::netns::Netns;
use crate::agent::probes::{self, IcmpSocket, InternetHost};
use crate::agent::wireguard::WgInterface;
use crate::bounds::{Invalid, Limit};
use crate::protocol::Series;
use crate::scenario::setup::Setup;
use crate::scenario::topology::Addrs;
use crate::types::IpNet;

/// Sessions through each of `ports` of the relay, side by side: each keeps
/// UDP, ICMP and TCP going through its tunnel for `duration` seconds, in
/// stretches of `active` seconds (longer than the 2 s after which conntrack
/// promotes a UDP flow to a stream) separated by `idle` seconds of quiet in
/// which only WireGuard's keepalives (every `keepalive` seconds) cross.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub ports: Vec<u16>,
    #[serde(default = "default_duration")]
    pub duration: u32,
    #[serde(default = "default_active")]
    pub active: u32,
    #[serde(default = "default_idle")]
    pub idle: u32,
    /// 0: no keepalive (a negative control: quiet periods then break it).
    #[serde(default = "default_keepalive")]
    pub keepalive: u16,
    /// Faults made on purpose while the sessions run (negative controls,
    /// and to see that a soak notices an outage and when it began).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
}

fn default_duration() -> u32 {
    10
}
fn default_active() -> u32 {
    4
}
fn default_idle() -> u32 {
    3
}
fn default_keepalive() -> u16 {
    1
}

/// Probes go out twice a second in active stretches.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// An unanswered UDP or ICMP probe is sent again after this (a datagram
/// lost on a busy guest is not a broken session)...
const RESEND_AFTER: Duration = Duration::from_millis(1000);
/// ...at most this many times...
const RESENDS: u32 = 2;
/// ...and counts as lost once this old.
const LOST_AFTER: Duration = Duration::from_millis(3500);
/// How long the relay tries to reach the client after a quiet period.
const REACH_WAIT: Duration = Duration::from_secs(3);
/// The series' step.
const STEP: Duration = Duration::from_secs(1);
/// WireGuard's endpoints are read this often (each read is a netlink dump
/// from a thread of the namespace: not free on a one-vCPU guest).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// A long session tells the host it is alive this often.
const NOTE_EVERY: Duration = Duration::from_secs(30);

/// Sessions at once.
const PORTS: Limit = Limit::new(
    "ports",
    1,
    MAX_CLIENTS as u64,
    "each session is a client of its own in the tunnel's network, which holds 239 beyond the scenario's addresses",
)
.on("the number of ports");
/// How long the sessions last.
const DURATION: Limit = Limit::new(
    "duration",
    3,
    86_400,
    "a day is the longest soak natvet runs, and the probes of every session-second are kept (ports x duration below)",
)
.unit(" s");
/// One stretch of traffic.
const ACTIVE: Limit = Limit::new(
    "active",
    3,
    3600,
    "a stretch of traffic must outlast conntrack's 2 s before a UDP flow becomes a stream; an hour is already a session of its own",
)
.unit(" s");
/// One quiet period.
const IDLE: Limit = Limit::new(
    "idle",
    0,
    600,
    "a quiet period is waited out in silence and the host stops a guest silent past --check-timeout (120 s by default, raise it for longer quiet); firewall UDP timeouts worth bridging are at most minutes",
)
.unit(" s");
/// WireGuard's persistent keepalive.
const KEEPALIVE: Limit = Limit::new(
    "keepalive",
    0,
    600,
    "a keepalive is worth something only within the quiet periods it bridges (idle, at most 600 s); 0 turns it off",
)
.unit(" s");
/// Faults made on purpose.
const FAULTS: Limit = Limit::new(
    "faults",
    0,
    16,
    "the faults are made one after another by one thread while the sessions run, each a note to the host: more than 16 in one session say nothing more",
)
.on("the number of faults");
/// What the sessions keep, for the whole duration.
const SESSION_SECONDS: Limit = Limit::new(
    "duration",
    3,
    50_000,
    "every second of a session keeps about 1.2 KiB in the guest until the end (six probe records of 48 bytes in a list that may be twice their size, and four entries in the probe server's ledger): 50000 session-seconds take about 60 MiB of the 384 MiB default guest (7 sessions for 2 h, 1 for 13 h)",
)
.on("ports x duration")
.unit(" session-seconds");

impl Check for Session {
    const INFO: Info = Info {
        results: "session/PORT",
        behaviours: "18",
        description: "a client behind a stateful firewall keeps a tunnel session through the relay's PORT (all ports at once) for `duration` s: UDP, ICMP and TCP through it are masqueraded and answered, quiet periods longer than the firewall's UDP timeout are bridged by keepalives (the relay reaches the client after each), and the client's WireGuard endpoint stays PORT",
        timeout: Duration::from_secs(10 + 12 + 4),
        needs_wireguard: true,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "ports = [53]",
        limits: &[PORTS, DURATION, ACTIVE, IDLE, KEEPALIVE, FAULTS, SESSION_SECONDS],
        capture_first: true,
    };
    const TOGETHER: bool = true;
    type Case = u16;

    fn cases(&self) -> Vec<(String, u16)> {
        self.ports
            .iter()
            .map(|p| (format!("session/{p}"), *p))
            .collect()
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        ports_given("session", &self.ports, &PORTS)?;
        ACTIVE.check(self.active)?;
        IDLE.check(self.idle)?;
        KEEPALIVE.check(self.keepalive)?;
        DURATION.check(self.duration)?;
        if self.duration < self.active {
            return Err(format!(
                "check session: duration {} s is shorter than one active stretch ({} s): raise duration or lower active",
                self.duration, self.active
            )
            .into());
        }
        FAULTS.check_len(self.faults.len())?;
        for f in &self.faults {
            // `at` below duration, `seconds` at most duration: no overflow in u32.
            if f.at >= self.duration || f.seconds == 0 || f.seconds > self.duration {
                return Err(format!(
                    "check session: a fault at {} s for {} s does not fall within the session's {} s",
                    f.at, f.seconds, self.duration
                )
                .into());
            }
        }
        // Both at most their limits: no overflow in u64.
        let product = self.ports.len() as u64 * u64::from(self.duration);
        SESSION_SECONDS.check_derived(
            product,
            format!("{} x {} = {product}", self.ports.len(), self.duration),
        )?;
        Ok(())
    }

    fn run(&self, ctx: &mut Context, port: &u16) -> Result<Verdict> {
        let mut v = self.run_together(ctx, std::slice::from_ref(port))?;
        Ok(v.remove(0))
    }

    fn run_together(&self, ctx: &mut Context, ports: &[u16]) -> Result<Vec<Verdict>> {
        let a = *ctx.a();
        let expected: Vec<String> = ports.iter().map(|p| self.expectation(&a, *p)).collect();
        if let Err(why) = ctx.topo.wg() {
            return Ok(expected
                .into_iter()
                .map(|e| Verdict::unsupported(e, why.clone()))
                .collect());
        }
        let keepalive = (self.keepalive > 0).then_some(self.keepalive);
        let mut made: Vec<Client> = Vec::new();
        let mut setup = || -> Result<()> {
            for port in ports {
                let index = ctx.topo.fresh_client_index();
                let source = ctx.topo.fresh_client_port();
                let endpoint = SocketAddr::new(a.relay_public, *port);
                made.push(clients::add(&ctx.topo, index, endpoint, source, keepalive)?);
            }
            Ok(())
        };
        let set_up = setup();
        let tags: Vec<String> = ports
            .iter()
            .map(|p| ctx.tag(&format!("session-{p}")))
            .collect();
        let logs = set_up.and_then(|()| {
            let topo = &ctx.topo;
            let (_, relay_wg) = topo.wg().map_err(anyhow::Error::msg)?;
            let host = topo.internet_host()?;
            let plan = Plan {
                duration: Duration::from_secs(u64::from(self.duration)),
                active: Duration::from_secs(u64::from(self.active)),
                idle: Duration::from_secs(u64::from(self.idle)),
            };
            let plan = &plan;
            let faults = &self.faults;
            let internet = IpNet::host(a.internet);
            std::thread::scope(|s| {
                if !faults.is_empty() {
                    s.spawn(move || make_faults(faults, &topo.relay, internet));
                }
                let runs: Vec<_> = made
                    .iter()
                    .zip(&tags)
                    .map(|(c, tag)| {
                        let ends = Ends {
                            client_ns: &topo.client,
                            relay_ns: &topo.relay,
                            relay_wg,
                            host,
                            a: &a,
                        };
                        s.spawn(move || run_session(c, tag, &ends, plan))
                    })
                    .collect();
                runs.into_iter()
                    .map(|r| {
                        r.join()
                            .map_err(|_| anyhow::anyhow!("a session's thread panicked"))?
                    })
                    .collect::<Result<Vec<Log>>>()
            })
        });
        let mut removal = Ok(());
        for c in &made {
            if let Err(e) = clients::remove(&ctx.topo, c) {
                removal = removal.and(Err(e));
            }
            clients::forget(&ctx.topo, c);
        }
        let logs = logs?;
        removal?;
        Ok(ports
            .iter()
            .zip(expected)
            .zip(logs)
            .map(|((port, expected), log)| {
                let ep = at(a.relay_public, *port);
                let (ok, observed) = log.judge(ep, &a, self);
                Verdict::judge(ok, expected, observed).with_series(log.series())
            })
            .collect())
    }
}

impl Session {
    fn expectation(&self, a: &Addrs, port: u16) -> String {
        let ep = at(a.relay_public, port);
        let bridged = match self.keepalive {
            0 => "with no keepalive".to_string(),
            k => format!("bridged by keepalives every {k} s"),
        };
        format!(
            "a client behind its network's stateful firewall keeps a tunnel session through {ep} for {} s: UDP, ICMP and TCP through the tunnel reach {} from {} and are answered, across quiet periods of {} s {bridged} after which the relay reaches the client, and its WireGuard endpoint stays {ep}",
            self.duration, a.internet, a.relay_wan, self.idle
        )
    }
}

/// How a session's time is spent.
struct Plan {
    duration: Duration,
    active: Duration,
    idle: Duration,
}

/// What a session talks to.
struct Ends<'a> {
    client_ns: &'a Netns,
    relay_ns: &'a Netns,
    relay_wg: &'a WgInterface,
    host: &'a InternetHost,
    a: &'a Addrs,
}

/// The three kinds of probe a session sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Udp,
    Icmp,
    Tcp,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Udp => "UDP",
            Kind::Icmp => "ICMP",
            Kind::Tcp => "TCP",
        }
    }
}

/// One probe in flight.
struct Probe {
    kind: Kind,
    seq: u32,
    first_sent: Duration,
    last_sent: Duration,
    resends: u32,
    answered: bool,
}

/// What happened in one session, as it happened.
#[derive(Default)]
struct Log {
    handshake: Option<Duration>,
    /// The first thing that went wrong, and when (from the session's start).
    failure: Option<(Duration, String)>,
    probes: Vec<Probe>,
    quiet_periods: u32,
    /// The longest the relay took to reach the client after a quiet period.
    slowest_reach: Option<Duration>,
    endpoint_samples: u32,
    /// The client's latest handshake as last read, and how often it moved
    /// on (a rekey: WireGuard renews the keys every 120 s of use).
    last_handshake: Option<std::time::SystemTime>,
    rekeys: u32,
    /// The relay's view of the client, as first seen.
    relay_saw: Option<SocketAddr>,
    /// Where the internet host saw the session's UDP and TCP come from.
    seen_udp: Option<IpAddr>,
    seen_tcp: Option<IpAddr>,
    length: Duration,
}

impl Log {
    fn fail(&mut self, at: Duration, what: String) {
        if self.failure.is_none() {
            self.failure = Some((at, what));
        }
    }

    fn counts(&self) -> BTreeMap<Kind, (u32, u32)> {
        let mut m = BTreeMap::new();
        for p in &self.probes {
            let e = m.entry(p.kind).or_insert((0, 0));
            e.0 += 1;
            e.1 += u32::from(p.answered);
        }
        m
    }

    /// Probes sent and answered per step, and the first step that lost one.
    fn series(&self) -> Series {
        let steps = (self.length.as_millis() / STEP.as_millis()) as usize + 1;
        let mut sent = vec![0u32; steps];
        let mut answered = vec![0u32; steps];
        for p in &self.probes {
            let k = ((p.first_sent.as_millis() / STEP.as_millis()) as usize).min(steps - 1);
            sent[k] += 1;
            answered[k] += u32::from(p.answered);
        }
        let stopped_at_ms = sent
            .iter()
            .zip(&answered)
            .position(|(s, a)| a < s)
            .map(|k| k as u64 * STEP.as_millis() as u64);
        Series {
            step_ms: STEP.as_millis() as u64,
            sent,
            answered,
            stopped_at_ms,
        }
    }

    /// The verdict and its observation.
    fn judge(&self, endpoint: SocketAddr, a: &Addrs, check: &Session) -> (bool, String) {
        let Some(handshake) = self.handshake else {
            let why = self
                .failure
                .as_ref()
                .map(|(_, w)| w.clone())
                .unwrap_or_else(|| "no handshake".into());
            return (false, why);
        };
        if let (true, Some((_, what))) = (self.probes.is_empty(), &self.failure) {
            return (
                false,
                format!(
                    "handshake via {endpoint} after {} ms; then {what}",
                    handshake.as_millis()
                ),
            );
        }
        let counts = self.counts();
        let all_answered = counts.values().all(|(s, n)| s == n) && !counts.is_empty();
        let masqueraded = self.seen_udp == Some(a.relay_wan) && self.seen_tcp == Some(a.relay_wan);
        let mut observed = format!(
            "handshake via {endpoint} after {} ms; in {:.0} s, {} answered",
            handshake.as_millis(),
            self.length.as_secs_f32(),
            counts
                .iter()
                .map(|(k, (s, n))| format!("{} {n}/{s}", k.label()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let show = |s: Option<IpAddr>| s.map(|s| s.to_string()).unwrap_or_else(|| "nowhere".into());
        observed.push_str(&format!(
            ", reaching {} from {} (UDP) and {} (TCP)",
            a.internet,
            show(self.seen_udp),
            show(self.seen_tcp)
        ));
        if check.idle > 0 {
            observed.push_str(&format!(
                "; after {} quiet periods of {} s the relay reached the client{}",
                self.quiet_periods,
                check.idle,
                self.slowest_reach
                    .map(|d| format!(" (in {} ms at most)", d.as_millis()))
                    .unwrap_or_default()
            ));
        }
        observed.push_str(&format!(
            "; the client's endpoint stayed {endpoint} ({} samples), the relay saw the client at {}",
            self.endpoint_samples,
            self.relay_saw
                .map(|s| s.to_string())
                .unwrap_or_else(|| "no address".into())
        ));
        // A session longer than REKEY_AFTER_TIME crosses a rekey; a shorter
        // one may too (a handshake retried when its response came late).
        let must_rekey = self.length > super::rekey::REKEY_AFTER + Duration::from_secs(5);
        observed.push_str(&format!(
            "; WireGuard rekeyed {} time(s) in the session",
            self.rekeys
        ));
        if let Some((t, what)) = &self.failure {
            observed.push_str(&format!("; at {:.1} s: {what}", t.as_secs_f32()));
        }
        let ok = self.failure.is_none()
            && all_answered
            && masqueraded
            && (!must_rekey || self.rekeys > 0);
        (ok, observed)
    }
}

/// The sockets of one session, all bound to its tunnel address.
struct Sockets {
    udp: UdpSocket,
    icmp: IcmpSocket,
    tcp: TcpStream,
    tcp_buf: Vec<u8>,
    icmp_id: u16,
}

/// One session, start to end. Failures of the session are in the log; an
/// `Err` is natvet failing to run it.
fn run_session(c: &Client, tag: &str, ends: &Ends, plan: &Plan) -> Result<Log> {
    let a = ends.a;
    let addr = c
        .addr(a.family)
        .with_context(|| format!("session client {} has no {} address", c.wg.name, a.family))?;
    let mut log = Log::default();
    let start = Instant::now();
    let udp_dest = SocketAddr::new(a.internet, probes::UDP_PORT);
    let udp = ends.client_ns.run(|| {
        let s = UdpSocket::bind((addr, 0)).context("binding the session's UDP socket")?;
        s.set_nonblocking(true)?;
        Ok(s)
    })?;
    // Any packet into the tunnel makes WireGuard initiate the handshake.
    let first = format!("{tag}-u0");
    let _ = udp.send_to(first.as_bytes(), udp_dest);
    let wait = patience::wait(Awaited::Handshake, HANDSHAKE_TIMEOUT);
    while c.wg.peer_state()?.and_then(|p| p.last_handshake).is_none() {
        if start.elapsed() >= wait {
            log.fail(
                start.elapsed(),
                format!(
                    "no handshake via {} within {:.1} s (the client sent from port {}){}{}",
                    c.endpoint,
                    wait.as_secs_f32(),
                    c.listen_port,
                    endpoint_of(c),
                    patience::why(Awaited::Handshake, wait, HANDSHAKE_TIMEOUT)
                ),
            );
            return Ok(log);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    log.handshake = Some(start.elapsed());
    patience::observed(Awaited::Handshake, start.elapsed());
    let tcp_tag = format!("{tag}-t");
    // A connection that does not come up through the tunnel is the
    // session failing, not natvet.
    let tcp = match probes::tcp_loop(
        ends.client_ns,
        addr,
        SocketAddr::new(a.internet, probes::TCP_PORT),
        &tcp_tag,
        EXCHANGE_TIMEOUT,
    ) {
        Ok(tcp) => tcp,
        Err(e) => {
            log.fail(
                start.elapsed(),
                format!("the session's TCP connection did not come up: {e:#}"),
            );
            log.seen_udp = ends.host.seen(&first).map(|s| s.source);
            return Ok(log);
        }
    };
    tcp.set_nonblocking(true)?;
    let mut s = Sockets {
        udp,
        icmp: IcmpSocket::open_bound(ends.client_ns, addr)?,
        tcp,
        tcp_buf: Vec::new(),
        icmp_id: rand::random(),
    };
    // The session's clock starts with the tunnel up.
    let t0 = Instant::now();
    let mut seq = 1u32;
    let mut last_note = Instant::now();
    loop {
        let stretch_end = (t0.elapsed() + plan.active).min(plan.duration);
        let mut next_probe = t0.elapsed();
        while t0.elapsed() < stretch_end {
            if t0.elapsed() >= next_probe {
                for kind in [Kind::Udp, Kind::Icmp, Kind::Tcp] {
                    send_probe(&mut s, tag, kind, seq, &udp_dest, a.internet)?;
                    log.probes.push(Probe {
                        kind,
                        seq,
                        first_sent: t0.elapsed(),
                        last_sent: t0.elapsed(),
                        resends: 0,
                        answered: false,
                    });
                }
                seq += 1;
                next_probe += PROBE_EVERY;
            }
            tend(&mut s, &mut log, tag, &t0, &udp_dest, a.internet)?;
            sample_endpoints(c, ends, &mut log, &t0)?;
            if last_note.elapsed() >= NOTE_EVERY {
                note_progress(c, &log, &t0);
                last_note = Instant::now();
            }
        }
        // Let the stretch's last probes be answered (or lost).
        let settle = Instant::now();
        while log
            .probes
            .iter()
            .any(|p| !p.answered && t0.elapsed() < p.first_sent + LOST_AFTER)
            && settle.elapsed() < LOST_AFTER
        {
            tend(&mut s, &mut log, tag, &t0, &udp_dest, a.internet)?;
        }
        tend(&mut s, &mut log, tag, &t0, &udp_dest, a.internet)?;
        let left = plan.duration.saturating_sub(t0.elapsed());
        if plan.idle.is_zero() || left < plan.idle + Duration::from_secs(1) {
            break;
        }
        // Quiet: nothing but WireGuard's keepalives (and our reading of its state).
        let quiet = Instant::now();
        while quiet.elapsed() < plan.idle {
            std::thread::sleep(Duration::from_millis(250));
            sample_endpoints(c, ends, &mut log, &t0)?;
        }
        log.quiet_periods += 1;
        let hello = format!("{tag}-reach{}", log.quiet_periods);
        match relay_reaches(ends.relay_ns, a.tunnel_relay, &s.udp, &hello, REACH_WAIT)? {
            Some(after) => {
                log.slowest_reach = Some(log.slowest_reach.map_or(after, |d| d.max(after)));
            }
            None => log.fail(
                t0.elapsed(),
                format!(
                    "after {} s quiet, nothing the relay sent reached the client within {} s (its network's firewall no longer let the session in)",
                    plan.idle.as_secs(),
                    REACH_WAIT.as_secs()
                ),
            ),
        }
        if t0.elapsed() >= plan.duration {
            break;
        }
    }
    log.length = t0.elapsed();
    log.seen_udp = ends.host.seen(&first).map(|s| s.source);
    log.seen_tcp = ends.host.seen(&tcp_tag).map(|s| s.source);
    let _ = s.tcp.shutdown(std::net::Shutdown::Both);
    Ok(log)
}

/// The client's WireGuard endpoint, for an observation.
fn endpoint_of(c: &Client) -> String {
    match c.wg.peer_state() {
        Ok(Some(p)) => format!(
            "; its endpoint was {}",
            p.endpoint
                .map(|e| e.to_string())
                .unwrap_or_else(|| "none".into())
        ),
        _ => String::new(),
    }
}

fn send_probe(
    s: &mut Sockets,
    tag: &str,
    kind: Kind,
    seq: u32,
    udp_dest: &SocketAddr,
    internet: IpAddr,
) -> Result<()> {
    match kind {
        // A full socket buffer only delays a datagram to its resend.
        Kind::Udp => {
            let _ = s.udp.send_to(format!("{tag}-u{seq}").as_bytes(), udp_dest);
        }
        Kind::Icmp => {
            let _ = s.icmp.send_echo(internet, s.icmp_id, seq as u16);
        }
        Kind::Tcp => {
            // TCP resends by itself; a write that fails means the connection broke.
            s.tcp
                .write_all(format!("t{seq}\n").as_bytes())
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::WouldBlock {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .context("writing to the session's TCP connection")?;
        }
    }
    Ok(())
}

/// Read every reply there is, resend what waits too long, and give up on
/// what is lost. Waits a little when there was nothing to read.
fn tend(
    s: &mut Sockets,
    log: &mut Log,
    tag: &str,
    t0: &Instant,
    udp_dest: &SocketAddr,
    internet: IpAddr,
) -> Result<()> {
    let mut got = false;
    let mut buf = [0u8; 512];
    let udp_prefix = format!("{tag}-u");
    while let Ok((n, _)) = s.udp.recv_from(&mut buf) {
        let text = String::from_utf8_lossy(&buf[..n]);
        if let Some(seq) = text
            .strip_prefix(&udp_prefix)
            .and_then(|x| x.parse::<u32>().ok())
        {
            mark(log, Kind::Udp, seq);
            got = true;
        }
    }
    while let Some(p) = s.icmp.recv() {
        if p.is_echo_reply() && p.id == s.icmp_id {
            // ICMP sequence numbers wrap at 16 bits; the newest matching one counts.
            if let Some(probe) = log
                .probes
                .iter_mut()
                .rev()
                .find(|q| q.kind == Kind::Icmp && q.seq as u16 == p.seq)
            {
                probe.answered = true;
            }
            got = true;
        }
    }
    loop {
        match s.tcp.read(&mut buf) {
            Ok(0) => {
                log.fail(
                    t0.elapsed(),
                    "the session's TCP connection was closed".into(),
                );
                break;
            }
            Ok(n) => {
                s.tcp_buf.extend_from_slice(&buf[..n]);
                got = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => {
                log.fail(
                    t0.elapsed(),
                    format!("the session's TCP connection broke: {e}"),
                );
                break;
            }
        }
    }
    while let Some(nl) = s.tcp_buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = s.tcp_buf.drain(..=nl).collect();
        let text = String::from_utf8_lossy(&line);
        if let Some(seq) = text
            .trim()
            .strip_prefix('t')
            .and_then(|x| x.parse::<u32>().ok())
        {
            mark(log, Kind::Tcp, seq);
        }
    }
    let now = t0.elapsed();
    let mut resend = Vec::new();
    let mut lost = None;
    for p in log.probes.iter_mut().filter(|p| !p.answered) {
        if now >= p.first_sent + LOST_AFTER {
            lost.get_or_insert((p.first_sent, p.kind));
        } else if p.kind != Kind::Tcp && p.resends < RESENDS && now >= p.last_sent + RESEND_AFTER {
            p.resends += 1;
            p.last_sent = now;
            resend.push((p.kind, p.seq));
        }
    }
    for (kind, seq) in resend {
        send_probe(s, tag, kind, seq, udp_dest, internet)?;
    }
    if let Some((sent, kind)) = lost {
        log.fail(
            sent,
            format!(
                "a {} probe sent then went unanswered for {:.1} s",
                kind.label(),
                LOST_AFTER.as_secs_f32()
            ),
        );
    }
    if !got {
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(())
}

fn mark(log: &mut Log, kind: Kind, seq: u32) {
    if let Some(p) = log
        .probes
        .iter_mut()
        .find(|p| p.kind == kind && p.seq == seq)
    {
        p.answered = true;
    }
}

/// Read WireGuard's endpoints once a second: the client's view of the
/// relay must stay the port it chose, the relay's view of the client must
/// not move.
fn sample_endpoints(c: &Client, ends: &Ends, log: &mut Log, t0: &Instant) -> Result<()> {
    let due = SAMPLE_EVERY * log.endpoint_samples;
    if t0.elapsed() < due {
        return Ok(());
    }
    log.endpoint_samples += 1;
    let state = c.wg.peer_state()?;
    let handshake = state.as_ref().and_then(|p| p.last_handshake);
    if log.last_handshake.is_some() && handshake != log.last_handshake {
        log.rekeys += 1;
    }
    log.last_handshake = handshake.or(log.last_handshake);
    let client_view = state.and_then(|p| p.endpoint);
    if client_view != Some(c.endpoint) {
        log.fail(
            t0.elapsed(),
            format!(
                "the client's WireGuard endpoint moved from {} to {}",
                c.endpoint,
                client_view
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "none".into())
            ),
        );
    }
    let key = c.wg.public_key();
    let relay_view = ends
        .relay_wg
        .peer_states()?
        .into_iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, p)| p.endpoint);
    match (log.relay_saw, relay_view) {
        (None, v) => log.relay_saw = v,
        (Some(first), Some(now)) if first != now => log.fail(
            t0.elapsed(),
            format!("the relay's endpoint for the client moved from {first} to {now}"),
        ),
        _ => {}
    }
    Ok(())
}

/// The host counts a silent guest as hung: a long session says how it goes.
fn note_progress(c: &Client, log: &Log, t0: &Instant) {
    let (sent, answered) = log
        .counts()
        .values()
        .fold((0, 0), |(s, n), (a, b)| (s + a, n + b));
    crate::agent::channel::send(&crate::protocol::GuestMessage::Note {
        message: format!(
            "session via {}: {} s, {answered}/{sent} probes answered",
            c.endpoint,
            t0.elapsed().as_secs()
        ),
    });
}

#[cfg(test)]
mod tests;

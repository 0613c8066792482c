//! UDP packets per second through tunnel and masquerade, across many flows:
//! `flows` sockets on the client's tunnel address, each its own source port
//! (so its own conntrack entry and masquerade mapping), keep `WINDOW`
//! datagrams each in flight to an echo server on the internet host; every
//! echo sends the next. A closed loop measures what the path forwards
//! without drowning it: the rate is the echoes that came back, twice
//! (there and back are both forwarded). The guest's busy CPU time over the
//! same window, divided by those packets, is the CPU cost of one.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::tcp_throughput::{SECONDS, STEP, WARM_UP};
use super::{cpu, stats};
use super::{FigureName, Measured, Probe};
use crate::agent::netns::Netns;
use crate::bounds::{Invalid, Limit};
use crate::checks::context::Context;
use crate::protocol::perf::Better;
use crate::scenario::setup::Setup;

/// The internet host's echo port for this probe.
pub const PORT: u16 = 5202;
/// Datagrams each flow keeps in flight.
const WINDOW: usize = 2;
/// A flow silent this long sends again (its datagram was lost).
const REFILL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpRate {
    #[serde(default = "default_flows")]
    pub flows: u16,
    #[serde(default = "default_seconds")]
    pub seconds: u32,
}

fn default_flows() -> u16 {
    32
}
fn default_seconds() -> u32 {
    3
}

pub const FLOWS: Limit = Limit::new(
    "flows",
    1,
    1024,
    "each flow is a socket and a conntrack entry on the relay, polled together by one thread: past a thousand the poll itself costs more than forwarding under TCG",
);

impl Probe for UdpRate {
    fn figures(&self, _: &Setup) -> Vec<FigureName> {
        vec![
            FigureName {
                probe: format!("udp-rate/{}-flows", self.flows),
                unit: "packets/s",
                better: Better::Higher,
            },
            FigureName {
                probe: format!("cpu-per-packet/{}-flows", self.flows),
                unit: "µs/packet",
                better: Better::Lower,
            },
        ]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        FLOWS.check(self.flows)?;
        Ok(SECONDS.check(self.seconds)?)
    }

    fn seconds(&self) -> u32 {
        self.seconds + 1
    }

    fn run(&self, ctx: &mut Context) -> Vec<Measured> {
        match self.measure(ctx) {
            Ok(m) => m,
            Err(e) => {
                let why = format!("{e:#}");
                vec![Measured::none(why.clone()), Measured::none(why)]
            }
        }
    }
}

impl UdpRate {
    fn measure(&self, ctx: &mut Context) -> Result<Vec<Measured>> {
        let a = *ctx.a();
        let dest = SocketAddr::new(a.internet, PORT);
        let server = EchoServer::start(&ctx.topo.internet, dest)?;
        let sockets: Vec<UdpSocket> = (0..self.flows)
            .map(|_| ctx.client_tunnel_socket())
            .collect::<Result<_>>()?;
        for s in &sockets {
            s.connect(dest)?;
        }
        // One exchange first: the path is up and the relay has mapped a flow.
        warm_up(&sockets[0], Duration::from_secs(5))?;
        sockets[0].set_nonblocking(true)?;
        for s in &sockets {
            s.set_nonblocking(true)?;
        }
        let secs = f64::from(self.seconds);
        let (events, ticks) = closed_loop(&sockets, Duration::from_secs_f64(secs));
        let sources = server.stop();
        let echoes = stats::total(&events, WARM_UP, secs);
        let window = secs - WARM_UP;
        let packets = 2.0 * echoes as f64;
        let samples: Vec<f64> = stats::rates(&events, WARM_UP, secs, STEP)
            .into_iter()
            .map(|r| 2.0 * r)
            .collect();
        let seen = format!(
            "the internet host saw them from {} source(s) {}",
            sources.len(),
            describe_sources(&sources, a.relay_wan)
        );
        let rate = Measured {
            value: Some(packets / window),
            note: format!(
                "{} UDP flows from {} through the tunnel to {dest}, {WINDOW} datagrams in flight each: {echoes} echoes in the {window:.2} s after the first {WARM_UP} s, each two packets forwarded; {seen}",
                self.flows, a.tunnel_client
            ),
            samples,
        };
        let hz = cpu::ticks_per_second() as f64;
        let cpu = match ticks {
            Some(t) if echoes > 0 => Measured {
                value: Some(t as f64 / hz * 1e6 / packets),
                samples: vec![],
                note: format!(
                    "the guest's busy CPU time ({:.2} s of all CPUs: sender, relay and echo server together) over the {window:.2} s, per packet forwarded",
                    t as f64 / hz
                ),
            },
            Some(_) => Measured::none("no packet was forwarded, so there is no time per packet"),
            None => Measured::none("/proc/stat could not be read in the guest"),
        };
        Ok(vec![rate, cpu])
    }
}

fn describe_sources(sources: &HashSet<SocketAddr>, relay_wan: std::net::IpAddr) -> String {
    let masqueraded = sources.iter().filter(|s| s.ip() == relay_wan).count();
    format!("({masqueraded} of them the relay's address {relay_wan})")
}

fn warm_up(socket: &UdpSocket, within: Duration) -> Result<()> {
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let start = Instant::now();
    let mut buf = [0u8; 64];
    while start.elapsed() < within {
        socket
            .send(b"warm-up")
            .context("sending the first datagram")?;
        if let Ok(n) = socket.recv(&mut buf) {
            if &buf[..n] == b"warm-up" {
                return Ok(());
            }
        }
    }
    anyhow::bail!(
        "no echo came back through the tunnel within {} s",
        within.as_secs()
    )
}

/// Keep every socket's window full for `length`: (seconds since the start,
/// echoes) per poll, and the guest's busy ticks from `WARM_UP` to the end.
fn closed_loop(sockets: &[UdpSocket], length: Duration) -> (Vec<(f64, u64)>, Option<u64>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let payload = [0x42u8; 64];
    let mut buf = [0u8; 256];
    let mut events = Vec::new();
    let mut last = vec![Instant::now(); sockets.len()];
    for s in sockets {
        for _ in 0..WINDOW {
            let _ = s.send(&payload);
        }
    }
    let start = Instant::now();
    let warm = Duration::from_secs_f64(WARM_UP);
    let mut ticks_from = None;
    while start.elapsed() < length {
        if ticks_from.is_none() && start.elapsed() >= warm {
            ticks_from = cpu::busy_ticks();
        }
        let mut fds: Vec<PollFd> = sockets
            .iter()
            .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
            .collect();
        let ready = poll(&mut fds, PollTimeout::from(20u8)).unwrap_or(0);
        let readable: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
            .collect();
        drop(fds);
        let now = Instant::now();
        let mut got = 0u64;
        if ready > 0 {
            for (i, s) in sockets.iter().enumerate() {
                if !readable[i] {
                    continue;
                }
                while let Ok(n) = s.recv(&mut buf) {
                    if n == payload.len() {
                        got += 1;
                        last[i] = now;
                        let _ = s.send(&payload);
                    }
                }
            }
        }
        for (i, s) in sockets.iter().enumerate() {
            if now.duration_since(last[i]) > REFILL {
                last[i] = now;
                let _ = s.send(&payload);
            }
        }
        if got > 0 {
            events.push((now.duration_since(start).as_secs_f64(), got));
        }
    }
    let ticks = match (ticks_from, cpu::busy_ticks()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    (events, ticks)
}

/// A UDP echo server on the internet host, for as long as it is held: it
/// answers every datagram to its sender and remembers the senders.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<HashSet<SocketAddr>>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, at: SocketAddr) -> Result<EchoServer> {
        let socket = ns.run(|| {
            UdpSocket::bind(at).with_context(|| format!("binding the echo server on {at}"))
        })?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut seen = HashSet::new();
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    if seen.len() < 65536 {
                        seen.insert(from);
                    }
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
            seen
        });
        Ok(EchoServer {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop it: the senders it answered.
    pub fn stop(mut self) -> HashSet<SocketAddr> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

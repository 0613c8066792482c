//! TCP throughput through tunnel and masquerade: one connection from the
//! client's tunnel address to the internet host, written to as fast as it
//! goes for `seconds`, counted where it arrives. With `port`, the client's
//! WireGuard endpoint is that port of the relay's (a redirected one), so
//! every packet also takes the redirect's translation.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::stats;
use super::{FigureName, Measured, Probe};
use crate::agent::clients;
use crate::bounds::{Invalid, Limit};
use crate::checks::context::Context;
use crate::protocol::perf::Better;
use crate::scenario::setup::Setup;

/// The internet host's port for the probe (iperf's).
pub const PORT: u16 = 5201;
/// Traffic before this is slow start and the handshake, not throughput.
pub const WARM_UP: f64 = 0.5;
/// Throughput is counted in steps of this many seconds (the samples).
pub const STEP: f64 = 0.25;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpThroughput {
    /// The relay's port the client's WireGuard sends to: the listen port
    /// (default) or a redirected one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "default_seconds")]
    pub seconds: u32,
}

fn default_seconds() -> u32 {
    3
}

pub const SECONDS: Limit = Limit::new(
    "seconds",
    1,
    30,
    "the guest reports nothing while a probe runs, and each of the gate's performance boots runs every probe: 30 s of one probe is a gate of at least three minutes more",
)
.unit(" s");

impl TcpThroughput {
    fn name(&self, setup: &Setup) -> String {
        match self.port {
            Some(p) if p != setup.relay.listen_port => format!("tcp-throughput/port-{p}"),
            _ => "tcp-throughput/tunnel".to_string(),
        }
    }
}

impl Probe for TcpThroughput {
    fn figures(&self, setup: &Setup) -> Vec<FigureName> {
        vec![FigureName {
            probe: self.name(setup),
            unit: "Mbit/s",
            better: Better::Higher,
        }]
    }

    fn validate(&self, setup: &Setup) -> Result<(), Invalid> {
        SECONDS.check(self.seconds)?;
        if let Some(p) = self.port {
            let relay = setup.relay;
            if p != relay.listen_port && !relay.redirect_udp.iter().any(|r| r.contains(p)) {
                return Err(format!(
                    "tcp-throughput port {p} is neither the relay's listen port {} nor in relay.redirect_udp: the client's WireGuard could not reach the relay there",
                    relay.listen_port
                )
                .into());
            }
        }
        Ok(())
    }

    fn seconds(&self) -> u32 {
        self.seconds + 1
    }

    fn run(&self, ctx: &mut Context) -> Vec<Measured> {
        vec![match self.measure(ctx) {
            Ok(m) => m,
            Err(e) => Measured::none(format!("{e:#}")),
        }]
    }
}

impl TcpThroughput {
    fn measure(&self, ctx: &mut Context) -> Result<Measured> {
        let a = *ctx.a();
        let dest = SocketAddr::new(a.internet, PORT);
        let extra = match self.port {
            Some(p) if p != ctx.topo.listen_port => {
                let index = ctx.topo.fresh_client_index();
                let sport = ctx.topo.fresh_client_port();
                let endpoint = SocketAddr::new(a.relay_public, p);
                Some(clients::add(&ctx.topo, index, endpoint, sport, None)?)
            }
            _ => None,
        };
        let source = match &extra {
            Some(c) => c
                .addr(ctx.family)
                .context("the extra client has no address")?,
            None => a.tunnel_client,
        };
        let via = match self.port {
            Some(p) if extra.is_some() => format!("WireGuard to the relay's port {p}"),
            _ => format!("WireGuard to the relay's port {}", ctx.topo.listen_port),
        };
        let measured = self.stream(ctx, source, dest);
        if let Some(c) = &extra {
            let _ = clients::remove(&ctx.topo, c);
        }
        let (events, sent) = measured?;
        let secs = f64::from(self.seconds);
        let window = secs - WARM_UP;
        let bytes = stats::total(&events, WARM_UP, secs);
        let mbit = |b: f64| b * 8.0 / 1e6;
        let samples: Vec<f64> = stats::rates(&events, WARM_UP, secs, STEP)
            .into_iter()
            .map(mbit)
            .collect();
        // The whole window's bytes, not the median step: a path that stalls
        // (drops, retransmits) stalls in the figure too.
        Ok(Measured {
            value: Some(mbit(bytes as f64) / window),
            note: format!(
                "one TCP connection from {source} to {dest} over {via}, masqueraded by the relay: {bytes} bytes arrived in the {window:.2} s after the first {WARM_UP} s, in {} steps of {STEP} s ({sent} bytes written in all)",
                samples.len()
            ),
            samples,
        })
    }

    /// Write for `seconds`, count at the far end: (seconds since the
    /// first byte, bytes) of every read, and what the client wrote.
    fn stream(
        &self,
        ctx: &Context,
        source: IpAddr,
        dest: SocketAddr,
    ) -> Result<(Vec<(f64, u64)>, u64)> {
        let listener = ctx.topo.internet.run(|| {
            TcpListener::bind(dest).with_context(|| format!("listening on {dest} in the internet"))
        })?;
        listener.set_nonblocking(true)?;
        let secs = Duration::from_secs(u64::from(self.seconds));
        let give_up = Duration::from_secs(15) + secs;
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let receiver = s.spawn(|| receive(&listener, give_up, &stop));
            let sent = ctx.topo.client.run(|| {
                let sock = socket2::Socket::new(
                    socket2::Domain::for_address(dest),
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                sock.bind(&SocketAddr::new(source, 0).into())
                    .with_context(|| format!("binding to {source}"))?;
                sock.connect_timeout(&dest.into(), Duration::from_secs(10))
                    .with_context(|| format!("connecting to {dest} through the tunnel"))?;
                Ok(TcpStream::from(sock))
            });
            let sent = sent.and_then(|mut stream| {
                stream.set_write_timeout(Some(Duration::from_secs(5)))?;
                let chunk = vec![0x5au8; 64 * 1024];
                let start = Instant::now();
                let mut sent = 0u64;
                while start.elapsed() < secs {
                    let n = stream
                        .write(&chunk)
                        .context("writing to the connection through the tunnel")?;
                    sent += n as u64;
                }
                stream.shutdown(std::net::Shutdown::Write)?;
                // The receiver counts what is still in flight until it reads the end.
                let mut rest = [0u8; 16];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.read(&mut rest);
                Ok(sent)
            });
            if sent.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            let events = receiver
                .join()
                .map_err(|_| anyhow::anyhow!("the probe's receiver panicked"))?;
            let sent = sent?;
            Ok((events?, sent))
        })
    }
}

/// Accept one connection and read it to its end: (seconds since the first
/// byte, bytes) of each read.
fn receive(
    listener: &TcpListener,
    give_up: Duration,
    stop: &AtomicBool,
) -> Result<Vec<(f64, u64)>> {
    let start = Instant::now();
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) || start.elapsed() > give_up {
                    anyhow::bail!("no connection arrived at the internet host");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("accepting the probe's connection"),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = vec![0u8; 128 * 1024];
    let mut events = Vec::new();
    let mut first: Option<Instant> = None;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let t0 = *first.get_or_insert_with(Instant::now);
                events.push((t0.elapsed().as_secs_f64(), n as u64));
            }
            Err(e) => return Err(e).context("reading the probe's connection"),
        }
        if start.elapsed() > give_up {
            break;
        }
    }
    // Tell the client everything arrived.
    let _ = conn.write_all(b"k");
    Ok(events)
}

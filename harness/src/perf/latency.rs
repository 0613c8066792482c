//! Round-trip time through tunnel and masquerade: `count` UDP datagrams
//! from the client's tunnel address to an echo server on the internet host,
//! one at a time, one every `interval_ms` (paced, so the probe measures
//! the path and not a queue it fills itself). The median and the 99th
//! percentile of the round trips are its two figures.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::udp_rate::EchoServer;
use super::{stats, FigureName, Measured, Probe};
use crate::bounds::{Invalid, Limit};
use crate::checks::context::Context;
use crate::protocol::perf::Better;
use crate::scenario::setup::Setup;

/// The internet host's echo port for this probe.
pub const PORT: u16 = 5203;
/// A round trip longer than this is a lost datagram.
const LOST_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    #[serde(default = "default_count")]
    pub count: u32,
    #[serde(default = "default_interval")]
    pub interval_ms: u32,
}

fn default_count() -> u32 {
    200
}
fn default_interval() -> u32 {
    10
}

pub const COUNT: Limit = Limit::new(
    "count",
    10,
    2000,
    "fewer than 10 round trips give no 99th percentile worth the name, and the figure carries every round trip to the host, at most 2000",
);
pub const INTERVAL: Limit = Limit::new(
    "interval_ms",
    1,
    1000,
    "the probe waits this long between round trips: a second apart, 2000 of them take over half an hour",
)
.unit(" ms");
pub const DURATION: Limit = Limit::new(
    "count",
    1,
    30_000,
    "the guest reports nothing while a probe runs, and each of the gate's performance boots runs every probe",
)
.on("count x interval_ms")
.unit(" ms");

impl Probe for Latency {
    fn figures(&self, _: &Setup) -> Vec<FigureName> {
        ["rtt-median/tunnel", "rtt-p99/tunnel"]
            .into_iter()
            .map(|probe| FigureName {
                probe: probe.to_string(),
                unit: "ms",
                better: Better::Lower,
            })
            .collect()
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        COUNT.check(self.count)?;
        INTERVAL.check(self.interval_ms)?;
        let total = u64::from(self.count) * u64::from(self.interval_ms);
        Ok(DURATION.check_derived(total, format!("{total}"))?)
    }

    fn seconds(&self) -> u32 {
        (self.count.saturating_mul(self.interval_ms) / 1000).saturating_add(1)
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

impl Latency {
    fn measure(&self, ctx: &mut Context) -> Result<Vec<Measured>> {
        let a = *ctx.a();
        let dest = SocketAddr::new(a.internet, PORT);
        let server = EchoServer::start(&ctx.topo.internet, dest)?;
        let socket = ctx.client_tunnel_socket()?;
        socket.connect(dest)?;
        let interval = Duration::from_millis(u64::from(self.interval_ms));
        let mut rtts = Vec::with_capacity(self.count as usize);
        let mut buf = [0u8; 64];
        // One round trip first, not counted: the relay maps the flow.
        let mut warmed = false;
        let start = Instant::now();
        while !warmed && start.elapsed() < Duration::from_secs(5) {
            socket.send(&u32::MAX.to_be_bytes())?;
            socket.set_read_timeout(Some(Duration::from_millis(200)))?;
            warmed = socket.recv(&mut buf).is_ok();
        }
        if !warmed {
            anyhow::bail!("no echo came back from {dest} through the tunnel within 5 s");
        }
        let mut next = Instant::now();
        for seq in 0..self.count {
            let sent = Instant::now();
            socket.send(&seq.to_be_bytes())?;
            let deadline = sent + LOST_AFTER;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                socket.set_read_timeout(Some(left))?;
                match socket.recv(&mut buf) {
                    Ok(4) if buf[..4] == seq.to_be_bytes() => {
                        rtts.push(sent.elapsed().as_secs_f64() * 1000.0);
                        break;
                    }
                    Ok(_) => continue, // a late echo of an earlier one
                    Err(_) => break,
                }
            }
            next += interval;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        drop(server);
        let lost = self.count as usize - rtts.len();
        let how = format!(
            "{} UDP round trips from {} through the tunnel to {dest}, one every {} ms; {lost} lost (no echo within {} s)",
            self.count,
            a.tunnel_client,
            self.interval_ms,
            LOST_AFTER.as_secs()
        );
        if rtts.len() * 2 < self.count as usize {
            let why = format!("{how}: most were lost, so there is no round-trip time to give");
            return Ok(vec![Measured::none(why.clone()), Measured::none(why)]);
        }
        let fig = |value: Option<f64>| Measured {
            value,
            samples: rtts.clone(),
            note: how.clone(),
        };
        Ok(vec![
            fig(stats::median(&rtts)),
            fig(stats::percentile(&rtts, 99.0)),
        ])
    }
}

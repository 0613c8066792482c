//! Performance probes: how fast the relay forwards, not whether. Each kind
//! is one file here (its parameters, limits, the figures it yields and
//! `run`, which pushes real traffic through tunnel and NAT and measures it
//! at the far end); `stats.rs` holds the arithmetic the gate judges them
//! with. A scenario lists its probes under `[perf]`; the agent runs them
//! after every scenario run's checks, one run at a time, so that no other
//! run shares the CPU while they measure.
//!
//! To add a probe: write `perf/NAME.rs` with a type that implements
//! [`Probe`], and add it to [`ProbeSpec`].

use serde::{Deserialize, Serialize};

pub mod cpu;
pub mod fault;
pub mod latency;
pub mod stats;
pub mod tcp_throughput;
pub mod udp_rate;

use crate::bounds::{Invalid, Limit};
use crate::checks::context::Context;
use crate::protocol::perf::{Better, PerfFigure};
use crate::scenario::setup::Setup;

/// A scenario's `[perf]` table: its probes, in the order they run, and a
/// fault that slows the relay on purpose (a negative control).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerfSpec {
    #[serde(rename = "probe")]
    pub probes: Vec<ProbeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<fault::PerfFault>,
}

/// One `[[perf.probe]]` with its parameters; `kind` picks the probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ProbeSpec {
    TcpThroughput(tcp_throughput::TcpThroughput),
    UdpRate(udp_rate::UdpRate),
    Latency(latency::Latency),
}

/// What a probe's figure is called and how it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FigureName {
    pub probe: String,
    pub unit: &'static str,
    pub better: Better,
}

/// What one figure came to: the figure, its samples and how it was taken
/// (or why there is none).
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub value: Option<f64>,
    pub samples: Vec<f64>,
    pub note: String,
}

impl Measured {
    pub fn none(why: impl Into<String>) -> Measured {
        Measured {
            value: None,
            samples: vec![],
            note: why.into(),
        }
    }
}

/// One kind of probe.
pub trait Probe {
    /// Its figures, in the order `run` yields them.
    fn figures(&self, setup: &Setup) -> Vec<FigureName>;
    /// Whether its parameters make sense and fall within its limits.
    fn validate(&self, setup: &Setup) -> Result<(), Invalid>;
    /// Measure, once the tunnel is up; one `Measured` per figure. A probe
    /// that cannot measure says why in each figure's note, never a number.
    fn run(&self, ctx: &mut Context) -> Vec<Measured>;
    /// The most time it takes, in seconds (for the run's budget).
    fn seconds(&self) -> u32;
}

impl ProbeSpec {
    fn probe(&self) -> &dyn Probe {
        match self {
            ProbeSpec::TcpThroughput(p) => p,
            ProbeSpec::UdpRate(p) => p,
            ProbeSpec::Latency(p) => p,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ProbeSpec::TcpThroughput(_) => "tcp-throughput",
            ProbeSpec::UdpRate(_) => "udp-rate",
            ProbeSpec::Latency(_) => "latency",
        }
    }
}

/// The longest a scenario's probes may take together: the guest is busy
/// measuring and the gate boots each kernel at least three times.
pub const TOTAL_SECONDS: Limit = Limit::new(
    "seconds",
    1,
    120,
    "every probe runs in each of the gate's performance boots (three per kernel by default), so two minutes of probes make a gate of at least twelve minutes",
)
.on("the probes' seconds together")
.unit(" s");

/// Every limit on a `[perf]` table's values, by where it is written.
pub fn limits() -> Vec<(&'static str, &'static Limit)> {
    vec![
        ("perf", &TOTAL_SECONDS),
        ("perf tcp-throughput", &tcp_throughput::SECONDS),
        ("perf udp-rate", &udp_rate::FLOWS),
        ("perf udp-rate", &tcp_throughput::SECONDS),
        ("perf latency", &latency::COUNT),
        ("perf latency", &latency::INTERVAL),
        ("perf latency", &latency::DURATION),
        ("perf fault", &fault::PPS),
    ]
}

impl PerfSpec {
    /// Every figure, in the order they are reported.
    pub fn figures(&self, setup: &Setup) -> Vec<FigureName> {
        self.probes
            .iter()
            .flat_map(|p| p.probe().figures(setup))
            .collect()
    }

    pub fn validate(&self, setup: &Setup) -> Result<(), (Option<usize>, Invalid)> {
        if self.probes.is_empty() {
            return Err((
                None,
                "[perf] has no probes: add at least one [[perf.probe]] table, or remove [perf]"
                    .into(),
            ));
        }
        for (i, p) in self.probes.iter().enumerate() {
            p.probe().validate(setup).map_err(|e| (Some(i), e))?;
        }
        let mut names = std::collections::HashSet::new();
        for (i, f) in self.figures(setup).iter().enumerate() {
            if !names.insert(f.probe.clone()) {
                return Err((
                    None,
                    format!(
                        "[perf] measures {} twice (figure {}): give each probe of a kind its own port or parameters",
                        f.probe,
                        i + 1
                    )
                    .into(),
                ));
            }
        }
        let total: u64 = self
            .probes
            .iter()
            .map(|p| u64::from(p.probe().seconds()))
            .sum();
        TOTAL_SECONDS
            .check_derived(total, format!("{total}"))
            .map_err(|e| (None, Invalid::from(e.under(&["perf"]))))?;
        if let Some(f) = &self.fault {
            f.validate()
                .map_err(|e| (None, e.under(&["perf", "fault"])))?;
        }
        Ok(())
    }

    /// Run every probe in `ctx` (the tunnel up or not yet): each figure a
    /// message, sent as soon as it is measured.
    pub fn run(
        &self,
        ctx: &mut Context,
        setup: &Setup,
        scenario: &str,
        emit: &mut dyn FnMut(PerfFigure),
    ) {
        let setup_names: Vec<Vec<FigureName>> = self
            .probes
            .iter()
            .map(|p| p.probe().figures(setup))
            .collect();
        let fault = match &self.fault {
            Some(f) => match f.make(&ctx.topo.relay) {
                Ok(()) => Some(f),
                Err(e) => {
                    let why = format!("the perf fault {f} could not be made: {e:#}");
                    for names in &setup_names {
                        for n in names {
                            emit(figure(scenario, ctx, n, Measured::none(why.clone())));
                        }
                    }
                    return;
                }
            },
            None => None,
        };
        let ready = match crate::checks::common::ensure_tunnel(ctx) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(why),
            Err(e) => Err(format!("bringing up the tunnel failed: {e:#}")),
        };
        for (p, names) in self.probes.iter().zip(&setup_names) {
            let measured = match &ready {
                Ok(()) => p.probe().run(ctx),
                Err(why) => names.iter().map(|_| Measured::none(why.clone())).collect(),
            };
            for (i, n) in names.iter().enumerate() {
                let m = measured.get(i).cloned().unwrap_or_else(|| {
                    Measured::none(format!("the {} probe gave no figure {}", p.kind(), n.probe))
                });
                let mut m = m;
                if let Some(f) = fault {
                    m.note = format!("{} (fault made on purpose: {f})", m.note);
                }
                emit(figure(scenario, ctx, n, m));
            }
        }
    }
}

fn figure(scenario: &str, ctx: &Context, name: &FigureName, m: Measured) -> PerfFigure {
    let mut samples = m.samples;
    samples.truncate(crate::protocol::perf::MAX_SAMPLES);
    PerfFigure {
        scenario: scenario.to_string(),
        backend: ctx.backend.kind().to_string(),
        probe: name.probe.clone(),
        unit: name.unit.to_string(),
        better: name.better,
        value: m.value.filter(|v| v.is_finite() && *v >= 0.0),
        samples: samples
            .into_iter()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .collect(),
        note: m.note,
    }
}

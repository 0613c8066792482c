//! A performance figure as the guest reports it: what a probe measured and
//! the samples behind it. Figures, not verdicts: `vet` shows them, and only
//! `gate` judges them, as a candidate/baseline ratio over interleaved boots.

use serde::{Deserialize, Serialize};

/// Which way is better for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// Throughput, packets per second.
    Higher,
    /// Latency, CPU time per packet.
    Lower,
}

/// The most samples one figure carries (the host refuses more).
pub const MAX_SAMPLES: usize = 2000;

/// One figure of one probe, in one scenario run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerfFigure {
    pub scenario: String,
    pub backend: String,
    /// "tcp-throughput/tunnel", "rtt-p99/tunnel", ...
    pub probe: String,
    /// "Mbit/s", "packets/s", "ms", "µs/packet".
    pub unit: String,
    pub better: Better,
    /// The figure; none when the probe could not measure it (`note` says why).
    pub value: Option<f64>,
    /// What the figure is made of (a rate per interval, one round trip each),
    /// in the unit of the figure, in the order measured.
    #[serde(default)]
    pub samples: Vec<f64>,
    /// How it was measured, or why there is no figure.
    pub note: String,
}

impl PerfFigure {
    /// The figure as people read it: "21.4 Mbit/s", or "not measured".
    pub fn shown(&self) -> String {
        match self.value {
            Some(v) => format!("{} {}", number(v), self.unit),
            None => "not measured".to_string(),
        }
    }
}

/// A figure with about three significant digits.
pub fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

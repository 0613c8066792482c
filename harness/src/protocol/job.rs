//! What the host asks the guest to do: one job, written into the initramfs
//! (or handed to `natvet agent` on the host).

use serde::{Deserialize, Serialize};

use super::CaptureMode;
use crate::scenario::Scenario;

/// Where the job lives inside the initramfs.
pub const JOB_PATH: &str = "natvet/job.json";

/// What the host asks the guest to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub version: u32,
    /// Scenarios to run, in order, each against each of its backends.
    pub scenarios: Vec<Scenario>,
    /// Kernel modules (names or aliases) to load before anything else.
    pub preload_modules: Vec<String>,
    /// Capture evidence for passing checks too (normally only for failures).
    #[serde(default)]
    pub evidence_always: bool,
    #[serde(default)]
    pub capture: CaptureMode,
    /// How long checks wait for a reply or handshake that should come.
    #[serde(default)]
    pub waits: crate::checks::patience::Waits,
    /// How many (scenario, backend) runs the agent keeps going at once, each
    /// in namespaces of its own: while one waits (an idle timeout, a
    /// keepalive), another uses the CPU.
    #[serde(default = "one")]
    pub parallel: usize,
    /// Whether the scenarios' performance probes run, and their checks.
    #[serde(default)]
    pub perf: PerfMode,
}

/// What a job does with the scenarios' `[perf]` probes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PerfMode {
    /// After every scenario run's checks, one run at a time (`vet`).
    #[default]
    After,
    /// Not at all (`--no-perf`; the gate's correctness boots).
    Skip,
    /// Only the probes, no checks: one of the gate's performance boots.
    Only,
}

fn one() -> usize {
    1
}

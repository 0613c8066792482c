//! One kernel's run as data: whether natvet could test it (and where it broke
//! down if not), its results, notes and timings.

use serde::{Deserialize, Serialize};

use crate::kernel::PackageInfo;
use crate::protocol::CheckResult;

/// Did natvet manage to run the kernel's checks?
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KernelState {
    /// The guest ran every scenario and reported every check.
    Completed,
    /// natvet could not get (all) the verdicts: never a NAT verdict.
    InfraError {
        stage: InfraStage,
        reason: String,
        #[serde(default)]
        console_tail: Vec<String>,
    },
}

/// Where a kernel's run broke down when natvet could not test it. Written in
/// reports as its label ("kernel panic", "check timeout", ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InfraStage {
    /// natvet was interrupted (SIGINT/SIGTERM) before or while the kernel ran.
    #[serde(rename = "interrupted")]
    Interrupted,
    /// The kernel could not be fetched or resolved.
    #[serde(rename = "fetch")]
    Fetch,
    /// natvet could not write its own files (output folder, temporary folder, the agent's job).
    #[serde(rename = "output")]
    Output,
    /// The initramfs could not be built.
    #[serde(rename = "initramfs")]
    Initramfs,
    /// qemu (or the agent on the host) could not be started, or ended early.
    #[serde(rename = "qemu")]
    Qemu,
    /// Something outside natvet killed qemu.
    #[serde(rename = "qemu killed")]
    QemuKilled,
    /// The kernel did not start the agent in time.
    #[serde(rename = "boot")]
    Boot,
    /// The agent gave up (a `Fatal` message).
    #[serde(rename = "agent")]
    Agent,
    /// The guest sent something that is not a natvet message, or left checks unreported.
    #[serde(rename = "protocol")]
    Protocol,
    /// The guest went silent for longer than one check may take.
    #[serde(rename = "check timeout")]
    CheckTimeout,
    /// The run outlived its overall time.
    #[serde(rename = "timeout")]
    Timeout,
    /// The kernel panicked.
    #[serde(rename = "kernel panic")]
    KernelPanic,
}

impl InfraStage {
    /// The stage's name in reports and messages (the same as its JSON form).
    pub fn label(self) -> &'static str {
        match self {
            InfraStage::Interrupted => "interrupted",
            InfraStage::Fetch => "fetch",
            InfraStage::Output => "output",
            InfraStage::Initramfs => "initramfs",
            InfraStage::Qemu => "qemu",
            InfraStage::QemuKilled => "qemu killed",
            InfraStage::Boot => "boot",
            InfraStage::Agent => "agent",
            InfraStage::Protocol => "protocol",
            InfraStage::CheckTimeout => "check timeout",
            InfraStage::Timeout => "timeout",
            InfraStage::KernelPanic => "kernel panic",
        }
    }
}

impl std::fmt::Display for InfraStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    pub resolve_ms: u64,
    pub initramfs_ms: u64,
    /// Host clock from qemu start to the agent's first message.
    pub boot_ms: Option<u64>,
    /// The guest's uptime when the agent started.
    pub guest_uptime_ms: Option<u64>,
    /// The agent's own time, from its start to its last result.
    #[serde(default)]
    pub agent_ms: Option<u64>,
    pub vm_ms: u64,
    pub total_ms: u64,
    pub peak_rss_mb: Option<u64>,
    pub initramfs_bytes: u64,
    /// Each scenario run (one scenario, one backend) in the guest: runs
    /// overlap (--parallel), so these add up to more than `agent_ms`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scenario_runs: Vec<crate::protocol::RunTiming>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KernelRun {
    /// What the user asked for ("debian:6.12", a path).
    pub spec: String,
    /// The kernel's release as natvet resolved it; the guest's `uname -r`
    /// (checked to look like one) only when natvet could not tell.
    pub release: Option<String>,
    /// The kernel's name in this run when its release alone is ambiguous
    /// (two builds of one release): "RELEASE [N]", N its position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PackageInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
    pub state: KernelState,
    pub results: Vec<CheckResult>,
    /// Performance figures (figures, not verdicts: only a gate judges them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub perf: Vec<crate::protocol::perf::PerfFigure>,
    #[serde(default)]
    pub notes: Vec<String>,
    /// How many times natvet ran this kernel (a harness error is retried once).
    #[serde(default = "one")]
    pub attempts: u32,
    pub timings: Timings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_log: Option<String>,
}

fn one() -> u32 {
    1
}

impl KernelRun {
    /// A short column label.
    pub fn label(&self) -> String {
        self.id
            .clone()
            .or_else(|| self.release.clone())
            .unwrap_or_else(|| self.spec.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAGES: [InfraStage; 12] = [
        InfraStage::Interrupted,
        InfraStage::Fetch,
        InfraStage::Output,
        InfraStage::Initramfs,
        InfraStage::Qemu,
        InfraStage::QemuKilled,
        InfraStage::Boot,
        InfraStage::Agent,
        InfraStage::Protocol,
        InfraStage::CheckTimeout,
        InfraStage::Timeout,
        InfraStage::KernelPanic,
    ];

    #[test]
    fn stages_are_written_as_their_labels() {
        for s in STAGES {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.label()));
            assert_eq!(serde_json::from_str::<InfraStage>(&json).unwrap(), s);
        }
        let state = KernelState::InfraError {
            stage: InfraStage::KernelPanic,
            reason: "r".into(),
            console_tail: vec![],
        };
        assert_eq!(
            serde_json::to_string(&state).unwrap(),
            r#"{"state":"infra_error","stage":"kernel panic","reason":"r","console_tail":[]}"#
        );
    }
}

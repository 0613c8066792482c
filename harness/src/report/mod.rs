//! Results of a run as data (JSON), and their renderings. Exit codes live here
//! too, so every command that runs checks answers the same way.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::kernel::PackageInfo;
pub mod render;

use crate::protocol::{CheckResult, Status};

pub const SCHEMA: &str = "natvet-run/1";

/// Exit codes a script can trust.
pub mod exit {
    /// Every check passed (unsupported ones aside).
    pub const PASS: i32 = 0;
    /// At least one check failed: the kernel does not do what it should.
    pub const FAIL: i32 = 1;
    /// The user's input was wrong: nothing ran.
    pub const USAGE: i32 = 2;
    /// natvet could not test (download, boot, timeout, panic): no verdict.
    pub const INFRA: i32 = 3;
}

/// A whole run: every kernel, every result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    pub schema: String,
    pub natvet_version: String,
    pub started_at: String,
    pub elapsed_ms: u64,
    pub kernels: Vec<KernelRun>,
    /// For `natvet gate`: every check classified against the baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<crate::gate::Gate>,
}

/// Did natvet manage to run the kernel's checks?
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KernelState {
    /// The guest ran every scenario and reported every check.
    Completed,
    /// natvet could not get (all) the verdicts: never a NAT verdict.
    InfraError {
        stage: String,
        reason: String,
        #[serde(default)]
        console_tail: Vec<String>,
    },
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
    /// `uname -r` as the guest reported it (or as resolved, if it never booted).
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

impl RunReport {
    pub fn exit_code(&self) -> i32 {
        let results = || self.kernels.iter().flat_map(|k| k.results.iter());
        if results().any(|r| r.status == Status::Fail) {
            exit::FAIL
        } else if self
            .kernels
            .iter()
            .any(|k| k.state != KernelState::Completed)
            || results().any(|r| r.status == Status::Error)
        {
            exit::INFRA
        } else {
            exit::PASS
        }
    }

    pub fn counts(&self) -> BTreeMap<Status, usize> {
        let mut m = BTreeMap::new();
        for r in self.kernels.iter().flat_map(|k| k.results.iter()) {
            *m.entry(r.status).or_insert(0) += 1;
        }
        m
    }

    /// The kernel x check table, then every failure with its evidence, then a summary line.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let rows = render::rows(self);
        let labels: Vec<String> = self.kernels.iter().map(|k| k.label()).collect();
        let first_w = rows
            .iter()
            .map(|r| r.2.len() + 2)
            .chain(["kernel state".len()])
            .max()
            .unwrap_or(10);
        let states: Vec<String> = self
            .kernels
            .iter()
            .map(|k| match &k.state {
                KernelState::Completed if k.attempts > 1 => {
                    format!("ok {:.1}s (retried)", k.timings.total_ms as f64 / 1000.0)
                }
                KernelState::Completed => format!("ok {:.1}s", k.timings.total_ms as f64 / 1000.0),
                KernelState::InfraError { stage, .. } => format!("ERROR ({stage})"),
            })
            .collect();
        let col_w: Vec<usize> = labels
            .iter()
            .zip(&states)
            .map(|(l, s)| l.len().max(s.len()).max(11))
            .collect();

        let _ = write!(out, "{:first_w$}", "check");
        for (l, w) in labels.iter().zip(&col_w) {
            let _ = write!(out, "  {l:w$}");
        }
        out.push('\n');
        let mut group = (String::new(), String::new());
        for (scenario, backend, check) in &rows {
            if group != (scenario.clone(), backend.clone()) {
                group = (scenario.clone(), backend.clone());
                let _ = writeln!(out, "{scenario} [{backend}]");
            }
            let _ = write!(out, "{:first_w$}", format!("  {check}"));
            for (k, w) in self.kernels.iter().zip(&col_w) {
                let cell = k
                    .results
                    .iter()
                    .find(|r| &r.scenario == scenario && &r.backend == backend && &r.check == check)
                    .map(|r| r.status.label())
                    .unwrap_or("-");
                let _ = write!(out, "  {cell:w$}");
            }
            out.push('\n');
        }
        let _ = write!(out, "{:first_w$}", "kernel state");
        for (cell, w) in states.iter().zip(&col_w) {
            let _ = write!(out, "  {cell:w$}");
        }
        out.push('\n');

        for k in &self.kernels {
            if let KernelState::InfraError {
                stage,
                reason,
                console_tail,
            } = &k.state
            {
                let _ = writeln!(
                    out,
                    "\n{}: natvet could not test this kernel ({stage}): {reason}",
                    k.label()
                );
                if !console_tail.is_empty() {
                    let _ = writeln!(out, "  last console lines:");
                    for l in console_tail {
                        let _ = writeln!(out, "  | {l}");
                    }
                }
                if let Some(log) = &k.console_log {
                    let _ = writeln!(out, "  console log: {log}");
                }
            }
            if k.attempts > 1 {
                let _ = writeln!(out, "\n{}: retried after a harness error", k.label());
                for n in &k.notes {
                    let _ = writeln!(out, "  {n}");
                }
            }
            for r in k
                .results
                .iter()
                .filter(|r| matches!(r.status, Status::Fail | Status::Error))
            {
                let _ = writeln!(
                    out,
                    "\n{} {}: {} [{}] {}",
                    r.status.label(),
                    k.label(),
                    r.scenario,
                    r.backend,
                    r.check
                );
                let _ = writeln!(out, "  expected: {}", r.expected);
                let _ = writeln!(
                    out,
                    "  observed: {}",
                    r.observed.replace('\n', "\n            ")
                );
                if let Some(dir) = evidence_dir_hint(k, r) {
                    let _ = writeln!(out, "  evidence: {dir}");
                }
            }
        }
        // Padding leaves trailing blanks on the last column.
        let mut out: String = out.lines().map(|l| format!("{}\n", l.trim_end())).collect();
        let counts = self.counts();
        let n = |s| counts.get(&s).copied().unwrap_or(0);
        let infra = self
            .kernels
            .iter()
            .filter(|k| k.state != KernelState::Completed)
            .count();
        let _ = writeln!(
            out,
            "\n{} kernel(s): {} passed, {} failed, {} unsupported, {} errors, {} flaky, {} kernel(s) not tested",
            self.kernels.len(),
            n(Status::Pass),
            n(Status::Fail),
            n(Status::Unsupported),
            n(Status::Error),
            n(Status::Flaky),
            infra
        );
        out
    }
}

impl RunReport {
    /// Join the reports of shards of one matrix: kernels in first-seen order, a
    /// kernel split over shards gets all its results; any shard's trouble stays.
    pub fn merge(reports: Vec<RunReport>) -> Result<RunReport, String> {
        let mut merged: Option<RunReport> = None;
        for r in reports {
            if r.schema != SCHEMA {
                return Err(format!(
                    "schema {} is not {SCHEMA}: produced by another natvet version",
                    r.schema
                ));
            }
            let Some(m) = merged.as_mut() else {
                merged = Some(r);
                continue;
            };
            m.elapsed_ms = m.elapsed_ms.max(r.elapsed_ms);
            if r.started_at < m.started_at {
                m.started_at = r.started_at.clone();
            }
            for k in r.kernels {
                match m
                    .kernels
                    .iter_mut()
                    .find(|x| x.spec == k.spec && x.release == k.release)
                {
                    None => m.kernels.push(k),
                    Some(x) => {
                        x.results.extend(k.results);
                        x.notes.extend(k.notes);
                        x.attempts = x.attempts.max(k.attempts);
                        if x.state == KernelState::Completed {
                            x.state = k.state;
                        }
                        x.timings.total_ms += k.timings.total_ms;
                    }
                }
            }
        }
        merged.ok_or_else(|| "nothing to merge".to_string())
    }
}

/// Where a result's evidence was written, relative to the output folder.
pub fn evidence_path(k: &KernelRun, r: &CheckResult) -> String {
    format!(
        "{}/{}-{}/{}",
        sanitize(&k.label()),
        sanitize(&r.scenario),
        sanitize(&r.backend),
        sanitize(&r.check)
    )
}

pub(crate) fn evidence_dir_hint(k: &KernelRun, r: &CheckResult) -> Option<String> {
    if let Some(dir) = &r.evidence_dir {
        return Some(dir.clone());
    }
    let base = k.console_log.as_ref()?;
    let out = std::path::Path::new(base).parent()?.parent()?;
    r.evidence
        .as_ref()
        .map(|_| out.join(evidence_path(k, r)).display().to_string())
}

pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(check: &str, status: Status) -> CheckResult {
        CheckResult {
            scenario: "extended-ports".into(),
            backend: "nftables".into(),
            check: check.into(),
            status,
            expected: "a handshake".into(),
            observed: "none".into(),
            duration_ms: 5,
            evidence: None,
            evidence_dir: None,
        }
    }

    fn kernel(release: &str, results: Vec<CheckResult>, state: KernelState) -> KernelRun {
        KernelRun {
            spec: format!("debian:{release}"),
            release: Some(release.into()),
            id: None,
            package: None,
            boot: Some("pvh".into()),
            state,
            results,
            notes: vec![],
            attempts: 1,
            timings: Timings {
                total_ms: 12_300,
                ..Timings::default()
            },
            console_log: None,
        }
    }

    fn report(kernels: Vec<KernelRun>) -> RunReport {
        RunReport {
            schema: SCHEMA.into(),
            natvet_version: "test".into(),
            started_at: "now".into(),
            elapsed_ms: 1,
            kernels,
            gate: None,
        }
    }

    #[test]
    fn exit_codes() {
        let ok = kernel(
            "6.1.0-50-amd64",
            vec![result("handshake/53", Status::Pass)],
            KernelState::Completed,
        );
        assert_eq!(report(vec![ok.clone()]).exit_code(), exit::PASS);
        let unsup = kernel(
            "x",
            vec![result("a", Status::Unsupported)],
            KernelState::Completed,
        );
        assert_eq!(report(vec![ok.clone(), unsup]).exit_code(), exit::PASS);
        let infra = kernel(
            "y",
            vec![],
            KernelState::InfraError {
                stage: "boot".into(),
                reason: "panic".into(),
                console_tail: vec![],
            },
        );
        assert_eq!(
            report(vec![ok.clone(), infra.clone()]).exit_code(),
            exit::INFRA
        );
        let failed = kernel(
            "z",
            vec![result("handshake/53", Status::Fail)],
            KernelState::Completed,
        );
        // A definite regression outranks another kernel's infrastructure trouble.
        assert_eq!(report(vec![infra, failed]).exit_code(), exit::FAIL);
        let errored = kernel(
            "e",
            vec![result("a", Status::Error)],
            KernelState::Completed,
        );
        assert_eq!(report(vec![ok, errored]).exit_code(), exit::INFRA);
    }

    #[test]
    fn table_shape() {
        let a = kernel(
            "6.1.0-50-amd64",
            vec![
                result("handshake/51820", Status::Pass),
                result("handshake/53", Status::Pass),
            ],
            KernelState::Completed,
        );
        let b = kernel(
            "6.12.95+deb12-amd64",
            vec![
                result("handshake/51820", Status::Pass),
                result("handshake/53", Status::Fail),
            ],
            KernelState::Completed,
        );
        insta::assert_snapshot!(report(vec![a, b]).render_table());
    }
}

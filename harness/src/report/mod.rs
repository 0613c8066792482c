//! Results of a run as data (JSON), and their renderings. Exit codes live here
//! too, so every command that runs checks answers the same way.
//!
//! `kernel_run` holds one kernel's results, `gate` the comparison of two
//! kernels, `diagnosis` what many failures share; the renderings of a
//! [`RunReport`] (the whole run, defined here) are `terminal` (the
//! answer on stdout), `render` (JUnit, Markdown) and `html` (with its plots
//! from `svg` and packet listings from `packets`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod diagnosis;
pub mod exit;
pub mod gate;
pub mod html;
mod kernel_run;
mod packets;
pub mod perf;
pub mod render;
pub mod svg;
pub mod terminal;

pub use kernel_run::{InfraStage, KernelRun, KernelState, Timings};

use crate::protocol::{CheckResult, Status};

pub const SCHEMA: &str = "natvet-run/1";

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
    pub gate: Option<gate::Gate>,
    /// What the failures have in common, when enough checks failed
    /// (`diagnosis::diagnose`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<diagnosis::Diagnosis>,
}

impl RunReport {
    pub fn exit_code(&self) -> i32 {
        let results = || self.kernels.iter().flat_map(|k| k.results.iter());
        if results().any(|r| r.status == Status::Fail) || self.slower() > 0 {
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

    /// Performance figures a gate found slower on the candidate.
    pub fn slower(&self) -> usize {
        self.gate
            .as_ref()
            .and_then(|g| g.perf.as_ref())
            .map(|p| p.regressed())
            .unwrap_or(0)
    }

    pub fn counts(&self) -> BTreeMap<Status, usize> {
        let mut m = BTreeMap::new();
        for r in self.kernels.iter().flat_map(|k| k.results.iter()) {
            *m.entry(r.status).or_insert(0) += 1;
        }
        m
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

/// Where a result's evidence is written, relative to its kernel's folder
/// (`OUT/KERNEL/`): `SCENARIO-BACKEND/CHECK`.
pub fn result_folder(r: &CheckResult) -> String {
    format!(
        "{}-{}/{}",
        sanitize(&r.scenario),
        sanitize(&r.backend),
        sanitize(&r.check)
    )
}

pub(crate) fn evidence_dir_hint(k: &KernelRun, r: &CheckResult) -> Option<String> {
    if let Some(dir) = &r.evidence_dir {
        return Some(dir.clone());
    }
    // The kernel's folder holds its console.log.
    let kernel_dir = std::path::Path::new(k.console_log.as_ref()?).parent()?;
    r.evidence
        .as_ref()
        .map(|_| kernel_dir.join(result_folder(r)).display().to_string())
}

/// `s` as one file name: letters, digits and `-_.+` stay, anything else
/// becomes `_`; a name of dots only (`.`, `..`) or none at all is `_`s, so
/// it can never name a folder above.
pub fn sanitize(s: &str) -> String {
    if s.chars().all(|c| c == '.') {
        return "_".repeat(s.len().max(1));
    }
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
            series: None,
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
            perf: vec![],
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
            diagnosis: None,
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
                stage: InfraStage::Boot,
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
        insta::assert_snapshot!(terminal::full(&report(vec![a, b])));
    }

    #[test]
    fn junit_counts_every_status_and_reads_back() {
        let a = kernel(
            "6.1.0-50-amd64",
            vec![
                result("handshake/51820", Status::Pass),
                result("handshake/53", Status::Fail),
                result("handshake/4000", Status::Unsupported),
                result("handshake/33433", Status::Error),
                result("handshake/60000", Status::Flaky),
            ],
            KernelState::Completed,
        );
        let b = kernel(
            "7.2.13+deb14-amd64",
            vec![],
            KernelState::InfraError {
                stage: InfraStage::KernelPanic,
                reason: "Kernel panic <here> & \u{1}there".into(),
                console_tail: vec!["line".into()],
            },
        );
        let xml = render::junit(&report(vec![a, b]));
        let root = xml.lines().nth(1).unwrap();
        assert_eq!(
            root,
            r#"<testsuites name="natvet" tests="6" failures="1" errors="2" time="0.001">"#
        );
        let back = quick_junit::Report::deserialize_from_str(&xml).unwrap();
        assert_eq!((back.tests, back.failures, back.errors), (6, 1, 2));
        assert_eq!(back.test_suites[0].skipped, 1);
        assert_eq!(back.test_suites[1].test_cases[0].name.as_str(), "kernel");
        assert!(
            xml.contains(r#"message="Kernel panic &lt;here&gt; &amp; there" type="kernel panic""#)
        );
        assert!(xml.contains("<system-out>flaky: passed only after natvet retried"));
        assert!(xml.contains(r#"<failure message="none" type="nat">expected: a handshake"#));
    }

    #[test]
    fn compact_shape() {
        let pass = |c| result(c, Status::Pass);
        let a = kernel(
            "6.1.0-50-amd64",
            vec![pass("handshake/51820"), pass("handshake/53")],
            KernelState::Completed,
        );
        let mut b = kernel(
            "6.12.95+deb12-amd64",
            vec![
                pass("handshake/51820"),
                result("handshake/53", Status::Fail),
            ],
            KernelState::Completed,
        );
        b.results[1].evidence_dir =
            Some("natvet-out/6.12.95/extended-ports-nftables/handshake_53".into());
        let mut c = a.clone();
        c.results = vec![];
        c.release = Some("7.2.13+deb14-amd64".into());
        c.state = KernelState::InfraError {
            stage: InfraStage::Boot,
            reason: "no agent".into(),
            console_tail: vec!["Kernel panic - not syncing".into()],
        };
        insta::assert_snapshot!(terminal::compact(&report(vec![a.clone(), b, c])));
        let all_pass = terminal::compact(&report(vec![a.clone(), a]));
        assert!(all_pass.starts_with("natvet: PASS: every check passed on both kernels\n"));
        assert_eq!(all_pass.lines().count(), 6, "{all_pass}");
    }
}

//! The record of a bisection: each kernel tested, the answer, and how both
//! read for people (`render_summary`) and as JSON (`BisectReport`).

use serde::{Deserialize, Serialize};

use super::plan::{fmt_line, BadEnd, Plan};
use super::search::{estimate, Outcome, Point};
use super::{selected, Verdict};
use crate::protocol::Status;
use crate::report::KernelRun;

/// A failing selected check, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failing {
    pub scenario: String,
    pub backend: String,
    pub check: String,
    pub expected: String,
    pub observed: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}

/// The selected checks that failed in a run.
pub fn failing(run: &KernelRun, patterns: &[String]) -> Vec<Failing> {
    run.results
        .iter()
        .filter(|r| r.status == Status::Fail && selected(patterns, &r.check))
        .map(|r| Failing {
            scenario: r.scenario.clone(),
            backend: r.backend.clone(),
            check: r.check.clone(),
            expected: r.expected.clone(),
            observed: r.observed.clone(),
            evidence: crate::report::evidence_dir_hint(run, r),
        })
        .collect()
}

/// What a tested kernel was in the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    GoodEndpoint,
    BadEndpoint,
    Candidate,
}

/// One kernel tested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// 1, 2, ... for candidates; 0 for the endpoints.
    pub step: usize,
    pub role: Role,
    pub spec: String,
    pub release: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_version: Option<String>,
    pub verdict: Verdict,
    /// Why: the failing checks, or why it could not be judged.
    pub reason: String,
    pub failing: Vec<Failing>,
    /// Wall time of this kernel's test, fetching included.
    pub seconds: f64,
}

/// The answer, for people and JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Answer {
    /// The first bad kernel was identified.
    Found {
        first_bad: String,
        last_good: String,
        /// True when the first bad is the user's own kernel (no package has the bug).
        first_bad_is_own_kernel: bool,
    },
    /// Untestable kernels hide the boundary.
    Ambiguous {
        last_good: String,
        could_be_first_bad: Vec<String>,
    },
    /// The endpoints do not make a regression range, or could not be tested.
    NoRange { reason: String },
    /// natvet was interrupted.
    Interrupted,
}

pub const SCHEMA: &str = "natvet-bisect/1";

/// The whole bisection, as written by `--json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BisectReport {
    pub schema: String,
    pub natvet_version: String,
    pub started_at: String,
    pub elapsed_ms: u64,
    pub line: String,
    pub good: String,
    pub bad: String,
    /// The --check patterns (empty: every check decides).
    pub checks: Vec<String>,
    /// The packages between the endpoints, oldest first.
    pub candidates: Vec<String>,
    /// ceil(log2(candidates + 1)).
    pub estimated_steps: usize,
    /// Candidate tests run (endpoints not counted), skips included.
    pub bisection_steps: usize,
    pub skipped: usize,
    pub steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
}

impl Plan {
    /// An empty report of this bisection, to be filled step by step.
    pub fn report(&self, checks: &[String], started_at: String) -> BisectReport {
        BisectReport {
            schema: SCHEMA.into(),
            natvet_version: env!("CARGO_PKG_VERSION").into(),
            started_at,
            elapsed_ms: 0,
            line: fmt_line(&self.line),
            good: self.good.spec(),
            bad: self.bad.spec(),
            checks: checks.to_vec(),
            candidates: self.candidates.iter().map(|c| c.release.clone()).collect(),
            estimated_steps: estimate(self.candidates.len()),
            bisection_steps: 0,
            skipped: 0,
            steps: vec![],
            answer: None,
        }
    }

    /// The outcome of a finished search, as an answer.
    pub fn answer(&self, outcome: &Outcome) -> Answer {
        match outcome {
            Outcome::Found {
                first_bad,
                last_good,
            } => Answer::Found {
                first_bad: self.name(*first_bad),
                last_good: self.name(*last_good),
                first_bad_is_own_kernel: *first_bad == Point::BadEnd
                    && matches!(self.bad, BadEnd::Own { .. }),
            },
            Outcome::Ambiguous {
                last_good,
                could_be_first_bad,
            } => Answer::Ambiguous {
                last_good: self.name(*last_good),
                could_be_first_bad: could_be_first_bad.iter().map(|p| self.name(*p)).collect(),
            },
        }
    }
}

/// The closing lines of a bisection: the answer, the effort, and the first
/// bad kernel's failing checks with their evidence.
pub fn render_summary(report: &BisectReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let step_of = |spec: &str| report.steps.iter().find(|s| s.spec == spec);
    let describe = |spec: &str| match step_of(spec) {
        Some(s) => match &s.package_version {
            Some(v) => format!("{spec} ({v})"),
            None => format!("{spec} (release {})", s.release),
        },
        None => spec.to_string(),
    };
    match &report.answer {
        Some(Answer::Found {
            first_bad,
            last_good,
            first_bad_is_own_kernel,
        }) => {
            let _ = writeln!(out, "first bad: {}", describe(first_bad));
            let _ = writeln!(out, "last good: {}", describe(last_good));
            if *first_bad_is_own_kernel {
                let _ = writeln!(
                    out,
                    "every packaged {} kernel in the range passes: the first bad is the bad kernel itself (no packaged kernel has the bug, yours does)",
                    report.line
                );
            }
            if let Some(s) = step_of(first_bad) {
                let _ = writeln!(
                    out,
                    "failing checks on the first bad ({}):",
                    s.failing.len()
                );
                for f in &s.failing {
                    let _ = writeln!(out, "  {} [{}] {}", f.scenario, f.backend, f.check);
                    let _ = writeln!(out, "    expected: {}", f.expected);
                    let _ = writeln!(out, "    observed: {}", f.observed);
                    if let Some(e) = &f.evidence {
                        let _ = writeln!(out, "    evidence: {e}");
                    }
                }
            }
        }
        Some(Answer::Ambiguous {
            last_good,
            could_be_first_bad,
        }) => {
            let _ = writeln!(
                out,
                "the first bad kernel cannot be identified: natvet could not test some kernels next to it"
            );
            let _ = writeln!(out, "last good: {}", describe(last_good));
            let _ = writeln!(out, "the first bad is one of:");
            for c in could_be_first_bad {
                let why = step_of(c)
                    .map(|s| format!("{}: {}", s.verdict.label(), s.reason))
                    .unwrap_or_default();
                let _ = writeln!(out, "  {c}  {why}");
            }
            let _ = writeln!(
                out,
                "fix what kept them from being tested (see their console logs under --out) and bisect that range again"
            );
        }
        Some(Answer::NoRange { reason }) => {
            let _ = writeln!(out, "nothing bisected: {reason}");
        }
        Some(Answer::Interrupted) => {
            let _ = writeln!(out, "interrupted: no answer");
        }
        None => {}
    }
    let candidate_secs: Vec<f64> = report
        .steps
        .iter()
        .filter(|s| s.role == Role::Candidate)
        .map(|s| s.seconds)
        .collect();
    let mean = if candidate_secs.is_empty() {
        String::new()
    } else {
        format!(
            ", {:.1} s per step",
            candidate_secs.iter().sum::<f64>() / candidate_secs.len() as f64
        )
    };
    let _ = writeln!(
        out,
        "{} candidate(s) between the endpoints; {} step(s) (estimate {}), {} skipped{mean}; {} kernel(s) tested in {:.0} s",
        report.candidates.len(),
        report.bisection_steps,
        report.estimated_steps,
        report.skipped,
        report.steps.len(),
        report.elapsed_ms as f64 / 1000.0
    );
    out
}

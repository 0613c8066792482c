//! The comparison behind `natvet gate`: a baseline kernel (what production
//! runs) and a candidate, run side by side, every check classified, so the one
//! question before a rollout — did anything regress? — has a one-line answer
//! and an exit code.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::exit;
use super::kernel_run::{KernelRun, KernelState};
use crate::protocol::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// Passed on the baseline, fails on the candidate.
    Regressed,
    /// Could not be compared: a harness error on either side.
    Error,
    /// Unsupported on either side (a feature missing is listed, not judged).
    Unsupported,
    /// Failed on the baseline, passes on the candidate.
    Fixed,
    UnchangedFail,
    UnchangedPass,
}

impl Change {
    pub fn label(self) -> &'static str {
        match self {
            Change::Regressed => "REGRESSED",
            Change::Error => "error",
            Change::Unsupported => "unsupported",
            Change::Fixed => "fixed",
            Change::UnchangedFail => "unchanged-fail",
            Change::UnchangedPass => "unchanged-pass",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRow {
    pub scenario: String,
    pub backend: String,
    pub check: String,
    pub baseline: Option<Status>,
    pub candidate: Option<Status>,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub baseline: String,
    pub candidate: String,
    pub rows: Vec<GateRow>,
    /// The performance comparison (none with `--no-perf`, or when no
    /// scenario has probes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perf: Option<super::perf::PerfGate>,
}

fn passed(s: Option<Status>) -> bool {
    matches!(s, Some(Status::Pass | Status::Flaky))
}

fn classify(baseline: Option<Status>, candidate: Option<Status>) -> Change {
    use Status::*;
    match (baseline, candidate) {
        (_, Some(Fail)) if passed(baseline) => Change::Regressed,
        (Some(Fail), Some(Fail)) => Change::UnchangedFail,
        (Some(Fail), c) if passed(c) => Change::Fixed,
        (b, c) if passed(b) && passed(c) => Change::UnchangedPass,
        (Some(Unsupported), _) | (_, Some(Unsupported)) => Change::Unsupported,
        _ => Change::Error,
    }
}

/// Compare every check either kernel reported (a check missing on one side is
/// an error: that side could not run it).
pub fn compare(baseline: &KernelRun, candidate: &KernelRun) -> Gate {
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for r in baseline.results.iter().chain(&candidate.results) {
        let key = (r.scenario.clone(), r.backend.clone(), r.check.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let status = |k: &KernelRun, key: &(String, String, String)| {
        k.results
            .iter()
            .find(|r| r.scenario == key.0 && r.backend == key.1 && r.check == key.2)
            .map(|r| r.status)
    };
    let mut rows: Vec<GateRow> = keys
        .into_iter()
        .map(|key| {
            let (b, c) = (status(baseline, &key), status(candidate, &key));
            GateRow {
                change: classify(b, c),
                baseline: b,
                candidate: c,
                scenario: key.0,
                backend: key.1,
                check: key.2,
            }
        })
        .collect();
    // Regressions first; otherwise keep the run order.
    rows.sort_by_key(|r| r.change);
    Gate {
        baseline: baseline.label(),
        candidate: candidate.label(),
        rows,
        perf: None,
    }
}

impl Gate {
    /// 1 only when something regressed (a check, or a performance figure);
    /// 3 when a side could not be tested; else 0.
    pub fn exit_code(&self, baseline: &KernelRun, candidate: &KernelRun) -> i32 {
        let perf = self.perf.as_ref();
        if self.rows.iter().any(|r| r.change == Change::Regressed)
            || perf.is_some_and(|p| p.regressed() > 0)
        {
            exit::FAIL
        } else if baseline.state != KernelState::Completed
            || candidate.state != KernelState::Completed
            || self.rows.iter().any(|r| r.change == Change::Error)
            || perf.is_some_and(|p| p.incomplete())
        {
            exit::INFRA
        } else {
            exit::PASS
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let count = |c: Change| self.rows.iter().filter(|r| r.change == c).count();
        let _ = writeln!(
            out,
            "gate: baseline {} -> candidate {}",
            self.baseline, self.candidate
        );
        let regressed = count(Change::Regressed);
        let slower = self.perf.as_ref().map(|p| p.regressed()).unwrap_or(0);
        if regressed + slower > 0 {
            let _ = writeln!(out, "\n{} REGRESSION(S):", regressed + slower);
        }
        if let Some(p) = &self.perf {
            for r in p
                .rows
                .iter()
                .filter(|r| r.change == super::perf::PerfChange::Regressed)
            {
                let _ = writeln!(out, "  {:<15} {}  {}", "SLOWER", r.name(), r.summary());
            }
        }
        let w = self
            .rows
            .iter()
            .map(|r| r.scenario.len() + r.backend.len() + r.check.len() + 4)
            .max()
            .unwrap_or(10);
        let st = |s: Option<Status>| s.map(|s| s.label()).unwrap_or("-");
        for r in &self.rows {
            let name = format!("{} [{}] {}", r.scenario, r.backend, r.check);
            let _ = writeln!(
                out,
                "  {:<15} {name:<w$}  {} -> {}",
                r.change.label(),
                st(r.baseline),
                st(r.candidate)
            );
        }
        let lost = self
            .rows
            .iter()
            .filter(|r| r.change == Change::Unsupported && passed(r.baseline))
            .count();
        if lost > 0 {
            let _ = writeln!(
                out,
                "\nnote: {lost} check(s) that pass on the baseline are unsupported on the candidate (a feature it lacks): not a regression verdict, but look before a rollout that relies on them"
            );
        }
        let _ = writeln!(
            out,
            "\n{regressed} regressed, {} fixed, {} unchanged-pass, {} unchanged-fail, {} unsupported, {} not comparable",
            count(Change::Fixed),
            count(Change::UnchangedPass),
            count(Change::UnchangedFail),
            count(Change::Unsupported),
            count(Change::Error)
        );
        if let Some(p) = &self.perf {
            out.push_str(&p.render());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    #[test]
    fn classification() {
        assert_eq!(classify(Some(Pass), Some(Fail)), Change::Regressed);
        assert_eq!(classify(Some(Flaky), Some(Fail)), Change::Regressed);
        assert_eq!(classify(Some(Fail), Some(Pass)), Change::Fixed);
        assert_eq!(classify(Some(Fail), Some(Fail)), Change::UnchangedFail);
        assert_eq!(classify(Some(Pass), Some(Pass)), Change::UnchangedPass);
        assert_eq!(classify(Some(Pass), Some(Unsupported)), Change::Unsupported);
        assert_eq!(classify(Some(Pass), Some(Error)), Change::Error);
        assert_eq!(classify(None, Some(Fail)), Change::Error);
        assert_eq!(classify(Some(Error), Some(Fail)), Change::Error);
        assert_eq!(classify(Some(Pass), None), Change::Error);
    }
}

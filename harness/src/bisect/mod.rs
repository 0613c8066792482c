//! `natvet bisect`: find the first kernel package of one line that breaks
//! what a good one did, over the packages of a source whose order natvet
//! knows (Debian's, today). This module is the pure part: which packages
//! lie between the endpoints ([`mod@plan`]), the search ([`search`]: a midpoint
//! bisection that steps around kernels it cannot test, like `git bisect
//! skip`), how one kernel's results become good / bad / skip (here), the
//! report ([`report`]) and the exit codes `git bisect run` expects. `commands/bisect.rs`
//! runs the kernels.

pub mod plan;
pub mod report;
pub mod search;

use serde::{Deserialize, Serialize};

use crate::protocol::Status;
use crate::report::{KernelRun, KernelState};

pub use plan::{
    candidates, endpoints, fmt_line, line_of, plan, BadEnd, Endpoints, Plan, PlanError, Upper,
};
pub use report::{failing, render_summary, Answer, BisectReport, Failing, Role, Step, SCHEMA};
pub use search::{estimate, run, Outcome, Point, Search};

/// What one tested kernel says about the regression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every selected check passed.
    Good,
    /// A selected check failed.
    Bad,
    /// natvet could not tell (harness error, unsupported check, fetch or boot failure).
    Skip,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Good => "good",
            Verdict::Bad => "bad",
            Verdict::Skip => "skip",
        }
    }
}

// ---------------------------------------------------------------- checks

/// True when `check` (a result name such as `handshake/53`) is selected by
/// `pattern`: the same name, or a family given as `handshake` or `handshake/`.
pub fn check_matches(pattern: &str, check: &str) -> bool {
    let family = pattern.trim_end_matches('/');
    check == pattern
        || (!family.is_empty()
            && check
                .strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('/')))
}

/// True when `check` is selected by any of `patterns` (none: every check).
pub fn selected(patterns: &[String], check: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| check_matches(p, check))
}

/// Good, bad or skip for one kernel's run, judged on the selected checks
/// only. A failed selected check is bad even when the run later broke down
/// (it is evidence about the kernel); otherwise anything short of every
/// selected check passing is a skip, with the reason.
pub fn classify(run: &KernelRun, patterns: &[String]) -> (Verdict, String) {
    let sel: Vec<_> = run
        .results
        .iter()
        .filter(|r| selected(patterns, &r.check))
        .collect();
    let failed: Vec<String> = sel
        .iter()
        .filter(|r| r.status == Status::Fail)
        .map(|r| format!("{} [{}] {}", r.scenario, r.backend, r.check))
        .collect();
    if !failed.is_empty() {
        return (
            Verdict::Bad,
            format!("{} failed: {}", failed.len(), abbreviate(&failed)),
        );
    }
    if let KernelState::InfraError { stage, reason, .. } = &run.state {
        return (
            Verdict::Skip,
            format!("natvet could not test it ({stage}): {reason}"),
        );
    }
    let not_run: Vec<String> = sel
        .iter()
        .filter(|r| !matches!(r.status, Status::Pass | Status::Flaky))
        .map(|r| {
            format!(
                "{} [{}] {} is {}",
                r.scenario,
                r.backend,
                r.check,
                r.status.label().to_lowercase()
            )
        })
        .collect();
    if !not_run.is_empty() {
        return (Verdict::Skip, abbreviate(&not_run));
    }
    if sel.is_empty() {
        return (
            Verdict::Skip,
            "the run reported none of the selected checks".into(),
        );
    }
    (
        Verdict::Good,
        format!("{} selected checks passed", sel.len()),
    )
}

/// The first few items of a list, and how many more there are.
fn abbreviate(items: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut s = items[..items.len().min(SHOWN)].join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

// ---------------------------------------------------------------- git bisect run

/// Exit codes of `natvet vet --bisect-exit-codes`, as `git bisect run` reads them.
pub mod git_exit {
    /// Every selected check passed: this commit is good.
    pub const GOOD: i32 = 0;
    /// A selected check failed: this commit is bad.
    pub const BAD: i32 = 1;
    /// This commit cannot be tested (no kernel, boot failure, harness error).
    pub const SKIP: i32 = 125;
    /// natvet's own command line is wrong: stop the whole bisection
    /// (git aborts `bisect run` on codes above 127).
    pub const ABORT: i32 = 128;
}

/// The `git bisect run` answer for a finished vet: bad if any kernel is bad,
/// else skip if any could not be judged, else good.
pub fn git_bisect_code(runs: &[KernelRun], patterns: &[String]) -> i32 {
    let verdicts: Vec<Verdict> = runs.iter().map(|k| classify(k, patterns).0).collect();
    if verdicts.is_empty() {
        git_exit::SKIP
    } else if verdicts.contains(&Verdict::Bad) {
        git_exit::BAD
    } else if verdicts.contains(&Verdict::Skip) {
        git_exit::SKIP
    } else {
        git_exit::GOOD
    }
}

// ---------------------------------------------------------------- endpoints

/// Why the endpoints do not make a regression range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("the good kernel fails ({0}): it is not good, so this is not a regression range; pick an older --good that passes")]
    GoodFails(String),
    #[error("the bad kernel passes: nothing to bisect; pick a --bad that fails, or name the failing checks with --check")]
    BadPasses,
    #[error("the good kernel fails ({0}) and the bad kernel passes: this is not a regression range (did you swap --good and --bad?)")]
    Swapped(String),
    #[error("natvet could not test the {which} kernel: {reason}")]
    Untestable { which: &'static str, reason: String },
}

impl RangeError {
    /// True when the endpoints were tested and say the range is wrong (the
    /// user's input); false when they could not be tested (infrastructure).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, RangeError::Untestable { .. })
    }
}

/// Judge the endpoints (each as (verdict, reason)) before searching.
pub fn check_endpoints(
    good: &(Verdict, String),
    bad: &(Verdict, String),
) -> Result<(), RangeError> {
    match (good.0, bad.0) {
        (Verdict::Good, Verdict::Bad) => Ok(()),
        (Verdict::Bad, Verdict::Good) => Err(RangeError::Swapped(good.1.clone())),
        (Verdict::Bad, _) => Err(RangeError::GoodFails(good.1.clone())),
        (_, Verdict::Good) => Err(RangeError::BadPasses),
        (Verdict::Skip, _) => Err(RangeError::Untestable {
            which: "good",
            reason: good.1.clone(),
        }),
        (_, Verdict::Skip) => Err(RangeError::Untestable {
            which: "bad",
            reason: bad.1.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::CheckResult;

    #[test]
    fn endpoints() {
        let g = (Verdict::Good, String::new());
        let b = (Verdict::Bad, "failed: x".to_string());
        let s = (Verdict::Skip, "boot".to_string());
        assert_eq!(check_endpoints(&g, &b), Ok(()));
        let e = check_endpoints(&g, &g).unwrap_err();
        assert!(e.is_user_error());
        assert!(e
            .to_string()
            .contains("the bad kernel passes: nothing to bisect"));
        let e = check_endpoints(&b, &b).unwrap_err();
        assert!(e.to_string().contains("the good kernel fails"), "{e}");
        let e = check_endpoints(&b, &g).unwrap_err();
        assert!(e.to_string().contains("swap"), "{e}");
        let e = check_endpoints(&s, &b).unwrap_err();
        assert!(!e.is_user_error());
        assert!(e.to_string().contains("good kernel"), "{e}");
        let e = check_endpoints(&g, &s).unwrap_err();
        assert!(e.to_string().contains("bad kernel"), "{e}");
    }

    #[test]
    fn check_patterns() {
        assert!(check_matches("handshake/53", "handshake/53"));
        assert!(!check_matches("handshake/53", "handshake/5300"));
        assert!(check_matches("handshake/", "handshake/53"));
        assert!(check_matches("handshake", "handshake/53"));
        assert!(!check_matches("handshake", "no-handshake/53"));
        assert!(!check_matches("handshake/", "no-handshake/53"));
        assert!(check_matches("kernel-health", "kernel-health"));
        assert!(!check_matches("/", "handshake/53"));
        assert!(selected(&[], "anything"));
    }

    fn result(check: &str, status: Status) -> CheckResult {
        CheckResult {
            scenario: "extended-ports".into(),
            backend: "nftables".into(),
            check: check.into(),
            status,
            expected: "e".into(),
            observed: "o".into(),
            duration_ms: 1,
            evidence: None,
            evidence_dir: None,
            series: None,
        }
    }

    fn kernel(results: Vec<CheckResult>, state: KernelState) -> KernelRun {
        KernelRun {
            spec: "debian:x".into(),
            release: Some("x".into()),
            id: None,
            package: None,
            boot: None,
            state,
            results,
            perf: vec![],
            notes: vec![],
            attempts: 1,
            timings: Default::default(),
            console_log: None,
        }
    }

    fn infra() -> KernelState {
        KernelState::InfraError {
            stage: crate::report::InfraStage::Boot,
            reason: "no agent".into(),
            console_tail: vec![],
        }
    }

    #[test]
    fn classifies_runs() {
        let hs = |s: &str| vec![s.to_string()];
        let run = kernel(
            vec![
                result("handshake/53", Status::Pass),
                result("forward/tcp", Status::Fail),
            ],
            KernelState::Completed,
        );
        assert_eq!(classify(&run, &[]).0, Verdict::Bad);
        // Only the selected checks decide.
        assert_eq!(classify(&run, &hs("handshake/")).0, Verdict::Good);
        assert_eq!(classify(&run, &hs("forward/tcp")).0, Verdict::Bad);
        // A failure outranks a later breakdown; a breakdown alone is a skip.
        let broke = kernel(vec![result("forward/tcp", Status::Fail)], infra());
        assert_eq!(classify(&broke, &[]).0, Verdict::Bad);
        let broke = kernel(vec![result("handshake/53", Status::Pass)], infra());
        let (v, why) = classify(&broke, &[]);
        assert_eq!(v, Verdict::Skip);
        assert!(why.contains("boot") && why.contains("no agent"), "{why}");
        for status in [Status::Unsupported, Status::Error] {
            let run = kernel(vec![result("handshake/53", status)], KernelState::Completed);
            assert_eq!(classify(&run, &[]).0, Verdict::Skip, "{status:?}");
        }
        let flaky = kernel(
            vec![result("handshake/53", Status::Flaky)],
            KernelState::Completed,
        );
        assert_eq!(classify(&flaky, &[]).0, Verdict::Good);
        let none = kernel(vec![], KernelState::Completed);
        assert_eq!(classify(&none, &[]).0, Verdict::Skip);
    }

    #[test]
    fn git_bisect_codes() {
        let pass = kernel(
            vec![result("handshake/53", Status::Pass)],
            KernelState::Completed,
        );
        let fail = kernel(
            vec![result("handshake/53", Status::Fail)],
            KernelState::Completed,
        );
        let unsupported = kernel(
            vec![result("handshake/53", Status::Unsupported)],
            KernelState::Completed,
        );
        let broke = kernel(vec![], infra());
        assert_eq!(
            git_bisect_code(std::slice::from_ref(&pass), &[]),
            git_exit::GOOD
        );
        assert_eq!(
            git_bisect_code(std::slice::from_ref(&fail), &[]),
            git_exit::BAD
        );
        assert_eq!(git_bisect_code(&[unsupported], &[]), git_exit::SKIP);
        assert_eq!(
            git_bisect_code(std::slice::from_ref(&broke), &[]),
            git_exit::SKIP
        );
        assert_eq!(git_bisect_code(&[broke, fail.clone()], &[]), git_exit::BAD);
        assert_eq!(git_bisect_code(&[], &[]), git_exit::SKIP);
        assert_eq!(
            git_bisect_code(&[fail], &["forward/".to_string()]),
            git_exit::SKIP,
            "a run without any selected check cannot say good"
        );
        assert_eq!(git_exit::SKIP, 125);
        const { assert!(git_exit::ABORT > 127) };
    }
}

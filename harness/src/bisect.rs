//! `natvet bisect`: find the first Debian kernel package of one line that
//! breaks what a good one did. This module is the pure part: which packages
//! lie between the endpoints, the search (a midpoint bisection that steps
//! around kernels it cannot test, like `git bisect skip`), how one kernel's
//! results become good / bad / skip, and the exit codes `git bisect run`
//! expects. `commands/bisect.rs` runs the kernels.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::kernel::debian::{self, Index};
use crate::kernel::{version, PackageInfo};
use crate::protocol::Status;
use crate::report::{KernelRun, KernelState};

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

// ---------------------------------------------------------------- candidates

/// A Debian kernel package between the endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// `uname -r`, e.g. `6.12.73+deb12-amd64`.
    pub release: String,
    pub package: PackageInfo,
}

impl Candidate {
    pub fn spec(&self) -> String {
        format!("debian:{}", self.release)
    }
}

/// The version line (major.minor) of a release: `6.12.95+deb12-amd64` → [6, 12].
pub fn line_of(release: &str) -> Option<[u64; 2]> {
    match debian::release_components(release)[..] {
        [a, b, ..] => Some([a, b]),
        _ => None,
    }
}

/// Every generic amd64 image release in the index, one entry per release
/// (its highest package version), in package version order, oldest first.
pub fn generic_releases(index: &Index) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for s in &index.stanzas {
        let Some(r) = debian::image_release(&s.package).filter(|r| debian::is_generic_amd64(r))
        else {
            continue;
        };
        if out.iter().any(|c| c.release == r) {
            continue;
        }
        if let Some(best) = debian::select_exact(index, r) {
            out.push(Candidate {
                release: r.to_string(),
                package: best.info(),
            });
        }
    }
    out.sort_by(|a, b| {
        version::compare(&a.package.version, &b.package.version)
            .then_with(|| a.release.cmp(&b.release))
    });
    out
}

/// The newer end of the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upper<'a> {
    /// A Debian package: candidates are older than its version.
    Package { version: &'a str },
    /// A kernel of the user's (a build tree, an image) of this upstream
    /// release: candidates are packages of an upstream version up to its own.
    Build { upstream: &'a [u64] },
}

/// The packages of `line` strictly newer than `good_version` and older than
/// the upper end, oldest first.
pub fn candidates(
    releases: &[Candidate],
    line: [u64; 2],
    good_version: &str,
    upper: &Upper,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = releases
        .iter()
        .filter(|c| debian::line_matches(&c.release, &line))
        .filter(|c| version::compare(&c.package.version, good_version) == Ordering::Greater)
        .filter(|c| match upper {
            Upper::Package { version: v } => {
                version::compare(&c.package.version, v) == Ordering::Less
            }
            Upper::Build { upstream } => {
                debian::release_components(&c.release).as_slice() <= *upstream
            }
        })
        .cloned()
        .collect();
    out.sort_by(|a, b| version::compare(&a.package.version, &b.package.version));
    out.dedup_by(|a, b| a.release == b.release);
    out
}

// ---------------------------------------------------------------- endpoints

/// The newer end as the user gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadEnd {
    /// A Debian package.
    Package(Candidate),
    /// A kernel of the user's own (build:PATH or an image) and its release.
    Own { spec: String, release: String },
}

impl BadEnd {
    pub fn spec(&self) -> String {
        match self {
            BadEnd::Package(c) => c.spec(),
            BadEnd::Own { spec, .. } => spec.clone(),
        }
    }

    pub fn release(&self) -> &str {
        match self {
            BadEnd::Package(c) => &c.release,
            BadEnd::Own { release, .. } => release,
        }
    }
}

/// What to bisect: the line, the endpoints and the packages between them.
#[derive(Debug, Clone)]
pub struct Plan {
    pub line: [u64; 2],
    pub good: Candidate,
    pub bad: BadEnd,
    pub candidates: Vec<Candidate>,
    /// Packages of the line newer than a bad kernel of the user's own
    /// (a newer upstream version), which are not in the range.
    pub left_out: Vec<Candidate>,
}

/// Endpoints that cannot make a range (the user's input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("--good {good} is of the {} line but --bad {bad} is of the {} line: natvet bisects within one line; pick both from one line (`natvet kernels list --all` shows the releases)", fmt_line(.good_line), fmt_line(.bad_line))]
    DifferentLines {
        good: String,
        good_line: [u64; 2],
        bad: String,
        bad_line: [u64; 2],
    },
    #[error("--good {good} ({good_version}) is not older than --bad {bad} ({bad_version}): give the older, passing kernel as --good (did you swap them?)")]
    NotOlder {
        good: String,
        good_version: String,
        bad: String,
        bad_version: String,
    },
    #[error("cannot tell the version line of {spec} from its release '{release}': natvet bisects within one line such as 6.12")]
    UnknownLine { spec: String, release: String },
    #[error("{0}")]
    NoPackage(String),
}

pub fn fmt_line(l: &[u64; 2]) -> String {
    format!("{}.{}", l[0], l[1])
}

/// Reject endpoints of two lines before the index is even read, when both
/// are exact Debian releases (`6.1.0-50-amd64`, `6.12.43+deb12-amd64`).
pub fn early_check(good_query: &str, bad_query: Option<&str>) -> Result<(), PlanError> {
    let exact = |q: &str| match debian::parse_query(q) {
        Ok(debian::Query::Exact(r)) => line_of(&r).map(|l| (r, l)),
        _ => None,
    };
    if let (Some((g, gl)), Some((b, bl))) = (exact(good_query), bad_query.and_then(exact)) {
        if gl != bl {
            return Err(PlanError::DifferentLines {
                good: format!("debian:{g}"),
                good_line: gl,
                bad: format!("debian:{b}"),
                bad_line: bl,
            });
        }
    }
    Ok(())
}

/// The Debian package a `debian:` query names today (an exact release, the
/// newest of a line, the newest of a suite).
pub fn debian_endpoint(index: &Index, query: &str) -> Result<Candidate, PlanError> {
    let none = |why: String| PlanError::NoPackage(why);
    let release =
        match debian::parse_query(query).map_err(|e| none(format!("debian:{query}: {e}")))? {
            debian::Query::Exact(r) => r,
            debian::Query::Line(l) => debian::select_line(index, &l).unwrap_or_default(),
            debian::Query::Suite { suite, line } => {
                debian::select_suite(index, &suite, line.as_deref()).unwrap_or_default()
            }
        };
    let stanza = debian::select_exact(index, &release).ok_or_else(|| {
        none(format!(
            "no Debian kernel package matches 'debian:{query}'; known lines: {} (`natvet kernels list --all` shows the releases on offer)",
            debian::known_lines(index).join(", ")
        ))
    })?;
    Ok(Candidate {
        release,
        package: stanza.info(),
    })
}

/// Check the endpoints against each other and list the packages between them.
pub fn plan(releases: &[Candidate], good: Candidate, bad: BadEnd) -> Result<Plan, PlanError> {
    let line = |spec: String, release: &str| {
        line_of(release).ok_or_else(|| PlanError::UnknownLine {
            spec,
            release: release.to_string(),
        })
    };
    let good_line = line(good.spec(), &good.release)?;
    let bad_line = line(bad.spec(), bad.release())?;
    if good_line != bad_line {
        return Err(PlanError::DifferentLines {
            good: good.spec(),
            good_line,
            bad: bad.spec(),
            bad_line,
        });
    }
    let not_older = |bad_version: String| PlanError::NotOlder {
        good: good.spec(),
        good_version: good.package.version.clone(),
        bad: bad.spec(),
        bad_version,
    };
    let upstream = debian::release_components(bad.release());
    let upper = match &bad {
        BadEnd::Package(b) => {
            if version::compare(&good.package.version, &b.package.version) != Ordering::Less {
                return Err(not_older(b.package.version.clone()));
            }
            Upper::Package {
                version: &b.package.version,
            }
        }
        BadEnd::Own { release, .. } => {
            if debian::release_components(&good.release) > upstream {
                return Err(not_older(format!("release {release}")));
            }
            Upper::Build {
                upstream: &upstream,
            }
        }
    };
    let candidates = candidates(releases, good_line, &good.package.version, &upper);
    let left_out = match &bad {
        BadEnd::Package(_) => vec![],
        BadEnd::Own { .. } => releases
            .iter()
            .filter(|c| {
                debian::line_matches(&c.release, &good_line)
                    && debian::release_components(&c.release) > upstream
            })
            .cloned()
            .collect(),
    };
    Ok(Plan {
        line: good_line,
        good,
        bad,
        candidates,
        left_out,
    })
}

// ---------------------------------------------------------------- records

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

    /// What is about to be bisected, for people.
    pub fn header(&self) -> String {
        let n = self.candidates.len();
        let mut out = format!(
            "bisecting {}: good {} ({}), bad {} (release {}); {n} package(s) between them, about {} step(s)\n",
            fmt_line(&self.line),
            self.good.spec(),
            self.good.package.version,
            self.bad.spec(),
            self.bad.release(),
            estimate(n)
        );
        if !self.left_out.is_empty() {
            let names: Vec<&str> = self.left_out.iter().map(|c| c.release.as_str()).collect();
            out.push_str(&format!(
                "left out: {} (a newer upstream version than {}, so not in the range)\n",
                names.join(", "),
                self.bad.release()
            ));
        }
        out
    }

    /// A point of the search as a spec.
    pub fn name(&self, p: Point) -> String {
        match p {
            Point::GoodEnd => self.good.spec(),
            Point::BadEnd => self.bad.spec(),
            Point::Candidate(i) => self
                .candidates
                .get(i)
                .map(Candidate::spec)
                .unwrap_or_else(|| format!("candidate {i}")),
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

// ---------------------------------------------------------------- search

/// A place in the range: one of the two endpoints or a candidate (by index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "index")]
pub enum Point {
    GoodEnd,
    Candidate(usize),
    BadEnd,
}

/// How the search ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The first bad and the last good are neighbours.
    Found { first_bad: Point, last_good: Point },
    /// Kernels that could not be tested sit between the last good and the
    /// first bad one tested: any of `could_be_first_bad` may be the first bad.
    Ambiguous {
        last_good: Point,
        could_be_first_bad: Vec<Point>,
    },
}

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

/// ceil(log2(n + 1)): the tests a bisection of `n` candidates needs without skips.
pub fn estimate(n: usize) -> usize {
    (usize::BITS - n.leading_zeros()) as usize
}

/// The search over candidates 0..n, the good endpoint before them and the bad
/// endpoint after them (both already known to be good and bad).
#[derive(Debug, Clone)]
pub struct Search {
    n: usize,
    /// Index + 1 of the newest candidate known good (0: the good endpoint).
    lo: usize,
    /// Index + 1 of the oldest candidate known bad (n + 1: the bad endpoint).
    hi: usize,
    skipped: BTreeSet<usize>,
    steps: usize,
}

impl Search {
    pub fn new(n: usize) -> Search {
        Search {
            n,
            lo: 0,
            hi: n + 1,
            skipped: BTreeSet::new(),
            steps: 0,
        }
    }

    /// Candidates still worth testing: between the last good and first bad, not skipped.
    fn open(&self) -> Vec<usize> {
        (self.lo..self.hi.saturating_sub(1))
            .filter(|i| !self.skipped.contains(i))
            .collect()
    }

    /// The next candidate to test: the middle one of those still open (so a
    /// skip moves the choice next to the candidate that could not be tested),
    /// or None when the search is over.
    pub fn next(&self) -> Option<usize> {
        let open = self.open();
        (!open.is_empty()).then(|| open[(open.len() - 1) / 2])
    }

    /// Tests run so far (skips included).
    pub fn steps(&self) -> usize {
        self.steps
    }

    pub fn skipped(&self) -> usize {
        self.skipped.len()
    }

    /// Tests still needed if nothing more is skipped.
    pub fn remaining_estimate(&self) -> usize {
        estimate(self.open().len())
    }

    /// Record candidate `i`'s verdict.
    pub fn record(&mut self, i: usize, v: Verdict) {
        assert!(i < self.n, "candidate {i} out of range 0..{}", self.n);
        self.steps += 1;
        match v {
            Verdict::Good => self.lo = self.lo.max(i + 1),
            Verdict::Bad => self.hi = self.hi.min(i + 1),
            Verdict::Skip => {
                self.skipped.insert(i);
            }
        }
    }

    fn point(&self, pos: usize) -> Point {
        match pos {
            0 => Point::GoodEnd,
            p if p == self.n + 1 => Point::BadEnd,
            p => Point::Candidate(p - 1),
        }
    }

    /// The answer, once [`Search::next`] is None.
    pub fn outcome(&self) -> Outcome {
        let last_good = self.point(self.lo);
        let between: Vec<Point> = (self.lo + 1..self.hi).map(|p| self.point(p)).collect();
        if between.is_empty() {
            Outcome::Found {
                first_bad: self.point(self.hi),
                last_good,
            }
        } else {
            let mut could_be = between;
            could_be.push(self.point(self.hi));
            Outcome::Ambiguous {
                last_good,
                could_be_first_bad: could_be,
            }
        }
    }
}

/// Run a whole search with an oracle (for tests and simple callers).
pub fn run(n: usize, mut oracle: impl FnMut(usize) -> Verdict) -> (Outcome, Search) {
    let mut s = Search::new(n);
    while let Some(i) = s.next() {
        let v = oracle(i);
        s.record(i, v);
    }
    (s.outcome(), s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::CheckResult;

    fn pkg(release: &str, version: &str, suite: &str) -> Candidate {
        Candidate {
            release: release.into(),
            package: PackageInfo {
                name: format!("linux-image-{release}"),
                version: version.into(),
                suite: suite.into(),
                sha256: String::new(),
                filename: String::new(),
            },
        }
    }

    fn six_twelve() -> Vec<Candidate> {
        vec![
            pkg("6.12.117+deb13-amd64", "6.12.117-1", "trixie"),
            pkg(
                "6.12.43+deb12-amd64",
                "6.12.43-1~bpo12+1",
                "bookworm-backports",
            ),
            pkg(
                "6.12.90+deb12.1-amd64",
                "6.12.90-2~bpo12+1",
                "bookworm-backports",
            ),
            pkg("6.12.107+deb13-amd64", "6.12.107-1", "trixie"),
            pkg(
                "6.12.90+deb12-amd64",
                "6.12.90-1~bpo12+1",
                "bookworm-backports",
            ),
            pkg(
                "6.12.95+deb12-amd64",
                "6.12.95-1~bpo12+1",
                "bookworm-backports",
            ),
            pkg(
                "6.12.57+deb12-amd64",
                "6.12.57-1~bpo12+1",
                "bookworm-backports",
            ),
            pkg("6.1.0-50-amd64", "6.1.170-1", "bookworm"),
            pkg("7.2.13+deb14-amd64", "7.2.13-1", "sid"),
        ]
    }

    fn names(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.release.as_str()).collect()
    }

    #[test]
    fn candidates_between_two_packages() {
        let c = candidates(
            &six_twelve(),
            [6, 12],
            "6.12.43-1~bpo12+1",
            &Upper::Package {
                version: "6.12.107-1",
            },
        );
        assert_eq!(
            names(&c),
            [
                "6.12.57+deb12-amd64",
                "6.12.90+deb12-amd64",
                "6.12.90+deb12.1-amd64",
                "6.12.95+deb12-amd64"
            ]
        );
        // Strictly between: neighbours give nothing.
        let c = candidates(
            &six_twelve(),
            [6, 12],
            "6.12.95-1~bpo12+1",
            &Upper::Package {
                version: "6.12.107-1",
            },
        );
        assert!(c.is_empty());
    }

    #[test]
    fn candidates_below_a_build() {
        let c = candidates(
            &six_twelve(),
            [6, 12],
            "6.12.90-2~bpo12+1",
            &Upper::Build {
                upstream: &[6, 12, 117],
            },
        );
        assert_eq!(
            names(&c),
            [
                "6.12.95+deb12-amd64",
                "6.12.107+deb13-amd64",
                "6.12.117+deb13-amd64"
            ]
        );
        // Packages of a newer upstream than the build are not in its range.
        let c = candidates(
            &six_twelve(),
            [6, 12],
            "6.12.43-1~bpo12+1",
            &Upper::Build {
                upstream: &[6, 12, 95],
            },
        );
        assert_eq!(names(&c).last(), Some(&"6.12.95+deb12-amd64"));
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn generic_releases_from_an_index() {
        let text = "Package: linux-image-6.12.57+deb12-amd64\nVersion: 6.12.57-1~bpo12+1\nFilename: a.deb\nSHA256: 1\n\n\
                    Package: linux-image-6.12.57+deb12-amd64-unsigned\nVersion: 6.12.57-1~bpo12+1\nFilename: b.deb\nSHA256: 2\n\n\
                    Package: linux-image-6.12.57+deb12-cloud-amd64\nVersion: 6.12.57-1~bpo12+1\nFilename: c.deb\nSHA256: 3\n\n\
                    Package: linux-image-6.12.43+deb12-amd64\nVersion: 6.12.43-1~bpo12+1\nFilename: d.deb\nSHA256: 4\n";
        let index = Index {
            stanzas: debian::parse_packages(text.as_bytes(), "bookworm-backports").unwrap(),
            failures: vec![],
        };
        let r = generic_releases(&index);
        assert_eq!(names(&r), ["6.12.43+deb12-amd64", "6.12.57+deb12-amd64"]);
        assert_eq!(r[1].package.name, "linux-image-6.12.57+deb12-amd64");
    }

    #[test]
    fn lines() {
        assert_eq!(line_of("6.12.95+deb12-amd64"), Some([6, 12]));
        assert_eq!(line_of("6.12.117"), Some([6, 12]));
        assert_eq!(line_of("6.1.0-50-amd64"), Some([6, 1]));
        assert_eq!(line_of("x"), None);
    }

    #[test]
    fn estimates() {
        let want = [
            (0, 0),
            (1, 1),
            (2, 2),
            (3, 2),
            (4, 3),
            (7, 3),
            (8, 4),
            (13, 4),
        ];
        for (n, e) in want {
            assert_eq!(estimate(n), e, "n = {n}");
        }
        assert_eq!(estimate(100), 7);
    }

    fn expected(n: usize, first_bad: usize) -> Outcome {
        Outcome::Found {
            first_bad: if first_bad == n {
                Point::BadEnd
            } else {
                Point::Candidate(first_bad)
            },
            last_good: if first_bad == 0 {
                Point::GoodEnd
            } else {
                Point::Candidate(first_bad - 1)
            },
        }
    }

    #[test]
    fn finds_every_first_bad_within_the_estimate() {
        for n in 0..=100 {
            for f in 0..=n {
                let mut tested = BTreeSet::new();
                let (outcome, s) = run(n, |i| {
                    assert!(tested.insert(i), "candidate {i} tested twice");
                    if i < f {
                        Verdict::Good
                    } else {
                        Verdict::Bad
                    }
                });
                assert_eq!(outcome, expected(n, f), "n = {n}, first bad = {f}");
                assert!(
                    s.steps() <= estimate(n),
                    "n = {n}, f = {f}: {} steps",
                    s.steps()
                );
            }
        }
    }

    /// A small deterministic generator for skip patterns.
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn skips_cost_one_step_each_and_never_mislead() {
        let mut seed = 7u64;
        for n in 1..=100 {
            for f in 0..=n {
                for density in [2u64, 5, 10] {
                    let skip: BTreeSet<usize> = (0..n)
                        .filter(|_| lcg(&mut seed).is_multiple_of(density))
                        .collect();
                    let (outcome, s) = run(n, |i| {
                        if skip.contains(&i) {
                            Verdict::Skip
                        } else if i < f {
                            Verdict::Good
                        } else {
                            Verdict::Bad
                        }
                    });
                    let ctx = format!("n = {n}, f = {f}, skipped {skip:?}");
                    assert!(
                        s.steps() <= estimate(n) + s.skipped(),
                        "{ctx}: {} steps, {} skips",
                        s.steps(),
                        s.skipped()
                    );
                    let neighbour_skipped =
                        (f < n && skip.contains(&f)) || (f > 0 && skip.contains(&(f - 1)));
                    match outcome {
                        Outcome::Found { .. } => assert_eq!(outcome, expected(n, f), "{ctx}"),
                        Outcome::Ambiguous {
                            last_good,
                            could_be_first_bad,
                        } => {
                            assert!(neighbour_skipped, "{ctx}: ambiguous needlessly");
                            let truth = if f == n {
                                Point::BadEnd
                            } else {
                                Point::Candidate(f)
                            };
                            assert!(could_be_first_bad.contains(&truth), "{ctx}");
                            if let Point::Candidate(g) = last_good {
                                assert!(g < f, "{ctx}");
                            }
                            // All but the last (the first known bad) were skipped.
                            for p in &could_be_first_bad[..could_be_first_bad.len() - 1] {
                                let Point::Candidate(i) = p else {
                                    panic!("{ctx}: {p:?}")
                                };
                                assert!(skip.contains(i), "{ctx}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_skipped_midpoint_moves_to_its_neighbour() {
        let mut s = Search::new(7);
        assert_eq!(s.next(), Some(3));
        s.record(3, Verdict::Skip);
        let next = s.next().unwrap();
        assert!(next == 2 || next == 4, "{next}");
        assert_eq!(s.remaining_estimate(), 3);
    }

    #[test]
    fn everything_skipped_is_ambiguous() {
        let (outcome, s) = run(3, |_| Verdict::Skip);
        assert_eq!(s.steps(), 3);
        assert_eq!(
            outcome,
            Outcome::Ambiguous {
                last_good: Point::GoodEnd,
                could_be_first_bad: vec![
                    Point::Candidate(0),
                    Point::Candidate(1),
                    Point::Candidate(2),
                    Point::BadEnd
                ],
            }
        );
    }

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

    #[test]
    fn plans_ranges() {
        let all = {
            let mut v = six_twelve();
            v.sort_by(|a, b| version::compare(&a.package.version, &b.package.version));
            v
        };
        let good = all
            .iter()
            .find(|c| c.release == "6.12.43+deb12-amd64")
            .unwrap()
            .clone();
        let own = BadEnd::Own {
            spec: "build:/b".into(),
            release: "6.12.117".into(),
        };
        let p = plan(&all, good.clone(), own.clone()).unwrap();
        assert_eq!(p.line, [6, 12]);
        assert_eq!(p.candidates.len(), 6);
        assert!(p.left_out.is_empty());
        assert!(p
            .header()
            .contains("6 package(s) between them, about 3 step(s)"));
        let older_build = BadEnd::Own {
            spec: "build:/b".into(),
            release: "6.12.95".into(),
        };
        let p2 = plan(&all, good.clone(), older_build).unwrap();
        assert_eq!(
            names(&p2.left_out),
            ["6.12.107+deb13-amd64", "6.12.117+deb13-amd64"]
        );
        assert!(
            p2.header().contains("left out: 6.12.107+deb13-amd64"),
            "{}",
            p2.header()
        );
        assert_eq!(
            p.answer(&Outcome::Found {
                first_bad: Point::BadEnd,
                last_good: Point::Candidate(5)
            }),
            Answer::Found {
                first_bad: "build:/b".into(),
                last_good: "debian:6.12.117+deb13-amd64".into(),
                first_bad_is_own_kernel: true
            }
        );
        let old = all
            .iter()
            .find(|c| c.release == "6.1.0-50-amd64")
            .unwrap()
            .clone();
        let e = plan(&all, old, own.clone()).unwrap_err();
        assert!(matches!(e, PlanError::DifferentLines { .. }), "{e}");
        assert!(
            e.to_string().contains("6.1 line") && e.to_string().contains("6.12 line"),
            "{e}"
        );
        let newer = all
            .iter()
            .find(|c| c.release == "6.12.107+deb13-amd64")
            .unwrap()
            .clone();
        let e = plan(&all, newer.clone(), BadEnd::Package(good.clone())).unwrap_err();
        assert!(matches!(e, PlanError::NotOlder { .. }), "{e}");
        let e = plan(&all, good.clone(), BadEnd::Package(good.clone())).unwrap_err();
        assert!(matches!(e, PlanError::NotOlder { .. }), "{e}");
        let e = plan(
            &all,
            newer,
            BadEnd::Own {
                spec: "build:/b".into(),
                release: "6.12.90".into(),
            },
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::NotOlder { .. }), "{e}");
        let e = plan(
            &all,
            good,
            BadEnd::Own {
                spec: "./bzImage".into(),
                release: "custom".into(),
            },
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::UnknownLine { .. }), "{e}");
    }

    #[test]
    fn early_line_check() {
        assert!(early_check("6.1.0-40-amd64", Some("6.12.43+deb12-amd64")).is_err());
        assert!(early_check("6.12.43+deb12-amd64", Some("6.12.95+deb12-amd64")).is_ok());
        assert!(early_check("6.12.43+deb12-amd64", Some("sid")).is_ok());
        assert!(early_check("6.12.43+deb12-amd64", None).is_ok());
    }
}

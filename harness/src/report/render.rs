//! Renderings of a run for machines and CI pages: JUnit XML for CI systems
//! and a Markdown summary for a CI job page (the terminal's answer is in
//! `terminal`, the HTML page in `html`). Each is a function of the
//! [`RunReport`] alone.

use std::fmt::Write;

use super::{KernelRun, KernelState, RunReport};
use crate::protocol::{CheckResult, Status};

/// JUnit XML (through quick-junit, the writer nextest uses): one testsuite
/// per kernel, one testcase per scenario x backend x check. Failures carry
/// expected vs observed; harness errors are `<error>`, unsupported checks
/// `<skipped>`; a kernel that could not be tested is one errored testcase.
pub fn junit(report: &RunReport) -> String {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    use std::time::Duration;
    let ms = Duration::from_millis;
    let mut out = Report::new("natvet");
    out.set_time(ms(report.elapsed_ms));
    for k in &report.kernels {
        let label = k.label();
        let mut suite = TestSuite::new(label.as_str());
        suite.set_time(ms(k.timings.total_ms));
        if let KernelState::InfraError {
            stage,
            reason,
            console_tail,
        } = &k.state
        {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status
                .set_message(reason.as_str())
                .set_type(stage.label())
                .set_description(console_tail.join("\n"));
            let mut case = TestCase::new("kernel", status);
            case.set_classname(format!("natvet.{label}"))
                .set_time(ms(k.timings.total_ms));
            suite.add_test_case(case);
        }
        for r in &k.results {
            let body = format!("expected: {}\nobserved: {}", r.expected, r.observed);
            let mut flaky = false;
            let status = match r.status {
                Status::Pass => TestCaseStatus::success(),
                // A NAT verdict is a <failure>; natvet's own trouble an <error>.
                Status::Fail | Status::Error => {
                    let (kind, ty) = if r.status == Status::Fail {
                        (NonSuccessKind::Failure, "nat")
                    } else {
                        (NonSuccessKind::Error, "harness")
                    };
                    let mut s = TestCaseStatus::non_success(kind);
                    s.set_message(first_line(&r.observed))
                        .set_type(ty)
                        .set_description(body);
                    s
                }
                Status::Unsupported => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_message(format!("unsupported: {}", first_line(&r.observed)));
                    s
                }
                Status::Flaky => {
                    flaky = true;
                    TestCaseStatus::success()
                }
            };
            let mut case = TestCase::new(r.check.as_str(), status);
            case.set_classname(format!("natvet.{label}.{}.{}", r.scenario, r.backend))
                .set_time(ms(r.duration_ms));
            if flaky {
                case.set_system_out("flaky: passed only after natvet retried a harness error");
            }
            suite.add_test_case(case);
        }
        out.add_test_suite(suite);
    }
    let perf = report.gate.as_ref().and_then(|g| g.perf.as_ref());
    let mut perf_skipped = 0;
    if let Some(p) = perf {
        use crate::report::perf::PerfChange;
        let mut suite = TestSuite::new("performance");
        suite.set_time(ms(p.elapsed_ms));
        for r in &p.rows {
            let status = match r.change {
                PerfChange::Unchanged | PerfChange::Faster => TestCaseStatus::success(),
                PerfChange::Regressed => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(format!("slower: {}", r.summary()))
                        .set_type("performance");
                    s
                }
                PerfChange::NotMeasured if p.incomplete() => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                    s.set_message(r.summary()).set_type("harness");
                    s
                }
                PerfChange::Inconclusive | PerfChange::NotMeasured => {
                    perf_skipped += 1;
                    let mut s = TestCaseStatus::skipped();
                    s.set_message(format!("{}: {}", r.change.label(), r.summary()));
                    s
                }
            };
            let mut case = TestCase::new(format!("perf/{}", r.probe), status);
            case.set_classname(format!("natvet.performance.{}.{}", r.scenario, r.backend));
            case.set_system_out(r.summary());
            suite.add_test_case(case);
        }
        out.add_test_suite(suite);
    }
    let xml = out.to_string().unwrap_or_else(|e| {
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- natvet could not write JUnit XML: {e} -->\n<testsuites/>\n")
    });
    // The root's `skipped` count is not in the JUnit schema CI tools
    // validate against (Jenkins' junit-10.xsd); each testsuite has its own.
    let skipped = format!(
        " skipped=\"{}\"",
        report
            .kernels
            .iter()
            .flat_map(|k| &k.results)
            .filter(|r| r.status == Status::Unsupported)
            .count()
            + perf_skipped
    );
    match xml.split_once('>').and_then(|(decl, rest)| {
        let (root, tail) = rest.split_once('>')?;
        Some(format!("{decl}>{}>{tail}", root.replacen(&skipped, "", 1)))
    }) {
        Some(x) => x,
        None => xml,
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

fn badge(s: Status) -> &'static str {
    match s {
        Status::Pass => "✅ pass",
        Status::Fail => "❌ **FAIL**",
        Status::Unsupported => "➖ unsupported",
        Status::Error => "⚠️ error",
        Status::Flaky => "🔁 flaky",
    }
}

/// Rows of the matrix: (scenario, backend, check) in first-seen order.
pub fn rows(report: &RunReport) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for r in report.kernels.iter().flat_map(|k| &k.results) {
        let key = (r.scenario.clone(), r.backend.clone(), r.check.clone());
        if !rows.contains(&key) {
            rows.push(key);
        }
    }
    rows
}

fn cell<'a>(k: &'a KernelRun, row: &(String, String, String)) -> Option<&'a CheckResult> {
    k.results
        .iter()
        .find(|r| r.scenario == row.0 && r.backend == row.1 && r.check == row.2)
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// A Markdown summary fit for a CI job page: verdict, matrix, failures.
pub fn markdown(report: &RunReport) -> String {
    let mut out = String::new();
    let verdict = match report.exit_code() {
        0 => "✅ all checks passed",
        1 => "❌ NAT regressions found",
        _ => "⚠️ natvet could not test everything",
    };
    let _ = writeln!(out, "## natvet: {verdict}\n");
    if let Some(d) = super::diagnosis::diagnose(report) {
        let _ = writeln!(out, "**What the {} failures share:**\n", d.failed);
        for f in &d.findings {
            let _ = writeln!(out, "- {} ({} failed)", md_escape(&f.summary), f.failed);
        }
        out.push('\n');
    }
    let _ = write!(out, "| check |");
    for k in &report.kernels {
        let _ = write!(out, " {} |", md_escape(&k.label()));
    }
    let _ = write!(out, "\n|---|");
    for _ in &report.kernels {
        out.push_str("---|");
    }
    out.push('\n');
    for row in rows(report) {
        let _ = write!(out, "| {} [{}] {} |", row.0, row.1, row.2);
        for k in &report.kernels {
            let c = cell(k, &row).map(|r| badge(r.status)).unwrap_or("–");
            let _ = write!(out, " {c} |");
        }
        out.push('\n');
    }
    let _ = write!(out, "| kernel |");
    for k in &report.kernels {
        let s = match &k.state {
            KernelState::Completed => format!("ok, {:.1} s", k.timings.total_ms as f64 / 1000.0),
            KernelState::InfraError { stage, reason, .. } => {
                format!("⚠️ not tested ({stage}): {}", md_escape(reason))
            }
        };
        let _ = write!(out, " {s} |");
    }
    out.push('\n');
    let failures: Vec<_> = report
        .kernels
        .iter()
        .flat_map(|k| k.results.iter().map(move |r| (k, r)))
        .filter(|(_, r)| matches!(r.status, Status::Fail | Status::Error))
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "\n### Failures\n");
        for (k, r) in failures {
            let _ = writeln!(
                out,
                "- **{}** {} [{}] `{}`: expected {}; observed {}",
                k.label(),
                r.scenario,
                r.backend,
                r.check,
                md_escape(&r.expected),
                md_escape(&r.observed)
            );
        }
    }
    out
}

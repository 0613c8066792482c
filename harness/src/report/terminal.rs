//! The run as a person reads it in a terminal: the verdict and the counts
//! first, the diagnosis when many checks failed, then a compact matrix (a
//! scenario x backend whose checks all passed is one row, `69/69`, per
//! kernel column; only checks that did not pass get rows of their own),
//! then each failure with expected vs observed and its evidence. `full`
//! is the table of every check, as `--table full` prints it.

use std::fmt::Write;

use super::{diagnosis, KernelRun, KernelState, RunReport};
use crate::protocol::{CheckResult, Status};

/// Failures shown in full below the matrix; the rest are counted.
const DETAILS_SHOWN: usize = 8;
/// A group's unsupported checks get one row each up to this many, else one row for all.
const UNSUPPORTED_ROWS: usize = 4;
/// Rows of checks that did not pass, per group, before the rest are counted.
const GROUP_ROWS: usize = 12;

/// How the table is printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TableStyle {
    /// Verdict first, one row per scenario x backend, only what did not pass expanded.
    #[default]
    Compact,
    /// Every check a row of its own.
    Full,
}

/// The terminal's answer in the chosen style.
pub fn render(report: &RunReport, style: TableStyle) -> String {
    let table = match style {
        TableStyle::Compact => compact(report),
        TableStyle::Full => full(report),
    };
    format!("{table}{}", super::perf::figures_table(&report.kernels))
}

fn n(report: &RunReport, s: Status) -> usize {
    report.counts().get(&s).copied().unwrap_or(0)
}

fn not_tested(report: &RunReport) -> usize {
    report
        .kernels
        .iter()
        .filter(|k| k.state != KernelState::Completed)
        .count()
}

/// "1,234".
fn thousands(v: usize) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// The verdict as one line, then the counts.
pub fn verdict(report: &RunReport) -> String {
    let kernels = report.kernels.len();
    let results: usize = report.kernels.iter().map(|k| k.results.len()).sum();
    let failed = n(report, Status::Fail);
    let errors = n(report, Status::Error);
    let infra = not_tested(report);
    let failing_kernels = report
        .kernels
        .iter()
        .filter(|k| k.results.iter().any(|r| r.status == Status::Fail))
        .count();
    let head = if failed > 0 {
        format!(
            "natvet: FAIL: {} on {}",
            plural(failed, "check failed", "checks failed"),
            match kernels {
                1 => "the kernel".to_string(),
                k => format!("{failing_kernels} of {k} kernels"),
            }
        )
    } else if report.slower() > 0 {
        format!(
            "natvet: FAIL: {} slower on the candidate; no check failed",
            plural(report.slower(), "performance figure", "performance figures")
        )
    } else if infra > 0 || errors > 0 {
        let mut why = Vec::new();
        if infra > 0 {
            why.push(format!(
                "{infra} of {} not tested",
                plural(kernels, "kernel", "kernels")
            ));
        }
        if errors > 0 {
            why.push(plural(
                errors,
                "check natvet could not run",
                "checks natvet could not run",
            ));
        }
        format!("natvet: NOT TESTED: {}; no check failed", why.join(", "))
    } else {
        format!(
            "natvet: PASS: every check passed on {}",
            match kernels {
                1 => "the kernel".to_string(),
                2 => "both kernels".to_string(),
                k => format!("all {k} kernels"),
            }
        )
    };
    let mut counts = vec![
        format!("{} results", thousands(results)),
        format!("{} pass", thousands(n(report, Status::Pass))),
    ];
    for (s, word) in [
        (Status::Fail, "FAIL"),
        (Status::Error, "ERROR"),
        (Status::Flaky, "flaky"),
        (Status::Unsupported, "unsupported"),
    ] {
        if n(report, s) > 0 {
            counts.push(format!("{} {word}", thousands(n(report, s))));
        }
    }
    if infra > 0 {
        counts.push(plural(infra, "kernel not tested", "kernels not tested"));
    }
    format!(
        "{head}\n  {} in {:.1} s\n",
        counts.join(", "),
        report.elapsed_ms as f64 / 1000.0
    )
}

/// Scenario x backend groups in first-seen order, each with its checks in order.
type Groups = Vec<((String, String), Vec<String>)>;

fn groups(report: &RunReport) -> Groups {
    let mut out: Groups = Vec::new();
    for (scenario, backend, check) in super::render::rows(report) {
        let key = (scenario, backend);
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, checks)) => checks.push(check),
            None => out.push((key, vec![check])),
        }
    }
    out
}

fn find<'a>(k: &'a KernelRun, key: &(String, String), check: &str) -> Option<&'a CheckResult> {
    k.results
        .iter()
        .find(|r| r.scenario == key.0 && r.backend == key.1 && r.check == check)
}

/// A group's cell for one kernel: "69/69", "68/69 1 FAIL", "65/69 4 unsup".
fn group_cell(k: &KernelRun, key: &(String, String)) -> String {
    let results: Vec<&CheckResult> = k
        .results
        .iter()
        .filter(|r| r.scenario == key.0 && r.backend == key.1)
        .collect();
    if results.is_empty() {
        return match k.state {
            KernelState::Completed => "-".into(),
            KernelState::InfraError { .. } => "not run".into(),
        };
    }
    let count = |s: Status| results.iter().filter(|r| r.status == s).count();
    let passed = count(Status::Pass) + count(Status::Flaky);
    let mut cell = format!("{passed}/{}", results.len());
    for (s, word) in [
        (Status::Fail, "FAIL"),
        (Status::Error, "ERROR"),
        (Status::Flaky, "flaky"),
        (Status::Unsupported, "unsup"),
    ] {
        if count(s) > 0 {
            let _ = write!(cell, " {} {word}", count(s));
        }
    }
    cell
}

/// Column labels: releases, without a suffix they all share ("-amd64").
fn labels(report: &RunReport) -> Vec<String> {
    let labels: Vec<String> = report.kernels.iter().map(|k| k.label()).collect();
    if labels.len() > 1 && labels.iter().all(|l| l.ends_with("-amd64")) {
        labels
            .iter()
            .map(|l| l.trim_end_matches("-amd64").to_string())
            .collect()
    } else {
        labels
    }
}

fn kernel_state(k: &KernelRun) -> String {
    match &k.state {
        KernelState::Completed if k.attempts > 1 => {
            format!("ok {:.1}s (retried)", k.timings.total_ms as f64 / 1000.0)
        }
        KernelState::Completed => format!("ok {:.1}s", k.timings.total_ms as f64 / 1000.0),
        KernelState::InfraError { stage, .. } => format!("ERROR ({stage})"),
    }
}

/// Rows of (first column, one cell per kernel).
type Row = (String, Vec<String>);

/// The rows in columns; a row without cells is a note, which sets no width.
fn aligned(out: &mut String, rows: &[Row]) {
    let first_w = rows
        .iter()
        .filter(|r| !r.1.is_empty())
        .map(|r| r.0.chars().count())
        .max()
        .unwrap_or(0);
    let cols = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let col_w: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.1.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (first, cells) in rows {
        let mut line = format!("{first:first_w$}");
        for (c, w) in cells.iter().zip(&col_w) {
            let _ = write!(line, "  {c:w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// Verdict, diagnosis, the compact matrix, failures with evidence, a last line.
pub fn compact(report: &RunReport) -> String {
    let mut out = verdict(report);
    if let Some(d) = diagnosis::diagnose(report) {
        let _ = writeln!(out, "\nwhat the {} failures share:", d.failed);
        for f in &d.findings {
            let _ = writeln!(out, "  {} ({} failed)", f.summary, f.failed);
        }
    }
    out.push('\n');
    let mut rows: Vec<Row> = vec![(String::new(), labels(report))];
    for (key, checks) in groups(report) {
        rows.push((
            format!("{} [{}]", key.0, key.1),
            report.kernels.iter().map(|k| group_cell(k, &key)).collect(),
        ));
        // Checks that did not pass on some kernel get rows of their own.
        let not_passed = |check: &String, only: fn(Status) -> bool| {
            report
                .kernels
                .iter()
                .any(|k| find(k, &key, check).is_some_and(|r| only(r.status)))
        };
        let unsupported_only: Vec<&String> = checks
            .iter()
            .filter(|c| {
                not_passed(c, |s| s == Status::Unsupported)
                    && !not_passed(c, |s| {
                        matches!(s, Status::Fail | Status::Error | Status::Flaky)
                    })
            })
            .collect();
        let collapse = unsupported_only.len() > UNSUPPORTED_ROWS;
        let expanded: Vec<&String> = checks
            .iter()
            .filter(|c| not_passed(c, |s| s != Status::Pass))
            .filter(|c| !(collapse && unsupported_only.contains(c)))
            .collect();
        // Many rows of one group: the first ones, and a count (the
        // diagnosis above says what they share).
        let cut = if expanded.len() > GROUP_ROWS {
            GROUP_ROWS - 2
        } else {
            expanded.len()
        };
        for check in &expanded[..cut] {
            rows.push((
                format!("  {check}"),
                report
                    .kernels
                    .iter()
                    .map(|k| {
                        find(k, &key, check)
                            .map(|r| r.status.label().to_string())
                            .unwrap_or_else(|| "-".into())
                    })
                    .collect(),
            ));
        }
        if cut < expanded.len() {
            rows.push((
                format!(
                    "  ... {} more that did not pass (--table full lists them)",
                    expanded.len() - cut
                ),
                vec![],
            ));
        }
        if collapse {
            let why = report
                .kernels
                .iter()
                .flat_map(|k| &k.results)
                .find(|r| {
                    r.scenario == key.0 && r.backend == key.1 && r.status == Status::Unsupported
                })
                .map(|r| first_line(&r.observed))
                .unwrap_or_default();
            rows.push((
                format!("  ({} checks unsupported: {why})", unsupported_only.len()),
                vec![],
            ));
        }
    }
    rows.push((
        "kernel".into(),
        report.kernels.iter().map(kernel_state).collect(),
    ));
    aligned(&mut out, &rows);
    problems(&mut out, report, Some(DETAILS_SHOWN));
    let (failed, errors) = (n(report, Status::Fail), n(report, Status::Error));
    if failed + errors + not_tested(report) > 0 {
        let first = verdict(report);
        let _ = writeln!(out, "\n{}", first.lines().next().unwrap_or(""));
    }
    out
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > 100 {
        format!("{}...", line.chars().take(97).collect::<String>())
    } else {
        line.to_string()
    }
}

/// Kernels natvet could not test, retried kernels, and every failed or
/// errored check with expected vs observed and its evidence (the first
/// `limit` of them).
fn problems(out: &mut String, report: &RunReport, limit: Option<usize>) {
    for k in &report.kernels {
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
    }
    let failures: Vec<(&KernelRun, &CheckResult)> = report
        .kernels
        .iter()
        .flat_map(|k| k.results.iter().map(move |r| (k, r)))
        .filter(|(_, r)| matches!(r.status, Status::Fail | Status::Error))
        .collect();
    let shown = limit.unwrap_or(usize::MAX).min(failures.len());
    for (k, r) in &failures[..shown] {
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
        if let Some(dir) = super::evidence_dir_hint(k, r) {
            let _ = writeln!(out, "  evidence: {dir}");
        }
    }
    if shown < failures.len() {
        let _ = writeln!(
            out,
            "\n... and {} more (every one: --table full, or the HTML report with --html DIR; `natvet explain CHECK` says what a check proves)",
            failures.len() - shown
        );
    }
}

/// Every check a row: the kernel x check table, then every failure with
/// its evidence, then a summary line (as natvet printed it before the
/// compact answer).
pub fn full(report: &RunReport) -> String {
    let mut out = String::new();
    let rows = super::render::rows(report);
    let labels: Vec<String> = report.kernels.iter().map(|k| k.label()).collect();
    let first_w = rows
        .iter()
        .map(|r| r.2.len() + 2)
        .chain(["kernel state".len()])
        .max()
        .unwrap_or(10);
    let states: Vec<String> = report.kernels.iter().map(kernel_state).collect();
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
        for (k, w) in report.kernels.iter().zip(&col_w) {
            let cell = find(k, &group, check)
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
    problems(&mut out, report, None);
    // Padding leaves trailing blanks on the last column.
    let mut out: String = out.lines().map(|l| format!("{}\n", l.trim_end())).collect();
    let _ = writeln!(
        out,
        "\n{} kernel(s): {} passed, {} failed, {} unsupported, {} errors, {} flaky, {} kernel(s) not tested",
        report.kernels.len(),
        n(report, Status::Pass),
        n(report, Status::Fail),
        n(report, Status::Unsupported),
        n(report, Status::Error),
        n(report, Status::Flaky),
        not_tested(report)
    );
    out
}

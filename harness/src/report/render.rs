//! Renderings of a run for machines and people: JUnit XML for CI systems, a
//! Markdown summary for a CI job page, and one self-contained HTML page
//! (the terminal's answer is `terminal`). Each is a function of the
//! [`RunReport`] alone.

use std::fmt::Write;

use super::gate::Change;
use super::{KernelRun, KernelState, RunReport};
use crate::protocol::{CheckResult, Status};

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters, even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

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

fn html_escape(s: &str) -> String {
    xml_escape(s)
}

fn anchor(k: &KernelRun, r: &CheckResult) -> String {
    super::sanitize(&format!(
        "{}-{}-{}-{}",
        k.label(),
        r.scenario,
        r.backend,
        r.check
    ))
}

/// One self-contained HTML page: the kernel x check matrix coloured by status,
/// each failure's expected vs observed and its evidence inline.
pub fn html(report: &RunReport) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>natvet report</title>\n<style>\n");
    out.push_str(
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}\
         th{background:#f4f4f4}td.pass{background:#d8f5d8}td.fail{background:#f8c8c8;font-weight:bold}\
         td.unsupported{background:#eee;color:#777}td.error{background:#fde7b0}td.flaky{background:#e3dcf7}\
         td.group{background:#fafafa;font-weight:bold}td a{color:inherit}\
         pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:30em}\
         .verdict{font-size:1.3em}.meta{color:#666}\n",
    );
    out.push_str("</style></head><body>\n");
    let verdict = match report.exit_code() {
        0 => "all checks passed",
        1 => "NAT regressions found",
        _ => "natvet could not test everything",
    };
    let _ = writeln!(
        out,
        "<h1>natvet</h1><p class=\"verdict\">{verdict}</p><p class=\"meta\">natvet {} · started {} · {:.1} s</p>",
        html_escape(&report.natvet_version),
        html_escape(&report.started_at),
        report.elapsed_ms as f64 / 1000.0
    );
    if let Some(gate) = &report.gate {
        let _ = writeln!(
            out,
            "<h2>Gate: {} → {}</h2>\n<table><tr><th>change</th><th>check</th><th>baseline</th><th>candidate</th></tr>",
            html_escape(&gate.baseline),
            html_escape(&gate.candidate)
        );
        for row in gate
            .rows
            .iter()
            .filter(|r| r.change != Change::UnchangedPass)
        {
            let class = match row.change {
                Change::Regressed => "fail",
                Change::Fixed => "pass",
                Change::Unsupported => "unsupported",
                _ => "error",
            };
            let st = |s: Option<Status>| s.map(|s| s.label()).unwrap_or("-");
            let _ = writeln!(
                out,
                "<tr><td class=\"{class}\">{}</td><td>{} [{}] {}</td><td>{}</td><td>{}</td></tr>",
                row.change.label(),
                html_escape(&row.scenario),
                html_escape(&row.backend),
                html_escape(&row.check),
                st(row.baseline),
                st(row.candidate)
            );
        }
        let same = gate
            .rows
            .iter()
            .filter(|r| r.change == Change::UnchangedPass)
            .count();
        let _ = writeln!(out, "</table><p>{same} checks pass on both kernels.</p>");
    }
    out.push_str("<table>\n<tr><th>check</th>");
    for k in &report.kernels {
        let _ = write!(out, "<th>{}</th>", html_escape(&k.label()));
    }
    out.push_str("</tr>\n");
    let mut group = (String::new(), String::new());
    for row in rows(report) {
        if (row.0.clone(), row.1.clone()) != group {
            group = (row.0.clone(), row.1.clone());
            let _ = writeln!(
                out,
                "<tr><td class=\"group\" colspan=\"{}\">{} [{}]</td></tr>",
                report.kernels.len() + 1,
                html_escape(&row.0),
                html_escape(&row.1)
            );
        }
        let _ = write!(out, "<tr><td>{}</td>", html_escape(&row.2));
        for k in &report.kernels {
            match cell(k, &row) {
                None => out.push_str("<td>–</td>"),
                Some(r) => {
                    let class = format!("{:?}", r.status).to_lowercase();
                    let title = html_escape(&format!(
                        "expected: {}\nobserved: {}",
                        r.expected, r.observed
                    ));
                    if matches!(r.status, Status::Fail | Status::Error) {
                        let _ = write!(
                            out,
                            "<td class=\"{class}\" title=\"{title}\"><a href=\"#{}\">{}</a></td>",
                            anchor(k, r),
                            r.status.label()
                        );
                    } else {
                        let _ = write!(
                            out,
                            "<td class=\"{class}\" title=\"{title}\">{}</td>",
                            r.status.label()
                        );
                    }
                }
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("<tr><td><b>kernel</b></td>");
    for k in &report.kernels {
        match &k.state {
            KernelState::Completed => {
                let _ = write!(
                    out,
                    "<td class=\"pass\">ok · {:.1} s · boot {:.1} s</td>",
                    k.timings.total_ms as f64 / 1000.0,
                    k.timings.boot_ms.unwrap_or(0) as f64 / 1000.0
                );
            }
            KernelState::InfraError { stage, .. } => {
                let _ = write!(
                    out,
                    "<td class=\"error\">not tested ({})</td>",
                    html_escape(stage.label())
                );
            }
        }
    }
    out.push_str("</tr>\n</table>\n");

    for k in &report.kernels {
        if let KernelState::InfraError {
            stage,
            reason,
            console_tail,
        } = &k.state
        {
            let _ = writeln!(
                out,
                "<h2>{}: not tested ({})</h2><p>{}</p><pre>{}</pre>",
                html_escape(&k.label()),
                html_escape(stage.label()),
                html_escape(reason),
                html_escape(&console_tail.join("\n"))
            );
        }
        for r in k
            .results
            .iter()
            .filter(|r| matches!(r.status, Status::Fail | Status::Error))
        {
            let _ = writeln!(
                out,
                "<h2 id=\"{}\">{} {}: {} [{}] {}</h2>\n<p><b>expected:</b> {}</p>\n<p><b>observed:</b></p><pre>{}</pre>",
                anchor(k, r),
                r.status.label(),
                html_escape(&k.label()),
                html_escape(&r.scenario),
                html_escape(&r.backend),
                html_escape(&r.check),
                html_escape(&r.expected),
                html_escape(&r.observed)
            );
            if let Some(ev) = &r.evidence {
                if !ev.captures.is_empty() {
                    let dir = super::evidence_dir_hint(k, r);
                    out.push_str("<p><b>packet captures</b> (pcap): ");
                    for c in &ev.captures {
                        let file = format!(
                            "{}-{}.pcap",
                            super::sanitize(&c.namespace),
                            super::sanitize(&c.interface)
                        );
                        let _ = match &dir {
                            Some(d) => write!(
                                out,
                                "<a href=\"file://{}/{file}\">{file}</a> ({}) ",
                                html_escape(d),
                                packets_text(c)
                            ),
                            None => write!(out, "{file} ({}) ", packets_text(c)),
                        };
                    }
                    out.push_str("</p>\n");
                    if !ev.capture_note.is_empty() {
                        let _ = writeln!(out, "<p><i>{}</i></p>", html_escape(&ev.capture_note));
                    }
                }
                for (name, text) in [
                    ("conntrack table (relay)", ev.conntrack.clone()),
                    ("ruleset (relay)", ev.ruleset.clone()),
                    ("interface counters", ev.counters.clone()),
                    ("routes", ev.routes.clone()),
                    ("WireGuard", ev.wireguard.clone()),
                    ("kernel log during the check", ev.dmesg.join("\n")),
                ] {
                    let _ = writeln!(
                        out,
                        "<details><summary>{name}</summary><pre>{}</pre></details>",
                        html_escape(&text)
                    );
                }
            }
        }
    }
    out.push_str("</body></html>\n");
    out
}

/// "12 packets", and how many the capture's size limit left out.
fn packets_text(c: &crate::protocol::CaptureFile) -> String {
    if c.not_kept == 0 {
        format!("{} packets", c.packets)
    } else {
        format!("{} packets, {} more not kept", c.packets, c.not_kept)
    }
}

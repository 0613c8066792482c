//! The HTML report: one self-contained page (no script, no external file)
//! that reads in the order a person asks: the verdict, what the failures
//! share, each failure with its evidence inline (packets, conntrack,
//! ruleset, counters; the pcap to download), kernels natvet could not
//! test, then the matrix (one collapsible section per scenario, those with
//! failures first and open), traffic over time, timings, and the gate's
//! comparison. Plots are inline SVG from `svg`.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::gate::Change;
use super::svg::{self, Set};
use super::{diagnosis, terminal, KernelRun, KernelState, RunReport};
use crate::protocol::{CheckResult, Status};

/// Failures whose section starts open, and whose evidence starts open.
const OPEN_FAILURES: usize = 10;
const OPEN_EVIDENCE: usize = 3;
/// Packets listed per capture.
const PACKETS_LISTED: usize = 40;
/// Captures are embedded (downloadable from the page itself) up to this much base64 in all.
const EMBED_BUDGET: usize = 4 << 20;

const CSS: &str = "\
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}\
main{max-width:1200px;margin:0 auto;padding:1em 2em 3em}\
h1{margin:.2em 0}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}\
.verdict{padding:1em 2em;color:#fff}.verdict h1{font-size:1.6em}.verdict p{margin:.3em 0 0;opacity:.9}\
.verdict.pass{background:#2e7d32}.verdict.fail{background:#c62828}.verdict.infra{background:#ef6c00}\
.meta{color:#666;font-size:.9em}\
.diagnosis{background:#fff3e0;border-left:4px solid #ef6c00;padding:.6em 1.2em}\
.diagnosis li{margin:.3em 0}.count{color:#666}\
details{margin:.4em 0}summary{cursor:pointer}\
details.failure{background:#fff;border:1px solid #e0b4b4;border-left:6px solid #c62828;border-radius:4px;padding:.5em 1em}\
details.failure.error{border-color:#f3d19c;border-left-color:#ef6c00}\
details.failure>summary{font-weight:600}\
dl.result{display:grid;grid-template-columns:7em 1fr;gap:.3em 1em;margin:.6em 0}dl.result dt{color:#666}dl.result dd{margin:0}\
.evidence details{background:#f7f7f7;border-radius:3px;padding:.2em .6em}\
pre{background:#f4f4f4;padding:8px;overflow:auto;max-height:28em;margin:.3em 0;font-size:12px}\
.evidence pre{background:#fff}\
details.scenario{background:#fff;border:1px solid #ddd;border-radius:4px;padding:.4em 1em}\
details.scenario>summary{font-weight:600}details.scenario.fail{border-left:6px solid #c62828}\
details.scenario.error{border-left:6px solid #ef6c00}details.scenario.pass{border-left:6px solid #2e7d32}\
details.scenario.unsupported{border-left:6px solid #9e9e9e}\
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ddd;padding:3px 10px;text-align:left;font-size:13px}\
th{background:#f4f4f4}td.pass{background:#e3f4e3}td.fail{background:#f8c8c8;font-weight:bold}\
td.unsupported{background:#eee;color:#777}td.error{background:#fde7b0}td.flaky{background:#e3dcf7}\
td.group{background:#fafafa;font-weight:bold}td a{color:inherit}\
tr.passed td{background:#f6fbf6;color:#2e7d32}p.names{color:#444;font-size:12px;max-width:60em}\
.badge{display:inline-block;padding:0 .5em;border-radius:3px;font-size:.85em;margin-left:.4em;color:#fff}\
.badge.pass{background:#2e7d32}.badge.fail{background:#c62828}.badge.error{background:#ef6c00}\
.badge.unsupported{background:#9e9e9e}.badge.flaky{background:#6a1b9a}\
svg.plot{max-width:100%;height:auto;background:#fff;border:1px solid #eee;margin:.4em 0}\n";

fn esc(s: &str) -> String {
    svg::escape(s).replace('\'', "&#39;")
}

fn class(s: Status) -> &'static str {
    match s {
        Status::Pass => "pass",
        Status::Fail => "fail",
        Status::Unsupported => "unsupported",
        Status::Error => "error",
        Status::Flaky => "flaky",
    }
}

/// How bad a status is, for ordering (worst first).
fn rank(s: Status) -> u8 {
    match s {
        Status::Fail => 0,
        Status::Error => 1,
        Status::Flaky => 2,
        Status::Unsupported => 3,
        Status::Pass => 4,
    }
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

/// `to` as seen from the folder `from` (both made absolute first).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (Ok(from), Ok(to)) = (std::path::absolute(from), std::path::absolute(to)) else {
        return to.to_path_buf();
    };
    let f: Vec<_> = from.components().collect();
    let t: Vec<_> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

/// A link to a file or folder of the evidence, relative to the page when
/// the page's folder is known.
fn href(base: Option<&Path>, target: &Path) -> String {
    let p = match base {
        Some(b) => relative(b, target),
        None => std::path::absolute(target).unwrap_or_else(|_| target.to_path_buf()),
    };
    let s = p.display().to_string();
    let s: String = s
        .chars()
        .map(|c| match c {
            ' ' => "%20".to_string(),
            '#' => "%23".to_string(),
            '?' => "%3F".to_string(),
            '+' => "%2B".to_string(),
            c => c.to_string(),
        })
        .collect();
    if p.is_absolute() {
        format!("file://{s}")
    } else {
        s
    }
}

/// The page. `base` is the folder it is written to: links to evidence
/// files are made relative to it, so the folder can be moved with them.
pub fn html(report: &RunReport, base: Option<&Path>) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>natvet report</title>\n<style>\n");
    out.push_str(CSS);
    out.push_str("</style></head><body>\n");
    header(&mut out, report);
    out.push_str("<main>\n");
    let _ = writeln!(
        out,
        "<p class=\"meta\">natvet {} · started {} · {:.1} s · {} kernel(s): {}</p>",
        esc(&report.natvet_version),
        esc(&report.started_at),
        report.elapsed_ms as f64 / 1000.0,
        report.kernels.len(),
        esc(&report
            .kernels
            .iter()
            .map(|k| k.label())
            .collect::<Vec<_>>()
            .join(", "))
    );
    diagnosis_section(&mut out, report);
    failures(&mut out, report, base);
    not_tested(&mut out, report);
    if let Some(gate) = &report.gate {
        gate_section(&mut out, report, gate);
    }
    matrix(&mut out, report);
    if report.gate.is_none() {
        out.push_str(&super::perf::figures_html(&report.kernels));
    }
    series_section(&mut out, report);
    timings(&mut out, report);
    out.push_str("</main></body></html>\n");
    out
}

fn header(out: &mut String, report: &RunReport) {
    let v = terminal::verdict(report);
    let mut lines = v.lines();
    let head = lines.next().unwrap_or("").trim_start_matches("natvet: ");
    let counts = lines.next().unwrap_or("").trim();
    let class = match report.exit_code() {
        0 => "pass",
        1 => "fail",
        _ => "infra",
    };
    let _ = writeln!(
        out,
        "<header class=\"verdict {class}\" id=\"verdict\"><h1>natvet: {}</h1><p>{}</p></header>",
        esc(head),
        esc(counts)
    );
}

fn diagnosis_section(out: &mut String, report: &RunReport) {
    let Some(d) = report
        .diagnosis
        .clone()
        .or_else(|| diagnosis::diagnose(report))
    else {
        return;
    };
    let _ = writeln!(
        out,
        "<section class=\"diagnosis\" id=\"diagnosis\"><h2>What the {} failures share</h2><ul>",
        d.failed
    );
    for f in &d.findings {
        let _ = writeln!(
            out,
            "<li>{} <span class=\"count\">({} failed)</span></li>",
            esc(&f.summary),
            f.failed
        );
    }
    out.push_str("</ul></section>\n");
}

fn failures(out: &mut String, report: &RunReport, base: Option<&Path>) {
    let mut list: Vec<(&KernelRun, &CheckResult)> = report
        .kernels
        .iter()
        .flat_map(|k| k.results.iter().map(move |r| (k, r)))
        .filter(|(_, r)| matches!(r.status, Status::Fail | Status::Error))
        .collect();
    if list.is_empty() {
        return;
    }
    list.sort_by_key(|(_, r)| rank(r.status));
    let _ = writeln!(
        out,
        "<section id=\"failures\"><h2>Failures ({})</h2>",
        list.len()
    );
    let mut budget = EMBED_BUDGET;
    for (i, (k, r)) in list.iter().enumerate() {
        let open = if i < OPEN_FAILURES { " open" } else { "" };
        let _ = writeln!(
            out,
            "<details class=\"failure {}\" id=\"{}\"{open}><summary><span class=\"badge {}\">{}</span> {} · {} [{}] {}</summary>",
            class(r.status),
            anchor(k, r),
            class(r.status),
            r.status.label(),
            esc(&k.label()),
            esc(&r.scenario),
            esc(&r.backend),
            esc(&r.check)
        );
        let _ = writeln!(
            out,
            "<dl class=\"result\"><dt>expected</dt><dd>{}</dd><dt>observed</dt><dd><pre>{}</pre></dd><dt>took</dt><dd>{:.2} s</dd>",
            esc(&r.expected),
            esc(&r.observed),
            r.duration_ms as f64 / 1000.0
        );
        let dir = super::evidence_dir_hint(k, r);
        if let Some(d) = &dir {
            let _ = write!(
                out,
                "<dt>evidence</dt><dd><a href=\"{}\">{}</a></dd>",
                esc(&href(base, Path::new(d))),
                esc(d)
            );
        }
        out.push_str("</dl>\n");
        if let Some(s) = &r.series {
            out.push_str(&svg::series(&format!("{} over time", r.check), s));
        }
        evidence(out, r, dir.as_deref(), base, i < OPEN_EVIDENCE, &mut budget);
        out.push_str("</details>\n");
    }
    out.push_str("</section>\n");
}

/// A failure's evidence: packets per captured interface (listed, and the
/// pcap to download), then the relay's conntrack table, ruleset and the
/// counters, then routes, WireGuard and the kernel log.
fn evidence(
    out: &mut String,
    r: &CheckResult,
    dir: Option<&str>,
    base: Option<&Path>,
    open: bool,
    budget: &mut usize,
) {
    let Some(ev) = &r.evidence else {
        return;
    };
    let open_attr = if open { " open" } else { "" };
    out.push_str("<div class=\"evidence\">\n");
    if !ev.captures.is_empty() {
        out.push_str("<h4>Packets</h4>\n");
        if !ev.capture_note.is_empty() {
            let _ = writeln!(out, "<p><i>{}</i></p>", esc(&ev.capture_note));
        }
    }
    for c in &ev.captures {
        let file = format!(
            "{}-{}.pcap",
            super::sanitize(&c.namespace),
            super::sanitize(&c.interface)
        );
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&c.pcap_base64)
            .unwrap_or_default();
        let (lines, count) = super::packets::summarize(&bytes, PACKETS_LISTED);
        let mut links = Vec::new();
        if let Some(d) = dir {
            links.push(format!(
                "<a href=\"{}\">{file}</a>",
                esc(&href(base, &Path::new(d).join(&file)))
            ));
        }
        if c.pcap_base64.len() <= *budget && !c.pcap_base64.is_empty() {
            *budget -= c.pcap_base64.len();
            links.push(format!(
                "<a download=\"{file}\" href=\"data:application/vnd.tcpdump.pcap;base64,{}\">download</a>",
                c.pcap_base64
            ));
        }
        let more = if c.not_kept > 0 {
            format!(", {} more in the middle not kept", c.not_kept)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "<details class=\"capture\"{}><summary>{} {} · {} packets{more} · {}</summary><pre>{}{}</pre></details>",
            if open && c.packets > 0 { " open" } else { "" },
            esc(&c.namespace),
            esc(&c.interface),
            c.packets,
            links.join(" · "),
            esc(&lines.join("\n")),
            if count > lines.len() {
                format!("\n... {} more packets in the file", count - lines.len())
            } else {
                String::new()
            }
        );
    }
    for (name, text, first) in [
        ("conntrack table (relay)", ev.conntrack.as_str(), true),
        ("ruleset (relay)", ev.ruleset.as_str(), true),
        ("interface counters", ev.counters.as_str(), true),
        ("routes", ev.routes.as_str(), false),
        ("WireGuard", ev.wireguard.as_str(), false),
    ] {
        let _ = writeln!(
            out,
            "<details class=\"ev\"{}><summary>{name}</summary><pre>{}</pre></details>",
            if open && first { open_attr } else { "" },
            esc(text)
        );
    }
    let _ = writeln!(
        out,
        "<details class=\"ev\"><summary>kernel log during the check ({} lines)</summary><pre>{}</pre></details>",
        ev.dmesg.len(),
        esc(&ev.dmesg.join("\n"))
    );
    out.push_str("</div>\n");
}

fn not_tested(out: &mut String, report: &RunReport) {
    let broken: Vec<&KernelRun> = report
        .kernels
        .iter()
        .filter(|k| k.state != KernelState::Completed)
        .collect();
    if broken.is_empty() {
        return;
    }
    out.push_str("<section id=\"not-tested\"><h2>Kernels natvet could not test</h2>\n");
    for k in broken {
        if let KernelState::InfraError {
            stage,
            reason,
            console_tail,
        } = &k.state
        {
            let _ = writeln!(
                out,
                "<details class=\"failure error\" open><summary><span class=\"badge error\">{}</span> {}</summary><p>{}</p><pre>{}</pre>{}</details>",
                esc(stage.label()),
                esc(&k.label()),
                esc(reason),
                esc(&console_tail.join("\n")),
                k.console_log
                    .as_ref()
                    .map(|l| format!("<p>console log: {}</p>", esc(l)))
                    .unwrap_or_default()
            );
        }
    }
    out.push_str("</section>\n");
}

/// The results of one kernel for one row (several after a soak).
fn cell_results<'a>(k: &'a KernelRun, s: &str, b: &str, c: &str) -> Vec<&'a CheckResult> {
    k.results
        .iter()
        .filter(|r| r.scenario == s && r.backend == b && r.check == c)
        .collect()
}

/// A cell: its class (the worst status) and text ("pass", "FAIL", "19 pass, 1 FAIL").
fn cell(results: &[&CheckResult]) -> (String, String) {
    let Some(worst) = results.iter().map(|r| r.status).min_by_key(|s| rank(*s)) else {
        return ("".into(), "–".into());
    };
    if results.len() == 1 {
        return (class(worst).into(), worst.label().into());
    }
    let mut parts = Vec::new();
    for s in [
        Status::Fail,
        Status::Error,
        Status::Flaky,
        Status::Unsupported,
        Status::Pass,
    ] {
        let n = results.iter().filter(|r| r.status == s).count();
        if n > 0 {
            parts.push(format!("{n} {}", s.label()));
        }
    }
    (class(worst).into(), parts.join(", "))
}

fn matrix(out: &mut String, report: &RunReport) {
    let rows = super::render::rows(report);
    if rows.is_empty() {
        return;
    }
    // Scenarios in first-seen order, then the worst first.
    let mut scenarios: Vec<String> = Vec::new();
    for (s, _, _) in &rows {
        if !scenarios.contains(s) {
            scenarios.push(s.clone());
        }
    }
    let worst = |s: &str| {
        report
            .kernels
            .iter()
            .flat_map(|k| &k.results)
            .filter(|r| r.scenario == s)
            .map(|r| r.status)
            .min_by_key(|st| rank(*st))
            .unwrap_or(Status::Pass)
    };
    scenarios.sort_by_key(|s| rank(worst(s)));
    out.push_str("<section id=\"matrix\"><h2>Results</h2>\n");
    for scenario in &scenarios {
        let w = worst(scenario);
        let results: Vec<&CheckResult> = report
            .kernels
            .iter()
            .flat_map(|k| &k.results)
            .filter(|r| &r.scenario == scenario)
            .collect();
        let passed = results
            .iter()
            .filter(|r| matches!(r.status, Status::Pass | Status::Flaky))
            .count();
        let unsupported = results
            .iter()
            .filter(|r| r.status == Status::Unsupported)
            .count();
        let unsupported = if unsupported > 0 {
            format!(", {unsupported} unsupported")
        } else {
            String::new()
        };
        let open = if matches!(w, Status::Fail | Status::Error | Status::Flaky) {
            " open"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<details class=\"scenario {}\" data-scenario=\"{}\"{open}><summary>{} <span class=\"badge {}\">{passed}/{} pass{unsupported}</span></summary>",
            class(w),
            esc(scenario),
            esc(scenario),
            class(w),
            results.len()
        );
        out.push_str("<table><tr><th>check</th>");
        for k in &report.kernels {
            let _ = write!(out, "<th>{}</th>", esc(&k.label()));
        }
        out.push_str("</tr>\n");
        let mut backends: Vec<&String> = Vec::new();
        for (_, b, _) in rows.iter().filter(|(s, _, _)| s == scenario) {
            if !backends.contains(&b) {
                backends.push(b);
            }
        }
        for b in backends {
            let checks: Vec<&String> = rows
                .iter()
                .filter(|(s, rb, _)| s == scenario && rb == b)
                .map(|(_, _, c)| c)
                .collect();
            let _ = write!(out, "<tr><td class=\"group\">[{}]</td>", esc(b));
            for k in &report.kernels {
                let rs: Vec<&CheckResult> = k
                    .results
                    .iter()
                    .filter(|r| &r.scenario == scenario && &r.backend == b)
                    .collect();
                let ok = rs
                    .iter()
                    .filter(|r| matches!(r.status, Status::Pass | Status::Flaky))
                    .count();
                let _ = write!(out, "<td class=\"group\">{ok}/{}</td>", rs.len());
            }
            out.push_str("</tr>\n");
            // Checks that did not pass somewhere get a row; the others
            // are named in one folded row.
            let all_pass = |c: &str| {
                report.kernels.iter().all(|k| {
                    cell_results(k, scenario, b, c)
                        .iter()
                        .all(|r| r.status == Status::Pass)
                })
            };
            let (passing, other): (Vec<&String>, Vec<&String>) =
                checks.iter().partition(|c| all_pass(c));
            for c in other {
                check_row(out, report, scenario, b, c);
            }
            if !passing.is_empty() {
                let _ = writeln!(
                    out,
                    "<tr class=\"passed\"><td colspan=\"{}\"><details><summary>{} check(s) pass on every kernel</summary><p class=\"names\">{}</p></details></td></tr>",
                    report.kernels.len() + 1,
                    passing.len(),
                    esc(&passing
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(" · "))
                );
            }
        }
        out.push_str("</table></details>\n");
    }
    out.push_str("</section>\n");
}

/// One check's row: a cell per kernel, linked to the failure's section.
fn check_row(out: &mut String, report: &RunReport, s: &str, b: &str, c: &str) {
    let _ = write!(out, "<tr><td>{}</td>", esc(c));
    for k in &report.kernels {
        let rs = cell_results(k, s, b, c);
        let (cls, text) = cell(&rs);
        let bad = rs
            .iter()
            .find(|r| matches!(r.status, Status::Fail | Status::Error));
        let title = rs
            .iter()
            .find(|r| r.status != Status::Pass)
            .map(|r| format!("expected: {}\nobserved: {}", r.expected, r.observed))
            .unwrap_or_default();
        let body = match bad {
            Some(r) => format!("<a href=\"#{}\">{}</a>", anchor(k, r), esc(&text)),
            None => esc(&text),
        };
        let _ = write!(
            out,
            "<td class=\"{cls}\" title=\"{}\">{body}</td>",
            esc(&title)
        );
    }
    out.push_str("</tr>\n");
}

fn series_section(out: &mut String, report: &RunReport) {
    let mut with: Vec<(&KernelRun, &CheckResult)> = report
        .kernels
        .iter()
        .flat_map(|k| k.results.iter().map(move |r| (k, r)))
        .filter(|(_, r)| r.series.is_some())
        .collect();
    if with.is_empty() {
        return;
    }
    with.sort_by_key(|(_, r)| rank(r.status));
    out.push_str("<section id=\"series\"><h2>Traffic over time</h2>\n");
    for (k, r) in with {
        if let Some(s) = &r.series {
            out.push_str(&svg::series(
                &format!(
                    "{} · {} [{}] {} ({})",
                    k.label(),
                    r.scenario,
                    r.backend,
                    r.check,
                    r.status.label()
                ),
                s,
            ));
            out.push('\n');
        }
    }
    out.push_str("</section>\n");
}

/// Colours for one set per kernel.
const PALETTE: [&str; 8] = [
    "#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#00838f", "#c62828", "#5d4037", "#9e9d24",
];

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Where each kernel's time went, and each scenario run's time per kernel.
pub fn timing_plots(kernels: &[&KernelRun]) -> (String, String) {
    let names: Vec<String> = kernels.iter().map(|k| k.label()).collect();
    let part = |f: &dyn Fn(&KernelRun) -> u64| -> Vec<f64> {
        kernels.iter().map(|k| secs(f(k))).collect()
    };
    let rest = |k: &KernelRun| {
        let t = &k.timings;
        t.total_ms.saturating_sub(
            t.resolve_ms + t.initramfs_ms + t.boot_ms.unwrap_or(0) + t.agent_ms.unwrap_or(0),
        )
    };
    let per_kernel = svg::bars(
        "Time per kernel",
        &names,
        &[
            Set {
                name: "resolve",
                colour: "#90a4ae",
                values: part(&|k| k.timings.resolve_ms),
            },
            Set {
                name: "initramfs",
                colour: "#ffb74d",
                values: part(&|k| k.timings.initramfs_ms),
            },
            Set {
                name: "boot",
                colour: "#64b5f6",
                values: part(&|k| k.timings.boot_ms.unwrap_or(0)),
            },
            Set {
                name: "checks",
                colour: "#66bb6a",
                values: part(&|k| k.timings.agent_ms.unwrap_or(0)),
            },
            Set {
                name: "other",
                colour: "#cfd8dc",
                values: part(&rest),
            },
        ],
        " s",
        true,
    );
    let mut runs: Vec<(String, String)> = Vec::new();
    for k in kernels {
        for t in &k.timings.scenario_runs {
            let key = (t.scenario.clone(), t.backend.clone());
            if !runs.contains(&key) {
                runs.push(key);
            }
        }
    }
    let per_run = if runs.is_empty() {
        String::new()
    } else {
        let sets: Vec<Set> = kernels
            .iter()
            .enumerate()
            .map(|(i, k)| Set {
                name: names[i].as_str(),
                colour: PALETTE[i % PALETTE.len()],
                values: runs
                    .iter()
                    .map(|(s, b)| {
                        k.timings
                            .scenario_runs
                            .iter()
                            .find(|t| &t.scenario == s && &t.backend == b)
                            .map(|t| secs(t.elapsed_ms))
                            .unwrap_or(0.0)
                    })
                    .collect(),
            })
            .collect();
        let labels: Vec<String> = runs.iter().map(|(s, b)| format!("{s} [{b}]")).collect();
        svg::bars(
            "Time per scenario run (setup to teardown; runs overlap)",
            &labels,
            &sets,
            " s",
            false,
        )
    };
    (per_kernel, per_run)
}

fn timings(out: &mut String, report: &RunReport) {
    let kernels: Vec<&KernelRun> = report
        .kernels
        .iter()
        .filter(|k| k.timings.total_ms > 0)
        .collect();
    if kernels.is_empty() {
        return;
    }
    let (per_kernel, per_run) = timing_plots(&kernels);
    out.push_str("<section id=\"timings\"><h2>Timings</h2>\n");
    out.push_str(&per_kernel);
    out.push('\n');
    if !per_run.is_empty() {
        let _ = writeln!(
            out,
            "<details{}><summary>per scenario run</summary>{per_run}</details>",
            if kernels.len() <= 2 { " open" } else { "" }
        );
    }
    out.push_str("</section>\n");
}

fn gate_section(out: &mut String, report: &RunReport, gate: &super::gate::Gate) {
    let _ = writeln!(
        out,
        "<section id=\"gate\"><h2>Gate: {} → {}</h2>",
        esc(&gate.baseline),
        esc(&gate.candidate)
    );
    let changes = [
        Change::Regressed,
        Change::Fixed,
        Change::UnchangedFail,
        Change::Unsupported,
        Change::Error,
        Change::UnchangedPass,
    ];
    let counts: Vec<f64> = changes
        .iter()
        .map(|c| gate.rows.iter().filter(|r| r.change == *c).count() as f64)
        .collect();
    out.push_str(&svg::bars(
        "Checks by change",
        &changes
            .iter()
            .map(|c| c.label().to_string())
            .collect::<Vec<_>>(),
        &[Set {
            name: "checks",
            colour: "#1565c0",
            values: counts,
        }],
        "",
        false,
    ));
    out.push_str(
        "\n<table><tr><th>change</th><th>check</th><th>baseline</th><th>candidate</th></tr>\n",
    );
    for row in gate
        .rows
        .iter()
        .filter(|r| r.change != Change::UnchangedPass)
    {
        let cls = match row.change {
            Change::Regressed => "fail",
            Change::Fixed => "pass",
            Change::Unsupported => "unsupported",
            _ => "error",
        };
        let st = |s: Option<Status>| s.map(|s| s.label()).unwrap_or("-");
        let _ = writeln!(
            out,
            "<tr><td class=\"{cls}\">{}</td><td>{} [{}] {}</td><td>{}</td><td>{}</td></tr>",
            row.change.label(),
            esc(&row.scenario),
            esc(&row.backend),
            esc(&row.check),
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
    if let Some(perf) = &gate.perf {
        out.push_str(&perf.html(&gate.baseline, &gate.candidate));
    }
    // The two kernels' times side by side.
    let pair: Vec<&KernelRun> = report.kernels.iter().take(2).collect();
    if pair.len() == 2 {
        let (per_kernel, per_run) = timing_plots(&pair);
        out.push_str(&per_kernel);
        out.push_str(&per_run);
    }
    out.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_links() {
        assert_eq!(
            relative(Path::new("/a/out/html"), Path::new("/a/out/k/s/c")),
            PathBuf::from("../k/s/c")
        );
        assert_eq!(
            relative(Path::new("/a/b"), Path::new("/a/b/c.pcap")),
            PathBuf::from("c.pcap")
        );
    }
}

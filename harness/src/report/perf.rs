//! Performance in reports: a run's figures (`vet`: figures, not verdicts)
//! and the gate's comparison of interleaved boots, each figure's
//! candidate/baseline ratio with its 95% confidence interval judged
//! against a threshold (`perf::stats`). Rendered for the terminal, the HTML
//! page (with a plot of both distributions) and JUnit.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::kernel_run::{KernelRun, KernelState};
use super::svg::{self, Strip};
pub use crate::perf::stats::PerfChange;
use crate::perf::stats::{self, Ratio};
use crate::protocol::perf::{number, Better, PerfFigure};

/// One figure compared over the gate's performance boots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerfRow {
    pub scenario: String,
    pub backend: String,
    pub probe: String,
    pub unit: String,
    pub better: Better,
    /// Each boot's figure, in boot order (none where that boot measured none).
    pub baseline: Vec<Option<f64>>,
    pub candidate: Vec<Option<f64>>,
    /// Every boot's samples together, per side (for the plot).
    #[serde(default)]
    pub baseline_samples: Vec<f64>,
    #[serde(default)]
    pub candidate_samples: Vec<f64>,
    /// candidate/baseline of the geometric means, with its interval.
    pub ratio: Option<Ratio>,
    pub change: PerfChange,
    /// Why the figure could not be compared, or how the candidate failed to
    /// give one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// The gate's performance comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerfGate {
    /// How much worse a figure must be, with confidence, to be a regression.
    pub threshold: f64,
    /// Boots of each kernel, alternated: baseline, candidate, baseline, ...
    pub runs: usize,
    pub rows: Vec<PerfRow>,
    /// Boots that could not be measured, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Each side's boots that completed.
    pub baseline_boots: usize,
    pub candidate_boots: usize,
    /// Wall time of the performance boots, ms.
    pub elapsed_ms: u64,
}

type Key = (String, String, String);

fn key(f: &PerfFigure) -> Key {
    (f.scenario.clone(), f.backend.clone(), f.probe.clone())
}

/// Compare the figures of the baseline's and the candidate's boots.
pub fn compare(baseline: &[KernelRun], candidate: &[KernelRun], threshold: f64) -> PerfGate {
    let mut keys: Vec<(Key, String, Better)> = Vec::new();
    for f in baseline.iter().chain(candidate).flat_map(|k| &k.perf) {
        if !keys.iter().any(|(k, _, _)| *k == key(f)) {
            keys.push((key(f), f.unit.clone(), f.better));
        }
    }
    let done = |runs: &[KernelRun]| {
        runs.iter()
            .filter(|k| k.state == KernelState::Completed)
            .count()
    };
    let (nb, nc) = (done(baseline), done(candidate));
    let mut notes = Vec::new();
    for k in baseline.iter().chain(candidate) {
        if let KernelState::InfraError { stage, reason, .. } = &k.state {
            notes.push(format!("{}: not measured ({stage}): {reason}", k.label()));
        }
    }
    let rows = keys
        .into_iter()
        .map(|(k, unit, better)| row(k, unit, better, baseline, candidate, threshold))
        .collect();
    PerfGate {
        threshold,
        runs: baseline.len().max(candidate.len()),
        rows,
        notes,
        baseline_boots: nb,
        candidate_boots: nc,
        elapsed_ms: 0,
    }
}

fn row(
    k: Key,
    unit: String,
    better: Better,
    baseline: &[KernelRun],
    candidate: &[KernelRun],
    threshold: f64,
) -> PerfRow {
    let (fb, fc) = (figures(baseline, &k), figures(candidate, &k));
    let values = |f: &[Option<&PerfFigure>]| -> Vec<Option<f64>> {
        f.iter().map(|f| f.and_then(|f| f.value)).collect()
    };
    let samples = |f: &[Option<&PerfFigure>]| -> Vec<f64> {
        f.iter()
            .flatten()
            .flat_map(|f| f.samples.iter().copied())
            .collect()
    };
    let (vb, vc) = (values(&fb), values(&fc));
    let measured = |v: &[Option<f64>]| -> Vec<f64> { v.iter().flatten().copied().collect() };
    let (mb, mc) = (measured(&vb), measured(&vc));
    let why_not = |f: &[Option<&PerfFigure>]| {
        f.iter()
            .flatten()
            .find(|f| f.value.is_none())
            .map(|f| f.note.clone())
            .unwrap_or_else(|| "no boot reported it".to_string())
    };
    let (ratio, change, note) = if mb.len() >= 2 && mc.len() * 2 < fc.len().max(1) && fc.len() >= 2
    {
        // The candidate's boots ran but mostly gave no figure where the
        // baseline's did: the path did not carry the probe's traffic.
        (
            None,
            PerfChange::Regressed,
            format!(
                "the candidate gave a figure on {} of {} boots, the baseline on {} of {}: {}",
                mc.len(),
                fc.len(),
                mb.len(),
                fb.len(),
                why_not(&fc)
            ),
        )
    } else {
        match stats::ratio(&mb, &mc) {
            Some(r) => {
                let slow = stats::slowdown(r, better == Better::Higher);
                (Some(r), stats::judge(slow, threshold), String::new())
            }
            None => {
                let side = if mb.len() < 2 { &fb } else { &fc };
                (
                    None,
                    PerfChange::NotMeasured,
                    format!(
                        "fewer than two figures on a side (baseline {}, candidate {}): {}",
                        mb.len(),
                        mc.len(),
                        why_not(side)
                    ),
                )
            }
        }
    };
    PerfRow {
        scenario: k.0,
        backend: k.1,
        probe: k.2,
        unit,
        better,
        baseline_samples: samples(&fb),
        candidate_samples: samples(&fc),
        baseline: vb,
        candidate: vc,
        ratio,
        change,
        note,
    }
}

/// Each completed boot's figure `k` (none where that boot did not report it).
fn figures<'a>(runs: &'a [KernelRun], k: &Key) -> Vec<Option<&'a PerfFigure>> {
    runs.iter()
        .filter(|r| r.state == KernelState::Completed)
        .map(|r| r.perf.iter().find(|f| key(f) == *k))
        .collect()
}

fn mean_of(v: &[Option<f64>]) -> Option<f64> {
    let m: Vec<f64> = v.iter().flatten().copied().collect();
    (!m.is_empty()).then(|| m.iter().sum::<f64>() / m.len() as f64)
}

impl PerfRow {
    pub fn name(&self) -> String {
        format!("{} [{}] perf/{}", self.scenario, self.backend, self.probe)
    }

    /// "12.6 -> 4.10 Mbit/s, x0.33 (95% CI 0.29-0.37)".
    pub fn summary(&self) -> String {
        let side = |v: &[Option<f64>]| mean_of(v).map(number).unwrap_or_else(|| "-".into());
        let mut s = format!(
            "{} -> {} {}",
            side(&self.baseline),
            side(&self.candidate),
            self.unit
        );
        if let Some(r) = self.ratio {
            let _ = write!(
                s,
                ", candidate/baseline x{} (95% CI {}-{})",
                number(r.ratio),
                number(r.low),
                number(r.high)
            );
        }
        if !self.note.is_empty() {
            let _ = write!(s, "; {}", self.note);
        }
        s
    }
}

impl PerfGate {
    pub fn regressed(&self) -> usize {
        self.count(PerfChange::Regressed)
    }

    fn count(&self, c: PerfChange) -> usize {
        self.rows.iter().filter(|r| r.change == c).count()
    }

    /// Whether a side had too few boots to compare anything: natvet's trouble.
    pub fn incomplete(&self) -> bool {
        self.baseline_boots < 2 || self.candidate_boots < 2
    }

    /// The terminal's lines.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nperformance: {} boots of each kernel, alternated ({} s); a figure worse than {}x with 95% confidence is a regression",
            self.runs,
            self.elapsed_ms / 1000,
            number(self.threshold)
        );
        let w = self.rows.iter().map(|r| r.name().len()).max().unwrap_or(10);
        let mut rows: Vec<&PerfRow> = self.rows.iter().collect();
        rows.sort_by_key(|r| r.change);
        for r in rows {
            let _ = writeln!(
                out,
                "  {:<13} {:<w$}  {}",
                r.change.label(),
                r.name(),
                r.summary()
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        let inconclusive = self.count(PerfChange::Inconclusive);
        let _ = writeln!(
            out,
            "{} slower, {} faster, {} unchanged, {inconclusive} inconclusive (too noisy to tell: more --perf-runs narrow it), {} not measured",
            self.regressed(),
            self.count(PerfChange::Faster),
            self.count(PerfChange::Unchanged),
            self.count(PerfChange::NotMeasured)
        );
        out
    }

    /// The HTML section: a table and, per figure, both distributions.
    pub fn html(&self, baseline: &str, candidate: &str) -> String {
        let esc = svg::escape;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "<h3 id=\"perf\">Performance</h3><p>{} boots of each kernel, alternated; a figure worse than {}x with 95% confidence is a regression. Large dots: each boot's figure; small: the samples behind them.</p>",
            self.runs,
            number(self.threshold)
        );
        out.push_str("<table><tr><th>change</th><th>figure</th><th>baseline</th><th>candidate</th><th>candidate/baseline (95% CI)</th></tr>\n");
        for r in &self.rows {
            let cls = match r.change {
                PerfChange::Regressed => "fail",
                PerfChange::Faster | PerfChange::Unchanged => "pass",
                _ => "unsupported",
            };
            let side = |v: &[Option<f64>]| {
                v.iter()
                    .map(|x| x.map(number).unwrap_or_else(|| "-".into()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let ratio = r
                .ratio
                .map(|x| format!("{} ({}–{})", number(x.ratio), number(x.low), number(x.high)))
                .unwrap_or_else(|| esc(&r.note));
            let _ = writeln!(
                out,
                "<tr><td class=\"{cls}\">{}</td><td>{}</td><td>{} {}</td><td>{} {}</td><td>{ratio}</td></tr>",
                r.change.label(),
                esc(&r.name()),
                side(&r.baseline),
                esc(&r.unit),
                side(&r.candidate),
                esc(&r.unit)
            );
        }
        out.push_str("</table>\n");
        for r in &self.rows {
            let strips = [
                Strip {
                    name: &format!("baseline {baseline}"),
                    colour: "#1565c0",
                    figures: r.baseline.iter().flatten().copied().collect(),
                    samples: r.baseline_samples.clone(),
                },
                Strip {
                    name: &format!("candidate {candidate}"),
                    colour: "#e65100",
                    figures: r.candidate.iter().flatten().copied().collect(),
                    samples: r.candidate_samples.clone(),
                },
            ];
            out.push_str(&svg::strips(
                &format!("{} ({})", r.name(), r.change.label()),
                &r.unit,
                &strips,
            ));
            out.push('\n');
        }
        for n in &self.notes {
            let _ = writeln!(out, "<p class=\"meta\">{}</p>", esc(n));
        }
        out
    }
}

/// The figures of a run's kernels (`vet`), for the terminal: one line per
/// figure, a column per kernel.
pub fn figures_table(kernels: &[KernelRun]) -> String {
    let mut names: Vec<(Key, String)> = Vec::new();
    for f in kernels.iter().flat_map(|k| &k.perf) {
        if !names.iter().any(|(k, _)| *k == key(f)) {
            names.push((key(f), f.unit.clone()));
        }
    }
    if names.is_empty() {
        return String::new();
    }
    let label = |k: &Key| format!("{} [{}] {}", k.0, k.1, k.2);
    let w = names
        .iter()
        .map(|(k, _)| label(k).len())
        .max()
        .unwrap_or(10);
    let mut out = String::new();
    let _ = write!(
        out,
        "\nperformance (figures, not verdicts) {:<1$}",
        "",
        w.saturating_sub(34)
    );
    for k in kernels {
        let _ = write!(out, "  {:>16}", k.label());
    }
    out.push('\n');
    for (k, unit) in &names {
        let _ = write!(out, "{:<w$}", label(k));
        for run in kernels {
            let v = run
                .perf
                .iter()
                .find(|f| key(f) == *k)
                .and_then(|f| f.value)
                .map(|v| format!("{} {unit}", number(v)))
                .unwrap_or_else(|| "-".into());
            let _ = write!(out, "  {v:>16}");
        }
        out.push('\n');
    }
    out
}

/// The figures of a run's kernels, for the HTML page: a table and a plot
/// of each figure's samples per kernel.
pub fn figures_html(kernels: &[KernelRun]) -> String {
    let esc = svg::escape;
    let mut names: Vec<(Key, String)> = Vec::new();
    for f in kernels.iter().flat_map(|k| &k.perf) {
        if !names.iter().any(|(k, _)| *k == key(f)) {
            names.push((key(f), f.unit.clone()));
        }
    }
    if names.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "<section id=\"performance\"><h2>Performance</h2><p>Figures, not verdicts: `natvet gate` compares them between two kernels over alternated boots. Large dots: the figure; small: its samples.</p>\n<table><tr><th>figure</th>",
    );
    for k in kernels {
        let _ = write!(out, "<th>{}</th>", esc(&k.label()));
    }
    out.push_str("</tr>\n");
    const COLOURS: [&str; 6] = [
        "#1565c0", "#e65100", "#2e7d32", "#6a1b9a", "#c62828", "#00838f",
    ];
    let mut plots = String::new();
    for (k, unit) in &names {
        let _ = write!(
            out,
            "<tr><td>{} [{}] {}</td>",
            esc(&k.0),
            esc(&k.1),
            esc(&k.2)
        );
        let mut strips = Vec::new();
        let labels: Vec<String> = kernels.iter().map(|k| k.label()).collect();
        for (i, run) in kernels.iter().enumerate() {
            let f = run.perf.iter().find(|f| key(f) == *k);
            match f {
                Some(f) => {
                    let _ = write!(
                        out,
                        "<td title=\"{}\">{}</td>",
                        esc(&f.note),
                        esc(&f.shown())
                    );
                    strips.push(Strip {
                        name: &labels[i],
                        colour: COLOURS[i % COLOURS.len()],
                        figures: f.value.into_iter().collect(),
                        samples: f.samples.clone(),
                    });
                }
                None => out.push_str("<td>-</td>"),
            }
        }
        out.push_str("</tr>\n");
        plots.push_str(&svg::strips(
            &format!("{} [{}] {}", k.0, k.1, k.2),
            unit,
            &strips,
        ));
        plots.push('\n');
    }
    out.push_str("</table>\n");
    out.push_str(&plots);
    out.push_str("</section>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::kernel_run::Timings;

    fn run(label: &str, values: &[(&str, Option<f64>)]) -> KernelRun {
        KernelRun {
            spec: label.into(),
            release: Some(label.into()),
            id: None,
            package: None,
            boot: None,
            state: KernelState::Completed,
            results: vec![],
            perf: values
                .iter()
                .map(|(probe, v)| PerfFigure {
                    scenario: "perf".into(),
                    backend: "nftables".into(),
                    probe: probe.to_string(),
                    unit: "Mbit/s".into(),
                    better: Better::Higher,
                    value: *v,
                    samples: vec![1.0, 2.0],
                    note: "n".into(),
                })
                .collect(),
            notes: vec![],
            attempts: 1,
            timings: Timings::default(),
            console_log: None,
        }
    }

    #[test]
    fn a_third_of_the_throughput_regresses_and_equal_does_not() {
        let base: Vec<KernelRun> = [10.0, 10.5, 9.8]
            .iter()
            .map(|v| run("a", &[("tcp", Some(*v)), ("same", Some(5.0 + v / 100.0))]))
            .collect();
        let cand: Vec<KernelRun> = [3.3, 3.4, 3.1]
            .iter()
            .map(|v| run("b", &[("tcp", Some(*v)), ("same", Some(5.0 + v / 100.0))]))
            .collect();
        let g = compare(&base, &cand, 1.5);
        assert_eq!(g.rows[0].change, PerfChange::Regressed);
        assert_eq!(g.rows[1].change, PerfChange::Unchanged);
        assert_eq!(g.regressed(), 1);
        assert!(g.render().contains("SLOWER"), "{}", g.render());
        assert!(g.html("a", "b").contains("<svg"));
    }

    #[test]
    fn a_candidate_that_gives_no_figure_where_the_baseline_does_regresses() {
        let base: Vec<KernelRun> = (0..3).map(|_| run("a", &[("rtt", Some(5.0))])).collect();
        let cand: Vec<KernelRun> = (0..3).map(|_| run("b", &[("rtt", None)])).collect();
        let g = compare(&base, &cand, 1.5);
        assert_eq!(g.rows[0].change, PerfChange::Regressed);
        // Neither side measured: not a verdict.
        let g = compare(&cand, &cand, 1.5);
        assert_eq!(g.rows[0].change, PerfChange::NotMeasured);
    }
}

//! Plots as inline SVG for the HTML report: no script, no external file,
//! so the page works offline and in any CI artifact viewer. Each function
//! takes plain numbers and returns one `<svg>` element; the report's
//! renderings (a run's timings, a gate's comparison, a check's traffic over
//! time) are built from these.

use std::fmt::Write;

use crate::protocol::Series;

/// One set of bars or a line: its name in the legend, its colour and a
/// value per category (or per step).
pub struct Set<'a> {
    pub name: &'a str,
    pub colour: &'a str,
    pub values: Vec<f64>,
}

const FONT: &str = "font-family=\"system-ui,sans-serif\" font-size=\"12\"";

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step for an axis that reaches `max` in about `ticks` steps.
fn nice_step(max: f64, ticks: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let raw = max / ticks;
    let mag = 10f64.powf(raw.log10().floor());
    let m = raw / mag;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn number(v: f64) -> String {
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn legend(out: &mut String, sets: &[Set], x: f64, y: f64) {
    let mut x = x;
    for s in sets {
        let _ = write!(
            out,
            "<rect x=\"{x:.0}\" y=\"{:.0}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{:.0}\" y=\"{:.0}\">{}</text>",
            y - 10.0,
            s.colour,
            x + 16.0,
            y,
            escape(s.name)
        );
        x += 28.0 + 7.0 * s.name.chars().count() as f64;
    }
}

/// Horizontal bars, one group per category, one bar per set; `unit`
/// follows each value ("s"). With `stacked`, a category's sets are laid
/// end to end (parts of one total) instead of side by side.
pub fn bars(title: &str, categories: &[String], sets: &[Set], unit: &str, stacked: bool) -> String {
    let label_w = categories
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(0) as f64
        * 7.0
        + 16.0;
    let plot_w = 560.0;
    let bar_h = 14.0;
    let per_group = if stacked { 1 } else { sets.len().max(1) };
    let group_h = bar_h * per_group as f64 + 8.0;
    let top = 40.0;
    let height = top + group_h * categories.len() as f64 + 36.0;
    let width = label_w + plot_w + 90.0;
    let total = |i: usize| -> f64 {
        if stacked {
            sets.iter()
                .map(|s| s.values.get(i).copied().unwrap_or(0.0))
                .sum()
        } else {
            sets.iter()
                .map(|s| s.values.get(i).copied().unwrap_or(0.0))
                .fold(0.0, f64::max)
        }
    };
    let max = (0..categories.len()).map(total).fold(0.0, f64::max);
    let step = nice_step(max, 5.0);
    let axis_max = (max / step).ceil().max(1.0) * step;
    let scale = plot_w / axis_max;
    let mut out = format!(
        "<svg class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width:.0} {height:.0}\" width=\"{width:.0}\" role=\"img\" {FONT}><title>{}</title>",
        escape(title)
    );
    let _ = write!(
        out,
        "<text x=\"0\" y=\"14\" font-weight=\"bold\">{}</text>",
        escape(title)
    );
    legend(&mut out, sets, label_w, 32.0);
    // Grid and axis labels.
    let bottom = top + group_h * categories.len() as f64;
    let mut t = 0.0;
    while t <= axis_max + step / 2.0 {
        let x = label_w + t * scale;
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{top:.0}\" x2=\"{x:.1}\" y2=\"{bottom:.0}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{:.0}\" text-anchor=\"middle\" fill=\"#555\">{}{unit}</text>",
            bottom + 16.0,
            number(t)
        );
        t += step;
    }
    for (i, c) in categories.iter().enumerate() {
        let y0 = top + group_h * i as f64 + 4.0;
        let _ = write!(
            out,
            "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            label_w - 8.0,
            y0 + group_h / 2.0,
            escape(c)
        );
        let mut x = label_w;
        for (j, s) in sets.iter().enumerate() {
            let v = s.values.get(i).copied().unwrap_or(0.0);
            let w = (v * scale).max(if v > 0.0 { 1.0 } else { 0.0 });
            let y = if stacked { y0 } else { y0 + bar_h * j as f64 };
            let _ = write!(
                out,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {}{unit}</title></rect>",
                bar_h - 2.0,
                s.colour,
                escape(&format!("{c} {}", s.name)),
                number(v)
            );
            if stacked {
                x += w;
            } else {
                let _ = write!(
                    out,
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#333\" font-size=\"10\">{}{unit}</text>",
                    x + w + 4.0,
                    y + bar_h - 4.0,
                    number(v)
                );
            }
        }
        if stacked {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#333\" font-size=\"10\">{}{unit}</text>",
                x + 4.0,
                y0 + bar_h - 4.0,
                number(total(i))
            );
        }
    }
    out.push_str("</svg>");
    out
}

/// One row of a strip plot: its name, colour, the figures (large dots, one
/// per boot) and the samples behind them (small, faint dots).
pub struct Strip<'a> {
    pub name: &'a str,
    pub colour: &'a str,
    pub figures: Vec<f64>,
    pub samples: Vec<f64>,
}

/// Distributions side by side on one axis (from zero): each row's samples
/// and figures as dots, so two kernels' spreads can be compared at a glance.
pub fn strips(title: &str, unit: &str, rows: &[Strip]) -> String {
    let label_w = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0) as f64
        * 7.0
        + 16.0;
    let plot_w = 520.0;
    let row_h = 30.0;
    let top = 26.0;
    let height = top + row_h * rows.len() as f64 + 30.0;
    let width = label_w + plot_w + 40.0;
    let max = rows
        .iter()
        .flat_map(|r| r.figures.iter().chain(&r.samples))
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let step = nice_step(max, 5.0);
    let axis_max = (max / step).ceil().max(1.0) * step;
    let scale = plot_w / axis_max;
    let mut out = format!(
        "<svg class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width:.0} {height:.0}\" width=\"{width:.0}\" role=\"img\" {FONT}><title>{}</title>",
        escape(title)
    );
    let _ = write!(
        out,
        "<text x=\"0\" y=\"14\" font-weight=\"bold\">{}</text>",
        escape(title)
    );
    let bottom = top + row_h * rows.len() as f64;
    let mut t = 0.0;
    while t <= axis_max + step / 2.0 {
        let x = label_w + t * scale;
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{top:.0}\" x2=\"{x:.1}\" y2=\"{bottom:.0}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{:.0}\" text-anchor=\"middle\" fill=\"#555\">{} {}</text>",
            bottom + 16.0,
            number(t),
            escape(unit)
        );
        t += step;
    }
    for (i, r) in rows.iter().enumerate() {
        let y = top + row_h * i as f64 + row_h / 2.0;
        let _ = write!(
            out,
            "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            label_w - 8.0,
            y + 4.0,
            escape(r.name)
        );
        for (k, v) in r.samples.iter().filter(|v| v.is_finite()).enumerate() {
            // A little vertical spread so that equal samples stay visible.
            let dy = ((k * 7) % 11) as f64 - 5.0;
            let _ = write!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{}\" fill-opacity=\"0.25\"/>",
                label_w + v * scale,
                y + dy,
                r.colour
            );
        }
        for v in r.figures.iter().filter(|v| v.is_finite()) {
            let _ = write!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"{}\" stroke=\"#000\" stroke-width=\"0.8\"><title>{}: {} {}</title></circle>",
                label_w + v * scale,
                r.colour,
                escape(r.name),
                number(*v),
                escape(unit)
            );
        }
    }
    out.push_str("</svg>");
    out
}

/// A check's traffic over time: probes sent and answered per step, and a
/// red line where it first stopped.
pub fn series(title: &str, s: &Series) -> String {
    let (width, height) = (640.0, 220.0);
    let (left, right, top, bottom) = (48.0, 16.0, 40.0, 36.0);
    let steps = s.sent.len().max(s.answered.len()).max(1);
    let max = s
        .sent
        .iter()
        .chain(&s.answered)
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let ystep = nice_step(max, 4.0);
    let ymax = (max / ystep).ceil() * ystep;
    let span_ms = (steps as u64 * s.step_ms).max(1) as f64;
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let x_of = |ms: f64| left + ms / span_ms * plot_w;
    let y_of = |v: f64| top + plot_h - v / ymax * plot_h;
    let mut out = format!(
        "<svg class=\"plot series\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width:.0} {height:.0}\" width=\"{width:.0}\" role=\"img\" {FONT}><title>{}</title><text x=\"0\" y=\"14\" font-weight=\"bold\">{}</text>",
        escape(title),
        escape(title)
    );
    let sets = [
        Set {
            name: "sent",
            colour: "#90a4ae",
            values: vec![],
        },
        Set {
            name: "answered",
            colour: "#2e7d32",
            values: vec![],
        },
    ];
    legend(&mut out, &sets, left, 32.0);
    let mut v = 0.0;
    while v <= ymax + ystep / 2.0 {
        let y = y_of(v);
        let _ = write!(
            out,
            "<line x1=\"{left:.0}\" y1=\"{y:.1}\" x2=\"{:.0}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{}</text>",
            width - right,
            left - 6.0,
            y + 4.0,
            number(v)
        );
        v += ystep;
    }
    let xstep = nice_step(span_ms / 1000.0, 6.0);
    let mut t = 0.0;
    while t * 1000.0 <= span_ms + 1.0 {
        let x = x_of(t * 1000.0);
        let _ = write!(
            out,
            "<text x=\"{x:.1}\" y=\"{:.0}\" text-anchor=\"middle\" fill=\"#555\">{}s</text>",
            height - bottom + 16.0,
            number(t)
        );
        t += xstep;
    }
    for (values, colour, dash) in [
        (&s.sent, "#90a4ae", " stroke-dasharray=\"4 3\""),
        (&s.answered, "#2e7d32", ""),
    ] {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "{:.1},{:.1}",
                    x_of((i as f64 + 0.5) * s.step_ms as f64),
                    y_of(f64::from(*v))
                )
            })
            .collect();
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
            points.join(" ")
        );
    }
    if let Some(stop) = s.stopped_at_ms {
        let x = x_of(stop as f64);
        let _ = write!(
            out,
            "<line class=\"stop\" x1=\"{x:.1}\" y1=\"{top:.0}\" x2=\"{x:.1}\" y2=\"{:.0}\" stroke=\"#c62828\" stroke-width=\"2\"/><text x=\"{:.1}\" y=\"{:.0}\" fill=\"#c62828\">stopped at {:.1} s</text>",
            height - bottom,
            x + 4.0,
            top + 12.0,
            stop as f64 / 1000.0
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(47.0, 5.0), 10.0);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
        assert_eq!(nice_step(3.2, 4.0), 1.0);
        assert_eq!(nice_step(1300.0, 5.0), 500.0);
    }

    #[test]
    fn bars_draw_one_rect_per_value() {
        let svg = bars(
            "t <1>",
            &["a".into(), "b".into()],
            &[
                Set {
                    name: "x",
                    colour: "#000",
                    values: vec![1.0, 2.0],
                },
                Set {
                    name: "y",
                    colour: "#111",
                    values: vec![3.0, 0.0],
                },
            ],
            " s",
            false,
        );
        // two legend swatches and four bars
        assert_eq!(svg.matches("<rect").count(), 6);
        assert!(svg.contains("t &lt;1&gt;"));
    }

    #[test]
    fn a_series_marks_where_it_stopped() {
        let s = Series {
            step_ms: 1000,
            sent: vec![10, 10, 10],
            answered: vec![10, 10, 2],
            stopped_at_ms: Some(2000),
        };
        let svg = series("soak", &s);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("stopped at 2.0 s"));
    }
}

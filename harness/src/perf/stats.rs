//! The arithmetic behind figures and their comparison: rates from
//! timestamps, percentiles, and the candidate/baseline ratio with a
//! confidence interval (Welch's t on the logarithms of each boot's figure,
//! so a ratio and its interval are symmetric in "twice as fast" and "half
//! as fast"). Pure: tested here, used by the probes and by the gate.

/// Events counted into steps of `step` seconds over `[from, to)`: the rate
/// of each step, per second. `events` are (seconds since the start, count).
pub fn rates(events: &[(f64, u64)], from: f64, to: f64, step: f64) -> Vec<f64> {
    if step <= 0.0 || to <= from {
        return vec![];
    }
    let n = ((to - from) / step).floor() as usize;
    let mut counts = vec![0u64; n];
    for &(t, c) in events {
        if t >= from && t < from + step * n as f64 {
            let i = ((t - from) / step) as usize;
            if let Some(slot) = counts.get_mut(i) {
                *slot += c;
            }
        }
    }
    counts.into_iter().map(|c| c as f64 / step).collect()
}

/// The total of `events` within `[from, to)`.
pub fn total(events: &[(f64, u64)], from: f64, to: f64) -> u64 {
    events
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, c)| c)
        .sum()
}

/// The `p`-th percentile (0 to 100) of `v`, nearest rank; none for no values.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s.get(rank.clamp(1, s.len()) - 1).copied()
}

pub fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn variance(v: &[f64]) -> f64 {
    let m = mean(v);
    v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() as f64 - 1.0)
}

/// Student's t for a two-sided 95% interval with `df` degrees of freedom,
/// rounded down to a whole degree (the wider interval).
pub fn t95(df: f64) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    if !df.is_finite() || df < 1.0 {
        return T[0];
    }
    let d = df.floor() as usize;
    match d {
        1..=30 => T[d - 1],
        31..=40 => 2.042,
        41..=60 => 2.021,
        61..=120 => 2.000,
        _ => 1.96,
    }
}

/// The smallest figure a logarithm is taken of: a probe that measured
/// nothing (0 packets/s) counts as a millionth of a unit.
const FLOOR: f64 = 1e-6;

/// candidate/baseline, as the ratio of the geometric means of each side's
/// figures, with its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ratio {
    pub ratio: f64,
    pub low: f64,
    pub high: f64,
}

/// The ratio of `candidate` to `baseline` (one figure per boot each), or
/// none with fewer than two figures on a side.
pub fn ratio(baseline: &[f64], candidate: &[f64]) -> Option<Ratio> {
    if baseline.len() < 2 || candidate.len() < 2 {
        return None;
    }
    let logs = |v: &[f64]| -> Vec<f64> { v.iter().map(|x| x.max(FLOOR).ln()).collect() };
    let (b, c) = (logs(baseline), logs(candidate));
    let (nb, nc) = (b.len() as f64, c.len() as f64);
    let (vb, vc) = (variance(&b) / nb, variance(&c) / nc);
    let d = mean(&c) - mean(&b);
    let se = (vb + vc).sqrt();
    // Welch–Satterthwaite; two sides without spread give the widest t.
    let df = if vb + vc > 0.0 {
        (vb + vc).powi(2) / (vb * vb / (nb - 1.0) + vc * vc / (nc - 1.0))
    } else {
        nb + nc - 2.0
    };
    let half = t95(df) * se;
    Some(Ratio {
        ratio: d.exp(),
        low: (d - half).exp(),
        high: (d + half).exp(),
    })
}

/// What a ratio says about the candidate, for a figure where `higher` is
/// better and a threshold (1.5: half again as slow) counts as a regression.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PerfChange {
    /// Worse than the threshold, with 95% confidence.
    Regressed,
    /// Could not be compared: a side has fewer than two figures.
    NotMeasured,
    /// Too noisy to tell: the interval reaches past the threshold.
    Inconclusive,
    /// Better than the threshold, with 95% confidence.
    Faster,
    /// Within the threshold, with 95% confidence.
    Unchanged,
}

impl PerfChange {
    pub fn label(self) -> &'static str {
        match self {
            PerfChange::Regressed => "SLOWER",
            PerfChange::NotMeasured => "not measured",
            PerfChange::Inconclusive => "inconclusive",
            PerfChange::Faster => "faster",
            PerfChange::Unchanged => "unchanged",
        }
    }
}

/// How much worse the candidate is (1: the same, 2: twice as slow), with
/// its interval, from a candidate/baseline ratio.
pub fn slowdown(r: Ratio, higher_is_better: bool) -> Ratio {
    if higher_is_better {
        Ratio {
            ratio: 1.0 / r.ratio,
            low: 1.0 / r.high,
            high: 1.0 / r.low,
        }
    } else {
        r
    }
}

/// The verdict of a slowdown against `threshold` (> 1).
pub fn judge(slow: Ratio, threshold: f64) -> PerfChange {
    if slow.low > threshold {
        PerfChange::Regressed
    } else if slow.high < 1.0 / threshold {
        PerfChange::Faster
    } else if slow.high < threshold {
        PerfChange::Unchanged
    } else {
        PerfChange::Inconclusive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_events_into_steps() {
        let ev = [(0.1, 5), (0.3, 5), (0.6, 10), (1.2, 99)];
        assert_eq!(rates(&ev, 0.0, 1.0, 0.5), vec![20.0, 20.0]);
        assert_eq!(total(&ev, 0.25, 1.0), 15);
        assert!(rates(&ev, 1.0, 0.0, 0.5).is_empty());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0]), Some(1.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn equal_sides_are_unchanged_and_a_third_of_the_speed_is_a_regression() {
        let a = [10.0, 11.0, 9.5];
        let b = [10.4, 9.8, 10.9];
        let r = ratio(&a, &b).unwrap();
        assert!(r.low < 1.0 && r.high > 1.0, "{r:?}");
        assert_eq!(judge(slowdown(r, true), 1.5), PerfChange::Unchanged);
        let slow = [3.3, 3.6, 3.1];
        let r = ratio(&a, &slow).unwrap();
        assert_eq!(judge(slowdown(r, true), 1.5), PerfChange::Regressed);
        // The same figures as latency (lower is better): the candidate is faster.
        assert_eq!(judge(slowdown(r, false), 1.5), PerfChange::Faster);
    }

    #[test]
    fn noise_is_inconclusive_never_a_regression() {
        let a = [10.0, 3.0, 12.0];
        let b = [4.0, 11.0, 5.0];
        let r = ratio(&a, &b).unwrap();
        assert_eq!(judge(slowdown(r, true), 1.5), PerfChange::Inconclusive);
        assert!(ratio(&[1.0], &[1.0, 2.0]).is_none());
    }

    #[test]
    fn nothing_measured_on_the_candidate_is_a_regression() {
        let r = ratio(&[100.0, 110.0, 95.0], &[0.0, 0.0, 0.0]).unwrap();
        assert_eq!(judge(slowdown(r, true), 1.5), PerfChange::Regressed);
    }

    #[test]
    fn t_is_wider_with_fewer_degrees() {
        assert!(t95(2.7) > t95(3.0) - 1e-9 && t95(2.7) == 4.303);
        assert_eq!(t95(1000.0), 1.96);
        assert_eq!(t95(f64::NAN), 12.706);
    }
}

//! The search: a midpoint bisection over the candidates between two
//! endpoints already known good and bad, stepping around candidates that
//! cannot be tested (like `git bisect skip`).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::Verdict;

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
}

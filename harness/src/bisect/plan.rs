//! What to bisect: the endpoints checked against each other, and the
//! candidates of one line between them. The candidates come from the good
//! end's source ([`Candidates`]): only a source whose kernels have an order
//! natvet knows can give them (Debian's packages, by version).

use std::cmp::Ordering;

use super::search::{estimate, Point};
use crate::kernel::sources::{self, Candidate, Candidates, Lineup};
use crate::kernel::version::{self, line_matches, release_components};
use crate::kernel::{Cache, KernelError, KernelSpec};

/// The version line (major.minor) of a release: `6.12.95+deb12-amd64` → [6, 12].
pub fn line_of(release: &str) -> Option<[u64; 2]> {
    match release_components(release)[..] {
        [a, b, ..] => Some([a, b]),
        _ => None,
    }
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
        .filter(|c| line_matches(&c.release, &line))
        .filter(|c| version::compare(&c.package.version, good_version) == Ordering::Greater)
        .filter(|c| match upper {
            Upper::Package { version: v } => {
                version::compare(&c.package.version, v) == Ordering::Less
            }
            Upper::Build { upstream } => release_components(&c.release).as_slice() <= *upstream,
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
    #[error("--good {good} is not a kernel package natvet can order: natvet bisects over packaged kernels, whose order it knows; give the passing package as {forms} (your own kernel may be --bad)")]
    NotOrdered { good: String, forms: String },
}

pub fn fmt_line(l: &[u64; 2]) -> String {
    format!("{}.{}", l[0], l[1])
}

/// The endpoints as the user gave them, checked before anything is fetched.
pub struct Endpoints<'a> {
    good: &'a KernelSpec,
    bad: &'a KernelSpec,
    source: &'a dyn Candidates,
}

/// Check the endpoints before anything is fetched: `good` must be of a
/// source with candidates, and two exact releases (`debian:6.1.0-50-amd64`,
/// `debian:6.12.43+deb12-amd64`) must be of one line.
pub fn endpoints<'a>(
    good: &'a KernelSpec,
    bad: &'a KernelSpec,
) -> Result<Endpoints<'a>, PlanError> {
    let Some(source) = good.candidates() else {
        return Err(PlanError::NotOrdered {
            good: good.to_string(),
            forms: sources::endpoint_forms().join(" or "),
        });
    };
    let exact = |s: &KernelSpec| {
        let c = s.candidates()?;
        let r = c.exact_release(s)?;
        line_of(&r).map(|l| (c.candidate_spec(&r), l))
    };
    if let (Some((g, gl)), Some((b, bl))) = (exact(good), exact(bad)) {
        if gl != bl {
            return Err(PlanError::DifferentLines {
                good: g,
                good_line: gl,
                bad: b,
                bad_line: bl,
            });
        }
    }
    Ok(Endpoints { good, bad, source })
}

impl Endpoints<'_> {
    /// What the endpoints name today (the bad end too when it is of the
    /// good end's source) and every candidate of that source.
    pub fn lineup(&self, cache: &Cache, progress: &dyn Fn(&str)) -> Result<Lineup, KernelError> {
        let bad = self.good.same_source(self.bad).then_some(self.bad);
        self.source.lineup(self.good, bad, cache, progress)
    }
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
    let upstream = release_components(bad.release());
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
            if release_components(&good.release) > upstream {
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
                line_matches(&c.release, &good_line) && release_components(&c.release) > upstream
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

impl Plan {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bisect::{Answer, Outcome};
    use crate::kernel::PackageInfo;

    fn pkg(release: &str, version: &str, suite: &str) -> Candidate {
        Candidate::new(
            format!("debian:{release}"),
            release.into(),
            PackageInfo {
                name: format!("linux-image-{release}"),
                version: version.into(),
                suite: suite.into(),
                sha256: String::new(),
                filename: String::new(),
                repository: "debian".into(),
                trust: Default::default(),
            },
        )
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
    fn lines() {
        assert_eq!(line_of("6.12.95+deb12-amd64"), Some([6, 12]));
        assert_eq!(line_of("6.12.117"), Some([6, 12]));
        assert_eq!(line_of("6.1.0-50-amd64"), Some([6, 1]));
        assert_eq!(line_of("x"), None);
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
        let check = |good: &str, bad: &str| {
            let good = KernelSpec::parse(good, None).unwrap();
            let bad = KernelSpec::parse(bad, None).unwrap();
            endpoints(&good, &bad).map(|_| ())
        };
        let e = check("debian:6.1.0-40-amd64", "debian:6.12.43+deb12-amd64").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--good debian:6.1.0-40-amd64 is of the 6.1 line but --bad debian:6.12.43+deb12-amd64 is of the 6.12 line: natvet bisects within one line; pick both from one line (`natvet kernels list --all` shows the releases)"
        );
        // Named as the candidates are, however the release was written.
        let e = check(
            "debian:linux-image-6.1.0-40-amd64",
            "debian:6.12.43+deb12-amd64",
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("--good debian:6.1.0-40-amd64 "),
            "{e}"
        );
        assert!(check("debian:6.12.43+deb12-amd64", "debian:6.12.95+deb12-amd64").is_ok());
        assert!(check("debian:6.12.43+deb12-amd64", "debian:sid").is_ok());
        assert!(check("debian:6.12.43+deb12-amd64", "/x/bzImage").is_ok());
        assert!(check("debian:6.1", "build:/x").is_ok());
        let e = check("./x", "debian:6.1").unwrap_err();
        assert!(matches!(e, PlanError::NotOrdered { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "--good ./x is not a kernel package natvet can order: natvet bisects over packaged kernels, whose order it knows; give the passing package as debian:RELEASE or ubuntu:RELEASE (your own kernel may be --bad)"
        );
        assert!(check("build:/b", "debian:6.1").is_err());
    }
}

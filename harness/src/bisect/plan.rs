//! What to bisect: the packages of one line between the endpoints, and the
//! endpoints checked against each other.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::search::{estimate, Point};
use crate::kernel::debian::{self, Index};
use crate::kernel::{version, PackageInfo};

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

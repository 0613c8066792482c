//! Which kernels an apt repository's index offers, and which one a query
//! names: the queries (`6.12`, `sid:7.2`, an exact release or its image
//! package), the generic image package of each release, the newest of a
//! version line or of a suite, and the packages that come with an image.
//! Indexes only: fetching, unpacking and the source's errors are `apt.rs`'s.

use std::collections::BTreeSet;

use crate::kernel::archive::{Index, Stanza};
use crate::kernel::repository::Naming;
use crate::kernel::sources::Candidate;
use crate::kernel::version;

/// How one repository's index names its kernels: its package naming, and
/// the suites a `NAME:SUITE` query may name (in the order that breaks ties).
#[derive(Clone, Copy)]
pub(super) struct Selector<'a> {
    pub(super) naming: &'a Naming,
    pub(super) suites: &'a [String],
}

impl Selector<'_> {
    /// Parse the part after `NAME:` (`name`, for messages).
    pub(super) fn query(&self, name: &str, arg: &str) -> Result<Query, String> {
        parse_query(arg, name, self.suites, self.naming)
    }

    /// The generic release a stanza is the image package of; None for other
    /// packages, other flavours, and metapackages over another release's
    /// image (`linux-image-6.12-amd64` -> `linux-image-6.12.117+deb12-amd64`).
    fn generic_image<'s>(&self, s: &'s Stanza) -> Option<&'s str> {
        let r = self
            .naming
            .image_release(&s.package)
            .filter(|r| self.naming.is_generic(r))?;
        let meta = s
            .depends_names()
            .iter()
            .any(|d| self.naming.image_release(d).is_some_and(|other| other != r));
        (!meta).then_some(r)
    }

    /// The release a query names in an index.
    pub(super) fn select(&self, index: &Index, q: &Query) -> Option<String> {
        match q {
            Query::Exact(r) => self.select_exact(index, r).map(|_| r.clone()),
            Query::Line(line) => self.select_line(index, line),
            Query::Suite { suite, line } => self.select_suite(index, suite, line.as_deref()),
        }
    }

    /// Every generic image release in the index, one entry each (its
    /// highest package version), in index order.
    pub(super) fn one_per_release(&self, index: &Index, prefix: &str) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = Vec::new();
        for s in &index.stanzas {
            let Some(r) = self.generic_image(s) else {
                continue;
            };
            if out.iter().any(|c| c.release == r) {
                continue;
            }
            if let Some(best) = self.select_exact(index, r) {
                out.push(Candidate::new(
                    format!("{prefix}{r}"),
                    r.to_string(),
                    best.info(),
                ));
            }
        }
        out
    }

    /// Every generic image release, one entry per release, in package
    /// version order, oldest first.
    pub(super) fn generic_releases(&self, index: &Index, prefix: &str) -> Vec<Candidate> {
        let mut out = self.one_per_release(index, prefix);
        out.sort_by(|a, b| {
            version::compare(&a.package.version, &b.package.version)
                .then_with(|| a.release.cmp(&b.release))
        });
        out
    }

    /// Known version lines (major.minor) of generic kernels.
    pub(super) fn known_lines(&self, index: &Index) -> Vec<String> {
        let mut lines: BTreeSet<(u64, u64)> = BTreeSet::new();
        for s in &index.stanzas {
            if let Some(r) = self.generic_image(s) {
                if let [a, b, ..] = version::release_components(r)[..] {
                    lines.insert((a, b));
                }
            }
        }
        lines.into_iter().map(|(a, b)| format!("{a}.{b}")).collect()
    }

    /// The image stanza of a release: highest Version; on a tie the
    /// earlier image name (signed before unsigned), then the earlier suite.
    pub(super) fn select_exact<'i>(&self, index: &'i Index, release: &str) -> Option<&'i Stanza> {
        let names: Vec<String> = self
            .naming
            .images
            .iter()
            .map(|t| Naming::name(t, release))
            .collect();
        let name_pos = |p: &str| names.iter().position(|n| n == p).unwrap_or(usize::MAX);
        let suite_pos = |s: &str| {
            self.suites
                .iter()
                .position(|x| x == s)
                .unwrap_or(usize::MAX)
        };
        index
            .stanzas
            .iter()
            .filter(|s| names.contains(&s.package))
            .max_by(|a, b| {
                version::compare(&a.version, &b.version)
                    .then_with(|| name_pos(&b.package).cmp(&name_pos(&a.package)))
                    .then_with(|| suite_pos(&b.suite).cmp(&suite_pos(&a.suite)))
            })
    }

    /// Newest generic release of a version line, by package Version.
    pub(super) fn select_line(&self, index: &Index, line: &[u64]) -> Option<String> {
        self.newest(index, |_, r| version::line_matches(r, line))
    }

    /// Newest generic release in one suite (with its -security and
    /// -updates suites), of one line if given.
    pub(super) fn select_suite(
        &self,
        index: &Index,
        suite: &str,
        line: Option<&[u64]>,
    ) -> Option<String> {
        self.newest(index, |s, r| {
            suite_of(&s.suite, suite) && line.is_none_or(|l| version::line_matches(r, l))
        })
    }

    fn newest(&self, index: &Index, keep: impl Fn(&Stanza, &str) -> bool) -> Option<String> {
        index
            .stanzas
            .iter()
            .filter_map(|s| self.generic_image(s).map(|r| (r, s)))
            .filter(|(r, s)| keep(s, r))
            .max_by(|(_, a), (_, b)| version::compare(&a.version, &b.version))
            .map(|(r, _)| r.to_string())
    }
}

/// True when a stanza's suite belongs to a `SUITE` query: the suite itself,
/// or its `-security` / `-updates` suite (not `-backports`).
fn suite_of(stanza_suite: &str, asked: &str) -> bool {
    stanza_suite == asked
        || stanza_suite
            .strip_prefix(asked)
            .is_some_and(|rest| rest == "-security" || rest == "-updates")
}

// ---------------------------------------------------------------- queries

/// What a query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Query {
    /// A full release as `uname -r` prints it.
    Exact(String),
    /// A version line such as `6.12` (numeric components).
    Line(Vec<u64>),
    /// The newest kernel of one suite (`sid`), optionally of one line (`sid:7.2`).
    Suite {
        suite: String,
        line: Option<Vec<u64>>,
    },
}

fn parse_line(q: &str) -> Option<Vec<u64>> {
    if q.is_empty() || !q.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return None;
    }
    q.split('.').map(|c| c.parse().ok()).collect()
}

/// Parse the part after `NAME:`.
fn parse_query(q: &str, name: &str, suites: &[String], naming: &Naming) -> Result<Query, String> {
    let q = q.trim();
    // A package name stands for its release.
    let q = naming
        .images
        .iter()
        .rev()
        .find_map(|t| {
            let (pre, post) = t.split_once("{release}")?;
            q.strip_prefix(pre)?
                .strip_suffix(post)
                .filter(|r| !r.is_empty())
        })
        .unwrap_or(q);
    if q.is_empty() {
        return Err(format!("nothing after `{name}:`"));
    }
    let (head, tail) = match q.split_once(':') {
        Some((h, t)) => (h, Some(t)),
        None => (q, None),
    };
    if suites.iter().any(|s| s == head || suite_of(s, head)) {
        let line =
            match tail {
                None => None,
                Some(t) => Some(parse_line(t).ok_or_else(|| {
                    format!("`{t}` after `{head}:` is not a version line like 7.2")
                })?),
            };
        return Ok(Query::Suite {
            suite: head.to_string(),
            line,
        });
    }
    if tail.is_some() {
        return Err(format!(
            "`{head}` is not a suite natvet searches ({})",
            suites.join(", ")
        ));
    }
    if q.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        let comps: Result<Vec<u64>, _> = q.split('.').map(str::parse).collect();
        return match comps {
            Ok(c) if !c.is_empty() => Ok(Query::Line(c)),
            _ => Err(format!("`{q}` is not a version line like 6.12")),
        };
    }
    let ok_chars = q
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b".+-~_".contains(&c));
    if !q.as_bytes()[0].is_ascii_digit() || !ok_chars || !q.contains('-') {
        return Err(format!(
            "`{q}` is neither a version line (like 6.12) nor a kernel release (like 6.1.0-50-{})",
            naming.flavour
        ));
    }
    Ok(Query::Exact(q.to_string()))
}

/// The package called `name`, preferring `suite` and `version`.
pub(super) fn find_package<'a>(
    index: &'a Index,
    name: &str,
    suite: &str,
    version: &str,
) -> Option<&'a Stanza> {
    index
        .stanzas
        .iter()
        .filter(|s| s.package == name)
        .max_by(|a, b| {
            let score = |s: &Stanza| (s.version == version, s.suite == suite);
            score(a)
                .cmp(&score(b))
                .then_with(|| version::compare(&a.version, &b.version))
        })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::kernel::archive::{parse_packages, tests::prefixes, tests::SAMPLE};
    use crate::kernel::sources::apt::AptSource;
    use crate::kernel::version::{line_matches, release_components};

    /// Debian's source, whose selector these tests use.
    fn deb() -> AptSource {
        crate::kernel::sources::debian::source()
    }

    /// The archive's sample bookworm index with some sid and
    /// bookworm-security kernels (`apt.rs`'s tests use it too).
    pub(in crate::kernel::sources::apt) fn sample_index() -> Index {
        let mut st = parse_packages(SAMPLE.as_bytes(), "bookworm", &prefixes()).unwrap();
        st.extend(
            parse_packages(
                "Package: linux-image-7.2.13+deb14-amd64\nVersion: 7.2.13-1\n\
                 Depends: dracut | initramfs-tools (>= 0.120+deb8u2), linux-binary-7.2.13+deb14-amd64 (= 7.2.13-1), linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1)\n\
                 Filename: a.deb\nSHA256: 11\n\n\
                 Package: linux-image-7.3-amd64\nVersion: 7.3~rc7-1~exp1\nFilename: b.deb\nSHA256: 22\n\n\
                 Package: linux-image-7.2.9+deb14-amd64-unsigned\nVersion: 7.2.9-1\nFilename: c.deb\nSHA256: 33\n"
                    .as_bytes(),
                "sid",
                &prefixes(),
            )
            .unwrap(),
        );
        st.extend(
            parse_packages(
                "Package: linux-image-6.1.0-57-amd64\nVersion: 6.1.192-3\nFilename: d.deb\nSHA256: 44\n\n\
                 Package: linux-image-6.1.0-57-amd64-unsigned\nVersion: 6.1.192-3\nFilename: e.deb\nSHA256: 55\n"
                    .as_bytes(),
                "bookworm-security",
                &prefixes(),
            )
            .unwrap(),
        );
        Index {
            stanzas: st,
            ..Default::default()
        }
    }

    #[test]
    fn selects_newest_generic_of_a_line_security_included() {
        let idx = sample_index();
        let src = deb();
        let d = src.selector();
        assert_eq!(
            d.select_line(&idx, &[6, 1]).as_deref(),
            Some("6.1.0-57-amd64")
        );
        assert_eq!(
            d.select_line(&idx, &[6, 12]).as_deref(),
            Some("6.12.9-amd64")
        );
        assert_eq!(d.select_line(&idx, &[7]).as_deref(), Some("7.3-amd64"));
        assert_eq!(
            d.select_line(&idx, &[7, 2]).as_deref(),
            Some("7.2.13+deb14-amd64")
        );
        assert_eq!(d.select_line(&idx, &[9, 9, 9]), None);
        assert_eq!(d.known_lines(&idx), ["6.1", "6.12", "7.2", "7.3"]);
        // A suite takes in its security suite.
        assert_eq!(
            d.select_suite(&idx, "bookworm", Some(&[6, 1])).as_deref(),
            Some("6.1.0-57-amd64")
        );
        assert_eq!(
            d.select_suite(&idx, "bookworm-security", None).as_deref(),
            Some("6.1.0-57-amd64")
        );
        assert_eq!(
            d.select_suite(&idx, "sid", Some(&[7, 2])).as_deref(),
            Some("7.2.13+deb14-amd64")
        );
        assert!(suite_of("noble-updates", "noble") && !suite_of("bookworm-backports", "bookworm"));
    }

    #[test]
    fn selects_exact_and_unsigned() {
        let idx = sample_index();
        let src = deb();
        let d = src.selector();
        let s = d.select_exact(&idx, "6.1.0-50-amd64").unwrap();
        assert_eq!(s.package, "linux-image-6.1.0-50-amd64");
        let s = d.select_exact(&idx, "6.1.0-57-amd64").unwrap();
        assert_eq!(s.package, "linux-image-6.1.0-57-amd64");
        let s = d.select_exact(&idx, "7.2.9+deb14-amd64").unwrap();
        assert_eq!(s.package, "linux-image-7.2.9+deb14-amd64-unsigned");
        assert!(d.select_exact(&idx, "6.1.0-51-amd64").is_none());
    }

    #[test]
    fn release_helpers() {
        let n = Naming::debian();
        assert!(n.is_generic("6.1.0-50-amd64"));
        assert!(n.is_generic("6.12.95+deb12-amd64"));
        assert!(n.is_generic("7.3-amd64"));
        assert!(!n.is_generic("6.1.0-50-cloud-amd64"));
        assert!(!n.is_generic("6.12.95+deb12-rt-amd64"));
        assert_eq!(release_components("6.12.95+deb12-amd64"), [6, 12, 95]);
        assert_eq!(release_components("5.10.0-32-amd64"), [5, 10, 0]);
        assert!(line_matches("6.1.0-50-amd64", &[6, 1]));
        assert!(!line_matches("6.12.95+deb12-amd64", &[6, 1]));
        assert_eq!(n.image_release("linux-image-amd64"), None);
    }

    #[test]
    fn query_parsing() {
        let src = deb();
        let d = src.selector();
        let p = |q: &str| d.query("debian", q);
        assert_eq!(p("6.12"), Ok(Query::Line(vec![6, 12])));
        assert_eq!(
            p("sid"),
            Ok(Query::Suite {
                suite: "sid".into(),
                line: None
            })
        );
        assert_eq!(
            p("experimental:7.3"),
            Ok(Query::Suite {
                suite: "experimental".into(),
                line: Some(vec![7, 3])
            })
        );
        assert_eq!(
            p("bookworm-security:6.1"),
            Ok(Query::Suite {
                suite: "bookworm-security".into(),
                line: Some(vec![6, 1])
            })
        );
        assert!(p("stretch:4.9").is_err());
        assert!(p("sid:x").is_err());
        assert_eq!(p("5.10"), Ok(Query::Line(vec![5, 10])));
        assert_eq!(
            p("6.1.0-50-amd64"),
            Ok(Query::Exact("6.1.0-50-amd64".into()))
        );
        assert_eq!(
            p("linux-image-5.10.0-32-amd64-unsigned"),
            Ok(Query::Exact("5.10.0-32-amd64".into()))
        );
        assert_eq!(
            p("7.2.13+deb14-amd64"),
            Ok(Query::Exact("7.2.13+deb14-amd64".into()))
        );
        assert!(p("").is_err());
        assert!(p("latest").is_err());
        assert!(p("6..1").is_err());
        assert!(p("6.1/../x").is_err());
    }

    #[test]
    fn generic_releases_from_an_index() {
        let text = "Package: linux-image-6.12.57+deb12-amd64\nVersion: 6.12.57-1~bpo12+1\nFilename: a.deb\nSHA256: 1\n\n\
                    Package: linux-image-6.12.57+deb12-amd64-unsigned\nVersion: 6.12.57-1~bpo12+1\nFilename: b.deb\nSHA256: 2\n\n\
                    Package: linux-image-6.12.57+deb12-cloud-amd64\nVersion: 6.12.57-1~bpo12+1\nFilename: c.deb\nSHA256: 3\n\n\
                    Package: linux-image-6.12.43+deb12-amd64\nVersion: 6.12.43-1~bpo12+1\nFilename: d.deb\nSHA256: 4\n";
        let index = Index {
            stanzas: parse_packages(text.as_bytes(), "bookworm-backports", &prefixes()).unwrap(),
            ..Default::default()
        };
        let src = deb();
        let r = src.selector().generic_releases(&index, src.prefix);
        let names: Vec<&str> = r.iter().map(|c| c.release.as_str()).collect();
        assert_eq!(names, ["6.12.43+deb12-amd64", "6.12.57+deb12-amd64"]);
        assert_eq!(r[1].package.name, "linux-image-6.12.57+deb12-amd64");
        assert_eq!(r[1].spec(), "debian:6.12.57+deb12-amd64");
    }
}

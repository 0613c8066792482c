//! `debian:QUERY`: kernels packaged by Debian, found in the archive's
//! index (see [`archive`](super::super::archive)), verified, unpacked into
//! the cache (`kernels/RELEASE/`, see [`unpacked`](super::super::unpacked))
//! and walked in version order by `natvet bisect`.
//!
//! A query is an exact release (`6.1.0-50-amd64`), a version line (`6.12`:
//! its newest generic amd64 kernel), or a suite (`sid`, `experimental:7.3`:
//! its newest, of that line).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use super::{malformed, Candidate, Candidates, Catalogue, KernelSource, KernelSpec, Lineup};
use crate::kernel::archive::{self, ArchiveError, Index, Stanza, SUITES};
use crate::kernel::cache::{Cache, Entry, MarkerFile, Staging};
use crate::kernel::error::{ErrorClass, KernelError, SourceError};
use crate::kernel::{deb, unpacked, version, Kernel};

/// Kernels of Debian's archive.
pub(super) struct Debian;

/// What the `debian:` source could not find.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error("no Debian kernel package matches '{query}'; known lines: {} — give one of those (e.g. debian:{}) or an exact release such as debian:6.1.0-50-amd64 (`natvet kernels list --all` shows the releases on offer)", .known.join(", "), .known.last().map(String::as_str).unwrap_or("6.12"))]
    NoSuchPackage { query: String, known: Vec<String> },

    /// A bisection endpoint that names no package.
    #[error("no Debian kernel package matches '{spec}'; known lines: {} (`natvet kernels list --all` shows the releases on offer)", .known.join(", "))]
    NoEndpoint { spec: String, known: Vec<String> },
}

impl SourceError for DebianError {
    fn class(&self) -> ErrorClass {
        match self {
            DebianError::NoSuchPackage { .. } | DebianError::NoEndpoint { .. } => {
                ErrorClass::BadInput
            }
        }
    }
}

impl KernelSource for Debian {
    fn name(&self) -> &'static str {
        "debian"
    }

    fn forms(&self) -> &'static [&'static str] {
        &[
            "debian:LINE (e.g. debian:6.12)",
            "debian:RELEASE (e.g. debian:6.1.0-50-amd64)",
        ]
    }

    fn prefix(&self) -> &'static str {
        "debian:"
    }

    fn claim(&self, spec: &str, modules: Option<&Path>) -> Option<Result<String, String>> {
        let (scheme, rest) = super::scheme_of(spec)?;
        if scheme != "debian" {
            return None;
        }
        if modules.is_some() {
            return Some(Err(
                "a module folder only goes with a local kernel image".into()
            ));
        }
        Some(parse_query(rest).map(|_| rest.trim().to_string()))
    }

    fn resolve(
        &self,
        spec: &KernelSpec,
        cache: &Cache,
        progress: &dyn Fn(&str),
    ) -> Result<Kernel, KernelError> {
        resolve_debian(spec.arg(), &spec.to_string(), cache, progress)
    }

    fn lookup(
        &self,
        spec: &KernelSpec,
        cache: &Cache,
        progress: &dyn Fn(&str),
    ) -> Result<(Option<String>, bool), KernelError> {
        let index = archive::load_index(cache, progress)?;
        let release = match parse_query(spec.arg()) {
            Ok(Query::Exact(r)) => select_exact(&index, &r).map(|_| r),
            Ok(Query::Line(line)) => select_line(&index, &line),
            Ok(Query::Suite { suite, line }) => select_suite(&index, &suite, line.as_deref()),
            Err(_) => None,
        };
        let cached = release
            .as_ref()
            .is_some_and(|r| unpacked::load_cached(cache, r, &spec.to_string()).is_some());
        Ok((release, cached))
    }

    fn catalogue(
        &self,
        cache: &Cache,
        progress: &dyn Fn(&str),
    ) -> Result<Option<Catalogue>, KernelError> {
        let index = archive::load_index(cache, progress)?;
        let mut kernels = self.one_per_release(&index);
        kernels.sort_by(|a, b| version::compare(&b.package.version, &a.package.version));
        Ok(Some(Catalogue {
            heading: "Debian's archive (generic amd64 kernels, newest first)".into(),
            kernels,
        }))
    }

    fn candidates(&self) -> Option<&dyn Candidates> {
        Some(self)
    }
}

impl Candidates for Debian {
    fn endpoint_form(&self) -> &'static str {
        "debian:RELEASE"
    }

    fn candidate_spec(&self, release: &str) -> String {
        format!("debian:{release}")
    }

    fn exact_release(&self, spec: &KernelSpec) -> Option<String> {
        match parse_query(spec.arg()) {
            Ok(Query::Exact(r)) => Some(r),
            _ => None,
        }
    }

    fn lineup(
        &self,
        good: &KernelSpec,
        bad: Option<&KernelSpec>,
        cache: &Cache,
        progress: &dyn Fn(&str),
    ) -> Result<Lineup, KernelError> {
        let index = archive::load_index(cache, progress)?;
        Ok(Lineup {
            good: self.endpoint(&index, good)?,
            bad: bad.map(|b| self.endpoint(&index, b)).transpose()?,
            releases: self.generic_releases(&index),
        })
    }
}

impl Debian {
    /// Every generic amd64 image release in the index, one entry each (its
    /// highest package version), in index order.
    fn one_per_release(&self, index: &Index) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = Vec::new();
        for s in &index.stanzas {
            let Some(r) = image_release(&s.package).filter(|r| is_generic_amd64(r)) else {
                continue;
            };
            if out.iter().any(|c| c.release == r) {
                continue;
            }
            if let Some(best) = select_exact(index, r) {
                out.push(Candidate::new(
                    self.candidate_spec(r),
                    r.to_string(),
                    best.info(),
                ));
            }
        }
        out
    }

    /// Every generic amd64 image release in the index, one entry per release
    /// (its highest package version), in package version order, oldest first.
    fn generic_releases(&self, index: &Index) -> Vec<Candidate> {
        let mut out = self.one_per_release(index);
        out.sort_by(|a, b| {
            version::compare(&a.package.version, &b.package.version)
                .then_with(|| a.release.cmp(&b.release))
        });
        out
    }

    /// The package a `debian:` spec names today (an exact release, the
    /// newest of a line, the newest of a suite).
    fn endpoint(&self, index: &Index, spec: &KernelSpec) -> Result<Candidate, KernelError> {
        let release = match parse_query(spec.arg()).map_err(|e| malformed(&spec.to_string(), e))? {
            Query::Exact(r) => r,
            Query::Line(l) => select_line(index, &l).unwrap_or_default(),
            Query::Suite { suite, line } => {
                select_suite(index, &suite, line.as_deref()).unwrap_or_default()
            }
        };
        let stanza = select_exact(index, &release).ok_or_else(|| DebianError::NoEndpoint {
            spec: spec.to_string(),
            known: known_lines(index),
        })?;
        Ok(Candidate::new(
            self.candidate_spec(&release),
            release,
            stanza.info(),
        ))
    }
}

// ---------------------------------------------------------------- resolve

/// `debian:QUERY`: the kernel the index names, from the cache or fetched,
/// verified and unpacked into it.
fn resolve_debian(
    query: &str,
    spec: &str,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<Kernel, KernelError> {
    let q = parse_query(query).map_err(|reason| malformed(spec, reason))?;
    // An exact release already in the cache needs no network at all.
    if let Query::Exact(rel) = &q {
        if let Some(k) = unpacked::load_cached(cache, rel, spec) {
            return Ok(k);
        }
    }
    let index = match archive::load_index(cache, progress) {
        Ok(i) => i,
        Err(e) => {
            if let Query::Line(line) = &q {
                if let Some(k) = newest_cached_of_line(cache, line, spec) {
                    progress(&format!(
                        "package index unavailable ({e}); using cached kernel {}",
                        k.release.as_deref().unwrap_or("?")
                    ));
                    return Ok(k);
                }
            }
            return Err(e);
        }
    };
    let not_found = || {
        if !index.failures.is_empty() {
            KernelError::from(ArchiveError::Download {
                what: format!("the package indexes of {}", index.failures.join(", ")),
                reason: format!("could not check them for '{query}'"),
            })
        } else {
            KernelError::from(DebianError::NoSuchPackage {
                query: spec.to_string(),
                known: known_lines(&index),
            })
        }
    };
    let release = match &q {
        Query::Exact(r) => r.clone(),
        Query::Line(line) => select_line(&index, line).ok_or_else(not_found)?,
        Query::Suite { suite, line } => {
            select_suite(&index, suite, line.as_deref()).ok_or_else(not_found)?
        }
    };
    let image = select_exact(&index, &release).ok_or_else(not_found)?;
    Entry::new(cache.dir("kernels")?, release.clone()).load_or_publish(
        |dir| unpacked::load(dir, spec),
        |staging| install(staging, cache, &index, &release, image, progress),
        progress,
    )
}

/// The newest complete cached kernel of a line, for when the index cannot be read.
fn newest_cached_of_line(cache: &Cache, line: &[u64], spec: &str) -> Option<Kernel> {
    unpacked::cached_releases(cache)
        .into_iter()
        .filter(|r| is_generic_amd64(r) && version::line_matches(r, line))
        .filter_map(|r| unpacked::load_cached(cache, &r, spec))
        .max_by(|a, b| {
            let v = |k: &Kernel| {
                k.package
                    .as_ref()
                    .map(|p| p.version.clone())
                    .unwrap_or_default()
            };
            version::compare(&v(a), &v(b))
        })
}

/// Download the packages of `release` and unpack them into `staging`; the
/// marker to publish.
fn install(
    staging: &Staging,
    cache: &Cache,
    index: &Index,
    release: &str,
    image: &Stanza,
    progress: &dyn Fn(&str),
) -> Result<MarkerFile, KernelError> {
    let extract_err = |what: &str, reason: String| KernelError::Extract {
        what: what.to_string(),
        reason,
        cache_hint: cache.root().join("debs"),
    };

    let mut parts = vec![image.clone()];
    let deb = archive::download(cache, image, progress)?;
    let t0 = Instant::now();
    let mut ex = deb::extract(&deb, staging.path()).map_err(|e| extract_err(&image.package, e))?;
    if !ex.vmlinuz {
        // 6.19+: linux-image-X is a metapackage over linux-binary-X and linux-modules-X.
        for dep in image.depends_names() {
            if !(dep.starts_with("linux-binary-") || dep.starts_with("linux-modules-")) {
                continue;
            }
            let st = find_package(index, &dep, &image.suite, &image.version).ok_or_else(|| {
                ArchiveError::Download {
                    what: dep.clone(),
                    reason: format!(
                        "{} depends on it but no suite's index lists it",
                        image.package
                    ),
                }
            })?;
            let deb = archive::download(cache, st, progress)?;
            let more =
                deb::extract(&deb, staging.path()).map_err(|e| extract_err(&st.package, e))?;
            ex.vmlinuz |= more.vmlinuz;
            ex.files += more.files;
            ex.bytes += more.bytes;
            for r in more.module_releases {
                if !ex.module_releases.contains(&r) {
                    ex.module_releases.push(r);
                }
            }
            parts.push(st.clone());
        }
    }
    if !ex.vmlinuz {
        return Err(extract_err(
            &image.package,
            "no vmlinuz in the package (nor in its linux-binary-* dependency)".into(),
        ));
    }
    progress(&format!(
        "extracted {} files ({:.0} MB) in {:.1} s",
        ex.files,
        ex.bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    ));

    unpacked::finish(
        staging,
        release,
        image.info(),
        parts.iter().map(Stanza::info).collect(),
        &ex.module_releases,
        progress,
    )
}

// ---------------------------------------------------------------- queries and selection

/// What a `debian:` query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Query {
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

/// Parse the part after `debian:`.
fn parse_query(q: &str) -> Result<Query, String> {
    let q = q.trim();
    let q = q.strip_prefix("linux-image-").unwrap_or(q);
    let q = q.strip_suffix("-unsigned").unwrap_or(q);
    if q.is_empty() {
        return Err("nothing after `debian:`".into());
    }
    let (head, tail) = match q.split_once(':') {
        Some((h, t)) => (h, Some(t)),
        None => (q, None),
    };
    if SUITES.contains(&head) {
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
            SUITES.join(", ")
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
            "`{q}` is neither a version line (like 6.12) nor a kernel release (like 6.1.0-50-amd64)"
        ));
    }
    Ok(Query::Exact(q.to_string()))
}

/// Release named by an image package (`linux-image-X[-unsigned]`).
fn image_release(pkg: &str) -> Option<&str> {
    let r = pkg.strip_prefix("linux-image-")?;
    if r.ends_with("-dbg") || !r.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some(r.strip_suffix("-unsigned").unwrap_or(r))
}

/// True for the plain `-amd64` flavour (not -cloud-, -rt-).
fn is_generic_amd64(release: &str) -> bool {
    let Some(base) = release.strip_suffix("-amd64") else {
        return false;
    };
    base.replace("+deb", "")
        .bytes()
        .all(|c| c.is_ascii_digit() || c == b'.' || c == b'-')
}

/// Known version lines (major.minor) of generic amd64 kernels.
fn known_lines(index: &Index) -> Vec<String> {
    let mut lines: BTreeSet<(u64, u64)> = BTreeSet::new();
    for s in &index.stanzas {
        if let Some(r) = image_release(&s.package).filter(|r| is_generic_amd64(r)) {
            if let [a, b, ..] = version::release_components(r)[..] {
                lines.insert((a, b));
            }
        }
    }
    lines.into_iter().map(|(a, b)| format!("{a}.{b}")).collect()
}

/// Pick the image stanza for a release: highest Version; on a tie the plain
/// name over `-unsigned`, then the older suite.
fn select_exact<'a>(index: &'a Index, release: &str) -> Option<&'a Stanza> {
    let plain = format!("linux-image-{release}");
    let unsigned = format!("{plain}-unsigned");
    let suite_pos = |s: &str| SUITES.iter().position(|x| *x == s).unwrap_or(usize::MAX);
    index
        .stanzas
        .iter()
        .filter(|s| s.package == plain || s.package == unsigned)
        .max_by(|a, b| {
            version::compare(&a.version, &b.version)
                .then_with(|| (a.package == plain).cmp(&(b.package == plain)))
                .then_with(|| suite_pos(&b.suite).cmp(&suite_pos(&a.suite)))
        })
}

/// Newest generic amd64 release of a version line, by package Version.
fn select_line(index: &Index, line: &[u64]) -> Option<String> {
    index
        .stanzas
        .iter()
        .filter_map(|s| image_release(&s.package).map(|r| (r, s)))
        .filter(|(r, _)| is_generic_amd64(r) && version::line_matches(r, line))
        .max_by(|(_, a), (_, b)| version::compare(&a.version, &b.version))
        .map(|(r, _)| r.to_string())
}

/// Newest generic amd64 release in one suite (of one line, if given).
fn select_suite(index: &Index, suite: &str, line: Option<&[u64]>) -> Option<String> {
    index
        .stanzas
        .iter()
        .filter(|s| s.suite == suite)
        .filter_map(|s| image_release(&s.package).map(|r| (r, s)))
        .filter(|(r, _)| is_generic_amd64(r) && line.is_none_or(|l| version::line_matches(r, l)))
        .max_by(|(_, a), (_, b)| version::compare(&a.version, &b.version))
        .map(|(r, _)| r.to_string())
}

/// The package called `name`, preferring `suite` and `version`.
fn find_package<'a>(
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
mod tests {
    use super::*;
    use crate::kernel::archive::{parse_packages, tests::SAMPLE};
    use crate::kernel::version::{line_matches, release_components};

    fn sample_index() -> Index {
        let mut st = parse_packages(SAMPLE.as_bytes(), "bookworm").unwrap();
        st.extend(
            parse_packages(
                "Package: linux-image-7.2.13+deb14-amd64\nVersion: 7.2.13-1\n\
                 Depends: dracut | initramfs-tools (>= 0.120+deb8u2), linux-binary-7.2.13+deb14-amd64 (= 7.2.13-1), linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1)\n\
                 Filename: a.deb\nSHA256: 11\n\n\
                 Package: linux-image-7.3-amd64\nVersion: 7.3~rc7-1~exp1\nFilename: b.deb\nSHA256: 22\n\n\
                 Package: linux-image-7.2.9+deb14-amd64-unsigned\nVersion: 7.2.9-1\nFilename: c.deb\nSHA256: 33\n"
                    .as_bytes(),
                "sid",
            )
            .unwrap(),
        );
        Index {
            stanzas: st,
            failures: vec![],
        }
    }

    #[test]
    fn selects_newest_generic_of_a_line() {
        let idx = sample_index();
        assert_eq!(
            select_line(&idx, &[6, 1]).as_deref(),
            Some("6.1.0-50-amd64")
        );
        assert_eq!(select_line(&idx, &[6, 12]).as_deref(), Some("6.12.9-amd64"));
        assert_eq!(select_line(&idx, &[7]).as_deref(), Some("7.3-amd64"));
        assert_eq!(
            select_line(&idx, &[7, 2]).as_deref(),
            Some("7.2.13+deb14-amd64")
        );
        assert_eq!(select_line(&idx, &[9, 9, 9]), None);
        assert_eq!(known_lines(&idx), ["6.1", "6.12", "7.2", "7.3"]);
    }

    #[test]
    fn selects_exact_and_unsigned() {
        let idx = sample_index();
        let s = select_exact(&idx, "6.1.0-50-amd64").unwrap();
        assert_eq!(s.package, "linux-image-6.1.0-50-amd64");
        let s = select_exact(&idx, "7.2.9+deb14-amd64").unwrap();
        assert_eq!(s.package, "linux-image-7.2.9+deb14-amd64-unsigned");
        assert!(select_exact(&idx, "6.1.0-51-amd64").is_none());
        let meta = select_exact(&idx, "7.2.13+deb14-amd64").unwrap();
        let deps = meta.depends_names();
        assert!(deps.contains(&"linux-binary-7.2.13+deb14-amd64".to_string()));
        assert!(deps.contains(&"linux-modules-7.2.13+deb14-amd64".to_string()));
    }

    #[test]
    fn release_helpers() {
        assert!(is_generic_amd64("6.1.0-50-amd64"));
        assert!(is_generic_amd64("6.12.95+deb12-amd64"));
        assert!(is_generic_amd64("7.3-amd64"));
        assert!(!is_generic_amd64("6.1.0-50-cloud-amd64"));
        assert!(!is_generic_amd64("6.12.95+deb12-rt-amd64"));
        assert_eq!(release_components("6.12.95+deb12-amd64"), [6, 12, 95]);
        assert_eq!(release_components("5.10.0-32-amd64"), [5, 10, 0]);
        assert!(line_matches("6.1.0-50-amd64", &[6, 1]));
        assert!(!line_matches("6.12.95+deb12-amd64", &[6, 1]));
        assert_eq!(image_release("linux-image-amd64"), None);
        assert_eq!(
            image_release("linux-image-5.10.0-32-amd64-unsigned"),
            Some("5.10.0-32-amd64")
        );
    }

    #[test]
    fn query_parsing() {
        assert_eq!(parse_query("6.12"), Ok(Query::Line(vec![6, 12])));
        assert_eq!(
            parse_query("sid"),
            Ok(Query::Suite {
                suite: "sid".into(),
                line: None
            })
        );
        assert_eq!(
            parse_query("experimental:7.3"),
            Ok(Query::Suite {
                suite: "experimental".into(),
                line: Some(vec![7, 3])
            })
        );
        assert!(parse_query("stretch:4.9").is_err());
        assert!(parse_query("sid:x").is_err());
        assert_eq!(parse_query("5.10"), Ok(Query::Line(vec![5, 10])));
        assert_eq!(
            parse_query("6.1.0-50-amd64"),
            Ok(Query::Exact("6.1.0-50-amd64".into()))
        );
        assert_eq!(
            parse_query("linux-image-5.10.0-32-amd64-unsigned"),
            Ok(Query::Exact("5.10.0-32-amd64".into()))
        );
        assert_eq!(
            parse_query("7.2.13+deb14-amd64"),
            Ok(Query::Exact("7.2.13+deb14-amd64".into()))
        );
        assert!(parse_query("").is_err());
        assert!(parse_query("latest").is_err());
        assert!(parse_query("6..1").is_err());
        assert!(parse_query("6.1/../x").is_err());
    }

    #[test]
    fn generic_releases_from_an_index() {
        let text = "Package: linux-image-6.12.57+deb12-amd64\nVersion: 6.12.57-1~bpo12+1\nFilename: a.deb\nSHA256: 1\n\n\
                    Package: linux-image-6.12.57+deb12-amd64-unsigned\nVersion: 6.12.57-1~bpo12+1\nFilename: b.deb\nSHA256: 2\n\n\
                    Package: linux-image-6.12.57+deb12-cloud-amd64\nVersion: 6.12.57-1~bpo12+1\nFilename: c.deb\nSHA256: 3\n\n\
                    Package: linux-image-6.12.43+deb12-amd64\nVersion: 6.12.43-1~bpo12+1\nFilename: d.deb\nSHA256: 4\n";
        let index = Index {
            stanzas: parse_packages(text.as_bytes(), "bookworm-backports").unwrap(),
            failures: vec![],
        };
        let r = Debian.generic_releases(&index);
        let names: Vec<&str> = r.iter().map(|c| c.release.as_str()).collect();
        assert_eq!(names, ["6.12.43+deb12-amd64", "6.12.57+deb12-amd64"]);
        assert_eq!(r[1].package.name, "linux-image-6.12.57+deb12-amd64");
        assert_eq!(r[1].spec(), "debian:6.12.57+deb12-amd64");
    }

    #[test]
    fn error_messages_give_hints() {
        let e = KernelError::from(DebianError::NoSuchPackage {
            query: "debian:9.9.9".into(),
            known: vec!["5.10".into(), "6.1".into(), "6.12".into()],
        });
        let m = e.to_string();
        assert!(
            m.contains("debian:9.9.9") && m.contains("5.10, 6.1, 6.12"),
            "{m}"
        );
        assert!(e.is_user_error());
        let e = KernelError::from(ArchiveError::Checksum {
            file: "x".into(),
            expected: "a".into(),
            actual: "b".into(),
        });
        assert!(!e.is_user_error());
    }
}

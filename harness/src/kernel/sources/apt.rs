//! `NAME:QUERY`: kernels packaged in an apt repository (Debian's, which
//! `debian.rs` describes; Ubuntu's and any `[[repository]]` /
//! `--repository`, see [`repository`](crate::kernel::repository)), found in
//! its verified index ([`archive`](crate::kernel::archive)), checked against
//! it, unpacked into the cache (`kernels/RELEASE/`, or `kernels/NAME/RELEASE/`
//! for a source cached by name, see [`unpacked`](crate::kernel::unpacked))
//! and walked in version order by `natvet bisect`.
//!
//! A query is an exact release (`6.1.0-57-amd64`, `6.8.0-31-generic`), a
//! version line (`6.12`: its newest generic kernel in any suite, security
//! suites included), or a suite (`sid`, `bookworm:6.1`, `noble`: its
//! newest, of that line; a suite `X` takes in `X-security` and
//! `X-updates`).

mod select;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use select::{find_package, Query, Selector};

use super::{malformed, Candidate, Candidates, Catalogue, KernelSource, KernelSpec, Lineup};
use crate::kernel::archive::{self, ArchiveError, Index, Stanza};
use crate::kernel::cache::{Cache, Entry, MarkerFile, Staging};
use crate::kernel::error::{ErrorClass, KernelError, SourceError};
use crate::kernel::repository::{Naming, Repository};
use crate::kernel::{deb, unpacked, version, Kernel};

/// What an apt repository's source could not find or answer.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error("no {repo} kernel package matches '{query}'; known lines: {} — give one of those (e.g. {repo}:{}) or an exact release such as {example} (`natvet kernels list --all` shows the releases on offer)", .known.join(", "), .known.last().map(String::as_str).unwrap_or("6.12"))]
    NoSuchPackage {
        repo: String,
        query: String,
        known: Vec<String>,
        example: String,
    },

    /// A bisection endpoint that names no package.
    #[error("no {repo} kernel package matches '{spec}'; known lines: {} (`natvet kernels list --all` shows the releases on offer)", .known.join(", "))]
    NoEndpoint {
        repo: String,
        spec: String,
        known: Vec<String>,
    },

    /// An expired suite could hold the answer.
    #[error("cannot answer '{spec}': {}", .reasons.join("; "))]
    Stale { spec: String, reasons: Vec<String> },

    #[error("{package} {version} ({suite}) comes with {part} in the index, but not at version {version}: the repository is inconsistent; retry later")]
    MissingPart {
        package: String,
        version: String,
        suite: String,
        part: String,
    },
}

impl SourceError for AptError {
    fn class(&self) -> ErrorClass {
        match self {
            AptError::NoSuchPackage { .. } | AptError::NoEndpoint { .. } => ErrorClass::BadInput,
            AptError::Stale { .. } | AptError::MissingPart { .. } => ErrorClass::Infrastructure,
        }
    }
}

/// Which repository a source reads.
pub(super) enum Which {
    /// One looked up each time the source reads it (where it is can depend
    /// on the host's apt sources).
    LookedUp(fn() -> Result<Repository, KernelError>),
    /// A configured one (`[[repository]]`, `--repository`): read as given.
    Configured(Repository),
}

/// The kernels of one apt repository.
pub(crate) struct AptSource {
    pub(super) name: &'static str,
    pub(super) prefix: &'static str,
    pub(super) forms: &'static [&'static str],
    pub(super) endpoint: &'static str,
    /// Suites a `NAME:SUITE` query may name.
    pub(super) suites: Vec<String>,
    pub(super) naming: Naming,
    pub(super) which: Which,
    /// Its packages and kernels are cached below its name (`kernels/NAME/`);
    /// else at the cache root (`kernels/`).
    pub(super) cache_by_name: bool,
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

impl AptSource {
    /// The source of a configured repository (one per process: its names
    /// live as long as the process).
    pub(super) fn of(repo: Repository) -> AptSource {
        let n = &repo.name;
        let forms: Vec<&'static str> = vec![
            leak(format!("{n}:LINE")),
            leak(format!("{n}:RELEASE")),
            leak(format!("{n}:SUITE[:LINE]")),
        ];
        AptSource {
            name: leak(n.clone()),
            prefix: leak(format!("{n}:")),
            forms: Box::leak(forms.into_boxed_slice()),
            endpoint: leak(format!("{n}:RELEASE")),
            suites: repo
                .archives
                .iter()
                .flat_map(|a| a.suites.iter().cloned())
                .collect(),
            naming: repo.naming.clone(),
            which: Which::Configured(repo),
            cache_by_name: true,
        }
    }

    fn repository(&self) -> Result<Cow<'_, Repository>, KernelError> {
        match &self.which {
            Which::LookedUp(lookup) => Ok(Cow::Owned(lookup()?)),
            Which::Configured(r) => Ok(Cow::Borrowed(r)),
        }
    }

    /// Where its packages and kernels are cached, below the cache root.
    fn cache_sub(&self, what: &str) -> String {
        if self.cache_by_name {
            format!("{what}/{}", self.name)
        } else {
            what.to_string()
        }
    }

    fn kernels_dir(&self, cache: &Cache) -> PathBuf {
        cache.root().join(self.cache_sub("kernels"))
    }

    fn load_index(&self, cache: &Cache, progress: &dyn Fn(&str)) -> Result<Index, KernelError> {
        archive::load_index(&*self.repository()?, cache, progress)
    }

    /// What it selects its kernels from an index by.
    fn selector(&self) -> Selector<'_> {
        Selector {
            naming: &self.naming,
            suites: &self.suites,
        }
    }

    fn query(&self, arg: &str) -> Result<Query, String> {
        self.selector().query(self.name, arg)
    }

    fn cached(&self, cache: &Cache, release: &str, spec: &str) -> Option<Kernel> {
        unpacked::load(&self.kernels_dir(cache).join(release), spec)
    }
}

impl KernelSource for AptSource {
    fn name(&self) -> &'static str {
        self.name
    }

    fn forms(&self) -> &'static [&'static str] {
        self.forms
    }

    fn prefix(&self) -> &'static str {
        self.prefix
    }

    fn claim(&self, spec: &str, modules: Option<&Path>) -> Option<Result<String, String>> {
        let (scheme, rest) = super::scheme_of(spec)?;
        if scheme != self.name {
            return None;
        }
        if modules.is_some() {
            return Some(Err(
                "a module folder only goes with a local kernel image".into()
            ));
        }
        Some(self.query(rest).map(|_| rest.trim().to_string()))
    }

    fn resolve(
        &self,
        spec: &KernelSpec,
        cache: &Cache,
        progress: &dyn Fn(&str),
    ) -> Result<Kernel, KernelError> {
        self.resolve_query(spec.arg(), &spec.to_string(), cache, progress)
    }

    fn lookup(
        &self,
        spec: &KernelSpec,
        cache: &Cache,
        progress: &dyn Fn(&str),
    ) -> Result<(Option<String>, bool), KernelError> {
        let index = self.load_index(cache, progress)?;
        let q = self
            .query(spec.arg())
            .map_err(|e| malformed(&spec.to_string(), e))?;
        let release = decide(&index, &spec.to_string(), progress, |i| {
            self.selector().select(i, &q)
        })?;
        let cached = release
            .as_ref()
            .is_some_and(|r| unpacked::is_complete(&self.kernels_dir(cache).join(r)));
        Ok((release, cached))
    }

    fn catalogue(
        &self,
        cache: &Cache,
        progress: &dyn Fn(&str),
    ) -> Result<Option<Catalogue>, KernelError> {
        let repo = self.repository()?;
        // A configured (shipped) repository whose keyring is not installed
        // is left out of the list (said), not an error of `kernels list --all`.
        let missing: Vec<String> = repo
            .archives
            .iter()
            .filter_map(|a| archive::missing_keyring(&repo, a))
            .map(|k| k.display().to_string())
            .collect();
        if matches!(self.which, Which::Configured(_)) && !missing.is_empty() {
            return Ok(Some(Catalogue {
                heading: repo.description.clone(),
                kernels: vec![],
                notes: vec![format!(
                    "not read: its keyring {} is not installed (ubuntu-keyring ships Ubuntu's; or give keyring=PATH)",
                    missing.join(", ")
                )],
            }));
        }
        let index = archive::load_index(&repo, cache, progress)?;
        let mut kernels = self.selector().one_per_release(&index, self.prefix);
        kernels.sort_by(|a, b| version::compare(&b.package.version, &a.package.version));
        Ok(Some(Catalogue {
            heading: format!(
                "{} (generic {} kernels, newest first)",
                repo.description, self.naming.flavour
            ),
            kernels,
            notes: index
                .expired
                .iter()
                .map(|e| format!("not listed: {}", e.reason))
                .chain(repo.notes.iter().cloned())
                .collect(),
        }))
    }

    fn candidates(&self) -> Option<&dyn Candidates> {
        Some(self)
    }
}

impl Candidates for AptSource {
    fn endpoint_form(&self) -> &'static str {
        self.endpoint
    }

    fn candidate_spec(&self, release: &str) -> String {
        format!("{}{release}", self.prefix)
    }

    fn exact_release(&self, spec: &KernelSpec) -> Option<String> {
        match self.query(spec.arg()) {
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
        let index = self.load_index(cache, progress)?;
        let names = |i: &Index| -> Vec<(String, String)> {
            self.selector()
                .generic_releases(i, self.prefix)
                .into_iter()
                .map(|c| (c.release, c.package.version))
                .collect()
        };
        decide(&index, &good.to_string(), progress, names)?;
        Ok(Lineup {
            good: self.endpoint(&index, good)?,
            bad: bad.map(|b| self.endpoint(&index, b)).transpose()?,
            releases: self.selector().generic_releases(&index, self.prefix),
        })
    }
}

/// Answer `f` from the verified suites. An expired suite is refused, but its
/// stale (authentic) content says whether it could change the answer: if it
/// could, natvet cannot answer (exit 3); if not, the answer stands, with a note.
fn decide<T: PartialEq>(
    index: &Index,
    spec: &str,
    progress: &dyn Fn(&str),
    f: impl Fn(&Index) -> T,
) -> Result<T, KernelError> {
    let answer = f(index);
    if index.expired.is_empty() {
        return Ok(answer);
    }
    if f(&index.with_stale()) == answer {
        let suites: Vec<&str> = index.expired.iter().map(|e| e.suite.as_str()).collect();
        progress(&format!(
            "note: the Release of {} expired (refused); their last copies hold nothing that would change {spec}",
            suites.join(", ")
        ));
        return Ok(answer);
    }
    // Name the suites that could change it.
    let reasons = index
        .expired
        .iter()
        .filter(|e| {
            let one = Index {
                stanzas: index.stanzas.iter().chain(&e.stale).cloned().collect(),
                ..Default::default()
            };
            f(&one) != answer
        })
        .map(|e| e.reason.clone())
        .collect();
    Err(AptError::Stale {
        spec: spec.to_string(),
        reasons,
    }
    .into())
}

/// True when `e` says only that the network could not be reached (not
/// that something failed verification).
fn unreachable(e: &KernelError) -> bool {
    match e {
        KernelError::Source(s) => {
            let s: &(dyn std::error::Error + 'static) = &**s;
            matches!(
                s.downcast_ref::<ArchiveError>(),
                Some(ArchiveError::Download { .. })
            )
        }
        _ => false,
    }
}
impl AptSource {
    /// `QUERY`: the kernel the index names, from the cache or fetched,
    /// verified and unpacked into it.
    fn resolve_query(
        &self,
        query: &str,
        spec: &str,
        cache: &Cache,
        progress: &dyn Fn(&str),
    ) -> Result<Kernel, KernelError> {
        let q = self
            .query(query)
            .map_err(|reason| malformed(spec, reason))?;
        // An exact release already in the cache needs no network at all.
        if let Query::Exact(rel) = &q {
            if let Some(k) = self.cached(cache, rel, spec) {
                return Ok(k);
            }
        }
        let index = match self.load_index(cache, progress) {
            Ok(i) => i,
            // Only an unreachable network falls back to the cache; a
            // failed verification never does.
            Err(e) if unreachable(&e) => {
                if let Query::Line(line) = &q {
                    if let Some(k) = self.newest_cached_of_line(cache, line, spec) {
                        progress(&format!(
                            "package index unavailable ({e}); using cached kernel {}",
                            k.release.as_deref().unwrap_or("?")
                        ));
                        return Ok(k);
                    }
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let not_found = || {
            if !index.failures.is_empty() {
                KernelError::from(ArchiveError::Download {
                    what: format!("the package indexes of {}", index.failures.join(", ")),
                    reason: format!("could not check them for '{query}'"),
                })
            } else {
                KernelError::from(AptError::NoSuchPackage {
                    repo: self.name.to_string(),
                    query: spec.to_string(),
                    known: self.selector().known_lines(&index),
                    example: self.example(&index),
                })
            }
        };
        let release = decide(&index, spec, progress, |i| self.selector().select(i, &q))?
            .ok_or_else(not_found)?;
        let image = self
            .selector()
            .select_exact(&index, &release)
            .ok_or_else(not_found)?;
        Entry::new(cache.dir(&self.cache_sub("kernels"))?, release.clone()).load_or_publish(
            |dir| unpacked::load(dir, spec),
            |staging| self.install(staging, cache, &index, &release, image, progress),
            progress,
        )
    }

    /// An exact release for messages.
    fn example(&self, index: &Index) -> String {
        self.selector()
            .one_per_release(index, self.prefix)
            .into_iter()
            .map(|c| c.spec())
            .max()
            .unwrap_or_else(|| format!("{}6.1.0-50-amd64", self.prefix))
    }

    /// The newest complete cached kernel of a line, for when the index cannot be read.
    fn newest_cached_of_line(&self, cache: &Cache, line: &[u64], spec: &str) -> Option<Kernel> {
        unpacked::releases_in(&self.kernels_dir(cache))
            .into_iter()
            .filter(|r| self.naming.is_generic(r) && version::line_matches(r, line))
            .filter_map(|r| self.cached(cache, &r, spec))
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

    /// Download the packages of `release` (the image and the parts the
    /// index has at its version) and unpack them into `staging`; the
    /// marker to publish.
    fn install(
        &self,
        staging: &Staging,
        cache: &Cache,
        index: &Index,
        release: &str,
        image: &Stanza,
        progress: &dyn Fn(&str),
    ) -> Result<MarkerFile, KernelError> {
        let debs = self.cache_sub("debs");
        let extract_err = |what: &str, reason: String| KernelError::Extract {
            what: what.to_string(),
            reason,
            cache_hint: cache.root().join(&debs),
        };
        let mut parts = vec![image.clone()];
        for t in &self.naming.parts {
            let name = Naming::name(t, release);
            if let Some(st) = find_package(index, &name, &image.suite, &image.version) {
                if st.version != image.version {
                    return Err(AptError::MissingPart {
                        package: image.package.clone(),
                        version: image.version.clone(),
                        suite: image.suite.clone(),
                        part: name,
                    }
                    .into());
                }
                parts.push(st.clone());
            }
        }
        let mut ex = deb::Extracted::default();
        let mut files = Vec::new();
        for p in &parts {
            files.push((archive::download(cache, &debs, p, progress)?, p));
        }
        let t0 = Instant::now();
        for (path, p) in &files {
            let more =
                deb::extract(path, staging.path()).map_err(|e| extract_err(&p.package, e))?;
            ex.merge(more);
        }
        if !ex.vmlinuz {
            return Err(extract_err(
                &image.package,
                format!(
                    "no kernel image in {}",
                    parts
                        .iter()
                        .map(|p| p.package.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
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

    /// The package a spec names today (an exact release, the newest of a
    /// line, the newest of a suite).
    fn endpoint(&self, index: &Index, spec: &KernelSpec) -> Result<Candidate, KernelError> {
        let q = self
            .query(spec.arg())
            .map_err(|e| malformed(&spec.to_string(), e))?;
        let selector = self.selector();
        let release = selector.select(index, &q).unwrap_or_default();
        let stanza =
            selector
                .select_exact(index, &release)
                .ok_or_else(|| AptError::NoEndpoint {
                    repo: self.name.to_string(),
                    spec: spec.to_string(),
                    known: selector.known_lines(index),
                })?;
        Ok(Candidate::new(
            self.candidate_spec(&release),
            release,
            stanza.info(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::select::tests::sample_index;
    use super::*;
    use crate::kernel::archive::{parse_packages, Expired};

    fn deb() -> AptSource {
        crate::kernel::sources::debian::source()
    }

    #[test]
    fn an_expired_suite_refuses_only_the_answers_it_could_change() {
        let mut idx = sample_index();
        let (sid, rest): (Vec<Stanza>, Vec<Stanza>) =
            idx.stanzas.drain(..).partition(|s| s.suite == "sid");
        idx.stanzas = rest;
        idx.expired.push(Expired {
            suite: "sid".into(),
            reason: "debian sid: its Release expired".into(),
            stale: sid,
        });
        let d = deb();
        let notes = std::cell::RefCell::new(Vec::new());
        let note = |m: &str| notes.borrow_mut().push(m.to_string());
        // debian:6.1 cannot be changed by sid: answered, with a note.
        let q = d.query("6.1").unwrap();
        let r = decide(&idx, "debian:6.1", &note, |i| d.selector().select(i, &q)).unwrap();
        assert_eq!(r.as_deref(), Some("6.1.0-57-amd64"));
        assert!(notes.borrow()[0].contains("expired"));
        // debian:sid and debian:7.2 could: refused.
        for spec in ["sid", "7.2"] {
            let q = d.query(spec).unwrap();
            let e = decide(&idx, spec, &note, |i| d.selector().select(i, &q)).unwrap_err();
            assert!(
                !e.is_user_error() && e.to_string().contains("expired"),
                "{e}"
            );
        }
    }

    #[test]
    fn ubuntu_naming() {
        let repo = Repository {
            name: "ubuntu".into(),
            description: "Ubuntu".into(),
            archives: vec![crate::kernel::repository::Archive {
                uri: "http://x".into(),
                suites: vec![
                    "noble".into(),
                    "noble-updates".into(),
                    "noble-security".into(),
                ],
                components: vec!["main".into()],
                keys: Default::default(),
                check_valid_until: true,
            }],
            naming: Naming::ubuntu(),
            allow_unsigned: false,
            notes: vec![],
        };
        let u = AptSource::of(repo);
        let text = "Package: linux-image-6.8.0-31-generic\nVersion: 6.8.0-31.31\nFilename: a.deb\nSHA256: 1\n\n\
                    Package: linux-image-unsigned-6.8.0-31-generic\nVersion: 6.8.0-31.31\nFilename: b.deb\nSHA256: 2\n\n\
                    Package: linux-modules-6.8.0-31-generic\nVersion: 6.8.0-31.31\nFilename: c.deb\nSHA256: 3\n\n\
                    Package: linux-image-6.8.0-1009-aws\nVersion: 6.8.0-1009.9\nFilename: d.deb\nSHA256: 4\n";
        let mut stanzas =
            parse_packages(text.as_bytes(), "noble", &Naming::ubuntu().prefixes()).unwrap();
        stanzas.extend(
            parse_packages(
                "Package: linux-image-unsigned-6.8.0-40-generic\nVersion: 6.8.0-40.40\nFilename: e.deb\nSHA256: 5\n"
                    .as_bytes(),
                "noble-security",
                &Naming::ubuntu().prefixes(),
            )
            .unwrap(),
        );
        let idx = Index {
            stanzas,
            ..Default::default()
        };
        assert_eq!(
            u.selector().select_line(&idx, &[6, 8]).as_deref(),
            Some("6.8.0-40-generic")
        );
        assert_eq!(
            u.selector().select_suite(&idx, "noble", None).as_deref(),
            Some("6.8.0-40-generic")
        );
        assert_eq!(
            u.selector()
                .select_exact(&idx, "6.8.0-31-generic")
                .unwrap()
                .package,
            "linux-image-6.8.0-31-generic"
        );
        assert_eq!(u.selector().known_lines(&idx), ["6.8"]);
        assert_eq!(
            u.query("6.8.0-31-generic"),
            Ok(Query::Exact("6.8.0-31-generic".into()))
        );
        assert_eq!(
            u.query("linux-image-unsigned-6.8.0-31-generic"),
            Ok(Query::Exact("6.8.0-31-generic".into()))
        );
        assert!(matches!(u.query("noble:6.8"), Ok(Query::Suite { .. })));
        assert!(u.query("bookworm:6.1").is_err());
        assert_eq!(
            u.candidate_spec("6.8.0-31-generic"),
            "ubuntu:6.8.0-31-generic"
        );
        let releases: Vec<String> = u
            .selector()
            .generic_releases(&idx, u.prefix)
            .into_iter()
            .map(|c| c.release)
            .collect();
        assert_eq!(releases, ["6.8.0-31-generic", "6.8.0-40-generic"]);
    }

    #[test]
    fn error_messages_give_hints() {
        let e = KernelError::from(AptError::NoSuchPackage {
            repo: "debian".into(),
            query: "debian:9.9.9".into(),
            known: vec!["5.10".into(), "6.1".into(), "6.12".into()],
            example: "debian:6.1.0-50-amd64".into(),
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

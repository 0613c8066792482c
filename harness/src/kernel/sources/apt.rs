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

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

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

    fn query(&self, arg: &str) -> Result<Query, String> {
        parse_query(arg, self.name, &self.suites, &self.naming)
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
        let release = decide(&index, &spec.to_string(), progress, |i| self.select(i, &q))?;
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
        let mut kernels = self.one_per_release(&index);
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
            self.generic_releases(i)
                .into_iter()
                .map(|c| (c.release, c.package.version))
                .collect()
        };
        decide(&index, &good.to_string(), progress, names)?;
        Ok(Lineup {
            good: self.endpoint(&index, good)?,
            bad: bad.map(|b| self.endpoint(&index, b)).transpose()?,
            releases: self.generic_releases(&index),
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
    /// The generic release a stanza is the image package of; None for other
    /// packages, other flavours, and metapackages over another release's
    /// image (`linux-image-6.12-amd64` -> `linux-image-6.12.117+deb12-amd64`).
    fn generic_image<'a>(&self, s: &'a Stanza) -> Option<&'a str> {
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
    fn select(&self, index: &Index, q: &Query) -> Option<String> {
        match q {
            Query::Exact(r) => self.select_exact(index, r).map(|_| r.clone()),
            Query::Line(line) => self.select_line(index, line),
            Query::Suite { suite, line } => self.select_suite(index, suite, line.as_deref()),
        }
    }

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
                    known: self.known_lines(&index),
                    example: self.example(&index),
                })
            }
        };
        let release =
            decide(&index, spec, progress, |i| self.select(i, &q))?.ok_or_else(not_found)?;
        let image = self.select_exact(&index, &release).ok_or_else(not_found)?;
        Entry::new(cache.dir(&self.cache_sub("kernels"))?, release.clone()).load_or_publish(
            |dir| unpacked::load(dir, spec),
            |staging| self.install(staging, cache, &index, &release, image, progress),
            progress,
        )
    }

    /// An exact release for messages.
    fn example(&self, index: &Index) -> String {
        self.one_per_release(index)
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

    /// Every generic image release in the index, one entry each (its
    /// highest package version), in index order.
    fn one_per_release(&self, index: &Index) -> Vec<Candidate> {
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
                    self.candidate_spec(r),
                    r.to_string(),
                    best.info(),
                ));
            }
        }
        out
    }

    /// Every generic image release, one entry per release, in package
    /// version order, oldest first.
    fn generic_releases(&self, index: &Index) -> Vec<Candidate> {
        let mut out = self.one_per_release(index);
        out.sort_by(|a, b| {
            version::compare(&a.package.version, &b.package.version)
                .then_with(|| a.release.cmp(&b.release))
        });
        out
    }

    /// The package a spec names today (an exact release, the newest of a
    /// line, the newest of a suite).
    fn endpoint(&self, index: &Index, spec: &KernelSpec) -> Result<Candidate, KernelError> {
        let q = self
            .query(spec.arg())
            .map_err(|e| malformed(&spec.to_string(), e))?;
        let release = self.select(index, &q).unwrap_or_default();
        let stanza = self
            .select_exact(index, &release)
            .ok_or_else(|| AptError::NoEndpoint {
                repo: self.name.to_string(),
                spec: spec.to_string(),
                known: self.known_lines(index),
            })?;
        Ok(Candidate::new(
            self.candidate_spec(&release),
            release,
            stanza.info(),
        ))
    }

    /// Known version lines (major.minor) of generic kernels.
    fn known_lines(&self, index: &Index) -> Vec<String> {
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
    fn select_exact<'a>(&self, index: &'a Index, release: &str) -> Option<&'a Stanza> {
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
    fn select_line(&self, index: &Index, line: &[u64]) -> Option<String> {
        self.newest(index, |_, r| version::line_matches(r, line))
    }

    /// Newest generic release in one suite (with its -security and
    /// -updates suites), of one line if given.
    fn select_suite(&self, index: &Index, suite: &str, line: Option<&[u64]>) -> Option<String> {
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
    use crate::kernel::archive::Expired;
    use crate::kernel::archive::{parse_packages, tests::prefixes, tests::SAMPLE};
    use crate::kernel::version::{line_matches, release_components};

    fn deb() -> AptSource {
        crate::kernel::sources::debian::source()
    }

    fn sample_index() -> Index {
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
        let d = deb();
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
        let d = deb();
        let s = d.select_exact(&idx, "6.1.0-50-amd64").unwrap();
        assert_eq!(s.package, "linux-image-6.1.0-50-amd64");
        let s = d.select_exact(&idx, "6.1.0-57-amd64").unwrap();
        assert_eq!(s.package, "linux-image-6.1.0-57-amd64");
        let s = d.select_exact(&idx, "7.2.9+deb14-amd64").unwrap();
        assert_eq!(s.package, "linux-image-7.2.9+deb14-amd64-unsigned");
        assert!(d.select_exact(&idx, "6.1.0-51-amd64").is_none());
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
        let r = decide(&idx, "debian:6.1", &note, |i| d.select(i, &q)).unwrap();
        assert_eq!(r.as_deref(), Some("6.1.0-57-amd64"));
        assert!(notes.borrow()[0].contains("expired"));
        // debian:sid and debian:7.2 could: refused.
        for spec in ["sid", "7.2"] {
            let q = d.query(spec).unwrap();
            let e = decide(&idx, spec, &note, |i| d.select(i, &q)).unwrap_err();
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
            u.select_line(&idx, &[6, 8]).as_deref(),
            Some("6.8.0-40-generic")
        );
        assert_eq!(
            u.select_suite(&idx, "noble", None).as_deref(),
            Some("6.8.0-40-generic")
        );
        assert_eq!(
            u.select_exact(&idx, "6.8.0-31-generic").unwrap().package,
            "linux-image-6.8.0-31-generic"
        );
        assert_eq!(u.known_lines(&idx), ["6.8"]);
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
            .generic_releases(&idx)
            .into_iter()
            .map(|c| c.release)
            .collect();
        assert_eq!(releases, ["6.8.0-31-generic", "6.8.0-40-generic"]);
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
        let d = deb();
        let p = |q: &str| d.query(q);
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
        let r = deb().generic_releases(&index);
        let names: Vec<&str> = r.iter().map(|c| c.release.as_str()).collect();
        assert_eq!(names, ["6.12.43+deb12-amd64", "6.12.57+deb12-amd64"]);
        assert_eq!(r[1].package.name, "linux-image-6.12.57+deb12-amd64");
        assert_eq!(r[1].spec(), "debian:6.12.57+deb12-amd64");
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

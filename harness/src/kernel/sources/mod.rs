//! Where kernels come from. Each source is one file behind [`KernelSource`]:
//! it claims the specs written its way (`debian:6.12`, `build:PATH`, a path
//! to an image), resolves them to a bootable [`Kernel`] (fetching,
//! verifying and installing into the cache as it must), says what a spec
//! names today for `natvet kernels list`, lists what it offers for
//! `natvet kernels list --all`, and, when its kernels come in an order
//! natvet knows, gives `natvet bisect` its [`Candidates`].
//!
//! Adding a source: a file here implementing [`KernelSource`] and one line
//! in [`sources`].

mod apt;
mod build_tree;
pub(crate) mod debian;
mod local;
mod package_file;

pub use apt::AptError;
pub(crate) use build_tree::{config_has_modules, BUILD_BZIMAGE};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::error::KernelError;
use super::{Cache, Kernel, PackageInfo};

/// Every source, in the order the spec parser asks them (and their spec
/// forms are listed in messages): Debian's archive, the configured apt
/// repositories (`[[repository]]`, `--repository`), build trees, package
/// files (`.deb`), and the
/// local image, which takes whatever names no other source, so it comes last.
fn sources() -> &'static [&'static dyn KernelSource] {
    static SOURCES: OnceLock<Vec<&'static dyn KernelSource>> = OnceLock::new();
    SOURCES.get_or_init(|| {
        let leak = |s: apt::AptSource| -> &'static dyn KernelSource { Box::leak(Box::new(s)) };
        let mut all = vec![leak(debian::source())];
        for r in super::repository::configured() {
            all.push(leak(apt::AptSource::of(r.clone())));
        }
        all.push(&build_tree::BuildTree);
        all.push(&package_file::PackageFiles);
        all.push(&local::LocalImage);
        all
    })
}

/// A kind of kernel source.
pub trait KernelSource: Sync {
    /// The source's name, for debugging and comparing specs (`debian`).
    fn name(&self) -> &'static str;

    /// How its specs are written, for messages about specs
    /// (`debian:LINE (e.g. debian:6.12)`).
    fn forms(&self) -> &'static [&'static str];

    /// What goes before the argument when a spec is written out
    /// (`debian:`; nothing for a path).
    fn prefix(&self) -> &'static str;

    /// Claim a spec (trimmed, not empty): None when it is not written this
    /// source's way; else the argument to keep (`6.12` of `debian:6.12`),
    /// or why it is malformed. `modules` is the module folder given with it
    /// (`--modules`), which most sources refuse.
    fn claim(&self, spec: &str, modules: Option<&Path>) -> Option<Result<String, String>>;

    /// Turn a spec into a bootable kernel: fetch, verify and install into
    /// the cache what it needs (nothing when it is there already).
    fn resolve(
        &self,
        spec: &KernelSpec,
        cache: &Cache,
        progress: &dyn Fn(&str),
    ) -> Result<Kernel, KernelError>;

    /// What a spec names today, without fetching anything: its release, if
    /// it can be told, and whether the kernel is ready (cached, on disk).
    fn lookup(
        &self,
        spec: &KernelSpec,
        cache: &Cache,
        progress: &dyn Fn(&str),
    ) -> Result<(Option<String>, bool), KernelError>;

    /// The kernels this source offers, for `natvet kernels list --all`;
    /// None for a source that offers none of its own (a path names one).
    fn catalogue(
        &self,
        _cache: &Cache,
        _progress: &dyn Fn(&str),
    ) -> Result<Option<Catalogue>, KernelError> {
        Ok(None)
    }

    /// The kernels `natvet bisect` can walk in order, when this source's
    /// kernels have an order natvet knows (packages by version). A kernel of
    /// a source without one (a local image, a build tree) can only be the
    /// bad end of a bisection.
    fn candidates(&self) -> Option<&dyn Candidates> {
        None
    }
}

/// A source whose kernels come in an order natvet knows, so that
/// `natvet bisect` can list the ones between two endpoints.
pub trait Candidates: Sync {
    /// How a passing kernel of this source is given as `--good`, for
    /// messages (`debian:RELEASE`).
    fn endpoint_form(&self) -> &'static str;

    /// How one of this source's releases is written as a spec
    /// (`debian:6.1.0-50-amd64`).
    fn candidate_spec(&self, release: &str) -> String;

    /// The release a spec names exactly, known without looking anything up
    /// (`debian:6.1.0-50-amd64`); None when finding it takes the source's
    /// index (`debian:6.12`).
    fn exact_release(&self, spec: &KernelSpec) -> Option<String>;

    /// The kernels `good` (and `bad`, when it is this source's too) name
    /// today, and every kernel the source offers, one per release, in the
    /// source's order, oldest first.
    fn lineup(
        &self,
        good: &KernelSpec,
        bad: Option<&KernelSpec>,
        cache: &Cache,
        progress: &dyn Fn(&str),
    ) -> Result<Lineup, KernelError>;
}

/// A kernel package a source offers: a line of `natvet kernels list --all`,
/// a candidate of `natvet bisect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    spec: String,
    /// `uname -r`, e.g. `6.12.73+deb12-amd64`.
    pub release: String,
    pub package: PackageInfo,
}

impl Candidate {
    pub fn new(spec: String, release: String, package: PackageInfo) -> Candidate {
        Candidate {
            spec,
            release,
            package,
        }
    }

    /// The spec that names this kernel (`debian:6.12.73+deb12-amd64`).
    pub fn spec(&self) -> String {
        self.spec.clone()
    }
}

/// What a source gives `natvet bisect`: the endpoints and every candidate.
#[derive(Debug, Clone)]
pub struct Lineup {
    pub good: Candidate,
    /// None when the bad end is not this source's.
    pub bad: Option<Candidate>,
    /// One per release, oldest first.
    pub releases: Vec<Candidate>,
}

/// The kernels one source offers, newest first, under a heading.
#[derive(Debug, Clone)]
pub struct Catalogue {
    pub heading: String,
    pub kernels: Vec<Candidate>,
    /// What the list leaves out, and why (an expired suite, no security archive).
    pub notes: Vec<String>,
}

impl fmt::Display for Catalogue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:", self.heading)?;
        for k in &self.kernels {
            let p = &k.package;
            writeln!(
                f,
                "  {:<28} {} {} ({})",
                k.release, p.name, p.version, p.suite
            )?;
        }
        for n in &self.notes {
            writeln!(f, "  ({n})")?;
        }
        Ok(())
    }
}

/// What kernel the user asked for: a spec one source claimed.
#[derive(Clone)]
pub struct KernelSpec {
    source: &'static dyn KernelSource,
    arg: String,
    modules: Option<PathBuf>,
}

impl KernelSpec {
    /// Parse a spec (`debian:6.12`, `build:PATH`, `./bzImage`, `local:PATH`)
    /// with the module folder given with it, asking each source in turn.
    pub fn parse(spec: &str, modules: Option<PathBuf>) -> Result<KernelSpec, KernelError> {
        let s = spec.trim();
        if s.is_empty() {
            return Err(malformed(spec, "it is empty".into()));
        }
        for &source in sources() {
            match source.claim(s, modules.as_deref()) {
                None => continue,
                Some(Ok(arg)) => {
                    return Ok(KernelSpec {
                        source,
                        arg,
                        modules,
                    })
                }
                Some(Err(reason)) => return Err(malformed(spec, reason)),
            }
        }
        Err(match scheme_of(s) {
            Some((scheme, _)) => KernelError::UnknownScheme {
                spec: spec.to_string(),
                scheme: scheme.to_string(),
                forms: forms(),
            },
            None => malformed(spec, "no kernel source takes it".into()),
        })
    }

    /// The source that claimed it.
    pub fn source(&self) -> &'static dyn KernelSource {
        self.source
    }

    /// What the source kept of it (`6.12` of `debian:6.12`, the path of an image).
    pub fn arg(&self) -> &str {
        &self.arg
    }

    /// The module folder given with it.
    pub fn modules(&self) -> Option<&Path> {
        self.modules.as_deref()
    }

    /// Its source's [`Candidates`], if it has any.
    pub fn candidates(&self) -> Option<&dyn Candidates> {
        self.source.candidates()
    }

    /// True when both specs are of one source.
    pub fn same_source(&self, other: &KernelSpec) -> bool {
        self.source.name() == other.source.name()
    }
}

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.source.prefix(), self.arg)
    }
}

impl fmt::Debug for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelSpec")
            .field("source", &self.source.name())
            .field("arg", &self.arg)
            .field("modules", &self.modules)
            .finish()
    }
}

impl PartialEq for KernelSpec {
    fn eq(&self, other: &KernelSpec) -> bool {
        self.same_source(other) && self.arg == other.arg && self.modules == other.modules
    }
}

impl Eq for KernelSpec {}

/// Resolve a spec to a bootable kernel, downloading and extracting as needed.
pub fn resolve(
    spec: &KernelSpec,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<Kernel, KernelError> {
    sweep_once(cache, progress);
    spec.source.resolve(spec, cache, progress)
}

/// The specs with the single package files of one release joined into one
/// kernel (`--kernel linux-binary-X.deb --kernel linux-modules-X.deb`).
pub fn join_package_files(specs: Vec<KernelSpec>) -> Result<Vec<KernelSpec>, KernelError> {
    package_file::join(specs)
}

/// Sweep what dead runs left in the cache (if no folder of it was asked
/// for yet), and say what went, once per process.
fn sweep_once(cache: &Cache, progress: &dyn Fn(&str)) {
    static REPORTED: std::sync::Once = std::sync::Once::new();
    REPORTED.call_once(|| {
        for p in cache.sweep_once() {
            progress(&format!(
                "removed {} (left by a run that died)",
                p.display()
            ));
        }
    });
}

/// What a spec names today, without downloading: the release it resolves
/// to, if that can be told, and whether that kernel is ready to boot.
pub fn lookup(
    spec: &KernelSpec,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<(Option<String>, bool), KernelError> {
    spec.source.lookup(spec, cache, progress)
}

/// What every source offers, for `natvet kernels list --all`.
/// Each with the source's name; a source whose catalogue cannot be read
/// gives its error, the others are listed all the same. `only`: these
/// sources' catalogues (by name), or every source's when empty.
pub fn catalogues(
    cache: &Cache,
    only: &[String],
    progress: &dyn Fn(&str),
) -> Vec<(&'static str, Result<Catalogue, KernelError>)> {
    sources()
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s.name()))
        .filter_map(|s| {
            s.catalogue(cache, progress)
                .transpose()
                .map(|c| (s.name(), c))
        })
        .collect()
}

/// The names of the sources that offer catalogues (`debian`, `ubuntu`, ...).
pub fn catalogue_names() -> Vec<&'static str> {
    sources()
        .iter()
        .filter(|s| s.candidates().is_some())
        .map(|s| s.name())
        .collect()
}

/// How a passing kernel is given as `--good` to `natvet bisect`, for every
/// source with candidates (`debian:RELEASE`).
pub fn endpoint_forms() -> Vec<&'static str> {
    sources()
        .iter()
        .filter_map(|s| s.candidates())
        .map(|c| c.endpoint_form())
        .collect()
}

/// Every source's spec forms: `a, b, c or d`.
fn forms() -> String {
    let all: Vec<&str> = sources().iter().flat_map(|s| s.forms()).copied().collect();
    match all.split_last() {
        None => String::new(),
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The error for a spec a source claimed but cannot read.
fn malformed(spec: &str, reason: String) -> KernelError {
    KernelError::MalformedSpec {
        spec: spec.to_string(),
        reason,
        forms: forms(),
    }
}

/// `(scheme, rest)` of `scheme:rest`, unless the spec reads as a path
/// (`/x`, `./odd:name`, `../x`) or what comes before the colon could not
/// be a scheme (`dir/file:x`).
fn scheme_of(spec: &str) -> Option<(&str, &str)> {
    if spec.starts_with('/') || spec.starts_with("./") || spec.starts_with("../") {
        return None;
    }
    let (scheme, rest) = spec.split_once(':')?;
    let scheme_like = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    scheme_like.then_some((scheme, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(spec: &KernelSpec) -> (&str, &str, Option<&Path>) {
        (spec.source().name(), spec.arg(), spec.modules())
    }

    #[test]
    fn parses_specs() {
        let p = |s: &str, m: Option<&str>| KernelSpec::parse(s, m.map(PathBuf::from));
        assert_eq!(
            parts(&p("debian:6.12", None).unwrap()),
            ("debian", "6.12", None)
        );
        assert_eq!(
            parts(&p("debian:6.1.0-50-amd64", None).unwrap()),
            ("debian", "6.1.0-50-amd64", None)
        );
        assert_eq!(
            parts(&p("/path/bzImage", Some("/m")).unwrap()),
            ("local", "/path/bzImage", Some(Path::new("/m")))
        );
        assert_eq!(
            parts(&p("./vmlinux", None).unwrap()),
            ("local", "./vmlinux", None)
        );
        assert_eq!(
            parts(&p("./odd:name", None).unwrap()),
            ("local", "./odd:name", None)
        );
        assert_eq!(parts(&p("local:x", None).unwrap()), ("local", "x", None));
        let e = p("foo:bar", None).unwrap_err();
        assert!(e.is_user_error());
        assert!(
            e.to_string().contains("unknown kernel source 'foo:'"),
            "{e}"
        );
        let e = p("debian:", None).unwrap_err();
        assert!(e.is_user_error());
        let e = p("debian:latest", None).unwrap_err();
        assert!(matches!(e, KernelError::MalformedSpec { .. }));
        assert_eq!(
            e.to_string(),
            "malformed kernel spec 'debian:latest': `latest` is neither a version line (like 6.12) nor a kernel release (like 6.1.0-50-amd64); use debian:LINE (e.g. debian:6.12), debian:RELEASE (e.g. debian:6.1.0-50-amd64), ubuntu:LINE, ubuntu:RELEASE, ubuntu:SUITE[:LINE], build:PATH (a kernel build tree), a kernel package file (./linux-image-X.deb, a.deb,b.deb, or a folder of them) or a path to a bzImage/vmlinux"
        );
        let e = p("debian:6.1", Some("/m")).unwrap_err();
        assert!(e.to_string().contains("local kernel image"), "{e}");
        for s in ["debian:6.12", "debian:7.2.13+deb14-amd64", "/x/bzImage"] {
            assert_eq!(p(s, None).unwrap().to_string(), s);
        }
        assert_eq!(
            p("local:/x/bzImage", None).unwrap().to_string(),
            "/x/bzImage"
        );
    }

    #[test]
    fn parses_build_specs() {
        let p = |s: &str, m: Option<&str>| KernelSpec::parse(s, m.map(PathBuf::from));
        assert_eq!(
            parts(&p("build:/src/linux/out", None).unwrap()),
            ("build", "/src/linux/out", None)
        );
        assert_eq!(
            parts(&p("build:../out", None).unwrap()),
            ("build", "../out", None)
        );
        for s in ["build:/x/build", "build:rel/dir"] {
            assert_eq!(p(s, None).unwrap().to_string(), s);
        }
        let e = p("build:", None).unwrap_err();
        assert!(
            e.is_user_error() && e.to_string().contains("build:PATH"),
            "{e}"
        );
        let e = p("build:/x", Some("/m")).unwrap_err();
        assert!(
            e.is_user_error() && e.to_string().contains("--modules"),
            "{e}"
        );
        // A path that merely starts with "build" is still a path.
        assert_eq!(p("./build:x", None).unwrap().source().name(), "local");
    }

    #[test]
    fn every_source_is_asked_in_order() {
        let names: Vec<&str> = sources().iter().map(|s| s.name()).collect();
        assert_eq!(names, ["debian", "ubuntu", "build", "package", "local"]);
        assert_eq!(endpoint_forms(), ["debian:RELEASE", "ubuntu:RELEASE"]);
        assert_eq!(
            KernelSpec::parse("debian:6.1", None).unwrap(),
            KernelSpec::parse(" debian:6.1 ", None).unwrap()
        );
    }
}

//! `natvet kernels build`: a kernel built from Debian's `linux-source-X.Y`
//! package with a config fragment (and optional patches), so that a patched
//! or hand-configured kernel can be vetted as `build:PATH` like any other.
//!
//! Cache layout (below the cache root):
//! - `src/linux-source-X.Y_VERSION/linux-source-X.Y/` — the pristine tree,
//!   unpacked once; `src/linux-source-X.Y_VERSION/complete` written last
//! - `builds/linux-source-X.Y_VERSION_KEY/` — one build per (source version,
//!   SHA-256 of the fragment, SHA-256 of each patch): `natvet-build.log`
//!   (the last attempt's), and each attempt in a folder of its own,
//!   `out-XXXXXX/`, holding `build/` (the `O=` folder) and `source/` (a
//!   hard-linked, patched copy of the tree, only when patches are given).
//!   `complete.json`, written last after a successful build, names the
//!   attempt it published; no other attempt is ever used again. An attempt
//!   that was interrupted (even by SIGKILL, with a compiler still writing
//!   into it) is removed before the next one starts, and by
//!   `Cache::sweep` once the build's lock is free: nothing of it is reused.
//!   Builds of older natvets (`build/` and `source/` beside `complete.json`)
//!   are used as they are.
//!
//! Every helper (`make`, `patch`, `cp`, `tar`) runs through `crate::child`:
//! it and everything it starts die with natvet.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::archive::{self, ArchiveError};
use super::cache::{self, Cache};
use super::sources::{config_has_modules, BUILD_BZIMAGE};
use super::{deb, version, KernelError};

/// The packages kbuild needs on a Debian host.
pub const BUILD_DEPS_INSTALL: &str =
    "apt-get install -y build-essential bc bison flex libelf-dev libssl-dev";

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// `debian:linux-source-X.Y`.
    pub source: String,
    /// A Kconfig fragment merged on top of `tinyconfig`.
    pub fragment: PathBuf,
    /// Applied in order with `patch -p1`.
    pub patches: Vec<PathBuf>,
    /// `make -jN`.
    pub jobs: usize,
}

/// Why a build did not happen. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    BadInput(String),

    #[error("the kernel did not take {} setting(s) of {}: {}; these symbols may not exist in this kernel, depend on something the fragment turns off, or be spelled differently — fix the fragment (the merged config is {})", .unmet.len(), .fragment.display(), .unmet.join("; "), .config.display())]
    ConfigUnmet {
        fragment: PathBuf,
        config: PathBuf,
        unmet: Vec<String>,
    },

    #[error("{0}")]
    MissingTools(String),

    #[error(transparent)]
    Kernel(#[from] KernelError),

    #[error("{what} failed ({status}); full log: {}; its last lines:\n{tail}", .log.display())]
    Failed {
        what: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
}

impl BuildError {
    /// True when the user can fix it by changing what they asked for (exit 2).
    pub fn is_user_error(&self) -> bool {
        match self {
            BuildError::BadInput(_) | BuildError::ConfigUnmet { .. } => true,
            BuildError::Kernel(e) => e.is_user_error(),
            BuildError::MissingTools(_) | BuildError::Failed { .. } => false,
        }
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> BuildError {
    move |e| BuildError::Kernel(KernelError::io(context, e))
}

/// `debian:linux-source-X.Y` → `linux-source-X.Y`.
pub fn parse_source(spec: &str) -> Result<String, String> {
    let hint = "use debian:linux-source-X.Y (e.g. debian:linux-source-6.12)";
    let rest = spec
        .trim()
        .strip_prefix("debian:")
        .ok_or_else(|| format!("unknown kernel source '{spec}'; {hint}"))?;
    let line = rest
        .strip_prefix("linux-source-")
        .ok_or_else(|| format!("'{rest}' is not a kernel source package; {hint}"))?;
    let ok = !line.is_empty()
        && line.starts_with(|c: char| c.is_ascii_digit())
        && line
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+'));
    if !ok {
        return Err(format!("malformed source package name '{rest}'; {hint}"));
    }
    Ok(rest.to_string())
}

fn is_symbol(s: &str) -> bool {
    s.strip_prefix("CONFIG_")
        .is_some_and(|r| !r.is_empty() && r.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'))
}

/// The settings of a Kconfig fragment: (line, symbol, value), value None
/// for `# CONFIG_X is not set`.
fn fragment_settings(fragment: &str) -> Vec<(&str, &str, Option<&str>)> {
    fragment
        .lines()
        .map(str::trim_end)
        .filter_map(|line| {
            if let Some(sym) = line
                .strip_prefix("# ")
                .and_then(|r| r.strip_suffix(" is not set"))
                .filter(|s| is_symbol(s))
            {
                Some((line, sym, None))
            } else {
                line.split_once('=')
                    .filter(|(k, _)| is_symbol(k))
                    .map(|(k, v)| (line, k, Some(v)))
            }
        })
        .collect()
}

/// Settings of a Kconfig fragment (`CONFIG_X=...` and `# CONFIG_X is not
/// set` lines) that the final `.config` does not have, described.
pub fn unmet_settings(fragment: &str, config: &str) -> Vec<String> {
    let values: HashMap<&str, &str> = config
        .lines()
        .filter_map(|l| l.trim_end().split_once('='))
        .filter(|(k, _)| is_symbol(k))
        .collect();
    let mut unmet = Vec::new();
    for (line, sym, want) in fragment_settings(fragment) {
        match (want, values.get(sym)) {
            (None, None) => {}
            (None, Some(got)) => unmet.push(format!("{line} (got {sym}={got})")),
            (Some(w), Some(got)) if w == *got => {}
            (Some(_), Some(got)) => unmet.push(format!("{line} (got {sym}={got})")),
            (Some(_), None) => unmet.push(format!("{line} (got: not set)")),
        }
    }
    unmet
}

fn which(exe: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(exe).is_file()))
        .unwrap_or(false)
}

/// The host tools a build needs; an error naming the missing ones and the
/// `apt-get` line that installs them.
pub fn check_tools(need_patch: bool) -> Result<(), BuildError> {
    let mut missing: Vec<&str> = ["gcc", "make", "bc", "bison", "flex", "perl"]
        .into_iter()
        .filter(|t| !which(t))
        .collect();
    for (header, what) in [
        ("/usr/include/libelf.h", "libelf.h"),
        ("/usr/include/openssl/ssl.h", "openssl/ssl.h"),
    ] {
        if !Path::new(header).is_file() {
            missing.push(what);
        }
    }
    let mut lines = Vec::new();
    if !missing.is_empty() {
        lines.push(format!(
            "missing kernel build dependencies ({}); run `{BUILD_DEPS_INSTALL}` (or `make kernel-deps`)",
            missing.join(", ")
        ));
    }
    for (tool, pkg) in [("tar", "tar"), ("xz", "xz-utils"), ("nice", "coreutils")] {
        if !which(tool) {
            lines.push(format!(
                "{tool} is not installed; run `apt-get install -y {pkg}`"
            ));
        }
    }
    if need_patch && !which("patch") {
        lines.push(
            "patch is not installed (needed for --patch); run `apt-get install -y patch`".into(),
        );
    }
    if lines.is_empty() {
        Ok(())
    } else {
        Err(BuildError::MissingTools(lines.join("; ")))
    }
}

/// Contents of `builds/KEY/complete.json`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct BuildInfo {
    /// The attempt folder (`out-XXXXXX`) this marker publishes; none for a
    /// build of an older natvet, whose output is `build/` beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    package: String,
    version: String,
    suite: String,
    fragment: String,
    fragment_sha256: String,
    /// (path as given, SHA-256), in the order applied.
    patches: Vec<(String, String)>,
    release: Option<String>,
    modules: bool,
    build_seconds: f64,
}

/// Build (or find already built) the kernel `req` describes; returns the
/// absolute build folder, to be vetted as `build:PATH`.
pub fn build(
    req: &BuildRequest,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, BuildError> {
    // Everything the user gave, before any download.
    let package = parse_source(&req.source).map_err(BuildError::BadInput)?;
    if req.jobs == 0 {
        return Err(BuildError::BadInput("--jobs must be at least 1".into()));
    }
    let fragment = fs::canonicalize(&req.fragment).map_err(|e| {
        BuildError::BadInput(format!(
            "config fragment {} not found ({e}); give a Kconfig fragment such as vm-images/minimal-nat.config",
            req.fragment.display()
        ))
    })?;
    let fragment_text = fs::read_to_string(&fragment).map_err(|e| {
        BuildError::BadInput(format!(
            "cannot read config fragment {}: {e}",
            fragment.display()
        ))
    })?;
    if fragment_settings(&fragment_text).is_empty() {
        return Err(BuildError::BadInput(format!(
            "{} has no CONFIG_X=... or `# CONFIG_X is not set` lines; it is not a Kconfig fragment",
            fragment.display()
        )));
    }
    let fragment_sha = hex::encode(Sha256::digest(fragment_text.as_bytes()));
    let mut patches = Vec::new();
    for p in &req.patches {
        let abs = fs::canonicalize(p)
            .ok()
            .filter(|a| a.is_file())
            .ok_or_else(|| {
                BuildError::BadInput(format!("patch {} not found; check the path", p.display()))
            })?;
        let sha = cache::sha256_file(&abs).map_err(|e| {
            BuildError::BadInput(format!("cannot read patch {}: {e}", abs.display()))
        })?;
        patches.push((abs, sha));
    }
    check_tools(!patches.is_empty())?;
    for p in cache.sweep_once() {
        progress(&format!(
            "removed {} (left by a run that died)",
            p.display()
        ));
    }

    // The newest source package of that name in any suite.
    let index = archive::load_index(&super::sources::debian::repository()?, cache, progress)?;
    let Some(pkg) = index
        .stanzas
        .iter()
        .filter(|s| s.package == package)
        .max_by(|a, b| version::compare(&a.version, &b.version))
    else {
        if !index.failures.is_empty() {
            return Err(KernelError::from(ArchiveError::Download {
                what: format!("the package indexes of {}", index.failures.join(", ")),
                reason: format!("could not check them for {package}"),
            })
            .into());
        }
        let mut known: Vec<&str> = index
            .stanzas
            .iter()
            .filter(|s| s.package.starts_with("linux-source-"))
            .map(|s| s.package.as_str())
            .collect();
        known.sort_by(|a, b| version::compare(a, b));
        known.dedup();
        return Err(BuildError::BadInput(format!(
            "no package {package} in Debian's archive; available: {} (give e.g. --source debian:{})",
            known.join(", "),
            known.last().copied().unwrap_or("linux-source-6.12")
        )));
    };

    let key = {
        let mut h = Sha256::new();
        for part in [pkg.package.as_str(), &pkg.version, &fragment_sha] {
            h.update(part.as_bytes());
            h.update(b"\0");
        }
        for (_, sha) in &patches {
            h.update(sha.as_bytes());
            h.update(b"\0");
        }
        hex::encode(h.finalize())
    };
    let builds = cache.dir("builds")?;
    let name = format!("{}_{}_{}", pkg.package, pkg.version, &key[..16]);
    let dir = builds.join(&name);
    if let Some(out) = published(&dir) {
        progress(&format!("already built: {}", out.display()));
        return Ok(out);
    }
    let _lock = cache::lock(&builds.join(format!("{name}.lock")))?;
    if let Some(out) = published(&dir) {
        return Ok(out);
    }
    let pristine = ensure_source(cache, pkg, progress)?;
    let log = dir.join("natvet-build.log");
    publish_attempt(&dir, progress, |attempt| {
        compile(
            attempt,
            &CompileInputs {
                pkg,
                pristine: &pristine,
                patches: &patches,
                fragment: &fragment,
                fragment_text: &fragment_text,
                fragment_sha: &fragment_sha,
                jobs: req.jobs,
                log: &log,
            },
            progress,
        )
    })
}

/// The output of the build in `dir` if it is complete: the attempt its
/// marker names, with a kernel image.
fn published(dir: &Path) -> Option<PathBuf> {
    let marker = fs::read(dir.join("complete.json")).ok()?;
    let info: BuildInfo = serde_json::from_slice(&marker).ok()?;
    let out = match &info.output {
        Some(attempt) if cache::is_attempt_name(attempt) => dir.join(attempt).join("build"),
        Some(_) => return None,
        None => dir.join("build"),
    };
    out.join(BUILD_BZIMAGE).is_file().then_some(out)
}

/// One attempt at the build in `dir`, under its lock: what earlier attempts
/// left is removed, `compile` fills a fresh attempt folder and says what
/// was built, and the marker naming the attempt is written last. An
/// attempt that fails is removed; one that is killed is removed next time.
fn publish_attempt(
    dir: &Path,
    progress: &dyn Fn(&str),
    compile: impl FnOnce(&Path) -> Result<BuildInfo, BuildError>,
) -> Result<PathBuf, BuildError> {
    for p in cache::remove_unfinished_build(dir) {
        progress(&format!(
            "removed {} (an unfinished build, never used)",
            p.display()
        ));
    }
    fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let attempt = tempfile::Builder::new()
        .prefix("out-")
        .rand_bytes(6)
        .tempdir_in(dir)
        .map_err(io(format!(
            "creating an attempt folder in {}",
            dir.display()
        )))?;
    let mut info = compile(attempt.path())?;
    let kept = attempt.keep();
    cache::make_readable(&kept, true).map_err(io(format!("chmod {}", kept.display())))?;
    let name = kept
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    info.output = Some(name);
    let json = serde_json::to_vec_pretty(&info).map_err(|e| {
        BuildError::Kernel(KernelError::io(
            "serialising the build marker".into(),
            e.into(),
        ))
    })?;
    cache::write_atomic(&dir.join("complete.json"), &json)?;
    published(dir).ok_or_else(|| BuildError::Failed {
        what: "the build".into(),
        status: format!("{} has no {BUILD_BZIMAGE}", kept.display()),
        log: dir.join("natvet-build.log"),
        tail: String::new(),
    })
}

/// What one attempt compiles from.
struct CompileInputs<'a> {
    pkg: &'a archive::Stanza,
    pristine: &'a Path,
    patches: &'a [(PathBuf, String)],
    fragment: &'a Path,
    fragment_text: &'a str,
    fragment_sha: &'a str,
    jobs: usize,
    log: &'a Path,
}

/// Patch (when asked), configure and compile into `attempt/build`.
fn compile(
    attempt: &Path,
    inputs: &CompileInputs,
    progress: &dyn Fn(&str),
) -> Result<BuildInfo, BuildError> {
    let CompileInputs {
        pkg,
        pristine,
        patches,
        fragment,
        fragment_text,
        fragment_sha,
        jobs,
        log,
    } = *inputs;
    let out = attempt.join("build");
    fs::create_dir_all(&out).map_err(io(format!("creating {}", out.display())))?;
    File::create(log).map_err(io(format!("creating {}", log.display())))?;
    let log = log.to_path_buf();
    let src = if patches.is_empty() {
        pristine.to_path_buf()
    } else {
        let src = attempt.join("source");
        progress("hard-linking a copy of the source tree for the patches");
        run_logged(
            Command::new("cp").arg("-al").arg(pristine).arg(&src),
            "copying the source tree (cp -al)",
            &log,
            None,
        )?;
        for (p, _) in patches {
            progress(&format!("applying {}", p.display()));
            run_logged(
                Command::new("patch")
                    .args(["-p1", "--forward", "--batch", "-d"])
                    .arg(&src)
                    .arg("-i")
                    .arg(p),
                &format!("applying {}", p.display()),
                &log,
                None,
            )
            .map_err(|e| match e {
                // A patch that does not apply is the user's to fix: bad input.
                BuildError::Failed { tail, .. } => BuildError::BadInput(format!(
                    "{} does not apply to {} {} (patch -p1 --forward --batch):\n{tail}",
                    p.display(),
                    pkg.package,
                    pkg.version
                )),
                other => other,
            })?;
        }
        src
    };

    let t0 = Instant::now();
    let make = |args: &[&str]| {
        let mut c = Command::new("nice");
        c.args(["-n", "19", "make", "-C"])
            .arg(&src)
            .arg("ARCH=x86_64")
            .arg(format!("O={}", out.display()))
            .args(args);
        c
    };
    progress(&format!(
        "configuring {} {}: tinyconfig + {}",
        pkg.package,
        pkg.version,
        fragment.display()
    ));
    run_logged(&mut make(&["tinyconfig"]), "make tinyconfig", &log, None)?;
    let config = out.join(".config");
    run_logged(
        Command::new("nice")
            .args(["-n", "19"])
            .arg(src.join("scripts/kconfig/merge_config.sh"))
            .args(["-m", "-O"])
            .arg(&out)
            .arg(&config)
            .arg(fragment)
            .current_dir(&src),
        "merge_config.sh",
        &log,
        None,
    )?;
    run_logged(
        &mut make(&["olddefconfig"]),
        "make olddefconfig",
        &log,
        None,
    )?;
    let config_text =
        fs::read_to_string(&config).map_err(io(format!("reading {}", config.display())))?;
    let unmet = unmet_settings(fragment_text, &config_text);
    if !unmet.is_empty() {
        return Err(BuildError::ConfigUnmet {
            fragment: fragment.to_path_buf(),
            config,
            unmet,
        });
    }
    let modules = config_has_modules(&config_text);
    let jobs = format!("-j{jobs}");
    let mut targets = vec![jobs.as_str(), "bzImage"];
    if modules {
        targets.push("modules");
    }
    progress(&format!(
        "building {} with {} (log: {})",
        targets[1..].join(" + "),
        jobs,
        log.display()
    ));
    run_logged(
        &mut make(&targets),
        &format!("make {}", targets.join(" ")),
        &log,
        Some(progress),
    )?;
    if !out.join(BUILD_BZIMAGE).is_file() {
        return Err(BuildError::Failed {
            what: "the build".into(),
            status: format!("it left no {BUILD_BZIMAGE}"),
            tail: log_tail(&log, 30),
            log,
        });
    }
    let secs = t0.elapsed().as_secs_f64();
    let release = fs::read_to_string(out.join("include/config/kernel.release"))
        .ok()
        .map(|r| r.trim().to_string());
    progress(&format!(
        "built {} in {:.0} min {:.0} s",
        release.as_deref().unwrap_or("the kernel"),
        (secs / 60.0).floor(),
        secs % 60.0
    ));
    Ok(BuildInfo {
        output: None,
        package: pkg.package.clone(),
        version: pkg.version.clone(),
        suite: pkg.suite.clone(),
        fragment: fragment.display().to_string(),
        fragment_sha256: fragment_sha.to_string(),
        patches: patches
            .iter()
            .map(|(p, s)| (p.display().to_string(), s.clone()))
            .collect(),
        release,
        modules,
        build_seconds: secs,
    })
}

/// The pristine source tree of `pkg`, downloaded and unpacked once.
fn ensure_source(
    cache: &Cache,
    pkg: &archive::Stanza,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, BuildError> {
    let name = format!("{}_{}", pkg.package, pkg.version);
    let entry = cache::Entry::new(cache.dir("src")?, name.clone());
    let done = |d: &Path| {
        let tree = d.join(&pkg.package);
        (d.join("complete").is_file() && tree.is_dir()).then_some(tree)
    };
    entry.load_or_publish(
        done,
        |staging| {
            let deb_path = archive::download(cache, "debs", pkg, progress)?;
            let member = format!("usr/src/{}.tar.xz", pkg.package);
            let tarball = staging.path().join(format!("{}.tar.xz", pkg.package));
            let extract_err = |reason: String| {
                BuildError::Kernel(KernelError::Extract {
                    what: name.clone(),
                    reason,
                    cache_hint: deb_path.clone(),
                })
            };
            progress(&format!("extracting {member} from {}", deb_path.display()));
            deb::extract_member(&deb_path, &member, &tarball).map_err(extract_err)?;
            progress(&format!("unpacking {member} (tar -xf)"));
            let t = Instant::now();
            let st = crate::child::status(
                Command::new("nice")
                    .args(["-n", "19", "tar", "-xf"])
                    .arg(&tarball)
                    .arg("-C")
                    .arg(staging.path()),
            )
            .map_err(|e| extract_err(format!("cannot run tar: {e}")))?;
            if !st.success() {
                return Err(extract_err(format!("tar -xf {member}: {st}")));
            }
            fs::remove_file(&tarball).map_err(io(format!("removing {}", tarball.display())))?;
            if !staging.path().join(&pkg.package).is_dir() {
                return Err(extract_err(format!(
                    "{member} has no top folder {}/",
                    pkg.package
                )));
            }
            progress(&format!(
                "unpacked the source in {:.0} s",
                t.elapsed().as_secs_f64()
            ));
            Ok(cache::MarkerFile::empty("complete"))
        },
        progress,
    )
}

/// Run `cmd` with stdout and stderr appended to `log`; with `progress`,
/// report the log's last line every 15 s. On failure, the log's last 30 lines.
fn run_logged(
    cmd: &mut Command,
    what: &str,
    log: &Path,
    progress: Option<&dyn Fn(&str)>,
) -> Result<(), BuildError> {
    let open = || {
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
            .map_err(io(format!("opening {}", log.display())))
    };
    let (stdout, stderr) = (open()?, open()?);
    // It and everything it starts (make's compilers) die with natvet.
    let mut child = crate::child::spawn(cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr))
        .map_err(|e| BuildError::Failed {
            what: what.to_string(),
            status: format!("could not start: {e}"),
            log: log.to_path_buf(),
            tail: String::new(),
        })?;
    let t0 = Instant::now();
    let mut next = Duration::from_secs(15);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => {
                return Err(BuildError::Kernel(KernelError::io(
                    format!("waiting for {what}"),
                    e,
                )))
            }
        }
        std::thread::sleep(Duration::from_millis(250));
        if let Some(p) = progress {
            let el = t0.elapsed();
            if el >= next {
                next += Duration::from_secs(15);
                let s = el.as_secs();
                p(&format!(
                    "{what}: {}m{:02}s {}",
                    s / 60,
                    s % 60,
                    log_tail(log, 1).trim()
                ));
            }
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Failed {
            what: what.to_string(),
            status: status.to_string(),
            log: log.to_path_buf(),
            tail: log_tail(log, 30),
        })
    }
}

/// The last `n` lines of a log file (reads at most its last 64 KiB).
fn log_tail(log: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(
            parse_source("debian:linux-source-6.12").unwrap(),
            "linux-source-6.12"
        );
        assert_eq!(
            parse_source(" debian:linux-source-6.1 ").unwrap(),
            "linux-source-6.1"
        );
        for bad in [
            "linux-source-6.12",
            "debian:6.12",
            "debian:linux-source-",
            "debian:linux-source-6.12/../x",
            "git:linux",
        ] {
            let e = parse_source(bad).unwrap_err();
            assert!(e.contains("debian:linux-source-"), "{bad}: {e}");
        }
    }

    #[test]
    fn verifies_fragments() {
        let fragment = "\
# a comment
CONFIG_NET=y
CONFIG_SERIAL_8250_NR_UARTS=4
CONFIG_CMDLINE=\"console=ttyS0\"
# CONFIG_MODULES is not set
# CONFIG_SMP is not set
CONFIG_NFT_COUNTER=y
CONFIG_WIREGUARD=y
not a setting
";
        let config = "\
CONFIG_NET=y
CONFIG_SERIAL_8250_NR_UARTS=4
CONFIG_CMDLINE=\"console=ttyS0\"
# CONFIG_MODULES is not set
CONFIG_SMP=y
CONFIG_WIREGUARD=m
";
        assert_eq!(
            unmet_settings(fragment, config),
            [
                "# CONFIG_SMP is not set (got CONFIG_SMP=y)",
                "CONFIG_NFT_COUNTER=y (got: not set)",
                "CONFIG_WIREGUARD=y (got CONFIG_WIREGUARD=m)",
            ]
        );
        // Everything met; an off symbol may be absent altogether.
        assert!(
            unmet_settings("CONFIG_NET=y\n# CONFIG_X is not set\n", "CONFIG_NET=y\n").is_empty()
        );
        assert_eq!(unmet_settings(fragment, "").len(), 5);
        assert_eq!(fragment_settings(fragment).len(), 7);
        assert!(fragment_settings("# just prose\n# CONFIG_ is not set\n").is_empty());
    }

    #[test]
    fn shipped_fragment_is_well_formed() {
        let text = include_str!("../../../vm-images/minimal-nat.config");
        assert!(fragment_settings(text).len() > 50);
        assert!(text.contains("# CONFIG_MODULES is not set"));
        assert!(text.contains("CONFIG_WIREGUARD=y"));
    }

    fn info() -> BuildInfo {
        BuildInfo {
            output: None,
            package: "linux-source-6.12".into(),
            version: "1".into(),
            suite: "trixie".into(),
            fragment: "f.config".into(),
            fragment_sha256: "0".into(),
            patches: vec![],
            release: None,
            modules: false,
            build_seconds: 0.0,
        }
    }

    /// What a compile leaves: a kernel image in ATTEMPT/build.
    fn image(attempt: &Path) -> Result<BuildInfo, BuildError> {
        let bz = attempt.join("build").join(BUILD_BZIMAGE);
        fs::create_dir_all(bz.parent().unwrap()).unwrap();
        fs::write(&bz, b"kernel").unwrap();
        Ok(info())
    }

    #[test]
    fn an_interrupted_build_leaves_nothing_a_later_run_uses() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("linux-source-6.12_1_abc");
        // A run killed mid-build (SIGKILL: no cleanup) left its attempt, with
        // a kernel image already written, and an older natvet's O= folder.
        let killed = dir.join("out-Ab12Cd");
        image(&killed).unwrap();
        image(&dir).unwrap();
        fs::write(dir.join("natvet-build.log"), b"the killed run's log").unwrap();
        assert_eq!(
            published(&dir),
            None,
            "nothing is complete without its marker"
        );
        // A failing attempt publishes nothing and leaves no folder behind.
        let e = publish_attempt(&dir, &|_| {}, |attempt| {
            image(attempt)?;
            Err(BuildError::BadInput("the fragment was not taken".into()))
        })
        .unwrap_err();
        assert!(e.is_user_error());
        assert_eq!(published(&dir), None);
        let left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["natvet-build.log"], "only the log stays");
        // A later attempt builds afresh and is the one published.
        image(&killed).unwrap();
        let out = publish_attempt(&dir, &|_| {}, image).unwrap();
        assert!(!killed.exists(), "the killed run's attempt was removed");
        assert_ne!(out, killed.join("build"));
        assert_eq!(published(&dir), Some(out.clone()));
        assert!(out.starts_with(&dir) && out.ends_with("build"));
        // Done: a sweep leaves a complete build alone.
        let cache = Cache::new(root.path().to_path_buf());
        fs::create_dir_all(root.path().join("builds")).unwrap();
        fs::rename(&dir, root.path().join("builds/b")).unwrap();
        cache.sweep();
        assert!(published(&root.path().join("builds/b")).is_some());
    }

    #[test]
    fn older_builds_are_used_as_they_are() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_path_buf();
        image(&dir).unwrap();
        let mut old = serde_json::to_value(info()).unwrap();
        old.as_object_mut().unwrap().remove("output");
        fs::write(dir.join("complete.json"), old.to_string()).unwrap();
        assert_eq!(published(&dir), Some(dir.join("build")));
        // A marker naming something that is not an attempt is not trusted.
        let mut odd = info();
        odd.output = Some("../elsewhere".into());
        fs::write(dir.join("complete.json"), serde_json::to_vec(&odd).unwrap()).unwrap();
        assert_eq!(published(&dir), None);
    }

    #[test]
    fn bad_input_is_a_user_error() {
        let cache = Cache::new(tempfile::tempdir().unwrap().path().to_path_buf());
        let req = |source: &str, fragment: &str| BuildRequest {
            source: source.into(),
            fragment: fragment.into(),
            patches: vec![],
            jobs: 1,
        };
        for (r, want) in [
            (req("debian:6.12", "/x"), "debian:linux-source-X.Y"),
            (
                req("debian:linux-source-6.12", "/nonexistent/frag.config"),
                "/nonexistent/frag.config",
            ),
        ] {
            let e = build(&r, &cache, &|_| {}).unwrap_err();
            assert!(e.is_user_error(), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let frag = dir.path().join("f.config");
        fs::write(&frag, "CONFIG_NET=y\n").unwrap();
        let mut r = req("debian:linux-source-6.12", frag.to_str().unwrap());
        r.patches = vec![dir.path().join("missing.patch")];
        let e = build(&r, &cache, &|_| {}).unwrap_err();
        assert!(
            e.is_user_error() && e.to_string().contains("missing.patch"),
            "{e}"
        );
        let prose = dir.path().join("prose.config");
        fs::write(&prose, "# nothing here\n").unwrap();
        let e = build(
            &req("debian:linux-source-6.12", prose.to_str().unwrap()),
            &cache,
            &|_| {},
        )
        .unwrap_err();
        assert!(
            e.is_user_error() && e.to_string().contains("not a Kconfig fragment"),
            "{e}"
        );
    }
}

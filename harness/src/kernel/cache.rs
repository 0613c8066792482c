//! The on-disk cache shared by natvet processes.
//!
//! Layout (all below the cache root):
//! - `index/REPO/SUITE/InRelease` (or `Release` + `Release.gpg`) — the
//!   suite's signed Release, kept once verified (6 h), verified on every use
//! - `index/REPO/SUITE/COMPONENT_binary-amd64_Packages.xz` — its index, kept
//!   once it matched the signed Release; `COMPONENT.kernels.json` — its
//!   kernel stanzas, parsed (tied to the index's SHA-256)
//! - `debs/NAME_VERSION_amd64.deb` (Debian), `debs/REPO/...` (other
//!   repositories) — downloaded packages, checked by SHA-256 against their index
//! - `kernels/RELEASE/` (Debian), `kernels/REPO/RELEASE/` (other
//!   repositories), `kernels/files/KEY/` (package files) — `vmlinuz`,
//!   `vmlinux` (if PVH), `root/lib/modules/RELEASE/`, and `complete.json`,
//!   written last with the SHA-256 of every file; a directory without it,
//!   or with a file whose content changed, is never used
//! - `kernels/RELEASE.lock` — per-kernel lock file
//! - `local/SHA256/` — vmlinux extracted from a local bzImage, and private
//!   depmod'ed module trees for local module folders; `local/build-modules-SHA/`
//!   — `make modules_install` of a `build:PATH` tree (SHA of its bzImage)
//! - `src/`, `builds/` — Debian kernel sources and `natvet kernels build`
//!   output (see [`super::build`])
//!
//! Folders written once and then only read (kernels, module copies,
//! sources) are published with `Entry`: staged beside their place, marked
//! complete last, renamed into place.
//!
//! What the cache guarantees, however a run ends (Ctrl-C, SIGKILL, a crash):
//! - nothing is ever written under its final name: a download streams into
//!   `.partial-FILE-XXXXXX` and is renamed once its size and SHA-256 match
//!   its index entry; a file written whole (an index, a Release, a marker,
//!   an extracted vmlinux) goes to `.writing-FILE-XXXXXX`, synced, then
//!   renamed ([`write_atomic`]); a folder is staged in `.tmp-NAME-XXXXXX`,
//!   marked complete last and renamed (`Entry`). So a file under its final
//!   name is whole, and checked again on use (signatures, hashes, markers).
//! - every writer holds a lock while its temporary exists: the owner's
//!   `NAME.lock` beside it (downloads, staging folders), or a lock on the
//!   `.writing-` file itself.
//! - the first time a run asks for a folder of the cache (`Cache::dir`),
//!   [`Cache::sweep`] removes the temporaries of dead runs: those older
//!   than the run whose lock nobody holds.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use super::KernelError;

/// Root of natvet's download/extraction cache.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    /// When this run opened the cache: only what is older was left by
    /// another run.
    opened: SystemTime,
    /// What [`Cache::sweep_once`] removed, once it ran (shared by clones).
    swept: Arc<OnceLock<Vec<PathBuf>>>,
}

impl Cache {
    /// `$NATVET_CACHE`, else `$XDG_CACHE_HOME/natvet`, else `$HOME/.cache/natvet`.
    pub fn from_env() -> Result<Cache, KernelError> {
        let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(p) = non_empty("NATVET_CACHE") {
            return Ok(Cache::new(PathBuf::from(p)));
        }
        if let Some(p) = non_empty("XDG_CACHE_HOME") {
            return Ok(Cache::new(PathBuf::from(p).join("natvet")));
        }
        if let Some(p) = non_empty("HOME") {
            return Ok(Cache::new(PathBuf::from(p).join(".cache").join("natvet")));
        }
        Err(KernelError::NoCacheDir)
    }

    /// The cache at `root`, opened now: what dead runs left there is swept
    /// before this run first writes into it.
    pub fn new(root: PathBuf) -> Cache {
        Cache {
            root,
            opened: SystemTime::now(),
            swept: Arc::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder `sub` of the cache, created if need be. Every writer gets
    /// its folder here, so the first call sweeps the cache.
    pub(crate) fn dir(&self, sub: &str) -> Result<PathBuf, KernelError> {
        self.sweep_once();
        let d = self.root.join(sub);
        fs::create_dir_all(&d)
            .map_err(|e| KernelError::io(format!("creating {}", d.display()), e))?;
        Ok(d)
    }
}

/// An exclusive advisory lock held until dropped.
pub(crate) struct Lock {
    _file: File,
}

pub(crate) fn lock(path: &Path) -> Result<Lock, KernelError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| KernelError::io(format!("opening lock {}", path.display()), e))?;
    fs4::fs_std::FileExt::lock_exclusive(&file)
        .map_err(|e| KernelError::io(format!("locking {}", path.display()), e))?;
    Ok(Lock { _file: file })
}

/// Write `data` to `path` atomically: into `.writing-NAME-XXXXXX` beside
/// it, locked while it is written (so the sweep of another run leaves it
/// alone), synced, then renamed into place.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), KernelError> {
    let ctx = || format!("writing {}", path.display());
    let mut tmp = writing_beside(path).map_err(|e| KernelError::io(ctx(), e))?;
    tmp.write_all(data).map_err(|e| KernelError::io(ctx(), e))?;
    make_readable(tmp.path(), false).map_err(|e| KernelError::io(ctx(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| KernelError::io(ctx(), e))?;
    tmp.persist(path)
        .map_err(|e| KernelError::io(ctx(), e.error))?;
    Ok(())
}

/// A new `.writing-NAME-XXXXXX` beside `path`, locked by its writer until
/// it is closed.
fn writing_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".writing-{}-", name.as_deref().unwrap_or("file")))
        .tempfile_in(dir)?;
    fs4::fs_std::FileExt::lock_exclusive(tmp.as_file())?;
    Ok(tmp)
}

pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// The SHA-256 of every regular file below `dir` (paths relative to it),
/// hashed on up to four threads.
pub(crate) fn manifest(dir: &Path) -> std::io::Result<std::collections::BTreeMap<String, String>> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|rel| Ok((rel.clone(), sha256_file(&dir.join(rel))?)))
                        .collect::<std::io::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = std::collections::BTreeMap::new();
        for h in handles {
            let part = h
                .join()
                .map_err(|_| std::io::Error::other("a hashing thread panicked"))??;
            out.extend(part);
        }
        Ok(out)
    })
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(root, &e.path(), out)?;
        } else if t.is_file() {
            if let Ok(rel) = e.path().strip_prefix(root) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    Ok(())
}

/// True when every file of `expected` below `dir` has that SHA-256.
pub(crate) fn manifest_holds(
    dir: &Path,
    expected: &std::collections::BTreeMap<String, String>,
) -> bool {
    let files: Vec<(&String, &String)> = expected.iter().collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter().all(|(rel, want)| {
                        sha256_file(&dir.join(rel)).is_ok_and(|got| &got == *want)
                    })
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .all(|h| h.join().unwrap_or(false))
    })
}

/// Temp files/dirs are created 0600/0700; cache entries are meant to be
/// readable (e.g. by a qemu running as another user).
pub(crate) fn make_readable(path: &Path, dir: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        path,
        fs::Permissions::from_mode(if dir { 0o755 } else { 0o644 }),
    )
}

// ---------------------------------------------------------------- leftovers

/// The folders of the cache its writers leave temporaries in, `*` standing
/// for every folder there: the parents of entries and downloads, the
/// folders files are written into atomically (a suite's index, a local
/// image's vmlinux, a build's marker, an old entry's marker).
const SWEPT_FOLDERS: &[&str] = &[
    "kernels",
    "kernels/*",
    "kernels/*/*",
    "debs",
    "debs/*",
    "index/*/*",
    "src",
    "local",
    "local/*",
    "builds/*",
];

/// How old a `.tmpXXXXXX` (what natvets before `.writing-` left, without a
/// lock) must be before it is taken for a dead run's.
const UNLOCKED_GRACE: Duration = Duration::from_secs(3600);

/// A temporary of a writer of the cache, by its name.
#[derive(Debug, PartialEq, Eq)]
enum Temporary {
    /// `.tmp-NAME-XXXXXX` (a staging folder) or `.partial-NAME-XXXXXX` (a
    /// download): its writer holds `NAME.lock` beside it.
    Owned(String),
    /// `.writing-NAME-XXXXXX`: its writer holds a lock on the file itself.
    Writing,
    /// `.tmpXXXXXX`: written atomically by a natvet before `.writing-`,
    /// which took no lock.
    Unlocked,
}

impl Temporary {
    /// What `name` is, if a writer of the cache made it (tempfile's
    /// random suffix is six letters and digits).
    fn of(name: &str) -> Option<Temporary> {
        let random = |s: &str| s.len() == 6 && s.bytes().all(|b| b.is_ascii_alphanumeric());
        if let Some(rest) = name.strip_prefix(".writing-") {
            let (file, suffix) = rest.rsplit_once('-')?;
            return (!file.is_empty() && random(suffix)).then_some(Temporary::Writing);
        }
        if let Some(rest) = name
            .strip_prefix(".tmp-")
            .or_else(|| name.strip_prefix(".partial-"))
        {
            let (owner, suffix) = rest.rsplit_once('-')?;
            return (!owner.is_empty() && random(suffix))
                .then(|| Temporary::Owned(owner.to_string()));
        }
        name.strip_prefix(".tmp")
            .filter(|s| random(s))
            .map(|_| Temporary::Unlocked)
    }
}

impl Cache {
    /// Sweep the cache, the first time this run (this `Cache` and its
    /// clones) asks; says what the sweep removed, every time.
    pub fn sweep_once(&self) -> &[PathBuf] {
        self.swept.get_or_init(|| self.sweep())
    }

    /// Remove what runs that died left in the cache: staging folders of
    /// entries (`.tmp-NAME-XXXXXX`: unpacked kernels, source trees, module
    /// copies), partial downloads (`.partial-FILE-XXXXXX`), files being
    /// written atomically (`.writing-FILE-XXXXXX`) and the attempt folders
    /// of builds that never finished. A temporary is removed only when it
    /// is older than this run and nobody holds the lock its writer held (a
    /// build's attempts: when its lock is free), so a live run's work is
    /// never touched. Returns what was removed.
    pub fn sweep(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for dir in SWEPT_FOLDERS.iter().flat_map(|p| self.folders(p)) {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                let path = e.path();
                let Some(kind) = e.file_name().to_str().and_then(Temporary::of) else {
                    continue;
                };
                let dead = match &kind {
                    Temporary::Owned(owner) => {
                        self.older_than_run(&path, Duration::ZERO)
                            && lock_is_free(&dir.join(format!("{owner}.lock")))
                    }
                    Temporary::Writing => {
                        self.older_than_run(&path, Duration::ZERO) && lock_is_free(&path)
                    }
                    Temporary::Unlocked => self.older_than_run(&path, UNLOCKED_GRACE),
                };
                if dead && remove(&path).is_ok() {
                    removed.push(path);
                }
            }
        }
        // A build that never finished: its attempts (the O= folder and the
        // patched copy of the source), gone once its lock is free, so that
        // no later run builds on what a killed one half wrote.
        let builds = self.root.join("builds");
        if let Ok(rd) = fs::read_dir(&builds) {
            for e in rd.flatten() {
                let dir = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if dir.is_dir()
                    && !dir.join("complete.json").is_file()
                    && lock_is_free(&builds.join(format!("{name}.lock")))
                {
                    removed.extend(remove_unfinished_build(&dir));
                }
            }
        }
        removed
    }

    /// The folders a pattern of [`SWEPT_FOLDERS`] names (none of them a
    /// temporary or a symlink).
    fn folders(&self, pattern: &str) -> Vec<PathBuf> {
        let mut dirs = vec![self.root.clone()];
        for part in pattern.split('/') {
            dirs = dirs
                .into_iter()
                .flat_map(|d| {
                    if part != "*" {
                        return vec![d.join(part)];
                    }
                    fs::read_dir(&d)
                        .map(|rd| {
                            rd.flatten()
                                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                                .filter(|e| {
                                    e.file_name().to_str().and_then(Temporary::of).is_none()
                                })
                                .map(|e| e.path())
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect();
        }
        dirs
    }

    /// True when `path` was last changed more than `margin` before this run
    /// opened the cache.
    fn older_than_run(&self, path: &Path, margin: Duration) -> bool {
        fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t + margin < self.opened)
    }
}

fn remove(path: &Path) -> std::io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

/// `out-XXXXXX`: an attempt folder's name (tempfile's six letters and digits).
pub(crate) fn is_attempt_name(name: &str) -> bool {
    name.strip_prefix("out-")
        .is_some_and(|r| r.len() == 6 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Remove what earlier attempts of the unfinished `natvet kernels build`
/// in `dir` left (its lock held, or free: see `super::build`): attempt folders, and an older natvet's `build/` and
/// `source/`. The log stays. Returns what was removed.
pub(crate) fn remove_unfinished_build(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = is_attempt_name(&name) || name == "build" || name == "source";
        // A compiler that outlived a killed run may still write: what
        // cannot be removed now is removed next time, and never used.
        if stale && e.path().is_dir() && fs::remove_dir_all(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// True when nobody holds the lock on `path` (taken and let go at once);
/// a lock file that does not exist is held by nobody.
fn lock_is_free(path: &Path) -> bool {
    match File::open(path) {
        Ok(file) => fs4::fs_std::FileExt::try_lock_exclusive(&file).unwrap_or(false),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

// ---------------------------------------------------------------- entries

/// A folder of the cache that is written once and then only read
/// (`kernels/RELEASE/`, `local/modules-KEY/`, `src/PACKAGE_VERSION/`): it is
/// filled in a temp folder beside it, under the lock `PARENT/NAME.lock`,
/// marked complete last and renamed into place, so a reader sees all of it
/// or nothing. Whoever comes first builds it; the others wait on the lock
/// and find it done.
pub(crate) struct Entry {
    parent: PathBuf,
    name: String,
}

/// The file that marks an entry complete, written last (atomically).
pub(crate) struct MarkerFile {
    pub name: &'static str,
    pub contents: Vec<u8>,
}

impl MarkerFile {
    /// An empty marker: the entry's files say everything.
    pub fn empty(name: &'static str) -> MarkerFile {
        MarkerFile {
            name,
            contents: Vec::new(),
        }
    }
}

/// An entry being written: a temp folder in the entry's parent.
pub(crate) struct Staging {
    dir: tempfile::TempDir,
}

impl Staging {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Index the module tree `root/lib/modules/RELEASE` of the entry with
    /// the host's depmod (Debian's packages ship no modules.dep).
    pub fn depmod(&self, release: &str) -> Result<(), KernelError> {
        depmod(&self.path().join("root"), release)
    }
}

impl Entry {
    pub fn new(parent: PathBuf, name: impl Into<String>) -> Entry {
        Entry {
            parent,
            name: name.into(),
        }
    }

    /// Where the entry lives once complete.
    pub fn path(&self) -> PathBuf {
        self.parent.join(&self.name)
    }

    /// The entry as `load` reads it; if `load` finds nothing usable, build it
    /// first: `build` fills a staging folder and says what marks it
    /// complete; the marker is written last and the folder renamed into
    /// place (replacing an incomplete leftover).
    pub fn load_or_publish<T, E: From<KernelError>>(
        &self,
        load: impl Fn(&Path) -> Option<T>,
        build: impl FnOnce(&Staging) -> Result<MarkerFile, E>,
        progress: &dyn Fn(&str),
    ) -> Result<T, E> {
        let final_dir = self.path();
        if let Some(t) = load(&final_dir) {
            return Ok(t);
        }
        let _lock = lock(&self.parent.join(format!("{}.lock", self.name)))?;
        if let Some(t) = load(&final_dir) {
            return Ok(t);
        }
        let staging = self.stage(progress)?;
        let marker = build(&staging)?;
        self.publish(staging, &marker)?;
        load(&final_dir).ok_or_else(|| {
            KernelError::Extract {
                what: self.name.clone(),
                reason: "the entry is incomplete right after it was written".into(),
                cache_hint: final_dir.clone(),
            }
            .into()
        })
    }

    /// A fresh staging folder, after removing those that interrupted runs
    /// left (we hold the entry's lock, so nobody else is writing one).
    fn stage(&self, progress: &dyn Fn(&str)) -> Result<Staging, KernelError> {
        let prefix = format!(".tmp-{}-", self.name);
        if let Ok(entries) = fs::read_dir(&self.parent) {
            for e in entries.flatten() {
                let name = e.file_name();
                let leftover = name
                    .to_str()
                    .and_then(|n| n.strip_prefix(&prefix))
                    .is_some_and(
                        // tempfile's random suffix; anything else is another entry's.
                        |rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()),
                    );
                if leftover {
                    progress(&format!(
                        "removing {} left by an interrupted run",
                        e.path().display()
                    ));
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(&self.parent)
            .map_err(|e| {
                KernelError::io(format!("creating a folder in {}", self.parent.display()), e)
            })?;
        Ok(Staging { dir })
    }

    fn publish(&self, staging: Staging, marker: &MarkerFile) -> Result<(), KernelError> {
        write_atomic(&staging.path().join(marker.name), &marker.contents)?;
        let final_dir = self.path();
        if final_dir.exists() {
            // A leftover without a valid marker (we hold the lock).
            fs::remove_dir_all(&final_dir).map_err(|e| {
                KernelError::io(format!("removing stale {}", final_dir.display()), e)
            })?;
        }
        make_readable(staging.path(), true)
            .map_err(|e| KernelError::io(format!("chmod {}", staging.path().display()), e))?;
        let tmp_path = staging.dir.keep();
        fs::rename(&tmp_path, &final_dir).map_err(|e| {
            let _ = fs::remove_dir_all(&tmp_path);
            KernelError::io(format!("moving into {}", final_dir.display()), e)
        })
    }
}

/// Run the host's `depmod -b ROOT RELEASE`.
pub(crate) fn depmod(root: &Path, release: &str) -> Result<(), KernelError> {
    for exe in ["depmod", "/usr/sbin/depmod", "/sbin/depmod"] {
        match crate::child::output(
            std::process::Command::new(exe)
                .arg("-b")
                .arg(root)
                .arg(release),
        ) {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                return Err(KernelError::Depmod {
                    root: root.to_path_buf(),
                    reason: format!(
                        "{} ({})",
                        String::from_utf8_lossy(&out.stderr).trim(),
                        out.status
                    ),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(KernelError::io(format!("running {exe}"), e)),
        }
    }
    Err(KernelError::NoDepmod)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// Set `path`'s modification time `secs` seconds back (forward when
    /// negative): how old a leftover looks to the sweep.
    pub(crate) fn backdate(path: &Path, secs: i64) {
        let now = SystemTime::now();
        let t = if secs >= 0 {
            now - Duration::from_secs(secs.unsigned_abs())
        } else {
            now + Duration::from_secs(secs.unsigned_abs())
        };
        File::open(path).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn sweeps_what_dead_runs_left_but_not_live_work() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let dir = |s: &str| {
            let d = r.join(s);
            fs::create_dir_all(&d).unwrap();
            d
        };
        let (k, d, i) = (dir("kernels"), dir("debs/acme"), dir("index/acme/stable"));
        let (l, b) = (dir("local/abc"), dir("builds/linux-source-6.12_1_abc"));
        dir("builds/linux-source-6.12_1_abc/source/x");
        // Left by runs that died an hour ago: a staged kernel, a download,
        // files written atomically (an index, a vmlinux, a build's marker),
        // one named as natvets before `.writing-` named them, and the
        // patched source of a build that never finished.
        let dead = [
            k.join(".tmp-6.1.0-57-amd64-Ab12Cd"),
            d.join(".partial-k.deb-Xy12Zz"),
            i.join(".writing-InRelease-Ab12Cd"),
            l.join(".writing-vmlinux-Ab12Cd"),
            b.join(".writing-complete.json-Ab12Cd"),
            i.join(".tmpAb12Cd"),
            b.join("source"),
        ];
        fs::create_dir(&dead[0]).unwrap();
        for p in &dead[1..6] {
            fs::write(p, b"half").unwrap();
        }
        fs::write(k.join("6.1.0-57-amd64.lock"), b"").unwrap();
        for p in &dead {
            backdate(p, 2 * 3600);
        }
        // Live runs: they hold the lock of what they write (a staging
        // folder: the entry's lock; a file written atomically: the file's own).
        let staging = k.join(".tmp-7.3-amd64-Qw12Er");
        fs::create_dir(&staging).unwrap();
        backdate(&staging, 3600);
        let held = lock(&k.join("7.3-amd64.lock")).unwrap();
        let writing = i.join(".writing-Release-Qw12Er");
        fs::write(&writing, b"half").unwrap();
        backdate(&writing, 3600);
        let writer = File::open(&writing).unwrap();
        fs4::fs_std::FileExt::lock_exclusive(&writer).unwrap();
        // A natvet before `.writing-` may be writing this one (it took no
        // lock): too recent to tell.
        let legacy = i.join(".tmpQw12Er");
        fs::write(&legacy, b"half").unwrap();
        backdate(&legacy, 30 * 60);
        // Not leftovers.
        fs::create_dir(k.join("6.1.0-57-amd64")).unwrap();
        fs::write(d.join("k.deb"), b"whole").unwrap();
        fs::write(i.join("InRelease"), b"whole").unwrap();
        for p in [
            k.join("6.1.0-57-amd64"),
            d.join("k.deb"),
            i.join("InRelease"),
        ] {
            backdate(&p, 2 * 3600);
        }
        let cache = Cache::new(r.to_path_buf());
        // Newer than this run: whoever left it died after it began (or is
        // just starting); the next run sweeps it.
        let newer = d.join(".partial-j.deb-Lt12Er");
        fs::write(&newer, b"half").unwrap();
        backdate(&newer, -60);

        let mut removed = cache.sweep();
        removed.sort();
        let mut want = dead.to_vec();
        want.sort();
        assert_eq!(removed, want);
        for p in [&staging, &writing, &legacy, &newer] {
            assert!(p.exists(), "{} was removed", p.display());
        }
        for p in [
            "kernels/6.1.0-57-amd64",
            "debs/acme/k.deb",
            "index/acme/stable/InRelease",
        ] {
            assert!(r.join(p).exists(), "{p} was removed");
        }
        // Once the live runs are gone, the next run sweeps their leftovers.
        drop((held, writer));
        let mut removed = Cache::new(r.to_path_buf()).sweep();
        removed.sort();
        let mut want = vec![staging, writing];
        want.sort();
        assert_eq!(removed, want);
    }

    #[test]
    fn unfinished_build_attempts_go_once_their_lock_is_free() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path().to_path_buf());
        // A build attempt a killed run left (its lock free), and one a live
        // run is writing (its lock held).
        let dead_build = cache.dir("builds/linux-source-6.12_2_def").unwrap();
        fs::create_dir_all(dead_build.join("out-Zz9Yy8/build")).unwrap();
        fs::write(dead_build.join("natvet-build.log"), b"log").unwrap();
        let live_build = cache.dir("builds/linux-source-6.12_3_ghi").unwrap();
        fs::create_dir_all(live_build.join("out-Qq1Ww2/build")).unwrap();
        let live_lock = lock(&root.path().join("builds/linux-source-6.12_3_ghi.lock")).unwrap();
        let removed = cache.sweep();
        assert_eq!(removed, [dead_build.join("out-Zz9Yy8")]);
        assert!(dead_build.join("natvet-build.log").exists(), "logs stay");
        assert!(live_build.join("out-Qq1Ww2").exists());
        // The live run ended: what it left goes now.
        drop(live_lock);
        assert_eq!(cache.sweep(), [live_build.join("out-Qq1Ww2")]);
    }

    #[test]
    fn temporaries_are_told_by_their_names() {
        let of = Temporary::of;
        assert_eq!(of(".writing-InRelease-Ab12Cd"), Some(Temporary::Writing));
        assert_eq!(of(".writing-a-b.json-Ab12Cd"), Some(Temporary::Writing));
        assert_eq!(
            of(".partial-k.deb-Xy12Zz"),
            Some(Temporary::Owned("k.deb".into()))
        );
        assert_eq!(of(".tmp-e-x-AbC123"), Some(Temporary::Owned("e-x".into())));
        assert_eq!(of(".tmpAb12Cd"), Some(Temporary::Unlocked));
        // A kbuild or source tree's own names, and near misses.
        for name in [
            ".tmp_vmlinux1",
            ".tmp-e",
            ".writing--Ab12Cd",
            ".tmpAb12",
            "InRelease",
        ] {
            assert_eq!(of(name), None, "{name}");
        }
        // What write_atomic writes into is a `.writing-` file, locked
        // until its writer closes it (or dies).
        let d = tempfile::tempdir().unwrap();
        let tmp = writing_beside(&d.path().join("InRelease")).unwrap();
        let name = tmp.path().file_name().unwrap().to_str().unwrap();
        assert_eq!(of(name), Some(Temporary::Writing), "{name}");
        assert!(!lock_is_free(tmp.path()));
        let (file, path) = tmp.keep().unwrap();
        drop(file);
        assert!(lock_is_free(&path));
        fs::remove_file(&path).unwrap();
        write_atomic(&d.path().join("InRelease"), b"whole").unwrap();
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["InRelease"]);
    }

    #[test]
    fn manifests_catch_changed_files() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("a/b")).unwrap();
        fs::write(d.path().join("a/b/m.ko"), b"module").unwrap();
        fs::write(d.path().join("vmlinuz"), b"kernel").unwrap();
        let m = manifest(d.path()).unwrap();
        assert_eq!(m.len(), 2);
        assert!(manifest_holds(d.path(), &m));
        // Same size, other content.
        fs::write(d.path().join("a/b/m.ko"), b"modulX").unwrap();
        assert!(!manifest_holds(d.path(), &m));
        fs::remove_file(d.path().join("a/b/m.ko")).unwrap();
        assert!(!manifest_holds(d.path(), &m));
    }

    #[test]
    fn an_entry_is_built_once_and_leftovers_go() {
        let root = tempfile::tempdir().unwrap();
        let parent = root.path().to_path_buf();
        // Left by a killed run, and a neighbour whose name starts alike.
        fs::create_dir(parent.join(".tmp-e-AbC123")).unwrap();
        fs::create_dir(parent.join(".tmp-e-x-AbC123")).unwrap();
        let entry = Entry::new(parent.clone(), "e");
        let load = |d: &Path| d.join("complete").is_file().then(|| d.join("f"));
        let built = std::cell::Cell::new(0);
        let build = |s: &Staging| {
            built.set(built.get() + 1);
            fs::write(s.path().join("f"), b"x").map_err(|e| KernelError::io("f".into(), e))?;
            Ok::<_, KernelError>(MarkerFile::empty("complete"))
        };
        let f = entry.load_or_publish(load, build, &|_| {}).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"x");
        let again = entry
            .load_or_publish(
                load,
                |_| -> Result<MarkerFile, KernelError> { panic!("rebuilt") },
                &|_| {},
            )
            .unwrap();
        assert_eq!(again, f);
        assert_eq!(built.get(), 1);
        assert!(!parent.join(".tmp-e-AbC123").exists());
        assert!(parent.join(".tmp-e-x-AbC123").exists());
        // An incomplete leftover in the entry's place is replaced.
        let other = Entry::new(parent.clone(), "o");
        fs::create_dir(other.path()).unwrap();
        fs::write(other.path().join("junk"), b"").unwrap();
        other.load_or_publish(load, build, &|_| {}).unwrap();
        assert!(!other.path().join("junk").exists());
    }
}

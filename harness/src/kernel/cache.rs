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

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::KernelError;

/// Root of natvet's download/extraction cache.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
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

    pub fn new(root: PathBuf) -> Cache {
        Cache { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn dir(&self, sub: &str) -> Result<PathBuf, KernelError> {
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

/// Write `data` to `path` atomically (temp file in the same dir + rename).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), KernelError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let ctx = || format!("writing {}", path.display());
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| KernelError::io(ctx(), e))?;
    tmp.write_all(data).map_err(|e| KernelError::io(ctx(), e))?;
    make_readable(tmp.path(), false).map_err(|e| KernelError::io(ctx(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| KernelError::io(ctx(), e))?;
    tmp.persist(path)
        .map_err(|e| KernelError::io(ctx(), e.error))?;
    Ok(())
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

impl Cache {
    /// Remove what runs that died left in the cache: staging folders of
    /// entries (`.tmp-NAME-XXXXXX`: unpacked kernels, source trees, module
    /// copies), partial downloads (`.partial-FILE-XXXXXX`) and the attempt
    /// folders of builds that never finished. A leftover is removed
    /// only when the lock its writer held (`NAME.lock`) is free, so a live
    /// run's work is never touched. Returns what was removed.
    pub fn sweep(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.root.join("kernels"), self.root.join("debs")];
        for sub in ["kernels", "debs"] {
            if let Ok(rd) = fs::read_dir(self.root.join(sub)) {
                dirs.extend(
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_dir() && !is_leftover_name(p)),
                );
            }
        }
        dirs.extend(["src", "local"].iter().map(|s| self.root.join(s)));
        let mut removed = Vec::new();
        for dir in dirs {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                let path = e.path();
                let Some(owner) = leftover_owner(&path) else {
                    continue;
                };
                if lock_is_free(&dir.join(format!("{owner}.lock"))) {
                    let gone = if path.is_dir() {
                        fs::remove_dir_all(&path)
                    } else {
                        fs::remove_file(&path)
                    };
                    if gone.is_ok() {
                        removed.push(path);
                    }
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

fn is_leftover_name(p: &Path) -> bool {
    leftover_owner(p).is_some()
}

/// `NAME` of `.tmp-NAME-XXXXXX` or `.partial-NAME-XXXXXX` (tempfile's
/// random suffix of six letters and digits).
fn leftover_owner(p: &Path) -> Option<String> {
    let name = p.file_name()?.to_str()?;
    let rest = name
        .strip_prefix(".tmp-")
        .or_else(|| name.strip_prefix(".partial-"))?;
    let (owner, suffix) = rest.rsplit_once('-')?;
    (suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_alphanumeric()) && !owner.is_empty())
        .then(|| owner.to_string())
}

/// True when nobody holds the lock at `path` (taken and let go at once).
fn lock_is_free(path: &Path) -> bool {
    let Ok(file) = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
    else {
        return false;
    };
    fs4::fs_std::FileExt::try_lock_exclusive(&file).unwrap_or(false)
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
mod tests {
    use super::*;

    #[test]
    fn sweeps_what_dead_runs_left_but_not_live_work() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path().to_path_buf());
        let k = cache.dir("kernels").unwrap();
        let d = cache.dir("debs/acme").unwrap();
        let b = cache
            .dir("builds/linux-source-6.12_1_abc/source/x")
            .unwrap();
        fs::create_dir(k.join(".tmp-6.1.0-57-amd64-Ab12Cd")).unwrap();
        // A build attempt a killed run left (its lock free), and one a live
        // run is writing (its lock held).
        let dead_build = cache.dir("builds/linux-source-6.12_2_def").unwrap();
        fs::create_dir_all(dead_build.join("out-Zz9Yy8/build")).unwrap();
        fs::write(dead_build.join("natvet-build.log"), b"log").unwrap();
        let live_build = cache.dir("builds/linux-source-6.12_3_ghi").unwrap();
        fs::create_dir_all(live_build.join("out-Qq1Ww2/build")).unwrap();
        let live_lock = lock(&root.path().join("builds/linux-source-6.12_3_ghi.lock")).unwrap();
        fs::write(d.join(".partial-k.deb-Xy12Zz"), b"half").unwrap();
        fs::write(k.join("6.1.0-57-amd64.lock"), b"").unwrap();
        // A live run: it holds the lock of what it writes.
        fs::create_dir(k.join(".tmp-7.3-amd64-Qw12Er")).unwrap();
        let held = lock(&k.join("7.3-amd64.lock")).unwrap();
        // Not leftovers.
        fs::create_dir(k.join("6.1.0-57-amd64")).unwrap();
        fs::write(d.join("k.deb"), b"whole").unwrap();
        let removed = cache.sweep();
        assert_eq!(removed.len(), 4, "{removed:?}");
        assert!(!dead_build.join("out-Zz9Yy8").exists());
        assert!(dead_build.join("natvet-build.log").exists(), "logs stay");
        assert!(live_build.join("out-Qq1Ww2").exists());
        drop(live_lock);
        assert!(!k.join(".tmp-6.1.0-57-amd64-Ab12Cd").exists());
        assert!(!d.join(".partial-k.deb-Xy12Zz").exists());
        assert!(!b.exists());
        assert!(k.join(".tmp-7.3-amd64-Qw12Er").exists());
        assert!(k.join("6.1.0-57-amd64").exists() && d.join("k.deb").exists());
        // Both runs ended: what they left goes now.
        drop(held);
        assert_eq!(cache.sweep().len(), 2);
        assert!(!live_build.join("out-Qq1Ww2").exists());
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

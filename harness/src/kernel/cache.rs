//! The on-disk cache shared by natvet processes.
//!
//! Layout (all below the cache root):
//! - `index/SUITE.Packages.xz` — the archive's Packages index per suite (6 h)
//! - `index/SUITE.kernels.json` — its kernel stanzas, parsed (tied to the .xz)
//! - `debs/NAME_VERSION_amd64.deb` — downloaded, checksum-verified packages
//! - `kernels/RELEASE/` — `vmlinuz`, `vmlinux` (if PVH), `root/lib/modules/RELEASE/`,
//!   and `complete.json`, written last; a directory without it is never used
//! - `kernels/RELEASE.lock` — per-kernel lock file
//! - `local/SHA256/` — vmlinux extracted from a local bzImage, and private
//!   depmod'ed module trees for local module folders; `local/build-modules-SHA/`
//!   — `make modules_install` of a `build:PATH` tree (SHA of its bzImage)
//! - `src/`, `builds/` — Debian kernel sources and `natvet kernels build`
//!   output (see [`super::build`])

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

/// Temp files/dirs are created 0600/0700; cache entries are meant to be
/// readable (e.g. by a qemu running as another user).
pub(crate) fn make_readable(path: &Path, dir: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        path,
        fs::Permissions::from_mode(if dir { 0o755 } else { 0o644 }),
    )
}

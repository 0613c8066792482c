//! Module folders the user gives (`--modules`, a build tree's installed
//! modules): find `lib/modules/RELEASE` in them and, when it has no
//! `modules.dep`, index a private copy in the cache (`local/modules-KEY/`:
//! real folders, symlinked modules, depmod'ed), leaving the user's folder
//! untouched.

use std::fs;
use std::path::{Path, PathBuf};

use super::cache::{self, Cache};
use super::error::KernelError;

fn looks_like_module_dir(d: &Path) -> bool {
    ["modules.dep", "modules.order", "modules.builtin", "kernel"]
        .iter()
        .any(|f| d.join(f).exists())
}

/// Find lib/modules/RELEASE in the user's folder; if it has no modules.dep,
/// build a private depmod'ed symlink copy in the cache.
pub(crate) fn local_modules(
    path: &Path,
    release: Option<&str>,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, KernelError> {
    if !path.is_dir() {
        return Err(KernelError::LocalFileMissing {
            what: "module folder",
            path: path.to_path_buf(),
        });
    }
    let path = fs::canonicalize(path)
        .map_err(|e| KernelError::io(format!("resolving {}", path.display()), e))?;
    let bad = |reason: String| KernelError::BadModules {
        path: path.clone(),
        reason,
    };
    let mdir = if looks_like_module_dir(&path) {
        path.clone()
    } else {
        let base = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|b| path.join(b))
            .find(|b| b.is_dir())
            .ok_or_else(|| bad("it has neither modules.order/kernel/ nor lib/modules/".into()))?;
        match release.map(|r| base.join(r)).filter(|d| d.is_dir()) {
            Some(d) => d,
            None => {
                let subdirs: Vec<PathBuf> = fs::read_dir(&base)
                    .map_err(|e| KernelError::io(format!("listing {}", base.display()), e))?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect();
                match subdirs.as_slice() {
                    [one] => one.clone(),
                    [] => return Err(bad(format!("{} is empty", base.display()))),
                    _ => {
                        return Err(bad(format!(
                            "{} holds several releases and none matches the kernel's ({})",
                            base.display(),
                            release.unwrap_or("unknown")
                        )))
                    }
                }
            }
        }
    };
    let name = mdir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("the folder name is not valid UTF-8".into()))?
        .to_string();
    if let Some(r) = release.filter(|r| *r != name) {
        progress(&format!(
            "note: module folder {name} does not match the kernel release {r}"
        ));
    }
    if mdir.join("modules.dep").is_file() {
        return Ok(mdir);
    }

    // Private copy: real directories, symlinked files, depmod'ed.
    let stamp = fs::metadata(&mdir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let key = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            format!("{}\0{stamp}", mdir.display()).as_bytes(),
        ))
    };
    let entry = cache::Entry::new(cache.dir("local")?, format!("modules-{}", &key[..32]));
    let in_entry = PathBuf::from("root/lib/modules").join(&name);
    let done = |d: &Path| d.join("complete").is_file().then(|| d.join(&in_entry));
    entry.load_or_publish(
        done,
        |staging| {
            symlink_tree(&mdir, &staging.path().join(&in_entry))
                .map_err(|e| KernelError::io(format!("mirroring {}", mdir.display()), e))?;
            progress(&format!(
                "running depmod on a private copy of {} (it has no modules.dep)",
                mdir.display()
            ));
            staging.depmod(&name)?;
            Ok::<_, KernelError>(cache::MarkerFile::empty("complete"))
        },
        progress,
    )
}

fn symlink_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dst)?;
    for e in fs::read_dir(src)? {
        let e = e?;
        let ft = e.file_type()?;
        let to = dst.join(e.file_name());
        if ft.is_dir() {
            symlink_tree(&e.path(), &to)?;
        } else if e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("modules."))
        {
            // depmod rewrites these; leave the user's files untouched.
            if !e.file_name().to_str().is_some_and(|n| {
                matches!(
                    n,
                    "modules.order" | "modules.builtin" | "modules.builtin.modinfo"
                )
            }) {
                continue;
            }
            fs::copy(e.path(), &to)?;
        } else {
            std::os::unix::fs::symlink(e.path(), &to)?;
        }
    }
    Ok(())
}

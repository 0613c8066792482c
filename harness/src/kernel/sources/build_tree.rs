//! `build:PATH`: a kernel build tree (an in-tree build or an `O=` output
//! folder) with `arch/x86/boot/bzImage`, booted like a local image, its
//! modules installed from it once into the cache
//! (`local/build-modules-SHA/`). `natvet kernels build` makes such trees.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{local, KernelSource, KernelSpec};
use crate::kernel::cache::{sha256_file, Cache, Entry, MarkerFile};
use crate::kernel::error::{ErrorClass, KernelError, SourceError};
use crate::kernel::{modtree, Kernel};

/// A kernel build tree.
pub(super) struct BuildTree;

/// Where kbuild leaves the x86 boot image, relative to the build tree.
pub const BUILD_BZIMAGE: &str = "arch/x86/boot/bzImage";

/// True when a kernel `.config` text has `CONFIG_MODULES=y`.
pub fn config_has_modules(config: &str) -> bool {
    config.lines().any(|l| l.trim_end() == "CONFIG_MODULES=y")
}

/// What is wrong with a build tree.
#[derive(Debug, thiserror::Error)]
pub enum BuildTreeError {
    #[error("{} is not a finished kernel build tree: {reason}", .path.display())]
    BadBuildTree { path: PathBuf, reason: String },

    #[error("installing the modules of {} failed: {reason}", .tree.display())]
    ModulesInstall { tree: PathBuf, reason: String },
}

impl SourceError for BuildTreeError {
    fn class(&self) -> ErrorClass {
        match self {
            BuildTreeError::BadBuildTree { .. } => ErrorClass::BadInput,
            BuildTreeError::ModulesInstall { .. } => ErrorClass::Infrastructure,
        }
    }
}

impl KernelSource for BuildTree {
    fn name(&self) -> &'static str {
        "build"
    }

    fn forms(&self) -> &'static [&'static str] {
        &["build:PATH (a kernel build tree)"]
    }

    fn prefix(&self) -> &'static str {
        "build:"
    }

    fn claim(&self, spec: &str, modules: Option<&Path>) -> Option<Result<String, String>> {
        let (scheme, rest) = super::scheme_of(spec)?;
        if scheme != "build" {
            return None;
        }
        if modules.is_some() {
            return Some(Err(
                "a build tree brings its own modules; drop --modules".into()
            ));
        }
        let tree = rest.trim();
        if tree.is_empty() {
            return Some(Err(
                "it names no folder; use build:PATH (a kernel build tree)".into(),
            ));
        }
        Some(Ok(tree.to_string()))
    }

    fn resolve(
        &self,
        spec: &KernelSpec,
        cache: &Cache,
        progress: &dyn Fn(&str),
    ) -> Result<Kernel, KernelError> {
        resolve_build_tree(Path::new(spec.arg()), &spec.to_string(), cache, progress)
    }

    fn lookup(
        &self,
        spec: &KernelSpec,
        _cache: &Cache,
        _progress: &dyn Fn(&str),
    ) -> Result<(Option<String>, bool), KernelError> {
        let tree = Path::new(spec.arg());
        Ok((
            fs::read_to_string(tree.join("include/config/kernel.release"))
                .ok()
                .map(|r| r.trim().to_string()),
            tree.join(BUILD_BZIMAGE).is_file(),
        ))
    }
}

/// `build:PATH`: the tree's bzImage (through the local-image path, which
/// extracts and caches the PVH vmlinux), its release, and its modules
/// installed once into the cache.
fn resolve_build_tree(
    tree: &Path,
    spec: &str,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<Kernel, KernelError> {
    if !tree.is_dir() {
        return Err(KernelError::LocalFileMissing {
            what: "kernel build tree",
            path: tree.to_path_buf(),
        });
    }
    let tree = fs::canonicalize(tree)
        .map_err(|e| KernelError::io(format!("resolving {}", tree.display()), e))?;
    let bz = tree.join(BUILD_BZIMAGE);
    if !bz.is_file() {
        return Err(KernelError::from(BuildTreeError::BadBuildTree {
            path: tree,
            reason: format!(
                "it has no {BUILD_BZIMAGE}; run `make bzImage` there (with O=PATH for an output folder), or `natvet kernels build` to build one"
            ),
        }));
    }
    let mut kernel = local::resolve_image(&bz, None, spec, cache, progress)?;
    if let Ok(r) = fs::read_to_string(tree.join("include/config/kernel.release")) {
        let r = r.trim();
        if !r.is_empty() {
            kernel.release = Some(r.to_string());
        }
    }
    let config = fs::read_to_string(tree.join(".config")).unwrap_or_default();
    if config_has_modules(&config) && tree.join("modules.order").is_file() {
        let root = install_build_modules(&tree, &bz, cache, progress)?;
        kernel.modules_dir = Some(modtree::local_modules(
            &root,
            kernel.release.as_deref(),
            cache,
            progress,
        )?);
    }
    Ok(kernel)
}

/// `make modules_install` of a build tree into `CACHE/local/build-modules-SHA/`
/// (SHA of the bzImage), once; returns that root (holding lib/modules/RELEASE).
fn install_build_modules(
    tree: &Path,
    bzimage: &Path,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, KernelError> {
    let sha = sha256_file(bzimage)
        .map_err(|e| KernelError::io(format!("reading {}", bzimage.display()), e))?;
    let entry = Entry::new(cache.dir("local")?, format!("build-modules-{}", &sha[..32]));
    let done = |d: &Path| d.join("complete").is_file().then(|| d.join("root"));
    entry.load_or_publish(
        done,
        |staging| {
            progress(&format!("installing the modules of {}", tree.display()));
            let mut install_path = std::ffi::OsString::from("INSTALL_MOD_PATH=");
            install_path.push(staging.path().join("root"));
            let out = crate::child::output(
                Command::new("nice")
                    .args(["-n", "19", "make", "-s", "-C"])
                    .arg(tree)
                    .arg("modules_install")
                    .arg(install_path)
                    .arg("INSTALL_MOD_STRIP=1"),
            )
            .map_err(|e| BuildTreeError::ModulesInstall {
                tree: tree.to_path_buf(),
                reason: format!("cannot run make ({e}); run `apt-get install -y make`"),
            })?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                let tail: Vec<&str> = err.lines().rev().take(15).collect();
                return Err(KernelError::from(BuildTreeError::ModulesInstall {
                    tree: tree.to_path_buf(),
                    reason: format!(
                        "make modules_install: {}: {}",
                        out.status,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ),
                }));
            }
            Ok::<_, KernelError>(MarkerFile::empty("complete"))
        },
        progress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::resolve;

    #[test]
    fn build_tree_without_bzimage_is_a_user_error() {
        let cache = Cache::new(tempfile::tempdir().unwrap().path().to_path_buf());
        let tree = tempfile::tempdir().unwrap();
        fs::write(tree.path().join(".config"), "CONFIG_MODULES=y\n").unwrap();
        let spec = KernelSpec::parse(&format!("build:{}", tree.path().display()), None).unwrap();
        let e = resolve(&spec, &cache, &|_| {}).unwrap_err();
        assert!(e.is_user_error(), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("arch/x86/boot/bzImage") && m.contains("make bzImage"),
            "{m}"
        );
        let spec = KernelSpec::parse(
            &format!("build:{}", tree.path().join("missing").display()),
            None,
        )
        .unwrap();
        let e = resolve(&spec, &cache, &|_| {}).unwrap_err();
        assert!(e.is_user_error(), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn reads_config_modules() {
        assert!(config_has_modules("CONFIG_64BIT=y\nCONFIG_MODULES=y\n"));
        assert!(!config_has_modules("# CONFIG_MODULES is not set\n"));
        assert!(!config_has_modules("CONFIG_MODULES_TREE_LOOKUP=y\n"));
    }
}

//! A kernel image on disk: `./bzImage`, `/path/vmlinux` (ELF with a PVH
//! note) or `local:PATH`, with an optional module folder (`--modules`).
//! Everything that does not name another source is a path.

use std::fs;
use std::path::Path;

use super::{KernelSource, KernelSpec};
use crate::kernel::cache::{self, Cache};
use crate::kernel::error::{ErrorClass, KernelError, SourceError};
use crate::kernel::{modtree, vmlinux, BootKind, Kernel};

/// A bzImage or a PVH vmlinux on disk.
pub(super) struct LocalImage;

/// Why a local image cannot be booted.
#[derive(Debug, thiserror::Error)]
pub enum LocalImageError {
    #[error("cannot boot {}: {reason}", .path.display())]
    NotBootable {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl SourceError for LocalImageError {
    fn class(&self) -> ErrorClass {
        match self {
            LocalImageError::NotBootable { .. } => ErrorClass::BadInput,
        }
    }
}

impl KernelSource for LocalImage {
    fn name(&self) -> &'static str {
        "local"
    }

    fn forms(&self) -> &'static [&'static str] {
        &["a path to a bzImage/vmlinux"]
    }

    fn prefix(&self) -> &'static str {
        ""
    }

    fn claim(&self, spec: &str, _modules: Option<&Path>) -> Option<Result<String, String>> {
        match super::scheme_of(spec) {
            None => Some(Ok(spec.to_string())),
            Some(("local" | "file", rest)) if !rest.is_empty() => Some(Ok(rest.to_string())),
            Some(_) => None,
        }
    }

    fn resolve(
        &self,
        spec: &KernelSpec,
        cache: &Cache,
        progress: &dyn Fn(&str),
    ) -> Result<Kernel, KernelError> {
        resolve_image(
            Path::new(spec.arg()),
            spec.modules(),
            &spec.to_string(),
            cache,
            progress,
        )
    }

    fn lookup(
        &self,
        spec: &KernelSpec,
        _cache: &Cache,
        _progress: &dyn Fn(&str),
    ) -> Result<(Option<String>, bool), KernelError> {
        Ok((None, Path::new(spec.arg()).exists()))
    }
}

/// Contents of `local/SHA/info.json` for a local bzImage.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LocalInfo {
    release: Option<String>,
    pvh: bool,
    /// SHA-256 of the extracted vmlinux: checked on every use.
    #[serde(default)]
    vmlinux_sha256: Option<String>,
}

/// A bzImage or a PVH vmlinux on disk, with an optional module folder: a
/// bzImage's PVH vmlinux is extracted once into `local/SHA256/`.
pub(super) fn resolve_image(
    image: &Path,
    modules: Option<&Path>,
    spec: &str,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<Kernel, KernelError> {
    if !image.is_file() {
        return Err(KernelError::LocalFileMissing {
            what: "kernel image",
            path: image.to_path_buf(),
        });
    }
    let image = fs::canonicalize(image)
        .map_err(|e| KernelError::io(format!("resolving {}", image.display()), e))?;
    let data =
        fs::read(&image).map_err(|e| KernelError::io(format!("reading {}", image.display()), e))?;
    let (release, boot_image, boot_kind, bzimage) = if vmlinux::is_elf(&data) {
        if !vmlinux::has_pvh_note(&data) {
            return Err(KernelError::from(LocalImageError::NotBootable {
                path: image,
                reason: "this ELF vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), so qemu cannot boot it directly; pass the bzImage instead (arch/x86/boot/bzImage) or build with CONFIG_PVH=y".into(),
            }));
        }
        (
            vmlinux::vmlinux_release(&data),
            image.clone(),
            BootKind::Pvh,
            None,
        )
    } else if vmlinux::is_bzimage(&data) {
        let release = vmlinux::bzimage_release(&data);
        let sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&data))
        };
        let dir = cache.dir(&format!("local/{sha}"))?;
        let info_path = dir.join("info.json");
        let vmlinux_path = dir.join("vmlinux");
        let info: Option<LocalInfo> = fs::read(&info_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|i: &LocalInfo| {
                !i.pvh
                    || i.vmlinux_sha256.is_some()
                        && cache::sha256_file(&vmlinux_path).ok() == i.vmlinux_sha256
            });
        let pvh = match info {
            Some(i) => i.pvh,
            None => {
                let _lock = cache::lock(&dir.join("lock"))?;
                let mut vmlinux_sha256 = None;
                let pvh = match vmlinux::extract_vmlinux(&data) {
                    Ok(elf) if vmlinux::has_pvh_note(&elf) => {
                        cache::write_atomic(&vmlinux_path, &elf)?;
                        vmlinux_sha256 = Some({
                            use sha2::Digest;
                            hex::encode(sha2::Sha256::digest(&elf))
                        });
                        true
                    }
                    Ok(_) => {
                        progress("vmlinux has no PVH note; booting the bzImage");
                        false
                    }
                    Err(e) => {
                        progress(&format!(
                            "could not extract vmlinux ({e}); booting the bzImage"
                        ));
                        false
                    }
                };
                let info = LocalInfo {
                    release: release.clone(),
                    pvh,
                    vmlinux_sha256,
                };
                let json = serde_json::to_vec_pretty(&info)
                    .map_err(|e| KernelError::io("encoding info.json".into(), e.into()))?;
                cache::write_atomic(&info_path, &json)?;
                pvh
            }
        };
        if pvh {
            (release, vmlinux_path, BootKind::Pvh, Some(image.clone()))
        } else {
            (
                release,
                image.clone(),
                BootKind::BzImage,
                Some(image.clone()),
            )
        }
    } else {
        return Err(KernelError::from(LocalImageError::NotBootable {
            path: image,
            reason: "it is neither a bzImage nor an ELF vmlinux; pass arch/x86/boot/bzImage or a vmlinux with a PVH note".into(),
        }));
    };

    let modules_dir = match modules {
        None => None,
        Some(m) => Some(modtree::local_modules(
            m,
            release.as_deref(),
            cache,
            progress,
        )?),
    };
    Ok(Kernel {
        spec: spec.to_string(),
        release,
        boot_image,
        boot_kind,
        bzimage,
        modules_dir,
        package: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::resolve;

    #[test]
    fn missing_local_file_is_a_user_error() {
        let cache = Cache::new(tempfile::tempdir().unwrap().path().to_path_buf());
        let spec = KernelSpec::parse("/nonexistent/bzImage", None).unwrap();
        let e = resolve(&spec, &cache, &|_| {}).unwrap_err();
        assert!(e.is_user_error());
        assert!(e.to_string().contains("/nonexistent/bzImage"));
    }
}

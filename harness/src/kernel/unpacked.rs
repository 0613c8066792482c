//! A kernel unpacked from packages: the cache entry `kernels/RELEASE/`
//! holding `vmlinuz`, `vmlinux` (when it has a PVH note),
//! `root/lib/modules/RELEASE/` (depmod'ed) and `complete.json`, written
//! last. Any source of packaged kernels unpacks into a staging folder and
//! calls [`finish`]; [`load`] reads a complete entry back.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Instant;

use super::cache::{self, MarkerFile, Staging};
use super::error::KernelError;
use super::vmlinux;
use super::{BootKind, Kernel, PackageInfo};

/// The file of a complete `kernels/RELEASE/` entry, written last.
const MARKER: &str = "complete.json";

/// Contents of `kernels/RELEASE/complete.json`, written last.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Marker {
    /// `uname -r` (from the bzImage header when readable).
    release: String,
    package: PackageInfo,
    /// Every package unpacked (the image package, and for split packages
    /// linux-binary-X and linux-modules-X).
    parts: Vec<PackageInfo>,
    boot_kind: BootKind,
    /// Name of the folder under root/lib/modules, if any.
    modules_release: Option<String>,
    /// Sizes of the files a boot needs, relative to the kernel's folder
    /// (kept for natvets that check only these).
    #[serde(default)]
    sizes: BTreeMap<String, u64>,
    /// SHA-256 of every file of the entry (but this marker), relative to
    /// its folder: a file that changed in the cache, even to one of the
    /// same size, makes the entry incomplete, and it is unpacked again
    /// from its verified package.
    #[serde(default)]
    sha256: BTreeMap<String, String>,
}

/// The files of a cached kernel whose sizes the marker records.
fn sized_files(boot_kind: BootKind, modules_release: Option<&str>) -> Vec<String> {
    let mut files = vec!["vmlinuz".to_string()];
    if boot_kind == BootKind::Pvh {
        files.push("vmlinux".into());
    }
    if let Some(m) = modules_release {
        files.push(format!("root/lib/modules/{m}/modules.dep"));
    }
    files
}

/// True when `dir` holds a complete entry (its marker and the files a boot
/// needs, of the recorded sizes), without hashing anything: for listings.
pub(crate) fn is_complete(dir: &Path) -> bool {
    let Some(marker) = fs::read(dir.join(MARKER))
        .ok()
        .and_then(|b| serde_json::from_slice::<Marker>(&b).ok())
    else {
        return false;
    };
    marker
        .sizes
        .iter()
        .all(|(file, size)| fs::metadata(dir.join(file)).ok().map(|m| m.len()) == Some(*size))
}

/// The kernel in `dir`, if its marker is there and every file has the
/// SHA-256 the marker records; named `spec` (what the user asked for).
pub(crate) fn load(dir: &Path, spec: &str) -> Option<Kernel> {
    let mut marker: Marker = serde_json::from_slice(&fs::read(dir.join(MARKER)).ok()?).ok()?;
    let bzimage = dir.join("vmlinuz");
    let boot_image = match marker.boot_kind {
        BootKind::Pvh => dir.join("vmlinux"),
        BootKind::BzImage => bzimage.clone(),
        // Never written to a cache marker.
        BootKind::Running => return None,
    };
    let modules_dir = marker
        .modules_release
        .as_ref()
        .map(|m| dir.join("root/lib/modules").join(m));
    let all_there = boot_image.is_file()
        && bzimage.is_file()
        && modules_dir
            .as_ref()
            .is_none_or(|m| m.join("modules.dep").is_file());
    let sizes_match = marker
        .sizes
        .iter()
        .all(|(file, size)| fs::metadata(dir.join(file)).ok().map(|m| m.len()) == Some(*size));
    if !(all_there && sizes_match) {
        return None;
    }
    if marker.sha256.is_empty() {
        // Unpacked by a natvet that recorded sizes only: record the
        // contents now (the sizes matched), and check them from now on.
        marker.sha256 = cache::manifest(dir).ok()?;
        marker.sha256.remove(MARKER);
        let json = serde_json::to_vec_pretty(&marker).ok()?;
        cache::write_atomic(&dir.join(MARKER), &json).ok()?;
    } else if !cache::manifest_holds(dir, &marker.sha256) {
        return None;
    }
    Some(Kernel {
        spec: spec.to_string(),
        release: Some(marker.release),
        boot_image,
        boot_kind: marker.boot_kind,
        bzimage: Some(bzimage),
        modules_dir,
        package: Some(marker.package),
    })
}

/// The releases with a folder in `kernels` (complete or not).
pub(crate) fn releases_in(kernels: &Path) -> Vec<String> {
    fs::read_dir(kernels)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Finish a kernel unpacked into `staging` (`vmlinuz`, and modules under
/// `root/lib/modules/`): index its modules, extract the PVH vmlinux when the
/// image has one, and say what the marker records. `package` is the
/// package the kernel is named by, `parts` every package unpacked.
pub(crate) fn finish(
    staging: &Staging,
    release: &str,
    package: PackageInfo,
    parts: Vec<PackageInfo>,
    module_releases: &[String],
    progress: &dyn Fn(&str),
) -> Result<MarkerFile, KernelError> {
    let modules_release = if module_releases.iter().any(|r| r == release) {
        Some(release.to_string())
    } else {
        module_releases.first().cloned()
    };
    if let Some(m) = &modules_release {
        let t = Instant::now();
        staging.depmod(m)?;
        progress(&format!("depmod {m}: {:.1} s", t.elapsed().as_secs_f64()));
    }

    let vmlinuz_path = staging.path().join("vmlinuz");
    let bz = fs::read(&vmlinuz_path)
        .map_err(|e| KernelError::io(format!("reading {}", vmlinuz_path.display()), e))?;
    let uname = vmlinux::bzimage_release(&bz)
        .or_else(|| modules_release.clone())
        .unwrap_or_else(|| release.to_string());
    let t = Instant::now();
    let boot_kind = match vmlinux::extract_vmlinux(&bz) {
        Ok(elf) if vmlinux::has_pvh_note(&elf) => {
            fs::write(staging.path().join("vmlinux"), &elf)
                .map_err(|e| KernelError::io("writing vmlinux".into(), e))?;
            progress(&format!(
                "vmlinux with PVH note: {:.1} MB (from {:.1} MB bzImage) in {:.1} s",
                elf.len() as f64 / 1e6,
                bz.len() as f64 / 1e6,
                t.elapsed().as_secs_f64()
            ));
            BootKind::Pvh
        }
        Ok(_) => {
            progress("vmlinux has no PVH note; booting the bzImage");
            BootKind::BzImage
        }
        Err(e) => {
            progress(&format!(
                "could not extract vmlinux ({e}); booting the bzImage"
            ));
            BootKind::BzImage
        }
    };

    let sizes = sized_files(boot_kind, modules_release.as_deref())
        .into_iter()
        .filter_map(|f| Some((f.clone(), fs::metadata(staging.path().join(&f)).ok()?.len())))
        .collect();
    let t = Instant::now();
    let sha256 = cache::manifest(staging.path())
        .map_err(|e| KernelError::io(format!("hashing {}", staging.path().display()), e))?;
    progress(&format!(
        "recorded the SHA-256 of {} files in {:.1} s",
        sha256.len(),
        t.elapsed().as_secs_f64()
    ));
    let marker = Marker {
        release: uname,
        package,
        parts,
        boot_kind,
        modules_release,
        sizes,
        sha256,
    };
    Ok(MarkerFile {
        name: MARKER,
        contents: serde_json::to_vec_pretty(&marker).map_err(|e| KernelError::Extract {
            what: release.to_string(),
            reason: format!("cannot write its marker: {e}"),
            cache_hint: staging.path().to_path_buf(),
        })?,
    })
}

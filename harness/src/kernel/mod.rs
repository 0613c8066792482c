//! Kernels to boot: Debian kernels resolved from the archive's index and
//! cached, or local images, each turned into what qemu's `-kernel` wants
//! (the PVH-capable `vmlinux` when there is one, else the bzImage) plus a
//! depmod'ed module tree.
//!
//! See [`cache`] for the on-disk layout.

pub mod build;
pub mod cache;
pub mod deb;
pub mod debian;
mod error;
#[cfg(test)]
mod live_tests;
pub mod version;
pub mod vmlinux;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub use cache::Cache;
pub use error::{ErrorClass, KernelError};

/// What kernel the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSpec {
    /// `debian:6.12` (newest of a line), `debian:6.1.0-50-amd64` (exact release),
    /// `debian:sid` or `debian:experimental:7.3` (newest of a suite, or of a line in it).
    Debian { query: String },
    /// A bzImage or a PVH `vmlinux` on disk, with an optional module folder.
    Local {
        image: PathBuf,
        modules: Option<PathBuf>,
    },
    /// `build:PATH`: a kernel build tree (in-tree build or an `O=` output
    /// folder) with arch/x86/boot/bzImage; its modules are installed from it.
    Build { tree: PathBuf },
}

impl KernelSpec {
    /// Parse `debian:QUERY` or a path (`/path/bzImage`, `./vmlinux`, `local:PATH`).
    pub fn parse(spec: &str, modules: Option<PathBuf>) -> Result<KernelSpec, KernelError> {
        let s = spec.trim();
        let malformed = |reason: String| KernelError::MalformedSpec {
            spec: spec.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(malformed("it is empty".into()));
        }
        let looks_like_path = s.starts_with('/') || s.starts_with("./") || s.starts_with("../");
        if !looks_like_path {
            if let Some((scheme, rest)) = s.split_once(':') {
                let scheme_like = !scheme.is_empty()
                    && scheme
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
                    && !scheme.contains('/');
                if scheme_like {
                    return match scheme {
                        "debian" => {
                            if modules.is_some() {
                                return Err(malformed(
                                    "a module folder only goes with a local kernel image".into(),
                                ));
                            }
                            debian::parse_query(rest).map_err(malformed)?;
                            Ok(KernelSpec::Debian {
                                query: rest.trim().to_string(),
                            })
                        }
                        "build" => {
                            if modules.is_some() {
                                return Err(malformed(
                                    "a build tree brings its own modules; drop --modules".into(),
                                ));
                            }
                            let tree = rest.trim();
                            if tree.is_empty() {
                                return Err(malformed(
                                    "it names no folder; use build:PATH (a kernel build tree)"
                                        .into(),
                                ));
                            }
                            Ok(KernelSpec::Build {
                                tree: PathBuf::from(tree),
                            })
                        }
                        "local" | "file" if !rest.is_empty() => Ok(KernelSpec::Local {
                            image: PathBuf::from(rest),
                            modules,
                        }),
                        _ => Err(KernelError::UnknownScheme {
                            spec: spec.to_string(),
                            scheme: scheme.to_string(),
                        }),
                    };
                }
            }
        }
        Ok(KernelSpec::Local {
            image: PathBuf::from(s),
            modules,
        })
    }
}

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSpec::Debian { query } => write!(f, "debian:{query}"),
            KernelSpec::Local { image, .. } => write!(f, "{}", image.display()),
            KernelSpec::Build { tree } => write!(f, "build:{}", tree.display()),
        }
    }
}

/// How natvet runs a kernel: qemu booting the image given to `-kernel`, or
/// the host's own running kernel (`natvet verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BootKind {
    /// An ELF vmlinux with a PVH entry note (fast: no decompression).
    Pvh,
    /// A bzImage (Linux boot protocol).
    BzImage,
    /// The kernel natvet runs on: no VM, the agent runs as a child process.
    Running,
}

impl Kernel {
    /// The kernel this machine runs, for `natvet verify`.
    pub fn running() -> Kernel {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .ok();
        Kernel {
            spec: "host".into(),
            release,
            boot_image: PathBuf::new(),
            boot_kind: BootKind::Running,
            bzimage: None,
            modules_dir: None,
            package: None,
        }
    }
}

/// A Debian package a kernel came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
    pub suite: String,
    pub sha256: String,
    pub filename: String,
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// What the user asked for, e.g. `debian:6.12`.
    pub spec: String,
    /// `uname -r` of the kernel, if known.
    pub release: Option<String>,
    /// What to pass to `qemu -kernel`.
    pub boot_image: PathBuf,
    pub boot_kind: BootKind,
    /// The bzImage, if there is one.
    pub bzimage: Option<PathBuf>,
    /// `lib/modules/RELEASE` with modules.dep etc.; None for a monolithic kernel.
    pub modules_dir: Option<PathBuf>,
    /// The image package (for split 6.19+ packages, `linux-image-X`).
    pub package: Option<PackageInfo>,
}

/// Resolve a spec to a bootable kernel, downloading and extracting as needed.
pub fn resolve(
    spec: &KernelSpec,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<Kernel, KernelError> {
    match spec {
        KernelSpec::Debian { query } => resolve_debian(query, &spec.to_string(), cache, progress),
        KernelSpec::Local { image, modules } => resolve_local(
            image,
            modules.as_deref(),
            &spec.to_string(),
            cache,
            progress,
        ),
        KernelSpec::Build { tree } => resolve_build_tree(tree, &spec.to_string(), cache, progress),
    }
}

/// Every generic amd64 Debian kernel in the index: (release, image package),
/// newest first. For a `natvet kernels list`-style command.
pub fn list_debian(
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<Vec<(String, PackageInfo)>, KernelError> {
    let index = debian::load_index(cache, progress)?;
    let mut out: Vec<(String, PackageInfo)> = Vec::new();
    for s in &index.stanzas {
        if let Some(r) = debian::image_release(&s.package).filter(|r| debian::is_generic_amd64(r)) {
            if out.iter().any(|(x, _)| x == r) {
                continue;
            }
            if let Some(best) = debian::select_exact(&index, r) {
                out.push((r.to_string(), best.info()));
            }
        }
    }
    out.sort_by(|a, b| version::compare(&b.1.version, &a.1.version));
    Ok(out)
}

/// What a spec names today, without downloading: the release it resolves to
/// in the archive's index (Debian) and whether that kernel is already cached.
/// Local specs resolve to themselves.
pub fn lookup(
    spec: &KernelSpec,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<(Option<String>, bool), KernelError> {
    match spec {
        KernelSpec::Local { image, .. } => Ok((None, image.exists())),
        KernelSpec::Build { tree } => Ok((
            fs::read_to_string(tree.join("include/config/kernel.release"))
                .ok()
                .map(|r| r.trim().to_string()),
            tree.join(BUILD_BZIMAGE).is_file(),
        )),
        KernelSpec::Debian { query } => {
            let index = debian::load_index(cache, progress)?;
            let release = match debian::parse_query(query) {
                Ok(debian::Query::Exact(r)) => debian::select_exact(&index, &r).map(|_| r),
                Ok(debian::Query::Line(line)) => debian::select_line(&index, &line),
                Ok(debian::Query::Suite { suite, line }) => {
                    debian::select_suite(&index, &suite, line.as_deref())
                }
                Err(_) => None,
            };
            let cached = release
                .as_ref()
                .is_some_and(|r| load_complete(cache, r, &spec.to_string()).is_some());
            Ok((release, cached))
        }
    }
}

// ---------------------------------------------------------------- Debian

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
    /// Sizes of the files a boot needs, relative to the kernel's folder: a
    /// truncated or damaged cache entry is noticed and fetched again.
    #[serde(default)]
    sizes: std::collections::BTreeMap<String, u64>,
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

/// The file of a complete `kernels/RELEASE/` entry, written last.
const MARKER: &str = "complete.json";

fn kernel_dir(cache: &Cache, release: &str) -> PathBuf {
    cache.root().join("kernels").join(release)
}

fn load_complete(cache: &Cache, release: &str, spec: &str) -> Option<Kernel> {
    load_dir(&kernel_dir(cache, release), spec)
}

fn load_dir(dir: &Path, spec: &str) -> Option<Kernel> {
    let marker: Marker = serde_json::from_slice(&fs::read(dir.join(MARKER)).ok()?).ok()?;
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
    let intact = marker
        .sizes
        .iter()
        .all(|(file, size)| fs::metadata(dir.join(file)).ok().map(|m| m.len()) == Some(*size));
    (all_there && intact).then(|| Kernel {
        spec: spec.to_string(),
        release: Some(marker.release),
        boot_image,
        boot_kind: marker.boot_kind,
        bzimage: Some(bzimage),
        modules_dir,
        package: Some(marker.package),
    })
}

fn resolve_debian(
    query: &str,
    spec: &str,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<Kernel, KernelError> {
    let q = debian::parse_query(query).map_err(|reason| KernelError::MalformedSpec {
        spec: spec.to_string(),
        reason,
    })?;
    // An exact release already in the cache needs no network at all.
    if let debian::Query::Exact(rel) = &q {
        if let Some(k) = load_complete(cache, rel, spec) {
            return Ok(k);
        }
    }
    let index = match debian::load_index(cache, progress) {
        Ok(i) => i,
        Err(e) => {
            if let debian::Query::Line(line) = &q {
                if let Some(k) = newest_cached_of_line(cache, line, spec) {
                    progress(&format!(
                        "package index unavailable ({e}); using cached kernel {}",
                        k.release.as_deref().unwrap_or("?")
                    ));
                    return Ok(k);
                }
            }
            return Err(e);
        }
    };
    let not_found = || {
        if !index.failures.is_empty() {
            KernelError::Download {
                what: format!("the package indexes of {}", index.failures.join(", ")),
                reason: format!("could not check them for '{query}'"),
            }
        } else {
            KernelError::NoSuchPackage {
                query: spec.to_string(),
                known: debian::known_lines(&index),
            }
        }
    };
    let release = match &q {
        debian::Query::Exact(r) => r.clone(),
        debian::Query::Line(line) => debian::select_line(&index, line).ok_or_else(not_found)?,
        debian::Query::Suite { suite, line } => {
            debian::select_suite(&index, suite, line.as_deref()).ok_or_else(not_found)?
        }
    };
    let image = debian::select_exact(&index, &release).ok_or_else(not_found)?;
    cache::Entry::new(cache.dir("kernels")?, release.clone()).load_or_publish(
        |dir| load_dir(dir, spec),
        |staging| install(staging, cache, &index, &release, image, progress),
        progress,
    )
}

fn newest_cached_of_line(cache: &Cache, line: &[u64], spec: &str) -> Option<Kernel> {
    let rd = fs::read_dir(cache.root().join("kernels")).ok()?;
    rd.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|r| debian::is_generic_amd64(r) && debian::line_matches(r, line))
        .filter_map(|r| load_complete(cache, &r, spec))
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

/// Download and extract into `staging`, depmod; the marker to publish.
fn install(
    staging: &cache::Staging,
    cache: &Cache,
    index: &debian::Index,
    release: &str,
    image: &debian::Stanza,
    progress: &dyn Fn(&str),
) -> Result<cache::MarkerFile, KernelError> {
    let extract_err = |what: &str, reason: String| KernelError::Extract {
        what: what.to_string(),
        reason,
        cache_hint: cache.root().join("debs"),
    };

    let mut parts = vec![image.clone()];
    let deb = debian::download(cache, image, progress)?;
    let t0 = Instant::now();
    let mut ex = deb::extract(&deb, staging.path()).map_err(|e| extract_err(&image.package, e))?;
    if !ex.vmlinuz {
        // 6.19+: linux-image-X is a metapackage over linux-binary-X and linux-modules-X.
        for dep in image.depends_names() {
            if !(dep.starts_with("linux-binary-") || dep.starts_with("linux-modules-")) {
                continue;
            }
            let st = debian::find_package(index, &dep, &image.suite, &image.version).ok_or_else(
                || KernelError::Download {
                    what: dep.clone(),
                    reason: format!(
                        "{} depends on it but no suite's index lists it",
                        image.package
                    ),
                },
            )?;
            let deb = debian::download(cache, st, progress)?;
            let more =
                deb::extract(&deb, staging.path()).map_err(|e| extract_err(&st.package, e))?;
            ex.vmlinuz |= more.vmlinuz;
            ex.files += more.files;
            ex.bytes += more.bytes;
            for r in more.module_releases {
                if !ex.module_releases.contains(&r) {
                    ex.module_releases.push(r);
                }
            }
            parts.push(st.clone());
        }
    }
    if !ex.vmlinuz {
        return Err(extract_err(
            &image.package,
            "no vmlinuz in the package (nor in its linux-binary-* dependency)".into(),
        ));
    }
    progress(&format!(
        "extracted {} files ({:.0} MB) in {:.1} s",
        ex.files,
        ex.bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    ));

    let modules_release = if ex.module_releases.iter().any(|r| r == release) {
        Some(release.to_string())
    } else {
        ex.module_releases.first().cloned()
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
    let marker = Marker {
        release: uname,
        package: image.info(),
        parts: parts.iter().map(debian::Stanza::info).collect(),
        boot_kind,
        modules_release,
        sizes,
    };
    Ok(cache::MarkerFile {
        name: MARKER,
        contents: serde_json::to_vec_pretty(&marker).map_err(|e| KernelError::Extract {
            what: release.to_string(),
            reason: format!("cannot write its marker: {e}"),
            cache_hint: cache.root().join("kernels"),
        })?,
    })
}

// ---------------------------------------------------------------- local

/// Contents of `local/SHA/info.json` for a local bzImage.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LocalInfo {
    release: Option<String>,
    pvh: bool,
}

fn resolve_local(
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
            return Err(KernelError::NotBootable {
                path: image,
                reason: "this ELF vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), so qemu cannot boot it directly; pass the bzImage instead (arch/x86/boot/bzImage) or build with CONFIG_PVH=y".into(),
            });
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
            .filter(|i: &LocalInfo| !i.pvh || vmlinux_path.is_file());
        let pvh = match info {
            Some(i) => i.pvh,
            None => {
                let _lock = cache::lock(&dir.join("lock"))?;
                let pvh = match vmlinux::extract_vmlinux(&data) {
                    Ok(elf) if vmlinux::has_pvh_note(&elf) => {
                        cache::write_atomic(&vmlinux_path, &elf)?;
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
                };
                cache::write_atomic(
                    &info_path,
                    &serde_json::to_vec_pretty(&info).expect("serialises"),
                )?;
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
        return Err(KernelError::NotBootable {
            path: image,
            reason: "it is neither a bzImage nor an ELF vmlinux; pass arch/x86/boot/bzImage or a vmlinux with a PVH note".into(),
        });
    };

    let modules_dir = match modules {
        None => None,
        Some(m) => Some(local_modules(m, release.as_deref(), cache, progress)?),
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

// ---------------------------------------------------------------- build tree

/// Where kbuild leaves the x86 boot image, relative to the build tree.
pub const BUILD_BZIMAGE: &str = "arch/x86/boot/bzImage";

/// True when a kernel `.config` text has `CONFIG_MODULES=y`.
pub fn config_has_modules(config: &str) -> bool {
    config.lines().any(|l| l.trim_end() == "CONFIG_MODULES=y")
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
        return Err(KernelError::BadBuildTree {
            path: tree,
            reason: format!(
                "it has no {BUILD_BZIMAGE}; run `make bzImage` there (with O=PATH for an output folder), or `natvet kernels build` to build one"
            ),
        });
    }
    let mut kernel = resolve_local(&bz, None, spec, cache, progress)?;
    if let Ok(r) = fs::read_to_string(tree.join("include/config/kernel.release")) {
        let r = r.trim();
        if !r.is_empty() {
            kernel.release = Some(r.to_string());
        }
    }
    let config = fs::read_to_string(tree.join(".config")).unwrap_or_default();
    if config_has_modules(&config) && tree.join("modules.order").is_file() {
        let root = install_build_modules(&tree, &bz, cache, progress)?;
        kernel.modules_dir = Some(local_modules(
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
    let sha = cache::sha256_file(bzimage)
        .map_err(|e| KernelError::io(format!("reading {}", bzimage.display()), e))?;
    let entry = cache::Entry::new(cache.dir("local")?, format!("build-modules-{}", &sha[..32]));
    let done = |d: &Path| d.join("complete").is_file().then(|| d.join("root"));
    entry.load_or_publish(
        done,
        |staging| {
            progress(&format!("installing the modules of {}", tree.display()));
            let mut install_path = std::ffi::OsString::from("INSTALL_MOD_PATH=");
            install_path.push(staging.path().join("root"));
            let out = Command::new("nice")
                .args(["-n", "19", "make", "-s", "-C"])
                .arg(tree)
                .arg("modules_install")
                .arg(install_path)
                .arg("INSTALL_MOD_STRIP=1")
                .output()
                .map_err(|e| KernelError::ModulesInstall {
                    tree: tree.to_path_buf(),
                    reason: format!("cannot run make ({e}); run `apt-get install -y make`"),
                })?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                let tail: Vec<&str> = err.lines().rev().take(15).collect();
                return Err(KernelError::ModulesInstall {
                    tree: tree.to_path_buf(),
                    reason: format!(
                        "make modules_install: {}: {}",
                        out.status,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ),
                });
            }
            Ok(cache::MarkerFile::empty("complete"))
        },
        progress,
    )
}

fn looks_like_module_dir(d: &Path) -> bool {
    ["modules.dep", "modules.order", "modules.builtin", "kernel"]
        .iter()
        .any(|f| d.join(f).exists())
}

/// Find lib/modules/RELEASE in the user's folder; if it has no modules.dep,
/// build a private depmod'ed symlink copy in the cache.
fn local_modules(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            KernelSpec::parse("debian:6.12", None).unwrap(),
            KernelSpec::Debian {
                query: "6.12".into()
            }
        );
        assert_eq!(
            KernelSpec::parse("debian:6.1.0-50-amd64", None).unwrap(),
            KernelSpec::Debian {
                query: "6.1.0-50-amd64".into()
            }
        );
        assert_eq!(
            KernelSpec::parse("/path/bzImage", Some("/m".into())).unwrap(),
            KernelSpec::Local {
                image: "/path/bzImage".into(),
                modules: Some("/m".into())
            }
        );
        assert_eq!(
            KernelSpec::parse("./vmlinux", None).unwrap(),
            KernelSpec::Local {
                image: "./vmlinux".into(),
                modules: None
            }
        );
        assert_eq!(
            KernelSpec::parse("./odd:name", None).unwrap(),
            KernelSpec::Local {
                image: "./odd:name".into(),
                modules: None
            }
        );
        let e = KernelSpec::parse("foo:bar", None).unwrap_err();
        assert!(e.is_user_error());
        assert!(
            e.to_string().contains("unknown kernel source 'foo:'"),
            "{e}"
        );
        let e = KernelSpec::parse("debian:", None).unwrap_err();
        assert!(e.is_user_error());
        let e = KernelSpec::parse("debian:latest", None).unwrap_err();
        assert!(matches!(e, KernelError::MalformedSpec { .. }));
        for s in ["debian:6.12", "debian:7.2.13+deb14-amd64", "/x/bzImage"] {
            assert_eq!(KernelSpec::parse(s, None).unwrap().to_string(), s);
        }
    }

    #[test]
    fn parses_build_specs() {
        assert_eq!(
            KernelSpec::parse("build:/src/linux/out", None).unwrap(),
            KernelSpec::Build {
                tree: "/src/linux/out".into()
            }
        );
        assert_eq!(
            KernelSpec::parse("build:../out", None).unwrap(),
            KernelSpec::Build {
                tree: "../out".into()
            }
        );
        for s in ["build:/x/build", "build:rel/dir"] {
            assert_eq!(KernelSpec::parse(s, None).unwrap().to_string(), s);
        }
        let e = KernelSpec::parse("build:", None).unwrap_err();
        assert!(
            e.is_user_error() && e.to_string().contains("build:PATH"),
            "{e}"
        );
        let e = KernelSpec::parse("build:/x", Some("/m".into())).unwrap_err();
        assert!(
            e.is_user_error() && e.to_string().contains("--modules"),
            "{e}"
        );
        // A path that merely starts with "build" is still a path.
        assert!(matches!(
            KernelSpec::parse("./build:x", None).unwrap(),
            KernelSpec::Local { .. }
        ));
    }

    #[test]
    fn build_tree_without_bzimage_is_a_user_error() {
        let cache = Cache::new(tempfile::tempdir().unwrap().path().to_path_buf());
        let tree = tempfile::tempdir().unwrap();
        fs::write(tree.path().join(".config"), "CONFIG_MODULES=y\n").unwrap();
        let spec = KernelSpec::Build {
            tree: tree.path().to_path_buf(),
        };
        let e = resolve(&spec, &cache, &|_| {}).unwrap_err();
        assert!(e.is_user_error(), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("arch/x86/boot/bzImage") && m.contains("make bzImage"),
            "{m}"
        );
        let spec = KernelSpec::Build {
            tree: tree.path().join("missing"),
        };
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

    #[test]
    fn missing_local_file_is_a_user_error() {
        let cache = Cache::new(tempfile::tempdir().unwrap().path().to_path_buf());
        let spec = KernelSpec::parse("/nonexistent/bzImage", None).unwrap();
        let e = resolve(&spec, &cache, &|_| {}).unwrap_err();
        assert!(e.is_user_error());
        assert!(e.to_string().contains("/nonexistent/bzImage"));
    }

    #[test]
    fn error_messages_give_hints() {
        let e = KernelError::NoSuchPackage {
            query: "debian:9.9.9".into(),
            known: vec!["5.10".into(), "6.1".into(), "6.12".into()],
        };
        let m = e.to_string();
        assert!(
            m.contains("debian:9.9.9") && m.contains("5.10, 6.1, 6.12"),
            "{m}"
        );
        assert!(e.is_user_error());
        let e = KernelError::Checksum {
            file: "x".into(),
            expected: "a".into(),
            actual: "b".into(),
        };
        assert!(!e.is_user_error());
    }
}

//! `./linux-image-X_..._amd64.deb`: kernel package files on disk, one
//! package (`linux-image-X`) or a split layout (Debian 6.19+:
//! `linux-binary-X` and `linux-modules-X`; Ubuntu: `linux-image-unsigned-X`,
//! `linux-modules-X` and `linux-modules-extra-X`), given as several
//! `--kernel FILE.deb` (joined when they are of one release), as
//! `a.deb,b.deb`, or as a folder holding them. Each package's control file names its release; the packages are
//! unpacked once into `kernels/files/KEY/` (KEY: the SHA-256 of their
//! contents), and the results record each file's SHA-256: nobody vouched
//! for a file given by path.

use std::fs;
use std::path::{Path, PathBuf};

use super::{KernelSource, KernelSpec};
use crate::kernel::archive::{valid_package_name, valid_version};
use crate::kernel::cache::{sha256_file, Cache, Entry};
use crate::kernel::error::{ErrorClass, KernelError, SourceError};
use crate::kernel::repository::Naming;
use crate::kernel::{deb, unpacked, Kernel, PackageInfo, Trust};

/// Kernel package files.
pub(super) struct PackageFiles;

/// What is wrong with package files.
#[derive(Debug, thiserror::Error)]
pub enum PackageFileError {
    #[error("cannot read {}: {reason}; is it a Debian package (.deb)?", .path.display())]
    Unreadable { path: PathBuf, reason: String },

    #[error("{} is package {package}, not a kernel package (linux-image-, linux-binary-, linux-modules-[extra-] RELEASE)", .path.display())]
    NotAKernel { path: PathBuf, package: String },

    #[error("{} is built for {arch}; natvet boots x86_64 (amd64) kernels", .path.display())]
    WrongArch { path: PathBuf, arch: String },

    #[error("the packages are of several kernels ({}): give the packages of one kernel per --kernel (or one folder per kernel)", .releases.join("; "))]
    SeveralKernels { releases: Vec<String> },

    #[error("{} holds no .deb files", .path.display())]
    EmptyFolder { path: PathBuf },

    #[error("no kernel image in {}: a split kernel needs its image package too (linux-binary-RELEASE for Debian 6.19+, linux-image-unsigned-RELEASE or linux-image-RELEASE for Ubuntu)", .files.join(", "))]
    NoImage { files: Vec<String> },
}

impl SourceError for PackageFileError {
    fn class(&self) -> ErrorClass {
        match self {
            PackageFileError::Unreadable { .. }
            | PackageFileError::NotAKernel { .. }
            | PackageFileError::WrongArch { .. }
            | PackageFileError::SeveralKernels { .. }
            | PackageFileError::EmptyFolder { .. }
            | PackageFileError::NoImage { .. } => ErrorClass::BadInput,
        }
    }
}

/// True for a path the user means as package files.
fn is_package_spec(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split(',').collect();
    if parts.iter().all(|p| p.trim().ends_with(".deb")) {
        return true;
    }
    parts.len() == 1 && {
        let p = Path::new(spec);
        p.is_dir()
            && fs::read_dir(p).is_ok_and(|rd| {
                rd.flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "deb"))
            })
    }
}

impl KernelSource for PackageFiles {
    fn name(&self) -> &'static str {
        "package"
    }

    fn forms(&self) -> &'static [&'static str] {
        &["a kernel package file (./linux-image-X.deb, a.deb,b.deb, or a folder of them)"]
    }

    fn prefix(&self) -> &'static str {
        ""
    }

    fn claim(&self, spec: &str, modules: Option<&Path>) -> Option<Result<String, String>> {
        if super::scheme_of(spec).is_some() && !spec.contains('/') || !is_package_spec(spec) {
            return None;
        }
        if modules.is_some() {
            return Some(Err(
                "a kernel package brings its own modules; drop --modules".into(),
            ));
        }
        Some(Ok(spec.to_string()))
    }

    fn resolve(
        &self,
        spec: &KernelSpec,
        cache: &Cache,
        progress: &dyn Fn(&str),
    ) -> Result<Kernel, KernelError> {
        let set = read_set(spec.arg())?;
        let t = std::time::Instant::now();
        let mut key_input = String::new();
        let mut infos = Vec::new();
        for p in &set.packages {
            let sha = sha256_file(&p.path)
                .map_err(|e| KernelError::io(format!("reading {}", p.path.display()), e))?;
            key_input.push_str(&sha);
            infos.push(PackageInfo {
                name: p.package.clone(),
                version: p.version.clone(),
                suite: String::new(),
                sha256: sha,
                filename: p.path.display().to_string(),
                repository: String::new(),
                trust: Trust::File,
            });
        }
        progress(&format!(
            "hashed {} package file(s) in {:.1} s",
            infos.len(),
            t.elapsed().as_secs_f64()
        ));
        let key = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(key_input.as_bytes()))
        };
        let image = set
            .image
            .and_then(|i| infos.get(i).cloned())
            .unwrap_or_else(|| infos[0].clone());
        let display = spec.to_string();
        Entry::new(cache.dir("kernels/files")?, key[..32].to_string()).load_or_publish(
            |dir| unpacked::load(dir, &display),
            |staging| {
                let mut ex = deb::Extracted::default();
                for p in &set.packages {
                    let more = deb::extract(&p.path, staging.path()).map_err(|reason| {
                        PackageFileError::Unreadable {
                            path: p.path.clone(),
                            reason,
                        }
                    })?;
                    ex.merge(more);
                }
                if !ex.vmlinuz {
                    return Err(KernelError::from(PackageFileError::NoImage {
                        files: set
                            .packages
                            .iter()
                            .map(|p| p.path.display().to_string())
                            .collect(),
                    }));
                }
                unpacked::finish(
                    staging,
                    &set.release,
                    image.clone(),
                    infos.clone(),
                    &ex.module_releases,
                    progress,
                )
            },
            progress,
        )
    }

    fn lookup(
        &self,
        spec: &KernelSpec,
        _cache: &Cache,
        _progress: &dyn Fn(&str),
    ) -> Result<(Option<String>, bool), KernelError> {
        let set = read_set(spec.arg())?;
        Ok((Some(set.release), false))
    }
}

/// One package file and what its control file says.
#[derive(Debug, Clone)]
struct PackageFile {
    path: PathBuf,
    package: String,
    version: String,
    release: String,
}

/// The packages of one kernel.
struct Set {
    release: String,
    packages: Vec<PackageFile>,
    /// Which of them is the image package, if one is.
    image: Option<usize>,
}

/// Every naming natvet knows: a package file may come from anywhere.
fn namings() -> [Naming; 2] {
    [Naming::debian(), Naming::ubuntu()]
}

/// The release a kernel package is named for, and whether it is the image package.
fn release_of(package: &str) -> Option<(String, bool)> {
    for n in namings() {
        if let Some(r) = n.image_release(package) {
            // `linux-image-X-unsigned` reads as release X-unsigned for the
            // first template; take the shortest reading.
            let r = n
                .images
                .iter()
                .filter_map(|t| {
                    let (pre, post) = t.split_once("{release}")?;
                    package.strip_prefix(pre)?.strip_suffix(post)
                })
                .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                .min_by_key(|r| r.len())
                .unwrap_or(r);
            return Some((r.to_string(), true));
        }
    }
    for n in namings() {
        // linux-modules-extra- before linux-modules-.
        let mut parts = n.parts.clone();
        parts.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for t in parts {
            let (pre, post) = t.split_once("{release}")?;
            if let Some(r) = package.strip_prefix(pre).and_then(|r| r.strip_suffix(post)) {
                if r.starts_with(|c: char| c.is_ascii_digit()) {
                    return Some((r.to_string(), false));
                }
            }
        }
    }
    None
}

fn read_file(path: &Path) -> Result<PackageFile, KernelError> {
    if !path.is_file() {
        return Err(KernelError::LocalFileMissing {
            what: "kernel package",
            path: path.to_path_buf(),
        });
    }
    let unreadable = |reason: String| PackageFileError::Unreadable {
        path: path.to_path_buf(),
        reason,
    };
    let fields = deb::control(path).map_err(unreadable)?;
    let get = |k: &str| {
        fields
            .iter()
            .find(|(f, _)| f.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (package, version, arch) = (get("Package"), get("Version"), get("Architecture"));
    if !valid_package_name(&package) || !valid_version(&version) {
        return Err(unreadable(format!(
            "its control file names package `{package}` version `{version}`, which are not a Debian package name and version"
        ))
        .into());
    }
    if arch != "amd64" {
        return Err(PackageFileError::WrongArch {
            path: path.to_path_buf(),
            arch,
        }
        .into());
    }
    let (release, _) = release_of(&package).ok_or_else(|| PackageFileError::NotAKernel {
        path: path.to_path_buf(),
        package: package.clone(),
    })?;
    Ok(PackageFile {
        path: fs::canonicalize(path)
            .map_err(|e| KernelError::io(format!("resolving {}", path.display()), e))?,
        package,
        version,
        release,
    })
}

/// The files a spec names: comma-separated files, or a folder's `.deb`s.
fn files_of(arg: &str) -> Result<Vec<PathBuf>, KernelError> {
    let mut out = Vec::new();
    for part in arg.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p = Path::new(part);
        if p.is_dir() {
            let mut debs: Vec<PathBuf> = fs::read_dir(p)
                .map_err(|e| KernelError::io(format!("listing {}", p.display()), e))?
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "deb"))
                .collect();
            if debs.is_empty() {
                return Err(PackageFileError::EmptyFolder {
                    path: p.to_path_buf(),
                }
                .into());
            }
            debs.sort();
            out.extend(debs);
        } else {
            out.push(p.to_path_buf());
        }
    }
    Ok(out)
}

fn read_set(arg: &str) -> Result<Set, KernelError> {
    let packages = files_of(arg)?
        .iter()
        .map(|p| read_file(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut releases: Vec<String> = Vec::new();
    for p in &packages {
        if !releases.contains(&p.release) {
            releases.push(p.release.clone());
        }
    }
    if releases.len() != 1 {
        return Err(PackageFileError::SeveralKernels {
            releases: releases
                .iter()
                .map(|r| {
                    let files: Vec<String> = packages
                        .iter()
                        .filter(|p| &p.release == r)
                        .map(|p| p.path.display().to_string())
                        .collect();
                    format!("{r}: {}", files.join(", "))
                })
                .collect(),
        }
        .into());
    }
    let image = packages
        .iter()
        .position(|p| release_of(&p.package).is_some_and(|(_, image)| image));
    Ok(Set {
        release: releases.remove(0),
        packages,
        image,
    })
}

/// Join the specs of single package files that are of one release into one
/// spec (`--kernel linux-binary-X.deb --kernel linux-modules-X.deb` is one
/// kernel), in the place of the first; other specs are left as they are.
pub(super) fn join(specs: Vec<KernelSpec>) -> Result<Vec<KernelSpec>, KernelError> {
    let mut out: Vec<(KernelSpec, Option<String>)> = Vec::new();
    for s in specs {
        let single =
            s.source().name() == "package" && !s.arg().contains(',') && s.arg().ends_with(".deb");
        if !single {
            out.push((s, None));
            continue;
        }
        let release = read_file(Path::new(s.arg()))?.release;
        match out
            .iter_mut()
            .find(|(_, r)| r.as_deref() == Some(release.as_str()))
        {
            Some((first, _)) => first.arg = format!("{},{}", first.arg, s.arg()),
            None => out.push((s, Some(release))),
        }
    }
    Ok(out.into_iter().map(|(s, _)| s).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    /// A .deb with a control file for `package` and the given data files.
    pub(crate) fn make_deb(path: &Path, package: &str, data: &[(&str, &[u8])]) {
        let tar_of = |files: &[(&str, &[u8])]| {
            let mut b = tar::Builder::new(Vec::new());
            for (p, d) in files {
                let mut h = tar::Header::new_gnu();
                h.set_size(d.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, p, *d).unwrap();
            }
            b.into_inner().unwrap()
        };
        let control = format!(
            "Package: {package}\nVersion: 9.9.9-1\nArchitecture: amd64\nDescription: test\n"
        );
        let gz = |bytes: Vec<u8>| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &bytes).unwrap();
            e.finish().unwrap()
        };
        let mut ar = ar::Builder::new(File::create(path).unwrap());
        for (name, body) in [
            ("debian-binary", b"2.0\n".to_vec()),
            (
                "control.tar.gz",
                gz(tar_of(&[("./control", control.as_bytes())])),
            ),
            ("data.tar.gz", gz(tar_of(data))),
        ] {
            let h = ar::Header::new(name.as_bytes().to_vec(), body.len() as u64);
            ar.append(&h, &body[..]).unwrap();
        }
    }

    #[test]
    fn names_of_kernel_packages() {
        let r = |p: &str| release_of(p);
        assert_eq!(
            r("linux-image-6.1.0-57-amd64"),
            Some(("6.1.0-57-amd64".into(), true))
        );
        assert_eq!(
            r("linux-image-6.1.0-57-amd64-unsigned"),
            Some(("6.1.0-57-amd64".into(), true))
        );
        assert_eq!(
            r("linux-image-unsigned-6.8.0-31-generic"),
            Some(("6.8.0-31-generic".into(), true))
        );
        assert_eq!(
            r("linux-binary-7.2.13+deb14-amd64"),
            Some(("7.2.13+deb14-amd64".into(), false))
        );
        assert_eq!(
            r("linux-modules-extra-6.8.0-31-generic"),
            Some(("6.8.0-31-generic".into(), false))
        );
        assert_eq!(r("zsh"), None);
        assert_eq!(r("linux-image-amd64"), None);
    }

    #[test]
    fn split_packages_make_one_kernel_and_others_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let rel = "6.8.0-31-generic";
        let img = d.path().join("img.deb");
        let mods = d.path().join("mods.deb");
        let extra = d.path().join("extra.deb");
        make_deb(
            &img,
            &format!("linux-image-unsigned-{rel}"),
            &[(&format!("./boot/vmlinuz-{rel}"), b"KERNEL")],
        );
        make_deb(
            &mods,
            &format!("linux-modules-{rel}"),
            &[(&format!("./lib/modules/{rel}/kernel/a.ko"), b"A")],
        );
        make_deb(
            &extra,
            &format!("linux-modules-extra-{rel}"),
            &[(&format!("./lib/modules/{rel}/kernel/b.ko"), b"B")],
        );
        let set = read_set(&format!(
            "{},{},{}",
            img.display(),
            mods.display(),
            extra.display()
        ))
        .unwrap();
        assert_eq!(set.release, rel);
        assert_eq!(set.image, Some(0));
        // A folder holds the same set.
        assert_eq!(
            read_set(&d.path().display().to_string())
                .unwrap()
                .packages
                .len(),
            3
        );
        // Several --kernel files of one release join; the spec parses again.
        let specs: Vec<KernelSpec> = [&img, &mods, &extra]
            .iter()
            .map(|p| KernelSpec::parse(&p.display().to_string(), None).unwrap())
            .collect();
        assert!(specs.iter().all(|s| s.source().name() == "package"));
        let joined = join(specs).unwrap();
        assert_eq!(joined.len(), 1);
        let again = KernelSpec::parse(&joined[0].to_string(), None).unwrap();
        assert_eq!(again, joined[0]);
        // Another kernel's package in the same folder.
        let other = d.path().join("other.deb");
        make_deb(&other, "linux-image-9.9.9-amd64", &[]);
        let e = read_set(&d.path().display().to_string()).err().unwrap();
        assert!(
            e.is_user_error() && e.to_string().contains("several kernels"),
            "{e}"
        );
        // Not a kernel.
        let z = d.path().join("zsh.deb");
        make_deb(&z, "zsh", &[]);
        let e = read_file(&z).err().unwrap();
        assert!(e.to_string().contains("not a kernel package"), "{e}");
        // Only modules: no image.
        let cache = Cache::new(d.path().join("cache"));
        let spec = KernelSpec::parse(&mods.display().to_string(), None).unwrap();
        let e = crate::kernel::resolve(&spec, &cache, &|_| {}).unwrap_err();
        assert!(
            e.is_user_error() && e.to_string().contains("no kernel image"),
            "{e}"
        );
    }
}

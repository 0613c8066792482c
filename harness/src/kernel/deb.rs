//! `.deb` extraction in Rust (ar + tar + xz/zstd/gzip), keeping only the
//! kernel image and the module tree, in a normalised layout:
//! `DEST/vmlinuz` and `DEST/root/lib/modules/RELEASE/...`.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

/// What one extraction produced.
#[derive(Debug, Default)]
pub struct Extracted {
    /// True if a kernel image was found and written to `DEST/vmlinuz`.
    pub vmlinuz: bool,
    /// Module release directories seen (names under lib/modules).
    pub module_releases: Vec<String>,
    pub files: u64,
    pub bytes: u64,
}

impl Extracted {
    /// Add what another package of the same kernel gave.
    pub fn merge(&mut self, more: Extracted) {
        self.vmlinuz |= more.vmlinuz;
        self.files += more.files;
        self.bytes += more.bytes;
        for r in more.module_releases {
            if !self.module_releases.contains(&r) {
                self.module_releases.push(r);
            }
        }
    }
}

/// Where a path inside the package goes, relative to DEST.
fn classify(path: &Path) -> Option<(PathBuf, Option<String>)> {
    let comps: Vec<&str> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return None;
    }
    let rest: &[&str] = match comps.as_slice() {
        ["boot", f] if f.starts_with("vmlinuz-") => return Some((PathBuf::from("vmlinuz"), None)),
        ["usr", "lib", "modules", rest @ ..] | ["lib", "modules", rest @ ..] => rest,
        _ => return None,
    };
    match rest {
        [] => None,
        [rel, "vmlinuz"] => Some((PathBuf::from("vmlinuz"), Some(rel.to_string()))),
        [rel, more @ ..] => {
            let mut p = PathBuf::from("root/lib/modules").join(rel);
            p.extend(more);
            Some((p, Some(rel.to_string())))
        }
    }
}

/// Extract the kernel image and modules of one `.deb` into `dest`.
pub fn extract(deb: &Path, dest: &Path) -> Result<Extracted, String> {
    with_data_tar(deb, |reader| {
        extract_tar(reader, dest).map_err(|e| format!("{}: {e}", deb.display()))
    })
}

/// Extract one regular file of a `.deb`'s data (e.g.
/// `usr/src/linux-source-6.12.tar.xz`; a leading `./` is optional) to `dest`.
/// Returns its size.
pub fn extract_member(deb: &Path, member: &str, dest: &Path) -> Result<u64, String> {
    let want = Path::new(member.trim_start_matches("./"));
    with_data_tar(deb, |reader| {
        let ctx = |e: std::io::Error| format!("{}: {e}", deb.display());
        let mut tar = tar::Archive::new(reader);
        for entry in tar.entries().map_err(ctx)? {
            let mut entry = entry.map_err(ctx)?;
            let path = entry.path().map_err(ctx)?.into_owned();
            let path = path.strip_prefix(".").unwrap_or(&path);
            if path != want || !entry.header().entry_type().is_file() {
                continue;
            }
            let mut f = File::create(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
            return std::io::copy(&mut entry, &mut f)
                .map_err(|e| format!("writing {}: {e}", dest.display()));
        }
        Err(format!("{} has no {member}", deb.display()))
    })
}

/// The fields of a `.deb`'s `control` file (`Package`, `Version`,
/// `Architecture`, `Depends`, ...), as written.
pub fn control(deb: &Path) -> Result<Vec<(String, String)>, String> {
    with_tar(deb, "control.tar", |reader| {
        let ctx = |e: std::io::Error| format!("{}: {e}", deb.display());
        let mut tar = tar::Archive::new(reader);
        for entry in tar.entries().map_err(ctx)? {
            let mut entry = entry.map_err(ctx)?;
            let path = entry.path().map_err(ctx)?.into_owned();
            if path != Path::new("./control") && path != Path::new("control") {
                continue;
            }
            let mut text = String::new();
            entry
                .by_ref()
                .take(1 << 20)
                .read_to_string(&mut text)
                .map_err(ctx)?;
            let mut fields: Vec<(String, String)> = Vec::new();
            for line in text.lines() {
                if line.starts_with([' ', '\t']) {
                    continue;
                }
                if let Some((k, v)) = line.split_once(':') {
                    fields.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            return Ok(fields);
        }
        Err(format!("{} has no control file", deb.display()))
    })
}

/// Run `f` on the decompressed `data.tar` stream of a `.deb`.
fn with_data_tar<T>(
    deb: &Path,
    f: impl FnOnce(Box<dyn Read + '_>) -> Result<T, String>,
) -> Result<T, String> {
    with_tar(deb, "data.tar", f)
}

/// Run `f` on the decompressed stream of the `.deb`'s member `which`
/// (`data.tar`, `control.tar`), whatever its compression.
fn with_tar<T>(
    deb: &Path,
    which: &str,
    f: impl FnOnce(Box<dyn Read + '_>) -> Result<T, String>,
) -> Result<T, String> {
    let file = File::open(deb).map_err(|e| format!("opening {}: {e}", deb.display()))?;
    let mut ar = ar::Archive::new(BufReader::with_capacity(1 << 20, file));
    while let Some(entry) = ar.next_entry() {
        let entry = entry.map_err(|e| format!("reading ar archive {}: {e}", deb.display()))?;
        let name = String::from_utf8_lossy(entry.header().identifier()).to_string();
        let name = name.trim_end_matches('/');
        let Some(ext) = name.strip_prefix(which) else {
            continue;
        };
        let reader: Box<dyn Read> = match ext {
            ".xz" => Box::new(xz2::read::XzDecoder::new_multi_decoder(entry)),
            ".zst" => {
                Box::new(zstd::stream::read::Decoder::new(entry).map_err(|e| format!("zstd: {e}"))?)
            }
            ".gz" => Box::new(flate2::read::GzDecoder::new(entry)),
            "" => Box::new(entry),
            _ => return Err(format!("unsupported member {name} in {}", deb.display())),
        };
        return f(reader);
    }
    Err(format!("{} has no {which} member", deb.display()))
}

fn extract_tar(reader: impl Read, dest: &Path) -> std::io::Result<Extracted> {
    let mut out = Extracted::default();
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some((rel, release)) = classify(&path) else {
            continue;
        };
        if let Some(r) = release {
            if !out.module_releases.contains(&r) {
                out.module_releases.push(r);
            }
        }
        let target = dest.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => fs::create_dir_all(&target)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)?;
                }
                let mut f = File::create(&target)?;
                out.bytes += std::io::copy(&mut entry, &mut f)?;
                out.files += 1;
                if rel == Path::new("vmlinuz") {
                    out.vmlinuz = true;
                }
            }
            // Symlinks such as lib/modules/X/build point into linux-headers;
            // nothing we need.
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths() {
        let c = |p: &str| classify(Path::new(p));
        assert_eq!(
            c("./boot/vmlinuz-6.1.0-50-amd64"),
            Some((PathBuf::from("vmlinuz"), None))
        );
        assert_eq!(
            c("./usr/lib/modules/7.2.13+deb14-amd64/vmlinuz"),
            Some((PathBuf::from("vmlinuz"), Some("7.2.13+deb14-amd64".into())))
        );
        assert_eq!(
            c("./lib/modules/6.1.0-50-amd64/kernel/net/wireguard/wireguard.ko"),
            Some((
                PathBuf::from("root/lib/modules/6.1.0-50-amd64/kernel/net/wireguard/wireguard.ko"),
                Some("6.1.0-50-amd64".into())
            ))
        );
        assert_eq!(c("./boot/System.map-6.1.0-50-amd64"), None);
        assert_eq!(c("./usr/share/doc/linux-image/changelog.gz"), None);
        assert_eq!(c("./lib/modules/../../etc/passwd"), None);
    }

    #[test]
    fn extracts_a_synthetic_deb() {
        let dir = tempfile::tempdir().unwrap();
        // Build data.tar.xz with a vmlinuz, one module and unrelated files.
        let mut tarb = tar::Builder::new(Vec::new());
        let mut add = |p: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tarb.append_data(&mut h, p, data).unwrap();
        };
        add("./boot/vmlinuz-9.9.9-amd64", b"KERNEL");
        add("./usr/lib/modules/9.9.9-amd64/kernel/a.ko.xz", b"MOD");
        add("./usr/share/doc/x", b"DOC");
        let tar_bytes = tarb.into_inner().unwrap();
        let mut xz = Vec::new();
        std::io::Write::write_all(&mut xz2::write::XzEncoder::new(&mut xz, 1), &tar_bytes).unwrap();
        let deb = dir.path().join("t.deb");
        let mut arb = ar::Builder::new(File::create(&deb).unwrap());
        for (name, data) in [
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar.xz", Vec::new()),
            ("data.tar.xz", xz),
        ] {
            let h = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
            arb.append(&h, &data[..]).unwrap();
        }
        drop(arb);
        let dest = dir.path().join("out");
        let member = dir.path().join("member");
        assert_eq!(extract_member(&deb, "usr/share/doc/x", &member).unwrap(), 3);
        assert_eq!(fs::read(&member).unwrap(), b"DOC");
        assert!(extract_member(&deb, "usr/src/none.tar.xz", &member)
            .unwrap_err()
            .contains("has no usr/src/none.tar.xz"));
        let ex = extract(&deb, &dest).unwrap();
        assert!(ex.vmlinuz);
        assert_eq!(ex.module_releases, ["9.9.9-amd64"]);
        assert_eq!(fs::read(dest.join("vmlinuz")).unwrap(), b"KERNEL");
        assert!(dest
            .join("root/lib/modules/9.9.9-amd64/kernel/a.ko.xz")
            .exists());
        assert!(!dest.join("usr").exists());
    }
}

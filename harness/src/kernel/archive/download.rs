//! Packages downloaded into the cache: checked against their index entry
//! (size and SHA-256) while they stream in, and stored only once they match.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::error::ArchiveError;
use super::http::{agent, cancelled};
use super::stanza::Stanza;
use crate::kernel::cache::{self, Cache};
use crate::kernel::error::KernelError;

/// Download a package into `CACHE/DIR/` (or reuse a copy there whose
/// SHA-256 is the index's), checking its size and SHA-256 against its
/// index entry.
pub fn download(
    cache: &Cache,
    dir: &str,
    pkg: &Stanza,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, KernelError> {
    pkg.validate().map_err(|reason| ArchiveError::BadIndex {
        repository: pkg.repository.clone(),
        suite: pkg.suite.clone(),
        what: "a stanza".into(),
        reason,
    })?;
    let dir = cache.dir(dir)?;
    let base = pkg.deb_name();
    let dest = dir.join(base);
    // One download of a file at a time; a leftover `.partial-` of a dead
    // run is removed by the cache's sweep (its lock is free).
    let _lock = cache::lock(&dir.join(format!("{base}.lock")))?;
    if dest.exists() {
        let t = Instant::now();
        match cache::sha256_file(&dest) {
            Ok(h) if h == pkg.sha256 => {
                let secs = t.elapsed().as_secs_f64();
                if secs > 0.5 {
                    progress(&format!("checked {base} (sha256) in {secs:.1} s"));
                }
                return Ok(dest);
            }
            _ => {
                progress(&format!(
                    "{base} in the cache is not the package the index names; downloading it again"
                ));
                let _ = fs::remove_file(&dest);
            }
        }
    }
    let url = format!("{}/{}", pkg.uri, pkg.filename);
    let mut last_err = None;
    for attempt in 1..=2 {
        progress(&format!(
            "downloading {} {} from {} {} ({:.1} MB){}",
            pkg.package,
            pkg.version,
            pkg.repository,
            pkg.suite,
            pkg.size as f64 / 1e6,
            if attempt > 1 { ", retry" } else { "" }
        ));
        let t0 = Instant::now();
        match download_once(&url, &dir, &dest, pkg) {
            Ok(n) => {
                let secs = t0.elapsed().as_secs_f64();
                progress(&format!(
                    "downloaded and verified {} ({:.1} MB in {:.1} s, {:.1} MB/s)",
                    base,
                    n as f64 / 1e6,
                    secs,
                    n as f64 / 1e6 / secs.max(0.001)
                ));
                return Ok(dest);
            }
            Err(e) => {
                progress(&format!("download of {base} failed: {e}"));
                let stop = matches!(
                    &e,
                    KernelError::Source(s) if s.to_string().starts_with("interrupted")
                ) || cancelled();
                last_err = Some(e);
                if stop {
                    break;
                }
            }
        }
    }
    Err(last_err.unwrap_or_else(|| {
        KernelError::from(ArchiveError::Download {
            what: base.to_string(),
            reason: "no download was attempted".into(),
        })
    }))
}

fn download_once(url: &str, dir: &Path, dest: &Path, pkg: &Stanza) -> Result<u64, KernelError> {
    let dl_err = |reason: String| {
        KernelError::from(ArchiveError::Download {
            what: url.to_string(),
            reason,
        })
    };
    let resp = agent().get(url).call().map_err(|e| dl_err(e.to_string()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".partial-{}-", pkg.deb_name()))
        .tempfile_in(dir)
        .map_err(|e| KernelError::io(format!("creating a file in {}", dir.display()), e))?;
    // One byte more than the index says tells a longer file.
    let mut reader = resp.into_reader().take(pkg.size + 1);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        if cancelled() {
            // The temp file is deleted when dropped.
            return Err(ArchiveError::Interrupted {
                what: url.to_string(),
            }
            .into());
        }
        let n = reader.read(&mut buf).map_err(|e| dl_err(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(|e| KernelError::io(format!("writing {}", dest.display()), e))?;
        total += n as u64;
    }
    let got = hex::encode(hasher.finalize());
    if got != pkg.sha256 || total != pkg.size {
        return Err(KernelError::from(ArchiveError::Checksum {
            file: format!("{url} ({total} bytes, the index says {})", pkg.size),
            expected: pkg.sha256.clone(),
            actual: got,
        }));
    }
    cache::make_readable(tmp.path(), false)
        .map_err(|e| KernelError::io(format!("storing {}", dest.display()), e))?;
    tmp.persist(dest)
        .map_err(|e| KernelError::io(format!("storing {}", dest.display()), e.error))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::archive::tests::serve;

    #[test]
    fn downloads_are_checked_against_the_index() {
        let body = b"not really a deb".to_vec();
        let sha = hex::encode(Sha256::digest(&body));
        let s = serve(vec![("/pool/k.deb".into(), body.clone())]);
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(cache_dir.path().to_path_buf());
        let mut st = Stanza {
            package: "linux-image-9.9.9-amd64".into(),
            version: "9.9.9-1".into(),
            filename: "pool/k.deb".into(),
            sha256: sha,
            size: body.len() as u64,
            uri: s.base.clone(),
            repository: "acme".into(),
            ..Default::default()
        };
        let p = download(&cache, "debs/acme", &st, &|_| {}).unwrap();
        assert_eq!(fs::read(&p).unwrap(), body);
        // A package whose hash differs from its index entry.
        st.sha256 = "0".repeat(64);
        let _ = fs::remove_file(&p);
        let e = download(&cache, "debs/acme", &st, &|_| {}).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        assert!(!e.is_user_error());
        let left: Vec<_> = fs::read_dir(cache_dir.path().join("debs/acme"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // A Filename that would leave the cache folder never reaches a path.
        st.filename = "../../x.deb".into();
        assert!(download(&cache, "debs/acme", &st, &|_| {}).is_err());
    }

    #[test]
    fn a_killed_runs_partial_download_is_never_used_and_is_swept() {
        let body = b"the whole package, as its index says".to_vec();
        let s = serve(vec![("/pool/k.deb".into(), body.clone())]);
        let root = tempfile::tempdir().unwrap();
        let debs = root.path().join("debs/acme");
        fs::create_dir_all(&debs).unwrap();
        // A run killed mid-download (an hour ago) left half the package.
        let partial = debs.join(".partial-k.deb-Ab12Cd");
        fs::write(&partial, &body[..body.len() / 2]).unwrap();
        crate::kernel::cache::tests::backdate(&partial, 2 * 3600);
        // The next run downloads the whole package and sweeps the half.
        let st = Stanza {
            package: "linux-image-9.9.9-amd64".into(),
            version: "9.9.9-1".into(),
            filename: "pool/k.deb".into(),
            sha256: hex::encode(Sha256::digest(&body)),
            size: body.len() as u64,
            uri: s.base.clone(),
            repository: "acme".into(),
            ..Default::default()
        };
        let cache = Cache::new(root.path().to_path_buf());
        let p = download(&cache, "debs/acme", &st, &|_| {}).unwrap();
        assert_eq!(p, debs.join("k.deb"));
        assert_eq!(fs::read(&p).unwrap(), body);
        assert!(!partial.exists(), "the partial download was not swept");
    }
}

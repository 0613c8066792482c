//! A repository's index: the kernel stanzas of all its suites, read (and
//! verified) in parallel, once per process.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use super::error::ArchiveError;
use super::signed::lock_notes;
use super::stanza::Stanza;
use super::suite::{read_suite, Expired, SuiteOutcome};
use crate::kernel::cache::Cache;
use crate::kernel::error::KernelError;
use crate::kernel::repository::{Archive, Repository};

/// All kernel stanzas of a repository's reachable suites.
#[derive(Debug, Default, Clone)]
pub struct Index {
    pub stanzas: Vec<Stanza>,
    /// Suites that could not be read at all (network error, no cached copy).
    pub failures: Vec<String>,
    /// Suites refused because their Release expired.
    pub expired: Vec<Expired>,
}

impl Index {
    /// The index with the expired suites' stale stanzas put back in.
    pub fn with_stale(&self) -> Index {
        let mut stanzas = self.stanzas.clone();
        for e in &self.expired {
            stanzas.extend(e.stale.iter().cloned());
        }
        Index {
            stanzas,
            failures: self.failures.clone(),
            expired: vec![],
        }
    }
}

/// Load (fetching and verifying as needed, in parallel) the kernel stanzas
/// of every suite of a repository.
pub fn load_index(
    repo: &Repository,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<Index, KernelError> {
    // One read per process and repository: a run asks for several kernels.
    type Memo = Mutex<Vec<((Repository, PathBuf), Index)>>;
    static MEMO: std::sync::OnceLock<Memo> = std::sync::OnceLock::new();
    let key = (repo.clone(), cache.root().to_path_buf());
    let memo = MEMO.get_or_init(Default::default);
    if let Some((_, i)) = lock_notes(memo).iter().find(|(k, _)| *k == key) {
        return Ok(i.clone());
    }
    let index = read_index(repo, cache, progress)?;
    lock_notes(memo).push((key, index.clone()));
    Ok(index)
}

fn read_index(
    repo: &Repository,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<Index, KernelError> {
    let notes = Mutex::new(repo.notes.clone());
    let t0 = Instant::now();
    let jobs: Vec<(&Archive, &str)> = repo
        .archives
        .iter()
        .flat_map(|a| a.suites.iter().map(move |s| (a, s.as_str())))
        .collect();
    let results: Vec<(&str, SuiteOutcome)> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|&(archive, suite)| {
                let notes = &notes;
                s.spawn(move || read_suite(repo, archive, suite, cache, notes))
            })
            .collect();
        jobs.iter()
            .map(|(_, suite)| *suite)
            .zip(handles.into_iter().map(|h| {
                h.join()
                    .unwrap_or_else(|_| SuiteOutcome::Unavailable("index worker panicked".into()))
            }))
            .collect()
    });
    for n in notes.into_inner().unwrap_or_else(|e| e.into_inner()) {
        progress(&n);
    }
    let mut index = Index::default();
    let mut errors = Vec::new();
    for (suite, r) in results {
        match r {
            SuiteOutcome::Read(mut st) => index.stanzas.append(&mut st),
            SuiteOutcome::Missing => {}
            SuiteOutcome::Unavailable(e) => {
                progress(&format!("index of {} {suite} unavailable: {e}", repo.name));
                index.failures.push(suite.to_string());
                errors.push(e);
            }
            SuiteOutcome::Expired(e) => index.expired.push(e),
            // Never a silent fallback: a suite that does not verify spoils
            // the repository's answer.
            SuiteOutcome::Refused(e) => return Err(e),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if secs > 1.0 {
        progress(&format!(
            "read and verified the {} indexes in {secs:.1} s",
            repo.name
        ));
    }
    if index.stanzas.is_empty() && index.expired.is_empty() && !errors.is_empty() {
        return Err(KernelError::from(ArchiveError::Download {
            what: format!("the package indexes of {}", repo.name),
            reason: errors.join("; "),
        }));
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::kernel::archive::tests::serve;
    use crate::kernel::openpgp::tests as pgp;
    use crate::kernel::openpgp::Keys;
    use crate::kernel::repository::Naming;
    use crate::kernel::Trust;

    fn repo(base: &str, keys: Keys) -> Repository {
        Repository {
            name: "acme".into(),
            description: "test".into(),
            archives: vec![Archive {
                uri: base.to_string(),
                suites: vec!["stable".into()],
                components: vec!["main".into()],
                keys,
                check_valid_until: true,
            }],
            naming: Naming::debian(),
            allow_unsigned: false,
            notes: vec![],
        }
    }

    fn files(inrelease: &[u8], packages_xz: &[u8]) -> Vec<(String, Vec<u8>)> {
        vec![
            ("/dists/stable/InRelease".into(), inrelease.to_vec()),
            (
                "/dists/stable/main/binary-amd64/Packages.xz".into(),
                packages_xz.to_vec(),
            ),
        ]
    }

    const PACKAGES_XZ: &[u8] = include_bytes!("../testdata/Packages.xz");

    fn gpgv_here() -> bool {
        std::process::Command::new("gpgv")
            .arg("--version")
            .output()
            .is_ok()
    }

    #[test]
    fn reads_a_signed_repository_and_refuses_tampering() {
        if !gpgv_here() {
            eprintln!("gpgv not installed: skipped (make deps installs it)");
            return;
        }
        let (_k, keys) = pgp::keyring_file(pgp::TEST_KEYRING);
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(cache_dir.path().to_path_buf());
        // The good repository.
        let s = serve(files(pgp::IN_RELEASE, PACKAGES_XZ));
        let index = load_index(&repo(&s.base, keys.clone()), &cache, &|_| {}).unwrap();
        assert_eq!(index.stanzas.len(), 1);
        let st = &index.stanzas[0];
        assert_eq!(st.package, "linux-image-6.1.0-57-amd64");
        assert_eq!(st.uri, s.base);
        assert!(matches!(st.trust, Trust::Signed { .. }));
        let dir = cache_dir.path().join("index/acme/stable");
        assert!(dir.join("InRelease").is_file());
        assert!(dir.join("main.kernels.json").is_file());

        // Each tampering is refused and nothing is cached.
        let refused = |f: Vec<(String, Vec<u8>)>, keys: &Keys| {
            let c = tempfile::tempdir().unwrap();
            let s = serve(f);
            let e = load_index(
                &repo(&s.base, keys.clone()),
                &Cache::new(c.path().to_path_buf()),
                &|_| {},
            )
            .unwrap_err();
            let left: Vec<_> = fs::read_dir(c.path().join("index/acme/stable"))
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "cached after refusal: {left:?}");
            assert!(!e.is_user_error(), "{e}");
            e.to_string()
        };
        // A Packages index changed after the Release was signed.
        let mut tampered = PACKAGES_XZ.to_vec();
        let last = tampered.len() - 20;
        tampered[last] ^= 1;
        let m = refused(files(pgp::IN_RELEASE, &tampered), &keys);
        assert!(m.contains("does not match the signed Release"), "{m}");
        // A Release changed after it was signed.
        let m = refused(files(pgp::IN_RELEASE_ALTERED, PACKAGES_XZ), &keys);
        assert!(m.contains("BAD signature"), "{m}");
        // An expired Release.
        let idx = {
            let c = tempfile::tempdir().unwrap();
            let s = serve(files(pgp::IN_RELEASE_EXPIRED, PACKAGES_XZ));
            load_index(
                &repo(&s.base, keys.clone()),
                &Cache::new(c.path().to_path_buf()),
                &|_| {},
            )
            .unwrap()
        };
        assert!(idx.stanzas.is_empty());
        assert_eq!(idx.expired.len(), 1);
        assert!(
            idx.expired[0].reason.contains("expired on 2026-11-01"),
            "{}",
            idx.expired[0].reason
        );
        assert_eq!(idx.expired[0].stale.len(), 1);
        // An HTML error page instead of InRelease, or of the index.
        let html = b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec();
        let m = refused(files(&html, PACKAGES_XZ), &keys);
        assert!(m.contains("no OpenPGP signature"), "{m}");
        let m = refused(files(pgp::IN_RELEASE, &html), &keys);
        assert!(m.contains("HTML page"), "{m}");
        // Signed by a key the repository does not trust.
        let (_o, other) = pgp::keyring_file(pgp::OTHER_KEYRING);
        let m = refused(files(pgp::IN_RELEASE, PACKAGES_XZ), &other);
        assert!(m.contains("not in"), "{m}");

        // A second read within INDEX_MAX_AGE asks the server nothing.
        let before = s.hits.load(Ordering::SeqCst);
        load_index(&repo(&s.base, keys), &cache, &|_| {}).unwrap();
        assert_eq!(s.hits.load(Ordering::SeqCst), before);
    }

    #[test]
    fn a_killed_runs_half_written_index_is_never_used_and_is_swept() {
        if !gpgv_here() {
            eprintln!("gpgv not installed: skipped (make deps installs it)");
            return;
        }
        let (_k, keys) = pgp::keyring_file(pgp::TEST_KEYRING);
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("index/acme/stable");
        fs::create_dir_all(&dir).unwrap();
        // A run killed while it wrote the suite's files (an hour ago) left
        // them half written, under the names their writer gave them (and
        // one named as natvets before `.writing-` named them).
        let half = |b: &[u8]| b[..b.len() / 2].to_vec();
        let left = [
            (dir.join(".writing-InRelease-Ab12Cd"), half(pgp::IN_RELEASE)),
            (
                dir.join(".writing-main_binary-amd64_Packages.xz-Ab12Cd"),
                half(PACKAGES_XZ),
            ),
            (dir.join(".tmpAb12Cd"), half(PACKAGES_XZ)),
        ];
        for (p, b) in &left {
            fs::write(p, b).unwrap();
            crate::kernel::cache::tests::backdate(p, 2 * 3600);
        }
        // The next run reads the suite from the repository, verified, and
        // nothing of the killed run is left.
        let s = serve(files(pgp::IN_RELEASE, PACKAGES_XZ));
        let cache = Cache::new(root.path().to_path_buf());
        let index = load_index(&repo(&s.base, keys), &cache, &|_| {}).unwrap();
        assert_eq!(index.stanzas.len(), 1);
        assert!(matches!(index.stanzas[0].trust, Trust::Signed { .. }));
        assert_eq!(fs::read(dir.join("InRelease")).unwrap(), pgp::IN_RELEASE);
        assert_eq!(
            fs::read(dir.join("main_binary-amd64_Packages.xz")).unwrap(),
            PACKAGES_XZ
        );
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "InRelease",
                "main.kernels.json",
                "main_binary-amd64_Packages.xz"
            ]
        );
    }
}

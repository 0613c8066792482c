//! A suite's signed Release: fetched when the cached copy is older than
//! [`INDEX_MAX_AGE`], verified with gpgv against the repository's keys on
//! every use (or read unchecked for `--allow-unsigned`), and cached only
//! once the suite's indexes matched it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::error::ArchiveError;
use super::http::{get, Got};
use crate::kernel::cache;
use crate::kernel::error::KernelError;
use crate::kernel::openpgp::{self, SignatureError};
use crate::kernel::repository::{Archive, Repository};
use crate::kernel::Trust;

/// How long a downloaded index is used before it is fetched again.
pub const INDEX_MAX_AGE: Duration = Duration::from_secs(6 * 3600);

/// Why a suite's Release could not be had.
pub(super) enum ReleaseFailure {
    /// Not reachable and not cached.
    Unavailable(String),
    /// Refused: a bad or missing signature.
    Refused(KernelError),
}

/// A cached file's age, if it exists.
fn age(path: &Path) -> Option<Duration> {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
}

/// A suite's Release as verified, and the files to cache once the suite's
/// indexes verified too.
pub(super) struct SignedRelease {
    pub(super) text: String,
    pub(super) trust: Trust,
    pub(super) keep: Vec<(PathBuf, Vec<u8>)>,
}

/// The suite's Release text and who signed it: fetched when the cached
/// copy is older than [`INDEX_MAX_AGE`] (or missing), verified every time.
pub(super) fn signed_release(
    repo: &Repository,
    archive: &Archive,
    suite: &str,
    dir: &Path,
    notes: &Mutex<Vec<String>>,
) -> Result<Option<SignedRelease>, ReleaseFailure> {
    let base = format!("{}/dists/{suite}", archive.uri);
    let sig_err = |source: SignatureError| {
        ReleaseFailure::Refused(KernelError::from(ArchiveError::Signature {
            repository: repo.name.clone(),
            suite: suite.to_string(),
            uri: archive.uri.clone(),
            source,
        }))
    };
    let inrelease = dir.join("InRelease");
    let (release, release_gpg) = (dir.join("Release"), dir.join("Release.gpg"));
    let cached = [&inrelease, &release]
        .into_iter()
        .filter_map(|p| age(p).map(|a| (p, a)))
        .min_by_key(|(_, a)| *a);
    let fresh = cached.is_some_and(|(_, a)| a < INDEX_MAX_AGE);
    // What to verify: the signed file, its detached signature if any, and
    // whether it was just fetched.
    type Signed = (Vec<u8>, Option<Vec<u8>>);
    let mut files: Option<(Vec<u8>, Option<Vec<u8>>, bool)> = None;
    if !fresh {
        let fetched = (|| -> Result<Option<Signed>, String> {
            let too_large = |what: &str| Err(format!("{base}/{what} is larger than 64 MiB"));
            match get(&format!("{base}/InRelease"), 64 << 20)? {
                Got::Body(b) => return Ok(Some((b, None))),
                Got::TooLarge => return too_large("InRelease"),
                Got::NotFound => {}
            }
            let r = match get(&format!("{base}/Release"), 64 << 20)? {
                Got::Body(r) => r,
                Got::TooLarge => return too_large("Release"),
                Got::NotFound => return Ok(None),
            };
            let sig = match get(&format!("{base}/Release.gpg"), 1 << 20)? {
                Got::Body(s) => Some(s),
                Got::NotFound | Got::TooLarge => None,
            };
            Ok(Some((r, sig.or_else(|| Some(Vec::new())))))
        })();
        match fetched {
            Ok(Some((data, sig))) => files = Some((data, sig, true)),
            Ok(None) => return Ok(None),
            Err(why) if cached.is_some() => lock_notes(notes).push(format!(
                "{} {suite}: refresh failed ({why}); using the cached index",
                repo.name
            )),
            Err(why) => return Err(ReleaseFailure::Unavailable(format!("{base}: {why}"))),
        }
    }
    let (data, sig, new) = match files {
        Some(f) => f,
        None => {
            let data = fs::read(&inrelease).ok();
            match data {
                Some(d) => (d, None, false),
                None => (
                    fs::read(&release).map_err(|e| {
                        ReleaseFailure::Unavailable(format!("{}: {e}", release.display()))
                    })?,
                    Some(fs::read(&release_gpg).unwrap_or_default()),
                    false,
                ),
            }
        }
    };
    let what = format!(
        "{base}/{}",
        if sig.is_some() {
            "Release"
        } else {
            "InRelease"
        }
    );
    let verified = match &sig {
        None => openpgp::verify_clearsigned(&data, &archive.keys, &what),
        Some(s) if s.is_empty() => Err(SignatureError::NotSigned {
            what: what.clone(),
            detail: " (there is no Release.gpg)".into(),
        }),
        Some(s) => openpgp::verify_detached(&data, s, &archive.keys, &what),
    };
    let (text, trust) = match verified {
        Ok(v) => (v.text, Trust::Signed { signers: v.signers }),
        Err(
            SignatureError::NoKeyring { .. }
            | SignatureError::NotSigned { .. }
            | SignatureError::UnknownKey { .. },
        ) if repo.allow_unsigned => (clear_text(&data), Trust::Unsigned),
        Err(e) => return Err(sig_err(e)),
    };
    let mut keep = Vec::new();
    if new {
        match &sig {
            None => keep.push((inrelease, data)),
            Some(s) => {
                if !s.is_empty() {
                    keep.push((release_gpg, s.clone()));
                }
                keep.push((release, data));
            }
        }
    }
    Ok(Some(SignedRelease { text, trust, keep }))
}

/// Cache the Release files of a suite whose indexes verified (an HTML page,
/// a badly signed Release, a Release whose index did not match, never are).
pub(super) fn keep_release(dir: &Path, keep: Vec<(PathBuf, Vec<u8>)>) -> Result<(), KernelError> {
    if keep.is_empty() {
        return Ok(());
    }
    for name in ["InRelease", "Release", "Release.gpg"] {
        let _ = fs::remove_file(dir.join(name));
    }
    for (p, b) in keep {
        cache::write_atomic(&p, &b)?;
    }
    Ok(())
}

pub(super) fn lock_notes<T>(notes: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    notes.lock().unwrap_or_else(|e| e.into_inner())
}

/// The text of a clear-signed message without checking it (--allow-unsigned).
fn clear_text(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let Some(start) = text.find("-----BEGIN PGP SIGNED MESSAGE-----") else {
        return text.into_owned();
    };
    let body = &text[start..];
    // Armor headers ("Hash: ...") end at the first empty line.
    let body = body.split_once("\n\n").map(|(_, b)| b).unwrap_or("");
    let body = body
        .split("\n-----BEGIN PGP SIGNATURE-----")
        .next()
        .unwrap_or("");
    body.lines()
        .map(|l| l.strip_prefix("- ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first keyring of `archive` that does not exist, when signatures are checked.
pub fn missing_keyring(repo: &Repository, archive: &Archive) -> Option<PathBuf> {
    if repo.allow_unsigned {
        return None;
    }
    archive.keys.keyrings.iter().find(|k| !k.is_file()).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::openpgp::tests as pgp;

    #[test]
    fn clear_text_of_an_unchecked_message() {
        let t = clear_text(pgp::IN_RELEASE);
        assert!(t.starts_with("Origin: natvet-test\n"), "{t}");
        assert!(!t.contains("PGP"), "{t}");
    }
}

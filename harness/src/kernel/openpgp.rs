//! OpenPGP signatures of apt repositories, checked with Debian's `gpgv`
//! (package gpgv), the verifier apt itself runs: same keyrings, same
//! algorithms, same answers. natvet hands it the signed file and the
//! keyrings, reads its machine-readable status lines (`--status-fd`), and
//! takes the signed text from what gpgv wrote out (`--output`), never from
//! its own reading of the file, so text outside the signature cannot slip in.
//!
//! A signature counts when gpgv reports it good and valid (`GOODSIG` and
//! `VALIDSIG`) from a key of the keyrings, made with a digest apt accepts
//! (not MD5, SHA-1 or RIPEMD-160), and, when the repository pins
//! fingerprints, by one of those keys. Any `BADSIG` refuses the file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{ErrorClass, SourceError};

/// Debian's archive keyring (package debian-archive-keyring), apt's default.
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Whose keys a repository's signatures must come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Keys {
    /// Keyring files (binary or ASCII-armored).
    pub keyrings: Vec<PathBuf>,
    /// Key blocks given inline (an apt source's `Signed-By` may hold one).
    pub inline: Vec<Vec<u8>>,
    /// Fingerprints (upper-case hex) a good signature must be made by, if
    /// any (apt's `Signed-By: FINGERPRINT`); empty: any key of the keyrings.
    pub fingerprints: Vec<String>,
}

impl Keys {
    pub fn keyring(path: impl Into<PathBuf>) -> Keys {
        Keys {
            keyrings: vec![path.into()],
            ..Keys::default()
        }
    }

    /// The keyrings, for messages.
    pub fn describe(&self) -> String {
        let mut s = self
            .keyrings
            .iter()
            .map(|k| k.display().to_string())
            .chain((!self.inline.is_empty()).then(|| "a key given inline".to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        if !self.fingerprints.is_empty() {
            s.push_str(&format!(" (keys {})", self.fingerprints.join(", ")));
        }
        s
    }
}

/// A file whose signature verified: the text that was signed and who signed it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub text: String,
    /// Primary-key fingerprints of the good signatures.
    pub signers: Vec<String>,
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("gpgv is not installed (natvet checks repository signatures with it, as apt does); run `apt-get install gpgv debian-archive-keyring` (or `make deps`)")]
    NoGpgv,

    #[error("keyring {} does not exist; {hint}", .path.display())]
    NoKeyring { path: PathBuf, hint: String },

    #[error("{what}: BAD signature from key {key}: the file was changed after it was signed; do not use this mirror (or repository) until it serves what its keys signed")]
    Bad { what: String, key: String },

    #[error("{what} is signed by key {keys}, which is not in {keyrings}: give the repository's keyring (keyring=PATH, or Signed-By in its apt source)")]
    UnknownKey {
        what: String,
        keys: String,
        keyrings: String,
    },

    #[error("{what}: the signing key {key} has expired or was revoked; update the keyring {keyrings} (apt-get install --only-upgrade debian-archive-keyring for Debian's)")]
    ExpiredKey {
        what: String,
        key: String,
        keyrings: String,
    },

    #[error("{what} is signed only with a weak digest ({digest}), which apt refuses too; the repository must re-sign it with SHA-256 or better")]
    WeakDigest { what: String, digest: String },

    #[error(
        "{what} is signed by {signers}, none of the keys the repository is pinned to ({pinned})"
    )]
    NotPinned {
        what: String,
        signers: String,
        pinned: String,
    },

    #[error("{what} carries no OpenPGP signature{detail}; is the URI right? (a local test repository without signatures needs --allow-unsigned)")]
    NotSigned { what: String, detail: String },

    #[error("checking the signature of {what} failed: {reason}")]
    Gpgv { what: String, reason: String },
}

impl SourceError for SignatureError {
    fn class(&self) -> ErrorClass {
        match self {
            // A missing keyring file is the user's to give (or install).
            SignatureError::NoKeyring { .. } => ErrorClass::BadInput,
            SignatureError::NoGpgv
            | SignatureError::Bad { .. }
            | SignatureError::UnknownKey { .. }
            | SignatureError::ExpiredKey { .. }
            | SignatureError::WeakDigest { .. }
            | SignatureError::NotPinned { .. }
            | SignatureError::NotSigned { .. }
            | SignatureError::Gpgv { .. } => ErrorClass::Infrastructure,
        }
    }
}

/// Verify a clear-signed file (`InRelease`); `what` names it in messages.
pub fn verify_clearsigned(
    data: &[u8],
    keys: &Keys,
    what: &str,
) -> Result<Verified, SignatureError> {
    run_gpgv(data, None, keys, what)
}

/// Verify `data` (`Release`) against its detached signature (`Release.gpg`).
pub fn verify_detached(
    data: &[u8],
    signature: &[u8],
    keys: &Keys,
    what: &str,
) -> Result<Verified, SignatureError> {
    run_gpgv(data, Some(signature), keys, what)
}

fn run_gpgv(
    data: &[u8],
    detached: Option<&[u8]>,
    keys: &Keys,
    what: &str,
) -> Result<Verified, SignatureError> {
    let fail = |reason: String| SignatureError::Gpgv {
        what: what.to_string(),
        reason,
    };
    // gpgv gets a home of its own: no user configuration, no trustdb.
    let home = tempfile::Builder::new()
        .prefix("natvet-gpgv-")
        .tempdir()
        .map_err(|e| fail(format!("creating a temporary folder: {e}")))?;
    let write = |name: &str, bytes: &[u8]| {
        let p = home.path().join(name);
        fs::write(&p, bytes).map_err(|e| fail(format!("writing {}: {e}", p.display())))?;
        Ok::<_, SignatureError>(p)
    };
    let mut cmd = Command::new("gpgv");
    cmd.arg("--homedir")
        .arg(home.path())
        .args(["--status-fd", "1"]);
    for (i, k) in keys.keyrings.iter().enumerate() {
        let bytes = fs::read(k).map_err(|_| SignatureError::NoKeyring {
            path: k.clone(),
            hint: if k == Path::new(DEBIAN_KEYRING) {
                "run `apt-get install debian-archive-keyring` (or `make deps`)".into()
            } else {
                "check the path (keyring=PATH, or Signed-By in the apt source)".into()
            },
        })?;
        // gpgv reads binary keyrings only; apt's `.asc` keyrings are armored.
        let binary = match dearmor(&bytes) {
            Some(b) => write(&format!("keyring-{i}.gpg"), &b)?,
            None => k.clone(),
        };
        cmd.arg("--keyring").arg(binary);
    }
    for (i, block) in keys.inline.iter().enumerate() {
        let bytes = dearmor(block).unwrap_or_else(|| block.clone());
        let p = write(&format!("inline-{i}.gpg"), &bytes)?;
        cmd.arg("--keyring").arg(p);
    }
    let out_path = home.path().join("signed");
    let input = write("input", data)?;
    match detached {
        None => {
            cmd.arg("--output").arg(&out_path).arg(&input);
        }
        Some(sig) => {
            let sig = write("input.sig", sig)?;
            cmd.arg(&sig).arg(&input);
        }
    }
    let output = match crate::child::output(&mut cmd) {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SignatureError::NoGpgv),
        Err(e) => return Err(fail(format!("running gpgv: {e}"))),
    };
    let status = String::from_utf8_lossy(&output.stdout);
    let signers = judge(&parse_status(&status), keys, what).map_err(|e| match e {
        SignatureError::NotSigned { what, .. } if !output.status.success() => {
            SignatureError::NotSigned {
                what,
                detail: format!(
                    " (gpgv: {})",
                    String::from_utf8_lossy(&output.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                        .trim()
                ),
            }
        }
        e => e,
    })?;
    let text = match detached {
        None => fs::read(&out_path).map_err(|e| fail(format!("reading gpgv's output: {e}")))?,
        Some(_) => data.to_vec(),
    };
    let text = String::from_utf8(text).map_err(|_| fail("the signed text is not UTF-8".into()))?;
    Ok(Verified { text, signers })
}

/// One status line of gpgv that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Good {
        key: String,
    },
    Valid {
        primary: String,
        fpr: String,
        hash_algo: u32,
    },
    Bad {
        key: String,
    },
    NoKey {
        key: String,
    },
    Expired {
        key: String,
    },
    NoData,
}

fn parse_status(text: &str) -> Vec<Status> {
    text.lines()
        .filter_map(|l| l.strip_prefix("[GNUPG:] "))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let arg = |i: usize| f.get(i).copied().unwrap_or("").to_string();
            Some(match *f.first()? {
                "GOODSIG" => Status::Good { key: arg(1) },
                "VALIDSIG" => Status::Valid {
                    fpr: arg(1),
                    // The primary key's fingerprint is the last field (gpg 2.x).
                    primary: f.get(10).copied().unwrap_or(f.get(1)?).to_string(),
                    hash_algo: f.get(8)?.parse().ok()?,
                },
                "BADSIG" => Status::Bad { key: arg(1) },
                "NO_PUBKEY" => Status::NoKey { key: arg(1) },
                "ERRSIG" if f.get(6) == Some(&"9") => Status::NoKey { key: arg(1) },
                "EXPKEYSIG" | "REVKEYSIG" | "EXPSIG" => Status::Expired { key: arg(1) },
                "NODATA" => Status::NoData,
                _ => return None,
            })
        })
        .collect()
}

/// OpenPGP hash algorithm ids apt refuses (RFC 4880 9.4).
fn weak_digest(algo: u32) -> Option<&'static str> {
    match algo {
        1 => Some("MD5"),
        2 => Some("SHA-1"),
        3 => Some("RIPEMD-160"),
        _ => None,
    }
}

/// The good signers gpgv's status names, or why there are none.
fn judge(status: &[Status], keys: &Keys, what: &str) -> Result<Vec<String>, SignatureError> {
    let w = what.to_string();
    if let Some(Status::Bad { key }) = status.iter().find(|s| matches!(s, Status::Bad { .. })) {
        return Err(SignatureError::Bad {
            what: w,
            key: key.clone(),
        });
    }
    let good = status.iter().any(|s| matches!(s, Status::Good { .. }));
    let mut weak = None;
    let mut signers = Vec::new();
    for s in status {
        if let Status::Valid {
            primary,
            fpr,
            hash_algo,
        } = s
        {
            if let Some(d) = weak_digest(*hash_algo) {
                weak = Some(d);
                continue;
            }
            let pinned = keys.fingerprints.is_empty()
                || keys
                    .fingerprints
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(primary) || p.eq_ignore_ascii_case(fpr));
            if pinned {
                signers.push(primary.to_ascii_uppercase());
            }
        }
    }
    if good && !signers.is_empty() {
        return Ok(signers);
    }
    let valid: Vec<&str> = status
        .iter()
        .filter_map(|s| match s {
            Status::Valid { primary, .. } => Some(primary.as_str()),
            _ => None,
        })
        .collect();
    if good && !valid.is_empty() {
        return Err(match weak {
            Some(d) if keys.fingerprints.is_empty() => SignatureError::WeakDigest {
                what: w,
                digest: d.into(),
            },
            _ => SignatureError::NotPinned {
                what: w,
                signers: valid.join(", "),
                pinned: keys.fingerprints.join(", "),
            },
        });
    }
    let of = |pick: fn(&Status) -> Option<&String>| -> Vec<String> {
        status.iter().filter_map(pick).cloned().collect()
    };
    let expired = of(|s| match s {
        Status::Expired { key } => Some(key),
        _ => None,
    });
    if !expired.is_empty() {
        return Err(SignatureError::ExpiredKey {
            what: w,
            key: expired.join(", "),
            keyrings: keys.describe(),
        });
    }
    let unknown = of(|s| match s {
        Status::NoKey { key } => Some(key),
        _ => None,
    });
    if !unknown.is_empty() {
        let mut u = unknown;
        u.dedup();
        return Err(SignatureError::UnknownKey {
            what: w,
            keys: u.join(", "),
            keyrings: keys.describe(),
        });
    }
    Err(SignatureError::NotSigned {
        what: w,
        detail: if status.contains(&Status::NoData) {
            " (it is not OpenPGP data)".into()
        } else {
            String::new()
        },
    })
}

/// The binary form of an ASCII-armored key block; None when `bytes` is not armored.
pub fn dearmor(bytes: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let text = std::str::from_utf8(bytes).ok()?;
    let start = text.find("-----BEGIN PGP ")?;
    let mut lines = text[start..].lines().skip(1);
    // Armor headers ("Version: ...") end at the first empty line.
    let mut body = String::new();
    let mut in_headers = true;
    for l in lines.by_ref() {
        let l = l.trim();
        if in_headers {
            if l.is_empty() {
                in_headers = false;
            } else if !l.contains(": ") {
                in_headers = false;
                body.push_str(l);
            }
            continue;
        }
        if l.starts_with("-----END PGP ") || l.starts_with('=') {
            break;
        }
        body.push_str(l);
    }
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A key made for these tests (`gpg --quick-gen-key`), its public
    /// keyring, and files it signed: Release texts (fresh and expired), an
    /// InRelease, a detached signature, and an InRelease altered after signing.
    pub(crate) const TEST_KEYRING: &[u8] = include_bytes!("testdata/test-key.gpg");
    pub(crate) const TEST_KEY_ASC: &[u8] = include_bytes!("testdata/test-key.asc");
    pub(crate) const IN_RELEASE: &[u8] = include_bytes!("testdata/InRelease");
    pub(crate) const IN_RELEASE_EXPIRED: &[u8] = include_bytes!("testdata/InRelease.expired");
    pub(crate) const IN_RELEASE_ALTERED: &[u8] = include_bytes!("testdata/InRelease.altered");
    pub(crate) const RELEASE: &[u8] = include_bytes!("testdata/Release");
    pub(crate) const RELEASE_GPG: &[u8] = include_bytes!("testdata/Release.gpg");
    pub(crate) const OTHER_KEYRING: &[u8] = include_bytes!("testdata/other-key.gpg");

    pub(crate) fn keyring_file(bytes: &[u8]) -> (tempfile::TempDir, Keys) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.gpg");
        fs::write(&p, bytes).unwrap();
        (d, Keys::keyring(p))
    }

    fn have_gpgv() -> bool {
        Command::new("gpgv").arg("--version").output().is_ok()
    }

    #[test]
    fn judges_status_lines() {
        let keys = Keys::default();
        let good = "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 54404762BBB6E853 Debian\n\
            [GNUPG:] VALIDSIG ED541312A33F1128F10B1C6C54404762BBB6E853 2026-11-30 1795998154 0 4 0 1 8 01 AC530D520F2F3269F5E98313A48449044AAD5C5D\n";
        assert_eq!(
            judge(&parse_status(good), &keys, "x").unwrap(),
            ["AC530D520F2F3269F5E98313A48449044AAD5C5D"]
        );
        let pinned = Keys {
            fingerprints: vec!["0000000000000000000000000000000000000000".into()],
            ..Keys::default()
        };
        assert!(matches!(
            judge(&parse_status(good), &pinned, "x"),
            Err(SignatureError::NotPinned { .. })
        ));
        let bad = format!("{good}[GNUPG:] BADSIG 1111 Mallory\n");
        assert!(matches!(
            judge(&parse_status(&bad), &keys, "x"),
            Err(SignatureError::Bad { .. })
        ));
        let sha1 =
            "[GNUPG:] GOODSIG 5440 D\n[GNUPG:] VALIDSIG AAAA 2026-11-30 1 0 4 0 1 2 01 BBBB\n";
        assert!(matches!(
            judge(&parse_status(sha1), &keys, "x"),
            Err(SignatureError::WeakDigest { .. })
        ));
        let unknown = "[GNUPG:] ERRSIG 6ED0E7B82643E131 1 8 01 1795998154 9 -\n[GNUPG:] NO_PUBKEY 6ED0E7B82643E131\n";
        let e = judge(&parse_status(unknown), &keys, "InRelease").unwrap_err();
        assert!(e.to_string().contains("6ED0E7B82643E131"), "{e}");
        let expired =
            "[GNUPG:] EXPKEYSIG 1234 Old\n[GNUPG:] VALIDSIG AAAA 2026-11-30 1 0 4 0 1 8 01 BBBB\n";
        assert!(matches!(
            judge(&parse_status(expired), &keys, "x"),
            Err(SignatureError::ExpiredKey { .. })
        ));
        assert!(matches!(
            judge(&parse_status("[GNUPG:] NODATA 1\n"), &keys, "x"),
            Err(SignatureError::NotSigned { .. })
        ));
    }

    #[test]
    fn verifies_real_signatures() {
        if !have_gpgv() {
            eprintln!("gpgv not installed: skipped (make deps installs it)");
            return;
        }
        let (_d, keys) = keyring_file(TEST_KEYRING);
        let v = verify_clearsigned(IN_RELEASE, &keys, "InRelease").unwrap();
        assert!(v.text.starts_with("Origin: natvet-test"), "{}", v.text);
        assert!(!v.text.contains("BEGIN PGP"), "{}", v.text);
        assert_eq!(v.signers.len(), 1);
        let v = verify_detached(RELEASE, RELEASE_GPG, &keys, "Release").unwrap();
        assert!(v.text.starts_with("Origin: natvet-test"));
        // Changed after signing.
        let e = verify_clearsigned(IN_RELEASE_ALTERED, &keys, "InRelease").unwrap_err();
        assert!(matches!(e, SignatureError::Bad { .. }), "{e}");
        let mut release = RELEASE.to_vec();
        release.extend_from_slice(b"Extra: field\n");
        let e = verify_detached(&release, RELEASE_GPG, &keys, "Release").unwrap_err();
        assert!(matches!(e, SignatureError::Bad { .. }), "{e}");
        // Another key's keyring.
        let (_o, other) = keyring_file(OTHER_KEYRING);
        let e = verify_clearsigned(IN_RELEASE, &other, "InRelease").unwrap_err();
        assert!(matches!(e, SignatureError::UnknownKey { .. }), "{e}");
        // An HTML error page where InRelease should be.
        let e = verify_clearsigned(
            b"<html><body>502 Bad Gateway</body></html>",
            &keys,
            "InRelease",
        )
        .unwrap_err();
        assert!(matches!(e, SignatureError::NotSigned { .. }), "{e}");
        // An armored keyring works like the binary one.
        let (_a, armored) = keyring_file(TEST_KEY_ASC);
        assert!(verify_clearsigned(IN_RELEASE, &armored, "InRelease").is_ok());
        // A keyring that is not there.
        let e =
            verify_clearsigned(IN_RELEASE, &Keys::keyring("/nonexistent.gpg"), "x").unwrap_err();
        assert!(matches!(e, SignatureError::NoKeyring { .. }), "{e}");
    }

    #[test]
    fn dearmors() {
        assert_eq!(dearmor(TEST_KEYRING), None);
        assert_eq!(dearmor(TEST_KEY_ASC).as_deref(), Some(TEST_KEYRING));
    }
}

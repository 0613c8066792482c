//! One suite of one archive: its signed Release ([`signed`](super::signed)),
//! then each component's Packages index as that Release lists it, checked
//! against the size and SHA-256 the Release gives before it is parsed or
//! cached (with its kernel stanzas parsed beside it), and the stanzas'
//! fields validated. An expired suite is kept aside as [`Expired`].

use std::fs;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::error::ArchiveError;
use super::http::{get, Got};
use super::signed::{
    keep_release, lock_notes, missing_keyring, signed_release, ReleaseFailure, SignedRelease,
};
use super::stanza::{parse_packages, Stanza};
use crate::kernel::cache::{self, Cache};
use crate::kernel::error::KernelError;
use crate::kernel::openpgp::SignatureError;
use crate::kernel::release::{Release, ReleaseProblem};
use crate::kernel::repository::{Archive, Repository};

/// A suite whose Release expired: refused, but its (stale, authentic)
/// kernels are kept to tell whether it could change an answer.
#[derive(Debug, Clone)]
pub struct Expired {
    pub suite: String,
    /// The refusal, worded for the user.
    pub reason: String,
    pub stale: Vec<Stanza>,
}

/// How one suite's read ended.
pub(super) enum SuiteOutcome {
    Read(Vec<Stanza>),
    /// The suite does not exist there (no InRelease, no Release).
    Missing,
    /// Not reachable and not cached.
    Unavailable(String),
    Expired(Expired),
    /// Refused: bad signature, index not matching its Release, not an index.
    Refused(KernelError),
}

/// What natvet keeps of one component's Packages index
/// (`index/REPO/SUITE/COMPONENT.kernels.json`), tied to the index's hash.
#[derive(serde::Serialize, serde::Deserialize)]
struct Parsed {
    /// [`PARSED_FORMAT`]; a sidecar of another format is re-read.
    format: u32,
    /// SHA-256 of the index file it was parsed from (from the signed Release).
    sha256: String,
    prefixes: Vec<String>,
    stanzas: Vec<Stanza>,
}

const PARSED_FORMAT: u32 = 3;

/// Where one suite of a repository is cached.
fn suite_dir(cache: &Cache, repo: &Repository, suite: &str) -> Result<PathBuf, KernelError> {
    cache.dir(&format!("index/{}/{suite}", repo.name))
}

/// The Packages indexes a Release may list for a component, preferred first.
fn index_names(component: &str) -> [String; 3] {
    let base = format!("{component}/binary-amd64/Packages");
    [format!("{base}.xz"), format!("{base}.gz"), base]
}

/// Decompress an index by its name and parse it.
fn parse_index(
    bytes: &[u8],
    name: &str,
    suite: &str,
    prefixes: &[String],
) -> Result<Vec<Stanza>, String> {
    let reader: Box<dyn Read + '_> = if name.ends_with(".xz") {
        Box::new(xz2::read::XzDecoder::new_multi_decoder(bytes))
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let mut text = Vec::new();
    reader
        .take(2 << 30)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot be decompressed ({e})"))?;
    looks_like_packages(&text)?;
    parse_packages(BufReader::new(&text[..]), suite, prefixes).map_err(|e| e.to_string())
}

/// An index must read as Packages stanzas: an HTML error page, a login
/// form or a binary blob is not one (what unsigned repositories get checked by).
pub fn looks_like_packages(text: &[u8]) -> Result<(), String> {
    let head = String::from_utf8_lossy(&text[..text.len().min(4096)]).to_ascii_lowercase();
    if head.trim_start().starts_with('<') || head.contains("<html") || head.contains("<!doctype") {
        return Err("is an HTML page, not a Packages index".into());
    }
    if std::str::from_utf8(text).is_err() {
        return Err("is not text".into());
    }
    if !text.is_empty() && !head.starts_with("package:") {
        return Err("does not start with a Package: stanza".into());
    }
    Ok(())
}

/// Read one suite of one archive: its signed Release, then each
/// component's Packages index as that Release lists it.
pub(super) fn read_suite(
    repo: &Repository,
    archive: &Archive,
    suite: &str,
    cache: &Cache,
    notes: &Mutex<Vec<String>>,
) -> SuiteOutcome {
    // A keyring that is not there fails before anything is asked of the network.
    if let Some(k) = missing_keyring(repo, archive) {
        return SuiteOutcome::Refused(KernelError::from(ArchiveError::Signature {
            repository: repo.name.clone(),
            suite: suite.to_string(),
            uri: archive.uri.clone(),
            source: SignatureError::NoKeyring {
                path: k,
                hint: "install the package that ships it (ubuntu-keyring for Ubuntu's), or give keyring=PATH".into(),
            },
        }));
    }
    let dir = match suite_dir(cache, repo, suite) {
        Ok(d) => d,
        Err(e) => return SuiteOutcome::Refused(e),
    };
    let SignedRelease { text, trust, keep } =
        match signed_release(repo, archive, suite, &dir, notes) {
            Ok(Some(t)) => t,
            Ok(None) => return SuiteOutcome::Missing,
            Err(ReleaseFailure::Unavailable(why)) => return SuiteOutcome::Unavailable(why),
            Err(ReleaseFailure::Refused(e)) => return SuiteOutcome::Refused(e),
        };
    let release_err = |problem: ReleaseProblem| {
        let hint = match &problem {
            ReleaseProblem::Expired { .. } => " (use another mirror, or for a snapshot mirror set `Check-Valid-Until: no` in its apt source / check_valid_until = false for a [[repository]])".to_string(),
            _ => String::new(),
        };
        ArchiveError::Release {
            repository: repo.name.clone(),
            suite: suite.to_string(),
            uri: archive.uri.clone(),
            problem,
            hint,
        }
    };
    let release = match Release::parse(&text) {
        Ok(r) => r,
        Err(p) => return SuiteOutcome::Refused(release_err(p).into()),
    };
    let expiry = match release.check(suite, chrono::Utc::now(), archive.check_valid_until) {
        Ok(()) => None,
        Err(p @ ReleaseProblem::Expired { .. }) => Some(release_err(p).to_string()),
        Err(p) => return SuiteOutcome::Refused(release_err(p).into()),
    };
    let prefixes = repo.naming.prefixes();
    let mut stanzas = Vec::new();
    for component in &archive.components {
        match read_component(repo, archive, suite, component, &release, &dir, &prefixes) {
            Ok(mut st) => stanzas.append(&mut st),
            Err(o) => return o,
        }
    }
    let mut valid = Vec::with_capacity(stanzas.len());
    for mut s in stanzas {
        match s.validate() {
            Ok(()) => {
                s.uri = archive.uri.clone();
                s.repository = repo.name.clone();
                s.trust = trust.clone();
                valid.push(s);
            }
            Err(why) => lock_notes(notes).push(format!(
                "{} {suite}: ignoring a malformed stanza: {why}",
                repo.name
            )),
        }
    }
    if let Err(e) = keep_release(&dir, keep) {
        return SuiteOutcome::Refused(e);
    }
    match expiry {
        None => SuiteOutcome::Read(valid),
        Some(reason) => SuiteOutcome::Expired(Expired {
            suite: suite.to_string(),
            reason,
            stale: valid,
        }),
    }
}

fn read_component(
    repo: &Repository,
    archive: &Archive,
    suite: &str,
    component: &str,
    release: &Release,
    dir: &Path,
    prefixes: &[String],
) -> Result<Vec<Stanza>, SuiteOutcome> {
    let bad = |what: String, reason: String| {
        SuiteOutcome::Refused(KernelError::from(ArchiveError::BadIndex {
            repository: repo.name.clone(),
            suite: suite.to_string(),
            what,
            reason,
        }))
    };
    let names = index_names(component);
    let listed = names.iter().find_map(|n| release.entry(n).map(|e| (n, e)));
    let sidecar = dir.join(format!("{component}.kernels.json"));
    let Some((name, entry)) = listed else {
        if repo.allow_unsigned && release.sha256.is_empty() {
            // An unsigned repository without hashes: the index is checked
            // for being one before it is used, and never cached.
            for n in &names {
                let url = format!("{}/dists/{suite}/{n}", archive.uri);
                match get(&url, 2 << 30) {
                    Ok(Got::Body(b)) => {
                        return parse_index(&b, n, suite, prefixes).map_err(|r| bad(url, r))
                    }
                    Ok(Got::NotFound) => continue,
                    Ok(Got::TooLarge) => return Err(bad(url, "is larger than 2 GiB".into())),
                    Err(e) => return Err(SuiteOutcome::Unavailable(format!("{url}: {e}"))),
                }
            }
        }
        // The suite has no amd64 packages in this component.
        return Ok(vec![]);
    };
    // The parsed index of this very file, if natvet read it before.
    if let Some(p) = fs::read(&sidecar)
        .ok()
        .and_then(|b| serde_json::from_slice::<Parsed>(&b).ok())
    {
        if p.format == PARSED_FORMAT && p.sha256 == entry.sha256 && p.prefixes == prefixes {
            return Ok(p.stanzas);
        }
    }
    let plain = format!("{}/dists/{suite}/{name}", archive.uri);
    let by_hash = format!(
        "{}/dists/{suite}/{}/by-hash/SHA256/{}",
        archive.uri,
        name.rsplit_once('/').map(|(d, _)| d).unwrap_or(""),
        entry.sha256
    );
    let urls: Vec<&String> = if release.by_hash {
        vec![&by_hash, &plain]
    } else {
        vec![&plain]
    };
    let mut body = None;
    for url in urls {
        match get(url, entry.size.max(1) + 1) {
            Ok(Got::Body(b)) => {
                body = Some((url.clone(), b));
                break;
            }
            Ok(Got::NotFound) => continue,
            Ok(Got::TooLarge) => {
                return Err(bad(
                    url.clone(),
                    format!(
                        "does not match the signed Release: it is larger than the {} bytes the Release lists",
                        entry.size
                    ),
                ))
            }
            Err(e) => return Err(SuiteOutcome::Unavailable(format!("{url}: {e}"))),
        }
    }
    let Some((url, bytes)) = body else {
        return Err(bad(
            plain,
            "is listed in the Release but not there (404)".into(),
        ));
    };
    let got = hex::encode(Sha256::digest(&bytes));
    if bytes.len() as u64 != entry.size || got != entry.sha256 {
        let looks = looks_like_packages(&bytes)
            .err()
            .map(|r| format!(" (it {r})"))
            .unwrap_or_default();
        return Err(bad(
            url,
            format!(
                "does not match the signed Release: {} bytes with sha256 {got}, the Release says {} bytes with sha256 {}{looks}",
                bytes.len(),
                entry.size,
                entry.sha256
            ),
        ));
    }
    let stanzas = parse_index(&bytes, name, suite, prefixes).map_err(|r| bad(url.clone(), r))?;
    // Only a verified index is cached; the parsed kernels beside it.
    let keep = |p: &Path, b: &[u8]| cache::write_atomic(p, b).map_err(SuiteOutcome::Refused);
    keep(&dir.join(name.replace('/', "_")), &bytes)?;
    let parsed = Parsed {
        format: PARSED_FORMAT,
        sha256: entry.sha256.clone(),
        prefixes: prefixes.to_vec(),
        stanzas,
    };
    if let Ok(json) = serde_json::to_vec(&parsed) {
        keep(&sidecar, &json)?;
    }
    Ok(parsed.stanzas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_not_an_index() {
        assert!(looks_like_packages(b"<!DOCTYPE html><html><body>502</body></html>").is_err());
        assert!(looks_like_packages(b"\n  <html>").is_err());
        assert!(looks_like_packages(b"Package: a\nVersion: 1\n").is_ok());
        assert!(looks_like_packages(b"").is_ok());
        assert!(looks_like_packages(b"hello\n").is_err());
        assert!(parse_index(b"<html>oops</html>", "main/binary-amd64/Packages", "s", &[]).is_err());
        assert!(parse_index(b"<html>", "main/binary-amd64/Packages.xz", "s", &[]).is_err());
    }
}

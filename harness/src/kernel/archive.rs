//! A client of Debian-format apt repositories (Debian's archive and its
//! security archive, Ubuntu's, a company's): each suite's signed Release
//! (`InRelease`, or `Release` + `Release.gpg`) checked with gpgv against
//! the repository's keys ([`openpgp`](super::openpgp)), its `Valid-Until`
//! and suite name checked ([`release`](super::release)), each Packages
//! index checked against the size and SHA-256 the signed Release lists
//! before it is parsed or cached, every kernel stanza's fields validated
//! before they reach a URL, a path or a command, and each `.deb` checked
//! against the SHA-256 and size of its index entry. Which packages make a
//! kernel, and which kernel a spec names, is the sources' business
//! (`sources/apt.rs`).
//!
//! Nothing is cached before it is verified: an HTML error page, a
//! truncated or tampered index is refused, never stored. A suite whose
//! Release is badly signed or whose index does not match it makes the
//! repository's index an error (exit 3), never a silent fallback; an
//! expired one is kept aside (its stale but authentic content tells
//! whether it could change an answer, see `Index::expired`).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::cache::{self, Cache};
use super::error::{ErrorClass, KernelError, SourceError};
use super::openpgp::{self, SignatureError};
use super::release::{Release, ReleaseProblem};
use super::repository::{Archive, Repository};
use super::{PackageInfo, Trust};

/// How long a downloaded index is used before it is fetched again.
pub const INDEX_MAX_AGE: Duration = Duration::from_secs(6 * 3600);

/// What went wrong talking to a repository.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; set NATVET_DEBIAN_MIRROR=http://MIRROR/debian")]
    NoMirror,

    #[error("download of {what} failed: {reason}; check the network / mirror (NATVET_DEBIAN_MIRROR, or the repository's URI) and retry")]
    Download { what: String, reason: String },

    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {actual}; the file is not the one the signed index names (a mirror mid-sync, or tampering): retry later or use another mirror")]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },

    #[error("{repository} {suite} ({uri}): {source}")]
    Signature {
        repository: String,
        suite: String,
        uri: String,
        #[source]
        source: SignatureError,
    },

    #[error("{repository} {suite} ({uri}): {problem}; natvet will not pick kernels from it{hint}")]
    Release {
        repository: String,
        suite: String,
        uri: String,
        problem: ReleaseProblem,
        hint: String,
    },

    #[error("{repository} {suite}: {what} {reason}; natvet refuses the index (nothing was cached): retry later, or use another mirror")]
    BadIndex {
        repository: String,
        suite: String,
        what: String,
        reason: String,
    },

    #[error("interrupted while downloading {what}; the partial file was removed")]
    Interrupted { what: String },
}

impl SourceError for ArchiveError {
    fn class(&self) -> ErrorClass {
        match self {
            ArchiveError::NoMirror => ErrorClass::BadInput,
            ArchiveError::Signature { source, .. } => source.class(),
            ArchiveError::Download { .. }
            | ArchiveError::Checksum { .. }
            | ArchiveError::Release { .. }
            | ArchiveError::BadIndex { .. }
            | ArchiveError::Interrupted { .. } => ErrorClass::Infrastructure,
        }
    }
}

// ---------------------------------------------------------------- interrupts

static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Stop every download of this process at its next chunk (SIGINT/SIGTERM):
/// the partial file is removed, the download fails as interrupted.
pub fn cancel_downloads() {
    CANCELLED.store(true, Ordering::SeqCst);
}

fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

// ---------------------------------------------------------------- index

/// One kernel-related stanza of a Packages index.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stanza {
    pub package: String,
    pub version: String,
    pub filename: String,
    pub sha256: String,
    pub size: u64,
    pub depends: String,
    pub suite: String,
    /// The archive's URI (Debian's security suites live in an archive of
    /// their own); set when the index is loaded.
    #[serde(skip)]
    pub uri: String,
    /// The repository's name; set when the index is loaded.
    #[serde(skip)]
    pub repository: String,
    /// Who vouched for the index that lists it; set when the index is loaded.
    #[serde(skip)]
    pub trust: Trust,
}

impl Stanza {
    pub fn info(&self) -> PackageInfo {
        PackageInfo {
            name: self.package.clone(),
            version: self.version.clone(),
            suite: self.suite.clone(),
            sha256: self.sha256.clone(),
            filename: self.filename.clone(),
            repository: self.repository.clone(),
            trust: self.trust.clone(),
        }
    }

    /// Package names this stanza depends on (first alternative of each group).
    pub fn depends_names(&self) -> Vec<String> {
        self.depends
            .split(',')
            .filter_map(|g| g.split('|').next())
            .filter_map(|alt| alt.split_whitespace().next())
            .map(|n| n.split(':').next().unwrap_or(n).to_string())
            .collect()
    }

    /// The file name of its `.deb` (the last part of `Filename`).
    pub fn deb_name(&self) -> &str {
        self.filename.rsplit('/').next().unwrap_or(&self.filename)
    }

    /// Is every field natvet uses well-formed? Package and Version end up
    /// in cache paths and messages, Filename in a URL and a file name,
    /// SHA256 and Size decide whether a download is the right file.
    pub fn validate(&self) -> Result<(), String> {
        let p = &self.package;
        if !valid_package_name(p) {
            return Err(format!("package name `{p}` is not a Debian package name"));
        }
        if !valid_version(&self.version) {
            return Err(format!(
                "{p}: version `{}` is not a Debian version",
                self.version
            ));
        }
        if !valid_filename(&self.filename) {
            return Err(format!(
                "{p}: Filename `{}` is not a relative pool path to a .deb",
                self.filename
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{p}: SHA256 `{}` is not a SHA-256", self.sha256));
        }
        if self.size == 0 {
            return Err(format!("{p}: no Size"));
        }
        Ok(())
    }
}

/// Debian policy 5.6.1: lower-case letters, digits, `+ - .`, two or more,
/// starting with a letter or digit.
pub fn valid_package_name(p: &str) -> bool {
    p.len() >= 2
        && p.len() <= 200
        && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

/// Debian policy 5.6.12: `[epoch:]upstream[-revision]`, of letters,
/// digits and `. + ~ - :`, upstream starting with a digit.
pub fn valid_version(v: &str) -> bool {
    let upstream = v.split_once(':').map(|(_, u)| u).unwrap_or(v);
    !v.is_empty()
        && v.len() <= 200
        && upstream.starts_with(|c: char| c.is_ascii_digit())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+~-:".contains(&b))
}

/// A relative path of plain parts (no `..`, no absolute path, no odd
/// characters) to a `.deb`.
pub fn valid_filename(f: &str) -> bool {
    f.len() <= 1000
        && f.ends_with(".deb")
        && !f.starts_with('/')
        && f.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+~:-%".contains(&b))
        })
}

fn kept(pkg: &str, prefixes: &[String]) -> bool {
    pkg.starts_with("linux-source-") || prefixes.iter().any(|p| pkg.starts_with(p.as_str()))
}

/// Parse a Packages file, keeping the stanzas whose package names start
/// with one of `prefixes` (and `linux-source-`).
pub fn parse_packages(
    r: impl BufRead,
    suite: &str,
    prefixes: &[String],
) -> std::io::Result<Vec<Stanza>> {
    let mut out = Vec::new();
    let mut cur: Option<Stanza> = None;
    let mut skipping = false;
    let finish = |cur: &mut Option<Stanza>, out: &mut Vec<Stanza>| {
        if let Some(s) = cur.take() {
            if !s.filename.is_empty() && !s.version.is_empty() {
                out.push(s);
            }
        }
    };
    for line in r.lines() {
        let line = line?;
        if line.is_empty() {
            finish(&mut cur, &mut out);
            skipping = false;
            continue;
        }
        if skipping || line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k == "Package" {
            finish(&mut cur, &mut out);
            if kept(v, prefixes) {
                cur = Some(Stanza {
                    package: v.to_string(),
                    suite: suite.to_string(),
                    ..Default::default()
                });
            } else {
                skipping = true;
            }
            continue;
        }
        let Some(s) = cur.as_mut() else { continue };
        match k {
            "Version" => s.version = v.to_string(),
            "Filename" => s.filename = v.to_string(),
            "SHA256" => s.sha256 = v.to_ascii_lowercase(),
            "Size" => s.size = v.parse().unwrap_or(0),
            "Depends" => s.depends = v.to_string(),
            _ => {}
        }
    }
    finish(&mut cur, &mut out);
    Ok(out)
}

/// A suite whose Release expired: refused, but its (stale, authentic)
/// kernels are kept to tell whether it could change an answer.
#[derive(Debug, Clone)]
pub struct Expired {
    pub suite: String,
    /// The refusal, worded for the user.
    pub reason: String,
    pub stale: Vec<Stanza>,
}

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

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(20))
        .timeout_read(Duration::from_secs(60))
        .user_agent(concat!("natvet/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// What a GET brought.
enum Got {
    Body(Vec<u8>),
    NotFound,
    /// More than the limit: not the file asked for.
    TooLarge,
}

/// GET `url` into memory (at most `limit` bytes), stopping when interrupted.
fn get(url: &str, limit: u64) -> Result<Got, String> {
    let resp = match agent().get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(404 | 410, _)) => return Ok(Got::NotFound),
        Err(e) => return Err(e.to_string()),
    };
    let mut reader = resp.into_reader().take(limit + 1);
    let mut body = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        if cancelled() {
            return Err("interrupted".into());
        }
        let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    if body.len() as u64 > limit {
        return Ok(Got::TooLarge);
    }
    Ok(Got::Body(body))
}

/// How one suite's read ended.
enum SuiteOutcome {
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

/// A cached file's age, if it exists.
fn age(path: &Path) -> Option<Duration> {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
}

/// A suite's Release as verified, and the files to cache once the suite's
/// indexes verified too.
struct SignedRelease {
    text: String,
    trust: Trust,
    keep: Vec<(PathBuf, Vec<u8>)>,
}

/// The suite's Release text and who signed it: fetched when the cached
/// copy is older than [`INDEX_MAX_AGE`] (or missing), verified every time.
fn signed_release(
    repo: &Repository,
    archive: &Archive,
    suite: &str,
    dir: &Path,
    notes: &Mutex<Vec<String>>,
) -> Result<Option<SignedRelease>, SuiteOutcome> {
    let base = format!("{}/dists/{suite}", archive.uri);
    let sig_err = |source: SignatureError| {
        SuiteOutcome::Refused(KernelError::from(ArchiveError::Signature {
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
            Err(why) => return Err(SuiteOutcome::Unavailable(format!("{base}: {why}"))),
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
                        SuiteOutcome::Unavailable(format!("{}: {e}", release.display()))
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
fn keep_release(dir: &Path, keep: Vec<(PathBuf, Vec<u8>)>) -> Result<(), KernelError> {
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

fn lock_notes<T>(notes: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

/// The first keyring of `archive` that does not exist, when signatures are checked.
pub fn missing_keyring(repo: &Repository, archive: &Archive) -> Option<PathBuf> {
    if repo.allow_unsigned {
        return None;
    }
    archive.keys.keyrings.iter().find(|k| !k.is_file()).cloned()
}

/// Read one suite of one archive: its signed Release, then each
/// component's Packages index as that Release lists it.
fn read_suite(
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
            Err(o) => return o,
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

// ---------------------------------------------------------------- download

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
pub(crate) mod tests {
    use super::*;
    use crate::kernel::openpgp::tests as pgp;
    use crate::kernel::openpgp::Keys;
    use crate::kernel::repository::Naming;

    /// A Packages file with kernels of several kinds (and one other package).
    pub(crate) const SAMPLE: &str = "\
Package: linux-image-6.1.0-50-amd64
Source: linux-signed-amd64 (6.1.170+1)
Version: 6.1.170-1
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Description: Linux 6.1 for 64-bit PCs (signed)
 The Linux kernel 6.1 and modules for use on PCs with AMD64, Intel 64 or
 VIA Nano processors.
Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-50-amd64_6.1.170-1_amd64.deb
Size: 69000000
SHA256: AAAA

Package: zsh
Version: 5.9-4
Filename: pool/main/z/zsh/zsh_5.9-4_amd64.deb
SHA256: ffff

Package: linux-image-6.1.0-49-amd64
Version: 6.1.158-1
Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-49-amd64_6.1.158-1_amd64.deb
SHA256: bbbb

Package: linux-image-6.1.0-50-cloud-amd64
Version: 6.1.171-1
Filename: pool/x.deb
SHA256: cccc

Package: linux-image-6.1.0-50-amd64-dbg
Version: 6.1.172-1
Filename: pool/y.deb
SHA256: dddd

Package: linux-image-6.12.9-amd64
Version: 6.12.9-1
Filename: pool/z.deb
SHA256: eeee
";

    pub(crate) fn prefixes() -> Vec<String> {
        Naming::debian().prefixes()
    }

    #[test]
    fn parses_only_kernel_stanzas() {
        let st = parse_packages(SAMPLE.as_bytes(), "bookworm", &prefixes()).unwrap();
        let names: Vec<_> = st.iter().map(|s| s.package.as_str()).collect();
        assert_eq!(
            names,
            [
                "linux-image-6.1.0-50-amd64",
                "linux-image-6.1.0-49-amd64",
                "linux-image-6.1.0-50-cloud-amd64",
                "linux-image-6.1.0-50-amd64-dbg",
                "linux-image-6.12.9-amd64"
            ]
        );
        assert_eq!(st[0].version, "6.1.170-1");
        assert_eq!(st[0].sha256, "aaaa");
        assert_eq!(st[0].size, 69000000);
        assert_eq!(st[0].suite, "bookworm");
        assert!(st[0].depends.starts_with("kmod, linux-base"));
    }

    #[test]
    fn validates_fields_before_use() {
        let good = Stanza {
            package: "linux-image-6.1.0-57-amd64".into(),
            version: "6.1.192-3".into(),
            filename:
                "pool/main/l/linux-signed-amd64/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb"
                    .into(),
            sha256: "b66d757c30bf6106f190173c57fa867d2a4936c01f001baa812a1373ae425bb9".into(),
            size: 70400000,
            ..Default::default()
        };
        assert_eq!(good.validate(), Ok(()));
        let with = |f: &dyn Fn(&mut Stanza)| {
            let mut s = good.clone();
            f(&mut s);
            s.validate()
        };
        assert!(with(&|s| s.version = "6.1/../../x".into()).is_err());
        assert!(with(&|s| s.version = "$(reboot)".into()).is_err());
        assert!(with(&|s| s.package = "linux-image-../x".into()).is_err());
        assert!(with(&|s| s.package = "Linux".into()).is_err());
        assert!(with(&|s| s.filename = "../../etc/passwd.deb".into()).is_err());
        assert!(with(&|s| s.filename = "/abs/x.deb".into()).is_err());
        assert!(with(&|s| s.filename = "pool/x.tar".into()).is_err());
        assert!(with(&|s| s.filename = "pool/a b.deb".into()).is_err());
        assert!(with(&|s| s.sha256 = "aaaa".into()).is_err());
        assert!(with(&|s| s.size = 0).is_err());
        assert!(valid_version("1:2.0~rc1+dfsg-1ubuntu0.1"));
        assert!(!valid_version("x1.0"));
    }

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

    #[test]
    fn clear_text_of_an_unchecked_message() {
        let t = clear_text(pgp::IN_RELEASE);
        assert!(t.starts_with("Origin: natvet-test\n"), "{t}");
        assert!(!t.contains("PGP"), "{t}");
    }

    // ------------------------------------------------------------ a repository over HTTP

    /// A tiny HTTP server on loopback serving `files` (path -> body; 404
    /// for anything else), counting the requests.
    pub(crate) struct Server {
        pub base: String,
        pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    pub(crate) fn serve(files: Vec<(String, Vec<u8>)>) -> Server {
        use std::io::BufRead;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                loop {
                    let mut l = String::new();
                    if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let reply = match files.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(body);
                        r
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = conn.write_all(&reply);
            }
        });
        Server { base, hits }
    }

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

    const PACKAGES_XZ: &[u8] = include_bytes!("testdata/Packages.xz");

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
}

//! A small client of Debian's archive: mirror discovery, the per-suite
//! `Packages.xz` index (cached) and verified `.deb` downloads. Which
//! packages make a kernel, and which kernel a `debian:` spec names, is the
//! `debian:` source's business (`sources/debian.rs`).

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::cache::{self, Cache};
use super::error::{ErrorClass, KernelError, SourceError};
use super::PackageInfo;

/// Suites searched, oldest first.
pub const SUITES: &[&str] = &[
    "bullseye",
    "bookworm",
    "bookworm-backports",
    "trixie",
    "trixie-backports",
    "forky",
    "sid",
    "experimental",
];

/// How long a downloaded index is used before it is fetched again.
pub const INDEX_MAX_AGE: Duration = Duration::from_secs(6 * 3600);

/// What went wrong talking to the archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list; set NATVET_DEBIAN_MIRROR=http://MIRROR/debian")]
    NoMirror,

    #[error("download of {what} failed: {reason}; check the network / mirror (NATVET_DEBIAN_MIRROR) and retry")]
    Download { what: String, reason: String },

    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {actual}; the mirror may be mid-sync, retry later or set NATVET_DEBIAN_MIRROR to another mirror")]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },
}

impl SourceError for ArchiveError {
    fn class(&self) -> ErrorClass {
        match self {
            ArchiveError::NoMirror => ErrorClass::BadInput,
            ArchiveError::Download { .. } | ArchiveError::Checksum { .. } => {
                ErrorClass::Infrastructure
            }
        }
    }
}

// ---------------------------------------------------------------- mirror

/// The archive's base URI: `$NATVET_DEBIAN_MIRROR`, else the host's apt
/// configuration (deb822 `debian.sources`, then one-line `sources.list`).
pub fn mirror() -> Result<String, KernelError> {
    if let Some(m) = std::env::var("NATVET_DEBIAN_MIRROR")
        .ok()
        .filter(|m| !m.trim().is_empty())
    {
        return Ok(m.trim().trim_end_matches('/').to_string());
    }
    let deb822 = Path::new("/etc/apt/sources.list.d/debian.sources");
    if let Ok(text) = fs::read_to_string(deb822) {
        if let Some(m) = mirror_from_deb822(&text) {
            return Ok(m);
        }
    }
    let mut one_line = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "list"))
            .collect();
        more.sort();
        one_line.extend(more);
    }
    for p in one_line {
        if let Ok(text) = fs::read_to_string(&p) {
            if let Some(m) = mirror_from_one_line(&text) {
                return Ok(m);
            }
        }
    }
    Err(ArchiveError::NoMirror.into())
}

fn usable_uri(uri: &str) -> Option<String> {
    let uri = uri.trim().trim_end_matches('/');
    let ok_scheme = uri.starts_with("http://") || uri.starts_with("https://");
    (ok_scheme && !uri.ends_with("-security")).then(|| uri.to_string())
}

/// First main-archive URI in a deb822 sources file.
pub fn mirror_from_deb822(text: &str) -> Option<String> {
    for para in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in para.lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(fk, _)| fk == k)
                .map(|(_, v)| v.as_str())
        };
        if !get("types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb")) {
            continue;
        }
        if get("enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        let suites = get("suites").unwrap_or("");
        if !suites.is_empty() && suites.split_whitespace().all(|s| s.ends_with("-security")) {
            continue;
        }
        if let Some(u) = get("uris")
            .into_iter()
            .flat_map(str::split_whitespace)
            .find_map(usable_uri)
        {
            return Some(u);
        }
    }
    None
}

/// First main-archive URI in one-line `deb [opts] URI suite comp...` format.
pub fn mirror_from_one_line(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut toks = line.split_whitespace();
        if toks.next() != Some("deb") {
            continue;
        }
        let mut uri = toks.next()?;
        if uri.starts_with('[') {
            while !uri.ends_with(']') {
                uri = toks.next()?;
            }
            uri = toks.next()?;
        }
        let suite = toks.next().unwrap_or("");
        if suite.ends_with("-security") {
            continue;
        }
        if let Some(u) = usable_uri(uri) {
            return Some(u);
        }
    }
    None
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
}

impl Stanza {
    pub fn info(&self) -> PackageInfo {
        PackageInfo {
            name: self.package.clone(),
            version: self.version.clone(),
            suite: self.suite.clone(),
            sha256: self.sha256.clone(),
            filename: self.filename.clone(),
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
}

fn interesting(pkg: &str) -> bool {
    pkg.starts_with("linux-image-")
        || pkg.starts_with("linux-source-")
        || pkg.starts_with("linux-binary-")
        || pkg.starts_with("linux-modules-")
}

/// Parse a Packages file, keeping only linux-image/-binary/-modules/-source stanzas.
pub fn parse_packages(r: impl BufRead, suite: &str) -> std::io::Result<Vec<Stanza>> {
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
            if interesting(v) {
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

/// All kernel stanzas of all reachable suites.
#[derive(Debug, Default)]
pub struct Index {
    pub stanzas: Vec<Stanza>,
    /// Suites that could not be read at all (network error, no cached copy).
    pub failures: Vec<String>,
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(20))
        .timeout_read(Duration::from_secs(60))
        .user_agent(concat!("natvet/", env!("CARGO_PKG_VERSION")))
        .build()
}

enum Fetched {
    Ok(PathBuf),
    Missing,
}

fn fetch_index(
    mirror: &str,
    suite: &str,
    dir: &Path,
    notes: &std::sync::Mutex<Vec<String>>,
) -> Result<Fetched, String> {
    let path = dir.join(format!("{suite}.Packages.xz"));
    let age = fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    if age.is_some_and(|a| a < INDEX_MAX_AGE) {
        return Ok(Fetched::Ok(path));
    }
    let url = format!("{mirror}/dists/{suite}/main/binary-amd64/Packages.xz");
    let stale = |why: String| {
        if age.is_some() {
            notes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!(
                    "index for {suite}: refresh failed ({why}); using the cached copy"
                ));
            Ok(Fetched::Ok(path.clone()))
        } else {
            Err(format!("{url}: {why}"))
        }
    };
    let resp = match agent().get(&url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(404, _)) => {
            let _ = fs::remove_file(&path);
            return Ok(Fetched::Missing);
        }
        Err(e) => return stale(e.to_string()),
    };
    let mut buf = Vec::new();
    if let Err(e) = resp.into_reader().take(1 << 30).read_to_end(&mut buf) {
        return stale(e.to_string());
    }
    cache::write_atomic(&path, &buf).map_err(|e| e.to_string())?;
    Ok(Fetched::Ok(path))
}

/// Kernel stanzas of a cached `Packages.xz`, parsed once and kept next to it
/// (`SUITE.kernels.json`, tied to the index file's size and mtime).
#[derive(serde::Serialize, serde::Deserialize)]
struct Parsed {
    /// [`PARSED_FORMAT`]; a sidecar of another format (or without one) is re-read.
    format: u32,
    source_len: u64,
    source_mtime_ns: u128,
    stanzas: Vec<Stanza>,
}

/// Bumped when [`interesting`] or [`Stanza`] change (2: linux-source-X.Y).
const PARSED_FORMAT: u32 = 2;

fn read_index(xz: &Path, suite: &str) -> Result<Vec<Stanza>, String> {
    let meta = fs::metadata(xz).map_err(|e| format!("{}: {e}", xz.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let sidecar = xz.with_file_name(format!("{suite}.kernels.json"));
    if let Some(p) = fs::read(&sidecar)
        .ok()
        .and_then(|b| serde_json::from_slice::<Parsed>(&b).ok())
    {
        if p.format == PARSED_FORMAT && p.source_len == meta.len() && p.source_mtime_ns == mtime {
            return Ok(p.stanzas);
        }
    }
    let f = File::open(xz).map_err(|e| format!("{}: {e}", xz.display()))?;
    let dec = xz2::read::XzDecoder::new(BufReader::new(f));
    let stanzas = parse_packages(BufReader::with_capacity(1 << 20, dec), suite)
        .map_err(|e| format!("{}: {e}", xz.display()))?;
    let parsed = Parsed {
        format: PARSED_FORMAT,
        source_len: meta.len(),
        source_mtime_ns: mtime,
        stanzas,
    };
    // Best effort: a missing sidecar only costs time.
    if let Ok(json) = serde_json::to_vec(&parsed) {
        let _ = cache::write_atomic(&sidecar, &json);
    }
    Ok(parsed.stanzas)
}

/// Load (fetching as needed, in parallel) the kernel stanzas of every suite.
pub fn load_index(cache: &Cache, progress: &dyn Fn(&str)) -> Result<Index, KernelError> {
    let mirror = mirror()?;
    let dir = cache.dir("index")?;
    let notes = std::sync::Mutex::new(Vec::new());
    let t0 = Instant::now();
    let results: Vec<(&str, Result<Vec<Stanza>, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = SUITES
            .iter()
            .map(|&suite| {
                let (mirror, dir, notes) = (&mirror, &dir, &notes);
                s.spawn(move || {
                    let r = match fetch_index(mirror, suite, dir, notes)? {
                        Fetched::Missing => return Ok(Vec::new()),
                        Fetched::Ok(p) => p,
                    };
                    read_index(&r, suite)
                })
            })
            .collect();
        SUITES
            .iter()
            .copied()
            .zip(handles.into_iter().map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("index worker panicked".into()))
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
            Ok(mut st) => index.stanzas.append(&mut st),
            Err(e) => {
                progress(&format!("index for {suite} unavailable: {e}"));
                index.failures.push(suite.to_string());
                errors.push(e);
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if secs > 1.0 {
        progress(&format!("read the package indexes in {secs:.1} s"));
    }
    if index.stanzas.is_empty() && !errors.is_empty() {
        return Err(KernelError::from(ArchiveError::Download {
            what: "the Debian package indexes".into(),
            reason: errors.join("; "),
        }));
    }
    Ok(index)
}

// ---------------------------------------------------------------- download

/// Download a package into `CACHE/debs/` (or reuse a verified copy there).
pub fn download(
    cache: &Cache,
    pkg: &Stanza,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, KernelError> {
    let dir = cache.dir("debs")?;
    let base = pkg.filename.rsplit('/').next().unwrap_or(&pkg.filename);
    let dest = dir.join(base);
    if dest.exists() {
        match cache::sha256_file(&dest) {
            Ok(h) if h == pkg.sha256 => return Ok(dest),
            _ => {
                let _ = fs::remove_file(&dest);
            }
        }
    }
    let url = format!("{}/{}", mirror()?, pkg.filename);
    let mut last_err = None;
    for attempt in 1..=2 {
        progress(&format!(
            "downloading {} {} from {} ({:.1} MB){}",
            pkg.package,
            pkg.version,
            pkg.suite,
            pkg.size as f64 / 1e6,
            if attempt > 1 { ", retry" } else { "" }
        ));
        let t0 = Instant::now();
        match download_once(&url, &dir, &dest, pkg) {
            Ok(n) => {
                let secs = t0.elapsed().as_secs_f64();
                progress(&format!(
                    "downloaded {} ({:.1} MB in {:.1} s, {:.1} MB/s)",
                    base,
                    n as f64 / 1e6,
                    secs,
                    n as f64 / 1e6 / secs.max(0.001)
                ));
                return Ok(dest);
            }
            Err(e) => {
                progress(&format!("download of {base} failed: {e}"));
                last_err = Some(e);
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
        .prefix(".partial-")
        .tempfile_in(dir)
        .map_err(|e| KernelError::io(format!("creating a file in {}", dir.display()), e))?;
    let mut reader = resp.into_reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
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
    if got != pkg.sha256 {
        // The temp file is deleted when dropped.
        return Err(KernelError::from(ArchiveError::Checksum {
            file: url.to_string(),
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

    #[test]
    fn parses_only_kernel_stanzas() {
        let st = parse_packages(SAMPLE.as_bytes(), "bookworm").unwrap();
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
    fn mirror_formats() {
        let deb822 = "\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
";
        assert_eq!(
            mirror_from_deb822(deb822).as_deref(),
            Some("http://mirror.example/debian")
        );
        let sec_first = "Types: deb\nURIs: https://m.example/debian-security\nSuites: bookworm-security\n\n\
                         Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n\
                         Types: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: bookworm\n\n\
                         Types: deb\nURIs: https://m.example/debian\nSuites: bookworm\n";
        assert_eq!(
            mirror_from_deb822(sec_first).as_deref(),
            Some("https://m.example/debian")
        );
        let one = "# comment\ndeb http://sec.example/debian-security bookworm-security main\n\
                   deb-src http://src.example/debian bookworm main\n\
                   deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_one_line(one).as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(mirror_from_one_line("deb cdrom:[x]/ bookworm main\n"), None);
    }
}

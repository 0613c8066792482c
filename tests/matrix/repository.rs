//! Kernels from an apt repository of the test's own: built with Debian's
//! tools (`apt-ftparchive`, `gpg`) from real kernel packages already in
//! natvet's cache, signed with a key made for the test, served over HTTP
//! by a small server the test starts on loopback. natvet must resolve and
//! boot from it, and refuse (exit 3, with the reason) a tampered Packages
//! index, a bad signature, a package whose hash differs from its index, and
//! an unsigned repository unless --allow-unsigned; SIGINT must stop a
//! download cleanly, and what a SIGKILL mid-download left must go with
//! the next run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use libtest_mimic::{Failed, Trial};

use super::{explain, out_dir, repo, Run, CONTROL_KERNEL};

/// The repository, built once for every test here.
struct Repo {
    /// `http://127.0.0.1:PORT`; `/good/`, `/tampered/`, ... are repository roots.
    base: String,
    keyring: PathBuf,
    /// The kernel the repository holds, as `uname -r` names it.
    release: String,
    line: String,
}

static REPO: OnceLock<Result<Repo, String>> = OnceLock::new();

fn sh(cmd: &mut Command, what: &str) -> Result<Vec<u8>, String> {
    let out = cmd.output().map_err(|e| {
        format!("{what}: cannot run it ({e}); `make test` installs apt-utils and gnupg")
    })?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

fn natvet_cache() -> PathBuf {
    match std::env::var_os("NATVET_CACHE").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/natvet"),
    }
}

/// A single-package kernel .deb in natvet's cache (the control kernel's,
/// fetched first if the cache has none).
fn cached_kernel_deb() -> Result<(PathBuf, String), String> {
    let find = || -> Option<(PathBuf, String)> {
        let debs = natvet_cache().join("debs");
        std::fs::read_dir(&debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.to_string();
                let release = name
                    .strip_prefix("linux-image-")?
                    .split('_')
                    .next()?
                    .to_string();
                let size = std::fs::metadata(&p).ok()?.len();
                // A whole kernel (not a metapackage over linux-binary-*).
                (release.ends_with("-amd64") && size > 20_000_000).then_some((size, p, release))
            })
            .min_by_key(|(size, _, _)| *size)
            .map(|(_, p, r)| (p, r))
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    sh(
        Command::new(env!("CARGO_BIN_EXE_natvet"))
            .args(["kernels", "fetch", CONTROL_KERNEL])
            .current_dir(repo()),
        "natvet kernels fetch",
    )?;
    find().ok_or_else(|| "no kernel package in natvet's cache even after fetching one".into())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// `dists/stable/` of a repository root from its Packages text: the
/// index (plain and xz), its Release, and InRelease signed with `gpg`.
fn dists(root: &Path, packages: &[u8], gnupg: &Path, sign: bool) -> Result<(), String> {
    let suite = root.join("dists/stable");
    let bin = suite.join("main/binary-amd64");
    write(&bin.join("Packages"), packages)?;
    sh(
        Command::new("xz")
            .args(["-k", "-f"])
            .arg(bin.join("Packages")),
        "xz",
    )?;
    let release = sh(
        Command::new("apt-ftparchive")
            .args([
                "-o",
                "APT::FTPArchive::Release::Suite=stable",
                "-o",
                "APT::FTPArchive::Release::Codename=stable",
                "-o",
                "APT::FTPArchive::Release::Architectures=amd64",
                "-o",
                "APT::FTPArchive::Release::Components=main",
                "release",
                ".",
            ])
            .current_dir(&suite),
        "apt-ftparchive release",
    )?;
    write(&suite.join("Release"), &release)?;
    if sign {
        sh(
            Command::new("gpg")
                .env("GNUPGHOME", gnupg)
                .args(["--batch", "--yes", "--clearsign", "-o"])
                .arg(suite.join("InRelease"))
                .arg(suite.join("Release")),
            "gpg --clearsign",
        )?;
    }
    Ok(())
}

fn build() -> Result<Repo, String> {
    let (deb, release) = cached_kernel_deb()?;
    let dir = out_dir("repository-served");
    let _ = std::fs::remove_dir_all(&dir);
    // gpg's agent socket lives in its home: keep the path short.
    let home = tempfile::Builder::new()
        .prefix("natvet-gpg-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let gnupg = home.path().to_path_buf();
    sh(
        Command::new("gpg").env("GNUPGHOME", &gnupg).args([
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "natvet test repository <test@natvet.invalid>",
            "ed25519",
            "sign",
            "never",
        ]),
        "gpg --quick-gen-key",
    )?;
    let keyring = dir.join("acme.gpg");
    let key = sh(
        Command::new("gpg")
            .env("GNUPGHOME", &gnupg)
            .args(["--batch", "--export"]),
        "gpg --export",
    )?;
    write(&keyring, &key)?;

    // The good repository: the package in its pool (a link to the cache's copy).
    let good = dir.join("www/good");
    let pool = good.join("pool/main");
    std::fs::create_dir_all(&pool).map_err(|e| e.to_string())?;
    let name = deb.file_name().ok_or("no file name")?;
    std::os::unix::fs::symlink(&deb, pool.join(name)).map_err(|e| e.to_string())?;
    let packages = sh(
        Command::new("apt-ftparchive")
            .args(["packages", "pool"])
            .current_dir(&good),
        "apt-ftparchive packages",
    )?;
    // apt-ftparchive may write where the link points; the pool path is what a client asks for.
    let packages: Vec<u8> = String::from_utf8_lossy(&packages)
        .lines()
        .map(|l| match l.strip_prefix("Filename: ") {
            Some(f) => format!("Filename: pool/main/{}", f.rsplit('/').next().unwrap_or(f)),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes();
    let mut packages = packages;
    packages.push(b'\n');
    dists(&good, &packages, &gnupg, true)?;

    // The others share its pool.
    let variant = |name: &str| -> Result<PathBuf, String> {
        let root = dir.join("www").join(name);
        std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink("../good/pool", root.join("pool")).map_err(|e| e.to_string())?;
        Ok(root)
    };
    let text = String::from_utf8_lossy(&packages).into_owned();
    // A Packages index changed after its Release was signed.
    let tampered = variant("tampered")?;
    dists(&tampered, &packages, &gnupg, true)?;
    let altered = text.replacen("Version: ", "Version: 99:", 1);
    let bin = tampered.join("dists/stable/main/binary-amd64");
    write(&bin.join("Packages"), altered.as_bytes())?;
    sh(
        Command::new("xz")
            .args(["-k", "-f"])
            .arg(bin.join("Packages")),
        "xz",
    )?;
    // A Release changed after it was signed.
    let badsig = variant("badsig")?;
    dists(&badsig, &packages, &gnupg, true)?;
    let inrelease = badsig.join("dists/stable/InRelease");
    let signed = std::fs::read_to_string(&inrelease).map_err(|e| e.to_string())?;
    write(
        &inrelease,
        signed
            .replacen("Suite: stable", "Suite: stab1e", 1)
            .as_bytes(),
    )?;
    // A package whose hash differs from its (signed) index entry.
    let badhash = variant("badhash")?;
    let wrong: String = text
        .lines()
        .map(|l| match l.strip_prefix("SHA256: ") {
            Some(_) => format!("SHA256: {}", "0".repeat(64)),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    dists(&badhash, wrong.as_bytes(), &gnupg, true)?;
    // No signature at all.
    let unsigned = variant("unsigned")?;
    dists(&unsigned, &packages, &gnupg, false)?;

    // The agent gpg started for signing is not needed any more.
    let _ = Command::new("gpgconf")
        .env("GNUPGHOME", &gnupg)
        .args(["--kill", "gpg-agent"])
        .output();
    drop(home);
    let base = serve(dir.join("www"))?;
    let line = release.split('.').take(2).collect::<Vec<_>>().join(".");
    Ok(Repo {
        base,
        keyring,
        release,
        line,
    })
}

fn the_repo() -> Result<&'static Repo, Failed> {
    REPO.get_or_init(build)
        .as_ref()
        .map_err(|e| e.clone().into())
}

/// Serve `root` on loopback: GET of files (symlinks followed), 404 else;
/// below `/slow/` the same files at 1 MB/s, for interrupting a download.
fn serve(root: PathBuf) -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let base = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || {
                let _ = answer(conn, &root);
            });
        }
    });
    Ok(base)
}

fn answer(mut conn: std::net::TcpStream, root: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (path, slow) = match path.strip_prefix("/slow") {
        Some(p) => (p, true),
        None => (path, false),
    };
    let rel = path.trim_start_matches('/');
    let file = (!rel.split('/').any(|p| p == ".."))
        .then(|| root.join(rel))
        .filter(|p| p.is_file());
    let Some(file) = file else {
        return conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let mut f = std::fs::File::open(&file)?;
    let len = f.metadata()?.len();
    conn.write_all(
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n])?;
        if slow {
            std::thread::sleep(std::time::Duration::from_millis(64));
        }
    }
}

/// `--repository` for one of the variants.
fn repository(r: &Repo, variant: &str, signed: bool) -> String {
    let mut s = format!("acme={}/{variant} suites=stable", r.base);
    if signed {
        s.push_str(&format!(" keyring={}", r.keyring.display()));
    }
    s
}

/// Run natvet with a cache of its own (`NATVET_CACHE`).
fn natvet(name: &str, args: &[&str], vet: bool) -> Result<(Run, PathBuf), Failed> {
    let out = out_dir(name);
    let _ = std::fs::remove_dir_all(&out);
    let cache = out.join("cache");
    std::fs::create_dir_all(&cache).map_err(|e| e.to_string())?;
    let json = out.join("report.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_natvet"));
    cmd.args(args)
        .env("NATVET_CACHE", &cache)
        .current_dir(repo());
    if vet {
        cmd.arg("--json")
            .arg(&json)
            .arg("--out")
            .arg(&out)
            .arg("--quiet");
    }
    let output = cmd.output().map_err(|e| format!("running natvet: {e}"))?;
    let report = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    Ok((
        Run {
            code: output.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            report,
        },
        cache,
    ))
}

/// `natvet kernels list --all acme` lists the repository's kernel.
fn lists_the_kernel() -> Result<(), Failed> {
    let r = the_repo()?;
    let repo_arg = repository(r, "good", true);
    let (run, _) = natvet(
        "repository-list",
        &[
            "kernels",
            "list",
            "--all",
            "acme",
            "--repository",
            &repo_arg,
        ],
        false,
    )?;
    if run.code != 0 || !run.stdout.contains(&r.release) {
        return Err(format!("expected {} listed\n{}", r.release, explain(&run)).into());
    }
    Ok(())
}

/// `natvet vet --kernel acme:LINE` resolves, downloads, verifies and boots it;
/// the results name the repository and the signature.
fn vets_the_kernel() -> Result<(), Failed> {
    let r = the_repo()?;
    let repo_arg = repository(r, "good", true);
    let spec = format!("acme:{}", r.line);
    let (run, cache) = natvet(
        "repository-vet",
        &[
            "vet",
            "--repository",
            &repo_arg,
            "--kernel",
            &spec,
            "--scenario",
            "pmtu",
            "--backend",
            "nftables",
        ],
        true,
    )?;
    let report = run.report.as_ref().ok_or_else(|| explain(&run))?;
    let k = &report["kernels"][0];
    let package = &k["package"];
    let ok = run.code == 0
        && k["release"].as_str() == Some(r.release.as_str())
        && package["repository"] == "acme"
        && package["trust"]["kind"] == "signed";
    let _ = std::fs::remove_dir_all(&cache);
    if !ok {
        return Err(format!(
            "expected {} vetted from acme, signed; package: {package}\n{}",
            r.release,
            explain(&run)
        )
        .into());
    }
    Ok(())
}

/// A broken repository: exit 3 and the reason, for `vet` (nothing boots).
fn refused(variant: &'static str, index_refused: bool, says: &str) -> Result<(), Failed> {
    let r = the_repo()?;
    let repo_arg = repository(r, variant, true);
    let spec = format!("acme:{}", r.line);
    let args = vec![
        "vet",
        "--repository",
        &repo_arg,
        "--kernel",
        &spec,
        "--scenario",
        "pmtu",
        "--backend",
        "nftables",
    ];
    let (run, cache) = natvet(&format!("repository-{variant}"), &args, true)?;
    let reason = run
        .report
        .as_ref()
        .map(|r| r["kernels"][0]["state"]["reason"].to_string())
        .unwrap_or_default();
    // Nothing of a refused index is cached.
    let leftovers: Vec<PathBuf> = std::fs::read_dir(cache.join("index/acme/stable"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let ok = run.code == 3 && (run.stderr.contains(says) || reason.contains(says));
    let _ = std::fs::remove_dir_all(&cache);
    if !ok || (index_refused && !leftovers.is_empty()) {
        return Err(format!(
            "expected exit 3 saying {says:?}, nothing cached (cached: {leftovers:?})\n--- reason: {reason}\n{}",
            explain(&run)
        )
        .into());
    }
    Ok(())
}

/// An unsigned repository is read with --allow-unsigned, and the results say so.
fn unsigned_with_flag() -> Result<(), Failed> {
    let r = the_repo()?;
    let repo_arg = repository(r, "unsigned", false);
    let (run, _) = natvet(
        "repository-unsigned-allowed",
        &[
            "kernels",
            "list",
            "--all",
            "acme",
            "--repository",
            &repo_arg,
            "--allow-unsigned",
        ],
        false,
    )?;
    if run.code != 0 || !run.stdout.contains(&r.release) {
        return Err(format!("expected {} listed\n{}", r.release, explain(&run)).into());
    }
    Ok(())
}

/// A download under way from the slow repository, interrupted by `signal`.
struct Interrupted {
    output: std::process::Output,
    cache: PathBuf,
    /// Whether the download had begun (a partial file was there).
    started: bool,
}

impl Interrupted {
    fn partial(&self) -> Vec<PathBuf> {
        partial_downloads(&self.cache)
    }
}

/// The partial downloads in `cache`'s folder of the test's repository.
fn partial_downloads(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache.join("debs/acme"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains(".partial-"))
                .collect()
        })
        .unwrap_or_default()
}

/// `natvet kernels fetch` from the slow repository, sent `signal` once its
/// download has begun; waits until natvet has ended.
fn interrupt_a_download(name: &str, signal: i32) -> Result<Interrupted, Failed> {
    let r = the_repo()?;
    let repo_arg = format!(
        "acme={}/slow/good suites=stable keyring={}",
        r.base,
        r.keyring.display()
    );
    let spec = format!("acme:{}", r.line);
    let out = out_dir(name);
    let _ = std::fs::remove_dir_all(&out);
    let cache = out.join("cache");
    std::fs::create_dir_all(&cache).map_err(|e| e.to_string())?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_natvet"))
        .args(["kernels", "fetch", &spec, "--repository", &repo_arg])
        .env("NATVET_CACHE", &cache)
        .current_dir(repo())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while partial_downloads(&cache).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let started = !partial_downloads(&cache).is_empty();
    // SAFETY: kill(2) on the process this test started.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    let waited = std::time::Instant::now();
    let output = loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break child.wait_with_output().map_err(|e| e.to_string())?;
        }
        if waited.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("natvet did not stop within 20 s of signal {signal}").into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Ok(Interrupted {
        output,
        cache,
        started,
    })
}

/// SIGINT during a download: exit 130, no partial file left in the cache.
fn sigint_stops_a_download() -> Result<(), Failed> {
    let run = interrupt_a_download("repository-sigint", libc::SIGINT)?;
    let left = run.partial();
    let code = run.output.status.code().unwrap_or(-1);
    let _ = std::fs::remove_dir_all(&run.cache);
    if !run.started || code != 130 || !left.is_empty() {
        return Err(format!(
            "download started: {}; exit {code} (want 130); partial files left: {left:?}\n--- stderr\n{}",
            run.started,
            String::from_utf8_lossy(&run.output.stderr)
        )
        .into());
    }
    Ok(())
}

/// SIGKILL during a download leaves the partial file (natvet cannot clean
/// up); the next run, even one that only lists kernels, removes it.
fn sigkill_mid_download_is_swept() -> Result<(), Failed> {
    use std::os::unix::process::ExitStatusExt;
    let r = the_repo()?;
    let run = interrupt_a_download("repository-sigkill", libc::SIGKILL)?;
    let left = run.partial();
    let killed = run.output.status.signal() == Some(libc::SIGKILL);
    if !run.started || !killed || left.is_empty() {
        let _ = std::fs::remove_dir_all(&run.cache);
        return Err(format!(
            "download started: {}; ended by {:?} (want SIGKILL); partial files left: {left:?} (want one)",
            run.started,
            run.output.status
        )
        .into());
    }
    let output = Command::new(env!("CARGO_BIN_EXE_natvet"))
        .args(["kernels", "list", "--all", "acme", "--repository"])
        .arg(repository(r, "good", true))
        .env("NATVET_CACHE", &run.cache)
        .current_dir(repo())
        .output()
        .map_err(|e| format!("running natvet: {e}"))?;
    let after = run.partial();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let _ = std::fs::remove_dir_all(&run.cache);
    if output.status.code() != Some(0) || !stdout.contains(&r.release) || !after.is_empty() {
        return Err(format!(
            "the next run (kernels list): exit {:?}, partial files still there: {after:?} (left by the killed run: {left:?})\n--- stdout\n{stdout}\n--- stderr\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(())
}

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test(
            "repository::lists-from-a-local-signed-repository",
            lists_the_kernel,
        ),
        Trial::test(
            "repository::vets-from-a-local-signed-repository",
            vets_the_kernel,
        ),
        Trial::test("repository::tampered-packages-exits-3", || {
            refused("tampered", true, "does not match the signed Release")
        }),
        Trial::test("repository::bad-signature-exits-3", || {
            refused("badsig", true, "BAD signature")
        }),
        Trial::test("repository::package-hash-mismatch-exits-3", || {
            refused("badhash", false, "checksum mismatch")
        }),
        Trial::test("repository::unsigned-needs-allow-unsigned", || {
            refused("unsigned", true, "--allow-unsigned")
        }),
        Trial::test(
            "repository::unsigned-read-with-allow-unsigned",
            unsigned_with_flag,
        ),
        Trial::test(
            "repository::sigint-stops-a-download",
            sigint_stops_a_download,
        ),
        Trial::test(
            "repository::sigkill-mid-download-is-swept",
            sigkill_mid_download_is_swept,
        ),
    ]
}

//! Guest side: natvet as `/sbin/modprobe`, the usermode helper the kernel
//! calls (`request_module()`) to load a module on demand.

use std::fs;
use std::path::{Path, PathBuf};

use super::load::load_with_index;
use super::ModuleIndex;

/// `/lib/modules/$(uname -r)` (falling back to `/usr/lib/modules/...`).
pub fn running_modules_dir() -> PathBuf {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let lib = Path::new("/lib/modules").join(&release);
    if lib.join("modules.dep").exists() {
        return lib;
    }
    let usr = Path::new("/usr/lib/modules").join(&release);
    if usr.join("modules.dep").exists() {
        usr
    } else {
        lib
    }
}

fn kmsg(msg: &str) {
    use std::io::Write;
    if let Ok(mut f) = fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = writeln!(f, "<4>natvet-modprobe: {msg}");
    }
}

/// Minimal `modprobe` as called by the kernel's `request_module()`
/// (`/sbin/modprobe -q -- NAME`). `args` is the full argv, argv[0]
/// included. Accepts `-q`, `-v`, `-b`, `-s`, `--`; the first operand is the
/// module name or alias, further operands are module parameters. Exit code 0
/// when the module (and its closure) is loaded or already present or built
/// in (for an alias matching several modules: at least one of them), 1
/// otherwise. Soft dependencies that fail do not count. Failed loads (not unknown names) are logged to
/// /dev/kmsg.
pub fn main(args: &[String]) -> i32 {
    modprobe_in(&running_modules_dir(), args, true)
}

pub(super) fn modprobe_in(dir: &Path, args: &[String], log_kmsg: bool) -> i32 {
    let mut quiet = false;
    let mut verbose = false;
    let mut operands: Vec<&str> = Vec::new();
    let mut opts_done = false;
    for a in args.iter().skip(1) {
        if opts_done || !a.starts_with('-') || a == "-" {
            operands.push(a);
            continue;
        }
        match a.as_str() {
            "--" => opts_done = true,
            "--quiet" => quiet = true,
            "--verbose" => verbose = true,
            "--use-blacklist" | "--syslog" => {}
            s if !s.starts_with("--") && s[1..].chars().all(|c| "qvbs".contains(c)) => {
                quiet |= s.contains('q');
                verbose |= s.contains('v');
            }
            other => {
                if !quiet {
                    eprintln!("modprobe: unsupported option {other}");
                }
                return 1;
            }
        }
    }
    let Some((name, params)) = operands.split_first() else {
        if !quiet {
            eprintln!("modprobe: missing module name");
        }
        return 1;
    };
    let index = match ModuleIndex::load(dir) {
        Ok(i) => i,
        Err(e) => {
            if !quiet {
                eprintln!("modprobe: {e}");
            }
            return 1;
        }
    };
    let params = params.join(" ");
    match load_with_index(&index, &[name], &params) {
        Ok(r) => {
            if verbose {
                for m in &r.loaded {
                    eprintln!("insmod {m}");
                }
            }
            for (m, why) in &r.failed {
                if log_kmsg && why != "unknown module" {
                    kmsg(&format!("{name}: {m}: {why}"));
                }
                if !quiet {
                    eprintln!("modprobe: {m}: {why}");
                }
            }
            // Served when the name is built in or at least one module it
            // stands for is present (an alias may match several modules).
            let cands = index.candidates(name);
            let served = r
                .already
                .iter()
                .chain(&r.loaded)
                .any(|m| m == name || cands.contains(m));
            i32::from(!served)
        }
        Err(e) => {
            if !quiet {
                eprintln!("modprobe: {e}");
            }
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::index;
    use super::*;

    #[test]
    fn modprobe_args() {
        let (d, _i) = index();
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Built in: success without loading anything.
        assert_eq!(
            modprobe_in(d.path(), &argv(&["modprobe", "-q", "--", "fs-ext4"]), false),
            0
        );
        assert_eq!(
            modprobe_in(
                d.path(),
                &argv(&["/sbin/modprobe", "-qb", "nfnetlink"]),
                false
            ),
            0
        );
        // Unknown: failure.
        assert_eq!(
            modprobe_in(
                d.path(),
                &argv(&["modprobe", "-q", "--", "net-pf-99"]),
                false
            ),
            1
        );
        assert_eq!(modprobe_in(d.path(), &argv(&["modprobe", "-q"]), false), 1);
        assert_eq!(
            modprobe_in(d.path(), &argv(&["modprobe", "-q", "-Z", "x"]), false),
            1
        );
    }
}

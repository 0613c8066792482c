//! Guest side: load modules with `init_module(2)`, each module's closure in
//! order, reporting what loaded, what was there already and what failed.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::path::Path;

use super::{decompress_module, name_from_path, ModuleError, ModuleIndex, Resolved};

/// What [`load_modules`] did. Names are module names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    /// Already loaded (EEXIST or present in /sys/module) or built in.
    pub already: Vec<String>,
    /// (module or requested name, reason).
    pub failed: Vec<(String, String)>,
    /// Soft dependencies (modules.softdep) that failed to load, e.g.
    /// `crc32c_intel` on a CPU without SSE4.2: (module, reason). Not fatal.
    pub soft_failed: Vec<(String, String)>,
}

impl LoadReport {
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }
}

/// `init_module(2)` on a module image.
pub fn init_module(image: &[u8], params: &str) -> io::Result<()> {
    let params = CString::new(params)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in module parameters"))?;
    // SAFETY: image and params outlive the call; the kernel copies both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            image.as_ptr(),
            image.len() as libc::c_ulong,
            params.as_ptr(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn is_loaded(name: &str) -> bool {
    Path::new("/sys/module")
        .join(name)
        .join("initstate")
        .exists()
}

/// Guest side: loads the named modules (names or aliases) with their
/// dependency closure, in order. Unknown names are reported in `failed`;
/// the other modules are still loaded.
pub fn load_modules(modules_dir: &Path, names: &[&str]) -> Result<LoadReport, ModuleError> {
    let index = ModuleIndex::load(modules_dir)?;
    load_with_index(&index, names, "")
}

pub(super) fn load_with_index(
    index: &ModuleIndex,
    names: &[&str],
    params: &str,
) -> Result<LoadReport, ModuleError> {
    let mut report = LoadReport::default();
    let mut known = Vec::new();
    for n in names {
        match index.resolve(n) {
            Resolved::Module(_) => known.push(*n),
            Resolved::Builtin => report.already.push(n.to_string()),
            Resolved::Unknown => report
                .failed
                .push((n.to_string(), "unknown module".to_string())),
        }
    }
    let order = index.load_order(&known)?;
    let roots: Vec<String> = known.iter().flat_map(|n| index.candidates(n)).collect();
    let hard = index.hard_closure(&roots);
    // Parameters apply to the requested modules only, not their deps.
    let requested: HashSet<String> = roots.into_iter().collect();
    for rel in order {
        let name = name_from_path(&rel);
        if is_loaded(&name) {
            report.already.push(name);
            continue;
        }
        let path = index.dir.join(&rel);
        let image = match decompress_module(&path) {
            Ok(i) => i,
            Err(e) => {
                let list = if hard.contains(&name) {
                    &mut report.failed
                } else {
                    &mut report.soft_failed
                };
                list.push((name, e.to_string()));
                continue;
            }
        };
        let p = if requested.contains(&name) {
            params
        } else {
            ""
        };
        match init_module(&image, p) {
            Ok(()) => report.loaded.push(name),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => report.already.push(name),
            Err(e) => {
                let list = if hard.contains(&name) {
                    &mut report.failed
                } else {
                    &mut report.soft_failed
                };
                list.push((name, format!("init_module: {e}")));
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::modprobe::modprobe_in;
    use super::super::tests::index;
    use super::*;

    #[test]
    fn load_report_for_unknown_and_builtin() {
        let (d, _i) = index();
        let r = load_modules(d.path(), &["ext4", "nope"]).unwrap();
        assert_eq!(r.already, ["ext4"]);
        assert_eq!(
            r.failed,
            [("nope".to_string(), "unknown module".to_string())]
        );
        assert!(r.loaded.is_empty());
    }

    #[test]
    fn soft_dependency_failures_are_not_fatal() {
        // Garbage images: init_module fails (ENOEXEC/EINVAL, or EPERM when
        // not root) without touching the host kernel's state.
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("modules.dep"),
            "natvet_fake_main.ko: natvet_fake_dep.ko\nnatvet_fake_dep.ko:\nnatvet_fake_soft.ko:\n",
        )
        .unwrap();
        fs::write(
            d.path().join("modules.softdep"),
            "softdep natvet_fake_main pre: natvet-fake-soft\n",
        )
        .unwrap();
        for m in ["natvet_fake_main", "natvet_fake_dep", "natvet_fake_soft"] {
            fs::write(d.path().join(format!("{m}.ko")), b"not a module").unwrap();
        }
        let r = load_modules(d.path(), &["natvet-fake-main"]).unwrap();
        let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&r.soft_failed), ["natvet_fake_soft"]);
        assert_eq!(names(&r.failed), ["natvet_fake_dep", "natvet_fake_main"]);
        assert!(r.loaded.is_empty());
        let argv: Vec<String> = ["modprobe", "-q", "--", "natvet_fake_main"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(modprobe_in(d.path(), &argv, false), 1);
    }
}

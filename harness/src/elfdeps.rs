//! Shared-library closure of dynamically linked host ELF binaries: every file
//! and symlink needed to run them in an otherwise empty root.
//!
//! Symlinks are recorded wherever they occur, including directory symlinks
//! in the middle of a path (merged-/usr: `/lib -> usr/lib`,
//! `/lib64 -> usr/lib64`), so the caller can recreate the same tree.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use goblin::elf::Elf;

#[derive(Debug, thiserror::Error)]
pub enum ElfDepsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: bad ELF: {msg}", path.display())]
    Elf { path: PathBuf, msg: String },
    #[error("{}: needs {lib}, not found in {searched:?}", path.display())]
    NotFound {
        path: PathBuf,
        lib: String,
        searched: Vec<PathBuf>,
    },
    #[error("{}: path is not absolute", .0.display())]
    Relative(PathBuf),
    #[error("{}: too many levels of symbolic links", .0.display())]
    SymlinkLoop(PathBuf),
}

/// One thing to recreate in the target root, at the same absolute path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entry {
    /// A regular file (path has no symlinks in it).
    File(PathBuf),
    /// A symlink at `.0` with target `.1`, exactly as stored on the host
    /// (relative or absolute).
    Symlink(PathBuf, PathBuf),
}

impl Entry {
    pub fn path(&self) -> &Path {
        match self {
            Entry::File(p) | Entry::Symlink(p, _) => p,
        }
    }
}

pub const DEFAULT_LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ElfDepsError + '_ {
    move |source| ElfDepsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Resolves `path` component by component, recording every symlink met in
/// `links`. Returns the symlink-free path.
pub fn resolve_path(path: &Path, links: &mut BTreeSet<Entry>) -> Result<PathBuf, ElfDepsError> {
    let mut budget = 40;
    walk(path, links, &mut budget)
}

fn walk(
    path: &Path,
    links: &mut BTreeSet<Entry>,
    budget: &mut u32,
) -> Result<PathBuf, ElfDepsError> {
    if !path.is_absolute() {
        return Err(ElfDepsError::Relative(path.to_path_buf()));
    }
    let mut cur = PathBuf::from("/");
    for comp in path.components() {
        match comp {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                cur.pop();
            }
            Component::Normal(n) => {
                let next = cur.join(n);
                let md = fs::symlink_metadata(&next).map_err(io_err(&next))?;
                if md.file_type().is_symlink() {
                    if *budget == 0 {
                        return Err(ElfDepsError::SymlinkLoop(path.to_path_buf()));
                    }
                    *budget -= 1;
                    let target = fs::read_link(&next).map_err(io_err(&next))?;
                    links.insert(Entry::Symlink(next.clone(), target.clone()));
                    let abs = if target.is_absolute() {
                        target
                    } else {
                        cur.join(target)
                    };
                    cur = walk(&abs, links, budget)?;
                } else {
                    cur = next;
                }
            }
        }
    }
    Ok(cur)
}

struct ElfInfo {
    interp: Option<String>,
    needed: Vec<String>,
    search: Vec<PathBuf>,
    class64: bool,
    machine: u16,
}

fn parse_elf(real: &Path, bytes: &[u8]) -> Result<Option<ElfInfo>, ElfDepsError> {
    if !bytes.starts_with(b"\x7fELF") {
        return Ok(None);
    }
    let elf = Elf::parse(bytes).map_err(|e| ElfDepsError::Elf {
        path: real.to_path_buf(),
        msg: e.to_string(),
    })?;
    let origin = real
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let expand = |s: &str| -> Vec<PathBuf> {
        s.split(':')
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(p.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin)))
            .collect()
    };
    // DT_RUNPATH wins over DT_RPATH when both are present.
    let mut search: Vec<PathBuf> = if !elf.runpaths.is_empty() {
        elf.runpaths.iter().flat_map(|s| expand(s)).collect()
    } else {
        elf.rpaths.iter().flat_map(|s| expand(s)).collect()
    };
    search.extend(DEFAULT_LIB_DIRS.iter().map(PathBuf::from));
    Ok(Some(ElfInfo {
        interp: elf.interpreter.map(str::to_string),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        search,
        class64: elf.is_64,
        machine: elf.header.e_machine,
    }))
}

/// Whether the ELF at `path` matches class and machine (skips e.g. i386 libs).
fn compatible(path: &Path, class64: bool, machine: u16) -> bool {
    use std::io::Read;
    let mut h = [0u8; 20];
    let Ok(mut f) = fs::File::open(path) else {
        return false;
    };
    if f.read_exact(&mut h).is_err() || !h.starts_with(b"\x7fELF") {
        return false;
    }
    let is64 = h[4] == 2;
    let m = if h[5] == 2 {
        u16::from_be_bytes([h[18], h[19]])
    } else {
        u16::from_le_bytes([h[18], h[19]])
    };
    is64 == class64 && m == machine
}

/// Whether `bytes` is an ELF without a program interpreter (static or a
/// static-pie executable).
pub fn is_static_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF") && Elf::parse(bytes).is_ok_and(|e| e.interpreter.is_none())
}

/// The files needed to run `binaries` in an empty root: the binaries, their
/// program interpreter and all DT_NEEDED libraries, recursively, plus every
/// symlink on the way. Non-ELF inputs are included as plain files. Sorted by
/// path, each once.
pub fn closure(binaries: &[PathBuf]) -> Result<Vec<Entry>, ElfDepsError> {
    let mut out: BTreeSet<Entry> = BTreeSet::new();
    let mut done: HashSet<PathBuf> = HashSet::new();
    let mut queue: VecDeque<PathBuf> = binaries.iter().cloned().collect();
    while let Some(p) = queue.pop_front() {
        let real = resolve_path(&p, &mut out)?;
        if !done.insert(real.clone()) {
            continue;
        }
        out.insert(Entry::File(real.clone()));
        let bytes = fs::read(&real).map_err(io_err(&real))?;
        let Some(info) = parse_elf(&real, &bytes)? else {
            continue;
        };
        if let Some(interp) = &info.interp {
            queue.push_back(PathBuf::from(interp));
        }
        for lib in &info.needed {
            if lib.contains('/') {
                let lp = if Path::new(lib).is_absolute() {
                    PathBuf::from(lib)
                } else {
                    real.parent().unwrap_or(Path::new("/")).join(lib)
                };
                queue.push_back(lp);
                continue;
            }
            let found = info.search.iter().map(|d| d.join(lib)).find(|c| {
                fs::metadata(c).is_ok_and(|m| m.is_file())
                    && compatible(c, info.class64, info.machine)
            });
            match found {
                Some(c) => queue.push_back(c),
                None => {
                    return Err(ElfDepsError::NotFound {
                        path: real.clone(),
                        lib: lib.clone(),
                        searched: info.search.clone(),
                    })
                }
            }
        }
    }
    let mut v: Vec<Entry> = out.into_iter().collect();
    v.sort_by(|a, b| a.path().cmp(b.path()).then_with(|| a.cmp(b)));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_chain_recorded() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::write(root.join("usr/lib/libx.so.1.2"), b"not elf").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("libx.so.1.2", root.join("usr/lib/libx.so.1")).unwrap();
        let entries = closure(&[root.join("lib/libx.so.1")]).unwrap();
        assert_eq!(
            entries,
            [
                Entry::Symlink(root.join("lib"), PathBuf::from("usr/lib")),
                Entry::Symlink(root.join("usr/lib/libx.so.1"), PathBuf::from("libx.so.1.2")),
                Entry::File(root.join("usr/lib/libx.so.1.2")),
            ]
        );
    }

    #[test]
    fn host_nft_closure() {
        let nft = PathBuf::from("/usr/sbin/nft");
        if !nft.exists() {
            eprintln!("note: /usr/sbin/nft absent, skipping");
            return;
        }
        let e = closure(std::slice::from_ref(&nft)).unwrap();
        let files: Vec<_> = e
            .iter()
            .filter_map(|e| match e {
                Entry::File(p) => Some(p.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        assert!(files.iter().any(|f| f.ends_with("/libc.so.6")), "{files:?}");
        assert!(
            files.iter().any(|f| f.contains("libnftables.so")),
            "{files:?}"
        );
        assert!(
            files.iter().any(|f| f.contains("ld-linux-x86-64.so.2")),
            "{files:?}"
        );
        assert!(e.contains(&Entry::File(nft)));
    }
}

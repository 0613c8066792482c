//! Builds the guest's initramfs: an uncompressed newc cpio holding the static
//! agent as `/init`, a minimal directory layout, decompressed kernel modules
//! with consistent metadata, and host tools with their shared libraries.
//!
//! The archive is assembled as an in-memory tree first, so that symlinks
//! coming from the host (merged-/usr: `/lib -> usr/lib`) are honoured when
//! later entries (e.g. `/lib/modules/...`) are placed: such entries land at
//! the symlink's target, and the guest sees the same paths as the host.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::{self, BufWriter};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cpio::CpioWriter;
use crate::elfdeps::{self, ElfDepsError, Entry};
use crate::modules::{self, ModuleError, ModuleIndex};

/// The file that says "this is natvet's own guest": written into every
/// initramfs, and read by `main` before it acts as the guest's PID 1 (which
/// mounts over /dev, /proc and /sys and reboots). PID 1 anywhere else (a
/// container without an init) is the plain command line.
pub const GUEST_MARKER: &str = "natvet/guest";
/// What the marker holds.
pub const GUEST_MARKER_CONTENTS: &[u8] = b"natvet guest initramfs: /init is natvet's agent\n";

/// Whether `root` is the root of natvet's own guest: it holds the marker
/// the initramfs builder writes, with its contents.
pub fn is_own_guest(root: &Path) -> bool {
    fs::read(root.join(GUEST_MARKER)).is_ok_and(|c| c == GUEST_MARKER_CONTENTS)
}

pub struct InitramfsSpec<'a> {
    /// The static natvet binary; becomes `/init`, plus `/sbin/modprobe -> /init`.
    pub agent: &'a Path,
    /// Extra files: (destination path in the guest, contents), mode 0644.
    pub files: Vec<(String, Vec<u8>)>,
    /// None for a kernel without modules.
    pub modules: Option<ModulesSpec>,
    /// Host tools copied with their shared libraries, at the same paths.
    pub host_binaries: Vec<PathBuf>,
    /// Whole host folders copied with the libraries their ELF files need.
    pub host_dirs: Vec<PathBuf>,
}

pub struct ModulesSpec {
    /// Host `lib/modules/RELEASE` (with modules.dep, see `depmod -b`).
    pub dir: PathBuf,
    pub release: String,
    /// Module names or aliases; their closure is included. Unknown names
    /// (neither a module nor built in) are an error.
    pub wanted: Vec<String>,
    /// Subfolders of `dir` included whole (with their closure) for
    /// on-demand loading, e.g. `kernel/net/netfilter`. Best effort.
    pub include_dirs: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct InitramfsStats {
    /// Size of the archive.
    pub bytes: u64,
    /// Non-directory entries.
    pub files: usize,
    /// Kernel modules included.
    pub modules: usize,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("kernel modules: {0}")]
    Modules(#[from] ModuleError),
    #[error("shared library closure: {0}")]
    ElfDeps(#[from] ElfDepsError),
    #[error("{}: the agent must be a statically linked ELF (it runs as /init in an empty root)", .0.display())]
    AgentNotStatic(PathBuf),
    #[error("initramfs entry {path}: {msg}")]
    Conflict { path: String, msg: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InitramfsError + '_ {
    move |source| InitramfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    Bytes(Vec<u8>),
    /// Copied from the host as is.
    Host(PathBuf),
    /// A kernel module on the host, decompressed on write.
    Module(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir(u32),
    File(u32, Data),
    Symlink(String),
    Char(u32, u32, u32),
}

/// In-memory archive tree keyed by normalised path (no leading '/').
#[derive(Default)]
struct Tree {
    nodes: BTreeMap<String, Node>,
}

fn split(path: &str) -> Vec<&str> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

impl Tree {
    /// Follows symlinks already in the tree for every component of `path`
    /// but the last; returns the resulting path.
    fn resolve_parent(&self, path: &str) -> Result<String, InitramfsError> {
        let comps = split(path);
        let Some((last, dirs)) = comps.split_last() else {
            return Err(InitramfsError::Conflict {
                path: path.to_string(),
                msg: "empty path".into(),
            });
        };
        let mut cur = self.resolve_dir(dirs, 0, path)?;
        cur.push(last.to_string());
        Ok(cur.join("/"))
    }

    fn resolve_dir(
        &self,
        comps: &[&str],
        depth: u32,
        orig: &str,
    ) -> Result<Vec<String>, InitramfsError> {
        if depth > 20 {
            return Err(InitramfsError::Conflict {
                path: orig.to_string(),
                msg: "symlink loop in archive".into(),
            });
        }
        let mut cur: Vec<String> = Vec::new();
        for c in comps {
            if *c == ".." {
                cur.pop();
                continue;
            }
            cur.push(c.to_string());
            if let Some(Node::Symlink(t)) = self.nodes.get(&cur.join("/")) {
                cur.pop();
                let mut target: Vec<&str> = Vec::new();
                let base = cur.join("/");
                if !t.starts_with('/') {
                    target.extend(split(&base));
                }
                target.extend(split(t));
                cur = self.resolve_dir(&target, depth + 1, orig)?;
            }
        }
        Ok(cur)
    }

    fn add(&mut self, path: &str, node: Node) -> Result<(), InitramfsError> {
        let p = self.resolve_parent(path)?;
        // Ancestors (symlink-free after resolve_parent) become directories.
        let comps = split(&p);
        for i in 1..comps.len() {
            let anc = comps[..i].join("/");
            match self.nodes.get(&anc) {
                None => {
                    self.nodes.insert(anc, Node::Dir(0o755));
                }
                Some(Node::Dir(_)) => {}
                Some(_) => {
                    return Err(InitramfsError::Conflict {
                        path: p.clone(),
                        msg: format!("{anc} is not a directory"),
                    })
                }
            }
        }
        match (self.nodes.get(&p), &node) {
            (None, _) => {
                self.nodes.insert(p, node);
                Ok(())
            }
            // A directory requested where the host has a directory symlink
            // (or a directory): fine.
            (Some(Node::Dir(_)) | Some(Node::Symlink(_)), Node::Dir(_)) => Ok(()),
            (Some(old), new) if old == new => Ok(()),
            (Some(old), new) => Err(InitramfsError::Conflict {
                path: p,
                msg: format!("added twice: {old:?} vs {new:?}"),
            }),
        }
    }

    fn add_host_entries(&mut self, entries: &[Entry]) -> Result<(), InitramfsError> {
        for e in entries {
            let dest = e.path().to_string_lossy().into_owned();
            match e {
                Entry::Symlink(_, t) => {
                    self.add(&dest, Node::Symlink(t.to_string_lossy().into_owned()))?
                }
                Entry::File(p) => {
                    let md = fs::metadata(p).map_err(io_err(p))?;
                    let mode = md.permissions().mode() & 0o7777;
                    self.add(&dest, Node::File(mode, Data::Host(p.clone())))?;
                }
            }
        }
        Ok(())
    }

    fn write(&self, out: &Path) -> Result<(u64, usize), InitramfsError> {
        let dir = out.parent().filter(|p| !p.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
        let mut w = CpioWriter::new(BufWriter::new(tmp.as_file()));
        let mut files = 0;
        let e = io_err(out);
        for (path, node) in &self.nodes {
            let r = match node {
                Node::Dir(mode) => w.add_dir(path, *mode),
                Node::Symlink(t) => w.add_symlink(path, t),
                Node::Char(mode, maj, min) => w.add_char_device(path, *mode, *maj, *min),
                Node::File(mode, data) => {
                    let bytes = match data {
                        Data::Bytes(b) => std::borrow::Cow::Borrowed(&b[..]),
                        Data::Host(p) => fs::read(p).map_err(io_err(p))?.into(),
                        Data::Module(p) => modules::decompress_module(p).map_err(io_err(p))?.into(),
                    };
                    w.add_file(path, *mode, &bytes)
                }
            };
            r.map_err(|source| InitramfsError::Io {
                path: PathBuf::from(path),
                source,
            })?;
            if !matches!(node, Node::Dir(_)) {
                files += 1;
            }
        }
        let bytes = w.bytes_written();
        let bw = w.finish().map_err(io_err(out))?;
        drop(bw);
        let bytes = bytes.max(tmp.as_file().metadata().map(|m| m.len()).unwrap_or(bytes));
        tmp.persist(out).map_err(|p| e(p.error))?;
        Ok((bytes, files))
    }
}

/// `kernel/x/y.ko.xz` -> `kernel/x/y.ko`.
fn plain_ko(path: &str) -> String {
    for ext in [".xz", ".zst", ".gz"] {
        if let Some(s) = path.strip_suffix(ext) {
            return s.to_string();
        }
    }
    path.to_string()
}

/// All regular files and symlinks below `dir` (sorted), for the closure.
fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), InitramfsError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let md = fs::symlink_metadata(&p).map_err(io_err(&p))?;
        if md.is_dir() {
            walk_dir(&p, out)?;
        } else if md.file_type().is_symlink() {
            // Skip dangling links rather than fail.
            if fs::metadata(&p).is_ok() {
                out.push(p);
            }
        } else if md.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

fn read_opt(path: &Path) -> Result<Option<String>, InitramfsError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Extracts the module a metadata line is about.
type ModuleOfLine<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// Adds the selected modules (decompressed, `.ko`) and consistent metadata
/// under `lib/modules/RELEASE`. Returns the number of modules.
fn add_modules(tree: &mut Tree, spec: &ModulesSpec) -> Result<usize, InitramfsError> {
    let index = ModuleIndex::load(&spec.dir)?;
    let wanted: Vec<&str> = spec.wanted.iter().map(String::as_str).collect();
    let mut order = index.load_order(&wanted)?;
    let mut from_dirs = Vec::new();
    for d in &spec.include_dirs {
        let prefix = format!("{}/", d.trim_matches('/'));
        from_dirs.extend(
            index
                .modules()
                .filter(|(_, p)| p.starts_with(&prefix))
                .map(|(n, _)| n.to_string()),
        );
    }
    let from_dirs: Vec<&str> = from_dirs.iter().map(String::as_str).collect();
    order.extend(index.load_order(&from_dirs)?);
    let mut seen = HashSet::new();
    order.retain(|p| seen.insert(p.clone()));
    let included: HashSet<&str> = order.iter().map(String::as_str).collect();
    let names: HashSet<String> = order.iter().map(|p| modules::name_from_path(p)).collect();

    let base = format!("lib/modules/{}", spec.release);
    for rel in &order {
        let src = if Path::new(rel).is_absolute() {
            PathBuf::from(rel)
        } else {
            spec.dir.join(rel)
        };
        let dest = format!("{base}/{}", plain_ko(rel.trim_start_matches('/')));
        tree.add(&dest, Node::File(0o644, Data::Module(src)))?;
    }

    let rename = |p: &str| plain_ko(p.trim_start_matches('/'));
    let mut dep = String::new();
    let dep_src = spec.dir.join("modules.dep");
    for line in read_opt(&dep_src)?.unwrap_or_default().lines() {
        if let Some((path, deps)) = modules::parse_dep_line(line) {
            if included.contains(path) {
                dep.push_str(&rename(path));
                dep.push(':');
                for d in deps {
                    dep.push(' ');
                    dep.push_str(&rename(d));
                }
                dep.push('\n');
            }
        }
    }
    tree.add(
        &format!("{base}/modules.dep"),
        Node::File(0o644, Data::Bytes(dep.into_bytes())),
    )?;

    let keep_line = |line: &str, module_of: &ModuleOfLine| -> bool {
        line.trim_start().starts_with('#') || module_of(line).is_some_and(|m| names.contains(&m))
    };
    let filters: [(&str, &ModuleOfLine); 3] = [
        ("modules.alias", &|l: &str| {
            let mut t = l.split_whitespace();
            match (t.next(), t.next(), t.next()) {
                (Some("alias"), Some(_), Some(m)) => Some(modules::normalise_name(m)),
                _ => None,
            }
        }),
        ("modules.softdep", &modules::softdep_line_module),
        ("modules.order", &|l: &str| {
            let l = l.trim();
            included.contains(l).then(|| modules::name_from_path(l))
        }),
    ];
    for (file, module_of) in filters {
        let Some(text) = read_opt(&spec.dir.join(file))? else {
            continue;
        };
        let mut out = String::new();
        for line in text.lines().filter(|l| keep_line(l, module_of)) {
            if file == "modules.order" {
                out.push_str(&rename(line.trim()));
            } else {
                out.push_str(line);
            }
            out.push('\n');
        }
        tree.add(
            &format!("{base}/{file}"),
            Node::File(0o644, Data::Bytes(out.into_bytes())),
        )?;
    }
    for file in ["modules.builtin", "modules.builtin.modinfo"] {
        let p = spec.dir.join(file);
        if p.exists() {
            tree.add(&format!("{base}/{file}"), Node::File(0o644, Data::Host(p)))?;
        }
    }
    Ok(order.len())
}

/// Builds the initramfs at `out` (written to a temporary file first, then
/// renamed).
pub fn build(spec: &InitramfsSpec, out: &Path) -> Result<InitramfsStats, InitramfsError> {
    let start = Instant::now();
    let agent = fs::read(spec.agent).map_err(io_err(spec.agent))?;
    if !elfdeps::is_static_elf(&agent) {
        return Err(InitramfsError::AgentNotStatic(spec.agent.to_path_buf()));
    }

    let mut tree = Tree::default();

    // Host tools first: their symlinks (e.g. /lib -> usr/lib) shape the tree.
    let mut inputs = spec.host_binaries.clone();
    for d in &spec.host_dirs {
        walk_dir(d, &mut inputs)?;
    }
    if !inputs.is_empty() {
        let entries = elfdeps::closure(&inputs)?;
        // Directories of host_dirs themselves may be reached via symlinks.
        let mut links = BTreeSet::new();
        for d in &spec.host_dirs {
            elfdeps::resolve_path(d, &mut links)?;
        }
        let links: Vec<Entry> = links.into_iter().collect();
        tree.add_host_entries(&links)?;
        tree.add_host_entries(&entries)?;
    }

    tree.add("init", Node::File(0o755, Data::Bytes(agent)))?;
    for d in ["dev", "proc", "sys", "run", "tmp", "etc", "sbin", "root"] {
        let mode = if d == "tmp" { 0o1777 } else { 0o755 };
        tree.add(d, Node::Dir(mode))?;
    }
    tree.add("dev/console", Node::Char(0o600, 5, 1))?;
    tree.add("dev/null", Node::Char(0o666, 1, 3))?;
    tree.add("sbin/modprobe", Node::Symlink("/init".into()))?;
    tree.add(
        GUEST_MARKER,
        Node::File(0o444, Data::Bytes(GUEST_MARKER_CONTENTS.to_vec())),
    )?;

    let mut nmod = 0;
    if let Some(m) = &spec.modules {
        nmod = add_modules(&mut tree, m)?;
    }
    for (dest, bytes) in &spec.files {
        tree.add(dest, Node::File(0o644, Data::Bytes(bytes.clone())))?;
    }

    let (bytes, files) = tree.write(out)?;
    Ok(InitramfsStats {
        bytes,
        files,
        modules: nmod,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests;

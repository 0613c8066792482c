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
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::{Command, Stdio};

    fn agent() -> PathBuf {
        std::env::current_exe().unwrap()
    }

    fn have(cmd: &str) -> bool {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {cmd}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn list(archive: &Path) -> Vec<String> {
        let out = Command::new("sh")
            .arg("-c")
            .arg("cpio -it --quiet < \"$1\"")
            .arg("sh")
            .arg(archive)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn unpack(archive: &Path, root: &Path) {
        fs::create_dir_all(root).unwrap();
        let st = Command::new("sh")
            .arg("-c")
            .arg("cpio -idm --quiet --no-absolute-filenames < \"$1\"")
            .arg("sh")
            .arg(archive)
            .current_dir(root)
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// The files of a newc archive: (name, contents).
    fn newc_files(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
        let field = |at: usize| {
            usize::from_str_radix(std::str::from_utf8(&archive[at..at + 8]).unwrap(), 16).unwrap()
        };
        let pad = |n: usize| (n + 3) & !3;
        let (mut at, mut out) = (0, Vec::new());
        while at + 110 <= archive.len() && &archive[at..at + 6] == b"070701" {
            let (size, name_len) = (field(at + 54), field(at + 94));
            let name =
                String::from_utf8_lossy(&archive[at + 110..at + 110 + name_len - 1]).into_owned();
            let data = pad(at + 110 + name_len);
            if name == "TRAILER!!!" {
                break;
            }
            out.push((name, archive[data..data + size].to_vec()));
            at = pad(data + size);
        }
        out
    }

    #[test]
    fn every_initramfs_carries_the_guest_marker() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("i.cpio");
        let spec = InitramfsSpec {
            agent: &agent(),
            files: vec![],
            modules: None,
            host_binaries: vec![],
            host_dirs: vec![],
        };
        build(&spec, &out).unwrap();
        let files = newc_files(&fs::read(&out).unwrap());
        let (_, marker) = files
            .iter()
            .find(|(n, _)| n == GUEST_MARKER)
            .unwrap_or_else(|| {
                panic!(
                    "no {GUEST_MARKER} in {:?}",
                    files.iter().map(|f| &f.0).collect::<Vec<_>>()
                )
            });
        assert_eq!(marker, GUEST_MARKER_CONTENTS);
        // What main() asks before it acts as the guest's PID 1.
        let root = d.path().join("root");
        assert!(!is_own_guest(&root));
        fs::create_dir_all(root.join("natvet")).unwrap();
        fs::write(root.join(GUEST_MARKER), b"something else").unwrap();
        assert!(!is_own_guest(&root), "only natvet's own contents count");
        fs::write(root.join(GUEST_MARKER), marker).unwrap();
        assert!(is_own_guest(&root));
        assert!(
            !is_own_guest(Path::new("/")),
            "the host is not natvet's guest"
        );
    }

    #[test]
    fn rejects_dynamic_agent() {
        if !Path::new("/bin/sh").exists() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let spec = InitramfsSpec {
            agent: Path::new("/bin/sh"),
            files: vec![],
            modules: None,
            host_binaries: vec![],
            host_dirs: vec![],
        };
        assert!(matches!(
            build(&spec, &d.path().join("i.cpio")),
            Err(InitramfsError::AgentNotStatic(_))
        ));
    }

    #[test]
    fn host_tools_run_in_chroot() {
        if !have("cpio") {
            eprintln!("note: cpio missing, skipping");
            return;
        }
        let tools = [
            "/usr/sbin/nft",
            "/usr/sbin/iptables-legacy",
            "/usr/sbin/iptables-nft",
            "/usr/sbin/conntrack",
        ];
        let xt = PathBuf::from("/usr/lib/x86_64-linux-gnu/xtables");
        if tools.iter().any(|t| !Path::new(t).exists()) || !xt.is_dir() {
            eprintln!("note: nftables/iptables/conntrack not installed, skipping");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("initramfs.cpio");
        let spec = InitramfsSpec {
            agent: &agent(),
            files: vec![("natvet/job.json".into(), b"{}".to_vec())],
            modules: None,
            host_binaries: tools.iter().map(PathBuf::from).collect(),
            host_dirs: vec![xt],
        };
        let stats = build(&spec, &out).unwrap();
        eprintln!(
            "host tools initramfs: {} bytes, {} files, {:?}",
            stats.bytes, stats.files, stats.elapsed
        );
        assert_eq!(fs::metadata(&out).unwrap().len(), stats.bytes);
        let names = list(&out);
        for n in [
            "init",
            "sbin/modprobe",
            "dev/console",
            "dev/null",
            "proc",
            "tmp",
            "natvet/job.json",
            GUEST_MARKER,
            "usr/sbin/nft",
            "usr/sbin/xtables-legacy-multi",
            "usr/lib/x86_64-linux-gnu/xtables/libxt_MASQUERADE.so",
            "lib64",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        let root = d.path().join("root");
        assert!(!is_own_guest(&root), "no marker before it is unpacked");
        unpack(&out, &root);
        // The agent acts as PID 1 only where the initramfs put its marker.
        assert!(is_own_guest(&root));
        assert!(
            !is_own_guest(Path::new("/")),
            "the host is not natvet's guest"
        );
        assert_eq!(
            fs::read_link(root.join("usr/sbin/iptables-legacy")).unwrap(),
            Path::new("xtables-legacy-multi")
        );
        assert_eq!(
            fs::read_link(root.join("sbin/modprobe")).unwrap(),
            Path::new("/init")
        );
        if !is_root() || !have("chroot") {
            eprintln!("note: not root, skipping the chroot runs");
            return;
        }
        for args in [
            &["/usr/sbin/nft", "--version"][..],
            &["/usr/sbin/iptables-legacy", "--version"],
            &["/usr/sbin/iptables-nft", "--version"],
            &["/usr/sbin/conntrack", "--version"],
        ] {
            let o = Command::new("chroot")
                .arg(&root)
                .args(args)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{args:?}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        // The xtables extensions load (dlopen) inside the chroot: parse a
        // rule with a match and a target without touching the kernel.
        let o = Command::new("chroot")
            .arg(&root)
            .args([
                "/usr/sbin/iptables-legacy",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-p",
                "udp",
                "-m",
                "multiport",
                "--dports",
                "53,4000:4010",
                "-j",
                "MASQUERADE",
                "--help",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("MASQUERADE target options"), "{text}");
        assert!(text.contains("multiport match options"), "{text}");
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        xz2::read::XzEncoder::new(data, 6)
            .read_to_end(&mut v)
            .unwrap();
        v
    }

    #[test]
    fn synthetic_modules() {
        if !have("cpio") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("mods");
        fs::create_dir_all(m.join("kernel/net/netfilter")).unwrap();
        fs::create_dir_all(m.join("kernel/lib")).unwrap();
        fs::create_dir_all(m.join("kernel/drivers/x")).unwrap();
        fs::create_dir_all(m.join("kernel/crypto")).unwrap();
        for (p, body) in [
            ("kernel/net/netfilter/nf_nat.ko.xz", "NAT"),
            ("kernel/net/netfilter/nf_conntrack.ko.xz", "CT"),
            ("kernel/lib/libcrc32c.ko.xz", "CRC"),
            ("kernel/crypto/crc32c_generic.ko.xz", "CRCG"),
            ("kernel/drivers/x/unused.ko.xz", "U"),
            ("kernel/drivers/x/veth.ko.xz", "VETH"),
        ] {
            fs::write(m.join(p), xz(body.as_bytes())).unwrap();
        }
        fs::write(
            m.join("modules.dep"),
            "kernel/net/netfilter/nf_nat.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz kernel/lib/libcrc32c.ko.xz\n\
             kernel/net/netfilter/nf_conntrack.ko.xz: kernel/lib/libcrc32c.ko.xz\n\
             kernel/lib/libcrc32c.ko.xz:\n\
             kernel/crypto/crc32c_generic.ko.xz:\n\
             kernel/drivers/x/unused.ko.xz:\n\
             kernel/drivers/x/veth.ko.xz:\n",
        )
        .unwrap();
        fs::write(
            m.join("modules.alias"),
            "# header\nalias nf-nat nf_nat\nalias crc32c crc32c_generic\nalias pci:v*d* unused\nalias rtnl-link-veth veth\n",
        )
        .unwrap();
        fs::write(
            m.join("modules.softdep"),
            "softdep libcrc32c pre: crc32c\nsoftdep unused pre: veth\n",
        )
        .unwrap();
        fs::write(m.join("modules.builtin"), "kernel/net/ipv4/udp_tunnel.ko\n").unwrap();
        fs::write(
            m.join("modules.order"),
            "kernel/lib/libcrc32c.ko.xz\nkernel/drivers/x/unused.ko.xz\nkernel/net/netfilter/nf_nat.ko.xz\n",
        )
        .unwrap();
        let out = d.path().join("i.cpio");
        let mut spec = InitramfsSpec {
            agent: &agent(),
            files: vec![],
            modules: Some(ModulesSpec {
                dir: m.clone(),
                release: "9.9.9-test".into(),
                wanted: vec!["rtnl-link-veth".into(), "udp_tunnel".into()],
                include_dirs: vec!["kernel/net/netfilter".into()],
            }),
            host_binaries: vec![],
            host_dirs: vec![],
        };
        let stats = build(&spec, &out).unwrap();
        assert_eq!(stats.modules, 5);
        let root = d.path().join("root");
        unpack(&out, &root);
        let g = root.join("lib/modules/9.9.9-test");
        assert_eq!(
            fs::read(g.join("kernel/net/netfilter/nf_nat.ko")).unwrap(),
            b"NAT"
        );
        assert!(!g.join("kernel/drivers/x/unused.ko").exists());
        let dep = fs::read_to_string(g.join("modules.dep")).unwrap();
        assert!(dep.contains("kernel/net/netfilter/nf_nat.ko: kernel/net/netfilter/nf_conntrack.ko kernel/lib/libcrc32c.ko\n"), "{dep}");
        assert!(!dep.contains(".xz"));
        let alias = fs::read_to_string(g.join("modules.alias")).unwrap();
        assert_eq!(alias, "# header\nalias nf-nat nf_nat\nalias crc32c crc32c_generic\nalias rtnl-link-veth veth\n");
        assert_eq!(
            fs::read_to_string(g.join("modules.softdep")).unwrap(),
            "softdep libcrc32c pre: crc32c\n"
        );
        assert_eq!(
            fs::read_to_string(g.join("modules.order")).unwrap(),
            "kernel/lib/libcrc32c.ko\nkernel/net/netfilter/nf_nat.ko\n"
        );
        // The guest-side index works on the rewritten tree.
        let idx = ModuleIndex::load(&g).unwrap();
        assert_eq!(
            idx.load_order(&["nf-nat"]).unwrap(),
            [
                "kernel/crypto/crc32c_generic.ko",
                "kernel/lib/libcrc32c.ko",
                "kernel/net/netfilter/nf_conntrack.ko",
                "kernel/net/netfilter/nf_nat.ko"
            ]
        );
        assert_eq!(idx.resolve("udp-tunnel"), modules::Resolved::Builtin);

        // Unknown wanted module: clear error naming it.
        if let Some(ms) = spec.modules.as_mut() {
            ms.wanted = vec!["wireguard".into(), "veth".into()];
        }
        let err = build(&spec, &out).unwrap_err().to_string();
        assert!(err.contains("wireguard") && !err.contains("veth"), "{err}");
    }

    /// A real module tree: $NATVET_TEST_MODULES_DIR, /lib/modules/*, or the
    /// natvet kernel cache.
    fn real_module_trees() -> Vec<PathBuf> {
        if let Some(d) = std::env::var_os("NATVET_TEST_MODULES_DIR") {
            return std::env::split_paths(&d).collect();
        }
        let mut v = Vec::new();
        let mut roots = vec![PathBuf::from("/lib/modules")];
        if let Some(home) = std::env::var_os("HOME") {
            let cache = Path::new(&home).join(".cache/natvet/kernels");
            if let Ok(rd) = fs::read_dir(cache) {
                for e in rd.filter_map(Result::ok) {
                    roots.push(e.path().join("root/lib/modules"));
                    roots.push(e.path().join("root/usr/lib/modules"));
                }
            }
        }
        for r in roots {
            if let Ok(rd) = fs::read_dir(&r) {
                for e in rd.filter_map(Result::ok) {
                    if e.path().join("modules.dep").exists() {
                        v.push(e.path());
                    }
                }
            }
        }
        v.sort();
        v
    }

    #[test]
    fn real_module_tree_sizes() {
        let trees = real_module_trees();
        if trees.is_empty() {
            eprintln!("note: no real module tree (set NATVET_TEST_MODULES_DIR), skipping");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        for dir in trees {
            let release = dir
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let idx = ModuleIndex::load(&dir).unwrap();
            for a in [
                "nft-chain-2-nat",
                "nf-nat",
                "fs-9p",
                "rtnl-link-veth",
                "wireguard",
            ] {
                assert_ne!(idx.resolve(a), modules::Resolved::Unknown, "{release}: {a}");
            }
            let wanted: Vec<String> = [
                "wireguard",
                "veth",
                "nf_tables",
                "nft_chain_nat",
                "nft_masq",
                "nft_redir",
                "nf_conntrack",
                "nft_ct",
                "iptable_nat",
                "xt_MASQUERADE",
                "xt_REDIRECT",
                "xt_multiport",
                "nfnetlink_queue",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            for include in [false, true] {
                let include_dirs = if include {
                    [
                        "kernel/net/netfilter",
                        "kernel/net/ipv4/netfilter",
                        "kernel/net/ipv6/netfilter",
                        "kernel/drivers/net/wireguard",
                    ]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
                } else {
                    vec![]
                };
                let out = d.path().join("i.cpio");
                let spec = InitramfsSpec {
                    agent: &agent(),
                    files: vec![],
                    modules: Some(ModulesSpec {
                        dir: dir.clone(),
                        release: release.clone(),
                        wanted: wanted.clone(),
                        include_dirs,
                    }),
                    host_binaries: vec![],
                    host_dirs: vec![],
                };
                let s = build(&spec, &out).unwrap();
                let agent_len = fs::metadata(agent()).map(|m| m.len()).unwrap_or(0);
                eprintln!(
                    "{release}: netfilter dirs={include}: {} modules, {} files, {:.2} MiB without the agent ({:.1} MiB with this {:.1} MiB test binary as agent), built in {:?}",
                    s.modules,
                    s.files,
                    s.bytes.saturating_sub(agent_len) as f64 / 1048576.0,
                    s.bytes as f64 / 1048576.0,
                    agent_len as f64 / 1048576.0,
                    s.elapsed,
                );
                assert!(s.modules >= 10);
                if include && have("cpio") {
                    // The unpacked tree is self-consistent: every module in
                    // the closure of the on-demand aliases is a plain ELF.
                    let root = d.path().join(format!("root-{release}"));
                    unpack(&out, &root);
                    let g = root.join("lib/modules").join(&release);
                    let gi = ModuleIndex::load(&g).unwrap();
                    assert_eq!(gi.len(), s.modules);
                    let order = gi
                        .load_order(&["nft-chain-2-nat", "nf-nat", "wireguard", "veth"])
                        .unwrap();
                    assert!(order.iter().any(|p| p.ends_with("/nf_nat.ko")));
                    for rel in &order {
                        let b = fs::read(g.join(rel)).unwrap();
                        assert!(b.starts_with(b"\x7fELF"), "{rel}");
                    }
                    eprintln!("{release}: guest load order for nat+wireguard+veth: {order:?}");
                }
            }
        }
    }
}

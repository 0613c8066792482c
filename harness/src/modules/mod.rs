//! Kernel module index (modules.dep / modules.alias / modules.builtin /
//! modules.softdep), used on the host to choose which modules go into the
//! initramfs and in the guest to load them. By job: this file reads the index
//! and resolves names; `closure` orders a module's dependencies; `load` (the
//! guest) loads modules with `init_module(2)`; `modprobe` (the guest) is the
//! minimal `modprobe` for the kernel's on-demand `request_module()`.
//!
//! Lookup follows kmod's order: a module name from modules.dep, then
//! modules.alias (shell globs allowed), then modules.builtin and the aliases
//! of built-in modules (modules.builtin.modinfo). Module names treat `-` and
//! `_` as equal; aliases do too, except inside `[...]` classes.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

mod closure;
mod load;
pub mod modprobe;

pub use load::{init_module, load_modules, LoadReport};

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unknown kernel modules (not in modules.dep, modules.alias or modules.builtin): {}", .0.join(", "))]
    Unknown(Vec<String>),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ModuleError + '_ {
    move |source| ModuleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Result of resolving a module name or alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A loadable module (the first match, if an alias matches several).
    Module(String),
    /// Built into the kernel: nothing to load.
    Builtin,
    Unknown,
}

#[derive(Debug, Clone)]
struct ModEntry {
    /// Path relative to the modules directory, as written in modules.dep.
    path: String,
    /// Dependency paths, as written in modules.dep.
    deps: Vec<String>,
}

#[derive(Debug, Default, Clone)]
struct SoftDep {
    pre: Vec<String>,
    post: Vec<String>,
}

#[derive(Debug, Default)]
struct AliasTable {
    /// Normalised alias -> (file position, module) for patterns without globs.
    exact: HashMap<String, Vec<(usize, String)>>,
    /// (file position, normalised pattern, module) for glob patterns.
    globs: Vec<(usize, String, String)>,
    count: usize,
}

impl AliasTable {
    fn add(&mut self, pattern: &str, module: &str) {
        let pos = self.count;
        self.count += 1;
        let pat = normalise_alias(pattern);
        let module = normalise_name(module);
        if pat.contains(['*', '?', '[']) {
            self.globs.push((pos, pat, module));
        } else {
            self.exact.entry(pat).or_default().push((pos, module));
        }
    }

    /// All modules whose alias matches, in file order, without duplicates.
    fn lookup(&self, alias: &str) -> Vec<String> {
        let key = normalise_alias(alias);
        let mut hits: Vec<(usize, &str)> = Vec::new();
        if let Some(v) = self.exact.get(&key) {
            hits.extend(v.iter().map(|(p, m)| (*p, m.as_str())));
        }
        for (pos, pat, m) in &self.globs {
            if glob_match(pat.as_bytes(), key.as_bytes()) {
                hits.push((*pos, m.as_str()));
            }
        }
        hits.sort();
        let mut seen = HashSet::new();
        hits.into_iter()
            .filter(|(_, m)| seen.insert(*m))
            .map(|(_, m)| m.to_string())
            .collect()
    }
}

/// Parsed module metadata of one kernel release.
#[derive(Debug)]
pub struct ModuleIndex {
    dir: PathBuf,
    modules: HashMap<String, ModEntry>,
    /// Module names in modules.dep order.
    order: Vec<String>,
    aliases: AliasTable,
    builtin: HashSet<String>,
    builtin_aliases: AliasTable,
    softdeps: HashMap<String, SoftDep>,
}

/// `nf-conntrack` -> `nf_conntrack`.
pub fn normalise_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Like kmod's alias_normalize: `-` becomes `_` except inside `[...]`.
fn normalise_alias(alias: &str) -> String {
    let mut out = String::with_capacity(alias.len());
    let mut in_class = false;
    for c in alias.chars() {
        match c {
            '[' => in_class = true,
            ']' => in_class = false,
            '-' if !in_class => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// Module name of a module path: `kernel/net/netfilter/nf_nat.ko.xz` -> `nf_nat`.
pub fn name_from_path(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = match base.rfind(".ko") {
        Some(i) => &base[..i],
        None => base,
    };
    normalise_name(stem)
}

/// Parses a bracket expression starting at `p[start] == b'['`. Returns whether
/// `c` matches and the index after the closing `]`, or None if unterminated.
fn match_class(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&h| h != b']') {
            let hi = p[i + 2];
            if lo <= c && c <= hi {
                matched = true;
            }
            i += 3;
        } else {
            if lo == c {
                matched = true;
            }
            i += 1;
        }
    }
}

/// fnmatch(3) without flags: `*`, `?`, `[...]` (with `!`/`^`), `\` escapes.
pub fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => match match_class(p, pi, s[si]) {
                    Some((true, next)) => {
                        pi = next;
                        si += 1;
                        continue;
                    }
                    Some((false, _)) => {}
                    None => {
                        if s[si] == b'[' {
                            pi += 1;
                            si += 1;
                            continue;
                        }
                    }
                },
                b'\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == s[si] {
                        pi += 2;
                        si += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[si] {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, ModuleError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = &str> {
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Parses one modules.dep line into (path, deps).
pub fn parse_dep_line(line: &str) -> Option<(&str, Vec<&str>)> {
    let (path, deps) = line.split_once(':')?;
    let path = path.trim();
    if path.is_empty() {
        return None;
    }
    Some((path, deps.split_whitespace().collect()))
}

/// Parses one modules.softdep line: `softdep MOD pre: a b post: c`.
fn parse_softdep_line(line: &str) -> Option<(String, SoftDep)> {
    let mut toks = line.split_whitespace();
    if toks.next()? != "softdep" {
        return None;
    }
    let module = normalise_name(toks.next()?);
    let mut sd = SoftDep::default();
    // Like kmod, words before the first `pre:`/`post:` are ignored.
    let mut mode = 0u8;
    for t in toks {
        match t {
            "pre:" => mode = 1,
            "post:" => mode = 2,
            w if mode == 1 => sd.pre.push(w.to_string()),
            w if mode == 2 => sd.post.push(w.to_string()),
            _ => {}
        }
    }
    Some((module, sd))
}

/// Module name that a modules.softdep line is about.
pub fn softdep_line_module(line: &str) -> Option<String> {
    parse_softdep_line(line).map(|(m, _)| m)
}

impl ModuleIndex {
    /// Loads `modules.dep` (required), `modules.alias`, `modules.builtin`,
    /// `modules.builtin.modinfo` and `modules.softdep` (optional).
    pub fn load(modules_dir: &Path) -> Result<ModuleIndex, ModuleError> {
        let dep_path = modules_dir.join("modules.dep");
        let dep = fs::read(&dep_path).map_err(io_err(&dep_path))?;
        let mut modules = HashMap::new();
        let mut order = Vec::new();
        for line in lines(&dep) {
            if let Some((path, deps)) = parse_dep_line(line) {
                let name = name_from_path(path);
                if !modules.contains_key(&name) {
                    order.push(name.clone());
                }
                modules.insert(
                    name,
                    ModEntry {
                        path: path.to_string(),
                        deps: deps.into_iter().map(str::to_string).collect(),
                    },
                );
            }
        }

        let mut aliases = AliasTable::default();
        if let Some(b) = read_optional(&modules_dir.join("modules.alias"))? {
            for line in lines(&b) {
                let mut t = line.split_whitespace();
                if let (Some("alias"), Some(pat), Some(m)) = (t.next(), t.next(), t.next()) {
                    aliases.add(pat, m);
                }
            }
        }

        let mut builtin = HashSet::new();
        if let Some(b) = read_optional(&modules_dir.join("modules.builtin"))? {
            builtin.extend(lines(&b).map(name_from_path));
        }
        let mut builtin_aliases = AliasTable::default();
        if let Some(b) = read_optional(&modules_dir.join("modules.builtin.modinfo"))? {
            for rec in b.split(|&c| c == 0) {
                let Ok(rec) = std::str::from_utf8(rec) else {
                    continue;
                };
                if let Some((key, value)) = rec.split_once('=') {
                    if let Some((m, "alias")) = key.split_once('.') {
                        builtin_aliases.add(value, m);
                        builtin.insert(normalise_name(m));
                    }
                }
            }
        }

        let mut softdeps: HashMap<String, SoftDep> = HashMap::new();
        if let Some(b) = read_optional(&modules_dir.join("modules.softdep"))? {
            for line in lines(&b) {
                if let Some((m, sd)) = parse_softdep_line(line) {
                    let e = softdeps.entry(m).or_default();
                    e.pre.extend(sd.pre);
                    e.post.extend(sd.post);
                }
            }
        }

        Ok(ModuleIndex {
            dir: modules_dir.to_path_buf(),
            modules,
            order,
            aliases,
            builtin,
            builtin_aliases,
            softdeps,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of loadable modules in modules.dep.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// (name, relative path) of every loadable module, in modules.dep order.
    pub fn modules(&self) -> impl Iterator<Item = (&str, &str)> {
        self.order
            .iter()
            .filter_map(|n| self.modules.get(n).map(|e| (n.as_str(), e.path.as_str())))
    }

    /// Relative path of a module by (normalised) name.
    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.modules
            .get(&normalise_name(name))
            .map(|e| e.path.as_str())
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalise_name(name))
    }

    /// All loadable modules a name or alias stands for (modprobe loads all of
    /// them). Empty for built-in and unknown names.
    pub fn candidates(&self, name_or_alias: &str) -> Vec<String> {
        let name = normalise_name(name_or_alias);
        if self.modules.contains_key(&name) {
            return vec![name];
        }
        self.aliases
            .lookup(name_or_alias)
            .into_iter()
            .filter(|m| self.modules.contains_key(m))
            .collect()
    }

    pub fn resolve(&self, name_or_alias: &str) -> Resolved {
        if let Some(m) = self.candidates(name_or_alias).into_iter().next() {
            return Resolved::Module(m);
        }
        if self.is_builtin(name_or_alias) || !self.builtin_aliases.lookup(name_or_alias).is_empty()
        {
            return Resolved::Builtin;
        }
        // An alias pointing at a built-in module (listed in modules.alias but
        // without a .ko) is built in too.
        if self
            .aliases
            .lookup(name_or_alias)
            .iter()
            .any(|m| self.builtin.contains(m))
        {
            return Resolved::Builtin;
        }
        Resolved::Unknown
    }
}

/// Reads a module file and decompresses it if it is xz, zstd or gzip
/// compressed (detected by magic, whatever the extension).
pub fn decompress_module(path: &Path) -> io::Result<Vec<u8>> {
    let raw = fs::read(path)?;
    decompress_bytes(raw).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Decompresses module bytes by magic; plain ELF (or anything else) is
/// returned unchanged.
pub fn decompress_bytes(raw: Vec<u8>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    if raw.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
        xz2::read::XzDecoder::new(&raw[..]).read_to_end(&mut out)?;
    } else if raw.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        out = zstd::stream::decode_all(&raw[..])?;
    } else if raw.starts_with(&[0x1F, 0x8B]) {
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out)?;
    } else {
        return Ok(raw);
    }
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const DEP: &str = "\
kernel/net/netfilter/nf_nat.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/netfilter/nf_conntrack.ko.xz: kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz:
kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz:
kernel/lib/libcrc32c.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/net/netfilter/nft_chain_nat.ko.xz: kernel/net/netfilter/nf_nat.ko.xz kernel/net/netfilter/nf_conntrack.ko.xz kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/9p/9pnet.ko.xz:
kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz
kernel/drivers/usb/storage/usb-storage.ko.xz:
";
    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias nft-chain-2-nat nft_chain_nat
alias nft-chain-10-nat nft_chain_nat
alias nf-nat nf_nat
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias crc32c-generic crc32c_generic
alias fs-9p 9p
alias net-pf-16-proto-12 nfnetlink
alias usb:v13FDp3940d0[0-2]*dc*dsc*dp*ic*isc*ip*in* usb_storage
alias nf-nat-ipv? nf_nat
";
    const BUILTIN: &str = "kernel/net/netfilter/nfnetlink.ko\nkernel/fs/ext4/ext4.ko\n";
    const SOFTDEP: &str = "\
# Soft dependencies extracted from modules themselves.
softdep libcrc32c pre: crc32c
softdep cifs ccm
softdep 9p post: fs-nothing
";

    /// A module tree of ten modules with aliases, built-ins and soft dependencies.
    pub(in crate::modules) fn index() -> (tempfile::TempDir, ModuleIndex) {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("modules.dep"), DEP).unwrap();
        fs::write(d.path().join("modules.alias"), ALIAS).unwrap();
        fs::write(d.path().join("modules.builtin"), BUILTIN).unwrap();
        fs::write(d.path().join("modules.softdep"), SOFTDEP).unwrap();
        fs::write(
            d.path().join("modules.builtin.modinfo"),
            b"ext4.alias=fs-ext4\0ext4.license=GPL\0unix.alias=net-pf-1\0",
        )
        .unwrap();
        let i = ModuleIndex::load(d.path()).unwrap();
        (d, i)
    }

    #[test]
    fn names_and_globs() {
        assert_eq!(
            name_from_path("kernel/net/netfilter/nf_nat.ko.xz"),
            "nf_nat"
        );
        assert_eq!(name_from_path("a/usb-storage.ko"), "usb_storage");
        assert!(glob_match(b"a*b?c", b"axxbyc"));
        assert!(!glob_match(b"a*b?c", b"axxbc"));
        assert!(glob_match(b"d0[0-2]*", b"d01x"));
        assert!(!glob_match(b"d0[0-2]*", b"d03x"));
        assert!(glob_match(b"[!a]", b"b"));
        assert!(!glob_match(b"[!a]", b"a"));
        assert!(glob_match(b"[]]", b"]"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"x[", b"x["));
        assert_eq!(normalise_alias("nf-nat-[a-b]-x"), "nf_nat_[a-b]_x");
    }

    #[test]
    fn resolve() {
        let (_d, i) = index();
        assert_eq!(i.len(), 10);
        assert_eq!(i.resolve("nf-nat"), Resolved::Module("nf_nat".into()));
        assert_eq!(
            i.resolve("nf_conntrack"),
            Resolved::Module("nf_conntrack".into())
        );
        assert_eq!(
            i.resolve("nf-conntrack"),
            Resolved::Module("nf_conntrack".into())
        );
        assert_eq!(
            i.resolve("nft-chain-2-nat"),
            Resolved::Module("nft_chain_nat".into())
        );
        assert_eq!(i.resolve("nf-nat-ipv4"), Resolved::Module("nf_nat".into()));
        assert_eq!(i.resolve("fs-9p"), Resolved::Module("9p".into()));
        assert_eq!(
            i.resolve("usb:v13FDp3940d0100dc00dsc00dp00ic08isc06ip50in00"),
            Resolved::Module("usb_storage".into())
        );
        assert_eq!(i.resolve("net-pf-16-proto-12"), Resolved::Builtin);
        assert_eq!(i.resolve("nfnetlink"), Resolved::Builtin);
        assert_eq!(i.resolve("fs-ext4"), Resolved::Builtin);
        assert_eq!(i.resolve("net-pf-1"), Resolved::Builtin);
        assert_eq!(i.resolve("fs-nothing"), Resolved::Unknown);
        assert_eq!(
            i.path_of("nf-nat"),
            Some("kernel/net/netfilter/nf_nat.ko.xz")
        );
    }

    #[test]
    fn decompress() {
        let d = tempfile::tempdir().unwrap();
        let elf = b"\x7fELF fake module".to_vec();
        let plain = d.path().join("m.ko");
        fs::write(&plain, &elf).unwrap();
        assert_eq!(decompress_module(&plain).unwrap(), elf);

        let mut xz = Vec::new();
        xz2::read::XzEncoder::new(&elf[..], 6)
            .read_to_end(&mut xz)
            .unwrap();
        fs::write(d.path().join("m.ko.xz"), &xz).unwrap();
        assert_eq!(decompress_module(&d.path().join("m.ko.xz")).unwrap(), elf);

        let zst = zstd::stream::encode_all(&elf[..], 3).unwrap();
        fs::write(d.path().join("m.ko.zst"), &zst).unwrap();
        assert_eq!(decompress_module(&d.path().join("m.ko.zst")).unwrap(), elf);

        let mut gz = Vec::new();
        flate2::read::GzEncoder::new(&elf[..], flate2::Compression::default())
            .read_to_end(&mut gz)
            .unwrap();
        fs::write(d.path().join("m.ko.gz"), &gz).unwrap();
        assert_eq!(decompress_module(&d.path().join("m.ko.gz")).unwrap(), elf);

        // Truncated xz is an error, not garbage.
        fs::write(d.path().join("bad.ko.xz"), &xz[..xz.len() / 2]).unwrap();
        assert!(decompress_module(&d.path().join("bad.ko.xz")).is_err());
    }
}

//! A relay bundle: a folder with `relay.toml` (the manifest) and the files
//! it names, captured from a production relay or
//! written by hand. Everything in it is untrusted input: read, bounded and
//! validated here, before any VM boots; each mistake names its file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::nat::BackendKind;
use crate::types::{Family, IpNet, PortRange};

/// The manifest's file name inside a bundle.
pub const MANIFEST: &str = "relay.toml";

/// The largest file a bundle may hold: production rulesets of a few
/// thousand rules are some hundreds of KiB.
pub const MAX_FILE: u64 = 4 * 1024 * 1024;

/// The manifest, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Short name: lower-case letters, digits and '-'.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The tool that loads the ruleset (as the relay's boot does).
    pub backend: BackendKind,
    /// When and where it was captured (for people; natvet does not read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured: Option<String>,
    /// Whether `--redact` mapped the addresses onto documentation ranges.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
    pub ruleset: RulesetFiles,
    /// A file of `net.* = value` lines (`sysctl -p` form) applied in the
    /// relay's namespace before the ruleset loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sysctls: Option<PathBuf>,
    pub interfaces: Interfaces,
    /// The relay's routes and policy rules as `ip route` / `ip rule` print
    /// them: recorded for people and for forensics; the test network has
    /// gateways of its own, so they are not applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// What the relay promises its clients, whatever the ruleset does: the
    /// UDP ports that must reach WireGuard. Capture writes the ports the
    /// captured ruleset redirects; keep them when editing the ruleset, so
    /// that a change that loses a range fails that range's checks.
    #[serde(default)]
    pub expect: Expect,
}

/// The ruleset's files, relative to the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesetFiles {
    /// `nft list ruleset` (backend nftables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nft: Option<PathBuf>,
    /// `iptables-save` (iptables backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<PathBuf>,
    /// `ip6tables-save` (iptables backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interfaces {
    /// Where the clients' WireGuard packets arrive.
    pub public: Interface,
    /// Where masqueraded traffic leaves; default: the public interface
    /// (most relays have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wan: Option<Interface>,
    pub wireguard: WireGuard,
    /// Interfaces the ruleset names that carry no client traffic (a
    /// management or container network): known, not built.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    pub addresses: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuard {
    pub name: String,
    pub addresses: Vec<IpNet>,
    pub listen_port: u16,
    /// How many peers production has (for people; the test has its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub udp_ports: Vec<PortRange>,
}

/// A bundle read from disk: the manifest and the text of each file, with
/// the name to cite it by.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// (family, file as cited, text): one `nft` script for both families, or
    /// one iptables-save text per family.
    pub rulesets: Vec<(Option<Family>, String, String)>,
    /// (key, value, line) from the sysctls file, and that file as cited.
    pub sysctls: Vec<(String, String, usize)>,
    pub sysctls_file: String,
}

/// A bundle that cannot be used: the file, the line where known, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct BundleError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl BundleError {
    pub fn new(file: impl Into<String>, line: Option<usize>, message: impl Into<String>) -> Self {
        BundleError {
            file: file.into(),
            line,
            message: message.into(),
        }
    }
}

impl Interfaces {
    pub fn wan(&self) -> &Interface {
        self.wan.as_ref().unwrap_or(&self.public)
    }

    /// Whether clients arrive and masqueraded traffic leaves by one interface.
    pub fn single(&self) -> bool {
        self.wan().name == self.public.name
    }
}

impl Bundle {
    /// Read the bundle in `dir` (or the folder of a `relay.toml` given).
    pub fn load(path: &Path) -> Result<Bundle, BundleError> {
        let dir = if path.is_file() {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            path.to_path_buf()
        };
        let manifest_path = dir.join(MANIFEST);
        let cite = |p: &Path| p.display().to_string();
        if !manifest_path.is_file() {
            return Err(BundleError::new(
                cite(&manifest_path),
                None,
                format!("a relay bundle is a folder with a {MANIFEST}; start from relays/example-iptables (or relays/example-nftables) and put in your relay's ruleset, sysctls and interfaces"),
            ));
        }
        let text = read_bounded(&manifest_path)?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            BundleError::new(cite(&manifest_path), line, e.message().to_string())
        })?;
        let at = |key: &str| line_of(&text, key);
        let bad = |key: &str, msg: String| BundleError::new(cite(&manifest_path), at(key), msg);
        let valid_name = !manifest.name.is_empty()
            && manifest.name.len() <= 40
            && manifest
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_name {
            return Err(bad(
                "name",
                format!(
                    "name '{}' must be 1-40 lower-case letters, digits and '-'",
                    manifest.name
                ),
            ));
        }
        manifest.validate_interfaces().map_err(|(k, m)| bad(k, m))?;

        let file = |rel: &Path, key: &str| -> Result<(String, String), BundleError> {
            if rel.is_absolute() || rel.components().any(|c| c.as_os_str() == "..") {
                return Err(bad(
                    key,
                    format!(
                        "{} must be a path inside the bundle (no '/' at the start, no '..')",
                        rel.display()
                    ),
                ));
            }
            let p = dir.join(rel);
            Ok((cite(&p), read_bounded(&p)?))
        };
        let r = &manifest.ruleset;
        let rulesets = match (manifest.backend, &r.nft, &r.ipv4, &r.ipv6) {
            (BackendKind::Nftables, Some(nft), None, None) => {
                let (c, t) = file(nft, "nft")?;
                vec![(None, c, t)]
            }
            (BackendKind::Nftables, _, _, _) => {
                return Err(bad(
                    "[ruleset]",
                    "backend nftables loads one `nft list ruleset` file: give [ruleset] nft = \"FILE\" and no ipv4/ipv6 (those are iptables-save files)".into(),
                ))
            }
            (_, None, v4, v6) if v4.is_some() || v6.is_some() => {
                let mut v = Vec::new();
                if let Some(p) = v4 {
                    let (c, t) = file(p, "ipv4")?;
                    v.push((Some(Family::Ipv4), c, t));
                }
                if let Some(p) = v6 {
                    let (c, t) = file(p, "ipv6")?;
                    v.push((Some(Family::Ipv6), c, t));
                }
                v
            }
            (b, _, _, _) => {
                return Err(bad(
                    "[ruleset]",
                    format!("backend {b} loads iptables-save files: give [ruleset] ipv4 = \"FILE\" (iptables-save) and/or ipv6 = \"FILE\" (ip6tables-save), not nft"),
                ))
            }
        };
        let (sysctls, sysctls_file) = match &manifest.sysctls {
            Some(rel) => {
                let (c, t) = file(rel, "sysctls")?;
                (parse_sysctls(&t, &c, &manifest)?, c)
            }
            None => (vec![], String::new()),
        };
        Ok(Bundle {
            dir,
            manifest,
            rulesets,
            sysctls,
            sysctls_file,
        })
    }

    /// The families the relay serves: those its public and tunnel
    /// interfaces both have addresses of.
    pub fn families(&self) -> Vec<Family> {
        let i = &self.manifest.interfaces;
        let has = |a: &[IpNet], f: Family| a.iter().any(|n| n.family() == f);
        [Family::Ipv4, Family::Ipv6]
            .into_iter()
            .filter(|f| {
                has(&i.public.addresses, *f)
                    && has(&i.wan().addresses, *f)
                    && has(&i.wireguard.addresses, *f)
            })
            .collect()
    }

    /// The interface names the relay has.
    pub fn interface_names(&self) -> Vec<&str> {
        let i = &self.manifest.interfaces;
        let mut v = vec![i.public.name.as_str(), i.wireguard.name.as_str(), "lo"];
        if !i.single() {
            v.push(i.wan().name.as_str());
        }
        v
    }
}

impl Manifest {
    fn validate_interfaces(&self) -> Result<(), (&'static str, String)> {
        let i = &self.interfaces;
        let mut names: Vec<&str> = vec![&i.public.name, &i.wireguard.name];
        if let Some(w) = &i.wan {
            names.push(&w.name);
        }
        for n in &names {
            if !valid_ifname(n) {
                return Err((
                    "name",
                    format!("interface name '{n}' is not one Linux accepts: 1-15 characters, no '/', ':', whitespace or quotes"),
                ));
            }
        }
        if i.wireguard.name == i.public.name
            || i.wan.as_ref().is_some_and(|w| w.name == i.wireguard.name)
        {
            return Err((
                "[interfaces.wireguard]",
                format!(
                    "the WireGuard interface '{}' cannot also be the public or wan interface",
                    i.wireguard.name
                ),
            ));
        }
        if i.wireguard.listen_port == 0 {
            return Err(("listen_port", "listen_port must be 1-65535".into()));
        }
        let v4 = |a: &[IpNet]| a.iter().any(|n| n.family() == Family::Ipv4);
        for (what, a) in [
            ("[interfaces.public]", &i.public.addresses),
            ("[interfaces.wireguard]", &i.wireguard.addresses),
        ] {
            if !v4(a) {
                return Err((what, format!("{what} needs an IPv4 address with its prefix (\"203.0.113.10/24\"): the checks run over IPv4 at least")));
            }
            if a.len() > 8 {
                return Err((what, format!("{what} has {} addresses; natvet uses the first of each family, give at most 8", a.len())));
            }
            for n in a.iter() {
                let hosts_free = match n.family() {
                    Family::Ipv4 => n.prefix <= 29,
                    Family::Ipv6 => n.prefix <= 125,
                };
                if !hosts_free {
                    return Err((what, format!("{n}: the test network puts the client (or the gateway) beside the relay in this subnet, so it needs room for a few hosts: a prefix of /29 or shorter (/125 for IPv6)")));
                }
            }
        }
        for n in &i.wireguard.addresses {
            let max_prefix = match n.family() {
                Family::Ipv4 => 24,
                Family::Ipv6 => 112,
            };
            let host = match (n.addr, n.network().addr) {
                (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
                    u128::from(u32::from(a) - u32::from(b))
                }
                (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => u128::from(a) - u128::from(b),
                _ => 0,
            };
            if n.prefix > max_prefix || host >= 16 || host == 0 {
                return Err(("[interfaces.wireguard]", format!("{n}: the test's extra clients take host numbers 16 and up of the relay's tunnel network, so it needs a prefix of /{max_prefix} or shorter and the relay one of the first 15 addresses (production relays have 10.64.0.1/10 and the like)")));
            }
        }
        if let Some(w) = &i.wan {
            if w.name != i.public.name && !v4(&w.addresses) {
                return Err((
                    "[interfaces.wan]",
                    "[interfaces.wan] needs an IPv4 address with its prefix".into(),
                ));
            }
        }
        for mtu in [i.public.mtu, i.wan().mtu, i.wireguard.mtu]
            .into_iter()
            .flatten()
        {
            if !(1280..=9000).contains(&mtu) {
                return Err(("mtu", format!("mtu {mtu} must be 1280-9000")));
            }
        }
        if self.expect.udp_ports.len() > 64 {
            return Err((
                "udp_ports",
                "[expect] udp_ports holds at most 64 ranges".into(),
            ));
        }
        if self.routes.len() + self.rules.len() > 4096 {
            return Err((
                "routes",
                "at most 4096 routes and rules are recorded".into(),
            ));
        }
        Ok(())
    }
}

/// Whether Linux takes `n` as an interface name.
pub fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n != "."
        && n != ".."
        && n.chars()
            .all(|c| c.is_ascii_graphic() && !"/:\"'\\".contains(c))
}

/// The first line of `text` that mentions `key` (1-based).
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(key)).map(|i| i + 1)
}

fn read_bounded(p: &Path) -> Result<String, BundleError> {
    let cite = p.display().to_string();
    let meta = std::fs::metadata(p)
        .map_err(|e| BundleError::new(&cite, None, format!("cannot read it: {e}")))?;
    if meta.len() > MAX_FILE {
        return Err(BundleError::new(
            &cite,
            None,
            format!(
                "{} bytes: a bundle's files are at most {MAX_FILE} bytes",
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(p)
        .map_err(|e| BundleError::new(&cite, None, format!("cannot read it: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        BundleError::new(&cite, Some(line), "not UTF-8 text")
    })
}

/// Kernel-wide sysctls that a namespace cannot set: a bundle holding them
/// says so before anything boots (they would change the whole guest, which
/// natvet does only through a scenario's [kernel] table).
const GLOBAL_SYSCTLS: &[&str] = &[
    "net.core.rmem_max",
    "net.core.wmem_max",
    "net.core.rmem_default",
    "net.core.wmem_default",
    "net.core.netdev_max_backlog",
    "net.core.optmem_max",
    "net.netfilter.nf_conntrack_buckets",
    "net.nf_conntrack_max",
];

/// `sysctl -p` lines: `key = value`, `#` and `;` comments.
fn parse_sysctls(
    text: &str,
    file: &str,
    manifest: &Manifest,
) -> Result<Vec<(String, String, usize)>, BundleError> {
    let i = &manifest.interfaces;
    let ifaces: Vec<&str> = [
        i.public.name.as_str(),
        i.wan().name.as_str(),
        "all",
        "default",
        "lo",
    ]
    .to_vec();
    let mut out: Vec<(String, String, usize)> = Vec::new();
    let mut seen = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        let err = |m: String| BundleError::new(file, Some(line), m);
        let Some((k, v)) = l.split_once('=') else {
            return Err(err(format!("'{l}' is not `key = value`")));
        };
        let (k, v) = (k.trim().trim_start_matches('-'), v.trim());
        let k = k.replace('/', ".");
        if !crate::scenario::topology::is_net_sysctl(&k) {
            return Err(err(format!(
                "{k}: only net.* sysctls are applied (in the relay's namespace); leave the others out of the bundle"
            )));
        }
        if GLOBAL_SYSCTLS.contains(&k.as_str()) {
            return Err(err(format!(
                "{k} is kernel-wide, not per network namespace: natvet cannot apply it to the relay alone; drop the line (or set it in a scenario's [kernel] table)"
            )));
        }
        if let Some(rest) = k
            .strip_prefix("net.ipv4.conf.")
            .or_else(|| k.strip_prefix("net.ipv6.conf."))
            .or_else(|| k.strip_prefix("net.ipv4.neigh."))
            .or_else(|| k.strip_prefix("net.ipv6.neigh."))
        {
            let iface = rest.rsplit_once('.').map(|(i, _)| i).unwrap_or(rest);
            if !ifaces.contains(&iface) {
                return Err(err(format!(
                    "{k} names interface '{iface}', which the manifest does not have (the relay's are {}, plus all, default and lo; WireGuard's own come up after the sysctls)",
                    [i.public.name.as_str(), i.wan().name.as_str()].join(", ")
                )));
            }
        }
        if v.is_empty() || v.len() > 256 || v.chars().any(|c| c.is_control() && c != '\t') {
            return Err(err(format!(
                "{k}: value '{v}' must be 1-256 printable characters"
            )));
        }
        if out.len() >= 512 {
            return Err(err(
                "more than 512 sysctls; keep the ones that matter for forwarding".into(),
            ));
        }
        if let Some(prev) = seen.insert(k.clone(), line) {
            return Err(err(format!("{k} is set twice (first on line {prev})")));
        }
        out.push((k, v.split_whitespace().collect::<Vec<_>>().join(" "), line));
    }
    Ok(out)
}

//! The kernel modules a `natvet verify` run would make the host's kernel
//! load (they stay loaded after the run ends), and whether that can happen.
//!
//! What the run does maps to modules construct by construct: every ruleset
//! it would apply is read for what it uses (an nftables `masquerade` is
//! nft_masq, an iptables `-m multiport` is xt_multiport, iptables-legacy's
//! `*nat` table is iptable_nat, ...), and the topology adds its links (veth,
//! wireguard), the conntrack tool (nf_conntrack_netlink) and packet captures
//! (af_packet). Each need carries the names the kernel (or the tool) asks
//! modprobe for; the host's own module index resolves them to this kernel's
//! modules and their dependencies, as modprobe would.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::modules::{name_from_path, normalise_name, ModuleIndex, Resolved};
use crate::nat::BackendKind;
use crate::protocol::CaptureMode;
use crate::scenario::Scenario;
use crate::types::Family;

/// A module the run uses, and what uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// The module, as the kernels natvet supports (5.10 on) name it.
    pub module: String,
    /// What the kernel or the tool asks modprobe for, in the order it asks
    /// (an alias such as `nft-expr-masq`, or the module's name).
    pub requests: Vec<String>,
    /// What in the run uses it ("nftables masquerade in the relay").
    pub used_by: String,
}

/// Needs in the order found, one per module (the first use names it).
#[derive(Debug, Default)]
struct Needs(Vec<Need>);

impl Needs {
    fn add(&mut self, module: &str, requests: &[String], used_by: &str) {
        let module = normalise_name(module);
        if self.0.iter().any(|n| n.module == module) {
            return;
        }
        let mut requests = requests.to_vec();
        if !requests.contains(&module) {
            requests.push(module.clone());
        }
        self.0.push(Need {
            module,
            requests,
            used_by: used_by.to_string(),
        });
    }

    /// A module asked for by its own name.
    fn named(&mut self, module: &str, used_by: &str) {
        self.add(module, &[], used_by);
    }
}

/// netfilter's protocol family numbers (NFPROTO_*), which the kernel puts in
/// the names it asks modprobe for (`nft-chain-2-nat`).
fn nfproto(family: &str) -> u8 {
    match family {
        "inet" => 1,
        "arp" => 3,
        "netdev" => 5,
        "bridge" => 7,
        "ip6" => 10,
        _ => 2,
    }
}

const NFT_FAMILIES: [&str; 6] = ["ip", "ip6", "inet", "arp", "bridge", "netdev"];

/// An nftables expression by its kernel name (`masq`), as nf_tables asks
/// for it: family-specific first, then generic.
fn nft_expr(n: &mut Needs, module: &str, expr: &str, family: u8, used_by: &str) {
    let requests = [
        format!("nft-expr-{family}-{expr}"),
        format!("nft-expr-{expr}"),
    ];
    n.add(module, &requests, used_by);
}

/// nf_tables itself, and the netlink family the nft tools speak.
fn nf_tables(n: &mut Needs, used_by: &str) {
    n.add("nfnetlink", &["net-pf-16-proto-12".into()], used_by);
    n.add("nf_tables", &["nfnetlink-subsys-10".into()], used_by);
}

/// What NAT needs beneath its expressions (their dependencies, named so that
/// a host without a module index still hears of them).
fn nat_core(n: &mut Needs, used_by: &str) {
    n.named("nf_nat", used_by);
    n.named("nf_conntrack", used_by);
}

/// An nftables script's tokens, line by line: comments and quoted strings
/// (interface names) dropped, punctuation split off.
fn nft_lines(script: &str) -> Vec<Vec<String>> {
    script
        .lines()
        .map(|line| {
            let mut text = String::new();
            let mut quoted = false;
            for c in line.chars() {
                match c {
                    '"' => quoted = !quoted,
                    '#' if !quoted => break,
                    _ if quoted => {}
                    '{' | '}' | '(' | ')' | ',' | ';' | '@' | ':' | '=' => text.push(' '),
                    c => text.push(c),
                }
            }
            text.split_whitespace().map(str::to_string).collect()
        })
        .filter(|t: &Vec<String>| !t.is_empty())
        .collect()
}

/// The modules an nftables script uses, construct by construct.
fn nft_needs(n: &mut Needs, script: &str, used_by: &str) {
    let lines = nft_lines(script);
    if lines.is_empty() {
        return;
    }
    nf_tables(n, used_by);
    let mut family = "ip";
    for t in &lines {
        let has = |w: &str| t.iter().any(|x| x == w);
        // `table ip6 natvet {`, `add rule inet t c ...`: the family that follows.
        for w in t.windows(2) {
            if ["table", "chain", "rule", "set", "map", "flowtable"].contains(&w[0].as_str()) {
                if let Some(f) = NFT_FAMILIES.iter().find(|f| **f == w[1]) {
                    family = f;
                }
            }
        }
        let f = nfproto(family);
        let what = |w: &str| format!("nftables {w} ({used_by})");
        if has("type") && has("hook") && has("nat") {
            n.add(
                "nft_chain_nat",
                &[format!("nft-chain-{f}-nat")],
                &what("NAT chain"),
            );
            nat_core(n, &what("NAT chain"));
        }
        let exprs: [(&str, &str, &str); 13] = [
            ("masquerade", "nft_masq", "masq"),
            ("redirect", "nft_redir", "redir"),
            ("dnat", "nft_nat", "nat"),
            ("snat", "nft_nat", "nat"),
            ("counter", "nft_counter", "counter"),
            ("ct", "nft_ct", "ct"),
            ("notrack", "nft_ct", "notrack"),
            ("log", "nft_log", "log"),
            ("limit", "nft_limit", "limit"),
            ("quota", "nft_quota", "quota"),
            ("queue", "nft_queue", "queue"),
            ("numgen", "nft_numgen", "numgen"),
            ("socket", "nft_socket", "socket"),
        ];
        for (word, module, expr) in exprs {
            if has(word) {
                nft_expr(n, module, expr, f, &what(word));
            }
        }
        for (word, module, expr) in [
            ("jhash", "nft_hash", "hash"),
            ("symhash", "nft_hash", "hash"),
            ("tproxy", "nft_tproxy", "tproxy"),
            ("synproxy", "nft_synproxy", "synproxy"),
            ("osf", "nft_osf", "osf"),
            ("ipsec", "nft_xfrm", "xfrm"),
            ("fwd", "nft_fwd_netdev", "fwd"),
        ] {
            if has(word) {
                nft_expr(n, module, expr, f, &what(word));
            }
        }
        // Expressions with a module per family.
        let per_family = |base: &str| match family {
            "ip6" => format!("{base}_ipv6"),
            "inet" => format!("{base}_inet"),
            "netdev" => format!("{base}_netdev"),
            _ => format!("{base}_ipv4"),
        };
        for (word, base, expr) in [
            ("reject", "nft_reject", "reject"),
            ("fib", "nft_fib", "fib"),
            ("dup", "nft_dup", "dup"),
        ] {
            if has(word) {
                nft_expr(n, &per_family(base), expr, f, &what(word));
            }
        }
        if has("ct") && has("count") {
            nft_expr(n, "nft_connlimit", "connlimit", f, &what("ct count"));
        }
        if has("ct") || has("masquerade") || has("redirect") || has("dnat") || has("snat") {
            n.named("nf_conntrack", &what("connection tracking"));
        }
        if has("masquerade") || has("redirect") || has("dnat") || has("snat") {
            n.named("nf_nat", &what("NAT"));
        }
        if has("flowtable") {
            n.add(
                "nf_flow_table_inet",
                &[format!("nf-flowtable-{f}")],
                &what("flowtable"),
            );
            n.named("nf_flow_table", &what("flowtable"));
        }
        if t.windows(2)
            .any(|w| w[0] == "flow" && (w[1] == "add" || w[1] == "offload"))
        {
            nft_expr(n, "nft_flow_offload", "flow_offload", f, &what("flow add"));
        }
    }
}

/// The module of an xtables match or target (`multiport`, `MASQUERADE`).
fn xt_module(name: &str, family: Family) -> String {
    let v6 = family == Family::Ipv6;
    match name {
        "tcp" | "udp" => "xt_tcpudp".into(),
        // icmp and icmp6 are matches of ip_tables and ip6_tables themselves.
        "icmp" => "ip_tables".into(),
        "icmp6" => "ip6_tables".into(),
        "DNAT" | "SNAT" => "xt_nat".into(),
        "REJECT" if v6 => "ip6t_REJECT".into(),
        "REJECT" => "ipt_REJECT".into(),
        "mark" | "MARK" => "xt_mark".into(),
        "connmark" | "CONNMARK" => "xt_connmark".into(),
        other => format!("xt_{other}"),
    }
}

/// The modules an iptables-restore script uses with `kind` (iptables-nft
/// or iptables-legacy), for one family.
fn xtables_needs(n: &mut Needs, kind: BackendKind, family: Family, script: &str, used_by: &str) {
    let legacy = kind == BackendKind::IptablesLegacy;
    let (prefix, tables, nfp) = match family {
        Family::Ipv4 => ("ipt", "ip_tables", 2),
        Family::Ipv6 => ("ip6t", "ip6_tables", 10),
    };
    let what = |w: &str| format!("{kind} {w} ({used_by})");
    if legacy {
        n.named("x_tables", &what("rules"));
        // iptables-legacy runs `modprobe ip_tables` itself when it is missing.
        n.named(tables, &what("rules"));
    } else {
        nf_tables(n, &what("rules"));
    }
    let chains: Vec<&str> = script
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let standard = ["ACCEPT", "DROP", "RETURN"];
    for line in script.lines() {
        if let Some(table) = line.strip_prefix('*') {
            let table = table.trim();
            if legacy {
                let module = format!("{}table_{table}", &tables[..tables.len() - 7]);
                n.named(&module, &what(&format!("{table} table")));
            } else if table == "nat" {
                n.add(
                    "nft_chain_nat",
                    &[format!("nft-chain-{nfp}-nat")],
                    &what("nat table"),
                );
            }
            if table == "nat" {
                nat_core(n, &what("nat table"));
            }
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"-A") {
            continue;
        }
        if !legacy {
            // iptables-nft gives every rule a counter.
            nft_expr(n, "nft_counter", "counter", nfp, &what("rule counter"));
        }
        let mut xt: Vec<(String, &str)> = Vec::new();
        for w in words.windows(2) {
            match w[0] {
                "-m" | "--match" => xt.push((w[1].to_string(), "match")),
                "-j" | "--jump" | "-g" | "--goto"
                    if !standard.contains(&w[1]) && !chains.contains(&w[1]) =>
                {
                    xt.push((w[1].to_string(), "target"))
                }
                "-p" | "--protocol" => {
                    // An option of the protocol's own match loads it implicitly.
                    let implicit = match w[1] {
                        "tcp" | "udp"
                            if words.iter().any(|x| {
                                ["--dport", "--sport", "--tcp-flags", "--syn"].contains(x)
                            }) =>
                        {
                            Some(w[1])
                        }
                        "icmp" if words.contains(&"--icmp-type") => Some("icmp"),
                        "ipv6-icmp" | "icmpv6" if words.contains(&"--icmpv6-type") => Some("icmp6"),
                        _ => None,
                    };
                    if let Some(m) = implicit {
                        if !words.windows(2).any(|x| x[0] == "-m" && x[1] == m) {
                            xt.push((m.to_string(), "match"));
                        }
                    }
                }
                _ => {}
            }
        }
        for (name, role) in xt {
            let module = xt_module(&name, family);
            let use_ = what(&format!("{role} {name}"));
            n.add(&module, &[format!("{prefix}_{name}")], &use_);
            if !legacy {
                // Through nf_tables' xtables compatibility layer.
                nft_expr(n, "nft_compat", role, nfp, &use_);
                n.named("x_tables", &use_);
            }
            if name == "conntrack" || name == "state" {
                n.named("nf_conntrack", &use_);
            }
        }
    }
}

/// The modules `scenarios` use, run on the host with captures as `capture`.
pub fn needs(scenarios: &[Scenario], capture: CaptureMode) -> Vec<Need> {
    let mut n = Needs::default();
    for s in scenarios {
        let name = &s.name;
        n.add(
            "veth",
            &["rtnl-link-veth".into()],
            &format!("the links between namespaces ({name})"),
        );
        let setup = s.setup();
        let topo = setup.topology;
        if topo.wg_in(crate::scenario::topology::RELAY).is_some() {
            n.add(
                "wireguard",
                &["rtnl-link-wireguard".into()],
                &format!("the WireGuard tunnel ({name})"),
            );
        }
        if s.relay.families.contains(&Family::Ipv6) {
            n.add(
                "ipv6",
                &["net-pf-10".into()],
                &format!("IPv6 addresses ({name})"),
            );
        }
        for ns in &topo.namespaces {
            if ns
                .sysctls
                .keys()
                .any(|k| k.starts_with("net.netfilter.nf_conntrack"))
            {
                // The sysctl exists only once conntrack is there.
                n.named(
                    "nf_conntrack",
                    &format!("the conntrack sysctls of namespace {} ({name})", ns.name),
                );
            }
        }
        for ns in s.nat_namespaces() {
            let rules = s.nat_rules(&ns);
            for kind in &s.backends {
                let backend = kind.backend();
                let used_by = format!("{name}, in {ns}");
                // The rules, and what a reload leaves (`emptied`): one construct set.
                for (inv, script) in backend.scripts(&rules) {
                    match kind {
                        BackendKind::Nftables => nft_needs(&mut n, &script, &used_by),
                        _ => {
                            let family = if inv.program.contains("ip6tables") {
                                Family::Ipv6
                            } else {
                                Family::Ipv4
                            };
                            xtables_needs(&mut n, *kind, family, &script, &used_by);
                        }
                    }
                }
            }
        }
        for ns in &topo.namespaces {
            if let Some(script) = &ns.nft {
                nft_needs(
                    &mut n,
                    script,
                    &format!("{name}, nft script of {}", ns.name),
                );
            }
        }
        if s.relay.flowtable {
            let script = crate::agent::topology::flowtable_script("tunnel", "wan");
            nft_needs(&mut n, &script, &format!("{name}, the relay's flowtable"));
        }
    }
    if !scenarios.is_empty() {
        // `conntrack -L/-S/-F/-D`: checks and evidence read the relay's table.
        n.add(
            "nf_conntrack_netlink",
            &["nfnetlink-subsys-1".into()],
            "the conntrack tool (checks and evidence read the relay's table)",
        );
        n.add(
            "nfnetlink",
            &["net-pf-16-proto-12".into()],
            "the conntrack tool",
        );
        if capture != CaptureMode::Never {
            n.add(
                "af_packet",
                &["net-pf-17".into()],
                "packet captures of failing checks",
            );
        }
    }
    n.0
}

/// What the running kernel says about its modules, read under `root` (`/`
/// on the host; a fake tree in tests).
#[derive(Debug)]
pub struct HostModules {
    /// Loaded modules (/proc/modules); None when the kernel has no module
    /// support (no /proc/modules).
    loaded: Option<BTreeSet<String>>,
    /// Names under /sys/module: loaded modules, and built-in ones that have
    /// parameters.
    sysfs: BTreeSet<String>,
    /// kernel.modules_disabled is 1: nothing can be loaded any more.
    disabled: bool,
    /// The kernel's module index (lib/modules/RELEASE), when there is one.
    index: Option<ModuleIndex>,
    /// Where the index was looked for.
    index_dir: PathBuf,
}

impl HostModules {
    pub fn read(root: &Path, release: &str) -> HostModules {
        let loaded = std::fs::read_to_string(root.join("proc/modules"))
            .ok()
            .map(|text| {
                text.lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .map(normalise_name)
                    .collect()
            });
        let sysfs = std::fs::read_dir(root.join("sys/module"))
            .map(|d| {
                d.flatten()
                    .map(|e| normalise_name(&e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        let disabled = std::fs::read_to_string(root.join("proc/sys/kernel/modules_disabled"))
            .is_ok_and(|v| v.trim() == "1");
        let lib = root.join("lib/modules").join(release);
        let usr = root.join("usr/lib/modules").join(release);
        let index_dir = if !lib.join("modules.dep").exists() && usr.join("modules.dep").exists() {
            usr
        } else {
            lib
        };
        HostModules {
            loaded,
            sysfs,
            disabled,
            index: ModuleIndex::load(&index_dir).ok(),
            index_dir,
        }
    }

    fn present(&self, module: &str) -> bool {
        let m = normalise_name(module);
        self.loaded.as_ref().is_some_and(|l| l.contains(&m)) || self.sysfs.contains(&m)
    }
}

/// A module the run would load, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    pub module: String,
    /// What uses it, or the module that depends on it.
    pub used_by: String,
}

/// What the run would do to the kernel's modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The kernel loads no modules at all: why.
    CannotLoad(String),
    /// Every module the run uses is loaded or built in. `elsewhere` are
    /// names this kernel's index does not know as modules: part of another
    /// module here (nft_counter is in nf_tables from 5.12 on), or missing
    /// (what needs them is then unsupported); nothing is loaded for them.
    Present { elsewhere: Vec<String> },
    /// These would be loaded, and stay loaded after the run.
    WouldLoad {
        load: Vec<Load>,
        elsewhere: Vec<String>,
        /// Set when the kernel has no module index: natvet cannot tell
        /// built-in modules without parameters from missing ones.
        unsure: Option<String>,
    },
}

/// What loading `needs` does to a kernel in the state `host` describes.
pub fn decide(needs: &[Need], host: &HostModules) -> Verdict {
    if host.loaded.is_none() {
        return Verdict::CannotLoad(
            "this kernel has no module support (no /proc/modules): nothing can be loaded, so natvet verify loads no modules".into(),
        );
    }
    if host.disabled {
        return Verdict::CannotLoad(
            "kernel.modules_disabled is 1 on this kernel: no module can be loaded, so natvet verify loads none".into(),
        );
    }
    let mut load: Vec<Load> = Vec::new();
    let mut elsewhere: Vec<String> = Vec::new();
    let add = |module: String, used_by: String, load: &mut Vec<Load>| {
        if !host.present(&module) && !load.iter().any(|l| l.module == module) {
            load.push(Load { module, used_by });
        }
    };
    for need in needs {
        if host.present(&need.module) {
            continue;
        }
        let Some(index) = &host.index else {
            add(need.module.clone(), need.used_by.clone(), &mut load);
            continue;
        };
        // As modprobe: the first name that resolves, with its dependencies.
        let resolved = need
            .requests
            .iter()
            .map(|r| (r, index.resolve(r)))
            .find(|(_, res)| *res != Resolved::Unknown);
        match resolved {
            None => {
                if !elsewhere.contains(&need.module) {
                    elsewhere.push(need.module.clone());
                }
            }
            Some((_, Resolved::Builtin)) | Some((_, Resolved::Unknown)) => {}
            Some((request, Resolved::Module(_))) => {
                let order = index.load_order(&[request.as_str()]).unwrap_or_default();
                let names: Vec<String> = order.iter().map(|p| name_from_path(p)).collect();
                let roots = index.candidates(request);
                for m in names {
                    let used_by = if roots.contains(&m) {
                        need.used_by.clone()
                    } else {
                        format!("needed by {}", roots.join(", "))
                    };
                    add(m, used_by, &mut load);
                }
            }
        }
    }
    if load.is_empty() {
        return Verdict::Present { elsewhere };
    }
    let unsure = host.index.is_none().then(|| {
        format!(
            "there is no module index in {}, so natvet cannot tell built-in modules from loadable ones and counts every module it does not see loaded",
            host.index_dir.display()
        )
    });
    Verdict::WouldLoad {
        load,
        elsewhere,
        unsure,
    }
}

impl Verdict {
    /// The modules to load, comma-separated with what needs each.
    pub fn listing(load: &[Load]) -> String {
        load.iter()
            .map(|l| format!("{} ({})", l.module, l.used_by))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The module names, space-separated (for a modprobe command line).
    pub fn names(load: &[Load]) -> String {
        load.iter()
            .map(|l| l.module.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests;

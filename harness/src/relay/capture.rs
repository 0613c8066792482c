//! `natvet relay capture`: a production relay written down as a bundle.
//! Read-only: it runs only listing commands (`nft list ruleset`, the
//! `*-save` tools, `ip -j ... show`, `wg show NAME listen-port|peers`) and
//! reads /proc/sys; it never runs `wg showconf` or reads a private key.
//! Everything it learns comes through [`Source`], so the logic is tested
//! against canned output and the live host is only the edge.

use std::net::IpAddr;
use std::path::Path;

use super::bundle::{Expect, Interface, Interfaces, Manifest, RulesetFiles, WireGuard};
use super::redact::{redact_manifest, Redaction};
use super::ruleset::{self, Analysis, IPTABLES_TABLES};
use crate::nat::BackendKind;
use crate::types::{Family, IpNet, PortRange};

/// What the host is asked; the live implementation is [`LiveHost`].
pub trait Source {
    /// A listing command's standard output; `Ok(None)` when the program is
    /// not installed.
    fn run(&self, argv: &[&str]) -> Result<Option<String>, CaptureError>;
    /// A sysctl's value, when it exists and a network namespace may set it.
    fn sysctl(&self, key: &str) -> Option<String>;
}

/// Why a capture could not be made, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The host or the options do not say enough (exit 2).
    #[error("{0}")]
    Input(String),
    /// A command natvet needed failed (exit 3).
    #[error("{0}")]
    Host(String),
}

/// What the operator says that the host cannot.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub name: String,
    pub backend: Option<BackendKind>,
    pub public: Option<String>,
    pub wan: Option<String>,
    pub wireguard: Option<String>,
    pub wireguard_addresses: Vec<IpNet>,
    pub listen_port: Option<u16>,
    pub redact: bool,
    /// For the manifest's `captured` line (people read it; natvet does not).
    pub when: String,
    pub hostname: String,
}

/// A capture: the manifest and the files it names.
#[derive(Debug, Clone)]
pub struct Captured {
    pub manifest: Manifest,
    pub files: Vec<(String, String)>,
    /// What the operator should know (stand-ins used, things left out).
    pub notes: Vec<String>,
}

/// The sysctls a capture reads, with Linux's default for each: those that
/// govern forwarding, NAT, ICMP errors and conntrack, as far as a network
/// namespace may set them. A capture keeps the ones whose live value is not
/// the default: what the relay changed. A default is not pinned, so a
/// candidate kernel that changes one is tested with its own. Per-interface
/// ones are read for all, default, and the public and wan interfaces
/// (`IFACE` below). `a|b`: the default changed between kernel versions.
const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "0"),
    ("net.ipv4.ip_local_port_range", "32768 60999"),
    ("net.ipv4.ip_nonlocal_bind", "0"),
    ("net.ipv4.ip_no_pmtu_disc", "0"),
    ("net.ipv4.ip_forward_use_pmtu", "0"),
    ("net.ipv4.fwmark_reflect", "0"),
    ("net.ipv4.icmp_ratelimit", "1000"),
    ("net.ipv4.icmp_ratemask", "6168"),
    ("net.ipv4.icmp_errors_use_inbound_ifaddr", "0"),
    ("net.ipv4.tcp_mtu_probing", "0"),
    ("net.ipv4.tcp_fwmark_accept", "0"),
    ("net.ipv4.udp_l3mdev_accept", "0"),
    ("net.ipv6.fwmark_reflect", "0"),
    ("net.ipv6.icmp.ratelimit", "1000|100"),
    ("net.ipv4.conf.IFACE.forwarding", "0"),
    ("net.ipv4.conf.IFACE.rp_filter", "0"),
    ("net.ipv4.conf.IFACE.src_valid_mark", "0"),
    ("net.ipv4.conf.IFACE.accept_redirects", "1"),
    ("net.ipv4.conf.IFACE.send_redirects", "1"),
    ("net.ipv4.conf.IFACE.proxy_arp", "0"),
    ("net.ipv4.conf.IFACE.route_localnet", "0"),
    ("net.ipv4.conf.IFACE.log_martians", "0"),
    ("net.ipv6.conf.IFACE.forwarding", "0"),
    ("net.ipv6.conf.IFACE.disable_ipv6", "0"),
    ("net.ipv6.conf.IFACE.accept_ra", "1"),
    ("net.ipv6.conf.IFACE.accept_redirects", "1"),
    ("net.ipv6.conf.IFACE.proxy_ndp", "0"),
    ("net.netfilter.nf_conntrack_acct", "0"),
    ("net.netfilter.nf_conntrack_checksum", "1"),
    ("net.netfilter.nf_conntrack_events", "1|2"),
    ("net.netfilter.nf_conntrack_timestamp", "0"),
    ("net.netfilter.nf_conntrack_log_invalid", "0"),
    ("net.netfilter.nf_conntrack_tcp_be_liberal", "0"),
    ("net.netfilter.nf_conntrack_tcp_loose", "1"),
    ("net.netfilter.nf_conntrack_tcp_ignore_invalid_rst", "0"),
    ("net.netfilter.nf_conntrack_tcp_max_retrans", "3"),
    (
        "net.netfilter.nf_conntrack_tcp_timeout_established",
        "432000",
    ),
    ("net.netfilter.nf_conntrack_tcp_timeout_syn_sent", "120"),
    ("net.netfilter.nf_conntrack_tcp_timeout_syn_recv", "60"),
    ("net.netfilter.nf_conntrack_tcp_timeout_fin_wait", "120"),
    ("net.netfilter.nf_conntrack_tcp_timeout_close_wait", "60"),
    ("net.netfilter.nf_conntrack_tcp_timeout_last_ack", "30"),
    ("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "120"),
    ("net.netfilter.nf_conntrack_tcp_timeout_close", "10"),
    ("net.netfilter.nf_conntrack_tcp_timeout_max_retrans", "300"),
    (
        "net.netfilter.nf_conntrack_tcp_timeout_unacknowledged",
        "300",
    ),
    ("net.netfilter.nf_conntrack_udp_timeout", "30"),
    ("net.netfilter.nf_conntrack_udp_timeout_stream", "120"),
    ("net.netfilter.nf_conntrack_icmp_timeout", "30"),
    ("net.netfilter.nf_conntrack_icmpv6_timeout", "30"),
    ("net.netfilter.nf_conntrack_generic_timeout", "600"),
];

/// Capture the relay `src` describes.
pub fn capture(src: &dyn Source, o: &Options) -> Result<Captured, CaptureError> {
    let mut notes = Vec::new();
    let (backend, rulesets) = rulesets(src, o.backend, &mut notes)?;
    let mut analyses: Vec<Analysis> = Vec::new();
    for (family, name, text) in &rulesets {
        analyses.push(ruleset::read(backend, *family, text).map_err(|e| {
            CaptureError::Input(format!(
                "the captured ruleset ({name}) has a line natvet cannot read, line {}: {}; this is a natvet limitation worth reporting",
                e.line, e.message
            ))
        })?);
    }

    let links = ip_json(src, &["ip", "-j", "-d", "addr", "show"])?;
    let find = |name: &str| links.iter().find(|l| l.name == name);
    let public_name = match &o.public {
        Some(p) => p.clone(),
        None => default_route_dev(src)?.ok_or_else(|| {
            CaptureError::Input(
                "this host has no default route to tell its public interface by: name it with --public IFACE".into(),
            )
        })?,
    };
    let public = find(&public_name).ok_or_else(|| {
        CaptureError::Input(format!(
            "there is no interface '{public_name}' here (there are {}): check --public",
            names(&links)
        ))
    })?;
    // The wan: named, or where the ruleset masquerades to if that is
    // another interface of this host.
    let masq_out: Option<String> = analyses
        .iter()
        .flat_map(|a| a.masquerade.iter())
        .filter_map(|m| m.what.out_iface.clone())
        .find(|i| *i != public_name && find(i).is_some());
    let wan = match o.wan.clone().or(masq_out) {
        Some(w) if w != public_name => Some(find(&w).ok_or_else(|| {
            CaptureError::Input(format!("there is no interface '{w}' here: check --wan"))
        })?),
        _ => None,
    };

    let wg = wireguard(src, o, &links, &analyses, &mut notes)?;
    let (wg_name, listen_port) = (wg.name.clone(), wg.listen_port);
    let udp_ports = PortRange::merged(
        analyses
            .iter()
            .flat_map(|a| a.redirects.iter())
            .filter(|r| r.what.to_port.is_none_or(|p| p == listen_port))
            .flat_map(|r| r.what.ports.iter().copied())
            .collect(),
    );

    let mut known: Vec<&str> = vec![&public_name, &wg_name, "lo"];
    if let Some(w) = wan {
        known.push(&w.name);
    }
    let mut other: Vec<String> = analyses
        .iter()
        .flat_map(|a| a.interfaces.iter().map(|f| f.what.clone()))
        .filter(|i| !known.contains(&i.as_str()))
        .collect();
    other.sort();
    other.dedup();

    let (routes, rules) = routes_and_rules(src, &mut notes)?;
    let mut ifaces = vec!["all", "default", public_name.as_str()];
    if let Some(w) = wan {
        ifaces.push(&w.name);
    }
    let sysctl_text = changed_sysctls(src, &ifaces);

    let iface = |l: &Link| Interface {
        name: l.name.clone(),
        addresses: l.addresses.clone(),
        mtu: l.mtu,
    };
    let mut manifest = Manifest {
        name: o.name.clone(),
        description: format!(
            "captured from {}",
            if o.redact {
                "a relay (redacted)"
            } else {
                o.hostname.as_str()
            }
        ),
        backend,
        captured: Some(if o.redact {
            format!("natvet relay capture, {}", o.when)
        } else {
            format!("natvet relay capture on {}, {}", o.hostname, o.when)
        }),
        redacted: o.redact,
        ruleset: RulesetFiles {
            nft: None,
            ipv4: None,
            ipv6: None,
        },
        sysctls: sysctl_text.as_ref().map(|_| "sysctl.conf".into()),
        interfaces: Interfaces {
            public: iface(public),
            wan: wan.map(iface),
            wireguard: wg,
            other,
        },
        routes,
        rules,
        expect: Expect { udp_ports },
    };
    let mut files = Vec::new();
    for (family, name, text) in rulesets {
        let p = Some(name.as_str().into());
        match family {
            None => manifest.ruleset.nft = p,
            Some(Family::Ipv4) => manifest.ruleset.ipv4 = p,
            Some(Family::Ipv6) => manifest.ruleset.ipv6 = p,
        }
        files.push((name, text));
    }
    if let Some(text) = sysctl_text {
        files.push(("sysctl.conf".into(), text));
    }
    if o.redact {
        let mut map = Redaction::default();
        redact_manifest(&mut manifest, &mut map);
        for (_, text) in &mut files {
            *text = map.text(text);
        }
        notes.push(format!(
            "redacted: {} public addresses mapped onto documentation ranges, the same way in the manifest and the ruleset; private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) are kept; comments in the ruleset are kept as they are",
            map.mapped()
        ));
    }
    Ok(Captured {
        manifest,
        files,
        notes,
    })
}

/// The clients' WireGuard interface: the one here (or named), its
/// addresses, listen port and peer count; what the host cannot say comes
/// from the options, or for the port from where every redirect sends.
fn wireguard(
    src: &dyn Source,
    o: &Options,
    links: &[Link],
    analyses: &[Analysis],
    notes: &mut Vec<String>,
) -> Result<WireGuard, CaptureError> {
    let find = |name: &str| links.iter().find(|l| l.name == name);
    let wg_links: Vec<&Link> = links.iter().filter(|l| l.kind == "wireguard").collect();
    let wg_name = match (&o.wireguard, wg_links.as_slice()) {
        (Some(n), _) => n.clone(),
        (None, [one]) => one.name.clone(),
        (None, []) => {
            return Err(CaptureError::Input(
                "this host has no WireGuard interface: name the one production has with --wireguard NAME --wireguard-address CIDR (repeatable) --listen-port PORT".into(),
            ))
        }
        (None, many) => {
            return Err(CaptureError::Input(format!(
                "this host has {} WireGuard interfaces ({}): say which clients use with --wireguard NAME",
                many.len(),
                many.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let wg_link = find(&wg_name);
    let wg_addresses = if !o.wireguard_addresses.is_empty() {
        o.wireguard_addresses.clone()
    } else {
        wg_link.map(|l| l.addresses.clone()).unwrap_or_default()
    };
    if wg_addresses.is_empty() {
        return Err(CaptureError::Input(format!(
            "no address for the WireGuard interface '{wg_name}'{}: give its tunnel addresses with --wireguard-address CIDR (e.g. 10.64.0.1/10)",
            if wg_link.is_none() { " (it does not exist here)" } else { "" }
        )));
    }
    let (listen_port, peers) = wireguard_state(src, &wg_name, wg_link.is_some())?;
    let redirect_to: Vec<u16> = analyses
        .iter()
        .flat_map(|a| a.redirects.iter())
        .filter_map(|r| r.what.to_port)
        .collect();
    let listen_port = match (o.listen_port, listen_port) {
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => {
            let mut targets = redirect_to.clone();
            targets.sort_unstable();
            targets.dedup();
            match targets.as_slice() {
                [one] => {
                    notes.push(format!("WireGuard's listen port {one} is the one every redirect of the ruleset sends to (no WireGuard here to ask)"));
                    *one
                }
                _ => {
                    return Err(CaptureError::Input(format!(
                        "cannot tell the WireGuard listen port of '{wg_name}' (no `wg` tool or interface to ask): give it with --listen-port PORT"
                    )))
                }
            }
        }
    };
    if wg_link.is_none() {
        notes.push(format!(
            "'{wg_name}' is not an interface here; the bundle takes your --wireguard options for it"
        ));
    }
    Ok(WireGuard {
        name: wg_name,
        addresses: wg_addresses,
        listen_port,
        peers,
        mtu: wg_link.and_then(|l| l.mtu),
    })
}

/// The relay's routes (the local table left out: the kernel makes it from
/// the addresses) and policy rules, as `ip` prints them.
fn routes_and_rules(
    src: &dyn Source,
    notes: &mut Vec<String>,
) -> Result<(Vec<String>, Vec<String>), CaptureError> {
    let lines = |argvs: &[&[&str]]| -> Result<Vec<String>, CaptureError> {
        let mut v = Vec::new();
        for argv in argvs {
            let text = need(src, argv)?;
            v.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            );
        }
        Ok(v)
    };
    let mut routes = lines(&[
        &["ip", "-4", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
    ])?;
    routes.retain(|r| !r.contains(" table local "));
    let mut rules = lines(&[&["ip", "-4", "rule", "show"], &["ip", "-6", "rule", "show"]])?;
    if routes.len() + rules.len() > 4096 {
        notes.push(format!(
            "{} routes and rules; the bundle records the first 4096",
            routes.len() + rules.len()
        ));
        routes.truncate(4096);
        rules.truncate(4096 - routes.len());
    }

    Ok((routes, rules))
}

/// The `sysctl -p` text of the settings in [`SYSCTLS`] whose values are not
/// the defaults, for the interfaces `ifaces`; None when all are.
fn changed_sysctls(src: &dyn Source, ifaces: &[&str]) -> Option<String> {
    let mut sysctl_text = String::from(
        "# The relay's net.* settings for forwarding, NAT and conntrack that are\n# not Linux's defaults, read by natvet relay capture.\n",
    );
    let mut sysctls = 0;
    for (key, default) in SYSCTLS {
        let keys: Vec<String> = if key.contains("IFACE") {
            ifaces.iter().map(|i| key.replace("IFACE", i)).collect()
        } else {
            vec![key.to_string()]
        };
        for k in keys {
            if let Some(v) = src.sysctl(&k) {
                let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
                if !v.is_empty() && !default.split('|').any(|d| d == v) {
                    sysctl_text.push_str(&format!("{k} = {v}\n"));
                    sysctls += 1;
                }
            }
        }
    }

    (sysctls > 0).then_some(sysctl_text)
}

/// A ruleset file: its family (None: an `nft` script for both), the name
/// the bundle gives it, and its text.
type RulesetFile = (Option<Family>, String, String);

/// The backend and its files: named, or told by what is loaded.
fn rulesets(
    src: &dyn Source,
    asked: Option<BackendKind>,
    notes: &mut Vec<String>,
) -> Result<(BackendKind, Vec<RulesetFile>), CaptureError> {
    let opt =
        |argv: &[&str]| -> Result<String, CaptureError> { Ok(src.run(argv)?.unwrap_or_default()) };
    let nft = opt(&["nft", "list", "ruleset"])?;
    let legacy = [
        opt(&["iptables-legacy-save"])?,
        opt(&["ip6tables-legacy-save"])?,
    ];
    let xt = [opt(&["iptables-nft-save"])?, opt(&["ip6tables-nft-save"])?];
    let tables = nft_tables(&nft);
    let (native, managed): (Vec<_>, Vec<_>) = tables.iter().partition(|(family, name)| {
        !(["ip", "ip6"].contains(&family.as_str()) && IPTABLES_TABLES.contains(&name.as_str()))
    });
    let has = |pair: &[String; 2]| pair.iter().any(|t| has_rules(t));
    let found = match asked {
        Some(b) => b,
        None => {
            let candidates: Vec<BackendKind> = [
                (BackendKind::Nftables, !native.is_empty()),
                (BackendKind::IptablesNft, has(&xt)),
                (BackendKind::IptablesLegacy, has(&legacy)),
            ]
            .into_iter()
            .filter(|(_, yes)| *yes)
            .map(|(b, _)| b)
            .collect();
            match candidates.as_slice() {
                [one] => *one,
                [] => return Err(CaptureError::Input(
                    "no ruleset is loaded here (nft, iptables-nft and iptables-legacy all list nothing): run capture on the relay, or in its network namespace (ip netns exec NS natvet relay capture ...)".into(),
                )),
                many => return Err(CaptureError::Input(format!(
                    "rules are loaded by more than one tool ({}): natvet loads one tool's files, as the relay's boot does; say which with --backend",
                    many.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
    };
    let files = match found {
        BackendKind::Nftables if managed.is_empty() => vec![(None, "ruleset.nft".into(), nft)],
        BackendKind::Nftables => {
            // Tables iptables-nft made hold xtables matches nft cannot
            // load: the native tables are listed one by one.
            let mut text = String::new();
            for (family, name) in &native {
                text.push_str(&need(src, &["nft", "list", "table", family, name])?);
            }
            notes.push(format!(
                "left out of ruleset.nft: the tables iptables-nft manages ({}); capture them with --backend iptables-nft",
                managed
                    .iter()
                    .map(|(f, n)| format!("{f} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            vec![(None, "ruleset.nft".into(), text)]
        }
        BackendKind::IptablesNft => saved(&xt),
        BackendKind::IptablesLegacy => saved(&legacy),
    };
    if files.iter().all(|(_, _, t)| t.trim().is_empty()) {
        return Err(CaptureError::Input(format!(
            "{found} lists no ruleset here: check --backend"
        )));
    }
    Ok((found, files))
}

fn saved(pair: &[String; 2]) -> Vec<RulesetFile> {
    [
        (Family::Ipv4, "iptables.rules", &pair[0]),
        (Family::Ipv6, "ip6tables.rules", &pair[1]),
    ]
    .into_iter()
    .filter(|(_, _, t)| t.lines().any(|l| l.starts_with('*')))
    .map(|(f, n, t)| (Some(f), n.to_string(), t.to_string()))
    .collect()
}

/// Whether an iptables-save text holds a rule or a policy other than ACCEPT.
fn has_rules(text: &str) -> bool {
    text.lines().any(|l| {
        l.starts_with("-A ")
            || (l.starts_with(':')
                && l.split_whitespace()
                    .nth(1)
                    .is_some_and(|p| p != "ACCEPT" && p != "-"))
    })
}

/// The (family, name) of each table in `nft list ruleset`.
fn nft_tables(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("table")).then_some(())?;
            let family = w.next()?;
            let name = w.next()?;
            Some((family.to_string(), name.to_string()))
        })
        .collect()
}

/// One interface as `ip -j -d addr show` has it.
#[derive(Debug, Clone)]
struct Link {
    name: String,
    kind: String,
    mtu: Option<u32>,
    addresses: Vec<IpNet>,
}

fn ip_json(src: &dyn Source, argv: &[&str]) -> Result<Vec<Link>, CaptureError> {
    let text = need(src, argv)?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        CaptureError::Host(format!(
            "`{}` printed something that is not JSON ({e}): natvet needs iproute2 with -j",
            argv.join(" ")
        ))
    })?;
    let mut out = Vec::new();
    for l in v.as_array().into_iter().flatten() {
        let Some(name) = l["ifname"].as_str() else {
            continue;
        };
        let addresses = l["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["scope"].as_str() == Some("global"))
            .filter_map(|a| {
                let addr: IpAddr = a["local"].as_str()?.parse().ok()?;
                let prefix = u8::try_from(a["prefixlen"].as_u64()?).ok()?;
                Some(IpNet { addr, prefix })
            })
            .collect();
        out.push(Link {
            name: name.to_string(),
            kind: l["linkinfo"]["info_kind"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            mtu: l["mtu"].as_u64().and_then(|m| u32::try_from(m).ok()),
            addresses,
        });
    }
    Ok(out)
}

fn default_route_dev(src: &dyn Source) -> Result<Option<String>, CaptureError> {
    for argv in [
        &["ip", "-j", "route", "show", "default"][..],
        &["ip", "-j", "-6", "route", "show", "default"],
    ] {
        let text = need(src, argv)?;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(dev) = v
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|r| r["dev"].as_str())
        {
            return Ok(Some(dev.to_string()));
        }
    }
    Ok(None)
}

/// WireGuard's listen port and peer count, from `wg show` (which prints
/// no keys for these fields).
fn wireguard_state(
    src: &dyn Source,
    name: &str,
    exists: bool,
) -> Result<(Option<u16>, Option<u64>), CaptureError> {
    if !exists {
        return Ok((None, None));
    }
    let Some(port) = src.run(&["wg", "show", name, "listen-port"])? else {
        return Ok((None, None));
    };
    let port = port.trim().parse::<u16>().ok().filter(|p| *p != 0);
    let peers = src
        .run(&["wg", "show", name, "peers"])?
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count() as u64);
    Ok((port, peers))
}

fn need(src: &dyn Source, argv: &[&str]) -> Result<String, CaptureError> {
    src.run(argv)?.ok_or_else(|| {
        CaptureError::Host(format!(
            "`{}` is needed to capture a relay and is not installed: install iproute2",
            argv[0]
        ))
    })
}

fn names(links: &[Link]) -> String {
    links
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Write `c` into `dir`, which must not exist or be empty.
pub fn write(dir: &Path, c: &Captured) -> Result<(), CaptureError> {
    if let Ok(mut d) = std::fs::read_dir(dir) {
        if d.next().is_some() {
            return Err(CaptureError::Input(format!(
                "{} is not empty: capture writes a new bundle; give a new folder with --out",
                dir.display()
            )));
        }
    }
    let io = |e: std::io::Error, what: &Path| {
        CaptureError::Host(format!("cannot write {}: {e}", what.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
    let manifest = toml::to_string_pretty(&c.manifest)
        .map_err(|e| CaptureError::Host(format!("cannot write the manifest: {e}")))?;
    let head = "# A relay bundle written by `natvet relay capture`. Check it with\n# `natvet relay show DIR`; vet it with `natvet vet --relay DIR`.\n# [expect] udp_ports are the ports the captured ruleset redirects to\n# WireGuard: keep them when you edit the ruleset.\n";
    let mut all = vec![(
        super::bundle::MANIFEST.to_string(),
        format!("{head}{manifest}"),
    )];
    all.extend(c.files.iter().cloned());
    for (name, text) in &all {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| io(e, &p))?;
    }
    Ok(())
}

/// The host natvet runs on, read-only.
pub struct LiveHost;

impl Source for LiveHost {
    fn run(&self, argv: &[&str]) -> Result<Option<String>, CaptureError> {
        let out = match std::process::Command::new(argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CaptureError::Host(format!("cannot run {}: {e}", argv[0]))),
        };
        if !out.status.success() {
            return Err(CaptureError::Host(format!(
                "`{}` failed ({}): {}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        String::from_utf8(out.stdout).map(Some).map_err(|_| {
            CaptureError::Host(format!(
                "`{}` printed text that is not UTF-8",
                argv.join(" ")
            ))
        })
    }

    fn sysctl(&self, key: &str) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let path = crate::scenario::topology::sysctl_path(key);
        let meta = std::fs::metadata(&path).ok()?;
        if meta.permissions().mode() & 0o200 == 0 {
            return None;
        }
        std::fs::read_to_string(&path).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Fake {
        out: BTreeMap<String, String>,
        sysctls: BTreeMap<String, String>,
    }

    impl Source for Fake {
        fn run(&self, argv: &[&str]) -> Result<Option<String>, CaptureError> {
            Ok(self.out.get(&argv.join(" ")).cloned())
        }
        fn sysctl(&self, key: &str) -> Option<String> {
            self.sysctls.get(key).cloned()
        }
    }

    const ADDR: &str = r#"[{"ifname":"lo","mtu":65536,"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
        {"ifname":"eth0","mtu":1500,"linkinfo":{"info_kind":"veth"},"addr_info":[{"family":"inet","local":"185.65.134.10","prefixlen":24,"scope":"global"},{"family":"inet6","local":"2a03:1b20:3:f011::a01f","prefixlen":64,"scope":"global"},{"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}]"#;

    const RULES: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A PREROUTING -i eth0 -p udp -m multiport --dports 53,4000:33433 -j REDIRECT --to-ports 51820\n-A POSTROUTING -s 10.64.0.0/10 -o eth0 -j MASQUERADE\nCOMMIT\n*filter\n:INPUT DROP [0:0]\n-A INPUT -d 185.65.134.10/32 -i eth0 -p udp --dport 51820 -j ACCEPT\n-A INPUT -i mgmt0 -j ACCEPT\nCOMMIT\n";

    fn host() -> Fake {
        let mut out = BTreeMap::new();
        for (k, v) in [
            ("nft list ruleset", "table ip nat {\n}\ntable ip filter {\n}\n"),
            ("iptables-nft-save", RULES),
            ("ip6tables-nft-save", ""),
            ("iptables-legacy-save", ""),
            ("ip6tables-legacy-save", ""),
            ("ip -j -d addr show", ADDR),
            ("ip -j route show default", r#"[{"dst":"default","gateway":"185.65.134.1","dev":"eth0"}]"#),
            ("ip -4 route show table all", "default via 185.65.134.1 dev eth0\n185.65.134.0/24 dev eth0 proto kernel scope link src 185.65.134.10\nlocal 185.65.134.10 dev eth0 table local proto kernel scope host src 185.65.134.10\n"),
            ("ip -6 route show table all", "2a03:1b20:3:f011::/64 dev eth0 proto kernel metric 256\n"),
            ("ip -4 rule show", "0:\tfrom all lookup local\n"),
            ("ip -6 rule show", ""),
        ] {
            out.insert(k.to_string(), v.to_string());
        }
        let sysctls = [
            ("net.ipv4.ip_forward", "1\n"),
            ("net.ipv4.conf.eth0.rp_filter", "2\n"),
            ("net.netfilter.nf_conntrack_udp_timeout", "30\n"),
            ("net.ipv4.ip_local_port_range", "1024\t65000\n"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Fake { out, sysctls }
    }

    fn options() -> Options {
        Options {
            name: "relay".into(),
            wireguard: Some("wg0".into()),
            wireguard_addresses: vec!["10.64.0.1/10".parse().unwrap()],
            hostname: "se-got-wg-001".into(),
            when: "2026-12-03".into(),
            ..Options::default()
        }
    }

    #[test]
    fn a_relay_is_written_down_with_its_roles_ports_and_settings() {
        let c = capture(&host(), &options()).unwrap();
        let m = &c.manifest;
        assert_eq!(m.backend, BackendKind::IptablesNft);
        assert_eq!(m.interfaces.public.name, "eth0");
        assert_eq!(
            m.interfaces.public.addresses.len(),
            2,
            "link-local left out"
        );
        assert_eq!(
            m.interfaces.wireguard.listen_port, 51820,
            "from the redirects"
        );
        assert_eq!(m.interfaces.other, ["mgmt0"]);
        let ports: Vec<String> = m.expect.udp_ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(ports, ["53", "4000-33433"]);
        assert_eq!(m.routes.len(), 3);
        let sysctl = &c.files.iter().find(|(n, _)| n == "sysctl.conf").unwrap().1;
        assert!(sysctl.contains("net.ipv4.ip_local_port_range = 1024 65000\n"));
        assert!(sysctl.contains("net.ipv4.conf.eth0.rp_filter = 2\n"));
        assert!(!sysctl.contains("udp_timeout"), "a default is not pinned");
        assert!(
            c.files.iter().all(|(n, _)| n != "ip6tables.rules"),
            "ip6tables lists no table"
        );
        assert!(m.captured.as_deref().unwrap().contains("se-got-wg-001"));
    }

    #[test]
    fn redaction_maps_every_public_address_the_same_way_everywhere() {
        let c = capture(
            &host(),
            &Options {
                redact: true,
                ..options()
            },
        )
        .unwrap();
        let manifest = toml::to_string(&c.manifest).unwrap();
        let all: String = c.files.iter().map(|(_, t)| t.as_str()).collect::<String>() + &manifest;
        assert!(!all.contains("185.65.134"), "{all}");
        assert!(!all.contains("2a03:1b20"), "{all}");
        assert!(!all.contains("se-got-wg-001"));
        assert!(manifest.contains("203.0.113.10/24"));
        assert!(manifest.contains("2001:db8:1:f011::a01f/64"));
        let rules = &c
            .files
            .iter()
            .find(|(n, _)| n == "iptables.rules")
            .unwrap()
            .1;
        assert!(rules.contains("-d 203.0.113.10/32"), "{rules}");
        // Private networks and port ranges are not addresses to map.
        assert!(rules.contains("-s 10.64.0.0/10") && rules.contains("53,4000:33433"));
        assert!(c
            .manifest
            .routes
            .iter()
            .any(|r| r == "default via 203.0.113.1 dev eth0"));
    }

    #[test]
    fn what_the_host_cannot_say_is_asked_for() {
        let mut h = host();
        h.out.insert("iptables-nft-save".into(), String::new());
        h.out.insert("nft list ruleset".into(), String::new());
        let e = capture(&h, &options()).unwrap_err().to_string();
        assert!(e.contains("no ruleset is loaded"), "{e}");
        let mut h = host();
        h.out.insert("iptables-legacy-save".into(), RULES.into());
        let e = capture(&h, &options()).unwrap_err().to_string();
        assert!(e.contains("--backend"), "{e}");
        let e = capture(
            &host(),
            &Options {
                wireguard: None,
                ..options()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--wireguard NAME"), "{e}");
    }

    #[test]
    fn beside_iptables_nft_only_the_native_tables_are_captured() {
        let mut h = host();
        let native = "table inet relay {\n\tchain pre {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tiifname \"eth0\" udp dport 53 redirect to :51820\n\t}\n}\n";
        h.out.insert(
            "nft list ruleset".into(),
            format!("# Warning: table ip filter is managed by iptables-nft, do not touch!\ntable ip filter {{\n\tchain INPUT {{\n\t\txt match \"conntrack\"\n\t}}\n}}\n{native}"),
        );
        h.out
            .insert("nft list table inet relay".into(), native.into());
        let e = capture(&h, &options()).unwrap_err().to_string();
        assert!(e.contains("more than one tool"), "{e}");
        let c = capture(
            &h,
            &Options {
                backend: Some(BackendKind::Nftables),
                ..options()
            },
        )
        .unwrap();
        let nft = &c.files.iter().find(|(n, _)| n == "ruleset.nft").unwrap().1;
        assert_eq!(nft, native);
        assert!(c.notes.iter().any(|n| n.contains("ip filter")));
    }

    #[test]
    fn a_native_nftables_ruleset_is_told_apart_from_iptables_nft() {
        let mut h = host();
        h.out.insert("iptables-nft-save".into(), String::new());
        h.out.insert(
            "nft list ruleset".into(),
            "table inet relay {\n\tchain pre {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tiifname \"eth0\" udp dport { 53, 4000-33433 } redirect to :51820\n\t}\n}\n".into(),
        );
        let c = capture(&h, &options()).unwrap();
        assert_eq!(c.manifest.backend, BackendKind::Nftables);
        assert_eq!(
            c.manifest.ruleset.nft.as_deref(),
            Some(Path::new("ruleset.nft"))
        );
        assert_eq!(c.manifest.expect.udp_ports.len(), 2);
    }
}

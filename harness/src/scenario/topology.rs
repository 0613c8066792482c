//! The network a scenario runs in, declared in TOML: namespaces and their
//! sysctls, veth links with addresses and MTU, routes, and the WireGuard
//! tunnel between client and relay. Validated here, on the host, before any
//! VM boots; built by the agent (`agent::topology`).
//!
//! Three namespaces have roles the checks rely on, by name:
//! - `client`: the WireGuard peer that sends the probes;
//! - `relay`: the WireGuard server whose NAT is under test;
//! - `internet`: the host beyond the NAT, which runs the probe servers.
//!
//! Any other namespace is a router (forwarding on), with NAT of its own if
//! the scenario's `[[nat]]` gives it some: a home router in front of the
//! client, a hop between the relay and the internet.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::bounds::Invalid;
use crate::types::{Family, IpNet, NumOrText};

/// The topology of a scenario without a `[topology]` table.
pub const DEFAULT: &str = r#"# client ---- relay ---- internet, with a WireGuard tunnel from client to relay.
[[namespace]]
name = "client"

[[namespace]]
name = "relay"

[[namespace]]
name = "internet"

[[link]]
a = { at = "relay:public", addresses = ["192.0.2.1/24", "2001:db8:1::1/64"] }
b = { at = "client:eth0", addresses = ["192.0.2.2/24", "2001:db8:1::2/64"] }

[[link]]
a = { at = "relay:wan", addresses = ["198.51.100.1/24", "2001:db8:2::1/64"] }
b = { at = "internet:eth0", addresses = ["198.51.100.2/24", "2001:db8:2::2/64"] }

[[wireguard]]
at = "relay:wg0"
addresses = ["10.99.0.1/24", "fd99::1/64"]
peers = [{ peer = "client:wg0" }]

[[wireguard]]
at = "client:wg0"
addresses = ["10.99.0.2/24", "fd99::2/64"]
peers = [{ peer = "relay:wg0" }]

# The client reaches the internet only through its tunnel; the internet host
# has no route back to the tunnel, so only masqueraded traffic gets replies.
[[route]]
in = "client"
to = "198.51.100.0/24"
dev = "wg0"

[[route]]
in = "client"
to = "2001:db8:2::/64"
dev = "wg0"
"#;

/// WireGuard's MTU over a 1500-byte underlay.
pub const DEFAULT_TUNNEL_MTU: u32 = 1420;

/// The namespaces with roles.
pub const CLIENT: &str = "client";
pub const RELAY: &str = "relay";
pub const INTERNET: &str = "internet";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySpec {
    #[serde(rename = "namespace")]
    pub namespaces: Vec<NamespaceSpec>,
    #[serde(rename = "link", default)]
    pub links: Vec<LinkSpec>,
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteSpec>,
    #[serde(rename = "wireguard", default)]
    pub wireguard: Vec<WgSpec>,
    /// Policy routing rules (`ip rule`), as wg-quick sets them up.
    #[serde(rename = "rule", default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSpec>,
}

/// A policy routing rule in one namespace: packets (not) carrying `fwmark`
/// look up `table`; `suppress_prefixlength` ignores that table's routes
/// with a prefix this short or shorter (0: its default route).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(rename = "in")]
    pub ns: String,
    pub family: Family,
    /// A table number, or "main".
    pub table: TableRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwmark: Option<u32>,
    /// Match packets that do not carry this mark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_fwmark: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress_prefixlength: Option<u32>,
    /// Default: the kernel's (just before the last rule added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
}

impl RuleSpec {
    /// As `ip rule` prints it.
    pub fn describe(&self) -> String {
        let mut s = format!("{}", self.family);
        if let Some(p) = self.priority {
            s.push_str(&format!(" pref {p}"));
        }
        if let Some(m) = self.fwmark {
            s.push_str(&format!(" fwmark {m:#x}"));
        }
        if let Some(m) = self.not_fwmark {
            s.push_str(&format!(" not fwmark {m:#x}"));
        }
        if self.table.0 == MAIN_TABLE {
            s.push_str(" lookup main");
        } else {
            s.push_str(&format!(" lookup {}", self.table.0));
        }
        if let Some(p) = self.suppress_prefixlength {
            s.push_str(&format!(" suppress_prefixlength {p}"));
        }
        s
    }
}

/// A routing table: a number, or "main" (254).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRef(pub u32);

pub const MAIN_TABLE: u32 = 254;

impl Serialize for TableRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == MAIN_TABLE {
            s.serialize_str("main")
        } else {
            s.serialize_u32(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for TableRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrText::deserialize(d)? {
            NumOrText::Text(t) if t == "main" => Ok(TableRef(MAIN_TABLE)),
            NumOrText::Num(n) if (1..=i64::from(u32::MAX)).contains(&n) && n != 255 => {
                Ok(TableRef(n as u32))
            }
            other => Err(serde::de::Error::custom(format!(
                "table {}: write a table number from 1 to 4294967295 (not 255, the local table) or \"main\"",
                match other {
                    NumOrText::Num(n) => n.to_string(),
                    NumOrText::Text(t) => format!("\"{t}\""),
                }
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    pub name: String,
    /// Per-namespace sysctls (`net.*` only), set before any link exists.
    #[serde(default)]
    pub sysctls: BTreeMap<String, SysctlValue>,
    /// A stateful firewall on this interface of the namespace, as hotel,
    /// corporate and carrier networks have: of what arrives there, only
    /// replies to what left by it (from exactly the address and port it was
    /// sent to) and ICMP errors about it pass; everything else is dropped.
    /// Rendered by the backend under test, like the namespace's NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<String>,
    /// An nftables script of the scenario's own, loaded in this namespace
    /// (`nft -f -`) after its NAT, whatever the backend under test: for
    /// what natvet's neutral rules do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nft: Option<String>,
}

/// Where sysctl `key` (dotted, as `sysctl` prints it) lives under /proc/sys.
pub fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Whether `key` names a `net.*` sysctl (and nothing outside /proc/sys/net).
pub fn is_net_sysctl(key: &str) -> bool {
    key.starts_with("net.")
        && key.len() > 4
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !key.contains("..")
}

mod limits;
pub use limits::LIMITS;
use limits::*;

/// The longest `nft` script a namespace may carry.
pub const MAX_NFT_SCRIPT: usize = 64 * 1024;

/// A sysctl value, written as a string or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlValue(pub String);

impl Serialize for SysctlValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SysctlValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SysctlValue(NumOrText::deserialize(d)?.into_text()))
    }
}

/// A veth pair between two namespaces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub a: LinkEnd,
    pub b: LinkEnd,
    /// Both ends' MTU; default 1500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkEnd {
    /// "NAMESPACE:INTERFACE".
    pub at: IfRef,
    #[serde(default)]
    pub addresses: Vec<IpNet>,
}

/// A route in one namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The namespace.
    #[serde(rename = "in")]
    pub ns: String,
    /// "198.51.100.0/24", "::/0", or "default" (needs `via`, whose family it takes).
    pub to: String,
    /// Gateway, in a subnet of one of the namespace's links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    /// Output interface (a link end or the WireGuard interface of the namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// Routing table; default main.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<TableRef>,
}

/// One end of the WireGuard tunnel. The relay listens on `relay.listen_port`;
/// the client's port is chosen by each check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WgSpec {
    pub at: IfRef,
    pub addresses: Vec<IpNet>,
    /// Default 1420.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Mark WireGuard's own packets (wg-quick's FwMark), so that policy
    /// routing can send them around the tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwmark: Option<u32>,
    pub peers: Vec<PeerSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    /// The peer's WireGuard interface, "NAMESPACE:INTERFACE".
    pub peer: IfRef,
    /// Default: everything (the client's view) or the peer's tunnel
    /// addresses (the relay's view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<IpNet>>,
    /// Persistent keepalive in seconds (WireGuard's PersistentKeepalive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<u16>,
}

/// "NAMESPACE:INTERFACE".
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfRef {
    pub ns: String,
    pub iface: String,
}

impl fmt::Display for IfRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ns, self.iface)
    }
}

impl std::str::FromStr for IfRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some((ns, iface)) if !ns.is_empty() && !iface.is_empty() => Ok(IfRef {
                ns: ns.to_string(),
                iface: iface.to_string(),
            }),
            _ => Err(format!(
                "'{s}' does not name an interface: write NAMESPACE:INTERFACE, e.g. \"relay:wan\""
            )),
        }
    }
}

impl Serialize for IfRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IfRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The addresses of one family, by the role they play in the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    pub family: Family,
    /// The client's own address on its underlay link.
    pub client_public: IpAddr,
    /// The client's address as the relay sees it: the far end of the relay's
    /// public link (a router's, when the client sits behind a second NAT).
    pub client_seen: IpAddr,
    /// The relay's address on its public interface: the client's endpoint.
    pub relay_public: IpAddr,
    /// The relay's address on its wan interface: masqueraded traffic's source.
    pub relay_wan: IpAddr,
    pub internet: IpAddr,
    pub tunnel_relay: IpAddr,
    pub tunnel_client: IpAddr,
    /// The tunnel's network, masqueraded by the relay.
    pub tunnel_net: IpNet,
}

impl Default for TopologySpec {
    fn default() -> Self {
        // The built-in text is tested (`the_default_topology_is_valid`).
        toml::from_str(DEFAULT).unwrap_or_else(|e| panic!("the built-in topology: {e}"))
    }
}

/// Where an interface comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfKind {
    Veth,
    WireGuard,
}

impl TopologySpec {
    pub fn namespace_names(&self) -> Vec<&str> {
        self.namespaces.iter().map(|n| n.name.as_str()).collect()
    }

    /// Every interface: its reference, kind and addresses.
    pub fn interfaces(&self) -> Vec<(&IfRef, IfKind, &[IpNet])> {
        let mut v: Vec<(&IfRef, IfKind, &[IpNet])> = Vec::new();
        for l in &self.links {
            v.push((&l.a.at, IfKind::Veth, &l.a.addresses));
            v.push((&l.b.at, IfKind::Veth, &l.b.addresses));
        }
        for w in &self.wireguard {
            v.push((&w.at, IfKind::WireGuard, &w.addresses));
        }
        v
    }

    /// The address of family `f` on `at`.
    pub fn address(&self, at: &IfRef, f: Family) -> Option<IpNet> {
        self.interfaces()
            .into_iter()
            .filter(|(r, _, _)| *r == at)
            .flat_map(|(_, _, a)| a.iter())
            .find(|a| a.family() == f)
            .copied()
    }

    pub fn wg_in(&self, ns: &str) -> Option<&WgSpec> {
        self.wireguard.iter().find(|w| w.at.ns == ns)
    }

    /// The link that has `at` as one end, with the other end.
    pub fn link_of(&self, at: &IfRef) -> Option<(&LinkSpec, &LinkEnd)> {
        self.links.iter().find_map(|l| {
            if l.a.at == *at {
                Some((l, &l.b))
            } else if l.b.at == *at {
                Some((l, &l.a))
            } else {
                None
            }
        })
    }

    /// The addresses of family `f` by role.
    pub fn addrs(&self, f: Family, public: &str, wan: &str) -> Result<Addrs, String> {
        let need = |at: &IfRef, what: &str| {
            self.address(at, f).ok_or_else(|| {
                format!("{what} {at} has no {f} address, and the scenario runs over {f}: give it one or drop {f} from relay.families")
            })
        };
        let relay_public = IfRef {
            ns: RELAY.into(),
            iface: public.into(),
        };
        let relay_wan = IfRef {
            ns: RELAY.into(),
            iface: wan.into(),
        };
        let seen_end = self
            .link_of(&relay_public)
            .map(|(_, other)| other.at.clone())
            .ok_or_else(|| format!("the relay's public interface {relay_public} is not an end of any [[topology.link]] (relay.public_interface names it)"))?;
        let wg_relay = self
            .wg_in(RELAY)
            .ok_or("no [[topology.wireguard]] in the relay namespace")?;
        let wg_client = self
            .wg_in(CLIENT)
            .ok_or("no [[topology.wireguard]] in the client namespace")?;
        let first_in = |ns: &str, what: &str| {
            self.links
                .iter()
                .flat_map(|l| [&l.a, &l.b])
                .filter(|e| e.at.ns == ns)
                .flat_map(|e| e.addresses.iter())
                .find(|a| a.family() == f)
                .map(|a| a.addr)
                .ok_or_else(|| {
                    format!("{what} has no {f} address on any link, and the scenario runs over {f}")
                })
        };
        let tunnel_relay = need(&wg_relay.at, "the relay's WireGuard interface")?;
        Ok(Addrs {
            family: f,
            client_public: first_in(CLIENT, "the client")?,
            client_seen: need(&seen_end, "the far end of the relay's public link,")?.addr,
            relay_public: need(&relay_public, "the relay's public interface")?.addr,
            relay_wan: need(&relay_wan, "the relay's wan interface")?.addr,
            internet: first_in(INTERNET, "the internet host")?,
            tunnel_relay: tunnel_relay.addr,
            tunnel_client: need(&wg_client.at, "the client's WireGuard interface")?.addr,
            tunnel_net: tunnel_relay.network(),
        })
    }

    /// A route's destination.
    pub fn route_dest(r: &RouteSpec) -> Result<IpNet, String> {
        if r.to == "default" {
            return match r.via {
                Some(IpAddr::V4(_)) => Ok(IpNet::any(Family::Ipv4)),
                Some(IpAddr::V6(_)) => Ok(IpNet::any(Family::Ipv6)),
                None => Err(format!(
                    "route in {} to \"default\" needs `via` (its family says which default), or write \"0.0.0.0/0\" or \"::/0\"",
                    r.ns
                )),
            };
        }
        r.to.parse()
    }

    /// Check everything a build relies on. `families`: the scenario's.
    pub fn validate(&self, families: &[Family], public: &str, wan: &str) -> Result<(), Invalid> {
        let top = |e: crate::bounds::OutOfRange, at: &[&str]| {
            let mut path = vec!["topology"];
            path.extend_from_slice(at);
            Invalid::from(e.under(&path))
        };
        // Too few: the roles' own message below says which is missing.
        if self.namespaces.len() as u64 > NAMESPACES.max {
            NAMESPACES
                .check_len(self.namespaces.len())
                .map_err(|e| top(e, &[]))?;
        }
        LINKS.check_len(self.links.len()).map_err(|e| top(e, &[]))?;
        ROUTES
            .check_len(self.routes.len())
            .map_err(|e| top(e, &[]))?;
        RULES.check_len(self.rules.len()).map_err(|e| top(e, &[]))?;
        for (i, n) in self.namespaces.iter().enumerate() {
            let i = i.to_string();
            SYSCTLS
                .check_len(n.sysctls.len())
                .map_err(|e| top(e, &["namespace", &i]))?;
        }
        for (i, l) in self.links.iter().enumerate() {
            if let Some(m) = l.mtu {
                LINK_MTU
                    .check(m)
                    .map_err(|e| top(e, &["link", &i.to_string()]))?;
            }
        }
        for (i, w) in self.wireguard.iter().enumerate() {
            let i = i.to_string();
            if let Some(m) = w.mtu {
                TUNNEL_MTU
                    .check(m)
                    .map_err(|e| top(e, &["wireguard", &i]))?;
            }
            for (j, p) in w.peers.iter().enumerate() {
                if let Some(k) = p.keepalive {
                    PEER_KEEPALIVE
                        .check(k)
                        .map_err(|e| top(e, &["wireguard", &i, "peers", &j.to_string()]))?;
                }
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            let i = i.to_string();
            if let Some(p) = r.suppress_prefixlength {
                SUPPRESS_PREFIXLENGTH
                    .check(p)
                    .map_err(|e| top(e, &["rule", &i]))?;
            }
            if let Some(p) = r.priority {
                PRIORITY.check(p).map_err(|e| top(e, &["rule", &i]))?;
            }
        }
        let names = self.namespace_names();
        let mut seen = BTreeSet::new();
        for n in &self.namespaces {
            let ok = !n.name.is_empty()
                && n.name.len() <= 32
                && n.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(format!(
                    "namespace name '{}' must be 1-32 characters of a-z, 0-9 and '-'",
                    n.name
                )
                .into());
            }
            if !seen.insert(n.name.as_str()) {
                return Err(format!("namespace '{}' is defined twice", n.name).into());
            }
            for key in n.sysctls.keys() {
                if !is_net_sysctl(key) {
                    return Err(format!(
                        "sysctl '{key}' in namespace '{}': only net.* sysctls belong to a network namespace (e.g. \"net.ipv4.ip_forward\")",
                        n.name
                    ).into());
                }
            }
        }
        for n in &self.namespaces {
            if let Some(script) = &n.nft {
                if script.trim().is_empty() || script.len() > MAX_NFT_SCRIPT {
                    return Err(format!(
                        "namespace '{}': its nft script is empty or longer than {MAX_NFT_SCRIPT} bytes",
                        n.name
                    ).into());
                }
            }
        }
        for n in &self.namespaces {
            let Some(iface) = &n.firewall else { continue };
            let at = IfRef {
                ns: n.name.clone(),
                iface: iface.clone(),
            };
            let on_a_link = self
                .interfaces()
                .iter()
                .any(|(r, k, _)| **r == at && *k == IfKind::Veth);
            if !on_a_link {
                return Err(format!(
                    "namespace '{}' puts its firewall on {iface}, which is not one of its link ends: name the interface of a [[topology.link]] end in {}",
                    n.name, n.name
                ).into());
            }
        }
        for role in [CLIENT, RELAY, INTERNET] {
            if !seen.contains(role) {
                return Err(format!(
                    "the topology has no namespace '{role}': natvet's checks need namespaces named client, relay and internet (others are routers)"
                ).into());
            }
        }
        let defined = |ns: &str, what: &str| {
            if names.contains(&ns) {
                Ok(())
            } else {
                Err(format!(
                    "{what} refers to namespace '{ns}', which is not defined; defined: {}",
                    names.join(", ")
                ))
            }
        };
        // Interfaces: defined namespaces, valid and unique names.
        let mut ifaces = BTreeSet::new();
        for (at, kind, addrs) in self.interfaces() {
            let what = match kind {
                IfKind::Veth => format!("link end {at}"),
                IfKind::WireGuard => format!("WireGuard interface {at}"),
            };
            defined(&at.ns, &what)?;
            let ok = at.iface.len() <= 15
                && at.iface != "lo"
                && at
                    .iface
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                return Err(format!(
                    "{what}: interface names are 1-15 characters of letters, digits, '-', '_' and '.', and not 'lo'"
                ).into());
            }
            if !ifaces.insert(at.clone()) {
                return Err(format!("interface {at} is defined twice").into());
            }
            for f in [Family::Ipv4, Family::Ipv6] {
                let n = addrs.iter().filter(|a| a.family() == f).count();
                if n > 1 {
                    return Err(format!(
                        "{what} has {n} {f} addresses: give each interface at most one per family"
                    )
                    .into());
                }
            }
        }
        for l in &self.links {
            if l.a.at.ns == l.b.at.ns {
                return Err(format!(
                    "link {} <-> {}: both ends are in namespace '{}'; a link joins two namespaces",
                    l.a.at, l.b.at, l.a.at.ns
                )
                .into());
            }
            for x in &l.a.addresses {
                for y in l.b.addresses.iter().filter(|y| y.family() == x.family()) {
                    if !x.overlaps(y) {
                        return Err(format!(
                            "link {} <-> {}: {x} and {y} are not in one subnet, so the two ends cannot reach each other",
                            l.a.at, l.b.at
                        ).into());
                    }
                }
            }
        }
        // Addresses: none twice, and no two interfaces of one namespace on
        // overlapping subnets.
        let all = self.interfaces();
        for (i, (at, _, addrs)) in all.iter().enumerate() {
            for (other, _, others) in &all[i + 1..] {
                for x in addrs.iter() {
                    for y in others.iter() {
                        if x.addr == y.addr {
                            return Err(format!(
                                "address {} of {other} is already {at}'s: give each interface its own",
                                x.addr
                            ).into());
                        }
                        if at.ns == other.ns && x.overlaps(y) {
                            return Err(format!(
                                "{at} ({x}) and {other} ({y}) are in one namespace with overlapping subnets: routing between them would be ambiguous"
                            ).into());
                        }
                    }
                }
            }
        }
        // The tunnel: one WireGuard interface in the client and one in the
        // relay, each listing the other as its peer.
        let wg_names: Vec<String> = self.wireguard.iter().map(|w| w.at.to_string()).collect();
        for w in &self.wireguard {
            if w.at.ns != CLIENT && w.at.ns != RELAY {
                return Err(format!(
                    "WireGuard interface {}: natvet runs one tunnel, between the client and the relay namespaces",
                    w.at
                ).into());
            }
            for p in &w.peers {
                if !self.wireguard.iter().any(|o| o.at == p.peer) {
                    return Err(format!(
                        "WireGuard interface {} names peer {}, which no [[topology.wireguard]] defines; defined: {}",
                        w.at,
                        p.peer,
                        wg_names.join(", ")
                    ).into());
                }
            }
        }
        for (here, there) in [(CLIENT, RELAY), (RELAY, CLIENT)] {
            let mine: Vec<&WgSpec> = self.wireguard.iter().filter(|w| w.at.ns == here).collect();
            let Some(w) = mine.first() else {
                return Err(format!(
                    "no [[topology.wireguard]] in namespace '{here}': the tunnel runs between client and relay, so each needs one"
                ).into());
            };
            if mine.len() > 1 {
                return Err(format!(
                    "namespace '{here}' has {} WireGuard interfaces; natvet runs one tunnel, so give it one",
                    mine.len()
                ).into());
            }
            let peer = self.wg_in(there).map(|o| &o.at);
            if w.peers.len() != 1 || peer != Some(&w.peers[0].peer) {
                return Err(format!(
                    "WireGuard interface {} must have exactly one peer, {}: the tunnel runs between client and relay",
                    w.at,
                    peer.map(|p| p.to_string()).unwrap_or_else(|| format!("the {there}'s interface"))
                ).into());
            }
        }
        // Routes.
        for r in &self.routes {
            defined(&r.ns, "a [[topology.route]]")?;
            let dest = Self::route_dest(r).map_err(|e| format!("route in {}: {e}", r.ns))?;
            if r.via.is_none() && r.dev.is_none() {
                return Err(format!(
                    "route in {} to {}: give `via` (a gateway) or `dev` (an interface), or both",
                    r.ns, r.to
                )
                .into());
            }
            if let Some(dev) = &r.dev {
                let at = IfRef {
                    ns: r.ns.clone(),
                    iface: dev.clone(),
                };
                if !ifaces.contains(&at) {
                    return Err(format!(
                        "route in {} to {}: dev {dev} is not an interface of {}",
                        r.ns, r.to, r.ns
                    )
                    .into());
                }
            }
            if let Some(via) = r.via {
                if via.is_ipv4() != dest.addr.is_ipv4() {
                    return Err(format!(
                        "route in {} to {}: gateway {via} is of the other address family",
                        r.ns, r.to
                    )
                    .into());
                }
                let reachable = all
                    .iter()
                    .filter(|(at, _, _)| at.ns == r.ns)
                    .flat_map(|(_, _, a)| a.iter())
                    .any(|a| a.contains(via));
                if !reachable {
                    return Err(format!(
                        "route in {} to {}: gateway {via} is in no subnet of {}'s interfaces",
                        r.ns, r.to, r.ns
                    )
                    .into());
                }
            }
        }
        for r in &self.rules {
            defined(&r.ns, "a [[topology.rule]]")?;
            if r.fwmark.is_some() && r.not_fwmark.is_some() {
                return Err(format!(
                    "rule in {} to table {}: give fwmark or not_fwmark, not both",
                    r.ns, r.table.0
                )
                .into());
            }
        }
        for f in families {
            self.addrs(*f, public, wan)?;
        }
        Ok(())
    }

    /// Whether `dev` in `ns` is the tunnel's (routes over it wait for the tunnel).
    pub fn is_tunnel(&self, ns: &str, dev: &str) -> bool {
        self.wireguard
            .iter()
            .any(|w| w.at.ns == ns && w.at.iface == dev)
    }

    /// The topology in words, for `natvet verify --dry-run` and `scenarios show`.
    pub fn describe(&self, families: &[Family]) -> String {
        let keep = |a: &&IpNet| families.contains(&a.family());
        let list = |a: &[IpNet]| {
            a.iter()
                .filter(keep)
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = format!(
            "  namespaces (anonymous: held by the agent, gone when it exits): {}\n",
            self.namespace_names().join(", ")
        );
        for n in &self.namespaces {
            for (k, v) in &n.sysctls {
                out.push_str(&format!("  sysctl      {} {k}={}\n", n.name, v.0));
            }
        }
        for l in &self.links {
            out.push_str(&format!(
                "  veth        {} [{}] <-> {} [{}]{}\n",
                l.a.at,
                list(&l.a.addresses),
                l.b.at,
                list(&l.b.addresses),
                l.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default()
            ));
        }
        for w in &self.wireguard {
            let peers: Vec<String> = w
                .peers
                .iter()
                .map(|p| {
                    let mut s = p.peer.to_string();
                    if let Some(k) = p.keepalive {
                        s.push_str(&format!(" keepalive {k}s"));
                    }
                    s
                })
                .collect();
            out.push_str(&format!(
                "  wireguard   {} [{}] mtu {}, peer {}\n",
                w.at,
                list(&w.addresses),
                w.mtu.unwrap_or(DEFAULT_TUNNEL_MTU),
                peers.join(", ")
            ));
        }
        for r in &self.routes {
            let family_ok = Self::route_dest(r)
                .map(|d| families.contains(&d.family()))
                .unwrap_or(true);
            if !family_ok {
                continue;
            }
            out.push_str(&format!(
                "  route       {} {}{}{}{}\n",
                r.ns,
                r.to,
                r.via.map(|v| format!(" via {v}")).unwrap_or_default(),
                r.dev
                    .as_ref()
                    .map(|d| format!(" dev {d}"))
                    .unwrap_or_default(),
                r.table
                    .map(|t| format!(" table {}", t.0))
                    .unwrap_or_default()
            ));
        }
        for r in self.rules.iter().filter(|r| families.contains(&r.family)) {
            out.push_str(&format!("  rule        {} {}\n", r.ns, r.describe()));
        }
        out
    }
}

#[cfg(test)]
mod tests;

//! Declarative scenarios: what the relay is configured to do, and which checks
//! prove it. Parsed from TOML, validated once, before any VM boots.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::nat::BackendKind;
use crate::types::{human_bytes, Family, IpNet, PortRange, Protocol};

pub mod topology;

pub use topology::{Addrs, TopologySpec};

/// The scenarios that ship with natvet, embedded so the binary works anywhere.
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "extended-ports",
        include_str!("../../../scenarios/extended-ports.toml"),
    ),
    (
        "port-exhaustion",
        include_str!("../../../scenarios/port-exhaustion.toml"),
    ),
    (
        "ruleset-reload",
        include_str!("../../../scenarios/ruleset-reload.toml"),
    ),
    (
        "flowtable",
        include_str!("../../../scenarios/flowtable.toml"),
    ),
    ("pmtu", include_str!("../../../scenarios/pmtu.toml")),
    (
        "behind-nat",
        include_str!("../../../scenarios/behind-nat.toml"),
    ),
    (
        "policy-routing",
        include_str!("../../../scenarios/policy-routing.toml"),
    ),
    (
        "pmtu-router",
        include_str!("../../../scenarios/pmtu-router.toml"),
    ),
    (
        "port-forward",
        include_str!("../../../scenarios/port-forward.toml"),
    ),
    ("rekey", include_str!("../../../scenarios/rekey.toml")),
];

/// A scenario as the user wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name: lower-case letters, digits and '-'.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// NAT backends that configure the relay; each is a run of its own.
    #[serde(default = "default_backends")]
    pub backends: Vec<BackendKind>,
    pub relay: RelayConfig,
    /// Takes minutes: runs only when named (`--scenario NAME`), not in the
    /// default set of `vet`, `gate` and `verify`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub slow: bool,
    /// The network: namespaces, links, routes, sysctls and the tunnel.
    /// Default: client ---- relay ---- internet (`natvet scenarios show`).
    #[serde(default)]
    pub topology: TopologySpec,
    /// NAT beyond the relay's own shorthand (`relay.masquerade`,
    /// `relay.redirect_udp`): in any namespace, rendered by the backend under test.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nat: Vec<NatSpec>,
    /// The checks, in the order they run.
    #[serde(rename = "check")]
    pub checks: Vec<CheckSpec>,
}

fn default_backends() -> Vec<BackendKind> {
    vec![BackendKind::Nftables]
}

/// How the relay is set up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The UDP port WireGuard listens on.
    #[serde(default = "default_listen_port")]
    pub listen_port: u16,
    /// UDP ports redirected to `listen_port` ("53", "4000-33433").
    #[serde(default)]
    pub redirect_udp: Vec<PortRange>,
    /// Masquerade tunnel traffic to the relay's public address.
    #[serde(default = "yes")]
    pub masquerade: bool,
    /// Translated TCP/UDP source ports come from this range only ("40000-40007").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade_ports: Option<PortRange>,
    /// Address families the relay serves; every check runs once per family
    /// (IPv6 results are named `ipv6/CHECK`).
    #[serde(default = "default_families")]
    pub families: Vec<Family>,
    /// Offload forwarded TCP/UDP flows between the tunnel and the wan link
    /// to an nftables flowtable (software fast path), whatever the NAT backend.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flowtable: bool,
    /// MTU of the relay's wan link (and the internet host's); default 1500.
    /// Below the tunnel's 1420, full-size packets from the tunnel cannot be
    /// forwarded and the relay must say so with ICMP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wan_mtu: Option<u32>,
    /// The relay's interface toward clients (redirects apply there).
    #[serde(default = "default_public")]
    pub public_interface: String,
    /// The relay's interface toward the internet (masquerade applies there).
    #[serde(default = "default_wan")]
    pub wan_interface: String,
}

fn default_public() -> String {
    "public".into()
}
fn default_wan() -> String {
    "wan".into()
}

/// A NAT rule in backend-neutral form, for one namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum NatSpec {
    /// Traffic from `source` leaving by `out` takes that interface's address.
    Masquerade {
        #[serde(rename = "in")]
        ns: String,
        out: String,
        source: IpNet,
        /// Translated TCP/UDP source ports come from this range only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ports: Option<PortRange>,
    },
    /// Traffic from `source` leaving by `out` takes the address `to`.
    Snat {
        #[serde(rename = "in")]
        ns: String,
        out: String,
        source: IpNet,
        to: std::net::IpAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ports: Option<PortRange>,
    },
    /// `protocol` traffic arriving on `in_interface` for `ports` goes to
    /// `to` (port `to_port`, or the port it came to): port forwarding.
    Dnat {
        #[serde(rename = "in")]
        ns: String,
        in_interface: String,
        protocol: Protocol,
        ports: Vec<PortRange>,
        to: std::net::IpAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_port: Option<u16>,
    },
}

impl NatSpec {
    pub fn namespace(&self) -> &str {
        match self {
            NatSpec::Masquerade { ns, .. }
            | NatSpec::Snat { ns, .. }
            | NatSpec::Dnat { ns, .. } => ns,
        }
    }
}

fn default_families() -> Vec<Family> {
    vec![Family::Ipv4]
}

fn default_listen_port() -> u16 {
    51820
}
fn yes() -> bool {
    true
}

/// One check, with its parameters. Each expands to one or more named results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CheckSpec {
    /// A handshake completes with the client's endpoint at each port.
    Handshake { ports: Vec<u16> },
    /// No handshake completes with the client's endpoint at each port.
    NoHandshake { ports: Vec<u16> },
    /// Traffic from the client crosses the tunnel and the NAT, and replies return.
    Forward { protocols: Vec<Protocol> },
    /// A TCP transfer through tunnel and NAT arrives intact (SHA-256 both ends).
    Transfer {
        #[serde(default = "default_transfer")]
        bytes: u64,
    },
    /// Conntrack maps a flow to `port` onto the listen port.
    ConntrackRedirect { port: u16 },
    /// Conntrack maps a forwarded flow onto the relay's public address.
    ConntrackMasquerade,
    /// No WARN, BUG, oops, soft lockup or RCU stall in the kernel log.
    KernelHealth,
    /// A plain UDP datagram to each port reaches a socket on the listen port
    /// (source intact) and its reply returns from that port. Runs before the
    /// tunnel is up, so it needs no WireGuard.
    Redirect { ports: Vec<u16> },
    /// A plain UDP datagram to each port does not reach the listen port.
    NoRedirect { ports: Vec<u16> },
    /// An ICMP port unreachable from beyond the NAT reaches the client,
    /// translated back to the client's own address and port.
    IcmpError,
    /// After `conntrack -F` on the relay, a flow that worked works again.
    ConntrackFlush,
    /// Many concurrent UDP flows all get replies and distinct translated ports.
    ManyFlows {
        #[serde(default = "default_flows")]
        flows: u32,
    },
    /// A full-size datagram (the tunnel's MTU, DF set) from the client: it
    /// crosses tunnel and NAT intact, or, with `icmp_mtu`, the relay answers
    /// "fragmentation needed" / "packet too big" with that MTU.
    TunnelMtu {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        icmp_mtu: Option<u32>,
    },
    /// A UDP flow through tunnel and NAT is offloaded to the relay's
    /// flowtable: its conntrack entry says [OFFLOAD].
    FlowtableOffload,
    /// More flows than `relay.masquerade_ports` holds: the range fills, the
    /// rest are dropped cleanly, and the flows that got a port keep working.
    /// The relay's ruleset is re-applied `reloads` times while a transfer,
    /// an established UDP flow and a stream of new UDP flows go on: nothing
    /// is lost and nothing leaves untranslated. `atomic = false` empties the
    /// ruleset before each re-apply, as a careless deploy script would (a
    /// negative control: it must fail).
    ReloadUnderTraffic {
        #[serde(default = "default_reloads")]
        reloads: u32,
        #[serde(default = "yes")]
        atomic: bool,
    },
    /// After the client has sent nothing for `idle` seconds (longer than
    /// the UDP timeout of a NAT in front of it), a datagram from the relay
    /// through the tunnel still reaches the client: the client's persistent
    /// keepalive held the NAT's mapping open.
    Keepalive {
        #[serde(default = "default_idle")]
        idle: u32,
    },
    /// Interface `at`, whose address the relay sees as the client's (the
    /// client's own, or its NAT's outside), moves to the address in `to` of
    /// the family under test: traffic from the client crosses tunnel and NAT
    /// again, the relay's peer endpoint follows, and the reply returns.
    Roaming { at: topology::IfRef, to: Vec<IpNet> },
    /// Two clients use the same source port at once, one to the listen
    /// port and one to each redirected `port` (plain UDP, before the
    /// tunnel): each datagram reaches the listen port's socket, from a
    /// source of its own, and each reply returns to the client that sent it,
    /// from the port it sent to. The second client is `second` (one address
    /// per family), added to the first client's interface `at` for the check.
    SameSourcePort {
        ports: Vec<u16>,
        at: topology::IfRef,
        second: Vec<IpNet>,
    },
    /// A process on the relay binds the port a masqueraded client flow was
    /// given and talks to the same server: netfilter must keep the two
    /// flows apart (a clash of their reply tuples), so each gets its own
    /// replies and neither gets the other's.
    PortShadow,
    /// A masqueraded UDP flow goes idle: its conntrack entry on the relay is
    /// gone within `within` seconds (the relay's UDP timeouts, set in its
    /// sysctls), and the same socket then works again with a fresh entry.
    ConntrackExpiry {
        #[serde(default = "default_within")]
        within: u32,
    },
    /// UDP GSO: the client hands the kernel `bursts` buffers of `segments`
    /// datagrams of `segment` bytes each (one send per buffer, UDP_SEGMENT);
    /// every datagram crosses tunnel and masquerade and arrives at the
    /// internet host intact, from the relay's address.
    UdpGso {
        #[serde(default = "default_segment")]
        segment: u32,
        #[serde(default = "default_segments")]
        segments: u32,
        #[serde(default = "default_bursts")]
        bursts: u32,
    },
    /// The internet host reaches the relay's wan address on `port`; the
    /// relay's `[[nat]]` dnat rule forwards it through the tunnel to the
    /// client, which sees the internet host's own address; the reply
    /// returns from the relay's address and `port`.
    PortForward { protocols: Vec<Protocol>, port: u16 },
    /// The client keeps a flow through the tunnel going (one UDP echo a
    /// second) past WireGuard's REKEY_AFTER_TIME (120 s): a new handshake
    /// completes through the NATs and traffic goes on over the new keys.
    Rekey,
    PortExhaustion {
        #[serde(default = "default_flows_beyond")]
        beyond: u32,
        /// The range the check expects to fill; default relay.masquerade_ports.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        range: Option<PortRange>,
    },
}

fn default_flows() -> u32 {
    200
}
fn default_flows_beyond() -> u32 {
    4
}
fn default_segment() -> u32 {
    1200
}
fn default_segments() -> u32 {
    40
}
fn default_bursts() -> u32 {
    4
}
fn default_within() -> u32 {
    5
}
fn default_idle() -> u32 {
    4
}
fn default_reloads() -> u32 {
    20
}

fn default_transfer() -> u64 {
    1 << 20
}

impl CheckSpec {
    /// The names of the results this check produces, in order.
    pub fn result_names(&self) -> Vec<String> {
        match self {
            CheckSpec::Handshake { ports } => {
                ports.iter().map(|p| format!("handshake/{p}")).collect()
            }
            CheckSpec::NoHandshake { ports } => {
                ports.iter().map(|p| format!("no-handshake/{p}")).collect()
            }
            CheckSpec::Forward { protocols } => {
                protocols.iter().map(|p| format!("forward/{p}")).collect()
            }
            CheckSpec::Transfer { bytes } => vec![format!("transfer/{}", human_bytes(*bytes))],
            CheckSpec::ConntrackRedirect { port } => vec![format!("conntrack/redirect-{port}")],
            CheckSpec::ConntrackMasquerade => vec!["conntrack/masquerade".into()],
            CheckSpec::KernelHealth => vec!["kernel-health".into()],
            CheckSpec::Redirect { ports } => {
                ports.iter().map(|p| format!("redirect/{p}")).collect()
            }
            CheckSpec::NoRedirect { ports } => {
                ports.iter().map(|p| format!("no-redirect/{p}")).collect()
            }
            CheckSpec::IcmpError => vec!["icmp-error/port-unreachable".into()],
            CheckSpec::ConntrackFlush => vec!["conntrack/flush".into()],
            CheckSpec::ManyFlows { flows } => vec![format!("many-flows/{flows}")],
            CheckSpec::PortExhaustion { .. } => vec!["port-exhaustion".into()],
            CheckSpec::ReloadUnderTraffic { .. } => vec!["reload-under-traffic".into()],
            CheckSpec::FlowtableOffload => vec!["flowtable/offload".into()],
            CheckSpec::Keepalive { idle } => vec![format!("keepalive/idle-{idle}s")],
            CheckSpec::SameSourcePort { ports, .. } => ports
                .iter()
                .map(|p| format!("same-source-port/{p}"))
                .collect(),
            CheckSpec::PortShadow => vec!["nat-clash/port-shadow".into()],
            CheckSpec::Rekey => vec!["rekey".into()],
            CheckSpec::PortForward { protocols, port } => protocols
                .iter()
                .map(|p| format!("port-forward/{p}-{port}"))
                .collect(),
            CheckSpec::UdpGso {
                segments, bursts, ..
            } => {
                vec![format!("udp-gso/{bursts}x{segments}")]
            }
            CheckSpec::ConntrackExpiry { .. } => vec!["conntrack/expiry".into()],
            CheckSpec::Roaming { at, .. } => vec![format!("roaming/{at}")],
            CheckSpec::TunnelMtu { icmp_mtu: None } => vec!["tunnel-mtu/full-size".into()],
            CheckSpec::TunnelMtu { icmp_mtu: Some(m) } => vec![format!("tunnel-mtu/icmp-{m}")],
        }
    }

    /// The names of this check's results in family `f`.
    pub fn result_names_in(&self, f: Family) -> Vec<String> {
        self.result_names()
            .into_iter()
            .map(|n| format!("{}{n}", f.prefix()))
            .collect()
    }

    /// Whether the check runs once per family (kernel health runs once).
    pub fn per_family(&self) -> bool {
        !matches!(self, CheckSpec::KernelHealth)
    }

    /// Checks that run before the tunnel is up (they need the listen port free).
    pub fn before_tunnel(&self) -> bool {
        matches!(
            self,
            CheckSpec::Redirect { .. }
                | CheckSpec::NoRedirect { .. }
                | CheckSpec::SameSourcePort { .. }
        )
    }
}

/// A scenario that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("no scenario named '{name}'; shipped scenarios: {known}. Pass a path to a .toml file for your own")]
    UnknownName { name: String, known: String },
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("scenario {origin} is not valid TOML for natvet: {message}")]
    Parse { origin: String, message: String },
    #[error("scenario {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// The shipped scenarios a run takes when none is named: all but the slow ones.
pub fn default_set() -> Vec<&'static str> {
    SHIPPED
        .iter()
        .filter(|(name, _)| Scenario::load(name).map(|s| !s.slow).unwrap_or(true))
        .map(|(name, _)| *name)
        .collect()
}

/// The line a validation message is most likely about: of the names,
/// addresses and references the message quotes, the one written on the
/// fewest lines of the text (the first such on a tie), and the last line
/// that holds it. None when the message names nothing written there (a
/// default, for example).
fn locate(text: &str, message: &str) -> Option<usize> {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.split_once('#').map_or(l, |(code, _)| code))
        .collect();
    let holds = |line: &str, token: &str| {
        line.match_indices(token).any(|(i, _)| {
            let before = line[..i].chars().next_back();
            let after = line[i + token.len()..].chars().next();
            let part = |c: Option<char>| {
                c.is_some_and(|c| c.is_ascii_alphanumeric() || ".:_-".contains(c))
            };
            !part(before) && !part(after)
        })
    };
    message
        .split(|c: char| c.is_whitespace() || "'\"`,;()[]".contains(c))
        .map(|t| t.trim_end_matches(['.', ':']))
        .filter(|t| t.len() >= 3)
        .filter_map(|token| {
            // A plain word counts only where the text quotes it ("home").
            let special = token
                .chars()
                .any(|c| c.is_ascii_digit() || ":./-_".contains(c));
            let quoted = format!("\"{token}\"");
            let hits: Vec<usize> = (0..lines.len())
                .filter(|i| {
                    if special {
                        holds(lines[*i], token)
                    } else {
                        lines[*i].contains(&quoted)
                    }
                })
                .collect();
            Some((hits.len(), *hits.last()? + 1))
        })
        .min_by_key(|(n, _)| *n)
        .map(|(_, line)| line)
}

impl Scenario {
    /// A shipped scenario by name, or a file by path (anything with '/' or ending in .toml).
    pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
        if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
            let path = Path::new(name_or_path);
            let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            return Scenario::parse(&text, &path.display().to_string());
        }
        match SHIPPED.iter().find(|(n, _)| *n == name_or_path) {
            Some((name, text)) => Scenario::parse(text, &format!("'{name}' (shipped)")),
            None => Err(ScenarioError::UnknownName {
                name: name_or_path.to_string(),
                known: SHIPPED
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Parse and validate. `origin` names the source in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        scenario
            .validate()
            .map_err(|message| ScenarioError::Invalid {
                origin: origin.to_string(),
                message: match locate(text, &message) {
                    Some(line) => format!("line {line}: {message}"),
                    None => message,
                },
            })?;
        Ok(scenario)
    }

    fn validate(&self) -> Result<(), String> {
        let valid_name = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_name {
            return Err(format!(
                "name '{}' must be non-empty and use only a-z, 0-9 and '-'",
                self.name
            ));
        }
        if let Some(m) = self.relay.wan_mtu {
            if !(1280..=9000).contains(&m) {
                return Err(format!(
                    "relay.wan_mtu {m} is outside 1280-9000 (IPv6 needs at least 1280)"
                ));
            }
        }
        if self.relay.listen_port == 0 {
            return Err("relay.listen_port must be a port from 1 to 65535".into());
        }
        if self.backends.is_empty() {
            return Err(
                "backends is empty: name at least one of nftables, iptables-nft, iptables-legacy"
                    .into(),
            );
        }
        let mut sorted = self.relay.redirect_udp.clone();
        sorted.sort_by_key(|r| r.first);
        for pair in sorted.windows(2) {
            if pair[0].last >= pair[1].first {
                return Err(format!(
                    "relay.redirect_udp ranges {} and {} overlap",
                    pair[0], pair[1]
                ));
            }
        }
        if self.checks.is_empty() {
            return Err("no checks: add at least one [[check]] table".into());
        }
        if self.relay.families.is_empty() {
            return Err("relay.families is empty: name ipv4, ipv6 or both".into());
        }
        if self.relay.families.len() == 2 && self.relay.families[0] == self.relay.families[1] {
            return Err(format!(
                "relay.families names {} twice",
                self.relay.families[0]
            ));
        }
        let relay = &self.relay;
        self.topology
            .validate(
                &relay.families,
                &relay.public_interface,
                &relay.wan_interface,
            )
            .map_err(|e| format!("topology: {e}"))?;
        for n in &self.nat {
            let ns = n.namespace();
            let (out, source) = match n {
                NatSpec::Masquerade { out, source, .. } | NatSpec::Snat { out, source, .. } => {
                    (out, Some(source))
                }
                NatSpec::Dnat {
                    in_interface,
                    protocol,
                    ports,
                    ..
                } => {
                    if ports.is_empty() || *protocol == Protocol::Icmp {
                        return Err(format!(
                            "a [[nat]] dnat rule in {ns} needs `protocol` \"tcp\" or \"udp\" and at least one port in `ports`"
                        ));
                    }
                    (in_interface, None)
                }
            };
            if !self.topology.namespace_names().contains(&ns) {
                return Err(format!(
                    "a [[nat]] rule is in namespace '{ns}', which the topology does not define; defined: {}",
                    self.topology.namespace_names().join(", ")
                ));
            }
            let at = topology::IfRef {
                ns: ns.to_string(),
                iface: out.clone(),
            };
            if !self.topology.interfaces().iter().any(|(r, _, _)| **r == at) {
                return Err(format!(
                    "a [[nat]] rule in {ns} names interface {out}, which is not an interface of {ns}"
                ));
            }
            if let (NatSpec::Snat { to, .. }, Some(source)) = (n, source) {
                if to.is_ipv4() != source.addr.is_ipv4() {
                    return Err(format!(
                        "a [[nat]] snat rule in {ns} translates {source} to {to}, an address of the other family"
                    ));
                }
            }
        }
        let exhausts = self
            .checks
            .iter()
            .any(|c| matches!(c, CheckSpec::PortExhaustion { .. }));
        let unranged = self
            .checks
            .iter()
            .any(|c| matches!(c, CheckSpec::PortExhaustion { range: None, .. }));
        if unranged && self.relay.masquerade_ports.is_none() || exhausts && !self.relay.masquerade {
            return Err(
                "check port-exhaustion needs relay.masquerade = true and relay.masquerade_ports (e.g. \"40000-40007\") to exhaust"
                    .into(),
            );
        }
        if let Some(r) = self.relay.masquerade_ports.filter(|_| exhausts) {
            if r.last - r.first >= 1024 {
                return Err(format!(
                    "relay.masquerade_ports {r} holds {} ports: natvet fills it in the port-exhaustion check, so keep it at most 1024 ports",
                    u32::from(r.last - r.first) + 1
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for check in &self.checks {
            let empty = match check {
                CheckSpec::Handshake { ports }
                | CheckSpec::NoHandshake { ports }
                | CheckSpec::Redirect { ports }
                | CheckSpec::NoRedirect { ports } => ports.is_empty(),
                CheckSpec::Forward { protocols } => protocols.is_empty(),
                CheckSpec::PortForward { protocols, port } => protocols.is_empty() || *port == 0,
                CheckSpec::Transfer { bytes } => *bytes == 0,
                CheckSpec::ManyFlows { flows } => *flows == 0,
                CheckSpec::ReloadUnderTraffic { reloads, .. } => *reloads == 0,
                CheckSpec::Keepalive { idle } => !(1..=120).contains(idle),
                CheckSpec::ConntrackExpiry { within } => !(1..=120).contains(within),
                CheckSpec::UdpGso {
                    segment,
                    segments,
                    bursts,
                } => {
                    if !(64..=1372).contains(segment)
                        || !(1..=64).contains(segments)
                        || segment * segments > 65000
                        || !(1..=100).contains(bursts)
                    {
                        return Err(format!(
                            "check udp-gso: segment {segment} x segments {segments} (bursts {bursts}): the kernel takes at most 64 segments and 65000 bytes per send, segments of 64-1372 bytes fit the tunnel, and bursts are 1-100"
                        ));
                    }
                    false
                }
                CheckSpec::SameSourcePort { ports, .. } => ports.is_empty() || ports.contains(&0),
                _ => false,
            };
            if empty {
                return Err(format!("check {check:?} has nothing to check"));
            }
            if let CheckSpec::Handshake { ports }
            | CheckSpec::NoHandshake { ports }
            | CheckSpec::Redirect { ports }
            | CheckSpec::NoRedirect { ports } = check
            {
                if ports.contains(&0) {
                    return Err("port 0 cannot carry UDP: use ports 1-65535".into());
                }
            }
            if let CheckSpec::PortForward { protocols, port } = check {
                let rules = self.nat_rules(topology::RELAY);
                for f in &self.relay.families {
                    for p in protocols {
                        let covered = rules.dnat.iter().any(|d| {
                            d.protocol == *p
                                && d.family() == *f
                                && d.ports.iter().any(|r| r.contains(*port))
                        });
                        if !covered || *p == Protocol::Icmp {
                            return Err(format!(
                                "check port-forward: no [[nat]] dnat rule in the relay forwards {p} port {port} over {f} (add one with in = \"relay\")"
                            ));
                        }
                    }
                }
            }
            if let CheckSpec::Roaming { at, to } = check {
                self.validate_roaming(at, to)?;
            }
            if let CheckSpec::SameSourcePort { at, second, .. } = check {
                if at.ns != topology::CLIENT {
                    return Err(format!(
                        "check same-source-port: {at} is not the client's: both clients live in the client namespace"
                    ));
                }
                self.validate_second_address("same-source-port", at, second)?;
            }
            for name in check.result_names() {
                if !names.insert(name.clone()) {
                    return Err(format!("check '{name}' appears twice"));
                }
            }
        }
        Ok(())
    }

    fn validate_roaming(&self, at: &topology::IfRef, to: &[IpNet]) -> Result<(), String> {
        self.validate_second_address("roaming", at, to)
    }

    /// `to` holds, for each family of the scenario, a new address for `at`
    /// in the subnet of its current one, used nowhere else.
    fn validate_second_address(
        &self,
        check: &str,
        at: &topology::IfRef,
        to: &[IpNet],
    ) -> Result<(), String> {
        let t = &self.topology;
        let veth = t
            .interfaces()
            .iter()
            .any(|(r, k, _)| *r == at && *k == topology::IfKind::Veth);
        if !veth {
            return Err(format!(
                "check {check}: {at} is not a link end of the topology (write NAMESPACE:INTERFACE of a [[topology.link]] end)"
            ));
        }
        for f in &self.relay.families {
            let Some(old) = t.address(at, *f) else {
                return Err(format!(
                    "check {check}: {at} has no {f} address of its own (it runs over {f})"
                ));
            };
            let Some(new) = to.iter().find(|n| n.family() == *f) else {
                return Err(format!(
                    "check {check}: no new {f} address is given for {at} (it runs over {f})"
                ));
            };
            if new.addr == old.addr || !old.contains(new.addr) || new.prefix != old.prefix {
                return Err(format!(
                    "check {check}: {at} gets {new} beside {old}: give a different address in the same subnet, with the same prefix, so that its link still reaches the relay"
                ));
            }
            if let Some((r, _, _)) = t
                .interfaces()
                .into_iter()
                .find(|(_, _, a)| a.iter().any(|a| a.addr == new.addr))
            {
                return Err(format!(
                    "check {check}: {} is already the address of {r}",
                    new.addr
                ));
            }
        }
        Ok(())
    }

    /// The checks in run order, each with the family it runs in: those that
    /// need the listen port free first (each family), then the rest as
    /// written (each family).
    pub fn plan(&self) -> Vec<(Family, &CheckSpec)> {
        let (early, late): (Vec<&CheckSpec>, Vec<&CheckSpec>) =
            self.checks.iter().partition(|c| c.before_tunnel());
        let mut out = Vec::new();
        let first = self.relay.families.first().copied();
        for phase in [early, late] {
            for f in &self.relay.families {
                out.extend(
                    phase
                        .iter()
                        .filter(|c| c.per_family() || Some(*f) == first)
                        .map(|c| (*f, *c)),
                );
            }
        }
        out
    }

    /// The namespaces that get NAT rules: the relay first, then routers.
    pub fn nat_namespaces(&self) -> Vec<String> {
        let mut out = vec![topology::RELAY.to_string()];
        for n in &self.nat {
            if !out.iter().any(|o| o == n.namespace()) {
                out.push(n.namespace().to_string());
            }
        }
        out
    }

    /// The neutral NAT rules of namespace `ns`, for the scenario's families:
    /// for the relay, its shorthand (`relay.masquerade`, `relay.redirect_udp`)
    /// and then its `[[nat]]` rules.
    pub fn nat_rules(&self, ns: &str) -> crate::nat::NatRules {
        use crate::nat::{Masquerade, NatRules, Redirect};
        let relay = &self.relay;
        let mut rules = NatRules {
            families: relay.families.clone(),
            ..NatRules::default()
        };
        if ns == topology::RELAY {
            for f in &relay.families {
                let Ok(a) = self.addrs(*f) else { continue };
                if relay.masquerade {
                    rules.masquerade.push(Masquerade {
                        source: a.tunnel_net,
                        out_iface: relay.wan_interface.clone(),
                        ports: relay.masquerade_ports,
                        to: None,
                    });
                }
                if !relay.redirect_udp.is_empty() {
                    rules.redirect_udp.push(Redirect {
                        family: *f,
                        in_iface: relay.public_interface.clone(),
                        ports: relay.redirect_udp.clone(),
                        to_port: relay.listen_port,
                    });
                }
            }
        }
        for n in self.nat.iter().filter(|n| n.namespace() == ns) {
            if let NatSpec::Dnat {
                in_interface,
                protocol,
                ports,
                to,
                to_port,
                ..
            } = n
            {
                let d = crate::nat::Dnat {
                    in_iface: in_interface.clone(),
                    protocol: *protocol,
                    ports: ports.clone(),
                    to: *to,
                    to_port: *to_port,
                };
                if relay.families.contains(&d.family()) {
                    rules.dnat.push(d);
                }
                continue;
            }
            let (out, source, ports, to) = match n {
                NatSpec::Masquerade {
                    out, source, ports, ..
                } => (out, source, ports, None),
                NatSpec::Snat {
                    out,
                    source,
                    ports,
                    to,
                    ..
                } => (out, source, ports, Some(*to)),
                NatSpec::Dnat { .. } => continue,
            };
            if relay.families.contains(&source.family()) {
                rules.masquerade.push(Masquerade {
                    source: source.network(),
                    out_iface: out.clone(),
                    ports: *ports,
                    to,
                });
            }
        }
        rules
    }

    /// The addresses of family `f` by role (valid for a validated scenario).
    pub fn addrs(&self, f: Family) -> Result<Addrs, String> {
        self.topology
            .addrs(f, &self.relay.public_interface, &self.relay.wan_interface)
    }

    /// All result names, in run order.
    pub fn result_names(&self) -> Vec<String> {
        self.plan()
            .into_iter()
            .flat_map(|(f, c)| c.result_names_in(f))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_parse() {
        for (name, _) in SHIPPED {
            let s = Scenario::load(name).unwrap();
            assert_eq!(&s.name, name);
        }
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            "53".parse(),
            Ok(PortRange {
                first: 53,
                last: 53
            })
        );
        assert_eq!(
            "4000-33433".parse(),
            Ok(PortRange {
                first: 4000,
                last: 33433
            })
        );
        assert!("0".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
        assert!("9-3".parse::<PortRange>().is_err());
        assert!("a-b".parse::<PortRange>().is_err());
    }

    fn minimal(extra: &str) -> String {
        format!("name = \"t\"\n[relay]\n{extra}\n[[check]]\nkind = \"kernel-health\"\n")
    }

    #[test]
    fn errors_are_precise() {
        let err = Scenario::parse(&minimal("listen_port = \"x\""), "t.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("t.toml") && msg.contains("line 3"), "{msg}");

        let err = Scenario::parse(&minimal("bogus = 1"), "t.toml").unwrap_err();
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");

        let err =
            Scenario::parse(&minimal("redirect_udp = [\"1-10\", \"5\"]"), "t.toml").unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");

        let err = Scenario::parse(
            "name = \"t\"\n[relay]\n[[check]]\nkind = \"teleport\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `teleport`"),
            "{err}"
        );

        // Topology mistakes name the line they are on.
        let behind = SHIPPED
            .iter()
            .find(|(n, _)| *n == "behind-nat")
            .map(|(_, t)| *t)
            .unwrap();
        let line_of = |text: &str, needle: &str| {
            text.lines()
                .collect::<Vec<_>>()
                .iter()
                .rposition(|l| l.contains(needle))
                .unwrap()
                + 1
        };
        for (from, to, says) in [
            (
                "peer = \"relay:wg0\"",
                "peer = \"relay:wg1\"",
                "names peer relay:wg1, which no",
            ),
            (
                "at = \"client:eth0\"",
                "at = \"clinet:eth0\"",
                "namespace 'clinet', which is not defined",
            ),
            (
                "\"198.51.100.2/24\"",
                "\"198.51.100.1/24\"",
                "address 198.51.100.1 of internet:eth0 is already relay:wan's",
            ),
            ("out = \"up\"", "out = \"uplink\"", "names interface uplink"),
        ] {
            let text = behind.replacen(from, to, 1);
            let msg = Scenario::parse(&text, "b.toml").unwrap_err().to_string();
            let line = line_of(&text, to);
            assert!(
                msg.contains(&format!("line {line}:")) && msg.contains(says),
                "{msg}"
            );
        }

        let err = Scenario::load("no-such-scenario").unwrap_err();
        assert!(err.to_string().contains("extended-ports"), "{err}");
    }
}

/// Scenario files are user input: any text yields a scenario or a precise
/// error, never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const SHIPPED_TEXT: &str = include_str!("../../../scenarios/extended-ports.toml");

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = Scenario::parse(&text, "fuzz.toml");
        }

        #[test]
        fn mutated_shipped_scenarios_never_panic(pos in 0usize..2000, insert in "[\\[\\]=\"a-z0-9,. \n-]{0,12}", cut in 0usize..20) {
            let mut text = SHIPPED_TEXT.to_string();
            let pos = pos.min(text.len());
            let pos = (0..=pos).rev().find(|p| text.is_char_boundary(*p)).unwrap_or(0);
            let end = (pos + cut).min(text.len());
            let end = (end..=text.len()).find(|p| text.is_char_boundary(*p)).unwrap_or(text.len());
            text.replace_range(pos..end, &insert);
            if let Err(e) = Scenario::parse(&text, "fuzz.toml") {
                prop_assert!(e.to_string().contains("fuzz.toml"));
            }
        }

        #[test]
        fn port_ranges_parse_or_explain(s in "[0-9-]{0,12}") {
            match s.parse::<PortRange>() {
                Ok(r) => prop_assert!(r.first >= 1 && r.first <= r.last),
                Err(e) => prop_assert!(!e.is_empty()),
            }
        }
    }
}

//! What a scenario sets up, apart from its checks: the relay's
//! configuration, the NAT rules beyond it and the topology. The agent builds
//! it and the checks validate their parameters against it, so both depend on
//! this file and not on the whole scenario.

use serde::{Deserialize, Serialize};

use super::topology::{self, Addrs, TopologySpec};
use crate::bounds::{Invalid, Limit};
use crate::types::{Family, IpNet, PortRange, Protocol};

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
    /// A production ruleset loaded as it is in the relay, in place of
    /// natvet's own rendering of `masquerade` and `redirect_udp` (which then
    /// say what the ruleset promises, for the checks): `natvet vet --relay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ruleset: Option<CapturedRuleset>,
}

/// A relay bundle's ruleset, as its backend's loader reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapturedRuleset {
    /// The tool that loads it: the scenario's only backend.
    pub backend: crate::nat::BackendKind,
    /// One `nft -f` script (family none), or one iptables-restore text per family.
    pub files: Vec<RulesetFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesetFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
    /// The file as the bundle names it (for messages).
    pub file: String,
    pub text: String,
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

/// Limits on the relay's values and the NAT rules, each with why
/// (`Setup::validate` checks them).
pub const LIMITS: &[Limit] = &[
    LISTEN_PORT,
    REDIRECT_RANGES,
    FAMILIES,
    WAN_MTU,
    NAT_RULES,
    DNAT_RANGES,
    TO_PORT,
];

const LISTEN_PORT: Limit = Limit::new(
    "listen_port",
    1,
    65535,
    "it is the UDP port WireGuard listens on, and port 0 carries no UDP",
);
const REDIRECT_RANGES: Limit = Limit::new(
    "redirect_udp",
    0,
    64,
    "each range is a rule per family (iptables) or a set element (nftables) that the relay's ruleset holds and every reload re-applies: relays redirect a handful",
)
.on("the number of relay.redirect_udp ranges");
const FAMILIES: Limit = Limit::new(
    "families",
    1,
    2,
    "there are two address families, ipv4 and ipv6, and every check runs once in each named",
)
.on("the number of relay.families");
const WAN_MTU: Limit = Limit::new(
    "wan_mtu",
    1280,
    9000,
    "IPv6 needs links of at least 1280 bytes, and 9000-byte jumbo frames are the largest links relays run",
)
.unit(" bytes");
const NAT_RULES: Limit = Limit::new(
    "nat",
    0,
    64,
    "each [[nat]] rule is rendered and applied by the backend in every run and every reload: 64 give every namespace of a topology its own",
)
.on("the number of [[nat]] rules");
const DNAT_RANGES: Limit = Limit::new(
    "ports",
    1,
    64,
    "each range is a rule (iptables) or a set element (nftables) of the namespace's ruleset",
)
.on("the number of a dnat rule's port ranges");
const TO_PORT: Limit = Limit::new(
    "to_port",
    1,
    65535,
    "it is the port the forwarded traffic goes to, and port 0 carries no TCP or UDP",
);

/// A scenario's setup, borrowed: what `Scenario::setup` gives the agent and
/// the checks.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    pub relay: &'a RelayConfig,
    pub topology: &'a TopologySpec,
    pub nat: &'a [NatSpec],
}

impl Setup<'_> {
    /// The relay's configuration, the families, the topology and the NAT
    /// rules: each mistake one message.
    pub fn validate(&self) -> Result<(), Invalid> {
        let relay_at = |e: crate::bounds::OutOfRange| Invalid::from(e.under(&["relay"]));
        if let Some(m) = self.relay.wan_mtu {
            WAN_MTU.check(m).map_err(relay_at)?;
        }
        LISTEN_PORT
            .check(self.relay.listen_port)
            .map_err(relay_at)?;
        REDIRECT_RANGES
            .check_len(self.relay.redirect_udp.len())
            .map_err(relay_at)?;
        FAMILIES
            .check_len(self.relay.families.len())
            .map_err(relay_at)?;
        NAT_RULES.check_len(self.nat.len()).map_err(Invalid::from)?;
        for (i, n) in self.nat.iter().enumerate() {
            if let NatSpec::Dnat { ports, to_port, .. } = n {
                let i = i.to_string();
                let at = ["nat", i.as_str()];
                DNAT_RANGES
                    .check_len(ports.len())
                    .map_err(|e| Invalid::from(e.under(&at)))?;
                if let Some(p) = to_port {
                    TO_PORT.check(*p).map_err(|e| Invalid::from(e.under(&at)))?;
                }
            }
        }
        let mut sorted = self.relay.redirect_udp.clone();
        sorted.sort_by_key(|r| r.first);
        for pair in sorted.windows(2) {
            if pair[0].last >= pair[1].first {
                return Err(format!(
                    "relay.redirect_udp ranges {} and {} overlap",
                    pair[0], pair[1]
                )
                .into());
            }
        }
        let relay = self.relay;
        if relay.families.is_empty() {
            return Err("relay.families is empty: name ipv4, ipv6 or both".into());
        }
        if relay.families.len() == 2 && relay.families[0] == relay.families[1] {
            return Err(format!("relay.families names {} twice", relay.families[0]).into());
        }
        self.topology
            .validate(
                &relay.families,
                &relay.public_interface,
                &relay.wan_interface,
            )
            .map_err(|e| match e {
                Invalid::Says(m) => Invalid::Says(format!("topology: {m}")),
                range => range,
            })?;
        for n in self.nat {
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
                        ).into());
                    }
                    (in_interface, None)
                }
            };
            if !self.topology.namespace_names().contains(&ns) {
                return Err(format!(
                    "a [[nat]] rule is in namespace '{ns}', which the topology does not define; defined: {}",
                    self.topology.namespace_names().join(", ")
                ).into());
            }
            let at = topology::IfRef {
                ns: ns.to_string(),
                iface: out.clone(),
            };
            if !self.topology.interfaces().iter().any(|(r, _, _)| **r == at) {
                return Err(format!(
                    "a [[nat]] rule in {ns} names interface {out}, which is not an interface of {ns}"
                ).into());
            }
            if let (NatSpec::Snat { to, .. }, Some(source)) = (n, source) {
                if to.is_ipv4() != source.addr.is_ipv4() {
                    return Err(format!(
                        "a [[nat]] snat rule in {ns} translates {source} to {to}, an address of the other family"
                    ).into());
                }
            }
        }
        Ok(())
    }

    /// `to` holds, for each family of the scenario, a new address for `at`
    /// in the subnet of its current one, used nowhere else (a check that
    /// moves or adds an address: roaming, a second client).
    pub fn check_second_address(
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

    /// The namespaces that get NAT rules: the relay first, then routers.
    pub fn nat_namespaces(&self) -> Vec<String> {
        let mut out = vec![topology::RELAY.to_string()];
        let firewalled = self
            .topology
            .namespaces
            .iter()
            .filter(|n| n.firewall.is_some())
            .map(|n| n.name.as_str());
        for ns in self.nat.iter().map(|n| n.namespace()).chain(firewalled) {
            if !out.iter().any(|o| o == ns) {
                out.push(ns.to_string());
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
        if let Some(n) = self.topology.namespaces.iter().find(|n| n.name == ns) {
            rules
                .firewall
                .extend(n.firewall.iter().map(|iface| crate::nat::Firewall {
                    iface: iface.clone(),
                }));
        }
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
}

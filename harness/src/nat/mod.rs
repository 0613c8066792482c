//! NAT backends: one neutral description of the relay's NAT, rendered by each
//! backend into the script its tool applies atomically.
//!
//! Backends are pure: they render text and name the commands that apply, list
//! and probe it. The agent runs those commands inside the relay's namespace.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::types::{Family, IpNet, PortRange};

mod iptables;
mod nftables;

pub use iptables::Iptables;
pub use nftables::Nftables;

/// Our own nftables table name: iptables-nft owns `ip nat`, and a live host has its own tables.
pub const NFT_TABLE: &str = "natvet";

/// Which tool configures the relay's NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    Nftables,
    IptablesNft,
    IptablesLegacy,
}

impl BackendKind {
    pub const ALL: [BackendKind; 3] = [
        BackendKind::Nftables,
        BackendKind::IptablesNft,
        BackendKind::IptablesLegacy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Nftables => "nftables",
            BackendKind::IptablesNft => "iptables-nft",
            BackendKind::IptablesLegacy => "iptables-legacy",
        }
    }

    pub fn backend(self) -> Box<dyn NatBackend> {
        match self {
            BackendKind::Nftables => Box::new(Nftables),
            BackendKind::IptablesNft => Box::new(Iptables::Nft),
            BackendKind::IptablesLegacy => Box::new(Iptables::Legacy),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // "nft" is how people say it.
        let s = if s == "nft" { "nftables" } else { s };
        BackendKind::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                format!("unknown NAT backend '{s}': use nftables, iptables-nft or iptables-legacy")
            })
    }
}

/// Rewrite the source of traffic from `source` leaving by `out_iface` to that
/// interface's address; with `ports`, TCP and UDP source ports are taken from
/// that range only (other protocols are masqueraded as usual).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    pub source: IpNet,
    pub out_iface: String,
    pub ports: Option<PortRange>,
    /// SNAT to this address instead of the interface's.
    pub to: Option<IpAddr>,
}

/// Deliver UDP of `family` arriving on `in_iface` for any of `ports` to local port `to_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub family: Family,
    pub in_iface: String,
    pub ports: Vec<PortRange>,
    pub to_port: u16,
}

/// Destination NAT: TCP or UDP arriving on `in_iface` for `ports` goes to
/// `to` (and `to_port`, or the same port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dnat {
    pub in_iface: String,
    pub protocol: crate::types::Protocol,
    pub ports: Vec<PortRange>,
    pub to: IpAddr,
    pub to_port: Option<u16>,
}

impl Dnat {
    pub fn family(&self) -> Family {
        match self.to {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// The target as the tools write it: "10.99.0.2", "10.99.0.2:8443",
    /// "[fd99::2]:8443", "fd99::2".
    pub fn target(&self) -> String {
        match self.to_port {
            Some(p) => format!("{}:{p}", with_port(self.to)),
            None => self.to.to_string(),
        }
    }
}

/// An address ready to be followed by ":PORT" in a NAT target
/// ("10.99.0.2", "[fd99::2]").
pub(crate) fn with_port(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// A stateful firewall on `iface`: of what arrives there, for the namespace
/// itself or to be forwarded, only replies to what left by it and ICMP
/// errors about those (conntrack's established and related), and IPv6
/// neighbour discovery, pass; the rest is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firewall {
    pub iface: String,
}

/// The NAT of one namespace, independent of the tool that configures it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatRules {
    pub masquerade: Vec<Masquerade>,
    pub redirect_udp: Vec<Redirect>,
    pub dnat: Vec<Dnat>,
    /// Applies to every family installed.
    pub firewall: Vec<Firewall>,
    /// Families whose tables are installed even without rules (so that an
    /// empty ruleset replaces every family's rules).
    pub families: Vec<Family>,
}

impl NatRules {
    /// Only the rules of `f`.
    pub fn of(&self, f: Family) -> NatRules {
        NatRules {
            masquerade: self
                .masquerade
                .iter()
                .filter(|m| m.source.family() == f)
                .cloned()
                .collect(),
            redirect_udp: self
                .redirect_udp
                .iter()
                .filter(|r| r.family == f)
                .cloned()
                .collect(),
            dnat: self
                .dnat
                .iter()
                .filter(|d| d.family() == f)
                .cloned()
                .collect(),
            firewall: self.firewall.clone(),
            families: vec![f],
        }
    }

    /// No rules, in the same families: what loading an empty ruleset means.
    pub fn emptied(&self) -> NatRules {
        NatRules {
            families: self.families(),
            ..NatRules::default()
        }
    }

    /// The families to install: IPv4 always, IPv6 when named or with rules.
    pub fn families(&self) -> Vec<Family> {
        let mut v = vec![Family::Ipv4];
        let v6 = self.families.contains(&Family::Ipv6)
            || self
                .masquerade
                .iter()
                .any(|m| m.source.family() == Family::Ipv6)
            || self.redirect_udp.iter().any(|r| r.family == Family::Ipv6)
            || self.dnat.iter().any(|d| d.family() == Family::Ipv6);
        if v6 {
            v.push(Family::Ipv6);
        }
        v
    }
}

/// A command line: program and arguments. Scripts go to its standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: &'static str,
    pub args: Vec<&'static str>,
}

impl fmt::Display for Invocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// One way of configuring NAT in the kernel.
pub trait NatBackend {
    fn kind(&self) -> BackendKind;
    /// Host binaries the guest needs for this backend (copied with their libraries).
    fn tools(&self) -> Vec<&'static str>;
    /// A harmless command that succeeds only if the kernel supports this backend.
    fn probe(&self) -> Invocation;
    /// The scripts that install `rules`, each with the command that applies
    /// it from standard input in one transaction.
    fn scripts(&self, rules: &NatRules) -> Vec<(Invocation, String)>;
    /// Commands that print the active rulesets (for evidence).
    fn lists(&self) -> Vec<Invocation>;
    /// The command that loads a whole ruleset of `family` (None: every
    /// family, nftables) from standard input, replacing the tables it
    /// names, as a relay's boot does: a captured production ruleset.
    fn loader(&self, family: Option<Family>) -> Invocation;
}

/// Splits port ranges into groups of at most `max_slots` slots, where a single
/// port takes one slot and a range two (iptables' multiport counts this way).
pub(crate) fn chunk_ports(ports: &[PortRange], max_slots: usize) -> Vec<Vec<PortRange>> {
    let mut chunks: Vec<Vec<PortRange>> = Vec::new();
    let mut used = 0;
    for p in ports {
        let cost = if p.first == p.last { 1 } else { 2 };
        if chunks.is_empty() || used + cost > max_slots {
            chunks.push(Vec::new());
            used = 0;
        }
        used += cost;
        if let Some(last) = chunks.last_mut() {
            last.push(*p);
        }
    }
    chunks
}

#[cfg(test)]
pub(crate) fn sample_rules() -> NatRules {
    let ports = ["53", "4000-33433", "33565-51820", "52000-60000"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    NatRules {
        masquerade: vec![Masquerade {
            source: IpNet {
                addr: IpAddr::V4(std::net::Ipv4Addr::new(10, 99, 0, 0)),
                prefix: 24,
            },
            out_iface: "wan".into(),
            ports: None,
            to: None,
        }],
        redirect_udp: vec![Redirect {
            family: Family::Ipv4,
            in_iface: "public".into(),
            ports,
            to_port: 51820,
        }],
        dnat: vec![],
        firewall: vec![],
        families: vec![Family::Ipv4],
    }
}

#[cfg(test)]
pub(crate) fn dual_stack_rules() -> NatRules {
    let mut rules = sample_rules();
    rules.masquerade.push(Masquerade {
        source: IpNet {
            addr: "fd99::".parse().unwrap(),
            prefix: 64,
        },
        out_iface: "wan".into(),
        ports: None,
        to: None,
    });
    let mut r6 = rules.redirect_udp[0].clone();
    r6.family = Family::Ipv6;
    rules.redirect_udp.push(r6);
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse_and_nft_is_nftables() {
        for b in BackendKind::ALL {
            assert_eq!(b.name().parse::<BackendKind>(), Ok(b));
        }
        assert_eq!("nft".parse::<BackendKind>(), Ok(BackendKind::Nftables));
        assert!("pf".parse::<BackendKind>().is_err());
    }

    #[test]
    fn a_firewall_passes_replies_and_drops_the_rest_in_every_backend() {
        let rules = NatRules {
            firewall: vec![Firewall {
                iface: "eth0".into(),
            }],
            families: vec![Family::Ipv4, Family::Ipv6],
            ..NatRules::default()
        };
        let nft = Nftables.render(&rules);
        for table in ["table ip natvet {", "table ip6 natvet {"] {
            let t = &nft[nft.find(table).unwrap()..];
            let t = &t[..t.find("\n}\n").unwrap()];
            for hook in ["input", "forward"] {
                assert!(t.contains(&format!(
                    "chain firewall_{hook} {{\n\t\ttype filter hook {hook} priority filter; policy accept;\n\t\tiifname \"eth0\" ct state established,related counter accept\n"
                )), "{t}");
            }
            assert!(t.contains("iifname \"eth0\" counter drop"));
            assert_eq!(t.contains("nd-neighbor-solicit"), table.contains("ip6"));
        }
        for b in [Iptables::Nft, Iptables::Legacy] {
            let scripts = b.scripts(&rules);
            assert_eq!(scripts.len(), 2);
            for (i, (_, text)) in scripts.iter().enumerate() {
                let filter = &text[text.find("*filter\n").unwrap()..];
                assert!(filter.contains("-A INPUT -j NATVET-FIREWALL\n-A FORWARD -j NATVET-FIREWALL\n-A NATVET-FIREWALL -i eth0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n"), "{filter}");
                assert!(
                    filter.ends_with("-A NATVET-FIREWALL -i eth0 -j DROP\nCOMMIT\n"),
                    "{filter}"
                );
                assert_eq!(filter.contains("neighbour-solicitation"), i == 1);
            }
        }
        // Without a firewall nothing of it is rendered.
        assert!(!Nftables.render(&sample_rules()).contains("firewall"));
        assert!(!Iptables::Legacy.render(&sample_rules()).contains("*filter"));
    }

    #[test]
    fn every_backend_installs_both_families() {
        let rules = dual_stack_rules();
        let nft = Nftables.scripts(&rules);
        assert_eq!(
            nft.len(),
            1,
            "nftables loads both tables in one transaction"
        );
        assert!(nft[0].1.contains("table ip natvet {"));
        assert!(nft[0].1.contains("table ip6 natvet {"));
        assert!(nft[0].1.contains("ip6 saddr fd99::/64 counter masquerade"));
        for b in [Iptables::Nft, Iptables::Legacy] {
            let scripts = b.scripts(&rules);
            let programs: Vec<&str> = scripts.iter().map(|(i, _)| i.program).collect();
            assert_eq!(programs.len(), 2);
            assert!(programs[0].contains("/iptables-") && programs[1].contains("/ip6tables-"));
            assert!(scripts[0].1.contains("-s 10.99.0.0/24") && !scripts[0].1.contains("fd99"));
            assert!(scripts[1].1.contains("-s fd99::/64") && !scripts[1].1.contains("10.99"));
        }
        // Emptied: every family's tables, no rules.
        let empty = rules.emptied();
        assert_eq!(Iptables::Legacy.scripts(&empty).len(), 2);
        let text = Nftables.render(&empty);
        assert!(text.contains("table ip6 natvet {") && !text.contains("masquerade"));
        // IPv4 only: one script each, as before.
        assert_eq!(Iptables::Nft.scripts(&sample_rules()).len(), 1);
        assert!(!Nftables.render(&sample_rules()).contains("ip6"));
    }

    #[test]
    fn backend_names_round_trip() {
        for b in BackendKind::ALL {
            assert_eq!(b.name().parse::<BackendKind>(), Ok(b));
            assert_eq!(b.backend().kind(), b);
        }
        assert!("pf".parse::<BackendKind>().is_err());
    }

    #[test]
    fn multiport_chunks_respect_the_slot_limit() {
        let ports: Vec<PortRange> = (1..=20)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 1).parse().unwrap())
            .collect();
        let chunks = chunk_ports(&ports, 15);
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![7, 7, 6]
        );
        assert_eq!(chunks.concat(), ports);
    }
}

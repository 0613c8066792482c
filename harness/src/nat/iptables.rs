//! iptables, in both flavours: the nf_tables-based `iptables-nft` and the
//! classic xtables `iptables-legacy`. Same rules, applied with `*-restore`.

use std::fmt::Write;

use super::{chunk_ports, with_port, BackendKind, Invocation, NatBackend, NatRules};
use crate::types::{Family, PortRange};

/// multiport matches at most 15 ports, a range counting as two.
const MULTIPORT_SLOTS: usize = 15;

/// Our own chains, jumped to from the built-in ones, so teardown touches only what we own.
const PRE_CHAIN: &str = "NATVET-PREROUTING";
const POST_CHAIN: &str = "NATVET-POSTROUTING";
/// The stateful firewall's chain in the filter table, from INPUT and FORWARD.
const FIREWALL_CHAIN: &str = "NATVET-FIREWALL";

pub enum Iptables {
    Nft,
    Legacy,
}

impl Iptables {
    fn tool(&self, which: &str) -> &'static str {
        match (self, which) {
            (Iptables::Nft, "restore") => "/usr/sbin/iptables-nft-restore",
            (Iptables::Nft, "save") => "/usr/sbin/iptables-nft-save",
            (Iptables::Nft, "restore6") => "/usr/sbin/ip6tables-nft-restore",
            (Iptables::Nft, "save6") => "/usr/sbin/ip6tables-nft-save",
            (Iptables::Nft, _) => "/usr/sbin/iptables-nft",
            (Iptables::Legacy, "restore") => "/usr/sbin/iptables-legacy-restore",
            (Iptables::Legacy, "save") => "/usr/sbin/iptables-legacy-save",
            (Iptables::Legacy, "restore6") => "/usr/sbin/ip6tables-legacy-restore",
            (Iptables::Legacy, "save6") => "/usr/sbin/ip6tables-legacy-save",
            (Iptables::Legacy, _) => "/usr/sbin/iptables-legacy",
        }
    }

    /// The `*-restore` input for rules of one family (ip6tables takes the same syntax).
    pub fn render(&self, rules: &NatRules) -> String {
        render(rules)
    }
}

impl NatBackend for Iptables {
    fn kind(&self) -> BackendKind {
        match self {
            Iptables::Nft => BackendKind::IptablesNft,
            Iptables::Legacy => BackendKind::IptablesLegacy,
        }
    }

    fn tools(&self) -> Vec<&'static str> {
        vec![
            self.tool("iptables"),
            self.tool("restore"),
            self.tool("save"),
            self.tool("restore6"),
            self.tool("save6"),
        ]
    }

    fn probe(&self) -> Invocation {
        Invocation {
            program: self.tool("iptables"),
            args: vec!["-w", "-t", "nat", "-S"],
        }
    }

    fn scripts(&self, rules: &NatRules) -> Vec<(Invocation, String)> {
        rules
            .families()
            .into_iter()
            .map(|f| {
                let restore = match f {
                    Family::Ipv4 => self.tool("restore"),
                    Family::Ipv6 => self.tool("restore6"),
                };
                // --noflush: only natvet's own chains are replaced; the
                // built-in ones stay. Each reload appends one more jump to
                // our chains (harmless: the first NAT verdict ends the walk).
                (
                    Invocation {
                        program: restore,
                        args: vec!["-w", "--noflush"],
                    },
                    render(&rules.of(f)),
                )
            })
            .collect()
    }

    fn loader(&self, family: Option<Family>) -> Invocation {
        Invocation {
            program: match family {
                Some(Family::Ipv6) => self.tool("restore6"),
                _ => self.tool("restore"),
            },
            args: vec!["-w"],
        }
    }

    fn lists(&self) -> Vec<Invocation> {
        ["save", "save6"]
            .into_iter()
            .map(|t| Invocation {
                program: self.tool(t),
                args: vec![],
            })
            .collect()
    }
}

/// Prerouting rules sending `proto` to `ports` arriving on `iface` to
/// `target`, in as many multiport matches as the ports need.
fn prerouting(s: &mut String, iface: &str, proto: &str, ports: &[PortRange], target: &str) {
    for chunk in chunk_ports(ports, MULTIPORT_SLOTS) {
        let ports: Vec<String> = chunk
            .iter()
            .map(|p| p.to_string().replace('-', ":"))
            .collect();
        let _ = writeln!(
            s,
            "-A {PRE_CHAIN} -i {iface} -p {proto} -m multiport --dports {} -j {target}",
            ports.join(",")
        );
    }
}

fn render(rules: &NatRules) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "*nat");
    let _ = writeln!(s, ":{PRE_CHAIN} - [0:0]");
    let _ = writeln!(s, ":{POST_CHAIN} - [0:0]");
    let _ = writeln!(s, "-A PREROUTING -j {PRE_CHAIN}");
    let _ = writeln!(s, "-A POSTROUTING -j {POST_CHAIN}");
    for r in &rules.redirect_udp {
        let target = format!("REDIRECT --to-ports {}", r.to_port);
        prerouting(&mut s, &r.in_iface, "udp", &r.ports, &target);
    }
    for d in &rules.dnat {
        let target = format!("DNAT --to-destination {}", d.target());
        prerouting(
            &mut s,
            &d.in_iface,
            &d.protocol.to_string(),
            &d.ports,
            &target,
        );
    }
    for m in &rules.masquerade {
        // The target for all traffic, and for TCP/UDP limited to a port range.
        let (all, ranged) = match m.to {
            None => (
                "MASQUERADE".to_string(),
                m.ports.map(|p| format!("MASQUERADE --to-ports {p}")),
            ),
            Some(to) => (
                format!("SNAT --to-source {to}"),
                m.ports
                    .map(|p| format!("SNAT --to-source {}:{p}", with_port(to))),
            ),
        };
        if let Some(target) = ranged {
            for proto in ["tcp", "udp"] {
                let _ = writeln!(
                    s,
                    "-A {POST_CHAIN} -s {} -o {} -p {proto} -j {target}",
                    m.source, m.out_iface
                );
            }
        }
        let _ = writeln!(
            s,
            "-A {POST_CHAIN} -s {} -o {} -j {all}",
            m.source, m.out_iface
        );
    }
    let _ = writeln!(s, "COMMIT");
    if !rules.firewall.is_empty() {
        let v6 = rules.families.contains(&Family::Ipv6);
        let _ = writeln!(s, "*filter");
        let _ = writeln!(s, ":{FIREWALL_CHAIN} - [0:0]");
        let _ = writeln!(s, "-A INPUT -j {FIREWALL_CHAIN}");
        let _ = writeln!(s, "-A FORWARD -j {FIREWALL_CHAIN}");
        for fw in &rules.firewall {
            let iface = &fw.iface;
            let _ = writeln!(
                s,
                "-A {FIREWALL_CHAIN} -i {iface} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
            );
            if v6 {
                for t in ["neighbour-solicitation", "neighbour-advertisement"] {
                    let _ = writeln!(
                        s,
                        "-A {FIREWALL_CHAIN} -i {iface} -p ipv6-icmp --icmpv6-type {t} -j ACCEPT"
                    );
                }
            }
            let _ = writeln!(s, "-A {FIREWALL_CHAIN} -i {iface} -j DROP");
        }
        let _ = writeln!(s, "COMMIT");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_extended_port_relay() {
        insta::assert_snapshot!(Iptables::Legacy.render(&super::super::sample_rules()));
    }

    #[test]
    fn a_masquerade_port_range_applies_to_tcp_and_udp_and_the_rest_is_masqueraded() {
        let mut rules = super::super::sample_rules();
        rules.masquerade[0].ports = Some("40000-40007".parse().unwrap());
        let text = Iptables::Legacy.render(&rules);
        let post: Vec<&str> = text.lines().filter(|l| l.contains("MASQUERADE")).collect();
        assert_eq!(
            post,
            [
                "-A NATVET-POSTROUTING -s 10.99.0.0/24 -o wan -p tcp -j MASQUERADE --to-ports 40000-40007",
                "-A NATVET-POSTROUTING -s 10.99.0.0/24 -o wan -p udp -j MASQUERADE --to-ports 40000-40007",
                "-A NATVET-POSTROUTING -s 10.99.0.0/24 -o wan -j MASQUERADE",
            ]
        );
    }

    #[test]
    fn snat_names_its_address() {
        let mut rules = super::super::dual_stack_rules();
        rules.masquerade[0].to = Some("198.51.100.1".parse().unwrap());
        rules.masquerade[1].to = Some("2001:db8:2::1".parse().unwrap());
        rules.masquerade[1].ports = Some("40000-40007".parse().unwrap());
        let v4 = Iptables::Legacy.render(&rules.of(Family::Ipv4));
        assert!(
            v4.contains(
                "-A NATVET-POSTROUTING -s 10.99.0.0/24 -o wan -j SNAT --to-source 198.51.100.1\n"
            ),
            "{v4}"
        );
        let v6 = Iptables::Legacy.render(&rules.of(Family::Ipv6));
        assert!(
            v6.contains("-p udp -j SNAT --to-source [2001:db8:2::1]:40000-40007\n"),
            "{v6}"
        );
        assert!(
            v6.contains("-o wan -j SNAT --to-source 2001:db8:2::1\n"),
            "{v6}"
        );
    }

    #[test]
    fn dnat_forwards_ports_to_an_address() {
        let mut rules = super::super::sample_rules();
        rules.dnat.push(super::super::Dnat {
            in_iface: "wan".into(),
            protocol: crate::types::Protocol::Udp,
            ports: vec!["8443".parse().unwrap(), "9000-9010".parse().unwrap()],
            to: "10.99.0.2".parse().unwrap(),
            to_port: None,
        });
        let text = Iptables::Legacy.render(&rules);
        assert!(
            text.contains("-A NATVET-PREROUTING -i wan -p udp -m multiport --dports 8443,9000:9010 -j DNAT --to-destination 10.99.0.2\n"),
            "{text}"
        );
    }

    #[test]
    fn flavours_differ_only_in_tools() {
        let rules = super::super::sample_rules();
        assert_eq!(
            Iptables::Nft.render(&rules),
            Iptables::Legacy.render(&rules)
        );
        assert_ne!(
            Iptables::Nft.scripts(&rules)[0].0,
            Iptables::Legacy.scripts(&rules)[0].0
        );
    }
}

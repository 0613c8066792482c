//! nftables: one table of our own, applied atomically with `nft -f -`.

use std::fmt::Write;

use super::{with_port, BackendKind, Invocation, NatBackend, NatRules, NFT_TABLE};
use crate::types::Family;

pub struct Nftables;

impl NatBackend for Nftables {
    fn kind(&self) -> BackendKind {
        BackendKind::Nftables
    }

    fn tools(&self) -> Vec<&'static str> {
        vec!["/usr/sbin/nft"]
    }

    fn probe(&self) -> Invocation {
        Invocation {
            program: "/usr/sbin/nft",
            args: vec!["list", "tables"],
        }
    }

    fn scripts(&self, rules: &NatRules) -> Vec<(Invocation, String)> {
        vec![(
            Invocation {
                program: "/usr/sbin/nft",
                args: vec!["-f", "-"],
            },
            self.render(rules),
        )]
    }

    fn loader(&self, _: Option<Family>) -> Invocation {
        Invocation {
            program: "/usr/sbin/nft",
            args: vec!["-f", "-"],
        }
    }

    fn lists(&self) -> Vec<Invocation> {
        vec![Invocation {
            program: "/usr/sbin/nft",
            args: vec!["list", "ruleset"],
        }]
    }
}

impl Nftables {
    /// One script, so both families' tables load in one transaction.
    pub fn render(&self, rules: &NatRules) -> String {
        rules
            .families()
            .into_iter()
            .map(|f| render_table(f, &rules.of(f)))
            .collect()
    }
}

fn render_table(family: Family, rules: &NatRules) -> String {
    let (table, addr) = match family {
        Family::Ipv4 => ("ip", "ip"),
        Family::Ipv6 => ("ip6", "ip6"),
    };
    let mut s = String::new();
    // Declaring then deleting makes the script idempotent: it replaces any earlier copy.
    let _ = writeln!(s, "table {table} {NFT_TABLE}");
    let _ = writeln!(s, "delete table {table} {NFT_TABLE}");
    let _ = writeln!(s, "table {table} {NFT_TABLE} {{");
    let _ = writeln!(s, "\tchain prerouting {{");
    let _ = writeln!(
        s,
        "\t\ttype nat hook prerouting priority dstnat; policy accept;"
    );
    for r in &rules.redirect_udp {
        let ports: Vec<String> = r.ports.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            s,
            "\t\tiifname \"{}\" udp dport {{ {} }} counter redirect to :{}",
            r.in_iface,
            ports.join(", "),
            r.to_port
        );
    }
    for d in &rules.dnat {
        let ports: Vec<String> = d.ports.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            s,
            "\t\tiifname \"{}\" {} dport {{ {} }} counter dnat to {}",
            d.in_iface,
            d.protocol,
            ports.join(", "),
            d.target()
        );
    }
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "\tchain postrouting {{");
    let _ = writeln!(
        s,
        "\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
    for m in &rules.masquerade {
        // The action for all traffic, and for TCP/UDP limited to a port range.
        let (all, ranged) = match m.to {
            None => (
                "masquerade".to_string(),
                m.ports.map(|p| format!("masquerade to :{p}")),
            ),
            Some(to) => (
                format!("snat to {to}"),
                m.ports.map(|p| format!("snat to {}:{p}", with_port(to))),
            ),
        };
        if let Some(action) = ranged {
            let _ = writeln!(
                s,
                "\t\toifname \"{}\" {addr} saddr {} meta l4proto {{ tcp, udp }} counter {action}",
                m.out_iface, m.source
            );
        }
        let _ = writeln!(
            s,
            "\t\toifname \"{}\" {addr} saddr {} counter {all}",
            m.out_iface, m.source
        );
    }
    let _ = writeln!(s, "\t}}");
    if !rules.firewall.is_empty() {
        // What arrives on a firewalled interface, for this host or to be
        // forwarded: replies and their ICMP errors pass, the rest is dropped.
        for hook in ["input", "forward"] {
            let _ = writeln!(s, "\tchain firewall_{hook} {{");
            let _ = writeln!(
                s,
                "\t\ttype filter hook {hook} priority filter; policy accept;"
            );
            for fw in &rules.firewall {
                let iface = &fw.iface;
                let _ = writeln!(
                    s,
                    "\t\tiifname \"{iface}\" ct state established,related counter accept"
                );
                if family == Family::Ipv6 {
                    let _ = writeln!(
                        s,
                        "\t\tiifname \"{iface}\" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept"
                    );
                }
                let _ = writeln!(s, "\t\tiifname \"{iface}\" counter drop");
            }
            let _ = writeln!(s, "\t}}");
        }
    }
    let _ = writeln!(s, "}}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_extended_port_relay() {
        insta::assert_snapshot!(Nftables.render(&super::super::sample_rules()));
    }

    #[test]
    fn a_masquerade_port_range_applies_to_tcp_and_udp_and_the_rest_is_masqueraded() {
        let mut rules = super::super::sample_rules();
        rules.masquerade[0].ports = Some("40000-40007".parse().unwrap());
        let text = Nftables.render(&rules);
        let post: Vec<&str> = text.lines().filter(|l| l.contains("masquerade")).collect();
        assert_eq!(
            post,
            [
                "\t\toifname \"wan\" ip saddr 10.99.0.0/24 meta l4proto { tcp, udp } counter masquerade to :40000-40007",
                "\t\toifname \"wan\" ip saddr 10.99.0.0/24 counter masquerade",
            ]
        );
    }

    #[test]
    fn snat_names_its_address() {
        let mut rules = super::super::dual_stack_rules();
        rules.masquerade[0].to = Some("198.51.100.1".parse().unwrap());
        rules.masquerade[1].to = Some("2001:db8:2::1".parse().unwrap());
        rules.masquerade[1].ports = Some("40000-40007".parse().unwrap());
        let text = Nftables.render(&rules);
        assert!(
            text.contains("oifname \"wan\" ip saddr 10.99.0.0/24 counter snat to 198.51.100.1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "meta l4proto { tcp, udp } counter snat to [2001:db8:2::1]:40000-40007\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn dnat_forwards_ports_to_an_address() {
        let mut rules = super::super::dual_stack_rules();
        rules.dnat.push(super::super::Dnat {
            in_iface: "wan".into(),
            protocol: crate::types::Protocol::Tcp,
            ports: vec!["8443".parse().unwrap()],
            to: "fd99::2".parse().unwrap(),
            to_port: Some(443),
        });
        let text = Nftables.render(&rules);
        assert!(
            text.contains("\t\tiifname \"wan\" tcp dport { 8443 } counter dnat to [fd99::2]:443\n"),
            "{text}"
        );
        // In the ip6 table only.
        let v6 = &text[text.find("table ip6 natvet {").unwrap()..];
        assert!(v6.contains("dnat to"), "{text}");
    }

    #[test]
    fn without_redirects_the_chain_stays_empty() {
        let mut rules = super::super::sample_rules();
        rules.redirect_udp.clear();
        assert!(!Nftables.render(&rules).contains("redirect"));
    }
}

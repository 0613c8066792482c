//! The check catalogue: every check kind a scenario can name, what it proves,
//! which behaviour of docs/checks.md it covers, and how
//! long it may take. `natvet checks list` prints it.

use std::time::Duration;

use crate::agent::checks::{
    EXCHANGE_TIMEOUT, HANDSHAKE_TIMEOUT, KEEPALIVE_WAIT, NO_HANDSHAKE_WAIT, REDIRECT_ABSENT_WAIT,
    REKEY_WAIT, TRANSFER_TIMEOUT,
};
use crate::scenario::CheckSpec;

/// One kind of check.
pub struct CheckInfo {
    /// The `kind` in a scenario file.
    pub kind: &'static str,
    /// The names of its results.
    pub results: &'static str,
    /// Behaviours of the NAT catalogue it covers.
    pub behaviours: &'static str,
    pub description: &'static str,
    /// The longest the check waits for packets (each result).
    pub timeout: Duration,
    /// Needs WireGuard in the kernel (otherwise `unsupported`).
    pub needs_wireguard: bool,
}

pub const CHECKS: &[CheckInfo] = &[
    CheckInfo {
        kind: "redirect",
        results: "redirect/PORT",
        behaviours: "1",
        description: "a plain UDP datagram to the relay's PORT reaches a socket on the listen port with the client's address intact, and the reply returns from PORT",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "no-redirect",
        results: "no-redirect/PORT",
        behaviours: "1",
        description: "a plain UDP datagram to PORT does not reach the listen port",
        timeout: REDIRECT_ABSENT_WAIT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "handshake",
        results: "handshake/PORT",
        behaviours: "1, 5",
        description: "a WireGuard handshake completes with the client's endpoint at the relay's PORT, from a fresh source port",
        timeout: HANDSHAKE_TIMEOUT,
        needs_wireguard: true,
    },
    CheckInfo {
        kind: "no-handshake",
        results: "no-handshake/PORT",
        behaviours: "1",
        description: "no WireGuard handshake completes at PORT (ended early by the relay's ICMP port unreachable)",
        timeout: NO_HANDSHAKE_WAIT,
        needs_wireguard: true,
    },
    CheckInfo {
        kind: "conntrack-redirect",
        results: "conntrack/redirect-PORT",
        behaviours: "6",
        description: "conntrack shows the client's flow to PORT answered from the listen port",
        timeout: HANDSHAKE_TIMEOUT,
        needs_wireguard: true,
    },
    CheckInfo {
        kind: "forward",
        results: "forward/tcp, forward/udp, forward/icmp",
        behaviours: "3, 5",
        description: "the client's packet crosses tunnel and NAT, reaches the internet host from the relay's address, and the reply returns",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "transfer",
        results: "transfer/SIZE",
        behaviours: "3",
        description: "a TCP transfer (1 MiB by default) arrives with the same SHA-256 at both ends, from the relay's address",
        timeout: TRANSFER_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "conntrack-masquerade",
        results: "conntrack/masquerade",
        behaviours: "6",
        description: "conntrack maps the client's forwarded flow onto the relay's address",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "icmp-error",
        results: "icmp-error/port-unreachable",
        behaviours: "9",
        description: "an ICMP port unreachable from beyond the NAT reaches the client with the embedded header translated back",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "many-flows",
        results: "many-flows/N",
        behaviours: "7",
        description: "N concurrent UDP flows (200 by default) all get replies, from the relay's address, on N distinct ports",
        timeout: TRANSFER_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "port-exhaustion",
        results: "port-exhaustion",
        behaviours: "7",
        description: "with relay.masquerade_ports (or the check's own `range`), as many flows as the range holds get ports in it and the extra ones are dropped cleanly; the first keep working",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "conntrack-flush",
        results: "conntrack/flush",
        behaviours: "12",
        description: "after `conntrack -F` on the relay, an existing and a new UDP flow are translated again and answered",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "reload-under-traffic",
        results: "reload-under-traffic",
        behaviours: "16",
        description: "the relay's ruleset is re-applied `reloads` times (default 20) while a TCP transfer, an established UDP flow and new UDP flows go on: nothing lost, nothing leaves untranslated (counted on the internet's link)",
        timeout: TRANSFER_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "tunnel-mtu",
        results: "tunnel-mtu/full-size, tunnel-mtu/icmp-MTU",
        behaviours: "9, 10",
        description: "a datagram of the tunnel's full MTU (1420, DF) crosses tunnel and masquerade intact; with icmp_mtu (and a smaller relay.wan_mtu) the relay answers fragmentation needed / packet too big with that MTU instead",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "flowtable-offload",
        results: "flowtable/offload",
        behaviours: "15",
        description: "with relay.flowtable, a UDP flow through tunnel and masquerade is offloaded: its conntrack entry says [OFFLOAD] (the kernel's flowtable engaged), and it still reaches the internet host translated",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "keepalive",
        results: "keepalive/idle-Ns",
        behaviours: "11",
        description: "after the client has sent nothing for N s (longer than a NAT's UDP timeout in front of it), a datagram from the relay through the tunnel still reaches it: keepalives held the NAT mapping",
        timeout: KEEPALIVE_WAIT,
        needs_wireguard: true,
    },
    CheckInfo {
        kind: "roaming",
        results: "roaming/NS:IF",
        behaviours: "11",
        description: "the interface whose address the relay sees as the client's moves to a new address: the client's traffic crosses again, the relay's peer endpoint follows, replies return",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: true,
    },
    CheckInfo {
        kind: "same-source-port",
        results: "same-source-port/PORT",
        behaviours: "2",
        description: "two clients with the same source port, one to the listen port and one to the redirected PORT: both reach the listen port from their own source, and each reply returns to its sender from the port it sent to",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "port-shadow",
        results: "nat-clash/port-shadow",
        behaviours: "8",
        description: "a relay process binds the port a masqueraded client flow was given and talks to the same server: each flow gets its own replies, neither gets the other's",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "conntrack-expiry",
        results: "conntrack/expiry",
        behaviours: "12",
        description: "an idle masqueraded UDP flow's conntrack entry is gone within N s (the relay's UDP timeouts), and the same socket then works again",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "udp-gso",
        results: "udp-gso/BURSTSxSEGMENTS",
        behaviours: "14",
        description: "UDP GSO sends from the client (UDP_SEGMENT): every segment crosses tunnel and masquerade and arrives intact at the internet host, from the relay's address",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "rekey",
        results: "rekey",
        behaviours: "11",
        description: "a UDP echo a second through the tunnel past WireGuard's REKEY_AFTER_TIME (120 s): a new handshake completes through the NATs and traffic goes on over the new keys",
        timeout: REKEY_WAIT,
        needs_wireguard: true,
    },
    CheckInfo {
        kind: "port-forward",
        results: "port-forward/PROTO-PORT",
        behaviours: "3, 6",
        description: "the internet host reaches the relay's PORT; a dnat rule forwards it through the tunnel to the client, which sees the internet host's own address, and the reply returns from the relay's PORT",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
    },
    CheckInfo {
        kind: "kernel-health",
        results: "kernel-health",
        behaviours: "17",
        description: "no WARN, BUG, oops, soft lockup or RCU stall in the kernel log during the scenario (and none on the console); conntrack statistics in every namespace of the scenario count no failed insert, drop or early drop",
        timeout: Duration::ZERO,
        needs_wireguard: false,
    },
];

/// The catalogue's `kind` for a check (the compiler makes every new kind pick one).
pub fn kind_of(spec: &CheckSpec) -> &'static str {
    match spec {
        CheckSpec::Redirect { .. } => "redirect",
        CheckSpec::NoRedirect { .. } => "no-redirect",
        CheckSpec::Handshake { .. } => "handshake",
        CheckSpec::NoHandshake { .. } => "no-handshake",
        CheckSpec::ConntrackRedirect { .. } => "conntrack-redirect",
        CheckSpec::Forward { .. } => "forward",
        CheckSpec::Transfer { .. } => "transfer",
        CheckSpec::ConntrackMasquerade => "conntrack-masquerade",
        CheckSpec::IcmpError => "icmp-error",
        CheckSpec::ManyFlows { .. } => "many-flows",
        CheckSpec::PortExhaustion { .. } => "port-exhaustion",
        CheckSpec::ConntrackFlush => "conntrack-flush",
        CheckSpec::ReloadUnderTraffic { .. } => "reload-under-traffic",
        CheckSpec::FlowtableOffload => "flowtable-offload",
        CheckSpec::TunnelMtu { .. } => "tunnel-mtu",
        CheckSpec::KernelHealth => "kernel-health",
        CheckSpec::Keepalive { .. } => "keepalive",
        CheckSpec::Roaming { .. } => "roaming",
        CheckSpec::SameSourcePort { .. } => "same-source-port",
        CheckSpec::PortShadow => "port-shadow",
        CheckSpec::Rekey => "rekey",
        CheckSpec::PortForward { .. } => "port-forward",
        CheckSpec::UdpGso { .. } => "udp-gso",
        CheckSpec::ConntrackExpiry { .. } => "conntrack-expiry",
    }
}

/// The catalogue as a table.
pub fn render() -> String {
    let mut out = format!(
        "{:<21} {:<40} {:>8}  {:<9} {}\n",
        "kind", "results", "timeout", "behaviour", "what passes"
    );
    for c in CHECKS {
        let timeout = if c.timeout.is_zero() {
            "-".to_string()
        } else {
            format!("{} s", c.timeout.as_secs())
        };
        let wg = if c.needs_wireguard {
            " (needs WireGuard)"
        } else {
            ""
        };
        out.push_str(&format!(
            "{:<21} {:<40} {:>8}  {:<9} {}{wg}\n",
            c.kind, c.results, timeout, c.behaviours, c.description
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Scenario, SHIPPED};

    #[test]
    fn every_kind_a_scenario_can_name_is_in_the_catalogue_once() {
        for (i, c) in CHECKS.iter().enumerate() {
            assert!(
                CHECKS[i + 1..].iter().all(|d| d.kind != c.kind),
                "{} twice",
                c.kind
            );
            // The kind parses as a scenario's check kind.
            let extra = match c.kind {
                "redirect" | "no-redirect" | "handshake" | "no-handshake" => "ports = [53]",
                "conntrack-redirect" => "port = 53",
                "forward" => "protocols = [\"udp\"]",
                "roaming" => "at = \"client:eth0\"\nto = [\"192.0.2.3/24\"]",
                "port-forward" => {
                    "protocols = [\"udp\"]\nport = 8443\n[[nat]]\nin = \"relay\"\nkind = \"dnat\"\nin_interface = \"wan\"\nprotocol = \"udp\"\nports = [\"8443\"]\nto = \"10.99.0.2\""
                }
                "same-source-port" => {
                    "ports = [53]\nat = \"client:eth0\"\nsecond = [\"192.0.2.3/24\"]"
                }
                _ => "",
            };
            let toml = format!(
                "name = \"t\"\n[relay]\nmasquerade_ports = \"40000-40001\"\n[[check]]\nkind = \"{}\"\n{extra}\n",
                c.kind
            );
            let s = Scenario::parse(&toml, "test").unwrap_or_else(|e| panic!("{}: {e}", c.kind));
            assert_eq!(kind_of(&s.checks[0]), c.kind);
        }
    }

    #[test]
    fn shipped_scenarios_use_only_catalogued_kinds() {
        for (name, _) in SHIPPED {
            let s = Scenario::load(name).unwrap();
            for c in &s.checks {
                assert!(CHECKS.iter().any(|i| i.kind == kind_of(c)));
            }
        }
    }
}

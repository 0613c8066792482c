//! What a captured ruleset does, read from its text: the UDP ports it
//! redirects, its DNAT, masquerade and SNAT, its limits and the interfaces
//! it names, each with the line it is on. natvet loads the ruleset as it is;
//! this reading only decides which checks prove it. Constructs it does not
//! know are loaded all the same, and the base checks still run through them.

use std::net::IpAddr;

use crate::nat::BackendKind;
use crate::types::{Family, IpNet, PortRange};

/// One thing the ruleset does, and its line (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Found<T> {
    pub line: usize,
    pub what: T,
}

/// UDP for `ports` arriving on `in_iface` delivered to local port `to_port`.
#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    /// None: both (an nftables `inet` table).
    pub family: Option<Family>,
    pub in_iface: Option<String>,
    pub ports: Vec<PortRange>,
    /// None: the port it came to.
    pub to_port: Option<u16>,
}

/// DNAT of `protocol` for `ports` to another host.
#[derive(Debug, Clone, PartialEq)]
pub struct Dnat {
    pub family: Option<Family>,
    pub in_iface: Option<String>,
    pub protocol: Option<String>,
    pub ports: Vec<PortRange>,
    pub to: Option<IpAddr>,
}

/// Masquerade (or SNAT to `to`) of traffic from `source` leaving by `out_iface`.
#[derive(Debug, Clone, PartialEq)]
pub struct Masquerade {
    pub family: Option<Family>,
    pub out_iface: Option<String>,
    pub source: Option<IpNet>,
    pub to: Option<IpAddr>,
}

/// A limit the ruleset puts on traffic.
#[derive(Debug, Clone, PartialEq)]
pub enum Limit {
    /// At most `count` connections (per source, or in all).
    ConnCount { count: u32 },
    /// At most `per_second` packets a second, with `burst`.
    Rate { per_second: f64, burst: u32 },
}

/// Everything read from one ruleset file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Analysis {
    pub redirects: Vec<Found<Redirect>>,
    pub dnat: Vec<Found<Dnat>>,
    pub masquerade: Vec<Found<Masquerade>>,
    pub limits: Vec<Found<Limit>>,
    /// Interface names matched exactly (wildcards such as `eth+` left out).
    pub interfaces: Vec<Found<String>>,
    /// How many rules it holds.
    pub rules: usize,
}

/// A line that is not what the file's format says.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Split a line into words, keeping "quoted text" as one word (quotes off).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut had = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                had = true;
            }
            c if c.is_whitespace() && !quoted => {
                if had || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                had = false;
            }
            c => cur.push(c),
        }
    }
    if had || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// "4000:33433", "4000-33433", "53".
fn port_range(s: &str) -> Option<PortRange> {
    s.replace(':', "-").parse().ok()
}

fn port_list(s: &str) -> Vec<PortRange> {
    s.split(',').filter_map(port_range).collect()
}

fn exact_iface(n: &str) -> Option<String> {
    (!n.ends_with('+') && !n.contains('*') && super::bundle::valid_ifname(n)).then(|| n.to_string())
}

/// `iptables-save` (or `ip6tables-save`) output of `family`.
/// The tables iptables-save prints (and iptables-nft makes in nftables).
pub const IPTABLES_TABLES: &[&str] = &["nat", "filter", "mangle", "raw", "security"];

/// Read one ruleset file as `backend` loads it: an `nft` script (for both
/// families), or the iptables-save text of `family` (IPv4 when not said).
pub fn read(
    backend: BackendKind,
    family: Option<Family>,
    text: &str,
) -> Result<Analysis, ParseError> {
    match (backend, family) {
        (BackendKind::Nftables, _) => nft(text),
        (_, f) => iptables(text, f.unwrap_or(Family::Ipv4)),
    }
}

pub fn iptables(text: &str, family: Family) -> Result<Analysis, ParseError> {
    let mut a = Analysis::default();
    let mut table: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let l = raw.trim();
        let err = |m: String| ParseError { line, message: m };
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(t) = l.strip_prefix('*') {
            if !IPTABLES_TABLES.contains(&t) {
                return Err(err(format!("unknown table '*{t}'")));
            }
            table = Some(t.to_string());
            continue;
        }
        if l == "COMMIT" {
            table = None;
            continue;
        }
        if table.is_none() {
            return Err(err(format!(
                "'{}' outside a table: this is not iptables-save output (it begins with *nat, *filter, ...; an nftables ruleset needs backend = \"nftables\")",
                l.chars().take(60).collect::<String>()
            )));
        }
        if l.starts_with(':') {
            continue;
        }
        let w = words(l);
        if w.first().map(String::as_str) != Some("-A") || w.len() < 2 {
            return Err(err(format!(
                "'{}' is neither a chain (:NAME) nor a rule (-A CHAIN ...)",
                l.chars().take(60).collect::<String>()
            )));
        }
        a.rules += 1;
        let mut r = IptRule::default();
        let mut i = 2;
        let mut negated = false;
        while i < w.len() {
            let next = w.get(i + 1).cloned();
            let take = |v: &mut Option<String>| {
                *v = next.clone();
            };
            match w[i].as_str() {
                "!" => {
                    negated = true;
                    i += 1;
                    continue;
                }
                "-i" | "--in-interface" => {
                    if let Some(n) = next.as_deref().and_then(exact_iface) {
                        a.interfaces.push(Found { line, what: n });
                    }
                    if !negated {
                        take(&mut r.in_iface);
                    }
                }
                "-o" | "--out-interface" => {
                    if let Some(n) = next.as_deref().and_then(exact_iface) {
                        a.interfaces.push(Found { line, what: n });
                    }
                    if !negated {
                        take(&mut r.out_iface);
                    }
                }
                "-p" | "--protocol" if !negated => take(&mut r.protocol),
                "-s" | "--source" if !negated => take(&mut r.source),
                "--dport" | "--destination-port" | "--dports" | "--destination-ports"
                    if !negated =>
                {
                    r.dports = next.as_deref().map(port_list).unwrap_or_default()
                }
                "-j" | "--jump" => take(&mut r.target),
                "--to-ports" => take(&mut r.to_ports),
                "--to-destination" => take(&mut r.to_destination),
                "--to-source" => take(&mut r.to_source),
                "--connlimit-above" => {
                    r.connlimit = next.as_deref().and_then(|v| v.parse().ok());
                }
                "--limit" | "--hashlimit-upto" | "--hashlimit-above" | "--hashlimit" => {
                    r.rate = next.as_deref().and_then(rate_per_second);
                }
                "--limit-burst" | "--hashlimit-burst" => {
                    r.burst = next.as_deref().and_then(|v| v.parse().ok());
                }
                _ => {
                    negated = false;
                    i += 1;
                    continue;
                }
            }
            negated = false;
            i += 2;
        }
        r.record(&mut a, line, family, table.as_deref() == Some("nat"));
    }
    Ok(a)
}

#[derive(Default)]
struct IptRule {
    in_iface: Option<String>,
    out_iface: Option<String>,
    protocol: Option<String>,
    source: Option<String>,
    dports: Vec<PortRange>,
    target: Option<String>,
    to_ports: Option<String>,
    to_destination: Option<String>,
    to_source: Option<String>,
    connlimit: Option<u32>,
    rate: Option<f64>,
    burst: Option<u32>,
}

impl IptRule {
    fn record(self, a: &mut Analysis, line: usize, family: Family, nat: bool) {
        let fam = Some(family);
        if let Some(count) = self.connlimit {
            a.limits.push(Found {
                line,
                what: Limit::ConnCount { count },
            });
        }
        if let Some(per_second) = self.rate {
            a.limits.push(Found {
                line,
                what: Limit::Rate {
                    per_second,
                    burst: self.burst.unwrap_or(5),
                },
            });
        }
        if !nat {
            return;
        }
        let udp = self.protocol.as_deref() == Some("udp");
        match self.target.as_deref() {
            Some("REDIRECT") if udp && !self.dports.is_empty() => a.redirects.push(Found {
                line,
                what: Redirect {
                    family: fam,
                    in_iface: self.in_iface,
                    ports: self.dports,
                    to_port: self
                        .to_ports
                        .as_deref()
                        .and_then(port_range)
                        .map(|p| p.first),
                },
            }),
            Some("DNAT") => a.dnat.push(Found {
                line,
                what: Dnat {
                    family: fam,
                    in_iface: self.in_iface,
                    protocol: self.protocol,
                    ports: self.dports,
                    to: self.to_destination.as_deref().and_then(target_addr),
                },
            }),
            Some("MASQUERADE") | Some("SNAT") => a.masquerade.push(Found {
                line,
                what: Masquerade {
                    family: fam,
                    out_iface: self.out_iface,
                    source: self.source.as_deref().and_then(|s| s.parse().ok()),
                    to: self.to_source.as_deref().and_then(target_addr),
                },
            }),
            _ => {}
        }
    }
}

/// "10.0.0.2", "10.0.0.2:8443", "[fd00::2]:8443", "10.0.0.2-10.0.0.9".
fn target_addr(s: &str) -> Option<IpAddr> {
    let s = s.split('-').next().unwrap_or(s);
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.parse()
        .ok()
        .or_else(|| s.rsplit_once(':')?.0.parse().ok())
}

/// "10/sec", "10/second", "600/minute", "100/s" as packets a second.
fn rate_per_second(s: &str) -> Option<f64> {
    let (n, unit) = s.split_once('/')?;
    let n: f64 = n.parse().ok()?;
    let per = match unit {
        u if "second".starts_with(u) => 1.0,
        u if "minute".starts_with(u) => 60.0,
        u if "hour".starts_with(u) => 3600.0,
        u if "day".starts_with(u) => 86400.0,
        _ => return None,
    };
    (n.is_finite() && n > 0.0).then_some(n / per)
}

/// `nft list ruleset` output.
pub fn nft(text: &str) -> Result<Analysis, ParseError> {
    let mut a = Analysis::default();
    let mut sets: Vec<(String, Vec<PortRange>)> = Vec::new();
    let mut family: Option<Option<Family>> = None;
    let mut set_name: Option<String> = None;
    let mut set_text = String::new();
    let mut in_chain = false;
    let mut nat_chain = false;
    let mut depth = 0i32;
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let l = raw.split('#').next().unwrap_or("").trim();
        let err = |m: String| ParseError { line, message: m };
        if l.is_empty() {
            continue;
        }
        let w = words(l);
        let opens = l.matches('{').count() as i32;
        let closes = l.matches('}').count() as i32;
        match w.first().map(String::as_str) {
            Some("table") if depth == 0 => {
                family = Some(match w.get(1).map(String::as_str) {
                    Some("ip") => Some(Family::Ipv4),
                    Some("ip6") => Some(Family::Ipv6),
                    Some("inet") => None,
                    Some("arp" | "bridge" | "netdev") => None,
                    _ => {
                        return Err(err(format!(
                            "'{l}': a table needs a family (ip, ip6, inet, ...); this is not `nft list ruleset` output"
                        )))
                    }
                });
            }
            // A block's end: no rule.
            Some(w0) if w0.starts_with('}') => {}
            Some("flush" | "add" | "delete" | "define" | "include" | "create") if depth == 0 => {}
            Some("set" | "map") if depth == 1 => {
                set_name = w.get(1).cloned();
                set_text.clear();
            }
            Some("chain") if depth == 1 => {
                in_chain = true;
                nat_chain = false;
            }
            Some("type") if in_chain && depth == 2 => {
                nat_chain = w.get(1).map(String::as_str) == Some("nat");
            }
            Some("policy" | "comment" | "counter" | "devices" | "flags" | "hook") if depth == 2 => {
            }
            _ if depth == 0 => {
                return Err(err(format!(
                    "'{}' outside a table: this is not `nft list ruleset` output (an iptables-save file needs an iptables backend)",
                    l.chars().take(60).collect::<String>()
                )));
            }
            _ if set_name.is_some() => set_text.push_str(&format!(" {l}")),
            _ if in_chain && depth == 2 => {
                a.rules += 1;
                let fam = family.flatten();
                nft_rule(&mut a, line, &w, fam, nat_chain, &sets);
            }
            _ => {}
        }
        depth += opens - closes;
        if depth < 0 {
            return Err(err("a '}' closes more than was opened".into()));
        }
        if depth <= 1 {
            if let Some(name) = set_name.take() {
                let ports = set_text
                    .split("elements = {")
                    .nth(1)
                    .map(|e| elements(e.split('}').next().unwrap_or("")))
                    .unwrap_or_default();
                sets.push((name, ports));
            }
            in_chain = in_chain && depth == 2;
        }
        if depth == 0 {
            family = None;
        }
    }
    if depth != 0 {
        return Err(ParseError {
            line: text.lines().count(),
            message: "the ruleset ends inside a block: a '}' is missing".into(),
        });
    }
    Ok(a)
}

/// "53, 4000-33433" (a set's elements).
fn elements(s: &str) -> Vec<PortRange> {
    s.split(',').filter_map(|p| p.trim().parse().ok()).collect()
}

/// The value after `key` in `w`: one word, or a `{ ... }` list, or `@set`.
fn value_after(w: &[String], at: usize, sets: &[(String, Vec<PortRange>)]) -> Vec<String> {
    match w.get(at).map(String::as_str) {
        Some("!=") => vec![],
        Some("{") | Some("{ ") => {
            let mut v = Vec::new();
            for x in &w[at + 1..] {
                if x == "}" {
                    break;
                }
                v.push(x.trim_end_matches(',').to_string());
            }
            v
        }
        Some(s) if s.starts_with('@') => sets
            .iter()
            .find(|(n, _)| n == &s[1..])
            .map(|(_, p)| p.iter().map(|r| r.to_string()).collect())
            .unwrap_or_default(),
        Some(s) => vec![s.to_string()],
        None => vec![],
    }
}

fn nft_rule(
    a: &mut Analysis,
    line: usize,
    w: &[String],
    family: Option<Family>,
    nat: bool,
    sets: &[(String, Vec<PortRange>)],
) {
    let find = |k: &str| w.iter().position(|x| x == k);
    let find2 = |k1: &str, k2: &str| w.windows(2).position(|p| p[0] == k1 && p[1] == k2);
    let mut in_iface = None;
    let mut out_iface = None;
    for (key, slot) in [("iifname", &mut in_iface), ("oifname", &mut out_iface)] {
        if let Some(i) = find(key) {
            let v = value_after(w, i + 1, sets);
            for n in v.iter().filter_map(|n| exact_iface(n)) {
                a.interfaces.push(Found { line, what: n });
            }
            if v.len() == 1 {
                *slot = Some(v[0].clone());
            }
        }
    }
    let mut family = family;
    let mut source = None;
    for (k, f) in [("ip", Family::Ipv4), ("ip6", Family::Ipv6)] {
        if let Some(i) = find2(k, "saddr") {
            source = value_after(w, i + 2, sets)
                .first()
                .and_then(|s| s.parse().ok());
            family = Some(f);
        }
    }
    let dport = |proto: &str| -> Option<Vec<PortRange>> {
        let i = find2(proto, "dport")?;
        Some(
            value_after(w, i + 2, sets)
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect(),
        )
    };
    let l4 = find2("meta", "l4proto").and_then(|i| w.get(i + 2).cloned());
    let udp_ports = dport("udp").or_else(|| {
        (l4.as_deref() == Some("udp"))
            .then(|| dport("th"))
            .flatten()
    });
    // `ct count` anywhere in the rule (after `ct state new`, or inside a
    // set's `{ ip saddr ct count over N }`).
    let ct_count = w.windows(2).position(|p| p[0] == "ct" && p[1] == "count");
    if let Some(i) = ct_count {
        {
            let at = if w.get(i + 2).map(String::as_str) == Some("over") {
                i + 3
            } else {
                i + 2
            };
            if let Some(count) = w.get(at).and_then(|c| c.parse().ok()) {
                a.limits.push(Found {
                    line,
                    what: Limit::ConnCount { count },
                });
            }
        }
    }
    if let Some(i) = find2("limit", "rate") {
        let at = if w.get(i + 2).map(String::as_str) == Some("over") {
            i + 3
        } else {
            i + 2
        };
        if let Some(per_second) = w.get(at).and_then(|r| rate_per_second(r)) {
            let burst = find("burst")
                .and_then(|b| w.get(b + 1))
                .and_then(|b| b.parse().ok())
                .unwrap_or(5);
            a.limits.push(Found {
                line,
                what: Limit::Rate { per_second, burst },
            });
        }
    }
    if !nat {
        return;
    }
    let after_to = |verb: usize| -> Option<String> {
        let mut j = verb + 1;
        while let Some(x) = w.get(j) {
            if x == "to" {
                return w.get(j + 1).cloned();
            }
            if !["ip", "ip6"].contains(&x.as_str()) {
                return None;
            }
            j += 1;
        }
        None
    };
    if let Some(i) = find("redirect") {
        if let Some(ports) = udp_ports {
            let to_port = after_to(i).and_then(|t| t.trim_start_matches(':').parse().ok());
            a.redirects.push(Found {
                line,
                what: Redirect {
                    family,
                    in_iface,
                    ports,
                    to_port,
                },
            });
        }
    } else if let Some(i) = find("dnat") {
        let (protocol, ports) = match (dport("tcp"), udp_ports) {
            (Some(p), _) => (Some("tcp".to_string()), p),
            (None, Some(p)) => (Some("udp".to_string()), p),
            (None, None) => (None, vec![]),
        };
        a.dnat.push(Found {
            line,
            what: Dnat {
                family,
                in_iface,
                protocol,
                ports,
                to: after_to(i).as_deref().and_then(target_addr),
            },
        });
    } else if find("masquerade").is_some() || find("snat").is_some() {
        let to = find("snat")
            .and_then(after_to)
            .as_deref()
            .and_then(target_addr);
        a.masquerade.push(Found {
            line,
            what: Masquerade {
                family,
                out_iface,
                source,
                to,
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPT: &str = "# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -i eth0 -p udp -m multiport --dports 53,4000:33433,33565:51820 -j REDIRECT --to-ports 51820
-A PREROUTING -i eth0 -p udp -m udp --dport 52000:60000 -j REDIRECT --to-ports 51820
-A PREROUTING -i eth0 -p tcp -m tcp --dport 8443 -j DNAT --to-destination 10.64.0.2:443
-A POSTROUTING -s 10.64.0.0/10 -o eth0 -m comment --comment \"tunnel to the world\" -j MASQUERADE
COMMIT
*filter
:INPUT DROP [12:720]
-A INPUT ! -i lo -p udp -m udp --dport 51820 -m limit --limit 600/min --limit-burst 50 -j NFLOG --nflog-group 5
-A FORWARD -i wg0 -o eth+ -m conntrack --ctstate NEW -m connlimit --connlimit-above 256 --connlimit-mask 32 -j REJECT
COMMIT
";

    #[test]
    fn iptables_redirects_dnat_masquerade_and_limits_with_their_lines() {
        let a = iptables(IPT, Family::Ipv4).unwrap();
        assert_eq!(a.rules, 6);
        assert_eq!(a.redirects.len(), 2);
        assert_eq!(a.redirects[0].line, 5);
        let r = &a.redirects[0].what;
        assert_eq!(r.in_iface.as_deref(), Some("eth0"));
        assert_eq!(r.to_port, Some(51820));
        let ports: Vec<String> = r.ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(ports, ["53", "4000-33433", "33565-51820"]);
        assert_eq!(a.redirects[1].what.ports[0].to_string(), "52000-60000");
        assert_eq!(a.dnat[0].what.to, Some("10.64.0.2".parse().unwrap()));
        let m = &a.masquerade[0];
        assert_eq!(m.line, 8);
        assert_eq!(m.what.source, Some("10.64.0.0/10".parse().unwrap()));
        assert_eq!(m.what.out_iface.as_deref(), Some("eth0"));
        assert_eq!(
            a.limits.iter().map(|l| l.what.clone()).collect::<Vec<_>>(),
            vec![
                Limit::Rate {
                    per_second: 10.0,
                    burst: 50
                },
                Limit::ConnCount { count: 256 }
            ]
        );
        // lo is named (negated), eth+ is a wildcard and left out.
        let names: Vec<&str> = a.interfaces.iter().map(|f| f.what.as_str()).collect();
        assert_eq!(names, ["eth0", "eth0", "eth0", "eth0", "lo", "wg0"]);
    }

    #[test]
    fn iptables_refuses_what_is_not_iptables_save() {
        let e = iptables("table inet x {\n}\n", Family::Ipv4).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.contains("nftables"), "{e}");
        let e = iptables("*nat\n-Z\nCOMMIT\n", Family::Ipv4).unwrap_err();
        assert_eq!(e.line, 2);
    }

    const NFT: &str = r#"table inet relay {
	set wg_ports {
		type inet_service
		flags interval
		elements = { 53, 4000-33433,
			     33565-51820, 52000-60000 }
	}

	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "eth0" udp dport @wg_ports counter packets 0 bytes 0 redirect to :51820
		iifname "eth0" tcp dport 8443 dnat ip to 10.64.0.2:443
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" ip saddr 10.64.0.0/10 counter masquerade
		oifname "eth0" ip6 saddr fc00:bbbb::/64 masquerade
	}

	chain forward {
		type filter hook forward priority filter; policy drop;
		iifname "wg0" ct state new ct count over 256 counter reject
		iifname { "wg0", "eth0" } limit rate over 1000/second burst 100 packets drop
		udp dport { 53, 123 } accept
	}
}
"#;

    #[test]
    fn nft_sets_redirects_masquerade_and_limits() {
        let a = nft(NFT).unwrap();
        assert_eq!(a.rules, 7);
        let r = &a.redirects[0];
        assert_eq!(r.line, 11);
        assert_eq!(r.what.family, None);
        assert_eq!(r.what.to_port, Some(51820));
        let ports: Vec<String> = r.what.ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(ports, ["53", "4000-33433", "33565-51820", "52000-60000"]);
        assert_eq!(a.dnat[0].what.to, Some("10.64.0.2".parse().unwrap()));
        assert_eq!(a.masquerade.len(), 2);
        assert_eq!(a.masquerade[0].what.family, Some(Family::Ipv4));
        assert_eq!(a.masquerade[1].what.family, Some(Family::Ipv6));
        assert_eq!(a.limits.len(), 2);
        assert!(a.interfaces.iter().any(|f| f.what == "wg0" && f.line == 23));
    }

    #[test]
    fn nft_refuses_iptables_save_and_unbalanced_blocks() {
        assert_eq!(nft(IPT).unwrap_err().line, 2);
        let e = nft("table ip x {\n\tchain y {\n").unwrap_err();
        assert!(e.message.contains("missing"), "{e}");
    }
}

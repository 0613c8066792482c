//! A bundle as a scenario: the test network around the production relay
//! (its interface names and addresses, its sysctls), its ruleset loaded as
//! it is, and checks derived from what the ruleset does:
//! - every UDP port or range redirected to WireGuard (and every port the
//!   manifest's `[expect]` promises): plain UDP redirect, handshake and a
//!   sustained session at each boundary, and nothing just outside;
//! - masquerade of the tunnel: forwarding of TCP, UDP and ICMP, a transfer,
//!   the conntrack entry, ICMP errors translated back, many flows;
//! - connection limits (`ct count`, connlimit): many flows stay within them,
//!   so a kernel that counts wrong fails the flows;
//! - always the kernel's health.
//!
//! The scenario is TOML (`natvet relay show` prints it), parsed and
//! validated like any other.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::bundle::{Bundle, BundleError};
use super::ruleset::{self, Analysis, Limit};
use crate::scenario::setup::{CapturedRuleset, RulesetFile};
use crate::scenario::Scenario;
use crate::types::{Family, IpNet, PortRange};

/// The scenario of a bundle, its TOML and what each derived check stands for.
#[derive(Debug, Clone)]
pub struct Derived {
    pub scenario: Scenario,
    pub toml: String,
}

/// What the ruleset promises, read from every file.
#[derive(Debug, Default)]
struct Promise {
    /// UDP ranges that reach the listen port (merged, sorted).
    ports: Vec<PortRange>,
    /// Where each came from ("iptables.rules:5").
    sources: Vec<String>,
    /// Families whose tunnel traffic is masqueraded out of the wan interface.
    masquerade: Vec<Family>,
    masquerade_at: Vec<String>,
    /// The smallest connection limit, and where.
    conn_limit: Option<(u32, String)>,
}

/// The scenario of `bundle`. With `promise_of`, the checks come from that
/// bundle instead (a ruleset change is checked against what the baseline
/// promised, so that a range the change loses fails).
pub fn derive(bundle: &Bundle, promise_of: Option<&Bundle>) -> Result<Derived, BundleError> {
    let own = analyse(bundle)?;
    let promise = match promise_of {
        Some(b) => promise(b, &analyse(b)?),
        None => promise(bundle, &own),
    };
    let toml = render(bundle, &promise);
    let origin = format!("{} (derived from the bundle)", bundle.dir.display());
    let mut scenario = Scenario::parse(&toml, &origin).map_err(|e| {
        BundleError::new(
            bundle
                .dir
                .join(super::bundle::MANIFEST)
                .display()
                .to_string(),
            None,
            e.to_string(),
        )
    })?;
    scenario.relay.ruleset = Some(CapturedRuleset {
        backend: bundle.manifest.backend,
        files: bundle
            .rulesets
            .iter()
            .map(|(family, file, text)| RulesetFile {
                family: *family,
                file: file.clone(),
                text: text.clone(),
            })
            .collect(),
    });
    scenario
        .revalidate(&origin)
        .map_err(|e| BundleError::new(&origin, None, e.to_string()))?;
    Ok(Derived { scenario, toml })
}

/// Every ruleset file read, and every interface it names known.
fn analyse(bundle: &Bundle) -> Result<Vec<(Option<Family>, String, Analysis)>, BundleError> {
    let known = bundle.interface_names();
    let mut out = Vec::new();
    for (family, file, text) in &bundle.rulesets {
        let a = ruleset::read(bundle.manifest.backend, *family, text)
            .map_err(|e| BundleError::new(file, Some(e.line), e.message))?;
        if let Some(f) = a.interfaces.iter().find(|f| {
            !known.contains(&f.what.as_str()) && !bundle.manifest.interfaces.other.contains(&f.what)
        }) {
            return Err(BundleError::new(
                file,
                Some(f.line),
                format!(
                    "the ruleset names interface '{}', which the manifest does not have (it has {}): name it in [interfaces] (or list it in interfaces.other if no client traffic crosses it), or fix the rule",
                    f.what,
                    known.join(", ")
                ),
            ));
        }
        out.push((*family, file.clone(), a));
    }
    Ok(out)
}

fn promise(bundle: &Bundle, files: &[(Option<Family>, String, Analysis)]) -> Promise {
    let m = &bundle.manifest;
    let listen = m.interfaces.wireguard.listen_port;
    let public = &m.interfaces.public.name;
    let wan = &m.interfaces.wan().name;
    let mut p = Promise::default();
    let mut ranges: Vec<PortRange> = m.expect.udp_ports.clone();
    if !ranges.is_empty() {
        p.sources
            .push(format!("{} [expect]", super::bundle::MANIFEST));
    }
    for (_, file, a) in files {
        for r in &a.redirects {
            let on_public = r.what.in_iface.as_ref().is_none_or(|i| i == public);
            if on_public && r.what.to_port == Some(listen) {
                ranges.extend(r.what.ports.iter().copied());
                p.sources.push(format!("{file}:{}", r.line));
            }
        }
        for mq in &a.masquerade {
            let out_ok = mq.what.out_iface.as_ref().is_none_or(|o| o == wan);
            for f in bundle.families() {
                let fam_ok = mq.what.family.is_none_or(|x| x == f);
                let tunnel = m
                    .interfaces
                    .wireguard
                    .addresses
                    .iter()
                    .find(|a| a.family() == f)
                    .map(|a| a.addr);
                let src_ok = match (mq.what.source, tunnel) {
                    (None, _) => true,
                    (Some(s), Some(t)) => s.contains(t),
                    (Some(_), None) => false,
                };
                if out_ok && fam_ok && src_ok && !p.masquerade.contains(&f) {
                    p.masquerade.push(f);
                    p.masquerade_at.push(format!("{file}:{}", mq.line));
                }
            }
        }
        for l in &a.limits {
            if let Limit::ConnCount { count } = l.what {
                if p.conn_limit.as_ref().is_none_or(|(c, _)| count < *c) {
                    p.conn_limit = Some((count, format!("{file}:{}", l.line)));
                }
            }
        }
    }
    p.ports = PortRange::merged(ranges);
    p
}

/// The ports to try: the listen port and each range's ends (at most
/// `max`), and the ports just outside every range that nothing covers.
fn boundaries(ranges: &[PortRange], listen: u16, max: usize) -> (Vec<u16>, Vec<u16>) {
    let covered = |p: u16| p == listen || ranges.iter().any(|r| r.contains(p));
    let mut inside = vec![listen];
    let mut outside = Vec::new();
    for r in ranges {
        for p in [r.first, r.last] {
            if !inside.contains(&p) && inside.len() < max {
                inside.push(p);
            }
        }
        for p in [r.first.checked_sub(1), r.last.checked_add(1)]
            .into_iter()
            .flatten()
        {
            if p != 0 && !covered(p) && !outside.contains(&p) && outside.len() < max {
                outside.push(p);
            }
        }
    }
    (inside, outside)
}

/// Host `n` of `net`'s network, with `net`'s prefix.
fn host(net: &IpNet, n: u32) -> IpNet {
    let base = net.network();
    let addr = match base.addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(n))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(u128::from(n)))),
    };
    IpNet {
        addr,
        prefix: net.prefix,
    }
}

/// A host of `net` that is not `net`'s own address.
fn neighbour(net: &IpNet) -> IpNet {
    let h = host(net, 1);
    if h.addr == net.addr {
        host(net, 2)
    } else {
        h
    }
}

/// The first of `candidates` that overlaps none of `taken`.
fn free_net(candidates: &[&str], taken: &[IpNet]) -> IpNet {
    candidates
        .iter()
        .filter_map(|c| c.parse::<IpNet>().ok())
        .find(|c| !taken.iter().any(|t| t.overlaps(c)))
        .unwrap_or_else(|| IpNet::any(Family::Ipv4))
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn list<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(|x| quoted(&x.to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn nums(v: &[u16]) -> String {
    v.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn render(bundle: &Bundle, p: &Promise) -> String {
    let m = &bundle.manifest;
    let i = &m.interfaces;
    let families = bundle.families();
    let of = |a: &[IpNet]| -> Vec<IpNet> {
        families
            .iter()
            .filter_map(|f| a.iter().find(|n| n.family() == *f).copied())
            .collect()
    };
    let public = of(&i.public.addresses);
    let wan = of(&i.wan().addresses);
    let tunnel = of(&i.wireguard.addresses);
    let client_tunnel: Vec<IpNet> = tunnel.iter().map(neighbour).collect();
    let taken: Vec<IpNet> = i
        .public
        .addresses
        .iter()
        .chain(&i.wan().addresses)
        .chain(&i.wireguard.addresses)
        .map(|a| a.network())
        .collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Derived by natvet from the relay bundle {} ({}).",
        m.name,
        bundle.dir.display()
    );
    let _ = writeln!(
        s,
        "# The relay's ruleset ({}) is loaded as it is, with {}.",
        bundle
            .rulesets
            .iter()
            .map(|r| r.1.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        m.backend
    );
    let _ = writeln!(s, "name = {}", quoted(&format!("relay-{}", m.name)));
    let desc = if m.description.is_empty() {
        format!(
            "The relay of bundle {}, its own ruleset and sysctls",
            m.name
        )
    } else {
        m.description.clone()
    };
    let _ = writeln!(s, "description = {}", quoted(&desc));
    let _ = writeln!(s, "backends = [{}]\n", quoted(m.backend.name()));
    let _ = writeln!(s, "[relay]");
    let _ = writeln!(s, "listen_port = {}", i.wireguard.listen_port);
    let _ = writeln!(
        s,
        "# What the ruleset redirects to WireGuard: {}",
        if p.sources.is_empty() {
            "nothing".to_string()
        } else {
            p.sources.join(", ")
        }
    );
    let _ = writeln!(s, "redirect_udp = [{}]", list(&p.ports));
    let _ = writeln!(
        s,
        "# Masqueraded: {}",
        if p.masquerade_at.is_empty() {
            "nothing".to_string()
        } else {
            p.masquerade_at.join(", ")
        }
    );
    let _ = writeln!(s, "masquerade = {}", !p.masquerade.is_empty());
    let _ = writeln!(s, "families = [{}]", list(&families));
    let _ = writeln!(s, "public_interface = {}", quoted(&i.public.name));
    let _ = writeln!(s, "wan_interface = {}", quoted(&i.wan().name));
    if let Some(mtu) = i.wan().mtu.filter(|_| !i.single()) {
        let _ = writeln!(s, "wan_mtu = {mtu}");
    }
    let _ = writeln!(s);

    let single = i.single();
    let mut ns = vec!["client"];
    if single {
        ns.push("gateway");
    }
    ns.extend(["relay", "internet"]);
    for n in ns {
        let _ = writeln!(s, "[[topology.namespace]]\nname = \"{n}\"");
        if n == "relay" && !bundle.sysctls.is_empty() {
            let kv: Vec<String> = bundle
                .sysctls
                .iter()
                .map(|(k, v, _)| format!("{} = {}", quoted(k), quoted(v)))
                .collect();
            let _ = writeln!(s, "# From {}", bundle.sysctls_file);
            let _ = writeln!(s, "sysctls = {{ {} }}", kv.join(", "));
        }
        let _ = writeln!(s);
    }
    let link = |s: &mut String, a: &str, aa: &[IpNet], b: &str, ba: &[IpNet], mtu: Option<u32>| {
        let _ = writeln!(s, "[[topology.link]]");
        let _ = writeln!(
            s,
            "a = {{ at = {}, addresses = [{}] }}",
            quoted(a),
            list(aa)
        );
        let _ = writeln!(
            s,
            "b = {{ at = {}, addresses = [{}] }}",
            quoted(b),
            list(ba)
        );
        if let Some(m) = mtu {
            let _ = writeln!(s, "mtu = {m}");
        }
        let _ = writeln!(s);
    };
    let route = |s: &mut String, ns: &str, to: &str, via: Option<IpAddr>, dev: Option<&str>| {
        let _ = writeln!(s, "[[topology.route]]\nin = \"{ns}\"\nto = {}", quoted(to));
        if let Some(v) = via {
            let _ = writeln!(s, "via = {}", quoted(&v.to_string()));
        }
        if let Some(d) = dev {
            let _ = writeln!(s, "dev = {}", quoted(d));
        }
        let _ = writeln!(s);
    };
    let internet_nets: Vec<IpNet> = if single {
        // client ---- gateway (home NAT) ---- relay:PUBLIC
        //                |
        //             internet
        let lan: Vec<IpNet> = families
            .iter()
            .map(|f| match f {
                Family::Ipv4 => free_net(
                    &["192.168.77.0/24", "192.168.78.0/24", "172.31.77.0/24"],
                    &taken,
                ),
                Family::Ipv6 => free_net(&["fd77:77::/64", "fd78:78::/64"], &taken),
            })
            .collect();
        let inet: Vec<IpNet> = families
            .iter()
            .map(|f| match f {
                Family::Ipv4 => {
                    free_net(&["198.18.0.0/24", "198.19.0.0/24", "192.0.2.0/24"], &taken)
                }
                Family::Ipv6 => free_net(&["2001:db8:ffff::/64", "2001:db8:fffe::/64"], &taken),
            })
            .collect();
        let gw_pub: Vec<IpNet> = public.iter().map(neighbour).collect();
        link(
            &mut s,
            "gateway:lan",
            &lan.iter().map(|n| host(n, 1)).collect::<Vec<_>>(),
            "client:eth0",
            &lan.iter().map(|n| host(n, 2)).collect::<Vec<_>>(),
            None,
        );
        link(
            &mut s,
            &format!("relay:{}", i.public.name),
            &public,
            "gateway:up",
            &gw_pub,
            i.public.mtu,
        );
        link(
            &mut s,
            "gateway:world",
            &inet.iter().map(|n| host(n, 1)).collect::<Vec<_>>(),
            "internet:eth0",
            &inet.iter().map(|n| host(n, 2)).collect::<Vec<_>>(),
            None,
        );
        for (k, f) in families.iter().enumerate() {
            let any = if *f == Family::Ipv4 {
                "0.0.0.0/0"
            } else {
                "::/0"
            };
            route(&mut s, "client", any, Some(host(&lan[k], 1).addr), None);
            route(&mut s, "relay", any, Some(gw_pub[k].addr), None);
            route(&mut s, "internet", any, Some(host(&inet[k], 1).addr), None);
        }
        for n in &lan {
            let _ = writeln!(
                s,
                "[[nat]]\nin = \"gateway\"\nkind = \"masquerade\"\nout = \"up\"\nsource = {}\n",
                quoted(&n.to_string())
            );
        }
        inet
    } else {
        let client: Vec<IpNet> = public.iter().map(neighbour).collect();
        let inet: Vec<IpNet> = wan.iter().map(neighbour).collect();
        link(
            &mut s,
            &format!("relay:{}", i.public.name),
            &public,
            "client:eth0",
            &client,
            i.public.mtu,
        );
        link(
            &mut s,
            &format!("relay:{}", i.wan().name),
            &wan,
            "internet:eth0",
            &inet,
            None,
        );
        wan.iter().map(|n| n.network()).collect()
    };
    let _ = writeln!(
        s,
        "[[topology.wireguard]]\nat = {}\naddresses = [{}]",
        quoted(&format!("relay:{}", i.wireguard.name)),
        list(&tunnel)
    );
    if let Some(mtu) = i.wireguard.mtu {
        let _ = writeln!(s, "mtu = {mtu}");
    }
    let _ = writeln!(s, "peers = [{{ peer = \"client:wg0\" }}]\n");
    let _ = writeln!(
        s,
        "[[topology.wireguard]]\nat = \"client:wg0\"\naddresses = [{}]",
        list(&client_tunnel)
    );
    if let Some(mtu) = i.wireguard.mtu {
        let _ = writeln!(s, "mtu = {mtu}");
    }
    let _ = writeln!(
        s,
        "peers = [{{ peer = {} }}]\n",
        quoted(&format!("relay:{}", i.wireguard.name))
    );
    let _ = writeln!(
        s,
        "# The client reaches the internet host only through its tunnel."
    );
    for n in &internet_nets {
        route(
            &mut s,
            "client",
            &n.network().to_string(),
            None,
            Some("wg0"),
        );
    }

    let listen = i.wireguard.listen_port;
    let (inside, outside) = boundaries(&p.ports, listen, 32);
    let session: Vec<u16> = inside
        .iter()
        .copied()
        .filter(|x| *x != listen)
        .take(8)
        .collect();
    let check = |s: &mut String, why: &str, body: &str| {
        let _ = writeln!(s, "# {why}\n[[check]]\n{body}\n");
    };
    check(
        &mut s,
        "Plain UDP to the listen port and every redirected range's ends reaches WireGuard's port.",
        &format!("kind = \"redirect\"\nports = [{}]", nums(&inside)),
    );
    if !outside.is_empty() {
        check(
            &mut s,
            "Just outside the redirected ranges nothing reaches it.",
            &format!("kind = \"no-redirect\"\nports = [{}]", nums(&outside)),
        );
    }
    check(
        &mut s,
        "A WireGuard handshake through each of them, answered from the port the client chose.",
        &format!("kind = \"handshake\"\nports = [{}]", nums(&inside)),
    );
    check(&mut s, "A client of its own on each range's ends, all at once, with a quiet spell bridged by keepalives.", &format!("kind = \"session\"\nports = [{}]", nums(if session.is_empty() { &inside[..1] } else { &session })));
    if !outside.is_empty() {
        check(
            &mut s,
            "No handshake just outside the ranges.",
            &format!("kind = \"no-handshake\"\nports = [{}]", nums(&outside)),
        );
    }
    if !p.masquerade.is_empty() {
        check(
            &mut s,
            "The tunnel's traffic is masqueraded out of the wan interface.",
            "kind = \"forward\"\nprotocols = [\"tcp\", \"udp\", \"icmp\"]",
        );
        check(
            &mut s,
            "A megabyte through tunnel and masquerade, intact.",
            "kind = \"transfer\"\nbytes = 1048576",
        );
        check(
            &mut s,
            "The conntrack entry of a masqueraded flow says so.",
            "kind = \"conntrack-masquerade\"",
        );
        check(
            &mut s,
            "An ICMP error from beyond the NAT reaches the client, translated back.",
            "kind = \"icmp-error\"",
        );
        let flows = match &p.conn_limit {
            Some((c, _)) => (*c).clamp(2, 200) / 2 + 1,
            None => 200,
        };
        let why = match &p.conn_limit {
            Some((c, at)) => format!("Many concurrent flows, within the connection limit of {c} ({at}): every one answered."),
            None => "Many concurrent flows: every one answered, each on its own translated port.".to_string(),
        };
        check(
            &mut s,
            &why,
            &format!("kind = \"many-flows\"\nflows = {flows}"),
        );
    }
    check(
        &mut s,
        "The kernel stays healthy throughout.",
        "kind = \"kernel-health\"",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_ranges_and_their_boundaries() {
        let r = PortRange::merged(vec![
            "52000-60000".parse().unwrap(),
            "53".parse().unwrap(),
            "4000-33433".parse().unwrap(),
            "33565-51820".parse().unwrap(),
            "4000-5000".parse().unwrap(),
            "33434".parse().unwrap(),
        ]);
        let t: Vec<String> = r.iter().map(|r| r.to_string()).collect();
        assert_eq!(t, ["53", "4000-33434", "33565-51820", "52000-60000"]);
        let (inside, outside) = boundaries(&r, 51820, 32);
        assert_eq!(inside, [51820, 53, 4000, 33434, 33565, 52000, 60000]);
        assert_eq!(outside, [52, 54, 3999, 33435, 33564, 51821, 51999, 60001]);
    }

    #[test]
    fn neighbours_avoid_the_relay_and_free_nets_avoid_the_bundle() {
        let n: IpNet = "203.0.113.1/24".parse().unwrap();
        assert_eq!(neighbour(&n).to_string(), "203.0.113.2/24");
        let n: IpNet = "203.0.113.10/24".parse().unwrap();
        assert_eq!(neighbour(&n).to_string(), "203.0.113.1/24");
        let taken: Vec<IpNet> = vec!["198.18.0.0/15".parse().unwrap()];
        assert_eq!(
            free_net(&["198.18.0.0/24", "192.0.2.0/24"], &taken).to_string(),
            "192.0.2.0/24"
        );
    }
}

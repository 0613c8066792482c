//! `--redact`: public addresses mapped onto documentation ranges, one
//! consistent map for the manifest, the routes and the ruleset text.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::bundle::Manifest;
use crate::types::IpNet;

/// A consistent map of public addresses onto documentation ranges: the
/// network part of each public IPv4 /24 (IPv6 /48) goes to the next
/// documentation network, the host part stays, so subnets, routes and
/// rules still agree with each other.
#[derive(Debug, Default)]
pub struct Redaction {
    v4: BTreeMap<[u8; 3], [u8; 3]>,
    v6: BTreeMap<[u16; 3], [u16; 3]>,
    seen: std::collections::BTreeSet<IpAddr>,
}

const DOC_V4: &[[u8; 3]] = &[[203, 0, 113], [198, 51, 100], [192, 0, 2]];

impl Redaction {
    /// The documentation address for `a` (private and special ones stay).
    pub fn addr(&mut self, a: IpAddr) -> IpAddr {
        match a {
            IpAddr::V4(v) if is_public_v4(v) => {
                let o = v.octets();
                let n = self.v4.len();
                let to = *self.v4.entry([o[0], o[1], o[2]]).or_insert_with(|| {
                    // Past the three TEST-NETs: 233.252.0.0/24 and then
                    // 198.18.0.0/15 (benchmarking), still never routed.
                    match DOC_V4.get(n) {
                        Some(d) => *d,
                        None if n == 3 => [233, 252, 0],
                        None => [198, 18 + ((n - 4) / 256 % 2) as u8, ((n - 4) % 256) as u8],
                    }
                });
                self.seen.insert(a);
                IpAddr::V4(Ipv4Addr::new(to[0], to[1], to[2], o[3]))
            }
            IpAddr::V6(v) if is_public_v6(v) => {
                let s = v.segments();
                let n = self.v6.len() as u16;
                let to = *self.v6.entry([s[0], s[1], s[2]]).or_insert([
                    0x2001,
                    0xdb8,
                    n.wrapping_add(1),
                ]);
                self.seen.insert(a);
                IpAddr::V6(Ipv6Addr::new(
                    to[0], to[1], to[2], s[3], s[4], s[5], s[6], s[7],
                ))
            }
            other => other,
        }
    }

    pub fn net(&mut self, n: IpNet) -> IpNet {
        IpNet {
            addr: self.addr(n.addr),
            prefix: n.prefix,
        }
    }

    /// `text` with every public address in it mapped.
    pub fn text(&mut self, text: &str) -> String {
        let is_part = |c: char| c.is_ascii_hexdigit() || c == ':' || c == '.';
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        let mut prev: Option<char> = None;
        while let Some(c) = rest.chars().next() {
            let word_start = !prev
                .is_some_and(|p| p.is_ascii_alphanumeric() || p == '_' || p == ':' || p == '.');
            if word_start && is_part(c) {
                let len = rest.find(|c: char| !is_part(c)).unwrap_or(rest.len());
                let mut run = &rest[..len];
                let after = rest[len..].chars().next();
                let bounded = !after.is_some_and(|a| a.is_ascii_alphanumeric() || a == '_');
                // A sentence's full stop is not part of the address.
                while run.ends_with('.') {
                    run = &run[..run.len() - 1];
                }
                if bounded && run.contains(['.', ':']) {
                    if let Ok(a) = run.parse::<IpAddr>() {
                        out.push_str(&self.addr(a).to_string());
                        out.push_str(&rest[run.len()..len]);
                        prev = rest[..len].chars().last();
                        rest = &rest[len..];
                        continue;
                    }
                }
                out.push_str(&rest[..len]);
                prev = rest[..len].chars().last();
                rest = &rest[len..];
                continue;
            }
            out.push(c);
            prev = Some(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }

    /// How many distinct public addresses were mapped.
    pub fn mapped(&self) -> usize {
        self.seen.len()
    }
}

pub(super) fn redact_manifest(m: &mut Manifest, map: &mut Redaction) {
    let i = &mut m.interfaces;
    for a in i
        .public
        .addresses
        .iter_mut()
        .chain(i.wan.iter_mut().flat_map(|w| w.addresses.iter_mut()))
        .chain(i.wireguard.addresses.iter_mut())
    {
        *a = map.net(*a);
    }
    for l in m.routes.iter_mut().chain(m.rules.iter_mut()) {
        *l = map.text(l);
    }
}

fn is_public_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    !(a.is_private()
        || a.is_loopback()
        || a.is_link_local()
        || a.is_unspecified()
        || a.is_broadcast()
        || a.is_multicast()
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || o[0] == 0
        || o[0] >= 240
        || DOC_V4.contains(&[o[0], o[1], o[2]])
        || (o[0] == 198 && (18..20).contains(&o[1])))
}

fn is_public_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    !(a.is_loopback()
        || a.is_unspecified()
        || a.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] == 0x2001 && s[1] == 0xdb8)
        || a.to_ipv4_mapped().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_reads_addresses_as_words_only() {
        let mut r = Redaction::default();
        assert_eq!(
            r.text("ip6 daddr 2a03:1b20::1, x"),
            "ip6 daddr 2001:db8:1::1, x"
        );
        assert_eq!(r.text("to 8.8.8.8."), "to 203.0.113.8.");
        assert_eq!(
            r.text("ab:cd:ef:01:02:03 4000:33433 v1.2.3.4"),
            "ab:cd:ef:01:02:03 4000:33433 v1.2.3.4"
        );
        assert_eq!(
            r.text("192.168.1.1 10.64.0.1 fc00::1"),
            "192.168.1.1 10.64.0.1 fc00::1"
        );
    }
}

//! Plain values every layer shares: address families, protocols, port
//! ranges, prefixes, byte counts. This module imports nothing of natvet's.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// An address family: WireGuard over it, NAT for it, and traffic inside the
/// tunnel in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// The prefix of this family's result names ("" for IPv4, so names stay short).
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Ipv4 => "",
            Family::Ipv6 => "ipv6/",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        })
    }
}

pub fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}

/// An inclusive UDP/TCP port range, written "53" or "4000-33433".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// `v` sorted, with overlapping and touching ranges joined.
    pub fn merged(mut v: Vec<PortRange>) -> Vec<PortRange> {
        v.sort_by_key(|r| (r.first, r.last));
        let mut out: Vec<PortRange> = Vec::new();
        for r in v {
            match out.last_mut() {
                Some(l) if u32::from(r.first) <= u32::from(l.last) + 1 => {
                    l.last = l.last.max(r.last)
                }
                _ => out.push(r),
            }
        }
        out
    }

    /// How many ports it holds (1 to 65535).
    pub fn size(&self) -> u32 {
        u32::from(self.last.saturating_sub(self.first)) + 1
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let port = |t: &str| -> Result<u16, String> {
            match t.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!(
                    "'{s}' is not a port or port range: expected a port 1-65535 or FIRST-LAST"
                )),
                Ok(p) => Ok(p),
            }
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!(
                "port range '{s}' runs backwards: write it as {last}-{first}"
            ));
        }
        Ok(PortRange { first, last })
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A value written either as a number or as a string (`53` or `"53"`).
#[derive(Deserialize)]
#[serde(untagged)]
pub enum NumOrText {
    Num(i64),
    Text(String),
}

impl NumOrText {
    /// As text, however it was written.
    pub fn into_text(self) -> String {
        match self {
            NumOrText::Num(n) => n.to_string(),
            NumOrText::Text(t) => t,
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        NumOrText::deserialize(d)?
            .into_text()
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An IPv4 or IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

impl IpNet {
    /// The network itself: host bits cleared ("192.0.2.1/24" -> "192.0.2.0/24").
    pub fn network(&self) -> IpNet {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32u32.saturating_sub(u32::from(self.prefix)))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128u32.saturating_sub(u32::from(self.prefix)))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        IpNet {
            addr,
            prefix: self.prefix,
        }
    }

    /// Whether `addr` lies in this network.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4()
            && IpNet {
                addr,
                prefix: self.prefix,
            }
            .network()
                == self.network()
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &IpNet) -> bool {
        let shorter = self.prefix.min(other.prefix);
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && IpNet {
                addr: self.addr,
                prefix: shorter,
            }
            .network()
                == IpNet {
                    addr: other.addr,
                    prefix: shorter,
                }
                .network()
    }

    /// The whole address space of a family ("0.0.0.0/0", "::/0").
    pub fn any(f: Family) -> IpNet {
        match f {
            Family::Ipv4 => IpNet {
                addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                prefix: 0,
            },
            Family::Ipv6 => IpNet {
                addr: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                prefix: 0,
            },
        }
    }

    /// The address alone, as a network of one.
    pub fn host(addr: IpAddr) -> IpNet {
        IpNet {
            addr,
            prefix: if addr.is_ipv4() { 32 } else { 128 },
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    /// "192.0.2.1/24", "2001:db8::1/64", or an address alone (a host).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("'{s}' is not an address with prefix: expected e.g. \"192.0.2.1/24\" or \"2001:db8::1/64\"")
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| {
                    format!("'{s}': the prefix length must be a number from 0 to {max}")
                })?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

//! The relay topology: three namespaces named for their role.
//!
//! ```text
//!  client                     relay                         internet
//!  eth0 192.0.2.2/24 ---- public 192.0.2.1/24
//!  wg0  10.99.0.2/24  ~~~~ wg0 10.99.0.1/24 (UDP 51820)
//!                             wan 198.51.100.1/24 ---- eth0 198.51.100.2/24
//! ```
//! The client reaches 198.51.100.0/24 only through its tunnel; the internet
//! host has no route back to the tunnel, so only masqueraded traffic gets replies.
//!
//! The namespaces are anonymous (held by file descriptor, never mounted under
//! /run/netns) and every link lives inside them, so nothing is created in the
//! namespace natvet starts in, and everything vanishes with the process that
//! holds them, however it ends. On a kernel without WireGuard (a host for
//! `natvet verify`), a veth pair `tun0` with the tunnel's addresses stands in
//! for the tunnel: the WireGuard checks are then unsupported, and the NAT
//! checks still run over it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Stdio;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::netlink;
use super::netns::Netns;
use super::probes::{IcmpSocket, InternetHost};
use super::wireguard::WgInterface;
use crate::nat::{Invocation, IpNet, Masquerade, NatBackend, NatRules, Redirect};
use crate::scenario::{Family, Scenario};

/// The addresses of one family: the same roles in IPv4 and IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    pub family: Family,
    pub client_public: IpAddr,
    pub relay_public: IpAddr,
    pub relay_wan: IpAddr,
    pub internet: IpAddr,
    pub tunnel_relay: IpAddr,
    pub tunnel_client: IpAddr,
    /// Prefix length of the public and wan links.
    pub link_prefix: u8,
    /// The internet's network, routed by the client through the tunnel.
    pub internet_net: IpNet,
    /// The tunnel's network, masqueraded by the relay.
    pub tunnel_net: IpNet,
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const fn v6(segments: [u16; 8]) -> IpAddr {
    let [a, b, c, d, e, f, g, h] = segments;
    IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
}

pub const IPV4: Addrs = Addrs {
    family: Family::Ipv4,
    client_public: v4(192, 0, 2, 2),
    relay_public: v4(192, 0, 2, 1),
    relay_wan: v4(198, 51, 100, 1),
    internet: v4(198, 51, 100, 2),
    tunnel_relay: v4(10, 99, 0, 1),
    tunnel_client: v4(10, 99, 0, 2),
    link_prefix: 24,
    internet_net: IpNet {
        addr: v4(198, 51, 100, 0),
        prefix: 24,
    },
    tunnel_net: IpNet {
        addr: v4(10, 99, 0, 0),
        prefix: 24,
    },
};

pub const IPV6: Addrs = Addrs {
    family: Family::Ipv6,
    client_public: v6([0x2001, 0xdb8, 1, 0, 0, 0, 0, 2]),
    relay_public: v6([0x2001, 0xdb8, 1, 0, 0, 0, 0, 1]),
    relay_wan: v6([0x2001, 0xdb8, 2, 0, 0, 0, 0, 1]),
    internet: v6([0x2001, 0xdb8, 2, 0, 0, 0, 0, 2]),
    tunnel_relay: v6([0xfd99, 0, 0, 0, 0, 0, 0, 1]),
    tunnel_client: v6([0xfd99, 0, 0, 0, 0, 0, 0, 2]),
    link_prefix: 64,
    internet_net: IpNet {
        addr: v6([0x2001, 0xdb8, 2, 0, 0, 0, 0, 0]),
        prefix: 64,
    },
    tunnel_net: IpNet {
        addr: v6([0xfd99, 0, 0, 0, 0, 0, 0, 0]),
        prefix: 64,
    },
};

pub fn addrs(f: Family) -> &'static Addrs {
    match f {
        Family::Ipv4 => &IPV4,
        Family::Ipv6 => &IPV6,
    }
}

pub const RELAY_PUBLIC_IF: &str = "public";
pub const RELAY_WAN_IF: &str = "wan";
pub const WG_IF: &str = "wg0";
/// The tunnel's MTU, WireGuard's default for a 1500-byte underlay.
pub const TUNNEL_MTU: u32 = 1420;
pub const STAND_IN_IF: &str = "tun0";
/// The client's first WireGuard source port; each check takes a fresh one so
/// that conntrack entries of earlier checks cannot interfere.
pub const CLIENT_FIRST_PORT: u16 = 40000;

/// What `Topology::build` and `start_tunnel` create, in words (for
/// `natvet verify --dry-run`). Kept next to the code it describes.
pub fn plan() -> String {
    let mut out =
        "  namespaces (anonymous: held by the agent, gone when it exits): client, relay, internet\n"
            .to_string();
    out.push_str(&format!(
        "  links:      veth relay/{RELAY_PUBLIC_IF} <-> client/eth0, veth relay/{RELAY_WAN_IF} <-> internet/eth0\n"
    ));
    for a in [IPV4, IPV6] {
        let p = a.link_prefix;
        let t = a.tunnel_net.prefix;
        out.push_str(&format!(
            "  {:<11} client/eth0 {}/{p}, relay/{RELAY_PUBLIC_IF} {}/{p}, relay/{RELAY_WAN_IF} {}/{p}, internet/eth0 {}/{p}; tunnel client {}/{t}, relay {}/{t}\n",
            format!("{}:", a.family),
            a.client_public, a.relay_public, a.relay_wan, a.internet, a.tunnel_client, a.tunnel_relay
        ));
    }
    out.push_str(&format!(
        "  sysctls:    net.ipv4.ip_forward=1, net.ipv6.conf.all.forwarding=1 in the relay namespace; accept_dad=0 in each namespace
  tunnel:     WireGuard {WG_IF} on client and relay (UDP listen port from the scenario);
              on a kernel without WireGuard, veth {STAND_IN_IF} with the same addresses (WireGuard checks: unsupported)
  routes:     client {} and {} via the tunnel
  probes:     TCP/UDP/ICMP servers in the internet namespace, sockets on the client and relay
",
        IPV4.internet_net, IPV6.internet_net
    ));
    out
}

/// The neutral NAT rules a scenario asks for, for each of its families.
pub fn nat_rules(scenario: &Scenario) -> NatRules {
    let mut rules = NatRules {
        families: scenario.relay.families.clone(),
        ..NatRules::default()
    };
    for f in &scenario.relay.families {
        if scenario.relay.masquerade {
            rules.masquerade.push(Masquerade {
                source: addrs(*f).tunnel_net,
                out_iface: RELAY_WAN_IF.into(),
                ports: scenario.relay.masquerade_ports,
            });
        }
        if !scenario.relay.redirect_udp.is_empty() {
            rules.redirect_udp.push(Redirect {
                family: *f,
                in_iface: RELAY_PUBLIC_IF.into(),
                ports: scenario.relay.redirect_udp.clone(),
                to_port: scenario.relay.listen_port,
            });
        }
    }
    rules
}

/// What carries the client's traffic to the relay.
pub enum Tunnel {
    WireGuard {
        client: WgInterface,
        relay: WgInterface,
    },
    /// The kernel has no WireGuard: a veth pair with the tunnel's addresses.
    StandIn {
        /// Why WireGuard could not be used.
        why: String,
    },
}

impl Tunnel {
    pub fn iface(&self) -> &'static str {
        match self {
            Tunnel::WireGuard { .. } => WG_IF,
            Tunnel::StandIn { .. } => STAND_IN_IF,
        }
    }
}

/// Wait until `addr` can be bound in `ns`. An IPv6 address stays tentative
/// for a moment after its link comes up, even without duplicate address
/// detection (the kernel finishes it from a work queue); binding to it before
/// that fails with EADDRNOTAVAIL.
fn wait_usable(ns: &Netns, addr: IpAddr) -> Result<()> {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(5);
    ns.run(|| {
        let start = std::time::Instant::now();
        loop {
            match std::net::UdpSocket::bind((addr, 0)) {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > WAIT => {
                    bail!("{addr} in {} was not usable within {WAIT:?}: {e}", ns.name)
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
            }
        }
    })
}

/// Does this error (its whole chain, as text) say the kernel does not
/// support what was asked (EOPNOTSUPP), rather than natvet getting it wrong?
pub fn not_supported(text: &str) -> bool {
    text.contains("Operation not supported") || text.contains("Not supported")
}

/// Did setting up the flowtable fail because the kernel lacks it? nft says
/// ENOENT for an object type the kernel does not know.
fn lacks_feature(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    not_supported(&text) || text.contains("No such file or directory")
}

/// Did creating a WireGuard link fail because the kernel lacks WireGuard?
fn lacks_wireguard(e: &anyhow::Error) -> bool {
    not_supported(&format!("{e:#}"))
}

/// Everything a check can touch. Dropping it removes all of it: the
/// namespaces die with their last file descriptor and socket.
pub struct Topology {
    pub client: Arc<Netns>,
    pub relay: Arc<Netns>,
    pub internet: Arc<Netns>,
    /// The families set up, and for each the client's raw ICMP socket (it
    /// sees the relay's and the internet's errors); a family the kernel
    /// cannot do is absent from `families`, with the reason in `missing`.
    pub families: Vec<Family>,
    pub missing: Vec<(Family, String)>,
    /// None until `start_tunnel`.
    pub tunnel: Option<Tunnel>,
    pub internet_host: Option<InternetHost>,
    client_icmp: Vec<(Family, IcmpSocket)>,
    pub listen_port: u16,
    next_port: u16,
}

impl Topology {
    /// Namespaces, links, addresses and routes for `families`; no tunnel and
    /// no NAT yet.
    pub fn build(listen_port: u16, wanted: &[Family], wan_mtu: Option<u32>) -> Result<Topology> {
        let client = Arc::new(Netns::create("client")?);
        let relay = Arc::new(Netns::create("relay")?);
        let internet = Arc::new(Netns::create("internet")?);
        let mut families = Vec::new();
        let mut missing = Vec::new();
        for f in wanted {
            let ok = match f {
                Family::Ipv4 => Ok(()),
                // Addresses are usable at once only without duplicate address
                // detection; links inherit `default` as they are created.
                Family::Ipv6 => [&client, &relay, &internet].iter().try_for_each(|ns| {
                    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
                    ns.sysctl("net.ipv6.conf.all.accept_dad", "0")
                }),
            };
            match ok {
                Ok(()) => families.push(*f),
                Err(e) => missing.push((*f, format!("the kernel cannot do {f} here: {e:#}"))),
            }
        }
        for ns in [&client, &relay, &internet] {
            netlink::loopback_up(ns)?;
        }
        netlink::veth_pair(&relay, RELAY_PUBLIC_IF, &client, "eth0")?;
        netlink::veth_pair(&relay, RELAY_WAN_IF, &internet, "eth0")?;
        if let Some(mtu) = wan_mtu {
            netlink::set_mtu(&relay, RELAY_WAN_IF, mtu)?;
            netlink::set_mtu(&internet, "eth0", mtu)?;
        }
        for f in &families {
            let a = addrs(*f);
            for (ns, link, addr) in [
                (&client, "eth0", a.client_public),
                (&relay, RELAY_PUBLIC_IF, a.relay_public),
                (&relay, RELAY_WAN_IF, a.relay_wan),
                (&internet, "eth0", a.internet),
            ] {
                netlink::add_address(ns, link, addr, a.link_prefix)?;
            }
        }
        for (ns, link) in [
            (&client, "eth0"),
            (&relay, RELAY_PUBLIC_IF),
            (&relay, RELAY_WAN_IF),
            (&internet, "eth0"),
        ] {
            netlink::link_up(ns, link)?;
        }
        for f in &families {
            match f {
                Family::Ipv4 => relay.sysctl("net.ipv4.ip_forward", "1")?,
                Family::Ipv6 => relay.sysctl("net.ipv6.conf.all.forwarding", "1")?,
            }
        }
        for f in &families {
            let a = addrs(*f);
            for (ns, addr) in [
                (&client, a.client_public),
                (&relay, a.relay_public),
                (&relay, a.relay_wan),
                (&internet, a.internet),
            ] {
                wait_usable(ns, addr)?;
            }
        }
        let client_icmp = families
            .iter()
            .map(|f| Ok((*f, IcmpSocket::open(&client, *f == Family::Ipv6)?)))
            .collect::<Result<Vec<_>>>()?;
        let internet_addrs: Vec<IpAddr> = families.iter().map(|f| addrs(*f).internet).collect();
        let internet_host = Some(InternetHost::start(&internet, &internet_addrs)?);
        Ok(Topology {
            client,
            relay,
            internet,
            families,
            missing,
            tunnel: None,
            internet_host,
            client_icmp,
            listen_port,
            next_port: CLIENT_FIRST_PORT,
        })
    }

    /// Offload forwarded TCP/UDP between the tunnel and the wan link to an
    /// nftables flowtable of its own (`table inet natvet_offload`), beside
    /// whatever NAT backend runs. Ok(Err(reason)) when the kernel or the
    /// host lacks it.
    pub fn start_flowtable(&self) -> Result<std::result::Result<(), String>> {
        let Some(tunnel) = &self.tunnel else {
            bail!("the flowtable needs the tunnel's interface: start the tunnel first");
        };
        let nft = "/usr/sbin/nft";
        if !std::path::Path::new(nft).exists() {
            return Ok(Err(format!(
                "the flowtable is configured with {nft}, which is missing: apt-get install -y nftables"
            )));
        }
        let script = format!(
            "table inet natvet_offload {{
\tflowtable ft {{
\t\thook ingress priority 0; devices = {{ \"{}\", \"{RELAY_WAN_IF}\" }};
\t}}
\tchain forward {{
\t\ttype filter hook forward priority 0; policy accept;
\t\tmeta l4proto {{ tcp, udp }} flow add @ft
\t}}
}}
",
            tunnel.iface()
        );
        let inv = Invocation {
            program: nft,
            args: vec!["-f", "-"],
        };
        match self.relay_run(&inv, Some(&script)) {
            Ok(_) => Ok(Ok(())),
            Err(e) if lacks_feature(&e) => {
                Ok(Err(format!("the kernel cannot set up a flowtable: {e:#}")))
            }
            Err(e) => Err(e).context("setting up the flowtable"),
        }
    }

    /// Why family `f` cannot be used, if it cannot.
    pub fn lacks(&self, f: Family) -> Option<String> {
        if self.families.contains(&f) {
            return None;
        }
        Some(
            self.missing
                .iter()
                .find(|(m, _)| *m == f)
                .map(|(_, why)| why.clone())
                .unwrap_or_else(|| format!("the scenario does not set up {f}")),
        )
    }

    /// The client's raw ICMP socket of family `f`.
    pub fn client_icmp(&self, f: Family) -> Result<&IcmpSocket> {
        self.client_icmp
            .iter()
            .find(|(g, _)| *g == f)
            .map(|(_, s)| s)
            .with_context(|| format!("no {f} ICMP socket on the client"))
    }

    /// Bring up the tunnel: WireGuard, or the veth stand-in when the kernel
    /// has no WireGuard. Then route the internet through it.
    pub fn start_tunnel(&mut self) -> Result<&Tunnel> {
        let tunnel = match self.wireguard() {
            Ok(t) => t,
            Err(e) if lacks_wireguard(&e) => {
                netlink::veth_pair(&self.relay, STAND_IN_IF, &self.client, STAND_IN_IF)?;
                Tunnel::StandIn {
                    why: format!("the kernel has no WireGuard ({e:#})"),
                }
            }
            Err(e) => return Err(e),
        };
        let dev = tunnel.iface();
        // The same MTU whether WireGuard or its stand-in carries the tunnel.
        netlink::set_mtu(&self.relay, dev, TUNNEL_MTU)?;
        netlink::set_mtu(&self.client, dev, TUNNEL_MTU)?;
        for f in &self.families {
            let a = addrs(*f);
            let p = a.tunnel_net.prefix;
            netlink::add_address(&self.relay, dev, a.tunnel_relay, p)?;
            netlink::add_address(&self.client, dev, a.tunnel_client, p)?;
        }
        netlink::link_up(&self.relay, dev)?;
        netlink::link_up(&self.client, dev)?;
        for f in &self.families {
            let a = addrs(*f);
            wait_usable(&self.relay, a.tunnel_relay)?;
            wait_usable(&self.client, a.tunnel_client)?;
        }
        for f in &self.families {
            let a = addrs(*f);
            // WireGuard is point to point; a veth needs the relay as gateway.
            let via = matches!(tunnel, Tunnel::StandIn { .. }).then_some(a.tunnel_relay);
            netlink::add_route(&self.client, a.internet_net, dev, via)?;
        }
        Ok(self.tunnel.insert(tunnel))
    }

    fn wireguard(&self) -> Result<Tunnel> {
        let relay = WgInterface::create(self.relay.clone(), WG_IF, Some(self.listen_port))?;
        let client = WgInterface::create(self.client.clone(), WG_IF, Some(CLIENT_FIRST_PORT))?;
        let allowed: Vec<(IpAddr, u8)> = self
            .families
            .iter()
            .map(|f| {
                let a = addrs(*f).tunnel_client;
                (a, if a.is_ipv6() { 128 } else { 32 })
            })
            .collect();
        relay.set_only_peer(&client.public_key(), None, &allowed, None)?;
        Ok(Tunnel::WireGuard { client, relay })
    }

    /// The WireGuard interfaces (client, relay), or why there are none.
    pub fn wg(&self) -> std::result::Result<(&WgInterface, &WgInterface), String> {
        match &self.tunnel {
            Some(Tunnel::WireGuard { client, relay }) => Ok((client, relay)),
            Some(Tunnel::StandIn { why }) => Err(why.clone()),
            None => Err("the tunnel is not up yet".into()),
        }
    }

    /// (namespace, interface) pairs worth capturing on.
    pub fn interfaces(&self) -> Vec<(&Netns, &'static str)> {
        let mut v: Vec<(&Netns, &'static str)> = vec![(&self.client, "eth0")];
        if let Some(t) = &self.tunnel {
            v.push((&self.client, t.iface()));
            v.push((&self.relay, t.iface()));
        }
        v.extend([
            (&*self.relay, RELAY_PUBLIC_IF),
            (&*self.relay, RELAY_WAN_IF),
            (&*self.internet, "eth0"),
        ]);
        v
    }

    /// What the tunnel looks like, for evidence.
    pub fn describe_tunnel(&self) -> String {
        match &self.tunnel {
            Some(Tunnel::WireGuard { client, relay }) => {
                format!("{}{}", client.describe(), relay.describe())
            }
            Some(Tunnel::StandIn { why }) => format!(
                "no WireGuard: {why}; veth {STAND_IN_IF} between client and relay, with the tunnel's addresses, stands in for the tunnel\n"
            ),
            None => "the tunnel was not up\n".into(),
        }
    }

    /// A client source port no earlier check has used.
    pub fn fresh_client_port(&mut self) -> u16 {
        self.next_port = self.next_port.wrapping_add(1).max(CLIENT_FIRST_PORT);
        self.next_port
    }

    pub fn internet_host(&self) -> Result<&InternetHost> {
        self.internet_host
            .as_ref()
            .context("the internet host's probe servers are not running")
    }

    /// Run a backend command in the relay's namespace, feeding `stdin`.
    pub fn relay_run(&self, inv: &Invocation, stdin: Option<&str>) -> Result<String> {
        run_in(&self.relay, inv, stdin)
    }

    /// Apply NAT with `backend`: Ok(Err(reason)) when the kernel does not support it.
    pub fn apply_nat(
        &self,
        backend: &dyn NatBackend,
        rules: &NatRules,
    ) -> Result<std::result::Result<(), String>> {
        for tool in backend.tools() {
            if !std::path::Path::new(tool).exists() {
                return Ok(Err(format!(
                    "{} needs {tool}, which is missing: install it on the host (apt-get install -y nftables iptables)",
                    backend.kind()
                )));
            }
        }
        if let Err(e) = self.relay_run(&backend.probe(), None) {
            return Ok(Err(format!(
                "{} does not work on this kernel: {e:#}",
                backend.kind()
            )));
        }
        for (inv, script) in backend.scripts(rules) {
            self.relay_run(&inv, Some(&script))
                .with_context(|| format!("applying the {} ruleset with {inv}", backend.kind()))?;
        }
        Ok(Ok(()))
    }

    pub fn stop(mut self) {
        if let Some(host) = self.internet_host.take() {
            host.stop();
        }
    }
}

/// Run a command in a namespace; its stdout, or an error with its stderr.
pub fn run_in(ns: &Netns, inv: &Invocation, stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut child = ns
        .command(inv.program)
        .args(&inv.args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {inv}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing to {inv}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {inv}"))?;
    if !out.status.success() {
        bail!(
            "`{inv}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

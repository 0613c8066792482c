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

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::netlink;
use super::netns::Netns;
use super::probes::{IcmpSocket, InternetHost};
use super::wireguard::WgInterface;
use crate::nat::{Invocation, Ipv4Net, Masquerade, NatBackend, NatRules, Redirect};
use crate::scenario::Scenario;

pub const CLIENT_PUBLIC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const RELAY_PUBLIC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const RELAY_WAN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const TUNNEL_RELAY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const TUNNEL_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
pub const TUNNEL_NET: Ipv4Net = Ipv4Net {
    addr: Ipv4Addr::new(10, 99, 0, 0),
    prefix: 24,
};
pub const RELAY_PUBLIC_IF: &str = "public";
pub const RELAY_WAN_IF: &str = "wan";
pub const WG_IF: &str = "wg0";
pub const STAND_IN_IF: &str = "tun0";
/// The client's first WireGuard source port; each check takes a fresh one so
/// that conntrack entries of earlier checks cannot interfere.
pub const CLIENT_FIRST_PORT: u16 = 40000;

/// What `Topology::build` and `start_tunnel` create, in words (for
/// `natvet verify --dry-run`). Kept next to the code it describes.
pub fn plan() -> String {
    format!(
        "  namespaces (anonymous: held by the agent, gone when it exits): client, relay, internet
  links:      veth relay/{RELAY_PUBLIC_IF} <-> client/eth0, veth relay/{RELAY_WAN_IF} <-> internet/eth0
  addresses:  client/eth0 {CLIENT_PUBLIC}/24, relay/{RELAY_PUBLIC_IF} {RELAY_PUBLIC}/24, relay/{RELAY_WAN_IF} {RELAY_WAN}/24, internet/eth0 {INTERNET}/24
  sysctls:    net.ipv4.ip_forward=1 in the relay namespace only
  tunnel:     WireGuard {WG_IF} on client ({TUNNEL_CLIENT}/24) and relay ({TUNNEL_RELAY}/24, UDP listen port from the scenario);
              on a kernel without WireGuard, veth {STAND_IN_IF} with the same addresses (WireGuard checks: unsupported)
  routes:     client 198.51.100.0/24 via the tunnel
  probes:     TCP/UDP/ICMP servers in the internet namespace, sockets on the client and relay
"
    )
}

/// The neutral NAT rules a scenario asks for.
pub fn nat_rules(scenario: &Scenario) -> NatRules {
    let mut rules = NatRules::default();
    if scenario.relay.masquerade {
        rules.masquerade.push(Masquerade {
            source: TUNNEL_NET,
            out_iface: RELAY_WAN_IF.into(),
            ports: scenario.relay.masquerade_ports,
        });
    }
    if !scenario.relay.redirect_udp.is_empty() {
        rules.redirect_udp.push(Redirect {
            in_iface: RELAY_PUBLIC_IF.into(),
            ports: scenario.relay.redirect_udp.clone(),
            to_port: scenario.relay.listen_port,
        });
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

/// Did creating a WireGuard link fail because the kernel lacks WireGuard?
fn lacks_wireguard(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("Operation not supported") || text.contains("Not supported")
}

/// Everything a check can touch. Dropping it removes all of it: the
/// namespaces die with their last file descriptor and socket.
pub struct Topology {
    pub client: Arc<Netns>,
    pub relay: Arc<Netns>,
    pub internet: Arc<Netns>,
    /// None until `start_tunnel`.
    pub tunnel: Option<Tunnel>,
    pub internet_host: Option<InternetHost>,
    pub client_icmp: IcmpSocket,
    pub listen_port: u16,
    next_port: u16,
}

impl Topology {
    /// Namespaces, links, addresses and routes; no tunnel and no NAT yet.
    pub fn build(listen_port: u16) -> Result<Topology> {
        let client = Arc::new(Netns::create("client")?);
        let relay = Arc::new(Netns::create("relay")?);
        let internet = Arc::new(Netns::create("internet")?);
        for ns in [&client, &relay, &internet] {
            netlink::loopback_up(ns)?;
        }
        netlink::veth_pair(&relay, RELAY_PUBLIC_IF, &client, "eth0")?;
        netlink::veth_pair(&relay, RELAY_WAN_IF, &internet, "eth0")?;
        for (ns, link, addr) in [
            (&client, "eth0", CLIENT_PUBLIC),
            (&relay, RELAY_PUBLIC_IF, RELAY_PUBLIC),
            (&relay, RELAY_WAN_IF, RELAY_WAN),
            (&internet, "eth0", INTERNET),
        ] {
            netlink::add_address(ns, link, IpAddr::V4(addr), 24)?;
            netlink::link_up(ns, link)?;
        }
        relay.sysctl("net.ipv4.ip_forward", "1")?;

        let client_icmp = IcmpSocket::open(&client)?;
        let internet_host = Some(InternetHost::start(&internet, INTERNET)?);
        Ok(Topology {
            client,
            relay,
            internet,
            tunnel: None,
            internet_host,
            client_icmp,
            listen_port,
            next_port: CLIENT_FIRST_PORT,
        })
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
        for (ns, addr) in [(&self.relay, TUNNEL_RELAY), (&self.client, TUNNEL_CLIENT)] {
            netlink::add_address(ns, dev, IpAddr::V4(addr), 24)?;
            netlink::link_up(ns, dev)?;
        }
        // WireGuard is point to point; a veth needs the relay as gateway.
        let via = matches!(tunnel, Tunnel::StandIn { .. }).then_some(TUNNEL_RELAY);
        netlink::add_route_v4(&self.client, Ipv4Addr::new(198, 51, 100, 0), 24, dev, via)?;
        Ok(self.tunnel.insert(tunnel))
    }

    fn wireguard(&self) -> Result<Tunnel> {
        let relay = WgInterface::create(self.relay.clone(), WG_IF, Some(self.listen_port))?;
        let client = WgInterface::create(self.client.clone(), WG_IF, Some(CLIENT_FIRST_PORT))?;
        relay.set_only_peer(
            &client.public_key(),
            None,
            &[(IpAddr::V4(TUNNEL_CLIENT), 32)],
            None,
        )?;
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
                "no WireGuard: {why}; veth {STAND_IN_IF} ({TUNNEL_CLIENT} <-> {TUNNEL_RELAY}) stands in for the tunnel\n"
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
        self.relay_run(&backend.apply(), Some(&backend.render(rules)))
            .with_context(|| format!("applying {} ruleset", backend.kind()))?;
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

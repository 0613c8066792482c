//! Builds a scenario's declared topology (`scenario::topology`): its
//! namespaces, links, addresses, sysctls and routes, then the tunnel.
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
use crate::nat::{Invocation, NatBackend};
use crate::scenario::setup::Setup;
use crate::scenario::topology::Addrs;
use crate::scenario::topology::{self as spec, IfKind, TopologySpec, DEFAULT_TUNNEL_MTU};
use crate::types::{Family, IpNet};

/// The most extra clients at once: a /24 tunnel network holds this many
/// above the scenario's own addresses (`agent::clients`).
pub const MAX_CLIENTS: u32 = 239;
/// The top indices, which `Topology::fresh_client_index` never hands out:
/// for peers the relay holds without a client (peer churn).
pub const SPARE: u32 = 8;

pub const STAND_IN_IF: &str = "tun0";
/// The client's first WireGuard source port; each check takes a fresh one so
/// that conntrack entries of earlier checks cannot interfere.
pub const CLIENT_FIRST_PORT: u16 = 40000;

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
    /// The tunnel's interface name in `ns` (client or relay).
    pub fn iface(&self, ns: &str) -> String {
        match self {
            Tunnel::WireGuard { client, relay } => {
                if ns == spec::RELAY {
                    relay.name.clone()
                } else {
                    client.name.clone()
                }
            }
            Tunnel::StandIn { .. } => STAND_IN_IF.into(),
        }
    }
}

/// Wait until `addr` can be bound in `ns`. An IPv6 address stays tentative
/// for a moment after its link comes up, even without duplicate address
/// detection (the kernel finishes it from a work queue); binding to it before
/// that fails with EADDRNOTAVAIL.
pub fn wait_usable(ns: &Netns, addr: IpAddr) -> Result<()> {
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

/// The errno behind an error: that of the first OS or netlink error in its
/// chain of causes.
pub fn errno(e: &anyhow::Error) -> Option<i32> {
    e.chain().find_map(|cause| {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        if let Some(rtnetlink::Error::NetlinkError(m)) = cause.downcast_ref::<rtnetlink::Error>() {
            return m.to_io().raw_os_error();
        }
        cause.downcast_ref::<nix::errno::Errno>().map(|n| *n as i32)
    })
}

/// Does the error say that the kernel lacks what was asked (it answered
/// EOPNOTSUPP, or does not know the protocol or address family), rather
/// than that natvet asked for it wrongly?
pub fn kernel_lacks(e: &anyhow::Error) -> bool {
    matches!(
        errno(e),
        Some(libc::EOPNOTSUPP | libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT)
    )
}

/// Everything a check can touch. Dropping it removes all of it: the
/// namespaces die with their last file descriptor and socket.
pub struct Topology {
    pub spec: TopologySpec,
    /// Every namespace, by name, in the order declared.
    pub namespaces: Vec<Arc<Netns>>,
    pub client: Arc<Netns>,
    pub relay: Arc<Netns>,
    pub internet: Arc<Netns>,
    /// The families set up, and for each the client's raw ICMP socket (it
    /// sees the relay's and the internet's errors); a family the kernel
    /// cannot do is absent from `families`, with the reason in `missing`.
    pub families: Vec<Family>,
    pub missing: Vec<(Family, String)>,
    addrs: Vec<Addrs>,
    /// The relay's interfaces toward clients and toward the internet.
    pub public_if: String,
    pub wan_if: String,
    /// None until `start_tunnel`.
    pub tunnel: Option<Tunnel>,
    pub internet_host: Option<InternetHost>,
    client_icmp: Vec<(Family, IcmpSocket)>,
    pub listen_port: u16,
    next_port: u16,
    next_client: u32,
}

impl Topology {
    /// Namespaces, links, addresses, sysctls and routes of the scenario's
    /// topology, for its families; no tunnel and no NAT yet.
    pub fn build(setup: &Setup) -> Result<Topology> {
        let spec = setup.topology.clone();
        let relay_cfg = setup.relay;
        let mut namespaces = Vec::new();
        for n in &spec.namespaces {
            namespaces.push(Arc::new(Netns::create(&n.name)?));
        }
        let ns = |name: &str| -> Result<Arc<Netns>> {
            namespaces
                .iter()
                .find(|n| n.name == name)
                .cloned()
                .with_context(|| format!("the topology has no namespace {name}"))
        };
        let (client, relay, internet) = (ns(spec::CLIENT)?, ns(spec::RELAY)?, ns(spec::INTERNET)?);
        let mut families = Vec::new();
        let mut missing = Vec::new();
        for f in &relay_cfg.families {
            let ok = match f {
                Family::Ipv4 => Ok(()),
                // Addresses are usable at once only without duplicate address
                // detection; links inherit `default` as they are created.
                Family::Ipv6 => namespaces.iter().try_for_each(|ns| {
                    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
                    ns.sysctl("net.ipv6.conf.all.accept_dad", "0")
                }),
            };
            match ok {
                Ok(()) => families.push(*f),
                Err(e) => missing.push((*f, format!("the kernel cannot do {f} here: {e:#}"))),
            }
        }
        for ns in &namespaces {
            netlink::loopback_up(ns)?;
        }
        let wan_end = spec::IfRef {
            ns: spec::RELAY.into(),
            iface: relay_cfg.wan_interface.clone(),
        };
        for l in &spec.links {
            let (a, b) = (ns(&l.a.at.ns)?, ns(&l.b.at.ns)?);
            netlink::veth_pair(&a, &l.a.at.iface, &b, &l.b.at.iface)?;
            let on_wan = l.a.at == wan_end || l.b.at == wan_end;
            let mtu = if on_wan {
                relay_cfg.wan_mtu.or(l.mtu)
            } else {
                l.mtu
            };
            for end in [&l.a, &l.b] {
                let n = ns(&end.at.ns)?;
                if let Some(mtu) = mtu {
                    netlink::set_mtu(&n, &end.at.iface, mtu)?;
                }
                for a in end
                    .addresses
                    .iter()
                    .filter(|a| families.contains(&a.family()))
                {
                    netlink::add_address(&n, &end.at.iface, a.addr, a.prefix)?;
                }
                netlink::link_up(&n, &end.at.iface)?;
            }
        }
        // Forwarding in the relay and every router; the client and the
        // internet host are ends.
        for n in namespaces
            .iter()
            .filter(|n| n.name != spec::CLIENT && n.name != spec::INTERNET)
        {
            for f in &families {
                match f {
                    Family::Ipv4 => n.sysctl("net.ipv4.ip_forward", "1")?,
                    Family::Ipv6 => n.sysctl("net.ipv6.conf.all.forwarding", "1")?,
                }
            }
        }
        for n in &spec.namespaces {
            for (key, value) in &n.sysctls {
                ns(&n.name)?
                    .sysctl(key, &value.0)
                    .with_context(|| format!("setting sysctl {key}={} in {}", value.0, n.name))?;
            }
        }
        for r in spec
            .routes
            .iter()
            .filter(|r| !r.dev.as_ref().is_some_and(|d| spec.is_tunnel(&r.ns, d)))
        {
            add_route(&*ns(&r.ns)?, r, r.dev.as_deref(), None, &families)?;
        }
        for r in spec.rules.iter().filter(|r| families.contains(&r.family)) {
            netlink::add_rule(&*ns(&r.ns)?, r)?;
        }
        for (at, kind, addrs) in spec.interfaces() {
            if kind == IfKind::Veth {
                for a in addrs.iter().filter(|a| families.contains(&a.family())) {
                    wait_usable(&*ns(&at.ns)?, a.addr)?;
                }
            }
        }
        // Every family the scenario names has its addresses (validated), even
        // one this kernel cannot set up: its checks then say why.
        let addrs = relay_cfg
            .families
            .iter()
            .map(|f| setup.addrs(*f).map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()?;
        if addrs.is_empty() {
            bail!("the scenario names no address family");
        }
        let client_icmp = families
            .iter()
            .map(|f| Ok((*f, IcmpSocket::open(&client, *f == Family::Ipv6)?)))
            .collect::<Result<Vec<_>>>()?;
        let internet_addrs: Vec<IpAddr> = addrs
            .iter()
            .filter(|a| families.contains(&a.family))
            .map(|a| a.internet)
            .collect();
        let internet_host = Some(InternetHost::start(&internet, &internet_addrs)?);
        Ok(Topology {
            spec,
            namespaces,
            client,
            relay,
            internet,
            families,
            missing,
            addrs,
            public_if: relay_cfg.public_interface.clone(),
            wan_if: relay_cfg.wan_interface.clone(),
            tunnel: None,
            internet_host,
            client_icmp,
            listen_port: relay_cfg.listen_port,
            next_port: CLIENT_FIRST_PORT,
            next_client: 0,
        })
    }

    /// A namespace by name.
    pub fn ns(&self, name: &str) -> Result<&Arc<Netns>> {
        self.namespaces
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("the topology has no namespace {name}"))
    }

    /// The addresses of family `f` by role (of the first family if the
    /// scenario does not name `f`; checks never run in such a family).
    pub fn addrs(&self, f: Family) -> &Addrs {
        self.addrs
            .iter()
            .find(|a| a.family == f)
            .unwrap_or(&self.addrs[0])
    }

    /// The far end of the relay's wan link: where untranslated packets
    /// leaving the relay would show.
    pub fn wan_peer(&self) -> Result<(&Arc<Netns>, String)> {
        let at = spec::IfRef {
            ns: spec::RELAY.into(),
            iface: self.wan_if.clone(),
        };
        let (_, other) = self
            .spec
            .link_of(&at)
            .with_context(|| format!("{at} is on no link"))?;
        Ok((self.ns(&other.at.ns)?, other.at.iface.clone()))
    }

    /// The tunnel's MTU (the client's end).
    pub fn tunnel_mtu(&self) -> u32 {
        self.spec
            .wg_in(spec::CLIENT)
            .and_then(|w| w.mtu)
            .unwrap_or(DEFAULT_TUNNEL_MTU)
    }

    /// The client's peer as declared: allowed IPs (default everything) and keepalive.
    pub fn client_peer(&self) -> (Vec<(IpAddr, u8)>, Option<u16>) {
        let peer = self.spec.wg_in(spec::CLIENT).and_then(|w| w.peers.first());
        let allowed = match peer.and_then(|p| p.allowed_ips.clone()) {
            Some(nets) => nets.iter().map(|n| (n.addr, n.prefix)).collect(),
            None => vec![
                (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                (IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0),
            ],
        };
        (allowed, peer.and_then(|p| p.keepalive))
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
        let script = flowtable_script(&tunnel.iface(spec::RELAY), &self.wan_if);
        let inv = Invocation {
            program: nft,
            args: vec!["-f", "-"],
        };
        // Capability probe: a flowtable alone, on the same devices, in a
        // table of its own. The kernel either can make one or cannot; only
        // if it can is a failure of the real setup natvet's fault.
        let probe = format!(
            "table inet natvet_probe {{
\tflowtable ft {{
\t\thook ingress priority 0; devices = {{ \"{}\", \"{}\" }};
\t}}
}}
",
            tunnel.iface(spec::RELAY),
            self.wan_if
        );
        if let Err(e) = self.relay_run(&inv, Some(&probe)) {
            return Ok(Err(format!("the kernel cannot set up a flowtable: {e:#}")));
        }
        self.relay_run(&inv, Some("delete table inet natvet_probe\n"))
            .context("removing the flowtable probe")?;
        self.relay_run(&inv, Some(&script))
            .context("setting up the flowtable")?;
        Ok(Ok(()))
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
    /// has no WireGuard. Then the routes declared over it.
    pub fn start_tunnel(&mut self) -> Result<&Tunnel> {
        let tunnel = match self.wireguard() {
            Ok(t) => t,
            Err(e) if kernel_lacks(&e) => {
                netlink::veth_pair(&self.relay, STAND_IN_IF, &self.client, STAND_IN_IF)?;
                Tunnel::StandIn {
                    why: format!("the kernel has no WireGuard ({e:#})"),
                }
            }
            Err(e) => return Err(e),
        };
        let ends: Vec<(&Arc<Netns>, &spec::WgSpec)> = [spec::CLIENT, spec::RELAY]
            .iter()
            .filter_map(|n| Some((self.ns(n).ok()?, self.spec.wg_in(n)?)))
            .collect();
        for (ns, w) in &ends {
            let dev = tunnel.iface(&ns.name);
            // The same MTU whether WireGuard or its stand-in carries the tunnel.
            netlink::set_mtu(ns, &dev, w.mtu.unwrap_or(DEFAULT_TUNNEL_MTU))?;
            for a in w
                .addresses
                .iter()
                .filter(|a| self.families.contains(&a.family()))
            {
                netlink::add_address(ns, &dev, a.addr, a.prefix)?;
            }
            netlink::link_up(ns, &dev)?;
        }
        for (ns, w) in &ends {
            for a in w
                .addresses
                .iter()
                .filter(|a| self.families.contains(&a.family()))
            {
                wait_usable(ns, a.addr)?;
            }
        }
        for r in self.spec.routes.iter().filter(|r| {
            r.dev
                .as_ref()
                .is_some_and(|d| self.spec.is_tunnel(&r.ns, d))
        }) {
            let ns = self.ns(&r.ns)?;
            // WireGuard is point to point; a veth needs the far end as gateway.
            let far = match &tunnel {
                Tunnel::StandIn { .. } => {
                    let other = if r.ns == spec::CLIENT {
                        spec::RELAY
                    } else {
                        spec::CLIENT
                    };
                    self.spec.wg_in(other).map(|w| w.addresses.clone())
                }
                Tunnel::WireGuard { .. } => None,
            };
            add_route(
                ns,
                r,
                Some(&tunnel.iface(&r.ns)),
                far.as_deref(),
                &self.families,
            )?;
        }
        Ok(self.tunnel.insert(tunnel))
    }

    fn wireguard(&self) -> Result<Tunnel> {
        let (Some(relay_spec), Some(client_spec)) =
            (self.spec.wg_in(spec::RELAY), self.spec.wg_in(spec::CLIENT))
        else {
            bail!("the topology has no WireGuard interface in the client or the relay");
        };
        let relay = WgInterface::create(
            self.relay.clone(),
            &relay_spec.at.iface,
            Some(self.listen_port),
            relay_spec.fwmark,
        )?;
        let client = WgInterface::create(
            self.client.clone(),
            &client_spec.at.iface,
            Some(CLIENT_FIRST_PORT),
            client_spec.fwmark,
        )?;
        let declared = relay_spec.peers.first().and_then(|p| p.allowed_ips.clone());
        let allowed: Vec<(IpAddr, u8)> = match declared {
            Some(nets) => nets.iter().map(|n| (n.addr, n.prefix)).collect(),
            None => client_spec
                .addresses
                .iter()
                .filter(|a| self.families.contains(&a.family()))
                .map(|a| {
                    let h = IpNet::host(a.addr);
                    (h.addr, h.prefix)
                })
                .collect(),
        };
        let keepalive = relay_spec.peers.first().and_then(|p| p.keepalive);
        relay.set_only_peer(&client.public_key(), None, &allowed, None, keepalive)?;
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

    /// (namespace, interface) pairs worth capturing on: every link end, and
    /// the tunnel's.
    pub fn interfaces(&self) -> Vec<(&Netns, String)> {
        let mut v: Vec<(&Netns, String)> = Vec::new();
        let mut add = |ns: &str, iface: String| {
            if let Ok(n) = self.ns(ns) {
                v.push((&**n, iface));
            }
        };
        if let Some(t) = &self.tunnel {
            add(spec::CLIENT, t.iface(spec::CLIENT));
            add(spec::RELAY, t.iface(spec::RELAY));
        }
        for l in &self.spec.links {
            for end in [&l.a, &l.b] {
                add(&end.at.ns, end.at.iface.clone());
            }
        }
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

    /// An extra client's index (`agent::clients`) no recent check has used,
    /// so that its tunnel address carries no earlier client's flows.
    pub fn fresh_client_index(&mut self) -> u32 {
        let i = self.next_client;
        self.next_client = (i + 1) % (MAX_CLIENTS - SPARE);
        i
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

    /// Apply the scenario's NAT with `backend` in the relay and in every
    /// router that has rules: Ok(Err(reason)) when the kernel does not
    /// support the backend.
    pub fn apply_nat(
        &self,
        backend: &dyn NatBackend,
        setup: &Setup,
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
        for name in setup.nat_namespaces() {
            let ns = self.ns(&name)?;
            if let (spec::RELAY, Some(captured)) = (name.as_str(), &setup.relay.ruleset) {
                // The operator's ruleset as it is, in place of natvet's own
                // rendering: whether this kernel takes it is the first verdict.
                for file in &captured.files {
                    let loader = backend.loader(file.family);
                    run_in(ns, &loader, Some(&file.text)).map_err(|e| {
                        anyhow::Error::new(RulesetRejected {
                            file: file.file.clone(),
                            error: format!("{e:#}"),
                        })
                    })?;
                }
                continue;
            }
            for (inv, script) in backend.scripts(&setup.nat_rules(&name)) {
                run_in(ns, &inv, Some(&script)).with_context(|| {
                    format!(
                        "applying the {} ruleset in {name} with {inv}",
                        backend.kind()
                    )
                })?;
            }
        }
        let nft = Invocation {
            program: "/usr/sbin/nft",
            args: vec!["-f", "-"],
        };
        for n in &self.spec.namespaces {
            let Some(script) = &n.nft else { continue };
            if !std::path::Path::new(nft.program).exists() {
                return Ok(Err(format!(
                    "namespace {} carries an nft script, and {} is missing: apt-get install -y nftables",
                    n.name, nft.program
                )));
            }
            run_in(self.ns(&n.name)?, &nft, Some(script))
                .with_context(|| format!("loading the nft script of namespace {}", n.name))?;
        }
        Ok(Ok(()))
    }

    pub fn stop(mut self) {
        if let Some(host) = self.internet_host.take() {
            host.stop();
        }
    }
}

/// The kernel refused a relay bundle's ruleset: the operator's deploy would
/// fail on this kernel, which is a verdict on the kernel, not a harness error.
#[derive(Debug, thiserror::Error)]
#[error(
    "the relay's ruleset {file} did not load on this kernel ({error}): this deploy would fail here"
)]
pub struct RulesetRejected {
    pub file: String,
    pub error: String,
}

/// The relay's flowtable (`table inet natvet_offload`): forwarded TCP and
/// UDP between `tunnel` and `wan` offloaded (what `natvet verify` reads to
/// know the modules it needs, too).
pub fn flowtable_script(tunnel: &str, wan: &str) -> String {
    format!(
        "table inet natvet_offload {{
\tflowtable ft {{
\t\thook ingress priority 0; devices = {{ \"{tunnel}\", \"{wan}\" }};
\t}}
\tchain forward {{
\t\ttype filter hook forward priority 0; policy accept;
\t\tmeta l4proto {{ tcp, udp }} flow add @ft
\t}}
}}
"
    )
}

/// Run a command in a namespace; its stdout, or an error with its stderr.
pub fn run_in(ns: &Netns, inv: &Invocation, stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut child = ns.command(inv.program);
    child
        .args(&inv.args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // spawn() returns once the child has exec'd (or failed to).
    let spawned = {
        let _in_flight = super::netns::spawning();
        child.spawn()
    };
    let mut child = spawned.with_context(|| format!("starting {inv}"))?;
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

/// Add route `r` in `ns`, for the families set up: out of `dev` (if any),
/// via its gateway, or, on a point-to-point stand-in, via the far end's
/// address of the route's family.
fn add_route(
    ns: &Netns,
    r: &spec::RouteSpec,
    dev: Option<&str>,
    far_end: Option<&[IpNet]>,
    families: &[Family],
) -> Result<()> {
    let dest = TopologySpec::route_dest(r).map_err(anyhow::Error::msg)?;
    if !families.contains(&dest.family()) {
        return Ok(());
    }
    let via = r.via.or_else(|| {
        far_end?
            .iter()
            .find(|a| a.family() == dest.family())
            .map(|a| a.addr)
    });
    netlink::add_route(ns, dest, dev, via, r.table.map(|t| t.0))
}

//! More WireGuard clients than the scenario's one, as a relay really has:
//! each is an interface of its own in the client namespace (its own key,
//! source port and tunnel address, behind the same network and firewall as
//! the scenario's client), a peer of the relay's, and a routing table that
//! sends whatever leaves from its tunnel address through it. Sessions, peer
//! churn and the relay at scale are made of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context as _, Result};

use super::netlink;
use super::topology::{wait_usable, Topology};
use super::wireguard::WgInterface;
use crate::scenario::topology::{TopologySpec, CLIENT, DEFAULT_TUNNEL_MTU};
use crate::types::{Family, IpNet};

/// The first routing table (and rule priority) of the extra clients; client
/// `i` uses `FIRST_TABLE + i`. Far from what scenarios declare.
pub const FIRST_TABLE: u32 = 20000;
/// Host numbers below this in the tunnel's network stay the scenario's own.
const FIRST_HOST: u32 = 16;
pub use super::topology::{MAX_CLIENTS, SPARE};

/// One extra client.
pub struct Client {
    pub index: u32,
    pub wg: WgInterface,
    /// Its tunnel addresses (host prefixes), one per family set up.
    pub tunnel: Vec<IpNet>,
    /// Where it sends: the relay's address and a port of the relay's.
    pub endpoint: SocketAddr,
    /// Its own UDP source port.
    pub listen_port: u16,
}

impl Client {
    /// Its tunnel address of family `f`, if that family is set up.
    pub fn addr(&self, f: Family) -> Option<IpAddr> {
        self.tunnel.iter().find(|n| n.family() == f).map(|n| n.addr)
    }

    fn table(&self) -> u32 {
        FIRST_TABLE + self.index
    }
}

/// Extra client `index`'s tunnel address in family `f`: in the network of
/// the scenario's client's tunnel address, host number `FIRST_HOST + index`.
/// None when the network has no room for it.
pub fn tunnel_address(spec: &TopologySpec, f: Family, index: u32) -> Option<IpNet> {
    let own = spec
        .wg_in(CLIENT)?
        .addresses
        .iter()
        .find(|a| a.family() == f)?;
    let net = own.network();
    let host = FIRST_HOST.checked_add(index)?;
    let addr = match net.addr {
        IpAddr::V4(a) => {
            let room = 1u64 << (32 - u32::from(own.prefix.min(32)));
            // Not the network's broadcast address.
            if u64::from(host) + 1 >= room {
                return None;
            }
            IpAddr::V4(Ipv4Addr::from(u32::from(a) + host))
        }
        IpAddr::V6(a) => {
            if own.prefix > 112 {
                return None;
            }
            IpAddr::V6(Ipv6Addr::from(u128::from(a) + 0x1000 + u128::from(host)))
        }
    };
    Some(IpNet::host(addr))
}

/// Bring up extra client `index`: sending to `endpoint` from `listen_port`,
/// with `keepalive` (seconds) if given, in every family `topo` set up.
pub fn add(
    topo: &Topology,
    index: u32,
    endpoint: SocketAddr,
    listen_port: u16,
    keepalive: Option<u16>,
) -> Result<Client> {
    let (_, relay) = topo.wg().map_err(anyhow::Error::msg)?;
    let spec = &topo.spec;
    let own = spec
        .wg_in(CLIENT)
        .context("the topology has no WireGuard interface in the client")?;
    let name = format!("wgc{index}");
    let tunnel: Vec<IpNet> = topo
        .families
        .iter()
        .map(|f| {
            tunnel_address(spec, *f, index).with_context(|| {
                format!("the client's {f} tunnel network has no room for extra client {index}")
            })
        })
        .collect::<Result<_>>()?;
    let wg = WgInterface::create(topo.client.clone(), &name, Some(listen_port), own.fwmark)?;
    let client = Client {
        index,
        wg,
        tunnel,
        endpoint,
        listen_port,
    };
    // From here on a failure leaves a half-made client: take it down again.
    let made = (|| -> Result<()> {
        // The relay knows the client before the client sends anything: a
        // client with a persistent keepalive sends its first handshake
        // initiation as soon as its interface is up, and the relay drops an
        // initiation from a key it does not know (WireGuard then waits 5 s).
        let allowed: Vec<(IpAddr, u8)> = client.tunnel.iter().map(|a| (a.addr, a.prefix)).collect();
        relay.add_peer(&client.wg.public_key(), &allowed, None)?;
        let everything = [
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        ];
        client.wg.set_only_peer(
            &relay.public_key(),
            Some(endpoint),
            &everything,
            None,
            keepalive,
        )?;
        let ns = &topo.client;
        netlink::set_mtu(ns, &name, own.mtu.unwrap_or(DEFAULT_TUNNEL_MTU))?;
        for a in &client.tunnel {
            netlink::add_address(ns, &name, a.addr, a.prefix)?;
        }
        netlink::link_up(ns, &name)?;
        for a in &client.tunnel {
            wait_usable(ns, a.addr)?;
        }
        // What the scenario routes through its client's tunnel, this client
        // routes through its own, from its own address.
        for r in spec
            .routes
            .iter()
            .filter(|r| r.ns == CLIENT && r.dev.as_ref().is_some_and(|d| spec.is_tunnel(CLIENT, d)))
        {
            let dest = TopologySpec::route_dest(r).map_err(anyhow::Error::msg)?;
            if client.addr(dest.family()).is_some() {
                netlink::add_route(ns, dest, Some(&name), None, Some(client.table()))?;
            }
        }
        for a in &client.tunnel {
            netlink::add_source_rule(ns, *a, client.table(), client.table())?;
        }
        Ok(())
    })();
    if let Err(e) = made {
        let _ = remove(topo, &client);
        return Err(e.context(format!("bringing up extra client {name}")));
    }
    Ok(client)
}

/// Take an extra client away: its peer on the relay, its rules, its
/// interface (with its addresses and routes).
pub fn remove(topo: &Topology, client: &Client) -> Result<()> {
    let mut first_error = None;
    if let Ok((_, relay)) = topo.wg() {
        if let Err(e) = relay.remove_peer(&client.wg.public_key()) {
            first_error.get_or_insert(e);
        }
    }
    for a in &client.tunnel {
        // A rule that was never added is not an error worth reporting.
        let _ = netlink::del_source_rule(&topo.client, *a, client.table(), client.table());
    }
    if let Err(e) = netlink::del_link(&topo.client, &client.wg.name) {
        first_error.get_or_insert(e);
    }
    match first_error {
        Some(e) => Err(e.context(format!("removing extra client {}", client.wg.name))),
        None => Ok(()),
    }
}

/// Take many extra clients away at once: their peers on the relay in one
/// update, their rules and interfaces over one netlink connection.
pub fn remove_all(topo: &Topology, clients: &[Client]) -> Result<()> {
    if clients.is_empty() {
        return Ok(());
    }
    let peers = match topo.wg() {
        Ok((_, relay)) => {
            let keys: Vec<_> = clients.iter().map(|c| c.wg.public_key()).collect();
            relay.remove_peers(&keys)
        }
        Err(_) => Ok(()),
    };
    let links: Vec<String> = clients.iter().map(|c| c.wg.name.clone()).collect();
    let rules: Vec<(IpNet, u32, u32)> = clients
        .iter()
        .flat_map(|c| c.tunnel.iter().map(move |a| (*a, c.table(), c.table())))
        .collect();
    netlink::del_links_and_rules(&topo.client, &links, &rules)?;
    peers.context("removing the extra clients' peers from the relay")
}

/// Delete the relay's conntrack entries of flows from `client`'s tunnel
/// addresses, as a relay does when a peer goes away, so that a later client
/// given the same address starts clean. Best effort: that there was nothing
/// to delete is no error.
pub fn forget(topo: &Topology, client: &Client) {
    for a in &client.tunnel {
        let family = match a.family() {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        };
        let addr = a.addr.to_string();
        let inv = crate::nat::Invocation {
            program: "/usr/sbin/conntrack",
            args: vec!["-D", "-f", family, "-s"],
        };
        let mut cmd = topo.relay.command(inv.program);
        cmd.args(&inv.args)
            .arg(&addr)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let spawned = {
            let _in_flight = super::netns::spawning();
            cmd.spawn()
        };
        if let Ok(mut child) = spawned {
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_clients_take_addresses_above_the_scenarios_own() {
        let spec = TopologySpec::default();
        let a = |f, i| tunnel_address(&spec, f, i).map(|n| n.to_string());
        assert_eq!(a(Family::Ipv4, 0).as_deref(), Some("10.99.0.16/32"));
        assert_eq!(
            a(Family::Ipv4, MAX_CLIENTS - 1).as_deref(),
            Some("10.99.0.254/32")
        );
        assert_eq!(a(Family::Ipv4, MAX_CLIENTS), None, "the broadcast address");
        assert_eq!(a(Family::Ipv6, 0).as_deref(), Some("fd99::1010/128"));
    }
}

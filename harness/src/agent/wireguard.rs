//! WireGuard over its generic-netlink API (wireguard-control's kernel backend).
//! Keys are generated in the guest.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use wireguard_control::{
    Backend, Device, DeviceUpdate, InterfaceName, Key, KeyPair, PeerConfigBuilder,
};

use super::netns::{take_port, Netns};

fn iface(name: &str) -> Result<InterfaceName> {
    name.parse()
        .map_err(|e| anyhow::anyhow!("bad WireGuard interface name {name}: {e:?}"))
}

/// One WireGuard interface in one namespace.
pub struct WgInterface {
    pub ns: Arc<Netns>,
    pub name: String,
    pub keys: KeyPair,
}

/// What a peer looks like to a device right now.
#[derive(Debug, Clone)]
pub struct PeerState {
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Apply `update` to `ifname` in `ns`, with `listen_port` if given: a port
/// that a check's socket may just have held, so taken as
/// [`take_port`] takes it.
fn apply(
    ns: &Netns,
    ifname: &InterfaceName,
    update: DeviceUpdate,
    listen_port: Option<u16>,
) -> Result<()> {
    let Some(port) = listen_port else {
        return ns.run(|| Ok(update.apply(ifname, Backend::Kernel)?));
    };
    let update = update.set_listen_port(port);
    take_port(|| ns.run(|| Ok(update.clone().apply(ifname, Backend::Kernel)?)))
}

fn state_of(p: &wireguard_control::PeerInfo) -> PeerState {
    PeerState {
        endpoint: p.config.endpoint,
        last_handshake: p.stats.last_handshake_time,
        rx_bytes: p.stats.rx_bytes,
        tx_bytes: p.stats.tx_bytes,
    }
}

impl WgInterface {
    /// Create the link (via netlink; the kernel loads the module on demand) with fresh keys.
    pub fn create(
        ns: Arc<Netns>,
        name: &str,
        listen_port: Option<u16>,
        fwmark: Option<u32>,
    ) -> Result<WgInterface> {
        let keys = KeyPair::generate();
        let ifname = iface(name)?;
        let mut update = DeviceUpdate::new().set_keypair(keys.clone());
        if let Some(mark) = fwmark {
            update = update.set_fwmark(mark);
        }
        apply(&ns, &ifname, update, listen_port)
            .with_context(|| format!("creating WireGuard interface {name}"))?;
        Ok(WgInterface {
            ns,
            name: name.to_string(),
            keys,
        })
    }

    pub fn public_key(&self) -> Key {
        self.keys.public.clone()
    }

    /// Replace all peers by one (a fresh peer: no session, no handshake yet),
    /// and optionally move the listen port.
    pub fn set_only_peer(
        &self,
        peer: &Key,
        endpoint: Option<SocketAddr>,
        allowed: &[(IpAddr, u8)],
        listen_port: Option<u16>,
        keepalive: Option<u16>,
    ) -> Result<()> {
        let mut builder = PeerConfigBuilder::new(peer);
        if let Some(k) = keepalive {
            builder = builder.set_persistent_keepalive_interval(k);
        }
        if let Some(ep) = endpoint {
            builder = builder.set_endpoint(ep);
        }
        for (addr, cidr) in allowed {
            builder = builder.add_allowed_ip(*addr, *cidr);
        }
        let update = DeviceUpdate::new().replace_peers().add_peer(builder);
        apply(&self.ns, &iface(&self.name)?, update, listen_port)
            .with_context(|| format!("configuring peer on {}", self.name))
    }

    /// The state of the device's first (only) peer.
    pub fn peer_state(&self) -> Result<Option<PeerState>> {
        let device = self.device()?;
        Ok(device.peers.first().map(state_of))
    }

    /// Add a peer beside the ones there are (a session's, a churned one's):
    /// it may send from `allowed`, and gets what is routed to them.
    pub fn add_peer(
        &self,
        peer: &Key,
        allowed: &[(IpAddr, u8)],
        keepalive: Option<u16>,
    ) -> Result<()> {
        let mut builder = PeerConfigBuilder::new(peer);
        if let Some(k) = keepalive {
            builder = builder.set_persistent_keepalive_interval(k);
        }
        for (addr, cidr) in allowed {
            builder = builder.add_allowed_ip(*addr, *cidr);
        }
        apply(
            &self.ns,
            &iface(&self.name)?,
            DeviceUpdate::new().add_peer(builder),
            None,
        )
        .with_context(|| format!("adding a peer to {}", self.name))
    }

    /// Remove one peer; the others stay.
    pub fn remove_peer(&self, peer: &Key) -> Result<()> {
        self.remove_peers(std::slice::from_ref(peer))
    }

    /// Remove these peers in one update; the others stay.
    pub fn remove_peers(&self, peers: &[Key]) -> Result<()> {
        let update = peers
            .iter()
            .fold(DeviceUpdate::new(), |u, k| u.remove_peer_by_key(k));
        apply(&self.ns, &iface(&self.name)?, update, None)
            .with_context(|| format!("removing {} peer(s) from {}", peers.len(), self.name))
    }

    /// Every peer's state, by public key.
    pub fn peer_states(&self) -> Result<Vec<(Key, PeerState)>> {
        let device = self.device()?;
        Ok(device
            .peers
            .iter()
            .map(|p| (p.config.public_key.clone(), state_of(p)))
            .collect())
    }

    fn device(&self) -> Result<Device> {
        let ifname = iface(&self.name)?;
        self.ns.run(|| {
            Device::get(&ifname, Backend::Kernel)
                .with_context(|| format!("reading WireGuard device {}", self.name))
        })
    }

    /// A `wg show`-like summary for evidence.
    pub fn describe(&self) -> String {
        match self.device() {
            Err(e) => format!("{}/{}: {e:#}\n", self.ns.name, self.name),
            Ok(d) => {
                let mut s = format!(
                    "{}/{}: listen_port={:?} public_key={}\n",
                    self.ns.name,
                    self.name,
                    d.listen_port,
                    self.keys.public.to_base64()
                );
                for p in d.peers {
                    let age = p
                        .stats
                        .last_handshake_time
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .map(|d| format!("{}ms ago", d.as_millis()))
                        .unwrap_or_else(|| "never".into());
                    s.push_str(&format!(
                        "  peer {} endpoint={:?} allowed={:?} handshake={age} rx={} tx={}\n",
                        p.config.public_key.to_base64(),
                        p.config.endpoint,
                        p.config
                            .allowed_ips
                            .iter()
                            .map(|a| format!("{}/{}", a.address, a.cidr))
                            .collect::<Vec<_>>(),
                        p.stats.rx_bytes,
                        p.stats.tx_bytes
                    ));
                }
                s
            }
        }
    }
}

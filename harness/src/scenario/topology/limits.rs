//! The limits on a topology's values, each with why.

use crate::bounds::Limit;

/// Limits on a topology's values, each with why (`validate` checks them).
pub const LIMITS: &[Limit] = &[
    NAMESPACES,
    LINKS,
    ROUTES,
    RULES,
    SYSCTLS,
    LINK_MTU,
    TUNNEL_MTU,
    PEER_KEEPALIVE,
    SUPPRESS_PREFIXLENGTH,
    PRIORITY,
];

pub(super) const NAMESPACES: Limit = Limit::new(
    "namespace",
    3,
    16,
    "each namespace is a network stack of its own in the guest kernel (its own conntrack table, routes and rules) and a thread of the agent, in every run of the scenario at once: client, relay and internet leave room for 13 routers",
)
.on("the number of [[topology.namespace]] tables");
pub(super) const LINKS: Limit = Limit::new(
    "link",
    1,
    32,
    "each link is a veth pair with its addresses, set up in every run and captured on failure (a capture per end): 32 join 16 namespaces in any shape",
)
.on("the number of [[topology.link]] tables");
pub(super) const ROUTES: Limit = Limit::new(
    "route",
    0,
    256,
    "each route is a netlink request in every run, and the routes of 16 namespaces' relays and routers fit in far fewer",
)
.on("the number of [[topology.route]] tables");
pub(super) const RULES: Limit = Limit::new(
    "rule",
    0,
    64,
    "each policy rule is a netlink request in every run, and wg-quick's setup takes two per family",
)
.on("the number of [[topology.rule]] tables");
pub(super) const SYSCTLS: Limit = Limit::new(
    "sysctls",
    0,
    64,
    "each is a write to /proc/sys in every run, before any link exists, and net.* holds no more settings worth changing per namespace",
)
.on("the number of a namespace's sysctls");
pub(super) const LINK_MTU: Limit = Limit::new(
    "mtu",
    1280,
    9000,
    "IPv6 needs links of at least 1280 bytes, and 9000-byte jumbo frames are the largest links relays run",
)
.unit(" bytes");
pub(super) const TUNNEL_MTU: Limit = Limit::new(
    "mtu",
    1280,
    8920,
    "the tunnel carries IPv6 (at least 1280 bytes) and WireGuard adds 80 bytes over a link of at most 9000",
)
.unit(" bytes");
pub(super) const PEER_KEEPALIVE: Limit = Limit::new(
    "keepalive",
    0,
    600,
    "a keepalive holds a NAT's or firewall's UDP mapping, which lives seconds to minutes: one rarer than every 10 minutes holds none (0 turns it off)",
)
.unit(" s");
pub(super) const SUPPRESS_PREFIXLENGTH: Limit = Limit::new(
    "suppress_prefixlength",
    0,
    128,
    "it is a prefix length, at most 128 (IPv6)",
);
pub(super) const PRIORITY: Limit = Limit::new(
    "priority",
    1,
    32765,
    "priority 0 is the local table's rule and 32766 and 32767 are main's and default's, which the scenario's rules must not replace",
);

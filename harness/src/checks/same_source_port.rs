//! Behaviour 2: two clients with the same source port, one on the listen
//! port and one on a redirected port, are kept apart by conntrack.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::check::{ports_given, Check, Info, Phase};
use super::common::{at, later_sources, EXCHANGE_TIMEOUT};
use super::context::Context;
use super::patience::{self, Awaited};
use super::verdict::Verdict;
use crate::agent::netlink;
use crate::agent::probes::{self};
use crate::agent::topology::wait_usable;
use crate::bounds::{Invalid, Limit};
use crate::scenario::setup::Setup;
use crate::scenario::topology::{IfRef, CLIENT};
use crate::types::IpNet;

/// Two clients use the same source port at once, one to the listen
/// port and one to each redirected `port` (plain UDP, before the
/// tunnel): each datagram reaches the listen port's socket, from a
/// source of its own, and each reply returns to the client that sent it,
/// from the port it sent to. The second client is `second` (one address
/// per family), added to the first client's interface `at` for the check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SameSourcePort {
    pub ports: Vec<u16>,
    pub at: IfRef,
    pub second: Vec<IpNet>,
}

/// Each port is a pair of clients of its own, one after another.
const PORTS: Limit = Limit::new(
    "ports",
    1,
    32,
    "each port is a result of its own (a second address on the client's link, two sockets) that waits up to 10 s when a datagram is lost: 32 ports take at most 5.3 min per family of a run's 10 min default --timeout",
)
.on("the number of ports");

impl Check for SameSourcePort {
    const INFO: Info = Info {
        results: "same-source-port/PORT",
        behaviours: "2",
        description: "two clients with the same source port, one to the listen port and one to the redirected PORT: both reach the listen port from their own source, and each reply returns to its sender from the port it sent to",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
        phase: Phase::BeforeTunnel,
        per_family: true,
        example: "ports = [53]\nat = \"client:eth0\"\nsecond = [\"192.0.2.3/24\"]",
        limits: &[PORTS],
        capture_first: true,
    };
    type Case = u16;

    fn cases(&self) -> Vec<(String, u16)> {
        self.ports
            .iter()
            .map(|p| (format!("same-source-port/{p}"), *p))
            .collect()
    }

    fn validate(&self, setup: &Setup) -> Result<(), Invalid> {
        ports_given("same-source-port", &self.ports, &PORTS)?;
        if self.at.ns != CLIENT {
            return Err(format!(
                "check same-source-port: {} is not the client's: both clients live in the client namespace",
                self.at
            )
            .into());
        }
        Ok(setup.check_second_address("same-source-port", &self.at, &self.second)?)
    }

    fn run(&self, ctx: &mut Context, port: &u16) -> Result<Verdict> {
        same_source_port(ctx, *port, &self.at, &self.second)
    }
}

/// Behaviour 2: client A (the client's address) and client B (a second
/// address on the same link) send from one source port at the same moment,
/// A to the listen port and B to the redirected `port`.
fn same_source_port(
    ctx: &mut Context,
    port: u16,
    link: &IfRef,
    second: &[IpNet],
) -> Result<Verdict> {
    let a = *ctx.a();
    let f = ctx.family;
    let listen = ctx.topo.listen_port;
    let b_addr = *second
        .iter()
        .find(|n| n.family() == f)
        .with_context(|| format!("same-source-port names no {f} address for the second client"))?;
    let sport = ctx.topo.fresh_client_port();
    let (to_a, to_b) = (at(a.relay_public, listen), at(a.relay_public, port));
    let expected = format!(
        "client A {} -> {to_a} and client B {} -> {to_b} both reach the relay's socket on :{listen} from distinct sources; A's reply comes from {to_a}, B's from {to_b}",
        at(a.client_public, sport),
        at(b_addr.addr, sport)
    );
    let ns = ctx.topo.ns(&link.ns)?.clone();
    netlink::add_address(&ns, &link.iface, b_addr.addr, b_addr.prefix)?;
    let result = (|| -> Result<Verdict> {
        wait_usable(&ns, b_addr.addr)?;
        let any = ctx.any();
        let relay_sock = ctx.topo.relay.run(|| {
            probes::bind_udp_again(SocketAddr::new(any.ip(), listen)).with_context(|| {
                format!("binding udp/{listen} on the relay (is something else listening there?)")
            })
        })?;
        let (sock_a, sock_b) = ns.run(|| {
            Ok((
                UdpSocket::bind((a.client_public, sport)).context("binding client A")?,
                UdpSocket::bind((b_addr.addr, sport)).context("binding client B")?,
            ))
        })?;
        // Both clients send at the same moment; each resends until its own
        // reply is back (a crossed reply leaves one of them waiting, so it
        // shows as a failure, not as a pass).
        let flows = [
            probes::Flow {
                sender: &sock_a,
                dest: to_a,
                tag: ctx.tag("client-a"),
            },
            probes::Flow {
                sender: &sock_b,
                dest: to_b,
                tag: ctx.tag("client-b"),
            },
        ];
        let wait = patience::wait(Awaited::Reply, EXCHANGE_TIMEOUT);
        let seen =
            probes::echo_exchange(&flows, &relay_sock, wait, Duration::from_secs(1), |_, _| {
                false
            })?;
        for e in &seen {
            if let Some((_, after)) = e.reply {
                patience::observed(Awaited::Reply, after);
            }
        }
        let (src_a, src_b) = (seen[0].source(), seen[1].source());
        let (reply_a, reply_b) = (seen[0].reply_from(), seen[1].reply_from());
        let crossed = seen.iter().any(|e| e.crossed);
        let show =
            |s: Option<SocketAddr>| s.map(|s| s.to_string()).unwrap_or_else(|| "nothing".into());
        let observed = format!(
            "the relay's socket received A from {} and B from {}; A got its reply from {}, B from {}{}{}{}{}",
            show(src_a),
            show(src_b),
            show(reply_a),
            show(reply_b),
            if crossed { "; a reply reached the wrong client" } else { "" },
            later_sources("A's", &seen[0]),
            later_sources("B's", &seen[1]),
            seen.iter()
                .filter_map(|e| e.echo_refused.as_ref())
                .map(|r| format!("; {r}"))
                .next()
                .unwrap_or_default(),
        );
        let ok = src_a.is_some()
            && src_b.is_some()
            && src_a != src_b
            && seen.iter().all(|e| e.sources.len() == 1)
            && reply_a == Some(to_a)
            && reply_b == Some(to_b)
            && !crossed;
        Ok(Verdict::judge(ok, expected.clone(), observed))
    })();
    netlink::del_address(&ns, &link.iface, b_addr.addr, b_addr.prefix)
        .context("removing the second client's address")?;
    result
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn both_clients_live_in_the_client_namespace() {
        let ok = "kind = \"same-source-port\"\nports = [53]\nat = \"client:eth0\"\nsecond = [\"192.0.2.3/24\"]";
        let s = scenario_with(ok).unwrap();
        assert_eq!(s.checks[0].result_names(), ["same-source-port/53"]);
        let relay = scenario_with(&ok.replace("client:eth0", "relay:public")).unwrap_err();
        assert!(relay.contains("not the client's"), "{relay}");
    }
}

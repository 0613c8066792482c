//! Behaviour 1 without WireGuard: a plain UDP datagram to each redirected
//! port reaches a socket on the relay's listen port with the client's
//! source intact, and its reply returns from the port it was sent to.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::check::{ports_given, Check, Info, Phase};
use super::common::{at, later_sources, EXCHANGE_TIMEOUT};
use super::context::Context;
use super::patience::{self, Awaited};
use super::verdict::Verdict;
use crate::agent::probes::{self, IcmpPacket};
use crate::bounds::{Invalid, Limit};
use crate::scenario::setup::Setup;
use crate::scenario::topology::Addrs;

/// A plain UDP datagram to each port reaches a socket on the listen port
/// (source intact) and its reply returns from that port. Runs before the
/// tunnel is up, so it needs no WireGuard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    pub ports: Vec<u16>,
}

/// Each port is a result of its own; all are sent at once.
const PORTS: Limit = Limit::new(
    "ports",
    1,
    32,
    "each port is a result of its own, a client socket and a flow in the relay's conntrack table, all sent at once into one socket on the listen port: 32 keep the exchange one the agent reads without falling behind",
)
.on("the number of ports");

impl Check for Redirect {
    const INFO: Info = Info {
        results: "redirect/PORT",
        behaviours: "1",
        description: "a plain UDP datagram to the relay's PORT reaches a socket on the listen port with the client's address intact, and the reply returns from PORT",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
        phase: Phase::BeforeTunnel,
        per_family: true,
        example: "ports = [53]",
        limits: &[PORTS],
        capture_first: true,
    };
    type Case = u16;

    fn cases(&self) -> Vec<(String, u16)> {
        self.ports
            .iter()
            .map(|p| (format!("redirect/{p}"), *p))
            .collect()
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        ports_given("redirect", &self.ports, &PORTS)
    }

    fn run(&self, ctx: &mut Context, port: &u16) -> Result<Verdict> {
        udp_redirect(ctx, *port, true)
    }

    /// Every port at once: see [`udp_redirects`].
    const TOGETHER: bool = true;

    fn run_together(&self, ctx: &mut Context, ports: &[u16]) -> Result<Vec<Verdict>> {
        udp_redirects(ctx, ports, true)
    }
}

/// How long to wait for a datagram that should not arrive, when the relay
/// does not tell us sooner with an ICMP error.
pub const REDIRECT_ABSENT_WAIT: Duration = Duration::from_secs(3);

/// A plain UDP datagram from the client to the relay's public `port`: with
/// `expect`, it must reach a socket on the relay's listen port with the
/// client's source intact, and the reply must return from `port` (the
/// redirect's reverse translation); without, it must not reach that socket.
/// Runs before the tunnel exists, when the listen port is free to bind.
pub fn udp_redirect(ctx: &mut Context, port: u16, expect: bool) -> Result<Verdict> {
    Ok(udp_redirects(ctx, &[port], expect)?.remove(0))
}

/// [`udp_redirect`] of every port at once, each from a source port of its
/// own, into the one socket on the listen port: a kernel that loses the
/// datagrams or their replies costs one wait, not one per port. The
/// verdicts are in the order of `ports`.
pub fn udp_redirects(ctx: &mut Context, ports: &[u16], expect: bool) -> Result<Vec<Verdict>> {
    let Addrs {
        client_public,
        relay_public,
        ..
    } = *ctx.a();
    let listen = ctx.topo.listen_port;
    let sports: Vec<u16> = ports.iter().map(|_| ctx.topo.fresh_client_port()).collect();
    let any = ctx.any();
    let topo = &ctx.topo;
    let icmp_sock = topo.client_icmp(ctx.family)?;
    let relay_sock = topo.relay.run(|| {
        probes::bind_udp_again(SocketAddr::new(any.ip(), listen)).with_context(|| {
            format!("binding udp/{listen} on the relay (is something else listening there?)")
        })
    })?;
    let client_socks = sports
        .iter()
        .map(|sport| {
            topo.client.run(|| {
                UdpSocket::bind((client_public, *sport))
                    .with_context(|| format!("binding udp/{sport} on the client"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    icmp_sock.drain();
    let wait = if expect {
        patience::wait(Awaited::Reply, EXCHANGE_TIMEOUT)
    } else {
        REDIRECT_ABSENT_WAIT
    };
    let flows: Vec<probes::Flow> = ports
        .iter()
        .zip(&sports)
        .zip(&client_socks)
        .map(|((port, sport), sock)| probes::Flow {
            sender: sock,
            dest: at(relay_public, *port),
            tag: format!("natvet-redirect-{sport}"),
        })
        .collect();
    let mut refused: Vec<Option<(IcmpPacket, Duration)>> = vec![None; ports.len()];
    // Resend every second: the first datagram may wait on ARP/ND. A refusal
    // ends the wait for its port only while nothing has arrived there.
    let seen = probes::echo_exchange(
        &flows,
        &relay_sock,
        wait,
        Duration::from_secs(1),
        |seen, after| {
            while let Some(icmp) = icmp_sock.recv() {
                if !icmp.is_unreachable() || icmp.inner_proto != Some(17) {
                    continue;
                }
                for (i, (port, sport)) in ports.iter().zip(&sports).enumerate() {
                    if icmp.inner_dport == Some(*port)
                        && icmp.inner_sport.is_none_or(|s| s == *sport)
                    {
                        refused[i].get_or_insert((icmp.clone(), after));
                    }
                }
            }
            seen.iter()
                .zip(&refused)
                .all(|(e, r)| e.reply.is_some() || (r.is_some() && e.sources.is_empty()))
        },
    )?;
    let why = if expect {
        patience::why(Awaited::Reply, wait, EXCHANGE_TIMEOUT)
    } else {
        String::new()
    };
    Ok(ports
        .iter()
        .zip(&sports)
        .zip(seen.iter().zip(&refused))
        .map(|((port, sport), (seen, refused))| {
            judge(
                ctx.a(),
                listen,
                *port,
                *sport,
                expect,
                wait,
                &why,
                seen,
                refused,
            )
        })
        .collect())
}

/// The verdict of one port of [`udp_redirects`].
#[allow(clippy::too_many_arguments)]
fn judge(
    a: &Addrs,
    listen: u16,
    port: u16,
    sport: u16,
    expect: bool,
    wait: Duration,
    why: &str,
    seen: &probes::Echoed,
    refused: &Option<(IcmpPacket, Duration)>,
) -> Verdict {
    let Addrs {
        client_seen,
        relay_public,
        ..
    } = *a;
    let expected = if expect {
        format!(
            "a UDP datagram to {} reaches the relay's socket on :{listen} from {}, and the reply returns from {}",
            at(relay_public, port),
            at(client_seen, sport),
            at(relay_public, port)
        )
    } else {
        format!(
            "a UDP datagram to {} does not reach the relay's socket on :{listen}",
            at(relay_public, port)
        )
    };
    let arrived = seen.source().zip(seen.arrived_after);
    let reply = seen.reply_from();
    if let Some((_, after)) = seen.reply {
        patience::observed(Awaited::Reply, after);
    }
    let mut observed = match &arrived {
        Some((from, after)) => format!(
            "the relay's socket on :{listen} received it from {from} after {} ms",
            after.as_millis()
        ),
        None => format!("the relay's socket on :{listen} received nothing"),
    };
    match (&reply, refused) {
        (Some(from), _) => observed.push_str(&format!("; the reply came back from {from}")),
        (None, _) if arrived.is_some() => observed.push_str(&format!(
            "; no reply reached the client within {:.1} s{why}",
            wait.as_secs_f32()
        )),
        (None, Some((icmp, after))) => observed.push_str(&format!(
            "; {} answered ICMP destination unreachable (code {}) for udp/{port} after {} ms",
            icmp.source,
            icmp.code,
            after.as_millis()
        )),
        (None, None) => observed.push_str(&format!(
            " and no ICMP error came within {:.1} s{why}",
            wait.as_secs_f32()
        )),
    }
    if let Some(refused) = &seen.echo_refused {
        observed.push_str(&format!("; {refused}"));
    }
    observed.push_str(&later_sources("its", seen));
    let client = SocketAddr::new(client_seen, sport);
    let ok = if expect {
        arrived.as_ref().map(|(from, _)| *from) == Some(client)
            && seen.sources.len() == 1
            && reply == Some(SocketAddr::new(relay_public, port))
    } else {
        arrived.is_none()
    };
    Verdict::judge(ok, expected, observed)
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn one_result_per_port_and_ports_must_be_given() {
        let s = scenario_with("kind = \"redirect\"\nports = [53, 4000]").unwrap();
        assert_eq!(s.checks[0].result_names(), ["redirect/53", "redirect/4000"]);
        assert!(scenario_with("kind = \"redirect\"\nports = []")
            .unwrap_err()
            .contains("at least one port"));
        assert!(scenario_with("kind = \"redirect\"\nports = [0]")
            .unwrap_err()
            .contains("port 0"));
    }

    #[test]
    fn runs_before_the_tunnel_takes_the_listen_port() {
        // Written after a check that needs the tunnel, it still runs first.
        let s = crate::scenario::Scenario::parse(
            "name = \"t\"\n[relay]\n[[check]]\nkind = \"forward\"\nprotocols = [\"udp\"]\n[[check]]\nkind = \"redirect\"\nports = [53]\n",
            "t",
        )
        .unwrap();
        assert_eq!(s.result_names(), ["redirect/53", "forward/udp"]);
    }
}

//! Port forwarding: DNAT from the relay's wan address through the tunnel
//! to the client.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::{at, ensure_tunnel, EXCHANGE_TIMEOUT};
use super::context::Context;
use super::verdict::Verdict;
use crate::agent::probes::{self};
use crate::bounds::Invalid;
use crate::scenario::setup::Setup;
use crate::scenario::topology::RELAY;
use crate::types::Protocol;

/// The internet host reaches the relay's wan address on `port`; the
/// relay's `[[nat]]` dnat rule forwards it through the tunnel to the
/// client, which sees the internet host's own address; the reply
/// returns from the relay's address and `port`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    pub protocols: Vec<Protocol>,
    pub port: u16,
}

impl Check for PortForward {
    const INFO: Info = Info {
        results: "port-forward/PROTO-PORT",
        behaviours: "3, 6",
        description: "the internet host reaches the relay's PORT; a dnat rule forwards it through the tunnel to the client, which sees the internet host's own address, and the reply returns from the relay's PORT",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "protocols = [\"udp\"]\nport = 8443\n[[nat]]\nin = \"relay\"\nkind = \"dnat\"\nin_interface = \"wan\"\nprotocol = \"udp\"\nports = [\"8443\"]\nto = \"10.99.0.2\"",
        limits: &[],
        capture_first: true,
    };
    type Case = Protocol;

    fn cases(&self) -> Vec<(String, Protocol)> {
        self.protocols
            .iter()
            .map(|p| (format!("port-forward/{p}-{}", self.port), *p))
            .collect()
    }

    fn validate(&self, setup: &Setup) -> Result<(), Invalid> {
        let port = self.port;
        if self.protocols.is_empty() || port == 0 {
            return Err(
                "check port-forward has nothing to check: name tcp or udp in `protocols` and a `port` from 1 to 65535"
                    .into(),
            );
        }
        let rules = setup.nat_rules(RELAY);
        for f in &setup.relay.families {
            for p in &self.protocols {
                let covered = rules.dnat.iter().any(|d| {
                    d.protocol == *p && d.family() == *f && d.ports.iter().any(|r| r.contains(port))
                });
                if !covered || *p == Protocol::Icmp {
                    return Err(format!(
                        "check port-forward: no [[nat]] dnat rule in the relay forwards {p} port {port} over {f} (add one with in = \"relay\")"
                    ).into());
                }
            }
        }
        Ok(())
    }

    fn run(&self, ctx: &mut Context, proto: &Protocol) -> Result<Verdict> {
        port_forward(ctx, *proto, self.port)
    }
}

/// Port forwarding: the internet host reaches relay_wan:`port`; the relay's
/// dnat rule sends it through the tunnel to the client, which must see the
/// internet host's own address (no source NAT); the reply must come back
/// from relay_wan:`port`.
fn port_forward(ctx: &mut Context, proto: Protocol, port: u16) -> Result<Verdict> {
    use std::io::{Read, Write};
    let a = *ctx.a();
    let f = ctx.family;
    let rule = ctx
        .rules
        .dnat
        .iter()
        .find(|d| {
            d.protocol == proto && d.family() == f && d.ports.iter().any(|r| r.contains(port))
        })
        .cloned()
        .with_context(|| format!("no dnat rule forwards {proto} port {port} over {f}"))?;
    let target = SocketAddr::new(rule.to, rule.to_port.unwrap_or(port));
    let public = at(a.relay_wan, port);
    let expected = format!(
        "{} from {} to {public} reaches the client at {target} from {} itself, and the reply returns from {public}",
        proto.to_string().to_uppercase(),
        a.internet,
        a.internet
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let tag = ctx.tag("forwarded");
    let deadline = Instant::now() + EXCHANGE_TIMEOUT;
    let any = ctx.any();
    let (seen_from, reply_from, error): (Option<SocketAddr>, Option<SocketAddr>, Option<String>) =
        match proto {
            Protocol::Tcp => {
                let listener = ctx.topo.client.run(|| {
                    probes::listen_tcp_again(target)
                        .with_context(|| format!("listening on {target} on the client"))
                })?;
                listener.set_nonblocking(true)?;
                let conn = ctx.topo.internet.run(|| {
                    std::net::TcpStream::connect_timeout(&public, EXCHANGE_TIMEOUT)
                        .with_context(|| format!("connecting to {public} from the internet host"))
                });
                match conn {
                    Err(e) => (None, None, Some(format!("{e:#}"))),
                    Ok(mut stream) => {
                        let reply_from = stream.peer_addr().ok();
                        let mut accepted = None;
                        while accepted.is_none() && Instant::now() < deadline {
                            match listener.accept() {
                                Ok(x) => accepted = Some(x),
                                Err(_) => std::thread::sleep(Duration::from_millis(5)),
                            }
                        }
                        match accepted {
                            None => (None, None, Some("the client accepted nothing".into())),
                            Some((mut inside, from)) => {
                                inside.set_nonblocking(false)?;
                                inside.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
                                stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
                                stream.write_all(tag.as_bytes())?;
                                let mut buf = vec![0u8; tag.len()];
                                let echoed = inside
                                    .read_exact(&mut buf)
                                    .and_then(|()| inside.write_all(&buf))
                                    .and_then(|()| {
                                        let mut back = vec![0u8; tag.len()];
                                        stream.read_exact(&mut back).map(|()| back)
                                    });
                                match echoed {
                                    Ok(back) if back == tag.as_bytes() => {
                                        (Some(from), reply_from, None)
                                    }
                                    Ok(_) => {
                                        (Some(from), None, Some("the reply was garbled".into()))
                                    }
                                    Err(e) => {
                                        (Some(from), None, Some(format!("exchanging data: {e}")))
                                    }
                                }
                            }
                        }
                    }
                }
            }
            _ => {
                let inside = ctx.topo.client.run(|| {
                    probes::bind_udp_again(target)
                        .with_context(|| format!("binding {target} on the client"))
                })?;
                let outside = ctx.topo.internet.run(|| {
                    UdpSocket::bind(any).context("binding a UDP socket on the internet host")
                })?;
                let flow = probes::Flow {
                    sender: &outside,
                    dest: public,
                    tag: tag.clone(),
                };
                let seen = probes::echo_exchange(
                    std::slice::from_ref(&flow),
                    &inside,
                    deadline.saturating_duration_since(Instant::now()),
                    Duration::from_millis(500),
                    |_, _| false,
                )?
                .remove(0);
                let (seen, reply) = (seen.source(), seen.reply_from());
                let error = reply
                    .is_none()
                    .then(|| format!("no reply within {} s", EXCHANGE_TIMEOUT.as_secs()));
                (seen, reply, error)
            }
        };
    let show = |s: Option<SocketAddr>| s.map(|s| s.to_string()).unwrap_or_else(|| "nothing".into());
    let observed = format!(
        "the client received it from {}; the internet host's reply came from {}{}",
        show(seen_from),
        show(reply_from),
        error.map(|e| format!(" ({e})")).unwrap_or_default()
    );
    let ok = seen_from.map(|s| s.ip()) == Some(a.internet) && reply_from == Some(public);
    Ok(Verdict::judge(ok, expected, observed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::scenario_with;

    #[test]
    fn needs_a_dnat_rule_that_covers_it() {
        let ok = PortForward::INFO.example;
        let s = scenario_with(&format!("kind = \"port-forward\"\n{ok}")).unwrap();
        assert_eq!(s.checks[0].result_names(), ["port-forward/udp-8443"]);
        let other = scenario_with(&format!(
            "kind = \"port-forward\"\n{}",
            ok.replacen("port = 8443", "port = 8444", 1)
        ))
        .unwrap_err();
        assert!(other.contains("no [[nat]] dnat rule"), "{other}");
    }
}

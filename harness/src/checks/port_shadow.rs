//! Behaviour 8, the deterministic NAT clash (netfilter's "port shadowing"
//! case): a relay socket on a masqueraded flow's port must not take its
//! replies.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::exchange;
use super::common::{at, ensure_tunnel, host, seen_source, EXCHANGE_TIMEOUT};
use super::context::Context;
use super::patience::{self, Awaited};
use super::verdict::Verdict;
use crate::agent::probes::{self};
use crate::bounds::Invalid;
use crate::scenario::setup::Setup;

/// A process on the relay binds the port a masqueraded client flow was
/// given and talks to the same server: netfilter must keep the two
/// flows apart (a clash of their reply tuples), so each gets its own
/// replies and neither gets the other's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortShadow {}

impl Check for PortShadow {
    const INFO: Info = Info {
        results: "nat-clash/port-shadow",
        behaviours: "8",
        description: "a relay process binds the port a masqueraded client flow was given and talks to the same server: each flow gets its own replies, neither gets the other's",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "",
        limits: &[],
        capture_first: true,
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![("nat-clash/port-shadow".into(), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        Ok(())
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        port_shadow(ctx)
    }
}

/// Behaviour 8 (the deterministic form of a NAT clash, netfilter's "port
/// shadowing" case): a client flow is masqueraded to relay_wan:P; then a
/// socket on the relay itself binds relay_wan:P and talks to the same
/// server. Their reply tuples would be the same; netfilter must give the
/// second flow another port, and each side must get only its own replies.
fn port_shadow(ctx: &mut Context) -> Result<Verdict> {
    let a = *ctx.a();
    let server = at(a.internet, probes::UDP_PORT);
    let expected = format!(
        "a client flow masqueraded to {}:P and a relay socket bound to {}:P, both talking to {server}: each gets its own replies, none of the other's",
        host(a.relay_wan),
        host(a.relay_wan)
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let client = ctx.client_tunnel_socket()?;
    let first = ctx.tag("shadowed");
    if let Err(e) = exchange(|wait| probes::udp_echo_on(&client, server, &first, wait)) {
        return Ok(Verdict::judge(
            false,
            expected,
            format!("the client's flow did not work before the relay's socket existed: {e:#}"),
        ));
    }
    let Some(seen) = seen_source(ctx, &first)? else {
        return Ok(Verdict::judge(
            false,
            expected,
            format!("{server} recorded nothing from the client"),
        ));
    };
    let Some(port) = seen.source_port else {
        return Ok(Verdict::judge(
            false,
            expected,
            "the server recorded no source port".to_string(),
        ));
    };
    if seen.source != a.relay_wan {
        return Ok(Verdict::judge(
            false,
            expected,
            format!(
                "the client's flow reached {server} from {} (not masqueraded)",
                at(seen.source, port)
            ),
        ));
    }
    let relay = ctx.topo.relay.run(|| {
        probes::bind_udp_again(SocketAddr::new(a.relay_wan, port))
            .with_context(|| format!("binding {} on the relay", at(a.relay_wan, port)))
    })?;
    let (from_relay, from_client) = (ctx.tag("shadow"), ctx.tag("shadowed-again"));
    let mut relay_got: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    let mut client_got: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    let has =
        |got: &[(Vec<u8>, SocketAddr)], tag: &str| got.iter().any(|(p, _)| p == tag.as_bytes());
    relay.set_nonblocking(true)?;
    client.set_nonblocking(true)?;
    let start = Instant::now();
    let mut last_send: Option<Instant> = None;
    let mut buf = [0u8; 2048];
    // Until each side has its own reply (a crossed reply leaves one side
    // waiting, so it shows as a failure), resending every 300 ms.
    let wait = patience::wait(Awaited::Reply, EXCHANGE_TIMEOUT);
    while start.elapsed() < wait
        && !(has(&relay_got, &from_relay) && has(&client_got, &from_client))
    {
        if last_send.is_none_or(|t| t.elapsed() >= Duration::from_millis(300)) {
            relay
                .send_to(from_relay.as_bytes(), server)
                .context("sending from the relay")?;
            client
                .send_to(from_client.as_bytes(), server)
                .context("sending from the client")?;
            last_send = Some(Instant::now());
        }
        for (sock, got) in [(&relay, &mut relay_got), (&client, &mut client_got)] {
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                got.push((buf[..n].to_vec(), from));
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let relay_own = has(&relay_got, &from_relay);
    let client_own = has(&client_got, &from_client);
    let crossed = has(&relay_got, &from_client) || has(&client_got, &from_relay);
    let relay_seen = seen_source(ctx, &from_relay)?;
    let observed = format!(
        "the client's flow was masqueraded to {}; the relay's socket on that port reached {server} from {}; relay got its own replies: {}, client got its own replies: {}{}",
        at(a.relay_wan, port),
        relay_seen
            .as_ref()
            .map(|s| s.source_port.map(|p| at(s.source, p).to_string()).unwrap_or_else(|| s.source.to_string()))
            .unwrap_or_else(|| "nowhere (nothing recorded)".into()),
        if relay_own { "yes" } else { "no" },
        if client_own { "yes" } else { "no" },
        if crossed { "; a reply reached the wrong side" } else { "" }
    );
    Ok(Verdict::judge(
        relay_own && client_own && !crossed,
        expected,
        observed,
    ))
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn one_result() {
        let s = scenario_with("kind = \"port-shadow\"").unwrap();
        assert_eq!(s.checks[0].result_names(), ["nat-clash/port-shadow"]);
    }
}

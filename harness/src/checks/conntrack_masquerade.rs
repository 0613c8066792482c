//! Behaviour 6: conntrack maps a forwarded flow onto the relay's public
//! address.

use std::net::{SocketAddr, UdpSocket};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::exchange;
use super::common::{at, ensure_tunnel, EXCHANGE_TIMEOUT};
use super::context::Context;
use super::verdict::Verdict;
use crate::agent::probes::{self};
use crate::bounds::Invalid;
use crate::conntrack;
use crate::scenario::setup::Setup;
use crate::scenario::topology::Addrs;

/// Conntrack maps a forwarded flow onto the relay's public address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackMasquerade {}

impl Check for ConntrackMasquerade {
    const INFO: Info = Info {
        results: "conntrack/masquerade",
        behaviours: "6",
        description: "conntrack maps the client's forwarded flow onto the relay's address",
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
        vec![("conntrack/masquerade".into(), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        Ok(())
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        conntrack_masquerade(ctx)
    }
}

fn conntrack_masquerade(ctx: &mut Context) -> Result<Verdict> {
    let Addrs {
        relay_wan,
        internet,
        tunnel_client,
        ..
    } = *ctx.a();
    let expected = format!(
        "a conntrack entry {tunnel_client} -> {} whose reply goes to {relay_wan}",
        at(internet, probes::UDP_PORT)
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let tag = ctx.tag("ct");
    let dest = SocketAddr::new(internet, probes::UDP_PORT);
    let any = ctx.any();
    let sock = ctx
        .topo
        .client
        .run(|| UdpSocket::bind(any).context("binding a UDP socket on the client"))?;
    if let Err(e) = exchange(|wait| probes::udp_echo_on(&sock, dest, &tag, wait)) {
        return Ok(Verdict::judge(
            false,
            expected,
            format!("the UDP flow did not work: {e:#}"),
        ));
    }
    // The flow goes on while the table is read: a scenario's short UDP
    // timeout (behind-nat's is 1 s) must not expire it on a slow guest
    // before `conntrack` gets to it.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let table = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = sock.send_to(tag.as_bytes(), dest);
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        let table = ctx.conntrack_text();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        table
    })?;
    let entries: Vec<_> = conntrack::parse(&table)
        .into_iter()
        .filter(|e| {
            e.protocol == "udp"
                && e.original.src == tunnel_client
                && e.original.dst == internet
                && e.original.dport == Some(probes::UDP_PORT)
        })
        .collect();
    if entries.is_empty() {
        return Ok(Verdict::judge(
            false,
            expected,
            format!(
                "no conntrack entry for {tunnel_client} -> {}",
                at(internet, probes::UDP_PORT)
            ),
        ));
    }
    let good = entries
        .iter()
        .find(|e| e.reply.dst == relay_wan && e.reply.src == internet);
    Ok(match good {
        Some(e) => Verdict::judge(true, expected, e.line.clone()),
        None => Verdict::judge(false, expected, entries[0].line.clone()),
    })
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn one_result() {
        let s = scenario_with("kind = \"conntrack-masquerade\"").unwrap();
        assert_eq!(s.checks[0].result_names(), ["conntrack/masquerade"]);
        assert!(scenario_with("kind = \"conntrack-masquerade\"\nport = 1").is_err());
    }
}

//! Behaviour 11, roaming: the client's public address changes, and the
//! relay follows it.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::exchange;
use super::common::{
    describe_seen, ensure_tunnel, relay_view, reply_text, seen_source, EXCHANGE_TIMEOUT,
};
use super::context::Context;
use super::verdict::Verdict;
use crate::agent::netlink;
use crate::agent::probes::{self};
use crate::agent::topology::wait_usable;
use crate::bounds::Invalid;
use crate::scenario::setup::Setup;
use crate::scenario::topology::IfRef;
use crate::types::{Family, IpNet};

/// Interface `at`, whose address the relay sees as the client's (the
/// client's own, or its NAT's outside), moves to the address in `to` of
/// the family under test: traffic from the client crosses tunnel and NAT
/// again, the relay's peer endpoint follows, and the reply returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roaming {
    pub at: IfRef,
    pub to: Vec<IpNet>,
}

impl Check for Roaming {
    const INFO: Info = Info {
        results: "roaming/NS:IF",
        behaviours: "11",
        description: "the interface whose address the relay sees as the client's moves to a new address: the client's traffic crosses again, the relay's peer endpoint follows, replies return",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: true,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "at = \"client:eth0\"\nto = [\"192.0.2.3/24\"]",
        limits: &[],
        capture_first: true,
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![(format!("roaming/{}", self.at), ())]
    }

    fn validate(&self, setup: &Setup) -> Result<(), Invalid> {
        Ok(setup.check_second_address("roaming", &self.at, &self.to)?)
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        roaming(ctx, &self.at, &self.to)
    }
}

/// Behaviour 11, roaming: `at` swaps its address of the current family for
/// the one in `to`; a NAT there (masquerade) must drop its old mappings,
/// the relay must follow the client's new endpoint, and traffic must flow
/// both ways again. The old address is put back afterwards.
fn roaming(ctx: &mut Context, at: &IfRef, to: &[IpNet]) -> Result<Verdict> {
    let a = *ctx.a();
    let f = ctx.family;
    let old = ctx
        .topo
        .spec
        .address(at, f)
        .with_context(|| format!("{at} has no {f} address"))?;
    let new = *to
        .iter()
        .find(|n| n.family() == f)
        .with_context(|| format!("roaming names no {f} address to move {at} to"))?;
    let expected = format!(
        "after {at} moves from {} to {}, UDP from the client crosses tunnel and NAT to {} again, the relay's peer endpoint moves to {}, and the reply returns",
        old.addr, new.addr, a.internet, new.addr
    );
    if let Err(why) = ctx.topo.wg() {
        return Ok(Verdict::unsupported(expected, why));
    }
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let before = ctx
        .topo
        .wg()
        .ok()
        .and_then(|(_, r)| r.peer_state().ok().flatten());
    let ns = ctx.topo.ns(&at.ns)?.clone();
    if f == Family::Ipv4 {
        // The new address comes in as a secondary of the same subnet; it must
        // survive the removal of the primary.
        ns.sysctl(
            &format!("net.ipv4.conf.{}.promote_secondaries", at.iface),
            "1",
        )?;
    }
    let swap = |from: IpNet, to: IpNet| -> Result<()> {
        netlink::add_address(&ns, &at.iface, to.addr, to.prefix)?;
        netlink::del_address(&ns, &at.iface, from.addr, from.prefix)?;
        wait_usable(&ns, to.addr)
    };
    swap(old, new).with_context(|| format!("moving {at} from {old} to {new}"))?;
    let tag = ctx.tag("roam");
    let dest = SocketAddr::new(a.internet, probes::UDP_PORT);
    let reply = exchange(|wait| probes::udp_echo(&ctx.topo.client, dest, &tag, wait));
    let after = ctx
        .topo
        .wg()
        .ok()
        .and_then(|(_, r)| r.peer_state().ok().flatten());
    let seen = seen_source(ctx, &tag)?;
    let view = relay_view(ctx);
    swap(new, old).with_context(|| format!("moving {at} back from {new} to {old}"))?;
    let endpoint = |p: &Option<crate::agent::wireguard::PeerState>| {
        p.as_ref()
            .and_then(|p| p.endpoint)
            .map(|e| e.to_string())
            .unwrap_or_else(|| "none".into())
    };
    let followed = after.as_ref().and_then(|p| p.endpoint).map(|e| e.ip()) == Some(new.addr);
    let masqueraded = seen.as_ref().map(|s| s.source) == Some(a.relay_wan);
    let reply_text = reply_text(&reply);
    Ok(Verdict::judge(
        reply.is_ok() && followed && masqueraded,
        expected,
        format!(
            "the relay's peer endpoint went from {} to {}; {}; {reply_text}{view}",
            endpoint(&before),
            endpoint(&after),
            describe_seen(ctx.a(), &seen)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn moves_a_link_end_within_its_subnet() {
        let ok = "kind = \"roaming\"\nat = \"client:eth0\"\nto = [\"192.0.2.3/24\"]";
        let s = scenario_with(ok).unwrap();
        assert_eq!(s.checks[0].result_names(), ["roaming/client:eth0"]);
        let far = scenario_with("kind = \"roaming\"\nat = \"client:eth0\"\nto = [\"10.1.2.3/24\"]")
            .unwrap_err();
        assert!(far.contains("same subnet"), "{far}");
        let wg = scenario_with("kind = \"roaming\"\nat = \"client:wg0\"\nto = [\"192.0.2.3/24\"]")
            .unwrap_err();
        assert!(wg.contains("not a link end"), "{wg}");
    }
}

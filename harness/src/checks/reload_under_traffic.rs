//! Behaviour 16: an atomic ruleset reload while traffic flows loses no
//! established flow and leaks no untranslated packet.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::exchange;
use super::common::{ensure_tunnel, translated_sources, EXCHANGE_TIMEOUT, TRANSFER_TIMEOUT};
use super::context::Context;
use super::verdict::Verdict;
use crate::agent::capture::LeakWatch;
use crate::agent::probes::{self};
use crate::agent::topology::run_in;
use crate::bounds::{Invalid, Limit};
use crate::scenario::setup::Setup;

/// The relay's ruleset is re-applied `reloads` times while a transfer,
/// an established UDP flow and a stream of new UDP flows go on: nothing
/// is lost and nothing leaves untranslated. `atomic = false` empties the
/// ruleset before each re-apply, as a careless deploy script would (a
/// negative control: it must fail).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadUnderTraffic {
    #[serde(default = "default_reloads")]
    pub reloads: u32,
    #[serde(default = "yes")]
    pub atomic: bool,
}

fn default_reloads() -> u32 {
    20
}

fn yes() -> bool {
    true
}

/// Re-applies of the ruleset, one after another.
const RELOADS: Limit = Limit::new(
    "reloads",
    1,
    100,
    "each re-apply is an nft or iptables-restore process in the relay, measured at 450-700 ms under TCG, and the guest reports nothing until they are done: 100 take about 70 s of the 120 s --check-timeout after which the host stops a silent guest",
);

impl Check for ReloadUnderTraffic {
    const INFO: Info = Info {
        results: "reload-under-traffic",
        behaviours: "16",
        description: "the relay's ruleset is re-applied `reloads` times (default 20) while a TCP transfer, an established UDP flow and new UDP flows go on: nothing lost, nothing leaves untranslated (counted on the internet's link)",
        timeout: TRANSFER_TIMEOUT,
        needs_wireguard: false,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "",
        limits: &[RELOADS],
        capture_first: false,
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![("reload-under-traffic".into(), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        Ok(RELOADS.check(self.reloads)?)
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        reload_under_traffic(ctx, self.reloads, self.atomic)
    }
}

/// Apply `rules` with the scenario's backend, in the relay's namespace.
fn apply_rules(ctx: &Context, rules: &crate::nat::NatRules) -> Result<()> {
    for (inv, script) in ctx.backend.scripts(rules) {
        run_in(&ctx.topo.relay, &inv, Some(&script))
            .with_context(|| format!("re-applying the ruleset with {inv}"))?;
    }
    Ok(())
}

/// What the traffic thread of `reload_under_traffic` counted.
struct TrafficCount {
    new_sent: usize,
    /// New flows answered while the traffic ran (and a grace period after).
    new_answered: usize,
    /// New flows answered only when their datagram was sent again on the
    /// same socket (same flow, same conntrack entry) after the reloads.
    new_recovered: usize,
    est_sent: usize,
    est_answered: usize,
    /// The established flow still answers after the reloads.
    est_alive: bool,
    /// How long the established flow took to answer after the traffic.
    est_after: Duration,
}

/// How long the established flow may take to answer once the traffic
/// stops: a flow the reloads broke stays silent, a starved guest answers
/// late.
const EST_PATIENCE: Duration = Duration::from_secs(30);

/// Re-apply the relay's ruleset `reloads` times while traffic flows: a TCP
/// transfer and an established UDP flow must go on untouched, every new UDP
/// flow started meanwhile must be masqueraded and answered, and no packet
/// from the tunnel's network may reach the internet's link untranslated.
/// With `atomic` false, each reload first loads an empty ruleset and waits
/// 100 ms, the gap a careless deploy script leaves (a negative control).
fn reload_under_traffic(ctx: &mut Context, reloads: u32, atomic: bool) -> Result<Verdict> {
    const NEW_FLOW_EVERY: Duration = Duration::from_millis(10);
    const NEW_FLOWS: usize = 600;
    let a = *ctx.a();
    let how = if atomic {
        "atomically"
    } else {
        "non-atomically (emptied for 100 ms, then re-applied)"
    };
    let expected = format!(
        "while the ruleset is re-applied {reloads} times {how}, a 2 MiB TCP transfer and an established UDP flow go on, every new UDP flow reaches {} from {} and is answered, and no packet from {} reaches the internet's link",
        a.internet, a.relay_wan, a.tunnel_net
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let any = ctx.any();
    let udp_dest = SocketAddr::new(a.internet, probes::UDP_PORT);
    let (established, pool) = ctx.topo.client.run(|| {
        let bind = || -> Result<UdpSocket> {
            let s = UdpSocket::bind(any).context("binding a UDP socket on the client")?;
            s.set_nonblocking(true)?;
            Ok(s)
        };
        let pool = (0..NEW_FLOWS).map(|_| bind()).collect::<Result<Vec<_>>>()?;
        Ok((bind()?, pool))
    })?;
    established.set_nonblocking(false)?;
    let first = ctx.tag("established");
    if let Err(e) = exchange(|wait| probes::udp_echo_on(&established, udp_dest, &first, wait)) {
        return Ok(Verdict::judge(
            false,
            expected,
            format!("the UDP flow did not work before any reload: {e:#}"),
        ));
    }
    established.set_nonblocking(true)?;
    let new_tags: Vec<String> = (0..NEW_FLOWS).map(|_| ctx.tag("new-flow")).collect();
    let est_tags: Vec<String> = (0..NEW_FLOWS).map(|_| ctx.tag("est")).collect();
    let (peer_ns, peer_if) = ctx.topo.wan_peer()?;
    let watch = LeakWatch::start(peer_ns, &peer_if, a.tunnel_net)?;

    let client = ctx.topo.client.clone();
    let transfer_tag = ctx.tag("reload-transfer");
    let tcp_dest = SocketAddr::new(a.internet, probes::TCP_PORT);
    let transfer = std::thread::spawn(move || {
        probes::tcp_transfer(
            &client,
            tcp_dest,
            &transfer_tag,
            2 << 20,
            EXCHANGE_TIMEOUT,
            TRANSFER_TIMEOUT,
        )
    });

    // Traffic: a new flow every 10 ms, the established flow every 20 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let new_tags = new_tags.clone();
        std::thread::spawn(move || {
            let (mut new_sent, mut est_sent) = (0usize, 0usize);
            let mut est_answered = 0;
            let mut buf = [0u8; 256];
            // Read the established flow's replies as they come: left to the
            // end they would overflow its receive buffer.
            let drain = |est_sent: usize, est_answered: &mut usize, buf: &mut [u8]| {
                while let Ok((n, _)) = established.recv_from(buf) {
                    if est_tags[..est_sent]
                        .iter()
                        .any(|t| t.as_bytes() == &buf[..n])
                    {
                        *est_answered += 1;
                    }
                }
            };
            let start = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && new_sent < pool.len() {
                let _ = pool[new_sent].send_to(new_tags[new_sent].as_bytes(), udp_dest);
                new_sent += 1;
                if new_sent % 2 == 0 {
                    let _ = established.send_to(est_tags[est_sent].as_bytes(), udp_dest);
                    est_sent += 1;
                }
                drain(est_sent, &mut est_answered, &mut buf);
                let next = NEW_FLOW_EVERY * (new_sent as u32);
                if let Some(wait) = next.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            // Replies still in flight: wait while they keep coming (a busy
            // guest can hold them for a while), at most 3 s.
            let mut answered = vec![false; new_sent];
            let poll_new = |answered: &mut [bool], buf: &mut [u8]| {
                for ((s, tag), got) in pool.iter().zip(&new_tags).zip(answered.iter_mut()) {
                    while let Ok((n, _)) = s.recv_from(buf) {
                        *got |= &buf[..n] == tag.as_bytes();
                    }
                }
            };
            let grace = Instant::now();
            let mut last = (usize::MAX, usize::MAX);
            while grace.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(200));
                drain(est_sent, &mut est_answered, &mut buf);
                poll_new(&mut answered, &mut buf);
                let now = (est_answered, answered.iter().filter(|a| **a).count());
                if now == (est_sent, new_sent) || now == last {
                    break;
                }
                last = now;
            }
            let new_answered = answered.iter().filter(|a| **a).count();
            // A datagram lost to load is not a lost flow: send the
            // unanswered ones again on their own sockets. A flow whose
            // conntrack entry lost (or never got) its NAT binding stays
            // unanswered, and its packets show on the internet's link.
            // Three rounds, and more while rounds still bring answers (a
            // starved guest answers late, not wrongly), ten at most.
            // Unanswered flows are sent again on their own sockets (their
            // own conntrack entries) until three rounds in a row bring no
            // answer: on a starved guest answers can take seconds.
            let mut idle_rounds = 0;
            for _ in 0..15 {
                let before = answered.iter().filter(|a| **a).count();
                if before == answered.len() || idle_rounds == 3 {
                    break;
                }
                for ((s, tag), got) in pool.iter().zip(&new_tags).zip(&answered) {
                    if !*got {
                        let _ = s.send_to(tag.as_bytes(), udp_dest);
                    }
                }
                std::thread::sleep(Duration::from_millis(1000));
                poll_new(&mut answered, &mut buf);
                let progress = answered.iter().filter(|a| **a).count() > before;
                idle_rounds = if progress { 0 } else { idle_rounds + 1 };
            }
            let _ = established.set_nonblocking(false);
            let probed = Instant::now();
            let est_alive =
                probes::udp_echo_on(&established, udp_dest, &est_tags[est_sent], EST_PATIENCE)
                    .is_ok();
            let est_after = probed.elapsed();
            // Answers that came while the established flow was probed.
            poll_new(&mut answered, &mut buf);
            let new_recovered = answered.iter().filter(|a| **a).count() - new_answered;
            TrafficCount {
                new_sent,
                new_answered,
                new_recovered,
                est_sent,
                est_answered,
                est_alive,
                est_after,
            }
        })
    };

    let rules = ctx.rules.clone();
    let empty = rules.emptied();
    let mut reload_error = None;
    let reload_start = Instant::now();
    for _ in 0..reloads {
        let step = if atomic {
            apply_rules(ctx, &rules)
        } else {
            apply_rules(ctx, &empty).and_then(|()| {
                std::thread::sleep(Duration::from_millis(100));
                apply_rules(ctx, &rules)
            })
        };
        if let Err(e) = step {
            reload_error = Some(e);
            break;
        }
    }
    let reload_ms = reload_start.elapsed().as_millis();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let t = traffic
        .join()
        .map_err(|_| anyhow::anyhow!("the traffic thread panicked"))?;
    let transfer = transfer
        .join()
        .map_err(|_| anyhow::anyhow!("the transfer thread panicked"))?;
    let leaks = watch.finish();
    if let Some(e) = reload_error {
        return Err(e);
    }
    let tags: Vec<&str> = new_tags[..t.new_sent].iter().map(String::as_str).collect();
    let masqueraded = translated_sources(ctx, &tags)?
        .iter()
        .flatten()
        .filter(|s| s.source == a.relay_wan)
        .count();
    let (transfer_ok, transfer_text) = match &transfer {
        Ok((ours, theirs)) if ours == theirs => (true, "the transfer arrived intact".to_string()),
        Ok((ours, theirs)) => (
            false,
            format!("the transfer arrived corrupted (sent {ours}, received {theirs})"),
        ),
        Err(e) => (false, format!("the transfer failed: {e:#}")),
    };
    // Flows must survive; a datagram lost on a busy guest is reported, not
    // judged (an untranslated packet always is).
    let ok = leaks.leaked == 0
        && transfer_ok
        && t.new_answered + t.new_recovered == t.new_sent
        && masqueraded == t.new_sent
        && t.est_alive;
    Ok(Verdict::judge(
        ok,
        expected,
        format!(
            "{reloads} reloads in {reload_ms} ms; {transfer_text}; established flow: {} of {} answered during the reloads, {} after them; new flows: {} of {} answered, {} more when sent again, {masqueraded} arrived from {}; {} of {} packets on the internet's link came from {}{}",
            t.est_answered,
            t.est_sent,
            if t.est_alive {
                format!("answering ({:.1} s)", t.est_after.as_secs_f32())
            } else {
                format!("silent for {} s", EST_PATIENCE.as_secs())
            },
            t.new_answered,
            t.new_sent,
            t.new_recovered,
            a.relay_wan,
            leaks.leaked,
            leaks.packets,
            a.tunnel_net,
            leaks
                .first
                .map(|f| format!(" (first: {f})"))
                .unwrap_or_default()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;
    use crate::checks::CheckSpec;

    #[test]
    fn atomic_unless_told_otherwise() {
        let s = scenario_with("kind = \"reload-under-traffic\"").unwrap();
        let CheckSpec::ReloadUnderTraffic(c) = &s.checks[0] else {
            panic!("{:?}", s.checks[0]);
        };
        assert!(c.atomic && c.reloads == 20);
        assert!(scenario_with("kind = \"reload-under-traffic\"\nreloads = 0").is_err());
    }
}

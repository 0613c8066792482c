//! Behaviour 11, rekey: traffic goes on over a new handshake after
//! REKEY_AFTER_TIME, through the NATs.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::{at, attempt_handshake, describe_handshake, relay_view, HandshakeOutcome};
use super::context::Context;
use super::verdict::Verdict;
use crate::agent::probes::{self};
use crate::bounds::Invalid;
use crate::scenario::setup::Setup;

/// The client keeps a flow through the tunnel going (one UDP echo a
/// second) past WireGuard's REKEY_AFTER_TIME (120 s): a new handshake
/// completes through the NATs and traffic goes on over the new keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rekey {}

impl Check for Rekey {
    const INFO: Info = Info {
        results: "rekey",
        behaviours: "11",
        description: "a UDP echo a second through the tunnel past WireGuard's REKEY_AFTER_TIME (120 s): a new handshake completes through the NATs and traffic goes on over the new keys",
        timeout: REKEY_WAIT,
        needs_wireguard: true,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "",
        limits: &[],
        capture_first: true,
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![("rekey".into(), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        Ok(())
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        rekey(ctx)
    }
}

/// WireGuard's REKEY_AFTER_TIME: the initiator starts a new handshake when
/// it sends on keys this old.
pub const REKEY_AFTER: Duration = Duration::from_secs(120);

/// How long the rekey check waits for the new handshake.
pub const REKEY_WAIT: Duration = Duration::from_secs(150);

/// Behaviour 11, rekey: a fresh session, then one UDP echo a second through
/// tunnel and NATs until the client's handshake time moves on (WireGuard
/// rekeys once its keys are REKEY_AFTER_TIME old and it sends), and a few
/// seconds more on the new keys.
fn rekey(ctx: &mut Context) -> Result<Verdict> {
    let a = *ctx.a();
    let server = at(a.internet, probes::UDP_PORT);
    let expected = format!(
        "one UDP echo a second to {server} through the tunnel: a new handshake completes {}-{} s after the first, and the echoes go on over the new keys",
        REKEY_AFTER.as_secs(),
        REKEY_WAIT.as_secs()
    );
    if let Err(why) = ctx.topo.wg() {
        return Ok(Verdict::unsupported(expected, why));
    }
    // A fresh session: its keys' age is known.
    let listen = ctx.topo.listen_port;
    let (sport, outcome) = attempt_handshake(ctx, listen, None)?;
    if !matches!(outcome, HandshakeOutcome::Completed { .. }) {
        return Ok(Verdict::judge(
            false,
            expected,
            describe_handshake(ctx.a(), &outcome, sport, listen),
        ));
    }
    ctx.tunnel_up = Some(ctx.family);
    let handshake_time = |ctx: &Context| -> Result<Option<std::time::SystemTime>> {
        let (client, _) = ctx.topo.wg().map_err(anyhow::Error::msg)?;
        Ok(client.peer_state()?.and_then(|p| p.last_handshake))
    };
    let first = handshake_time(ctx)?;
    let sock = ctx.client_tunnel_socket()?;
    let start = Instant::now();
    let (mut sent, mut answered) = (0u32, 0u32);
    let mut rekeyed: Option<Duration> = None;
    let mut after = (0u32, 0u32);
    let mut last_note = Instant::now();
    while start.elapsed() < REKEY_WAIT {
        let tick = Instant::now();
        let tag = ctx.tag("rekey");
        sent += 1;
        let ok = probes::udp_echo_on(&sock, server, &tag, Duration::from_millis(800)).is_ok();
        answered += u32::from(ok);
        if rekeyed.is_some() {
            after.0 += 1;
            after.1 += u32::from(ok);
            if after.0 >= 5 {
                break;
            }
        } else if handshake_time(ctx)? != first {
            rekeyed = Some(start.elapsed());
        }
        if last_note.elapsed() >= Duration::from_secs(30) {
            // The host counts a silent guest as hung.
            crate::agent::channel::send(&crate::protocol::GuestMessage::Note {
                message: format!(
                    "rekey: {} s of up to {} s, {answered}/{sent} echoes answered",
                    start.elapsed().as_secs(),
                    REKEY_WAIT.as_secs()
                ),
            });
            last_note = Instant::now();
        }
        if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let observed = match rekeyed {
        Some(t) => format!(
            "a new handshake completed {:.0} s after the first; {answered} of {sent} echoes answered, {} of {} on the new keys{}",
            t.as_secs_f32(),
            after.1,
            after.0,
            relay_view(ctx)
        ),
        None => format!(
            "no new handshake within {} s; {answered} of {sent} echoes answered{}",
            REKEY_WAIT.as_secs(),
            relay_view(ctx)
        ),
    };
    // A lost echo or two before the rekey is noise under TCG; every echo
    // on the new keys must be answered.
    let ok = rekeyed.is_some_and(|t| t >= REKEY_AFTER - Duration::from_secs(5))
        && after.0 >= 5
        && after.1 == after.0
        && answered + 3 >= sent;
    Ok(Verdict::judge(ok, expected, observed))
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn waits_past_rekey_after_time() {
        let s = scenario_with("kind = \"rekey\"").unwrap();
        assert_eq!(s.checks[0].result_names(), ["rekey"]);
    }
}

//! Behaviour 11, keepalive: a client behind a NAT with a short UDP timeout
//! stays reachable through the tunnel while its persistent keepalives run.

use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::{ensure_tunnel, relay_reaches, relay_view};
use super::context::Context;
use super::verdict::Verdict;
use crate::bounds::{Invalid, Limit};
use crate::scenario::setup::Setup;

/// After the client has sent nothing for `idle` seconds (longer than
/// the UDP timeout of a NAT in front of it), a datagram from the relay
/// through the tunnel still reaches the client: the client's persistent
/// keepalive held the NAT's mapping open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    #[serde(default = "default_idle")]
    pub idle: u32,
}

fn default_idle() -> u32 {
    4
}

/// How long the client stays quiet.
const IDLE: Limit = Limit::new(
    "idle",
    1,
    120,
    "the check sends nothing for that long and the host stops a guest that stays silent past --check-timeout (120 s by default); NAT UDP timeouts worth bridging are seconds to a minute or two",
)
.unit(" s");

impl Check for Keepalive {
    const INFO: Info = Info {
        results: "keepalive/idle-Ns",
        behaviours: "11",
        description: "after the client has sent nothing for N s (longer than a NAT's UDP timeout in front of it), a datagram from the relay through the tunnel still reaches it: keepalives held the NAT mapping",
        timeout: KEEPALIVE_WAIT,
        needs_wireguard: true,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "",
        limits: &[IDLE],
        capture_first: true,
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![(format!("keepalive/idle-{}s", self.idle), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        Ok(IDLE.check(self.idle)?)
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        keepalive(ctx, self.idle)
    }
}

/// How long the relay keeps sending to an idle client before concluding
/// that nothing reaches it.
pub const KEEPALIVE_WAIT: Duration = Duration::from_secs(3);

/// Behaviour 11, keepalive: the client goes quiet for `idle` seconds, then
/// the relay sends to it through the tunnel. Only a NAT mapping kept open
/// by the client's persistent keepalives lets that through.
fn keepalive(ctx: &mut Context, idle: u32) -> Result<Verdict> {
    let a = *ctx.a();
    let (_, keepalive) = ctx.topo.client_peer();
    let every = keepalive
        .map(|k| format!(" but its keepalive every {k} s"))
        .unwrap_or_else(|| " (no keepalive configured)".into());
    let expected = format!(
        "after {idle} s in which the client sends nothing{every}, a UDP datagram from the relay to {} through the tunnel reaches the client",
        a.tunnel_client
    );
    if let Err(why) = ctx.topo.wg() {
        return Ok(Verdict::unsupported(expected, why));
    }
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    // The socket exists before the quiet time, so nothing needs sending after it.
    let sock = ctx.client_tunnel_socket()?;
    // The check is about time passing: there is no event to wait for instead.
    std::thread::sleep(Duration::from_secs(u64::from(idle)));
    let tag = ctx.tag("to-client");
    let arrived = relay_reaches(&ctx.topo.relay, a.tunnel_relay, &sock, &tag, KEEPALIVE_WAIT)?;
    let observed = match arrived {
        Some(after) => format!(
            "after {idle} s quiet, the relay's datagram reached the client in {} ms",
            after.as_millis()
        ),
        None => format!(
            "after {idle} s quiet, nothing the relay sent reached the client within {:.1} s",
            KEEPALIVE_WAIT.as_secs_f32()
        ),
    };
    Ok(Verdict::judge(
        arrived.is_some(),
        expected,
        format!("{observed}{}", relay_view(ctx)),
    ))
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn idle_is_bounded() {
        let s = scenario_with("kind = \"keepalive\"").unwrap();
        assert_eq!(s.checks[0].result_names(), ["keepalive/idle-4s"]);
        assert!(scenario_with("kind = \"keepalive\"\nidle = 0").is_err());
        assert!(scenario_with("kind = \"keepalive\"\nidle = 121").is_err());
    }
}

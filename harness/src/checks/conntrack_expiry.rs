//! Behaviour 12, expiry: an idle entry goes within the relay's UDP timeout,
//! and the flow then works again.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::exchange;
use super::common::{
    at, describe_seen, ensure_tunnel, host, reply_text, seen_source, EXCHANGE_TIMEOUT,
};
use super::context::Context;
use super::verdict::Verdict;
use crate::agent::probes::{self};
use crate::bounds::{Invalid, Limit};
use crate::conntrack;
use crate::scenario::setup::Setup;

/// A masqueraded UDP flow goes idle: its conntrack entry on the relay is
/// gone within `within` seconds (the relay's UDP timeouts, set in its
/// sysctls), and the same socket then works again with a fresh entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackExpiry {
    #[serde(default = "default_within")]
    pub within: u32,
}

fn default_within() -> u32 {
    5
}

/// How long the idle flow's entry may live.
const WITHIN: Limit = Limit::new(
    "within",
    1,
    120,
    "the check waits that long in silence and the host stops a guest that stays silent past --check-timeout (120 s by default); set the relay's UDP timeouts in its sysctls to seconds, not minutes",
)
.unit(" s");

impl Check for ConntrackExpiry {
    const INFO: Info = Info {
        results: "conntrack/expiry",
        behaviours: "12",
        description: "an idle masqueraded UDP flow's conntrack entry is gone within N s (the relay's UDP timeouts), and the same socket then works again",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "",
        limits: &[WITHIN],
        capture_first: true,
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![("conntrack/expiry".into(), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        Ok(WITHIN.check(self.within)?)
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        conntrack_expiry(ctx, self.within)
    }
}

/// Behaviour 12, expiry: a masqueraded UDP flow goes idle; its conntrack
/// entry on the relay must go within `within` seconds, and the same socket
/// must then work again (a new entry, masqueraded).
fn conntrack_expiry(ctx: &mut Context, within: u32) -> Result<Verdict> {
    let a = *ctx.a();
    let server = at(a.internet, probes::UDP_PORT);
    let expected = format!(
        "an idle UDP flow {} -> {server}: its conntrack entry on the relay is gone within {within} s, and the same socket then reaches {server} from {} again",
        host(a.tunnel_client),
        a.relay_wan
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let sock = ctx.client_tunnel_socket()?;
    let sport = sock.local_addr()?.port();
    let tag = ctx.tag("expiry");
    if let Err(e) = exchange(|wait| probes::udp_echo_on(&sock, server, &tag, wait)) {
        return Ok(Verdict::judge(
            false,
            expected,
            format!("the flow did not work at first: {e:#}"),
        ));
    }
    let ours = |ctx: &Context| -> Result<Option<String>> {
        let table = ctx.conntrack_text()?;
        Ok(conntrack::parse(&table)
            .into_iter()
            .find(|e| {
                e.protocol == "udp"
                    && e.original.src == a.tunnel_client
                    && e.original.sport == Some(sport)
                    && e.original.dst == a.internet
            })
            .map(|e| e.line))
    };
    // The relay's timeout may be shorter than listing its table takes on a
    // loaded guest: an entry can expire between the reply and the listing.
    // So a flow whose entry is not listed is used once more (which makes or
    // refreshes it) and listed again, three times, before that counts.
    let mut entry = None;
    let mut listings = Vec::new();
    for round in 0..3 {
        if round > 0 {
            let again = ctx.tag("expiry-refresh");
            if let Err(e) = exchange(|wait| probes::udp_echo_on(&sock, server, &again, wait)) {
                return Ok(Verdict::judge(
                    false,
                    expected,
                    format!("the flow stopped working before its entry could be listed: {e:#}"),
                ));
            }
        }
        let t = Instant::now();
        entry = ours(ctx)?;
        listings.push(t.elapsed().as_millis());
        if entry.is_some() {
            break;
        }
    }
    let Some(entry) = entry else {
        let took = listings
            .iter()
            .map(|ms| format!("{ms} ms"))
            .collect::<Vec<_>>()
            .join(", ");
        return Ok(Verdict::judge(
            false,
            expected,
            format!("the working flow had no conntrack entry on the relay, in 3 listings right after a reply (they took {took})"),
        ));
    };
    // Poll for the entry to go: its disappearance is the event.
    // The entry must be gone within `within` s of the flow's last packet.
    // On a starved guest, copies of the probe resent while it waited for its
    // answer can still be in flight after it and refresh the entry; each
    // refresh shows as a rise in the seconds it has left, and restarts the
    // wait. A kernel that never lets the entry go (no rise, still there) fails
    // after `within` s; one that keeps refreshing it fails after 4 x `within`.
    let start = Instant::now();
    let limit = Duration::from_secs(u64::from(within));
    let mut idle_since = start;
    let mut left = conntrack::remaining(&entry);
    let mut refreshes = 0;
    let mut last = entry;
    let mut gone = None;
    while idle_since.elapsed() < limit && start.elapsed() < limit * 4 {
        let Some(line) = ours(ctx)? else {
            gone = Some(start.elapsed());
            break;
        };
        let now = conntrack::remaining(&line);
        if let (Some(before), Some(now)) = (left, now) {
            if now > before {
                refreshes += 1;
                idle_since = Instant::now();
            }
        }
        left = now;
        last = line;
        std::thread::sleep(Duration::from_millis(200));
    }
    let refreshed = match refreshes {
        0 => String::new(),
        n => format!(" (refreshed {n} times by late packets of the flow)"),
    };
    let Some(after) = gone else {
        return Ok(Verdict::judge(
            false,
            expected,
            format!(
                "the entry was still there {:.1} s after the flow went idle{refreshed}: {last}",
                idle_since.elapsed().as_secs_f32()
            ),
        ));
    };
    let again = ctx.tag("expiry-again");
    let reply = exchange(|wait| probes::udp_echo_on(&sock, server, &again, wait));
    let seen = seen_source(ctx, &again)?;
    let masqueraded = seen.as_ref().map(|s| s.source) == Some(a.relay_wan);
    let reply_text = reply_text(&reply);
    Ok(Verdict::judge(
        reply.is_ok() && masqueraded,
        expected,
        format!(
            "the entry was gone after {:.1} s{refreshed}; then {}; {reply_text}",
            after.as_secs_f32(),
            describe_seen(ctx.a(), &seen)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn within_is_bounded() {
        let s = scenario_with("kind = \"conntrack-expiry\"").unwrap();
        assert_eq!(s.checks[0].result_names(), ["conntrack/expiry"]);
        assert!(scenario_with("kind = \"conntrack-expiry\"\nwithin = 0").is_err());
    }
}

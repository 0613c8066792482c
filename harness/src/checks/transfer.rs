//! Behaviour 3: a TCP transfer through tunnel and masquerade arrives intact
//! (SHA-256 at both ends).

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::{
    describe_seen, ensure_tunnel, seen_source, EXCHANGE_TIMEOUT, TRANSFER_TIMEOUT,
};
use super::context::Context;
use super::verdict::Verdict;
use crate::agent::probes::{self};
use crate::bounds::{Invalid, Limit};
use crate::scenario::setup::Setup;
use crate::scenario::topology::Addrs;
use crate::types::human_bytes;

/// A TCP transfer through tunnel and NAT arrives intact (SHA-256 both ends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    #[serde(default = "default_transfer")]
    pub bytes: u64,
}

fn default_transfer() -> u64 {
    1 << 20
}

/// The largest transfer: the guest is silent while it runs. Its memory
/// does not grow with it (64 KiB buffers at both ends).
const BYTES: Limit = Limit::new(
    "bytes",
    1,
    32 << 20,
    "the guest reports nothing until the transfer ends and the host stops a guest silent past --check-timeout (120 s by default), and natvet measured 0.8 MiB/s through tunnel and NAT under TCG with two runs at once: 32 MiB (33554432 bytes) take about 40 s (both ends stream through 64 KiB buffers, so memory does not grow with the size)",
)
.unit(" bytes");

impl Check for Transfer {
    const INFO: Info = Info {
        results: "transfer/SIZE",
        behaviours: "3",
        description: "a TCP transfer (1 MiB by default) arrives with the same SHA-256 at both ends, from the relay's address",
        timeout: TRANSFER_TIMEOUT,
        needs_wireguard: false,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "",
        limits: &[BYTES],
        capture_first: true,
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![(format!("transfer/{}", human_bytes(self.bytes)), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        Ok(BYTES.check(self.bytes)?)
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        transfer(ctx, self.bytes)
    }
}

fn transfer(ctx: &mut Context, bytes: u64) -> Result<Verdict> {
    let Addrs {
        relay_wan,
        internet,
        ..
    } = *ctx.a();
    let expected = format!(
        "{} over TCP reaches {internet} from {relay_wan} with the same SHA-256 at both ends",
        human_bytes(bytes)
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let tag = ctx.tag("transfer");
    let dest = SocketAddr::new(internet, probes::TCP_PORT);
    let start = Instant::now();
    let result = probes::tcp_transfer(
        &ctx.topo.client,
        dest,
        &tag,
        bytes,
        EXCHANGE_TIMEOUT,
        TRANSFER_TIMEOUT,
    );
    let secs = start.elapsed().as_secs_f64();
    let seen = seen_source(ctx, &tag)?;
    let masqueraded = seen.as_ref().map(|s| s.source) == Some(relay_wan);
    Ok(match result {
        Err(e) => Verdict::judge(
            false,
            expected,
            format!("{}; transfer failed: {e:#}", describe_seen(ctx.a(), &seen)),
        ),
        Ok((ours, theirs)) => Verdict::judge(
            masqueraded && ours == theirs,
            expected,
            format!(
                "{}; sent sha256 {ours}, received sha256 {theirs} ({:.1} MiB/s)",
                describe_seen(ctx.a(), &seen),
                bytes as f64 / (1u64 << 20) as f64 / secs.max(1e-6)
            ),
        ),
    })
}

#[cfg(test)]
mod tests {
    use crate::checks::tests::scenario_with;

    #[test]
    fn names_its_size() {
        let s = scenario_with("kind = \"transfer\"").unwrap();
        assert_eq!(s.checks[0].result_names(), ["transfer/1MiB"]);
        let s = scenario_with("kind = \"transfer\"\nbytes = 1536").unwrap();
        assert_eq!(s.checks[0].result_names(), ["transfer/1536B"]);
        assert!(scenario_with("kind = \"transfer\"\nbytes = 0").is_err());
    }
}

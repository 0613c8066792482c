//! What every check is: the `Check` trait and its catalogue entry.

use std::time::Duration;

use super::context::Context;
use super::verdict::Verdict;
use crate::bounds::{Invalid, Limit};
use crate::scenario::setup::Setup;

/// When a check runs in a scenario run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the tunnel is up: the check needs the relay's listen port free
    /// (plain UDP to it), which WireGuard takes over.
    BeforeTunnel,
    /// Once the tunnel is up (most checks).
    AfterTunnel,
}

/// What the catalogue (`natvet checks list`) says about a kind of check, and
/// how it runs. Every field is required, so a new check cannot forget one.
#[derive(Debug)]
pub struct Info {
    /// The names of its results, as a pattern ("handshake/PORT").
    pub results: &'static str,
    /// The behaviours of docs/checks.md it covers ("1, 5").
    pub behaviours: &'static str,
    /// What passes.
    pub description: &'static str,
    /// The longest it waits for packets, per result (zero: it does not wait).
    pub timeout: Duration,
    /// Needs WireGuard in the kernel (otherwise its results are `unsupported`).
    pub needs_wireguard: bool,
    pub phase: Phase,
    /// Runs once per address family of the scenario (IPv6 results are
    /// named `ipv6/NAME`); false: once per scenario run.
    pub per_family: bool,
    /// The parameters of a minimal `[[check]]` table of this kind, as TOML
    /// lines after `kind = "..."` (may be empty). The catalogue's tests
    /// parse it in a scenario, so it stays valid.
    pub example: &'static str,
    /// The ranges its parameters must fall in, each with why (what a value
    /// beyond it would cost the guest, in memory or time): `validate`
    /// checks them, `natvet explain` prints them, docs/checks.md lists them.
    pub limits: &'static [Limit],
    /// Its packets are few enough that a capture during its first attempt
    /// costs little: once a check of the run has failed (the kernel is
    /// likely broken), it is captured as it runs, and a failure needs no
    /// second run for its evidence. False for checks of thousands of flows,
    /// whose capture would load the guest they measure.
    pub capture_first: bool,
}

/// One kind of check. Its parameters are the type itself (serde, with
/// defaults); it is registered once in `checks/mod.rs`.
pub trait Check {
    /// Its catalogue entry.
    const INFO: Info;
    /// What one of its results needs to run: a port, a protocol, or `()` for
    /// a check that yields one result.
    type Case;
    /// Every result it yields, in order: the result's name (without the
    /// family prefix) and its case.
    fn cases(&self) -> Vec<(String, Self::Case)>;
    /// Whether its parameters make sense in the scenario's setup and fall
    /// within its `limits`: one message saying what is wrong and how to
    /// mend it, before any VM boots.
    fn validate(&self, setup: &Setup) -> Result<(), Invalid>;
    /// Send the packets of one case through the kernel and judge what
    /// arrived. An `Err` is natvet failing to run it (an `error` result),
    /// never a verdict about the kernel.
    fn run(&self, ctx: &mut Context, case: &Self::Case) -> anyhow::Result<Verdict>;

    /// Whether its cases run side by side, in one `run_together`, rather
    /// than one after another: sessions through every redirected range
    /// overlap in time, so a kernel pays for their length once.
    const TOGETHER: bool = false;

    /// Run all cases at once and judge each, in order (for `TOGETHER`).
    fn run_together(
        &self,
        ctx: &mut Context,
        cases: &[Self::Case],
    ) -> anyhow::Result<Vec<Verdict>> {
        cases.iter().map(|c| self.run(ctx, c)).collect()
    }
}

/// The ports of a check that names ports: at least one, none of them 0,
/// and no more than `most` allows (each check says why).
pub fn ports_given(kind: &str, ports: &[u16], most: &Limit) -> Result<(), Invalid> {
    if ports.is_empty() {
        return Err(format!(
            "check {kind} has nothing to check: give at least one port in `ports`"
        )
        .into());
    }
    if ports.contains(&0) {
        return Err("port 0 cannot carry UDP: use ports 1-65535".into());
    }
    most.check_len(ports.len())?;
    Ok(())
}

//! The checks: each kind is one file here that owns everything about it
//! (its parameters, validation, result names, phase, catalogue entry,
//! timeouts, tests of its pure parts, and `run`, which sends real packets
//! through the kernel and judges what arrived). See `check.rs` for the
//! trait; `context.rs` for what a run's checks share; `common.rs` for the
//! pieces several use.
//!
//! To add a check: write `checks/NAME.rs` with a type that implements
//! [`Check`], and add one line to the list below.

use serde::{Deserialize, Serialize};

pub mod check;
pub mod common;
pub mod context;
pub mod faults;
pub mod patience;
pub mod verdict;

pub use check::{Check, Info, Phase};
use context::Context;
pub use verdict::Verdict;

use crate::protocol::CheckResult;
use crate::scenario::setup::Setup;
use crate::types::Family;

/// The registry: `"kind" => file::Type,` for every check. It declares the
/// file's module, makes the kind a `[[check]]` a scenario can name, and
/// puts it in the catalogue, in this order.
macro_rules! registry {
    ($($kind:literal => $module:ident::$ty:ident,)*) => {
        $(pub mod $module;)*

        /// One `[[check]]` of a scenario with its parameters; `kind` picks the check.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind")]
        pub enum CheckSpec {
            $(#[serde(rename = $kind)] $ty($module::$ty),)*
        }

        impl CheckSpec {
            /// The `kind` a scenario names it by.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(CheckSpec::$ty(_) => $kind,)*
                }
            }

            /// Its catalogue entry.
            pub fn info(&self) -> &'static Info {
                match self {
                    $(CheckSpec::$ty(_) => &<$module::$ty as Check>::INFO,)*
                }
            }

            /// The names of its results, in order (without the family prefix).
            pub fn result_names(&self) -> Vec<String> {
                match self {
                    $(CheckSpec::$ty(c) => c.cases().into_iter().map(|(n, _)| n).collect(),)*
                }
            }

            /// Whether its parameters make sense in the scenario's setup.
            pub fn validate(&self, setup: &Setup) -> Result<(), crate::bounds::Invalid> {
                match self {
                    $(CheckSpec::$ty(c) => c.validate(setup),)*
                }
            }

            /// Run every result of the check in the context's current family.
            pub fn run(
                &self,
                ctx: &mut Context,
                scenario: &str,
                emit: &mut dyn FnMut(CheckResult),
            ) {
                match self {
                    $(CheckSpec::$ty(c) => run_cases(c, ctx, scenario, emit),)*
                }
            }
        }

        /// Every kind of check with its catalogue entry, in registry order.
        pub const CATALOGUE: &[(&str, &Info)] = &[$(($kind, &<$module::$ty as Check>::INFO),)*];
    };
}

registry! {
    "redirect" => redirect::Redirect,
    "no-redirect" => no_redirect::NoRedirect,
    "handshake" => handshake::Handshake,
    "no-handshake" => no_handshake::NoHandshake,
    "conntrack-redirect" => conntrack_redirect::ConntrackRedirect,
    "forward" => forward::Forward,
    "transfer" => transfer::Transfer,
    "conntrack-masquerade" => conntrack_masquerade::ConntrackMasquerade,
    "icmp-error" => icmp_error::IcmpError,
    "many-flows" => many_flows::ManyFlows,
    "port-exhaustion" => port_exhaustion::PortExhaustion,
    "conntrack-flush" => conntrack_flush::ConntrackFlush,
    "reload-under-traffic" => reload_under_traffic::ReloadUnderTraffic,
    "tunnel-mtu" => tunnel_mtu::TunnelMtu,
    "flowtable-offload" => flowtable_offload::FlowtableOffload,
    "keepalive" => keepalive::Keepalive,
    "roaming" => roaming::Roaming,
    "same-source-port" => same_source_port::SameSourcePort,
    "port-shadow" => port_shadow::PortShadow,
    "conntrack-expiry" => conntrack_expiry::ConntrackExpiry,
    "udp-gso" => udp_gso::UdpGso,
    "rekey" => rekey::Rekey,
    "port-forward" => port_forward::PortForward,
    "session" => session::Session,
    "peer-churn" => peer_churn::PeerChurn,
    "relay-scale" => relay_scale::RelayScale,
    "kernel-health" => kernel_health::KernelHealth,
}

impl CheckSpec {
    /// The names of its results in family `f` (IPv6 ones are `ipv6/NAME`).
    pub fn result_names_in(&self, f: Family) -> Vec<String> {
        self.result_names()
            .into_iter()
            .map(|n| format!("{}{n}", f.prefix()))
            .collect()
    }
}

/// Run each case of `check` as one named result: one after another, or
/// all at once for a check whose cases run together.
fn run_cases<C: Check>(
    check: &C,
    ctx: &mut Context,
    scenario: &str,
    emit: &mut dyn FnMut(CheckResult),
) {
    let (names, cases): (Vec<String>, Vec<C::Case>) = check
        .cases()
        .into_iter()
        .map(|(name, case)| (format!("{}{name}", ctx.family.prefix()), case))
        .unzip();
    let capture_first = C::INFO.capture_first;
    if C::TOGETHER {
        for r in ctx.run_batch(scenario, &names, capture_first, |ctx| {
            check.run_together(ctx, &cases)
        }) {
            emit(r);
        }
        return;
    }
    for (name, case) in names.iter().zip(&cases) {
        emit(ctx.run(scenario, name, capture_first, |ctx| check.run(ctx, case)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Scenario, SHIPPED};

    /// A scenario on the default topology with `check` as its one check.
    pub(crate) fn scenario_with(check: &str) -> Result<Scenario, String> {
        let toml = format!(
            "name = \"t\"\n[relay]\nmasquerade_ports = \"40000-40001\"\n[[check]]\n{check}\n"
        );
        Scenario::parse(&toml, "test").map_err(|e| e.to_string())
    }

    #[test]
    fn every_kind_is_registered_once_and_its_example_parses() {
        for (i, (kind, info)) in CATALOGUE.iter().enumerate() {
            assert!(
                CATALOGUE[i + 1..].iter().all(|(k, _)| k != kind),
                "{kind} twice"
            );
            let s = scenario_with(&format!("kind = \"{kind}\"\n{}", info.example))
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(s.checks[0].kind(), *kind);
            assert_eq!(s.checks[0].info().results, info.results);
            assert!(!s.checks[0].result_names().is_empty(), "{kind}");
        }
    }

    /// Every limit a check declares on one of its own keys is enforced: a
    /// value just outside it is refused before boot, at the key's line.
    #[test]
    fn every_limit_is_enforced_at_its_line() {
        let mut tried = 0;
        for (kind, info) in CATALOGUE {
            for l in info.limits.iter().filter(|l| l.what == l.key) {
                let mut outside = vec![l.max + 1];
                if l.min > 0 {
                    outside.push(l.min - 1);
                }
                for v in outside {
                    let example: Vec<&str> = info
                        .example
                        .lines()
                        .filter(|line| !line.starts_with(&format!("{} =", l.key)))
                        .collect();
                    let body =
                        format!("kind = \"{kind}\"\n{}\n{} = {v}", example.join("\n"), l.key);
                    let text = format!(
                        "name = \"t\"\n[relay]\nmasquerade_ports = \"40000-40001\"\n[[check]]\n{body}\n"
                    );
                    let line = text.lines().count();
                    let e = scenario_with(&body).expect_err(&format!("{kind}: {} = {v}", l.key));
                    // Beyond the key's type, TOML itself refuses the number
                    // (at the check's table).
                    if e.contains("invalid value") {
                        tried += 1;
                        continue;
                    }
                    let says = format!(
                        "line {line}: check {kind}: value out of range: {} = {v} must be between {} and {}",
                        l.key, l.min, l.max
                    );
                    assert!(e.contains(&says), "{kind}: {} = {v}: {e}", l.key);
                    tried += 1;
                }
            }
        }
        assert!(tried > 20, "{tried}");
    }

    #[test]
    fn shipped_scenarios_survive_a_round_trip() {
        for (name, _) in SHIPPED {
            let s = Scenario::load(name).unwrap();
            let text = toml::to_string(&s).unwrap();
            let again = Scenario::parse(&text, name).unwrap();
            assert_eq!(s, again, "{name}");
        }
    }
}

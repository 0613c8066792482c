//! `natvet verify`: the scenarios' checks on the host's running kernel, with
//! no VM. natvet starts itself as `natvet agent`, a child process that builds
//! the topology in anonymous network namespaces of its own: nothing is
//! created in the namespaces the host uses, so its interfaces, routes,
//! rulesets, sysctls and conntrack table are never touched, and everything the
//! agent made disappears with it, even when it is killed.
//!
//! What a namespace cannot hold is decided before anything is created
//! (`HostImpact`): the kernel modules the run would make the kernel load
//! (`modules`: they stay loaded after it; refused unless
//! `--allow-module-load`), and sysctls that are one value for the whole
//! kernel (`sysctls`: refused). iptables-legacy takes its lock in a file of
//! the run's own (`XTABLES_LOCKFILE`), and every run writes to a folder of
//! its own (`run_name`).

pub mod modules;
pub mod sysctls;

use std::path::Path;

use crate::kernel::Kernel;
use crate::protocol::CaptureMode;
use crate::report::RunReport;
use crate::scenario::Scenario;
use crate::ui::Ui;
use crate::vet::{self, VetOptions};

/// Why this process cannot run `verify`, if it cannot.
pub fn preflight() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(
            "natvet verify creates network namespaces and NAT rules, which needs root: run it with sudo"
                .into(),
        );
    }
    None
}

/// The running kernel's release ("" if uname fails).
fn release() -> String {
    Kernel::running().release.unwrap_or_default()
}

/// What a run of `scenarios` would change on this host beyond its own
/// namespaces, known before anything is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostImpact {
    pub release: String,
    /// Kernel-wide sysctls the scenarios set inside a namespace: one message each.
    pub sysctls: Vec<String>,
    pub modules: modules::Verdict,
}

/// The host's kernel as seen under `root` (`/`), and what `scenarios` need of it.
pub fn impact(scenarios: &[Scenario], capture: CaptureMode, root: &Path) -> HostImpact {
    let release = release();
    let host = modules::HostModules::read(root, &release);
    HostImpact {
        sysctls: sysctls::refusals(scenarios, &release),
        modules: modules::decide(&modules::needs(scenarios, capture), &host),
        release,
    }
}

impl HostImpact {
    /// Why the run may not go ahead (bad input: exit 2), if it may not.
    pub fn refusal(&self, allow_module_load: bool) -> Option<String> {
        let mut why: Vec<String> = self.sysctls.clone();
        if let modules::Verdict::WouldLoad { load, unsure, .. } = &self.modules {
            if !allow_module_load {
                let names = modules::Verdict::names(load);
                let mut m = format!(
                    "natvet verify would make this kernel ({}) load {} module(s), which stay loaded after it ends: {}. Rerun with --allow-module-load to let it (`modprobe -r {names}` removes them afterwards), load them yourself first (`modprobe -a {names}`), or leave out the backends and scenarios that need them (--backend, --scenario)",
                    self.release,
                    load.len(),
                    modules::Verdict::listing(load)
                );
                if let Some(u) = unsure {
                    m.push_str(&format!(" ({u})"));
                }
                why.push(m);
            }
        }
        (!why.is_empty()).then(|| why.join("\n"))
    }

    /// What the run does to the kernel's modules, in a sentence.
    pub fn modules_summary(&self, allow_module_load: bool) -> String {
        let elsewhere = |a: &[String]| {
            if a.is_empty() {
                String::new()
            } else {
                format!(
                    "; not modules of their own on this kernel (part of another, or missing): {}",
                    a.join(", ")
                )
            }
        };
        match &self.modules {
            modules::Verdict::CannotLoad(why) => format!("modules: {why}"),
            modules::Verdict::Present { elsewhere: a } => format!(
                "modules: every module natvet verify uses is loaded already or built in, so it loads none{}",
                elsewhere(a)
            ),
            modules::Verdict::WouldLoad { load, elsewhere: a, .. } => format!(
                "modules: natvet verify {} {} module(s) into this kernel, which stay loaded after it ends: {}{}",
                if allow_module_load {
                    "loads (--allow-module-load)"
                } else {
                    "would load"
                },
                load.len(),
                modules::Verdict::listing(load),
                elsewhere(a)
            ),
        }
    }
}

/// The name of one `verify` run, and of its folder under `--out`: the host,
/// the time and the process, so that runs at once never share a folder
/// (`verify-HOST-20261202T010700Z-4242`).
pub fn run_name() -> String {
    let host = nix::sys::utsname::uname()
        .map(|u| u.nodename().to_string_lossy().into_owned())
        .unwrap_or_default();
    let host = crate::report::sanitize(&host);
    let host = if host.is_empty() { "host".into() } else { host };
    format!(
        "verify-{host}-{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        std::process::id()
    )
}

/// Run every scenario of `opts` on the running kernel; `notes` (what the
/// run does to the host) go into the report.
pub fn run(opts: &VetOptions, notes: &[String], ui: &Ui) -> RunReport {
    let kernel = Kernel::running();
    let mut report = vet::run(opts, vec![(kernel.spec.clone(), Ok((kernel, 0)))], ui);
    for k in &mut report.kernels {
        k.notes.splice(0..0, notes.iter().cloned());
    }
    report
}

/// What a run would create, for `--dry-run`.
pub fn plan(scenarios: &[Scenario], impact: &HostImpact, allow_module_load: bool) -> String {
    let release = &impact.release;
    let mut out = format!(
        "natvet verify --dry-run: nothing was created. A run on this kernel ({release}) would start \
         `natvet agent` as a child process and, for each scenario and backend below, inside it:\n\n"
    );
    for s in scenarios {
        out.push_str(&format!("\nscenario {} ({})\n", s.name, s.description));
        out.push_str(&s.topology.describe(&s.relay.families));
        out.push_str(
            "  sysctls:    forwarding on in the relay and every router namespace; accept_dad=0 in each namespace (IPv6)\n  tunnel:     WireGuard; on a kernel without WireGuard, a veth pair with the same addresses stands in (WireGuard checks: unsupported)\n  probes:     TCP/UDP/ICMP servers in the internet namespace, sockets on the client and relay\n",
        );
        for ns in s.nat_namespaces() {
            let rules = s.nat_rules(&ns);
            for kind in &s.backends {
                for (inv, script) in kind.backend().scripts(&rules) {
                    out.push_str(&format!(
                        "  {kind}: ruleset applied in the {ns} namespace with `{inv}`:\n"
                    ));
                    for line in script.lines() {
                        out.push_str(&format!("      {line}\n"));
                    }
                }
            }
        }
        out.push_str("  checks:\n");
        for name in s.result_names() {
            out.push_str(&format!("      {name}\n"));
        }
    }
    out.push_str(&format!(
        "\nOn the host itself:\n  {}\n  iptables-legacy takes its lock in a file of the run's own (XTABLES_LOCKFILE in its temporary folder), not /run/xtables.lock\n  console log and evidence go to a folder of the run's own under --out (verify-HOST-TIME-PID)\n",
        impact.modules_summary(allow_module_load)
    ));
    match impact.refusal(allow_module_load) {
        Some(why) => out.push_str(&format!("\nThe run would be refused (exit 2):\n{why}\n")),
        None => out.push_str(
            "\nNothing else is created in the host's own namespaces: its interfaces, routes, rulesets, sysctls and conntrack table are untouched.\n",
        ),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::modules::{Load, Verdict};
    use super::*;

    fn impact(modules: Verdict, sysctls: Vec<String>) -> HostImpact {
        HostImpact {
            release: "6.1.0-57-amd64".into(),
            sysctls,
            modules,
        }
    }

    #[test]
    fn modules_to_load_are_refused_with_their_names_and_the_flag_unless_allowed() {
        let load = vec![
            Load {
                module: "nft_masq".into(),
                used_by: "nftables masquerade (extended-ports, in relay)".into(),
            },
            Load {
                module: "nf_nat".into(),
                used_by: "needed by nft_masq".into(),
            },
        ];
        let i = impact(
            Verdict::WouldLoad {
                load,
                elsewhere: vec![],
                unsure: None,
            },
            vec![],
        );
        let why = i.refusal(false).unwrap();
        for says in [
            "load 2 module(s), which stay loaded after it ends",
            "nft_masq (nftables masquerade (extended-ports, in relay))",
            "nf_nat (needed by nft_masq)",
            "--allow-module-load",
            "modprobe -a nft_masq nf_nat",
        ] {
            assert!(why.contains(says), "{says:?} not in {why}");
        }
        assert_eq!(i.refusal(true), None);
        assert!(i
            .modules_summary(true)
            .contains("loads (--allow-module-load) 2 module(s)"));
    }

    #[test]
    fn global_sysctls_are_refused_even_with_the_flag_and_present_modules_are_said() {
        let i = impact(
            Verdict::Present {
                elsewhere: vec!["nft_counter".into()],
            },
            vec!["scenario 'x' sets net.netfilter.nf_conntrack_max".into()],
        );
        assert!(i.refusal(true).unwrap().contains("nf_conntrack_max"));
        let s = i.modules_summary(false);
        assert!(s.contains("loads none") && s.contains("nft_counter"), "{s}");
        let none = impact(Verdict::CannotLoad("no /proc/modules".into()), vec![]);
        assert_eq!(none.refusal(false), None);
        assert_eq!(none.modules_summary(false), "modules: no /proc/modules");
        let plan = plan(&[], &none, false);
        assert!(plan.contains("modules: no /proc/modules") && plan.contains("untouched"));
    }

    #[test]
    fn run_names_are_the_host_the_time_and_the_process() {
        let name = run_name();
        let pid = format!("-{}", std::process::id());
        assert!(
            name.starts_with("verify-") && name.ends_with(&pid),
            "{name}"
        );
        assert_eq!(crate::report::sanitize(&name), name);
    }
}

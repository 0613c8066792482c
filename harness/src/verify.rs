//! `natvet verify`: the scenarios' checks on the host's running kernel, with
//! no VM. natvet starts itself as `natvet agent`, a child process that builds
//! the topology in anonymous network namespaces of its own: nothing is
//! created in the namespaces the host uses, so its interfaces, routes,
//! rulesets, sysctls and conntrack table are never touched, and everything the
//! agent made disappears with it, even when it is killed.

use crate::kernel::Kernel;
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

/// Run every scenario of `opts` on the running kernel.
pub fn run(opts: &VetOptions, ui: &Ui) -> RunReport {
    let kernel = Kernel::running();
    vet::run(opts, vec![(kernel.spec.clone(), Ok((kernel, 0)))], ui)
}

/// What a run would create, for `--dry-run`.
pub fn plan(scenarios: &[Scenario]) -> String {
    let release = Kernel::running().release.unwrap_or_else(|| "?".into());
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
    out.push_str(
        "\nNothing is created in the host's own namespaces: its interfaces, routes, rulesets, sysctls and conntrack table are untouched.\n",
    );
    out
}

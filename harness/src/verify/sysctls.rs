//! The sysctls a scenario writes inside its namespaces that are not the
//! namespace's own but one value for the whole kernel.
//!
//! Most of `net.netfilter` is per network namespace (timeouts, accounting,
//! `nf_conntrack_tcp_loose`, ...). Three are not: `nf_conntrack_max`,
//! `nf_conntrack_expect_max` and `nf_conntrack_buckets` point at global
//! variables. Until Linux 5.13 (commit 2671fa4dc010, "netfilter: conntrack:
//! Make global sysctls readonly in non-init netns", backported to the stable
//! kernels of May 2021) the first two stayed writable inside a namespace,
//! so a write there changed the host's own value; since, they are read-only
//! there. `net.nf_conntrack_max` (the same value) exists only in the initial
//! namespace. Either way a namespace cannot have them: on a live host a
//! scenario that sets one is refused before anything is created.

use crate::kernel::version::release_components;
use crate::scenario::Scenario;

/// The `net.*` sysctls that are one value for the whole kernel, not one per namespace.
pub const KERNEL_WIDE: &[&str] = &[
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_expect_max",
    "net.netfilter.nf_conntrack_buckets",
    "net.nf_conntrack_max",
];

/// Whether a kernel of `release` lets a namespace write the kernel-wide
/// conntrack sysctls (before 5.13; an unknown release is taken for one).
pub fn leaks_from_namespaces(release: &str) -> bool {
    match release_components(release)[..] {
        [major, minor, ..] => (major, minor) < (5, 13),
        _ => true,
    }
}

/// Why each kernel-wide sysctl the scenarios set inside a namespace cannot
/// be set by `natvet verify` on a kernel of `release`: one message each.
pub fn refusals(scenarios: &[Scenario], release: &str) -> Vec<String> {
    let mut out = Vec::new();
    for s in scenarios {
        for ns in &s.topology.namespaces {
            for key in ns
                .sysctls
                .keys()
                .filter(|k| KERNEL_WIDE.contains(&k.as_str()))
            {
                let how = if key == "net.nf_conntrack_max" {
                    "exists only in the host's own namespace".to_string()
                } else if leaks_from_namespaces(release) {
                    format!(
                        "is one value for the whole kernel, and on this kernel ({release}, before 5.13) a write inside a namespace changes the host's own (Linux 5.13 made it read-only there: commit 2671fa4dc010, \"netfilter: conntrack: Make global sysctls readonly in non-init netns\", in stable kernels from May 2021)"
                    )
                } else {
                    format!(
                        "is one value for the whole kernel, read-only inside a namespace on this kernel ({release}; since 5.13)"
                    )
                };
                out.push(format!(
                    "scenario '{}' sets {key} in namespace '{}', but it {how}: move it to [kernel.sysctls] (natvet verify then runs the scenario only if the host already has that value) or run the scenario in a VM with `natvet vet`",
                    s.name, ns.name
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::topology::SysctlValue;

    fn with_sysctls(keys: &[&str]) -> Scenario {
        let mut s = Scenario::load("extended-ports").unwrap();
        let ns = s
            .topology
            .namespaces
            .iter_mut()
            .find(|n| n.name == "relay")
            .unwrap();
        for k in keys {
            ns.sysctls.insert(k.to_string(), SysctlValue("1024".into()));
        }
        s
    }

    #[test]
    fn kernels_before_5_13_leak_the_global_conntrack_sysctls() {
        assert!(leaks_from_namespaces("5.10.0-32-amd64"));
        assert!(leaks_from_namespaces("5.12.19"));
        assert!(leaks_from_namespaces("garbage"));
        assert!(!leaks_from_namespaces("5.13.0"));
        assert!(!leaks_from_namespaces("6.1.0-57-amd64"));
        assert!(!leaks_from_namespaces("6.12.95+deb12-amd64"));
    }

    #[test]
    fn a_global_sysctl_in_a_namespace_is_refused_and_per_namespace_ones_are_not() {
        let s = with_sysctls(&["net.netfilter.nf_conntrack_max"]);
        let old = refusals(std::slice::from_ref(&s), "5.10.0-32-amd64");
        assert_eq!(old.len(), 1);
        assert!(
            old[0].contains("sets net.netfilter.nf_conntrack_max in namespace 'relay'")
                && old[0].contains("before 5.13")
                && old[0].contains("changes the host's own")
                && old[0].contains("[kernel.sysctls]"),
            "{}",
            old[0]
        );
        let new = refusals(std::slice::from_ref(&s), "6.1.0-57-amd64");
        assert!(
            new[0].contains("read-only inside a namespace"),
            "{}",
            new[0]
        );
        // The shipped scenarios set only per-namespace conntrack sysctls
        // (timeouts) in namespaces; their kernel-wide ones are under [kernel].
        let shipped: Vec<Scenario> = crate::scenario::SHIPPED
            .iter()
            .map(|(n, _)| Scenario::load(n).unwrap())
            .collect();
        assert!(refusals(&shipped, "5.10.0-32-amd64").is_empty());
        let s = with_sysctls(&[
            "net.netfilter.nf_conntrack_udp_timeout",
            "net.netfilter.nf_conntrack_expect_max",
            "net.nf_conntrack_max",
        ]);
        let both = refusals(&[s], "5.10.0-32-amd64");
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(
            both[1].contains("only in the host's own namespace"),
            "{both:?}"
        );
    }
}

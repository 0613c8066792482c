//! What the kernel's own log says about its health. Shared by the host,
//! which scans a guest's console for panics and oopses, and by the guest's
//! kernel-health check, which reads /dev/kmsg.

/// Kernel log lines that mean the kernel is unwell.
pub fn is_unhealthy(line: &str) -> bool {
    const SIGNS: &[&str] = &[
        "WARNING:",
        "BUG:",
        "Oops",
        "soft lockup",
        "hard LOCKUP",
        "rcu_sched self-detected stall",
        "rcu: INFO:",
        "detected stall",
        "blocked for more than",
        "general protection fault",
        "Kernel panic",
        "UBSAN:",
        "KASAN:",
        "list_add corruption",
        "list_del corruption",
        "refcount_t:",
    ];
    SIGNS.iter().any(|s| line.contains(s))
}

/// Warnings whose cause the kernel's own source names as the machine it
/// runs on rather than the kernel, with that reason. natvet runs every
/// guest under an emulator (TCG), so these say nothing about forwarding;
/// kernel-health sets them aside and says so in its result.
///
/// - `exc_debug_kernel`: a single-step debug trap (#DB with DR_STEP)
///   taken in kernel mode. arch/x86/kernel/traps.c: "The kernel doesn't
///   use TF single-step outside of kprobes and KGDB ... A known way to
///   trigger this is through QEMU's GDB stub, which leaks #DB into the
///   guest". natvet uses neither kprobes nor KGDB, so the trap came from
///   the CPU emulation.
pub fn emulator_artifact(line: &str) -> Option<&'static str> {
    const ARTIFACTS: &[(&str, &str)] = &[(
        "exc_debug_kernel",
        "a single-step debug trap in kernel mode, which the kernel attributes to the hypervisor (natvet uses no kprobes or KGDB)",
    )];
    if !line.contains("WARNING:") {
        return None;
    }
    ARTIFACTS
        .iter()
        .find(|(site, _)| line.contains(site))
        .map(|(_, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_trouble() {
        assert!(is_unhealthy(
            "[1.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s!"
        ));
        assert!(is_unhealthy(
            "[1.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"
        ));
        assert!(!is_unhealthy("[1.0] wireguard: WireGuard 1.0.0 loaded"));
    }

    #[test]
    fn only_warnings_the_kernel_blames_on_the_machine_are_artifacts() {
        let db = "[98.318437] WARNING: CPU: 0 PID: 3382 at arch/x86/kernel/traps.c:1120 exc_debug_kernel+0xca/0x160";
        assert!(is_unhealthy(db));
        assert!(emulator_artifact(db).is_some());
        // The same function named in a call trace line is not the warning.
        assert!(emulator_artifact("[98.4]  exc_debug_kernel+0xca/0x160").is_none());
        assert!(emulator_artifact(
            "[1.0] WARNING: CPU: 0 PID: 1 at net/netfilter/nf_conntrack_core.c:1234 nf_ct_delete+0x1/0x2"
        )
        .is_none());
    }
}

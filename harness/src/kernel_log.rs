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
}

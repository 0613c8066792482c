//! The machine natvet runs on: its cores and free memory, and how many VMs
//! and virtual CPUs they allow.

/// The host's cores (1 if it cannot tell).
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A sensible number of parallel VMs: one per core, as many as memory allows.
pub fn default_jobs(memory_mb: u32) -> usize {
    let cores = cores();
    let per_vm = u64::from(memory_mb) + 200;
    let avail = available_memory_mb().unwrap_or(per_vm);
    cores.min((avail / per_vm).max(1) as usize).max(1)
}

/// Virtual CPUs per guest when `vms` run at once: the host's cores shared
/// among them, at least one each (more would only make them take turns).
pub fn default_cpus(vms: usize) -> usize {
    (cores() / vms.max(1)).max(1)
}

/// MemAvailable in MiB, if /proc/meminfo tells.
pub fn available_memory_mb() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

//! The guest's CPU time, from /proc/stat: how much of it a probe's traffic
//! cost. Every namespace shares the guest's one kernel, so this is the
//! sender's, the relay's and the receiver's time together, the same on
//! both sides of a comparison.

/// Busy time of all CPUs so far (user, nice, system, irq, softirq, steal),
/// in clock ticks; none where /proc/stat cannot be read.
pub fn busy_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_busy(&text)
}

/// The kernel's clock ticks per second (USER_HZ).
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(100)
}

fn parse_busy(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  10 1 20 1000 50 3 4 2 0 0\ncpu0 10 1 20 1000 50 3 4 2 0 0\n";
        assert_eq!(parse_busy(stat), Some(40));
        assert_eq!(parse_busy("cpu0 1 2\n"), None);
    }
}

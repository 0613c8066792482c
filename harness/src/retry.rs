//! A harness error is retried once: when a kernel's run deserves a second
//! try, and how the two attempts' results combine (a check that passed only
//! the second time is flaky).

use crate::protocol::Status;
use crate::report::{InfraStage, KernelRun, KernelState};

/// Notes that carry a kernel warning seen on the console start with this.
pub const CONSOLE_ALARM: &str = "console: ";

/// Why a kernel's run deserves a second try: a harness error (qemu died,
/// timeout, agent or protocol error) and no sign that the kernel itself is at
/// fault. A failed check, a kernel panic, or an oops/WARN/lockup on the
/// console is evidence about the kernel and is never retried away;
/// deterministic setup errors are not retried either.
pub fn reason(run: &KernelRun) -> Option<String> {
    let kernel_trouble = run.notes.iter().any(|n| n.starts_with(CONSOLE_ALARM));
    if kernel_trouble || run.results.iter().any(|r| r.status == Status::Fail) {
        return None;
    }
    match &run.state {
        KernelState::InfraError {
            stage:
                InfraStage::Initramfs
                | InfraStage::Output
                | InfraStage::Interrupted
                | InfraStage::Fetch
                | InfraStage::KernelPanic
                | InfraStage::QemuKilled,
            ..
        } => None,
        KernelState::InfraError { stage, reason, .. } => Some(format!("{stage} error: {reason}")),
        KernelState::Completed => run
            .results
            .iter()
            .find(|r| r.status == Status::Error)
            .map(|r| format!("{} could not run: {}", r.check, r.observed)),
    }
}

/// The second attempt's results, with every check that passed only then marked
/// flaky, and the first attempt's trouble kept as a note.
pub fn merge(first: KernelRun, mut second: KernelRun) -> KernelRun {
    let first_trouble = reason(&first).unwrap_or_default();
    if second.state == KernelState::Completed {
        for r in &mut second.results {
            let passed_first = first.results.iter().any(|f| {
                f.scenario == r.scenario
                    && f.backend == r.backend
                    && f.check == r.check
                    && f.status == Status::Pass
            });
            if r.status == Status::Pass && !passed_first {
                r.status = Status::Flaky;
            }
        }
    }
    second.notes.insert(
        0,
        format!("attempt 1 of 2 ended in a harness error: {first_trouble}"),
    );
    second.attempts = 2;
    second
}

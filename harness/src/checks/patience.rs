//! How long a check waits for what should come (a reply, a handshake):
//! the check's full timeout until the guest has seen one of them, then a
//! wait that follows the slowest it has seen.
//!
//! On a good kernel a reply through the relay takes milliseconds, and a
//! handshake tens of them, even under TCG with runs side by side; waiting
//! out 10 or 12 s for each one a broken kernel drops is what made a broken
//! kernel cost ten times a good one. So once the guest has seen one of a
//! kind, a check waits [`FACTOR`] times the slowest it has seen, never less
//! than the kind's floor (tens of times a reply's usual time, and room for
//! resends: exchanges resend at least every second) and never more than its
//! full timeout. The first reply of a run is usually its slowest (it waits
//! on neighbour discovery and cold caches), so one is enough to go by. A
//! reply slower than that is called lost, and the observation says how long
//! natvet waited; `--waits full` waits every timeout out for a kernel that
//! is slow on purpose.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long checks wait for what should come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Waits {
    /// The full timeout until a reply of the kind was seen, then 20 times
    /// the slowest (at least 2 s for a reply, 3 s for a handshake).
    #[default]
    Adaptive,
    /// Every check's full timeout, always.
    Full,
}

/// What a check waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaited {
    /// The reply of a UDP, TCP or ICMP exchange (resends included).
    Reply,
    /// A WireGuard handshake's response.
    Handshake,
}

/// Seen of a kind before the wait follows them.
pub const MIN_SEEN: u32 = 1;
/// The wait, in multiples of the slowest seen.
pub const FACTOR: u32 = 20;

impl Awaited {
    /// The shortest wait: two resends of an exchange; a handshake, whose
    /// initiation WireGuard itself resends only after 5 s, gets a little more.
    pub fn floor(self) -> Duration {
        match self {
            Awaited::Reply => Duration::from_secs(2),
            Awaited::Handshake => Duration::from_secs(3),
        }
    }

    fn index(self) -> usize {
        match self {
            Awaited::Reply => 0,
            Awaited::Handshake => 1,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Awaited::Reply => "reply",
            Awaited::Handshake => "handshake",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    count: u32,
    slowest: Duration,
}

/// What the guest has seen so far, by kind (the agent is one guest, one kernel).
#[derive(Debug)]
pub struct Patience {
    full: AtomicBool,
    seen: Mutex<[Seen; 2]>,
}

impl Default for Patience {
    fn default() -> Self {
        Self::new()
    }
}

impl Patience {
    pub const fn new() -> Self {
        Patience {
            full: AtomicBool::new(false),
            seen: Mutex::new(
                [Seen {
                    count: 0,
                    slowest: Duration::ZERO,
                }; 2],
            ),
        }
    }

    pub fn set(&self, waits: Waits) {
        self.full.store(waits == Waits::Full, Ordering::SeqCst);
    }

    /// Something awaited arrived after `took`.
    pub fn observed(&self, what: Awaited, took: Duration) {
        if let Ok(mut seen) = self.seen.lock() {
            let s = &mut seen[what.index()];
            s.count = s.count.saturating_add(1);
            s.slowest = s.slowest.max(took);
        }
    }

    /// How long to wait for `what`, whose full timeout is `full`.
    pub fn wait(&self, what: Awaited, full: Duration) -> Duration {
        if self.full.load(Ordering::SeqCst) {
            return full;
        }
        let Ok(seen) = self.seen.lock() else {
            return full;
        };
        let s = seen[what.index()];
        if s.count < MIN_SEEN {
            return full;
        }
        (s.slowest * FACTOR).clamp(what.floor(), full.max(what.floor()))
    }

    /// Why a wait of `waited` for `what` was no longer (for an observation
    /// that says nothing came): empty when it was the full timeout.
    pub fn why(&self, what: Awaited, waited: Duration, full: Duration) -> String {
        if waited >= full {
            return String::new();
        }
        let slowest = self
            .seen
            .lock()
            .map(|s| s[what.index()].slowest)
            .unwrap_or_default();
        format!(
            " (natvet waits {FACTOR}x the slowest {} this guest has seen, {} ms, at least {} s; `--waits full` waits {} s)",
            what.noun(),
            slowest.as_millis(),
            what.floor().as_secs(),
            full.as_secs()
        )
    }
}

/// The guest's one record (checks of runs side by side share it: they run on one kernel).
pub static PATIENCE: Patience = Patience::new();

/// [`Patience::wait`] of the guest.
pub fn wait(what: Awaited, full: Duration) -> Duration {
    PATIENCE.wait(what, full)
}

/// [`Patience::observed`] of the guest.
pub fn observed(what: Awaited, took: Duration) {
    PATIENCE.observed(what, took)
}

/// [`Patience::why`] of the guest.
pub fn why(what: Awaited, waited: Duration, full: Duration) -> String {
    PATIENCE.why(what, waited, full)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: Duration = Duration::from_secs(10);

    #[test]
    fn the_full_timeout_until_one_was_seen() {
        let p = Patience::new();
        assert_eq!(p.wait(Awaited::Reply, FULL), FULL);
        p.observed(Awaited::Reply, Duration::from_millis(5));
        // 20 x 5 ms is under the floor.
        assert_eq!(p.wait(Awaited::Reply, FULL), Awaited::Reply.floor());
        assert!(p
            .why(Awaited::Reply, Awaited::Reply.floor(), FULL)
            .contains("5 ms"));
        assert_eq!(p.why(Awaited::Reply, FULL, FULL), "");
        // Handshakes are counted apart.
        assert_eq!(p.wait(Awaited::Handshake, FULL), FULL);
    }

    #[test]
    fn the_wait_follows_the_slowest_and_stays_within_floor_and_timeout() {
        let p = Patience::new();
        for ms in [10, 300, 20, 15, 12] {
            p.observed(Awaited::Handshake, Duration::from_millis(ms));
        }
        assert_eq!(
            p.wait(Awaited::Handshake, Duration::from_secs(12)),
            Duration::from_secs(6)
        );
        p.observed(Awaited::Handshake, Duration::from_secs(2));
        assert_eq!(
            p.wait(Awaited::Handshake, Duration::from_secs(12)),
            Duration::from_secs(12)
        );
        let p2 = Patience::new();
        p2.set(Waits::Full);
        for _ in 0..MIN_SEEN {
            p2.observed(Awaited::Reply, Duration::from_millis(1));
        }
        assert_eq!(p2.wait(Awaited::Reply, FULL), FULL);
    }
}

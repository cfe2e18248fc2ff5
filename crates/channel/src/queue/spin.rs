//! The bounded, adaptive, time-based spin a waiter makes before it sleeps.
//!
//! A sleeping hand-over between processes costs about 13 µs on the machines we measure
//! (futex wake plus the sleeper's wake-up), a spinning one well under a microsecond.
//! So a waiter first spins, checking its condition, for a budget of time; if the
//! partner answered late in the budget the budget doubles, if it did not answer at all
//! it halves, between [`MIN_SPIN`] and [`MAX_SPIN`]. The budget is measured in time,
//! not iterations, because `pause` costs 10 to 140 cycles depending on the CPU; and
//! the spin never yields the CPU, since on a busy machine a yield can hand it away for
//! a whole time slice. While nobody answers, the budget quickly falls to its minimum:
//! the waiter then burns at most [`MIN_SPIN`] per sleep.
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Shortest spin budget.
pub(crate) const MIN_SPIN: Duration = Duration::from_micros(3);
/// Longest spin budget (about two sleeping hand-overs).
pub(crate) const MAX_SPIN: Duration = Duration::from_micros(40);
const START_NS: u32 = 15_000;

/// One waiter role's spin budget (process-local; one per queue handle and direction).
#[derive(Debug)]
pub(crate) struct Spin {
    budget_ns: AtomicU32,
}

impl Spin {
    /// A budget starting at 15 µs.
    pub(crate) const fn new() -> Self {
        Spin {
            budget_ns: AtomicU32::new(START_NS),
        }
    }

    /// Spins until `ready()` or the budget is spent; adapts the budget. Returns
    /// whether `ready()` became true.
    #[inline]
    pub(crate) fn spin(&self, mut ready: impl FnMut() -> bool) -> bool {
        let budget = self.budget_ns.load(Ordering::Relaxed);
        let start = Instant::now();
        let mut i = 0u32;
        loop {
            if ready() {
                if i >= 64 {
                    let spent = start.elapsed().as_nanos() as u32;
                    if spent > budget / 2 {
                        self.set(budget.saturating_mul(2));
                    }
                }
                return true;
            }
            std::hint::spin_loop();
            i += 1;
            if i.is_multiple_of(64) && start.elapsed().as_nanos() as u32 >= budget {
                self.set(budget - budget / 4);
                return ready();
            }
        }
    }

    /// Learns from a sleep that followed a failed spin: a short one (the partner
    /// answered soon after the waiter gave up, typically because it was itself waking
    /// from a sleep) means spinning a little longer would have avoided two sleeps, so
    /// the budget grows to twice the sleep; a long one leaves the budget shrunk.
    pub(crate) fn slept(&self, slept: Duration) {
        if slept < MAX_SPIN {
            let want = (slept.as_nanos() as u32).saturating_mul(2);
            if want > self.budget_ns.load(Ordering::Relaxed) {
                self.set(want);
            }
        }
    }

    /// As [`Spin::spin`], for a `ready()` that is itself costly (a non-blocking system
    /// call): the clock is read after every check, so the budget holds to within one
    /// check. Returns `ready()`'s `Some` value, or `None` when the budget is spent (it
    /// then shrinks, as in `spin`).
    #[inline]
    pub(crate) fn spin_costly<T>(&self, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
        let budget = u128::from(self.budget_ns.load(Ordering::Relaxed));
        let start = Instant::now();
        loop {
            if let Some(v) = ready() {
                let spent = start.elapsed().as_nanos();
                if spent > budget / 2 {
                    self.set((budget as u32).saturating_mul(2));
                }
                return Some(v);
            }
            std::hint::spin_loop();
            if start.elapsed().as_nanos() >= budget {
                self.set(budget as u32 - budget as u32 / 4);
                return None;
            }
        }
    }

    /// Whether spinning can help at all: never on a machine with one CPU, where the
    /// partner cannot run while we spin.
    pub(crate) fn useful() -> bool {
        static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get())) > 1
    }

    fn set(&self, ns: u32) {
        let ns = ns.clamp(MIN_SPIN.as_nanos() as u32, MAX_SPIN.as_nanos() as u32);
        self.budget_ns.store(ns, Ordering::Relaxed);
    }
}

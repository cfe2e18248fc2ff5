//! The bounded, adaptive spin that precedes every futex sleep of this crate.
//!
//! A sleeping hand-over between processes costs about 13 µs, a spinning one well under
//! a microsecond. The spin is bounded in *time* (not iterations) and adapts to what the
//! sleeps that follow it show:
//! - the waiter slept, and was woken soon (within [`MAX_SPIN`]): the partner answers
//!   fast, so a longer spin would have caught it — the budget doubles;
//! - the waiter slept long (over 4 × [`MAX_SPIN`]): nobody was about to answer — the
//!   budget halves, down to [`MIN_SPIN`].
//!
//! So a ping-pong between two running processes climbs out of the sleeping regime
//! within a few rounds (a spin longer than one wake-up latency catches the partner,
//! and then neither side sleeps any more), while a waiter whose partner answers
//! rarely spins at most [`MIN_SPIN`] per wait. The budget is a plain word that lives
//! in the primitive's shared state, so all processes learn together.
//!
//! (mproc-core's `SpinBudget` counts iterations and halves on every failed spin; once
//! both sides of a ping-pong sleep, its spin never lasts a wake-up latency and it stays
//! in the sleeping regime.)
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Shortest spin budget (ns).
pub(crate) const MIN_SPIN: u32 = 1_000;
/// Longest spin budget (ns): longer than a futex wake-up on these machines.
pub(crate) const MAX_SPIN: u32 = 40_000;
const INITIAL_SPIN: u32 = 10_000;

/// A spin budget in nanoseconds; zero (fresh shared memory) means the initial budget.
#[repr(transparent)]
#[derive(Debug, Default)]
pub(crate) struct Spinner(AtomicU32);

impl Spinner {
    fn budget(&self) -> u32 {
        match self.0.load(Ordering::Relaxed) {
            0 => INITIAL_SPIN,
            b => b.clamp(MIN_SPIN, MAX_SPIN),
        }
    }

    /// Spins until `ready()` or the budget is spent; returns whether `ready()` held.
    #[inline]
    pub(crate) fn spin(&self, mut ready: impl FnMut() -> bool) -> bool {
        // A first, short burst without reading the clock.
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        self.spin_timed(ready)
    }

    #[cold]
    fn spin_timed(&self, mut ready: impl FnMut() -> bool) -> bool {
        let limit = Duration::from_nanos(u64::from(self.budget()));
        let start = Instant::now();
        loop {
            for _ in 0..64 {
                if ready() {
                    return true;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= limit {
                return ready();
            }
            // A partner that shares this core (2 cores, many processes) gets to run
            // now instead of after our time slice: a yield is cheaper than a futex.
            std::thread::yield_now();
        }
    }

    /// Feedback after a sleep that followed a failed spin: `slept` is how long the
    /// waiter slept, `ready` whether it then found what it waited for.
    pub(crate) fn after_sleep(&self, slept: Duration, ready: bool) {
        let b = self.budget();
        let new = if ready && slept < Duration::from_nanos(u64::from(MAX_SPIN)) {
            (b * 2).min(MAX_SPIN)
        } else if slept > Duration::from_nanos(4 * u64::from(MAX_SPIN)) {
            (b / 2).max(MIN_SPIN)
        } else {
            return;
        };
        self.0.store(new, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_grows_after_short_sleeps_and_shrinks_after_long_ones() {
        let s = Spinner::default();
        assert_eq!(s.budget(), INITIAL_SPIN);
        for _ in 0..10 {
            s.after_sleep(Duration::from_micros(5), true);
        }
        assert_eq!(s.budget(), MAX_SPIN);
        for _ in 0..20 {
            s.after_sleep(Duration::from_millis(5), true);
        }
        assert_eq!(s.budget(), MIN_SPIN);
        // A short sleep that did not end in success teaches nothing.
        s.after_sleep(Duration::from_micros(5), false);
        assert_eq!(s.budget(), MIN_SPIN);
    }

    #[test]
    fn spin_is_bounded_in_time() {
        let s = Spinner::default();
        let t = Instant::now();
        assert!(!s.spin(|| false));
        // The budget is at most 40 µs; allow for a descheduled thread.
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(s.spin(|| true));
    }
}

//! Process-shared futex waits and wakes, and the bounded spin that precedes a sleep.
//!
//! The word must live in memory shared between the processes (a [`Region`](crate::Region)
//! or any `MAP_SHARED` mapping). These calls never use `FUTEX_PRIVATE_FLAG`: a private
//! futex silently misses wake-ups from other processes.
//!
//! ```
//! use mproc_core::futex::{self, WaitOutcome};
//! use mproc_core::Deadline;
//! use std::sync::atomic::AtomicU32;
//! use std::time::Duration;
//! let word = AtomicU32::new(0);
//! // The value is not the expected one: returns at once.
//! assert_eq!(futex::wait(&word, 1, Deadline::never()), WaitOutcome::ValueChanged);
//! // Nobody wakes us: times out.
//! let r = futex::wait(&word, 0, Deadline::after(Duration::from_millis(10)));
//! assert_eq!(r, WaitOutcome::TimedOut);
//! assert_eq!(futex::wake(&word, 1), 0);
//! ```
use crate::Deadline;
use rustix::io::Errno;
use rustix::thread::futex as sys;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why a [`wait`] returned. Every outcome but `TimedOut` means "look at the word again".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Woken by a [`wake`] (or spuriously: always re-check the word).
    Woken,
    /// The word did not hold the expected value when the wait began.
    ValueChanged,
    /// Interrupted by a signal handler.
    Interrupted,
    /// The deadline passed.
    TimedOut,
}

/// Sleeps while `*word == expected`, until woken or until `deadline`.
///
/// The check and the sleep are atomic with respect to [`wake`]: a waker that changes
/// the word and then wakes cannot be missed.
pub fn wait(word: &AtomicU32, expected: u32, deadline: Deadline) -> WaitOutcome {
    let ts = match deadline.remaining() {
        None => None,
        Some(left) if left.is_zero() => return WaitOutcome::TimedOut,
        // A duration beyond what a timespec holds is as good as forever.
        Some(left) => sys::Timespec::try_from(left).ok(),
    };
    match sys::wait(word, sys::Flags::empty(), expected, ts.as_ref()) {
        Ok(()) => WaitOutcome::Woken,
        Err(Errno::AGAIN) => WaitOutcome::ValueChanged,
        Err(Errno::INTR) => WaitOutcome::Interrupted,
        Err(Errno::TIMEDOUT) => WaitOutcome::TimedOut,
        // EFAULT/EINVAL cannot happen for a valid aligned `&AtomicU32`; treat as spurious.
        Err(_) => WaitOutcome::Woken,
    }
}

/// Wakes up to `n` waiters sleeping on `word` (in any process); returns how many woke.
pub fn wake(word: &AtomicU32, n: u32) -> usize {
    sys::wake(word, sys::Flags::empty(), n).unwrap_or(0)
}

/// Wakes every waiter sleeping on `word`.
pub fn wake_all(word: &AtomicU32) -> usize {
    wake(word, i32::MAX as u32)
}

/// Most spin iterations a waiter makes before it sleeps.
pub const MAX_SPIN: u32 = 4096;
const MIN_SPIN: u32 = 16;

/// A bounded, adaptive spin budget shared by all waiters of one primitive.
///
/// A sleeping hand-over between processes costs about 13 µs; a brief spin catches a
/// partner that answers within a microsecond. The budget doubles each time spinning
/// paid off and halves each time it did not, between 16 and [`MAX_SPIN`] iterations,
/// so a waiter never burns a core while nobody answers. The budget is a plain word
/// and may itself live in shared memory.
#[derive(Debug)]
#[repr(transparent)]
pub struct SpinBudget(AtomicU32);

impl Default for SpinBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl SpinBudget {
    /// A fresh budget, starting in the middle of its range.
    pub const fn new() -> Self {
        SpinBudget(AtomicU32::new(256))
    }

    /// Spins until `ready()` returns true or the budget is spent; adapts the budget.
    /// Returns whether `ready()` became true.
    #[inline]
    pub fn spin(&self, mut ready: impl FnMut() -> bool) -> bool {
        let budget = self.0.load(Ordering::Relaxed).clamp(MIN_SPIN, MAX_SPIN);
        let mut i = 0;
        while i < budget {
            if ready() {
                if i > budget / 2 {
                    let _ = self.0.compare_exchange(
                        budget,
                        (budget * 2).min(MAX_SPIN),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                return true;
            }
            std::hint::spin_loop();
            // Give the other core a chance after a while (1 of 2 cores is often busy).
            if i % 64 == 63 {
                std::thread::yield_now();
            }
            i += 1;
        }
        let _ = self.0.compare_exchange(
            budget,
            (budget / 2).max(MIN_SPIN),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        ready()
    }
}

/// Waits until `ready(word value)` holds, spinning first (with `budget`) and then
/// sleeping on the futex. Returns `true` when ready, `false` on timeout.
///
/// `ready` is re-evaluated after every wake-up; the futex sleep uses the value last
/// seen, so a change between the check and the sleep is never missed.
pub fn wait_until(
    word: &AtomicU32,
    budget: Option<&SpinBudget>,
    deadline: Deadline,
    mut ready: impl FnMut(u32) -> bool,
) -> bool {
    if let Some(b) = budget
        && b.spin(|| ready(word.load(Ordering::Acquire)))
    {
        return true;
    }
    loop {
        let v = word.load(Ordering::Acquire);
        if ready(v) {
            return true;
        }
        if wait(word, v, deadline) == WaitOutcome::TimedOut {
            return ready(word.load(Ordering::Acquire));
        }
    }
}

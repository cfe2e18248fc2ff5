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
use std::time::{Duration, Instant};

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

/// How long [`wait_on_holder`] sleeps as a plain futex wait before it asks the kernel
/// to watch the holder: a lock is usually released within microseconds, and such a
/// wait must cost no more system calls than a plain one.
pub const FIRST_SLICE: Duration = Duration::from_millis(1);

/// How often [`wait_on_holder`] looks at the holder itself when the kernel cannot watch
/// it (no fd left for a pidfd, or no watcher thread).
const FALLBACK_SLICE: Duration = Duration::from_millis(5);

/// Why a [`wait_on_holder`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HolderWait {
    /// Woken, the word changed, or interrupted: look at the word again.
    Woken,
    /// The deadline passed.
    TimedOut,
    /// The holder is certainly dead (its process exited): the caller may take over what
    /// it held, if the word still names it.
    HolderDied,
}

/// Sleeps while `*word == expected` and the process recorded as `holder` (an
/// [`owner_tag`](crate::pid::owner_tag)) lives, until woken or `deadline`.
///
/// First a plain futex wait of [`FIRST_SLICE`]; if the word still holds `expected`
/// after it, the holder's pidfd is registered with this process's watcher thread
/// ([`watch`](crate::watch)), which wakes the word the moment the holder exits, and the
/// wait goes on without any periodic wake-up. A holder that is 0, or whose tag belongs
/// to another pid namespace, is never judged dead (the wait is then a plain one).
/// `HolderDied` is never returned for a live holder: a pidfd stays bound to its
/// process, and a pid with no process behind it names nobody alive.
///
/// ```
/// use mproc_core::futex::{self, HolderWait};
/// use mproc_core::Deadline;
/// use std::sync::atomic::AtomicU32;
/// use std::time::Duration;
/// let word = AtomicU32::new(7);
/// let me = mproc_core::pid::owner_tag();
/// // The holder (this process) lives: the wait times out.
/// let r = futex::wait_on_holder(&word, 7, me, Deadline::after(Duration::from_millis(20)));
/// assert_eq!(r, HolderWait::TimedOut);
/// ```
pub fn wait_on_holder(
    word: &AtomicU32,
    expected: u32,
    holder: u32,
    deadline: Deadline,
) -> HolderWait {
    match wait(word, expected, deadline.min(Deadline::after(FIRST_SLICE))) {
        WaitOutcome::TimedOut => {}
        _ => return HolderWait::Woken,
    }
    if deadline.is_expired() {
        return HolderWait::TimedOut;
    }
    if word.load(Ordering::Acquire) != expected {
        return HolderWait::Woken;
    }
    wait_watched(word, expected, holder, deadline)
}

#[cold]
fn wait_watched(word: &AtomicU32, expected: u32, holder: u32, deadline: Deadline) -> HolderWait {
    use crate::watch::{Watch, watch_holder};
    let slice = match watch_holder(word, holder) {
        Watch::HolderGone => return HolderWait::HolderDied,
        Watch::Armed(w) => {
            let outcome = wait(word, expected, deadline);
            // Dropping `w` deregisters before the caller may unmap the word.
            return if w.holder_died() {
                HolderWait::HolderDied
            } else if outcome == WaitOutcome::TimedOut {
                HolderWait::TimedOut
            } else {
                HolderWait::Woken
            };
        }
        Watch::Unjudged => deadline,
        Watch::Unavailable => deadline.min(Deadline::after(FALLBACK_SLICE)),
    };
    let outcome = wait(word, expected, slice);
    if outcome != WaitOutcome::TimedOut {
        return HolderWait::Woken;
    }
    if crate::pid::holder_dead(holder) {
        HolderWait::HolderDied
    } else if deadline.is_expired() {
        HolderWait::TimedOut
    } else {
        HolderWait::Woken
    }
}

/// Shortest spin budget (ns).
pub const MIN_SPIN_NS: u32 = 1_000;
/// Longest spin budget (ns): longer than a futex wake-up between processes here.
pub const MAX_SPIN_NS: u32 = 40_000;
const INITIAL_SPIN_NS: u32 = 10_000;

/// The bounded, adaptive spin that precedes a futex sleep.
///
/// A sleeping hand-over between processes costs about 13 µs, a spinning one well under
/// a microsecond. The spin is bounded in *time* (not iterations: `pause` costs 10 to 140
/// cycles depending on the CPU) and adapts to what the sleeps that follow it show:
/// - the waiter slept and was woken soon (within [`MAX_SPIN_NS`]): the partner answers
///   fast, so a longer spin would have caught it — the budget doubles;
/// - the waiter slept long (over 4 × [`MAX_SPIN_NS`]): nobody was about to answer — the
///   budget halves, down to [`MIN_SPIN_NS`].
///
/// So a ping-pong between two running processes climbs out of the sleeping regime within
/// a few rounds, while a waiter whose partner answers rarely spins at most
/// [`MIN_SPIN_NS`] per wait: it never burns a core while nobody answers. The budget is a
/// plain word (zero means "initial"), so it may live in shared memory, where every
/// process of a primitive learns together.
///
/// ```
/// use mproc_core::futex::Spinner;
/// let s = Spinner::new();
/// assert!(s.spin(|| true));
/// assert!(!s.spin(|| false)); // gives up after at most 40 µs of spinning
/// ```
#[repr(transparent)]
#[derive(Debug, Default)]
pub struct Spinner(AtomicU32);

impl Spinner {
    /// A fresh budget (the same state as zeroed shared memory).
    pub const fn new() -> Self {
        Spinner(AtomicU32::new(0))
    }

    fn budget(&self) -> u32 {
        match self.0.load(Ordering::Relaxed) {
            0 => INITIAL_SPIN_NS,
            b => b.clamp(MIN_SPIN_NS, MAX_SPIN_NS),
        }
    }

    /// Spins until `ready()` or the budget is spent; returns whether `ready()` held.
    #[inline]
    pub fn spin(&self, mut ready: impl FnMut() -> bool) -> bool {
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
            // A partner that shares this core (2 cores, many processes) gets to run now
            // instead of after our time slice: a yield is cheaper than a futex.
            std::thread::yield_now();
        }
    }

    /// Feedback after a sleep that followed a failed spin: `slept` is how long the
    /// waiter slept, `ready` whether it then found what it waited for.
    pub fn after_sleep(&self, slept: Duration, ready: bool) {
        let b = self.budget();
        let new = if ready && slept < Duration::from_nanos(u64::from(MAX_SPIN_NS)) {
            (b * 2).min(MAX_SPIN_NS)
        } else if slept > Duration::from_nanos(4 * u64::from(MAX_SPIN_NS)) {
            (b / 2).max(MIN_SPIN_NS)
        } else {
            return;
        };
        self.0.store(new, Ordering::Relaxed);
    }
}

/// Waits until `ready(word value)` holds, spinning first (with `spinner`, which learns from how long each sleep lasted) and then
/// sleeping on the futex. Returns `true` when ready, `false` on timeout.
///
/// `ready` is re-evaluated after every wake-up; the futex sleep uses the value last
/// seen, so a change between the check and the sleep is never missed.
pub fn wait_until(
    word: &AtomicU32,
    spinner: Option<&Spinner>,
    deadline: Deadline,
    mut ready: impl FnMut(u32) -> bool,
) -> bool {
    if let Some(s) = spinner
        && s.spin(|| ready(word.load(Ordering::Acquire)))
    {
        return true;
    }
    loop {
        let v = word.load(Ordering::Acquire);
        if ready(v) {
            return true;
        }
        let t = Instant::now();
        let outcome = wait(word, v, deadline);
        let now_ready = ready(word.load(Ordering::Acquire));
        if let Some(s) = spinner {
            s.after_sleep(t.elapsed(), now_ready);
        }
        if now_ready {
            return true;
        }
        if outcome == WaitOutcome::TimedOut {
            return false;
        }
    }
}

//! [`Condition`]: Python's `multiprocessing.Condition`.
//!
//! Waiters and notifications meet in a small shared state: a sequence word (the
//! futex) that every notify advances, and a pair of counters — registered waiters not
//! yet notified, and wake-up tokens granted but not yet taken. `notify(n)` moves
//! `min(n, waiting)` waiters to tokens, so a notification with nobody waiting is lost
//! and `notify(2)` wakes exactly two waiters. A waiter takes a token only if a notify
//! happened after it registered, so a newcomer never steals an older waiter's wake-up.
//! A waiter that times out withdraws its registration (or, if it was notified in the
//! meantime, takes its token and reports `true`).
use crate::error::CreateError;
use crate::raw::{Acquired, RawLock};
use crate::sys::{LockGuard, Shared, SharedState, release_save};
use crate::{LockResult, OwnerDied, RLock};
use mproc_core::futex;
use mproc_core::futex::Spinner;
use mproc_core::transfer::{Exporter, Importer, TransferError};
use mproc_core::{Deadline, OutOfBounds, Region, Transfer};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// A lock a [`Condition`] can be built over: [`Lock`](crate::Lock) or [`RLock`].
/// Sealed: only this crate implements it (a `Lock`'s raw state must stay out of safe
/// reach, see [`Lock::raw`](crate::Lock::raw)).
pub trait ConditionLock: Clone + Transfer {
    /// The raw lock underneath.
    type Raw: RawLock;
    /// The raw lock (callable only inside this crate).
    #[doc(hidden)]
    fn raw_lock(&self, _: Sealed) -> &Self::Raw;
}

/// The token that keeps [`ConditionLock::raw_lock`] inside this crate: it cannot be
/// named or built elsewhere.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct Sealed(());

/// The token, for this crate's own calls.
const SEALED: Sealed = Sealed(());

/// The shared state of a [`Condition`] (in-place form: see [`SharedState`]).
/// All-zero is a condition with no waiters.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RawCondition {
    seq: AtomicU32,
    sleepers: AtomicU32,
    /// Low half: registered waiters not yet notified; high half: tokens not yet taken.
    counts: AtomicU64,
    spin: Spinner,
    _pad: AtomicU32,
}

// SAFETY: #[repr(C)], atomics only; zero = no waiters, no tokens.
#[allow(unsafe_code)]
unsafe impl SharedState for RawCondition {}

const TOKEN: u64 = 1 << 32;

impl RawCondition {
    fn try_take_token(&self) -> bool {
        let mut c = self.counts.load(Ordering::Acquire);
        while c >> 32 > 0 {
            match self
                .counts
                .compare_exchange(c, c - TOKEN, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
        false
    }

    /// A timed-out waiter withdraws; returns whether it was notified after all.
    fn withdraw(&self, eligible: bool) -> bool {
        let mut c = self.counts.load(Ordering::Acquire);
        loop {
            let (waiting, tokens) = (c & 0xffff_ffff, c >> 32);
            let (new, notified) = if eligible && tokens > 0 {
                (c - TOKEN, true)
            } else if waiting > 0 {
                (c - 1, false)
            } else if tokens > 0 {
                (c - TOKEN, true)
            } else {
                return false;
            };
            match self
                .counts
                .compare_exchange(c, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return notified,
                Err(now) => c = now,
            }
        }
    }

    /// Waits for a token (the caller has registered and released the lock).
    fn wait_token(&self, my_seq: u32, deadline: Deadline) -> bool {
        let mut spun = false;
        loop {
            let s = self.seq.load(Ordering::SeqCst);
            if s != my_seq && self.try_take_token() {
                return true;
            }
            if deadline.is_expired() {
                return self.withdraw(s != my_seq);
            }
            if !spun {
                spun = true;
                if self.spin.spin(|| self.seq.load(Ordering::Acquire) != s) {
                    continue;
                }
            }
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            let t = std::time::Instant::now();
            futex::wait(&self.seq, s, deadline);
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
            self.spin
                .after_sleep(t.elapsed(), self.seq.load(Ordering::Acquire) != s);
        }
    }

    /// Grants up to `n` tokens; the caller holds the lock.
    fn notify(&self, n: u32) -> u32 {
        let mut c = self.counts.load(Ordering::Acquire);
        let granted = loop {
            let waiting = (c & 0xffff_ffff) as u32;
            let g = n.min(waiting);
            if g == 0 {
                return 0;
            }
            let new = c - u64::from(g) + u64::from(g) * TOKEN;
            match self
                .counts
                .compare_exchange(c, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break g,
                Err(now) => c = now,
            }
        };
        self.seq.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            // Wake everyone: woken waiters race for the tokens, the rest sleep again.
            // (Waking only `granted` could pick newcomers that may not take a token.)
            futex::wake_all(&self.seq);
        }
        granted
    }

    /// Number of registered waiters not yet notified.
    fn waiting(&self) -> u32 {
        (self.counts.load(Ordering::Relaxed) & 0xffff_ffff) as u32
    }
}

/// Why a condition wait or notify failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// The calling thread does not hold the condition's lock (Python: "cannot wait on
    /// un-acquired lock" / "cannot notify on un-acquired lock").
    NotOwner,
    /// While re-acquiring the lock after the wait, its holder was found dead. The caller
    /// holds the lock again; `notified` is what the wait would have returned.
    OwnerDied {
        /// The pid of the process that died holding the lock.
        pid: u32,
        /// Whether the wait had been notified (or the predicate held).
        notified: bool,
    },
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::NotOwner => f.write_str("the condition's lock is not held by the caller"),
            WaitError::OwnerDied { pid, .. } => write!(
                f,
                "the condition's lock was re-acquired from a holder (pid {pid}) that died"
            ),
        }
    }
}

impl std::error::Error for WaitError {}

/// Why a notify failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyError {
    /// The calling thread does not hold the condition's lock.
    NotOwner,
}

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cannot notify on un-acquired lock")
    }
}

impl std::error::Error for NotifyError {}

/// A process-shared condition variable: Python's `multiprocessing.Condition`.
///
/// Built over a [`Lock`](crate::Lock) or an [`RLock`] (the default, as in Python);
/// `wait`/`notify` require the caller to hold that lock.
///
/// ```
/// use mproc_sync::Condition;
/// use std::time::Duration;
/// let cond = Condition::new().unwrap();
/// let g = cond.lock().unwrap();
/// // Nobody notifies: times out.
/// assert_eq!(cond.wait_timeout(Duration::from_millis(10)), Ok(false));
/// assert_eq!(cond.notify(1), Ok(0)); // nobody waiting: lost
/// drop(g);
/// assert!(cond.notify_all().is_err()); // lock not held
/// ```
pub struct Condition<L: ConditionLock = RLock> {
    state: Shared<RawCondition>,
    lock: L,
}

impl Condition<RLock> {
    /// A condition over a new [`RLock`] (Python's default).
    ///
    /// # Errors
    /// The shared regions could not be allocated.
    pub fn new() -> Result<Self, CreateError> {
        Self::with_lock(RLock::new()?)
    }
}

impl<L: ConditionLock> Condition<L> {
    /// A condition over `lock` (which others may also use directly).
    ///
    /// # Errors
    /// The shared region could not be allocated.
    pub fn with_lock(lock: L) -> Result<Self, CreateError> {
        Ok(Condition {
            state: Shared::alloc("Condition")?,
            lock,
        })
    }

    /// A condition whose state lives at `offset` of `region` ([`RawCondition`], 24
    /// bytes, 8-aligned; zeroed memory is a fresh condition), over `lock`.
    ///
    /// # Errors
    /// `offset` is out of bounds or misaligned.
    pub fn in_region(region: Arc<Region>, offset: usize, lock: L) -> Result<Self, OutOfBounds> {
        Shared::at(region, offset)
            .map(|state| Condition { state, lock })
            .ok_or(OutOfBounds)
    }

    /// The underlying lock (Python: the `lock` argument; `acquire`/`release` go here).
    pub fn get_lock(&self) -> &L {
        &self.lock
    }

    /// Acquires the underlying lock. Python: `with cond:`.
    ///
    /// # Errors
    /// [`OwnerDied`] carrying the guard: acquired from a holder that died.
    pub fn lock(&self) -> LockResult<LockGuard<'_, L::Raw>> {
        let raw = self.lock.raw_lock(SEALED);
        match raw.lock() {
            Acquired::Clean => Ok(LockGuard::new(raw)),
            Acquired::OwnerDied { pid } => Err(OwnerDied::new(LockGuard::new(raw), pid)),
        }
    }

    fn wait_until(&self, deadline: Deadline) -> Result<bool, WaitError> {
        let raw = self.lock.raw_lock(SEALED);
        if !raw.is_owned_by_current() {
            return Err(WaitError::NotOwner);
        }
        let st = self.state.get();
        // Registered while holding the lock, as every notify is: serialised.
        st.counts.fetch_add(1, Ordering::SeqCst);
        let my_seq = st.seq.load(Ordering::SeqCst);
        let Some(saved) = release_save(raw) else {
            st.withdraw(false);
            return Err(WaitError::NotOwner);
        };
        let notified = st.wait_token(my_seq, deadline);
        match raw.lock_restore(saved) {
            Acquired::Clean => Ok(notified),
            Acquired::OwnerDied { pid } => Err(WaitError::OwnerDied { pid, notified }),
        }
    }

    /// Releases the lock, waits for a notify, re-acquires the lock. Python: `wait()`.
    ///
    /// # Errors
    /// [`WaitError::NotOwner`] if the lock is not held by the caller; `OwnerDied` if
    /// the lock had to be taken back from a dead holder.
    pub fn wait(&self) -> Result<(), WaitError> {
        self.wait_until(Deadline::never()).map(|_| ())
    }

    /// As [`Condition::wait`], for at most `timeout`; `Ok(false)` on timeout.
    /// Python: `wait(timeout)`.
    ///
    /// # Errors
    /// As [`Condition::wait`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, WaitError> {
        self.wait_until(Deadline::after(timeout))
    }

    /// Waits until `predicate()` holds, re-checking after each notify, with **one
    /// overall** `timeout` (`None`: no limit). Returns the predicate's last value.
    /// Python: `wait_for(predicate, timeout)`.
    ///
    /// # Errors
    /// As [`Condition::wait`].
    pub fn wait_for(
        &self,
        mut predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool, WaitError> {
        let deadline = Deadline::from_timeout(timeout);
        loop {
            if predicate() {
                return Ok(true);
            }
            if deadline.is_expired() {
                return Ok(false);
            }
            match self.wait_until(deadline) {
                Ok(_) => {}
                Err(WaitError::OwnerDied { pid, .. }) => {
                    return Err(WaitError::OwnerDied {
                        pid,
                        notified: predicate(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Wakes up to `n` waiters; returns how many were notified. A notify with nobody
    /// waiting is lost. Python: `notify(n)`.
    ///
    /// # Errors
    /// [`NotifyError::NotOwner`] if the lock is not held by the caller.
    pub fn notify(&self, n: u32) -> Result<u32, NotifyError> {
        if !self.lock.raw_lock(SEALED).is_owned_by_current() {
            return Err(NotifyError::NotOwner);
        }
        Ok(self.state.get().notify(n))
    }

    /// Wakes every waiter. Python: `notify_all()`.
    ///
    /// # Errors
    /// [`NotifyError::NotOwner`] if the lock is not held by the caller.
    pub fn notify_all(&self) -> Result<u32, NotifyError> {
        self.notify(u32::MAX)
    }

    /// Waiters registered and not yet notified (a snapshot).
    pub fn n_waiting(&self) -> u32 {
        self.state.get().waiting()
    }
}

impl<L: ConditionLock> Clone for Condition<L> {
    fn clone(&self) -> Self {
        Condition {
            state: self.state.clone(),
            lock: self.lock.clone(),
        }
    }
}

impl<L: ConditionLock> fmt::Debug for Condition<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &L::KIND)
            .field("waiting", &self.n_waiting())
            .finish()
    }
}

impl<L: ConditionLock> Transfer for Condition<L> {
    const KIND: &'static str = "mproc_sync::Condition";
    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        self.state.export(out)?;
        out.put_bytes(L::KIND.as_bytes());
        self.lock.export(out)
    }
    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        let state = Shared::import(input)?;
        let kind = input.get_bytes()?;
        if kind != L::KIND.as_bytes() {
            return Err(TransferError::KindMismatch {
                expected: L::KIND,
                found: String::from_utf8_lossy(kind).into_owned(),
            });
        }
        Ok(Condition {
            state,
            lock: L::import(input)?,
        })
    }
}

mproc_core::impl_handle_archive!([L: ConditionLock,] Condition<L>);

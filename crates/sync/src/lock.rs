//! [`Lock`] and [`RLock`]: Python's `multiprocessing.Lock` and `RLock`.
use crate::error::{CreateError, LockResult, OwnerDied, ReleaseError, TryLockError, TryLockResult};
use crate::raw::{Acquired, RLockReleaseError, RawLock, RawMutex, RawRLock};
use crate::sys::{LockGuard, Shared, SharedState};
use mproc_core::transfer::{Exporter, Importer, TransferError};
use mproc_core::{Deadline, OutOfBounds, Region, Transfer};
use std::sync::Arc;
use std::time::Duration;

/// Turns a raw acquisition into the `acquire`-style result.
#[inline]
fn acquired_bool(a: Option<Acquired>) -> Result<bool, OwnerDied<()>> {
    match a {
        None => Ok(false),
        Some(Acquired::Clean) => Ok(true),
        Some(Acquired::OwnerDied { pid }) => Err(OwnerDied::new((), pid)),
    }
}

#[inline(always)]
fn guard_result<'a, R: RawLock>(raw: &'a R, a: Acquired) -> LockResult<LockGuard<'a, R>> {
    match a {
        Acquired::Clean => Ok(LockGuard::new(raw)),
        Acquired::OwnerDied { pid } => Err(OwnerDied::new(LockGuard::new(raw), pid)),
    }
}

fn try_guard_result<'a, R: RawLock>(
    raw: &'a R,
    a: Option<Acquired>,
) -> TryLockResult<LockGuard<'a, R>> {
    match a {
        None => Err(TryLockError::WouldBlock),
        Some(Acquired::Clean) => Ok(LockGuard::new(raw)),
        Some(Acquired::OwnerDied { pid }) => Err(TryLockError::OwnerDied(OwnerDied::new(
            LockGuard::new(raw),
            pid,
        ))),
    }
}

macro_rules! lock_common {
    ($ty:ident, $raw:ty, $kind:literal, $name:literal) => {
        impl $ty {
            /// A new, unlocked lock in a small shared region of its own.
            ///
            /// # Errors
            /// The region could not be allocated.
            pub fn new() -> Result<Self, CreateError> {
                Ok($ty {
                    state: Shared::alloc($name)?,
                })
            }

            /// The lock whose state lives at `offset` of `region` (an in-place lock in
            /// memory you manage, e.g. beside your data in a shared segment). Zeroed
            /// memory is an unlocked lock. Every bit pattern is a valid state, so this
            /// is safe; the lock only works if every process uses the same offset.
            ///
            /// # Errors
            /// `offset` is out of bounds or not 4-aligned.
            pub fn in_region(region: Arc<Region>, offset: usize) -> Result<Self, OutOfBounds> {
                Shared::at(region, offset)
                    .map(|state| $ty { state })
                    .ok_or(OutOfBounds)
            }

            /// Bytes a lock occupies in a region (for [`Self::in_region`]).
            pub const STATE_SIZE: usize = size_of::<$raw>();

            #[inline]
            fn state(&self) -> &$raw {
                self.state.get()
            }

            /// Blocks until the lock is acquired. Python: `acquire()`.
            ///
            /// # Errors
            /// [`OwnerDied`]: the lock **was acquired**, from a holder that died holding it.
            #[inline]
            pub fn acquire(&self) -> Result<(), OwnerDied<()>> {
                match self.state().lock() {
                    Acquired::Clean => Ok(()),
                    Acquired::OwnerDied { pid } => Err(OwnerDied::new((), pid)),
                }
            }

            /// Acquires the lock if it is free. Python: `acquire(block=False)`.
            ///
            /// # Errors
            /// [`OwnerDied`]: the lock **was acquired**, from a holder that died holding it.
            #[inline]
            pub fn try_acquire(&self) -> Result<bool, OwnerDied<()>> {
                acquired_bool(self.state().try_lock())
            }

            /// Acquires the lock, waiting at most `timeout`; `Ok(false)` on timeout.
            /// Python: `acquire(timeout=t)`.
            ///
            /// # Errors
            /// [`OwnerDied`]: the lock **was acquired**, from a holder that died holding it.
            pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool, OwnerDied<()>> {
                acquired_bool(self.state().lock_until(Deadline::after(timeout)))
            }

            /// Blocks until the lock is acquired and returns a guard that releases it.
            /// Python: `with lock:`.
            ///
            /// # Errors
            /// [`OwnerDied`] carrying the guard: acquired from a holder that died.
            #[inline(always)]
            pub fn lock(&self) -> LockResult<LockGuard<'_, $raw>> {
                let raw = self.state();
                guard_result(raw, raw.lock())
            }

            /// As [`Self::lock`], without waiting.
            ///
            /// # Errors
            /// `WouldBlock` if held; `OwnerDied` (with the guard) if taken from a dead holder.
            pub fn try_lock(&self) -> TryLockResult<LockGuard<'_, $raw>> {
                let raw = self.state();
                try_guard_result(raw, raw.try_lock())
            }

            /// As [`Self::lock`], waiting at most `timeout`.
            ///
            /// # Errors
            /// `WouldBlock` on timeout; `OwnerDied` (with the guard) if taken from a dead holder.
            pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<LockGuard<'_, $raw>> {
                let raw = self.state();
                try_guard_result(raw, raw.lock_until(Deadline::after(timeout)))
            }

            /// Whether the lock is held by anyone. Python: `locked()`.
            #[inline]
            pub fn locked(&self) -> bool {
                self.state().is_locked()
            }
        }

        impl Clone for $ty {
            /// Another handle on the same lock (same shared memory).
            fn clone(&self) -> Self {
                $ty {
                    state: self.state.clone(),
                }
            }
        }

        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct($name)
                    .field("locked", &self.locked())
                    .field("owner", &self.state().owner())
                    .finish()
            }
        }

        impl Transfer for $ty {
            const KIND: &'static str = $kind;
            fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
                self.state.export(out)
            }
            fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
                Ok($ty {
                    state: Shared::import(input)?,
                })
            }
        }

        mproc_core::impl_handle_archive!($ty);

        impl crate::condition::ConditionLock for $ty {
            type Raw = $raw;
            fn raw_lock(&self, _: crate::condition::Sealed) -> &$raw {
                self.state()
            }
        }
    };
}

/// A process-shared lock: Python's `multiprocessing.Lock`.
///
/// Any thread of any process may release it, as in Python (use [`Lock::lock`] for a
/// scoped guard instead). A holder that dies while holding it is detected by the next
/// acquirer, who gets the lock with an [`OwnerDied`] report (see the crate docs).
/// Clones share the lock; it crosses into child processes as a process argument.
///
/// ```
/// use mproc_sync::Lock;
/// let lock = Lock::new().unwrap();
/// {
///     let _g = lock.lock().unwrap();
///     assert!(lock.locked());
///     assert_eq!(lock.try_acquire().unwrap(), false);
/// }
/// lock.acquire().unwrap();
/// lock.release().unwrap();
/// assert!(lock.release().is_err()); // not locked any more
/// ```
pub struct Lock {
    state: Shared<RawMutex>,
}

lock_common!(Lock, RawMutex, "mproc_sync::Lock", "Lock");

impl Lock {
    /// The raw lock (for generic code over [`RawLock`]).
    ///
    /// # Safety
    ///
    /// [`Lock::release`] releases the lock whoever holds it, so the returned state must
    /// not be relied on for exclusive access (e.g. by a `lock_api`-style mutex guarding
    /// data) while any `Lock` handle on the same state exists.
    ///
    /// Reaching it from safe code does not compile:
    ///
    /// ```compile_fail,E0133
    /// let lock = mproc_sync::Lock::new().unwrap();
    /// let _raw = lock.raw();
    /// ```
    #[inline]
    #[allow(unsafe_code)]
    pub unsafe fn raw(&self) -> &RawMutex {
        self.state()
    }

    /// The pid of the process holding the lock, if any.
    pub fn owner(&self) -> Option<u32> {
        self.state().owner()
    }

    /// Releases the lock, whoever acquired it. Python: `release()`.
    ///
    /// # Errors
    /// [`ReleaseError::NotLocked`] if the lock was not held.
    #[inline]
    #[allow(unsafe_code)]
    pub fn release(&self) -> Result<(), ReleaseError> {
        // SAFETY: a `Lock` guards no data of its own, and its raw state is reachable
        // only through `unsafe` `Lock::raw`, whose contract forbids relying on it for
        // exclusive access; its guards (`LockGuard`) give no access to anything either.
        if unsafe { self.state().release_any() } {
            Ok(())
        } else {
            Err(ReleaseError::NotLocked)
        }
    }
}

/// A process-shared recursive lock: Python's `multiprocessing.RLock`.
///
/// Owned by one thread of one process, which may acquire it again; it is released
/// when every acquisition has been released. A release by another thread is an error.
///
/// ```
/// use mproc_sync::RLock;
/// let r = RLock::new().unwrap();
/// let _a = r.lock().unwrap();
/// let _b = r.lock().unwrap(); // same thread: fine
/// let other = r.clone();
/// let t = std::thread::spawn(move || (other.try_acquire().unwrap(), other.release().is_err()));
/// assert_eq!(t.join().unwrap(), (false, true));
/// ```
pub struct RLock {
    state: Shared<RawRLock>,
}

lock_common!(RLock, RawRLock, "mproc_sync::RLock", "RLock");

impl RLock {
    /// The raw lock (for generic code over [`RawLock`]). Only its holding thread can
    /// release it, so it may back a `lock_api`-style mutex.
    #[inline]
    pub fn raw(&self) -> &RawRLock {
        self.state()
    }

    /// Releases one acquisition. Python: `release()`.
    ///
    /// # Errors
    /// [`RLockReleaseError::NotOwner`] if the calling thread does not hold the lock.
    #[inline]
    pub fn release(&self) -> Result<(), RLockReleaseError> {
        self.state().release_checked()
    }

    /// How many times the calling thread holds the lock (0 if it does not).
    pub fn recursion_count(&self) -> u32 {
        self.state().recursion_count()
    }
}

// Both raw states are `SharedState`; keep the trait in scope for docs links.
const _: fn() = || {
    fn assert_state<S: SharedState>() {}
    assert_state::<RawMutex>();
    assert_state::<RawRLock>();
};

//! [`Semaphore`] and [`BoundedSemaphore`]: Python's `multiprocessing.Semaphore` and
//! `BoundedSemaphore`.
use crate::error::CreateError;
use crate::sys::{Shared, SharedState};
use mproc_core::futex;
use mproc_core::futex::Spinner;
use mproc_core::transfer::{Exporter, Importer, TransferError};
use mproc_core::{Deadline, OutOfBounds, Region, Transfer};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The shared state of a semaphore (in-place form: see [`SharedState`]): the value
/// (the futex word), the number of sleepers, and the bound.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RawSemaphore {
    value: AtomicU32,
    sleepers: AtomicU32,
    bound: AtomicU32,
    spin: Spinner,
}

// SAFETY: #[repr(C)], atomics only; zero = value 0, unbounded.
#[allow(unsafe_code)]
unsafe impl SharedState for RawSemaphore {}

/// Why a semaphore could not be released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SemaphoreReleaseError {
    /// A [`BoundedSemaphore`] would rise above its initial value (Python: `ValueError:
    /// Semaphore released too many times`), or a [`Semaphore`] above `u32::MAX`.
    TooManyReleases,
}

impl fmt::Display for SemaphoreReleaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("semaphore released too many times")
    }
}

impl std::error::Error for SemaphoreReleaseError {}

impl RawSemaphore {
    /// Sets the initial value, and whether releases may raise the value above it.
    /// Call before sharing.
    pub fn init(&self, value: u32, bounded: bool) {
        self.value.store(value, Ordering::Release);
        let bound = if bounded { value.saturating_add(1) } else { 0 };
        self.bound.store(bound, Ordering::Release);
    }

    /// Takes one unit, waiting until `deadline`; `false` on timeout.
    pub fn acquire_until(&self, deadline: Deadline) -> bool {
        if self.try_take() {
            return true;
        }
        if deadline.remaining().is_some_and(|d| d.is_zero()) {
            return false;
        }
        if self.spin.spin(|| self.try_take()) {
            return true;
        }
        loop {
            if self.try_take() {
                return true;
            }
            if deadline.is_expired() {
                return false;
            }
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            let t = std::time::Instant::now();
            futex::wait(&self.value, 0, deadline);
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
            self.spin
                .after_sleep(t.elapsed(), self.value.load(Ordering::Relaxed) > 0);
        }
    }

    #[inline]
    fn try_take(&self) -> bool {
        let mut v = self.value.load(Ordering::Relaxed);
        while v > 0 {
            match self
                .value
                .compare_exchange_weak(v, v - 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => v = now,
            }
        }
        false
    }

    /// Adds `n` units, waking sleepers.
    ///
    /// # Errors
    /// The value would exceed the bound (or `u32::MAX`); nothing is added then.
    pub fn release(&self, n: u32) -> Result<(), SemaphoreReleaseError> {
        let bound = match self.bound.load(Ordering::Relaxed) {
            0 => u32::MAX,
            b => b - 1,
        };
        let mut v = self.value.load(Ordering::Relaxed);
        loop {
            let new = v
                .checked_add(n)
                .filter(|&x| x <= bound)
                .ok_or(SemaphoreReleaseError::TooManyReleases)?;
            match self
                .value
                .compare_exchange_weak(v, new, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            futex::wake(&self.value, n);
        }
        Ok(())
    }

    /// The current value.
    pub fn value(&self) -> u32 {
        self.value.load(Ordering::Relaxed)
    }
}

macro_rules! semaphore {
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $bounded:literal) => {
        $(#[$doc])*
        pub struct $ty {
            state: Shared<RawSemaphore>,
        }

        impl $ty {
            /// A semaphore with initial value `value`, in a shared region of its own.
            ///
            /// # Errors
            /// The region could not be allocated.
            pub fn new(value: u32) -> Result<Self, CreateError> {
                let state: Shared<RawSemaphore> = Shared::alloc(stringify!($ty))?;
                state.get().init(value, $bounded);
                Ok($ty { state })
            }

            /// A semaphore whose state lives at `offset` of `region` and is
            /// (re)initialised to `value` now: do this once, before other processes use it.
            ///
            /// # Errors
            /// `offset` is out of bounds or not 4-aligned.
            pub fn in_region(region: Arc<Region>, offset: usize, value: u32) -> Result<Self, OutOfBounds> {
                let state: Shared<RawSemaphore> = Shared::at(region, offset).ok_or(OutOfBounds)?;
                state.get().init(value, $bounded);
                Ok($ty { state })
            }

            /// Takes one unit, blocking while the value is 0. Python: `acquire()`.
            pub fn acquire(&self) {
                while !self.state.get().acquire_until(Deadline::never()) {}
            }

            /// Takes one unit if available. Python: `acquire(block=False)`.
            pub fn try_acquire(&self) -> bool {
                self.state.get().acquire_until(Deadline::now())
            }

            /// Takes one unit, waiting at most `timeout`. Python: `acquire(timeout=t)`.
            pub fn acquire_timeout(&self, timeout: Duration) -> bool {
                self.state.get().acquire_until(Deadline::after(timeout))
            }

            /// Takes one unit and returns a guard that gives it back on drop.
            pub fn permit(&self) -> SemaphorePermit<'_> {
                self.acquire();
                SemaphorePermit { sem: self.state.get() }
            }

            /// Gives one unit back. Python: `release()`.
            ///
            /// # Errors
            /// [`SemaphoreReleaseError::TooManyReleases`] above the bound (the initial
            /// value of a `BoundedSemaphore`, `u32::MAX` for a `Semaphore`).
            pub fn release(&self) -> Result<(), SemaphoreReleaseError> {
                self.state.get().release(1)
            }

            /// Gives `n` units back at once. Python: `release(n)`.
            ///
            /// # Errors
            /// As [`Self::release`]; nothing is released then.
            pub fn release_n(&self, n: u32) -> Result<(), SemaphoreReleaseError> {
                self.state.get().release(n)
            }

            /// The current value. Python: `get_value()`.
            pub fn get_value(&self) -> u32 {
                self.state.get().value()
            }
        }

        impl Clone for $ty {
            /// Another handle on the same semaphore.
            fn clone(&self) -> Self {
                $ty { state: self.state.clone() }
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty)).field("value", &self.get_value()).finish()
            }
        }

        impl Transfer for $ty {
            const KIND: &'static str = $kind;
            fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
                self.state.export(out)
            }
            fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
                Ok($ty { state: Shared::import(input)? })
            }
        }

        mproc_core::impl_handle_archive!($ty);
    };
}

semaphore!(
    /// A process-shared counting semaphore: Python's `multiprocessing.Semaphore`.
    ///
    /// A semaphore has no owner: a unit taken by a process that is then killed is never
    /// given back (as in Python). Unlike a [`Lock`](crate::Lock), nothing reports it.
    ///
    /// ```
    /// use mproc_sync::Semaphore;
    /// let s = Semaphore::new(2).unwrap();
    /// assert!(s.try_acquire() && s.try_acquire());
    /// assert!(!s.try_acquire());
    /// s.release().unwrap();
    /// assert_eq!(s.get_value(), 1);
    /// ```
    Semaphore,
    "mproc_sync::Semaphore",
    false
);

semaphore!(
    /// A semaphore that may not rise above its initial value: Python's
    /// `multiprocessing.BoundedSemaphore`.
    ///
    /// ```
    /// use mproc_sync::BoundedSemaphore;
    /// let s = BoundedSemaphore::new(1).unwrap();
    /// assert!(s.release().is_err()); // already at its bound
    /// let _p = s.permit();
    /// assert_eq!(s.get_value(), 0);
    /// ```
    BoundedSemaphore,
    "mproc_sync::BoundedSemaphore",
    true
);

/// One unit of a semaphore, given back on drop.
#[must_use = "the unit is given back as soon as the permit is dropped"]
pub struct SemaphorePermit<'a> {
    sem: &'a RawSemaphore,
}

impl Drop for SemaphorePermit<'_> {
    fn drop(&mut self) {
        // Cannot exceed the bound: this permit's unit was taken from the semaphore
        // (unless someone over-released meanwhile, which `release` refused).
        let _ = self.sem.release(1);
    }
}

impl fmt::Debug for SemaphorePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SemaphorePermit")
    }
}

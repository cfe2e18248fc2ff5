//! [`Event`]: Python's `multiprocessing.Event`.
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

/// The shared state of an [`Event`] (in-place form: see [`SharedState`]): the flag
/// (the futex word), the number of sleepers, a spin budget. All-zero is a clear event.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RawEvent {
    flag: AtomicU32,
    sleepers: AtomicU32,
    spin: Spinner,
}

// SAFETY: #[repr(C)], atomics only; zero = clear, no sleepers.
#[allow(unsafe_code)]
unsafe impl SharedState for RawEvent {}

impl RawEvent {
    /// Sets the flag and wakes every waiter (no system call when nobody sleeps).
    #[inline]
    pub fn set(&self) {
        if self.flag.swap(1, Ordering::SeqCst) == 0 && self.sleepers.load(Ordering::SeqCst) > 0 {
            futex::wake_all(&self.flag);
        }
    }

    /// Clears the flag.
    #[inline]
    pub fn clear(&self) {
        self.flag.store(0, Ordering::Release);
    }

    /// Whether the flag is set.
    #[inline]
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire) != 0
    }

    /// Waits until the flag is set or `deadline` passes; returns the flag.
    pub fn wait_until(&self, deadline: Deadline) -> bool {
        if self.is_set() {
            return true;
        }
        if deadline.remaining().is_some_and(|d| d.is_zero()) {
            return false;
        }
        if self.spin.spin(|| self.is_set()) {
            return true;
        }
        loop {
            if self.is_set() {
                return true;
            }
            if deadline.is_expired() {
                return false;
            }
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            let t = std::time::Instant::now();
            futex::wait(&self.flag, 0, deadline);
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
            self.spin.after_sleep(t.elapsed(), self.is_set());
        }
    }
}

/// A process-shared flag that processes can wait on: Python's `multiprocessing.Event`.
///
/// Waits spin briefly (adaptively, boundedly) before sleeping on a futex, and `set`
/// skips the system call when nobody sleeps, so a hand-over between two running
/// processes takes well under the ~13 µs of a sleeping wake-up.
///
/// ```
/// use mproc_sync::Event;
/// use std::time::Duration;
/// let e = Event::new().unwrap();
/// assert!(!e.wait_timeout(Duration::from_millis(5)));
/// let e2 = e.clone();
/// std::thread::spawn(move || e2.set());
/// e.wait();
/// assert!(e.is_set());
/// ```
pub struct Event {
    state: Shared<RawEvent>,
}

impl Event {
    /// A new, clear event in a shared region of its own.
    ///
    /// # Errors
    /// The region could not be allocated.
    pub fn new() -> Result<Self, CreateError> {
        Ok(Event {
            state: Shared::alloc("Event")?,
        })
    }

    /// An event whose state lives at `offset` of `region` ([`RawEvent`], 12 bytes,
    /// 4-aligned; zeroed memory is a clear event).
    ///
    /// # Errors
    /// `offset` is out of bounds or misaligned.
    pub fn in_region(region: Arc<Region>, offset: usize) -> Result<Self, OutOfBounds> {
        Shared::at(region, offset)
            .map(|state| Event { state })
            .ok_or(OutOfBounds)
    }

    /// Sets the flag and wakes every waiter. Python: `set()`.
    #[inline]
    pub fn set(&self) {
        self.state.get().set()
    }

    /// Clears the flag. Python: `clear()`.
    #[inline]
    pub fn clear(&self) {
        self.state.get().clear()
    }

    /// Whether the flag is set. Python: `is_set()`.
    #[inline]
    pub fn is_set(&self) -> bool {
        self.state.get().is_set()
    }

    /// Blocks until the flag is set. Python: `wait()`.
    pub fn wait(&self) {
        while !self.state.get().wait_until(Deadline::never()) {}
    }

    /// Waits at most `timeout`; returns whether the flag is set. Python: `wait(timeout)`.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.state.get().wait_until(Deadline::after(timeout))
    }
}

impl Clone for Event {
    /// Another handle on the same event.
    fn clone(&self) -> Self {
        Event {
            state: self.state.clone(),
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("is_set", &self.is_set())
            .finish()
    }
}

impl Transfer for Event {
    const KIND: &'static str = "mproc_sync::Event";
    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        self.state.export(out)
    }
    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        Ok(Event {
            state: Shared::import(input)?,
        })
    }
}

mproc_core::impl_handle_archive!(Event);

//! Process-shared synchronisation: Python's `multiprocessing` `Lock`, `RLock`,
//! `Semaphore`, `BoundedSemaphore`, `Condition`, `Event` and `Barrier`, plus a typed
//! [`Mutex<T>`] for plain data in shared memory.
//!
//! | Python | mproc-sync |
//! |---|---|
//! | `Lock()` / `acquire()` / `release()` / `with lock:` | [`Lock::new`] / [`Lock::acquire`] / [`Lock::release`] / [`Lock::lock`] (guard) |
//! | `RLock()` | [`RLock`] |
//! | `Semaphore(n)` / `BoundedSemaphore(n)` / `get_value()` | [`Semaphore`] / [`BoundedSemaphore`] / `get_value()` |
//! | `Condition(lock)` / `wait` / `wait_for` / `notify(n)` / `notify_all` | [`Condition`] |
//! | `Event()` / `set` / `clear` / `is_set` / `wait(t)` | [`Event`] |
//! | `Barrier(parties, action, timeout)` / `wait` / `abort` / `reset` | [`Barrier`] |
//! | `Value('i', 0, lock=True)` + `with v.get_lock(): v.value += 1` | [`Mutex<T>`]: `*m.lock()? += 1` |
//!
//! Every primitive is a `#[repr(C)]` struct of atomics in shared memory; waiting is a
//! shared futex on one of its words (never a private futex: that silently misses
//! wake-ups from other processes — which is also why `parking_lot`, fine inside one
//! process, is not used here). Uncontended operations never enter the kernel. Event,
//! condition, semaphore and barrier waits spin briefly (bounded in time, adapting to
//! how soon their partner answers) before sleeping, and wakers skip the system call
//! when nobody sleeps; a contended lock's waiter sleeps at once, since spinning would
//! slow the holder down.
//!
//! Each primitive comes in two forms:
//! - **owned**: `Lock::new()` allocates a small region of its own (a sealed memfd,
//!   freed by the kernel when the last process lets go). Clones share it; it crosses
//!   into child processes inside their arguments and over a `Connection`, because it
//!   implements [`mproc_core::Transfer`].
//! - **in place**: the raw states ([`RawMutex`], [`RawRLock`], [`RawSemaphore`],
//!   [`RawCondition`], [`RawEvent`], [`RawBarrier`]) can live at an offset of memory you
//!   provide, through [`SharedState::in_region`] or the `unsafe`
//!   [`SharedState::from_ptr`]; the owned types also have `in_region` constructors.
//!
//! # A holder that dies, or panics
//!
//! A guard dropped during a panic releases its lock as poisoned: the next acquirer gets
//! [`OwnerDied`] at once, as std's `Mutex` poisons.
//!
//! A lock word holds its owner's pid. A waiter sleeps on the futex, first for 1 ms;
//! if the same process still holds the lock, the waiter's process watches the holder's
//! pidfd (one `mproc-watcher` thread per process, blocked in `epoll_wait`), which
//! wakes the waiter the moment the holder exits. The lock is then taken over by the next
//! acquirer, which gets [`OwnerDied`] (carrying the guard, like std's `PoisonError`)
//! and can recover. A waiter behind a live holder does not wake periodically; the
//! uncontended lock and unlock make no system call. Limits:
//! - **pid reuse**: if the dead owner's pid is given to a new process before a waiter
//!   opens its pidfd, the waiter waits until that process exits too (a delay, never
//!   two owners);
//! - a waiter whose process cannot open a pidfd (no fd left) or start its watcher
//!   thread falls back to looking at the holder every 5 ms;
//! - a pid is judged only in its own pid namespace: handles are refused on arrival from
//!   another one (`TransferError::ForeignPidNamespace`), and a process forked into a new
//!   one is never declared dead, nor declares anyone dead (waiters then wait);
//! - a process killed while *waiting* on a [`Condition`] leaves its registration
//!   behind: a later `notify(n)` may spend one of its `n` wake-ups on it.
//!
//! ```
//! use mproc_sync::{Lock, Mutex, Event};
//! let lock = Lock::new().unwrap();
//! {
//!     let _guard = lock.lock().unwrap(); // Python: `with lock:`
//! }
//! let counter = Mutex::new(0u64).unwrap();
//! *counter.lock().unwrap() += 1;
//! let ev = Event::new().unwrap();
//! ev.set();
//! assert!(ev.is_set());
//! ```
#![deny(unsafe_code)]

mod barrier;
mod condition;
mod error;
mod event;
mod lock;
mod mutex;
mod raw;
mod semaphore;
#[allow(unsafe_code)]
mod sys;

pub use barrier::{Barrier, BarrierBuilder, BrokenBarrier, MAX_PARTIES, RawBarrier};
pub use condition::{Condition, ConditionLock, NotifyError, RawCondition, WaitError};
pub use error::{CreateError, LockResult, OwnerDied, ReleaseError, TryLockError, TryLockResult};
pub use event::{Event, RawEvent};
pub use lock::{Lock, RLock};
pub use mutex::Mutex;
pub use raw::{Acquired, RLockReleaseError, RawLock, RawMutex, RawRLock};
pub use semaphore::{
    BoundedSemaphore, RawSemaphore, Semaphore, SemaphorePermit, SemaphoreReleaseError,
};
pub use sys::{LockGuard, MutexGuard, SharedState};

/// The plain-data bound of [`Mutex<T>`] (re-exported from `bytemuck`): derive it with
/// `#[derive(Clone, Copy, Pod, Zeroable)] #[repr(C)]`.
pub use bytemuck::{Pod, Zeroable};

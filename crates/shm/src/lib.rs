//! Shared memory for mproc: Python's `shared_memory.SharedMemory`, `Value`, `Array`,
//! `RawValue` and `RawArray`, typed, sound while other processes write, and leak-proof.
//!
//! | Python | mproc-shm |
//! |---|---|
//! | `SharedMemory(create=True, size=n)` | [`SharedMemory::create(n)`](SharedMemory::create) |
//! | `SharedMemory(name, create=True, size=n)` | [`SharedMemory::create_named`] |
//! | `SharedMemory(name)` | [`SharedMemory::open`] |
//! | `shm.buf[a:b]` | [`read`](SharedMemory::read) / [`write`](SharedMemory::write) / [`view`](SharedMemory::view) (copies), [`atomic`](SharedMemory::atomic), `unsafe` [`as_slice`](SharedMemory::as_slice) |
//! | `shm.close()` / `shm.unlink()` | `drop(shm)` / [`shm.unlink()`](SharedMemory::unlink) |
//! | `Value('d', 0.0)` / `RawValue('d', 0.0)` | [`Value::new(0.0f64)`](Value::new) / [`RawValue::new`] |
//! | `Array('i', 10)` / `Array('i', range(10))` | [`Array::zeroed(10)`](Array::zeroed) / [`Array::from_slice`] |
//! | `with v.get_lock(): v.value += 1` | `*v.lock().unwrap() += 1` ([`Value::lock`]) |
//! | `ShareableList(['a', 1, None])` | [`ShareableList::new`] with [`Item`]s |
//!
//! # Nothing leaks
//!
//! A named segment lives in `/dev/shm` until someone unlinks it, even after every
//! process has exited. mproc-shm makes that safe by default: the first
//! [`SharedMemory::create`] of a process starts a small **resource tracker** process
//! that holds one end of a socket; each name the process creates is registered there,
//! and unregistered by [`SharedMemory::unlink`]. When the creating process ends in any
//! way (return, panic, abort, `SIGKILL`) the socket closes and the tracker unlinks every
//! name still registered. A process that only opened a segment never unlinks it: only
//! its creator's tracker does (CPython's gh-82300 gets this wrong).
//!
//! [`Value`], [`Array`], [`RawValue`] and [`RawArray`] are anonymous (memfd): the
//! kernel frees them when the last process holding them exits.
//!
//! ```
//! use mproc_shm::{RawArray, SharedMemory};
//! let block = SharedMemory::create(1024)?;
//! block.view::<u32>(0, 256)?.write_from(0, &[7, 8, 9])?;
//! let seen = SharedMemory::open(block.name())?; // another process would do this
//! assert_eq!(seen.read_at::<u32>(4)?, 8);
//! block.unlink()?;
//!
//! let squares = RawArray::from_slice(&[0u64, 1, 4, 9])?;
//! assert_eq!(squares.iter().sum::<u64>(), 14);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_code)]

mod element;
mod error;
mod list;
mod locked;
mod manager;
mod name;
mod raw;
mod segment;
#[allow(unsafe_code)]
mod sys;
mod tracker;

pub use element::Element;
pub use error::{
    AccessError, AllocError, CreateError, CreateOrOpenError, IndexError, NameError, OpenError,
    UnlinkError,
};
pub use list::{Item, ListError, ListOpenError, ShareableList};
pub use locked::{
    Acquisition, Array, ArrayError, ArrayGuard, HolderDied, ShmLock, Value, ValueGuard,
};
pub use manager::SegmentScope;
pub use raw::{RawArray, RawValue};
pub use segment::{SharedMemory, SharedMemoryBuilder, View, unlink};
pub use sys::ShmAtomic;
pub use tracker::{start_tracker, tracker_pid};

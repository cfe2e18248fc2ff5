//! The shared vocabulary of mproc: what more than one mproc crate needs, nothing else.
//!
//! - [`Region`]: a shared mapping (an anonymous sealed memfd, or any shareable fd) that
//!   can cross into another process.
//! - [`Transfer`]: how a handle (fd, region, lock, queue …) crosses into another process
//!   under every start method; [`Handle`] and [`impl_handle_archive!`] let handles sit
//!   inside rkyv messages.
//! - [`codec`]: rkyv messages with out-of-band fds, checked on receipt; frame headers.
//! - [`futex`]: process-shared futex wait/wake and the bounded adaptive spin before a sleep.
//! - [`Pidfd`]: wait for a process with a timeout; tell a dead process from a live one.
//! - [`Deadline`]: one overall deadline shared by a chain of waits.
//! - [`pid`]: the calling process's pid, cached and fork-safe.
//! - [`watch`]: the kernel's notice that a lock holder died, delivered to a futex word.
//! - [`code`]: functions carried to another process as offsets, checked on arrival.
//! - [`scm`]: fd passing over Unix sockets.
//! - [`logger`]: mproc's own logger (Python's `multiprocessing.get_logger()` and
//!   `log_to_stderr()`).
//! - `Serde<T>` (feature `serde`): any serde type as a message, in bincode's format.
//!
//! ```
//! use mproc_core::{codec, Region};
//! let r = Region::new(4096).unwrap();
//! let enc = codec::encode(&(1u8, r)).unwrap();
//! let (_one, _r2): (u8, Region) = codec::decode(&enc.bytes, enc.fds).unwrap();
//! ```
#![deny(unsafe_code)]

pub mod code;
pub mod codec;
mod deadline;
pub mod futex;
#[allow(unsafe_code)]
mod image;
pub mod logger;
#[allow(unsafe_code)]
pub mod pid;
mod pidfd;
#[allow(unsafe_code)]
mod region;
pub mod scm;
#[cfg(feature = "serde")]
mod serde;
pub mod transfer;
pub mod watch;

pub use codec::{Decode, Encode, Message};
pub use deadline::Deadline;
pub use pidfd::{Pidfd, process_alive};
pub use region::{OutOfBounds, Region, atomic_copy};
#[cfg(feature = "serde")]
pub use serde::{Serde, SerdeResolver};
pub use transfer::{Handle, Transfer, TransferError};

#[doc(hidden)]
pub use rkyv;

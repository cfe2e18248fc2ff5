//! mproc: Python's `multiprocessing`, done right in Rust.
//!
//! This umbrella crate re-exports the mproc crates; each can also be used alone.
//!
//! | Python | mproc crate |
//! |---|---|
//! | `Process`, `get_context`, `current_process` | [`spawn`] (`mproc-spawn`) |
//! | `Lock`, `RLock`, `Semaphore`, `Condition`, `Event`, `Barrier` | [`sync`] (`mproc-sync`) |
//! | `shared_memory.SharedMemory`, `Value`, `Array` | [`shm`] (`mproc-shm`) |
//! | `Pipe`, `Queue`, `SimpleQueue`, `JoinableQueue`, `connection` | [`channel`] (`mproc-channel`) |
//! | `Pool`, `pool.ThreadPool` (`dummy.Pool`), `concurrent.futures.ProcessPoolExecutor` | [`pool`] (`mproc-pool`) |
//! | `logging.handlers.QueueHandler`/`QueueListener`, `%(processName)s` | [`logging`] (`mproc-log`) |
//! | `Manager`, `managers.BaseManager`, `SyncManager` (and its `Pool` proxy) | [`manager`] (`mproc-manager`) |
//! | `get_logger()`, `log_to_stderr(level)`, `util.SUBDEBUG` … | [`get_logger`], [`log_to_stderr`], [`LogLevel`] (`mproc_core::logger`) |
//!
//! See `docs/guide.md` for the full Python-to-Rust map.
//!
//! # Messages
//!
//! Arguments, results and queue/pipe messages are rkyv types. This crate re-exports
//! rkyv and its derives, so no rkyv dependency of your own (of the matching version) is
//! needed: derive them through `mproc` and point them at the re-export.
//!
//! ```
//! use mproc::spawn::Process;
//!
//! #[derive(mproc::Archive, mproc::Serialize, mproc::Deserialize, Debug, PartialEq)]
//! #[rkyv(crate = mproc::rkyv)]
//! struct Job {
//!     id: u32,
//!     words: Vec<String>,
//! }
//!
//! fn count(job: Job) -> (u32, usize) {
//!     (job.id, job.words.len())
//! }
//!
//! let job = Job { id: 7, words: vec!["to".into(), "be".into()] };
//! let mut p = Process::new(count, job);
//! p.start().unwrap();
//! assert_eq!(p.join().unwrap(), (7, 2));
//! ```
//!
//! A type that is not a message is refused at compile time ("`NotAMessage` is not an
//! mproc message"), with a note saying how to make it one:
//!
//! ```compile_fail
//! struct NotAMessage(u8);
//! fn f(x: NotAMessage) -> u8 { x.0 }
//! let _p = mproc::spawn::Process::new(f, NotAMessage(1));
//! ```
//!
//! With the feature `serde`, `Serde<T>` carries any serde type
//! (`#[derive(serde::Serialize, serde::Deserialize)]`) instead.
//!
//! # Imports
//!
//! [`prelude`] brings the everyday names into scope at once; the crates' own globs
//! (`use mproc::pool::*; use mproc::channel::*; …`) can also be combined, their names do
//! not clash (the pool's `ResultError`, `TaskFuture` and `wait_futures` are named apart
//! from the channel's `GetError` and `wait` and from `std::future::Future`).
//!
//! ```no_run
//! use mproc::prelude::*;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let pool = Pool::new(2).unwrap();
//! assert_eq!(pool.map(square, 0..4u64).unwrap(), vec![0, 1, 4, 9]);
//! let (a, b) = Pipe(true).unwrap();
//! a.send(&String::from("hi")).unwrap();
//! assert_eq!(b.recv::<String>().unwrap(), "hi");
//! ```

#[doc(inline)]
pub use mproc_channel as channel;
#[doc(inline)]
pub use mproc_core as core;
#[doc(no_inline)]
pub use mproc_core::Message;
#[cfg(feature = "serde")]
#[doc(inline)]
pub use mproc_core::Serde;
#[doc(inline)]
pub use mproc_core::logger::{Level as LogLevel, Logger, get_logger, log_to_stderr};
/// The rkyv crate mproc's messages use (derive through `mproc::{Archive, Serialize,
/// Deserialize}` with `#[rkyv(crate = mproc::rkyv)]`).
pub use mproc_core::rkyv;
#[doc(no_inline)]
pub use mproc_core::rkyv::{Archive, Deserialize, Serialize};
#[doc(inline)]
pub use mproc_log as logging;
#[doc(inline)]
pub use mproc_manager as manager;
#[doc(inline)]
pub use mproc_pool as pool;
#[doc(inline)]
pub use mproc_shm as shm;
#[doc(inline)]
pub use mproc_spawn as spawn;
#[doc(inline)]
pub use mproc_sync as sync;

/// The everyday names of every mproc crate, for `use mproc::prelude::*`: processes,
/// locks and events, shared memory, pipes and queues, pools, and the message traits.
/// Error types stay in their crates (`mproc::channel::GetError`,
/// `mproc::pool::TaskError` …).
pub mod prelude {
    #[doc(no_inline)]
    pub use mproc_channel::{
        Client, Connection, JoinableQueue, Listener, Pipe, Queue, SimpleQueue, wait,
    };
    #[doc(no_inline)]
    pub use mproc_core::logger::{get_logger, log_to_stderr};
    #[doc(no_inline)]
    pub use mproc_core::{Deadline, Decode, Encode, Handle, Message, Region, Transfer};
    #[doc(no_inline)]
    pub use mproc_pool::{
        AsyncResult, Executor, IMap, MapResult, Pool, StarFn, TaskFuture, ThreadPool, wait_futures,
    };
    #[doc(no_inline)]
    pub use mproc_shm::{Array, ShareableList, SharedMemory, Value};
    #[doc(no_inline)]
    pub use mproc_spawn::{
        Context, Process, StartMethod, active_children, cpu_count, current_process, get_context,
        parent_process,
    };
    #[doc(no_inline)]
    pub use mproc_sync::{Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore};
}

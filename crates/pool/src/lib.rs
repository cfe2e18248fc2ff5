//! Process pools for mproc: Python's `multiprocessing.Pool` and
//! `concurrent.futures.ProcessPoolExecutor`, that never hang.
//!
//! ```no_run
//! use mproc_pool::Pool;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let pool = Pool::new(4).unwrap();
//! assert_eq!(pool.map(square, 0..6u64).unwrap(), vec![0, 1, 4, 9, 16, 25]);
//! let r = pool.apply_async(square, 7);
//! assert_eq!(r.get().unwrap(), 49);
//! ```
//!
//! - [`Pool`] (built with [`Pool::builder`]): `apply`, `apply_async`, `map`,
//!   `map_async`, `imap`, `imap_unordered`, `starmap`, `starmap_async`, `map_with`
//!   (Python's `functools.partial` case), `map_results` (every item's outcome), `close`,
//!   `terminate`, `join`.
//! - [`AsyncResult`], [`MapResult`], [`IMap`]: Python's result objects; `AsyncResult`
//!   is also a `std::future::Future`.
//! - [`Executor`] (`ProcessPoolExecutor`), its [`Future`], [`as_completed`], [`wait`].
//!
//! Task functions are plain `fn`s (no captures); arguments and results are rkyv
//! messages ([`mproc_core::Message`]), handles (locks, queues, regions…) included.
//!
//! What it does beyond CPython:
//! - A worker that dies mid-task (SIGKILL, abort, segfault, OOM kill) fails only the
//!   item it was running, with [`TaskError::WorkerLost`] naming its pid and signal.
//!   Items it held but had not started, and items whose results it had computed but
//!   not yet delivered, run again on another worker. It is replaced; the pool goes on.
//! - [`PoolBuilder::task_timeout`]: a task past its limit has its worker killed and
//!   replaced and fails with [`TaskError::TimedOut`].
//! - A task that panics fails alone, carrying its panic message.
//! - `terminate()` returns promptly whatever is pending; `get_timeout` returns on time.
//! - `imap`/`imap_unordered` pull their input lazily, with bounded memory.
//!
//! Feature `progress`: `Pool::map_progress` and `IMap::progress`, progress bars
//! (indicatif) as Python users have with tqdm.
#![deny(unsafe_code)]

mod ctrl_c;
mod dispatch;
mod error;
mod executor;
mod func;
mod job;
mod pool;
#[cfg(feature = "progress")]
mod progress;
mod result;
#[allow(unsafe_code)]
mod sys;
mod wire;
mod worker;

pub use error::{GetError, MapError, PoolError, TaskError};
pub use executor::{Executor, Future, ReturnWhen, as_completed, wait};
pub use pool::{Pool, PoolBuilder, default_chunksize};
pub use result::{AsyncResult, IMap, MapResult};

#[doc(no_inline)]
pub use mproc_spawn::StartMethod;

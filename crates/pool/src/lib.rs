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
//!   `map_async`, `imap`, `imap_unordered`, `starmap` / `starmap_async` / `istarmap`
//!   (any arity up to 12, [`StarFn`]), `map_with`
//!   (Python's `functools.partial` case), `map_results` (every item's outcome), `close`,
//!   `terminate`, `join`.
//! - [`AsyncResult`], [`MapResult`], [`IMap`]: Python's result objects; `AsyncResult`
//!   is also a `std::future::Future`.
//! - [`Executor`] (`ProcessPoolExecutor`), its [`TaskFuture`], [`as_completed`], [`wait_futures`].
//! - [`ThreadPool`] (Python's `multiprocessing.pool.ThreadPool`, `multiprocessing.dummy.Pool`):
//!   the same API over threads of this process, for closures over any `Send` values;
//!   [`ThreadAsyncResult`], [`ThreadMapResult`], [`ThreadIMap`] are its result objects.
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
//!
//! # Drop and Ctrl-C
//!
//! Dropping a [`Pool`] terminates it, as leaving Python's `with Pool() as p:` block
//! does; [`Pool::close`] + [`Pool::join`] let the queue drain first. Dropping an
//! [`Executor`] is `shutdown(wait=True)`. SIGINT keeps its default action unless
//! [`PoolBuilder::terminate_on_ctrl_c`] is set: either way the program ends as a
//! Ctrl-C'd program does and no worker is left behind (workers carry a parent-death
//! signal; with the option, they are killed and reaped first).
//!
//! # How it works
//!
//! Each worker is a process (mproc-spawn, any start method) joined to the parent by its
//! own Unix stream socketpair. One dispatcher per pool owns the workers: it hands each
//! one chunks (a few at a time, more when tasks are short), reads results, and watches
//! every socket and every worker's pidfd, so it always knows which items each worker
//! holds. It runs on the pool's own thread, or on a caller's thread while that caller
//! waits for a result: then a round trip wakes no other thread, and both the caller and
//! the worker spin briefly (adaptively) on doorbell words in shared memory before they
//! sleep. A worker publishes the item it is running in a small shared region,
//! which names the culprit exactly when it dies or overruns its time limit. Functions
//! travel as offsets from an anchor in the binary, with a typed trampoline, checked to
//! point into the program's code. The parent's side of every socket is non-blocking
//! (a worker stuck in a task never stalls delivery, time limits or `terminate`), frames
//! use mproc-core's header with `SCM_RIGHTS` for handles, and a chunk of several items
//! travels as one `Vec` message each way.
#![deny(unsafe_code)]

mod bufs;
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
mod star;
#[allow(unsafe_code)]
mod sys;
mod thread_pool;
mod wire;
mod worker;

pub use error::{MapError, PoolError, ResultError, TaskError};
pub use executor::{Executor, ReturnWhen, TaskFuture, as_completed, wait_futures};
pub use pool::{Pool, PoolBuilder, default_chunksize};
pub use result::{AsyncResult, IMap, MapResult};
pub use star::StarFn;
pub use thread_pool::{
    ThreadAsyncResult, ThreadIMap, ThreadMapResult, ThreadPool, ThreadPoolBuilder, ThreadStarFn,
};

#[doc(no_inline)]
pub use mproc_spawn::StartMethod;

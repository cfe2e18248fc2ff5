//! mproc's Pool and executor across machines, on MPI: what mpi4py.futures
//! (`MPICommExecutor`, `MPIPoolExecutor`) gives Python users.
//!
//! Everything sits behind the cargo feature `mpi` (it needs an MPI library, such as
//! Debian's `libopenmpi-dev`, plus `pkg-config` and libclang to build); without it the
//! crate is empty, so a workspace build never needs MPI.
//!
//! ```no_run
//! # #[cfg(feature = "mpi")] {
//! use mproc_mpi::MpiPool;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! // Under `mpirun -n 3 prog`: rank 0 gets the pool, ranks 1 and 2 serve it.
//! if let Some(pool) = MpiPool::spmd().unwrap() {
//!     assert_eq!(pool.map(square, 0..6u64).unwrap(), vec![0, 1, 4, 9, 16, 25]);
//!     let r = pool.apply_async(square, 7);
//!     assert_eq!(r.get().unwrap(), 49);
//! }
//! # }
//! ```
//!
//! - `MpiPool::spmd`: under `mpirun`/`srun -n N`, rank 0 runs the user's code with a
//!   pool whose workers are the other N − 1 ranks (mpi4py's `MPICommExecutor`).
//! - `MpiPool::spawn`: from a program started without `mpirun`, spawn `n` workers
//!   with `MPI_Comm_spawn` (mpi4py's `MPIPoolExecutor`); they talk over TCP.
//! - The same calls as mproc-pool's `Pool`/`Executor`: `map`, `map_async`, `imap`,
//!   `imap_unordered`, `starmap`, `apply`, `apply_async`, `submit`, `as_completed`;
//!   failures are mproc-pool's `TaskError` and
//!   `MapError`.
//! - Tasks are plain `fn(A) -> R` (workers run the same binary; functions travel as
//!   checked code offsets); arguments and results travel as rkyv bytes. Handles (fds)
//!   cannot cross MPI: they fail with a typed codec error.
//!
//! # Faults
//!
//! MPI is not fault-tolerant. Under `mpirun`, a rank that dies makes `mpirun` abort the
//! whole job with a non-zero status (about a second). A spawned pool watches its
//! workers' pids: a lost worker fails the tasks it held with `TaskError::WorkerLost` and
//! breaks the pool (`TaskError::Broken` afterwards), never a hang.
//!
//! # MPI's life
//!
//! MPI is initialised once per process, on first use, at `MPI_THREAD_MULTIPLE` when
//! offered (`MPI_THREAD_SERIALIZED` at least; all MPI calls are serialised by the crate).
//! It is finalised once, when the program exits (an `atexit` hook), never by a `Drop`.
//! Do not initialise MPI yourself (through the `mpi` crate) in the same program.
//!
//! # Protocol
//!
//! Each pool has a communication thread on its rank, the only one that talks MPI there.
//! It sends chunks with non-blocking sends, at most two per worker at a time, and probes
//! for results all the time; a worker sends its results non-blocking too and keeps
//! receiving while they drain. Neither side ever blocks sending to a peer that is itself
//! blocked sending, so large messages cannot deadlock.
#![deny(unsafe_code)]

#[cfg(feature = "mpi")]
mod engine;
#[cfg(feature = "mpi")]
mod env;
#[cfg(feature = "mpi")]
mod error;
#[cfg(feature = "mpi")]
mod pool;
#[cfg(feature = "mpi")]
#[allow(unsafe_code)]
mod sys;
#[cfg(feature = "mpi")]
mod wire;
#[cfg(feature = "mpi")]
mod worker;

#[cfg(feature = "mpi")]
pub use engine::WorkerInfo;
#[cfg(feature = "mpi")]
pub use env::{processor_name, world_rank, world_size};
#[cfg(feature = "mpi")]
pub use error::MpiError;
#[cfg(feature = "mpi")]
#[doc(no_inline)]
pub use mproc_pool::{MapError, ResultError, TaskError};
#[cfg(feature = "mpi")]
pub use pool::{AsyncResult, Future, IMap, MapResult, MpiPool, as_completed};

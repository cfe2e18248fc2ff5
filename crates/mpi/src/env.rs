//! MPI's life in a process: initialised once (on first use), finalised once, when the
//! program exits (an `atexit` hook), never from a `Drop`.
use crate::error::MpiError;
use mpi::Threading;
use mpi::traits::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Every MPI call after initialisation is made with this lock held (see `sys`).
pub(crate) static MPI_LOCK: Mutex<()> = Mutex::new(());

/// Pools whose communication thread still runs (MPI is not finalised under them).
pub(crate) static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// A peer died: finalising MPI would wait for it for ever, so the exit hook skips it.
pub(crate) static POISONED: AtomicBool = AtomicBool::new(false);

/// The marker argument a spawned worker is started with.
pub(crate) const WORKER_ARG: &str = "--mproc-mpi-spawned-worker";

pub(crate) fn lock() -> MutexGuard<'static, ()> {
    MPI_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// What initialisation found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct World {
    pub(crate) rank: i32,
    pub(crate) size: i32,
}

static WORLD: OnceLock<Result<World, MpiError>> = OnceLock::new();

/// Initialises MPI (once per process) and returns this process's place in its world.
pub(crate) fn init() -> Result<World, MpiError> {
    WORLD
        .get_or_init(|| {
            let _g = lock();
            if mpi::environment::is_finalized() {
                return Err(MpiError::Finalized);
            }
            let Some((universe, level)) = mpi::initialize_with_threading(Threading::Multiple)
            else {
                return Err(MpiError::AlreadyInitialized);
            };
            if level < Threading::Serialized {
                // MPI is up but unusable from a communication thread; it is still
                // finalised at exit.
                std::mem::forget(universe);
                crate::sys::register_at_exit();
                return Err(MpiError::Threading(format!("{level:?}")));
            }
            let world = universe.world();
            let w = World {
                rank: world.rank(),
                size: world.size(),
            };
            // The universe's `Drop` would finalise MPI; it is finalised at exit instead.
            std::mem::forget(universe);
            crate::sys::register_at_exit();
            Ok(w)
        })
        .clone()
}

/// The exit hook: finalises MPI unless a pool's thread still uses it (a leaked pool).
pub(crate) fn finalize_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if ACTIVE.load(Ordering::SeqCst) == 0 && !POISONED.load(Ordering::SeqCst) {
            let _g = lock();
            crate::sys::finalize();
        }
    });
}

/// Whether this process was started by `MpiPool::spawn` to be a worker.
pub(crate) fn started_as_spawned_worker() -> bool {
    match std::fs::read("/proc/self/cmdline") {
        Ok(c) => c
            .split(|&b| b == 0)
            .skip(1)
            .any(|a| a == WORKER_ARG.as_bytes()),
        Err(_) => false,
    }
}

/// This process's rank in `MPI_COMM_WORLD` (initialising MPI if needed).
///
/// # Errors
///
/// [`MpiError`] if MPI cannot be initialised.
pub fn world_rank() -> Result<i32, MpiError> {
    init().map(|w| w.rank)
}

/// The number of processes in `MPI_COMM_WORLD` (initialising MPI if needed).
///
/// # Errors
///
/// [`MpiError`] if MPI cannot be initialised.
pub fn world_size() -> Result<i32, MpiError> {
    init().map(|w| w.size)
}

/// The name of the node this process runs on (`MPI_Get_processor_name`).
///
/// # Errors
///
/// [`MpiError`] if MPI cannot be initialised.
pub fn processor_name() -> Result<String, MpiError> {
    init()?;
    let _g = lock();
    mpi::environment::processor_name().map_err(|e| MpiError::Protocol(e.to_string()))
}

//! Error types: one per operation, each with `Display` and `std::error::Error`.
use std::fmt;
use std::time::Duration;

/// Why one task (one item of a `map`, one `apply_async`, one executor future) failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked; `message` is its panic message, intact.
    Panicked {
        /// The panic payload as text.
        message: String,
    },
    /// The worker running the task died (killed by a signal, aborted, out of memory,
    /// exited) before the task finished. The pool replaced it and goes on.
    WorkerLost {
        /// The dead worker's pid.
        pid: i32,
        /// The signal that killed it, if a signal did.
        signal: Option<i32>,
        /// Its exit code in Python's convention (`n`, or `-signal`), if known.
        exitcode: Option<i32>,
    },
    /// The task ran past the pool's time limit; its worker was killed and replaced.
    TimedOut {
        /// The worker that was killed.
        pid: i32,
        /// The limit it exceeded.
        limit: Duration,
    },
    /// The task was cancelled before it started.
    Cancelled,
    /// The pool was terminated (or dropped) before the task finished.
    Terminated,
    /// The task was submitted after `close()` or `terminate()`, so it never ran
    /// (Python: `ValueError: Pool not running`).
    Closed,
    /// The pool can no longer run work: a worker's initializer failed, or a worker
    /// could not be started (`concurrent.futures.process.BrokenProcessPool`).
    Broken {
        /// What broke it.
        reason: String,
    },
    /// The arguments or the result could not be encoded or decoded.
    Codec {
        /// The codec's message.
        message: String,
    },
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Panicked { message } => write!(f, "task panicked: {message}"),
            TaskError::WorkerLost {
                pid,
                signal,
                exitcode,
            } => match (signal, exitcode) {
                (Some(s), _) => write!(f, "worker {pid} died by signal {s} while running the task"),
                (None, Some(c)) => {
                    write!(
                        f,
                        "worker {pid} exited with code {c} while running the task"
                    )
                }
                (None, None) => write!(f, "worker {pid} died while running the task"),
            },
            TaskError::TimedOut { pid, limit } => write!(
                f,
                "task exceeded its time limit of {limit:?}; worker {pid} was killed"
            ),
            TaskError::Cancelled => f.write_str("task was cancelled"),
            TaskError::Terminated => f.write_str("pool was terminated before the task finished"),
            TaskError::Closed => f.write_str("pool not running"),
            TaskError::Broken { reason } => write!(f, "pool is broken: {reason}"),
            TaskError::Codec { message } => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for TaskError {}

/// Why `map`/`starmap` failed: the first failure to arrive, as Python's `Pool.map` raises
/// it, with the index of the item that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapError {
    /// Index of the failed item in the input.
    pub index: usize,
    /// Why it failed.
    pub error: TaskError,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "item {}: {}", self.index, self.error)
    }
}

impl std::error::Error for MapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Why a `get_timeout`/`result(timeout)` returned without a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResultError<E = TaskError> {
    /// The timeout passed first (Python: `multiprocessing.TimeoutError`). The task goes
    /// on; ask again later.
    Timeout,
    /// The work finished and failed.
    Failed(E),
}

impl<E: fmt::Display> fmt::Display for ResultError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResultError::Timeout => f.write_str("timed out waiting for the result"),
            ResultError::Failed(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ResultError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ResultError::Timeout => None,
            ResultError::Failed(e) => Some(e),
        }
    }
}

/// Why a pool could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum PoolError {
    /// An argument is out of range (e.g. zero processes).
    InvalidArgument(&'static str),
    /// A worker process could not be started.
    Spawn(String),
    /// An OS resource (socket, eventfd, thread) could not be created.
    Io(std::io::Error),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::InvalidArgument(m) => write!(f, "invalid pool argument: {m}"),
            PoolError::Spawn(m) => write!(f, "could not start a pool worker: {m}"),
            PoolError::Io(e) => write!(f, "pool setup failed: {e}"),
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PoolError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for PoolError {
    fn from(e: std::io::Error) -> Self {
        PoolError::Io(e)
    }
}

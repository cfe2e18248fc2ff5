//! The crate's own error type (task failures reuse mproc-pool's `TaskError`).
use std::fmt;

/// Why an MPI pool could not be set up or used.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MpiError {
    /// MPI was initialised outside mproc-mpi (mproc-mpi must own initialisation).
    AlreadyInitialized,
    /// MPI was already finalised in this process; it cannot start again.
    Finalized,
    /// The MPI library offers too low a threading level (`MPI_THREAD_SERIALIZED` is
    /// needed); the level it offered.
    Threading(String),
    /// An argument is out of range (zero workers, a world of one process, …).
    InvalidArgument(&'static str),
    /// `MPI_Comm_spawn` failed or the spawned workers did not report in.
    Spawn(String),
    /// A peer sent something this build does not understand (another build of the
    /// program, or a corrupted message).
    Protocol(String),
}

impl fmt::Display for MpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MpiError::AlreadyInitialized => {
                f.write_str("MPI was initialised outside mproc-mpi; let mproc-mpi initialise it")
            }
            MpiError::Finalized => f.write_str("MPI is already finalised in this process"),
            MpiError::Threading(l) => write!(
                f,
                "the MPI library offers threading level {l}; MPI_THREAD_SERIALIZED is needed"
            ),
            MpiError::InvalidArgument(m) => write!(f, "invalid MPI pool argument: {m}"),
            MpiError::Spawn(m) => write!(f, "could not spawn MPI workers: {m}"),
            MpiError::Protocol(m) => write!(f, "MPI pool protocol error: {m}"),
        }
    }
}

impl std::error::Error for MpiError {}

//! Error types, one small type per operation.
use std::fmt;
use std::io;

/// The previous holder of a lock died while holding it. The caller holds the lock now:
/// as with std's `PoisonError`, [`OwnerDied::into_inner`] gives back the guard (or
/// value) so that the caller can repair the protected state and go on.
///
/// Also reported when the previous holder's guard was dropped during a panic (the lock
/// was poisoned), with the panicking process's pid.
///
/// The report is one-shot: only the acquirer that took the lock over sees it; the lock
/// is not poisoned for later acquirers.
pub struct OwnerDied<G> {
    inner: G,
    pid: u32,
}

impl<G> OwnerDied<G> {
    pub(crate) fn new(inner: G, pid: u32) -> Self {
        OwnerDied { inner, pid }
    }

    /// The pid of the process that died holding the lock.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The guard (or value) of the acquisition that took the lock over.
    pub fn into_inner(self) -> G {
        self.inner
    }

    /// A reference to the guard (or value).
    pub fn get_ref(&self) -> &G {
        &self.inner
    }

    /// A mutable reference to the guard (or value).
    pub fn get_mut(&mut self) -> &mut G {
        &mut self.inner
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerDied")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the previous holder of the lock (pid {}) died while holding it",
            self.pid
        )
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

/// `Ok(guard)`, or `Err(OwnerDied(guard))` when the lock was taken over from a dead holder.
pub type LockResult<G> = Result<G, OwnerDied<G>>;

/// Why a non-blocking or timed acquisition returned without a clean lock.
pub enum TryLockError<G> {
    /// The lock is held by a live holder (until the deadline, for a timed acquisition).
    WouldBlock,
    /// The lock was acquired, from a holder that died.
    OwnerDied(OwnerDied<G>),
}

impl<G> fmt::Debug for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::WouldBlock => f.write_str("WouldBlock"),
            TryLockError::OwnerDied(e) => e.fmt(f),
        }
    }
}

impl<G> fmt::Display for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::WouldBlock => f.write_str("the lock is held by someone else"),
            TryLockError::OwnerDied(e) => e.fmt(f),
        }
    }
}

impl<G> std::error::Error for TryLockError<G> {}

/// `Ok(guard)`, `Err(WouldBlock)`, or `Err(OwnerDied(guard))`.
pub type TryLockResult<G> = Result<G, TryLockError<G>>;

/// Why a [`Lock`](crate::Lock) could not be released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseError {
    /// The lock was not held (Python: "release unlocked lock").
    NotLocked,
}

impl fmt::Display for ReleaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("release of an unlocked lock")
    }
}

impl std::error::Error for ReleaseError {}

/// Why a primitive could not be created.
#[derive(Debug)]
pub enum CreateError {
    /// An argument is out of range (the text says which).
    InvalidArgument(&'static str),
    /// The shared region could not be allocated.
    Io(io::Error),
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateError::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            CreateError::Io(e) => write!(f, "cannot allocate shared memory: {e}"),
        }
    }
}

impl std::error::Error for CreateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CreateError::Io(e) => Some(e),
            CreateError::InvalidArgument(_) => None,
        }
    }
}

impl From<io::Error> for CreateError {
    fn from(e: io::Error) -> Self {
        CreateError::Io(e)
    }
}

//! The error every manager operation returns.
use crate::wire::FaultKind;
use mproc_channel::ConnectError;
use mproc_pool::{MapError, TaskError};
use std::fmt;
use std::io;

/// Why a manager operation failed.
///
/// The variants after `ServerGone` mirror Python's exceptions: `IndexOutOfRange` is
/// `IndexError`, `KeyMissing` `KeyError`, `NotFound` `ValueError` (e.g. `list.remove`),
/// `Empty`/`Full` are `queue.Empty`/`queue.Full`, `BrokenBarrier` is
/// `threading.BrokenBarrierError`, `Panicked` a remote exception.
#[derive(Debug)]
#[non_exhaustive]
pub enum ManagerError {
    /// The server process could not be started, or did not become ready.
    Start(String),
    /// Connecting to or authenticating with the server failed (a wrong auth key is
    /// `Connect(ConnectError::Authentication(_))`).
    Connect(ConnectError),
    /// The server is gone (it exited, was killed, or shut down): the connection closed.
    ServerGone,
    /// A value could not be encoded, or a reply could not be decoded as the expected
    /// type (a proxy used with another type than its object holds).
    Codec(String),
    /// The server answered something this client does not understand.
    Protocol(String),
    /// The object no longer exists (every reference to it was dropped).
    NoSuchObject,
    /// The object has another kind than the proxy expects.
    WrongKind,
    /// An index outside the list (Python's `IndexError`).
    IndexOutOfRange,
    /// A key or attribute that is not there (Python's `KeyError` / `AttributeError`).
    KeyMissing,
    /// A value that is not there (Python's `ValueError` from `list.remove`).
    NotFound,
    /// The queue is empty (Python's `queue.Empty`).
    Empty,
    /// The queue is full (Python's `queue.Full`).
    Full,
    /// A wait timed out.
    Timeout,
    /// Releasing a lock this caller does not hold (Python's `RuntimeError`).
    NotOwner,
    /// The barrier is broken (Python's `threading.BrokenBarrierError`).
    BrokenBarrier,
    /// A method of a custom object panicked in the server; the server goes on.
    Panicked(String),
    /// The server could not read the request.
    BadRequest(String),
    /// The server refused the request (for example a custom call from a client that
    /// runs another build of the program).
    Unsupported(String),
    /// The server refused to run a function (a custom object's constructor or method, a
    /// sort) because the fingerprint of its type that came with it is not that of the
    /// type the server's code for it was made for; the text names both. Nothing ran.
    Signature(String),
    /// A slice of an [`ArrayProxy`](crate::ArrayProxy) assigned a sequence of another
    /// length (Python's `ValueError`: an array's length is fixed).
    SizeMismatch(String),
    /// A process pool could not be started in the server
    /// ([`Manager::pool`](crate::Manager::pool)): a worker did not start.
    PoolStart(String),
    /// A task run on a manager's pool failed ([`PoolProxy`](crate::PoolProxy)'s `apply`,
    /// an [`AsyncResultProxy`](crate::AsyncResultProxy) of `apply_async`, an item of an
    /// [`IMapProxy`](crate::IMapProxy)): it panicked, its worker died, the pool was
    /// terminated or closed… as the pool reports it (Python: the task's exception).
    Task(TaskError),
    /// A `map`/`starmap` on a manager's pool failed: the first failure, with the index of
    /// its item (Python: the exception `Pool.map` raises).
    Map(MapError),
    /// A socket error.
    Io(io::Error),
}

impl ManagerError {
    pub(crate) fn from_fault(kind: FaultKind, msg: String) -> Self {
        match kind {
            FaultKind::NoSuchObject => ManagerError::NoSuchObject,
            FaultKind::WrongKind => ManagerError::WrongKind,
            FaultKind::IndexOutOfRange => ManagerError::IndexOutOfRange,
            FaultKind::KeyMissing => ManagerError::KeyMissing,
            FaultKind::NotFound => ManagerError::NotFound,
            FaultKind::Empty => ManagerError::Empty,
            FaultKind::Full => ManagerError::Full,
            FaultKind::Timeout => ManagerError::Timeout,
            FaultKind::NotOwner => ManagerError::NotOwner,
            FaultKind::BrokenBarrier => ManagerError::BrokenBarrier,
            FaultKind::Panicked => ManagerError::Panicked(msg),
            FaultKind::BadRequest => ManagerError::BadRequest(msg),
            FaultKind::Unsupported => ManagerError::Unsupported(msg),
            FaultKind::Signature => ManagerError::Signature(msg),
            FaultKind::SizeMismatch => ManagerError::SizeMismatch(msg),
            FaultKind::PoolStart => ManagerError::PoolStart(msg),
        }
    }
}

impl fmt::Display for ManagerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManagerError::Start(m) => write!(f, "the manager's server did not start: {m}"),
            ManagerError::Connect(e) => write!(f, "could not reach the manager: {e}"),
            ManagerError::ServerGone => f.write_str("the manager's server is gone"),
            ManagerError::Codec(m) => write!(f, "value could not be encoded or decoded: {m}"),
            ManagerError::Protocol(m) => write!(f, "unexpected answer from the manager: {m}"),
            ManagerError::NoSuchObject => f.write_str("the manager object no longer exists"),
            ManagerError::WrongKind => f.write_str("the manager object has another kind"),
            ManagerError::IndexOutOfRange => f.write_str("index out of range"),
            ManagerError::KeyMissing => f.write_str("no such key"),
            ManagerError::NotFound => f.write_str("value not found"),
            ManagerError::Empty => f.write_str("the queue is empty"),
            ManagerError::Full => f.write_str("the queue is full"),
            ManagerError::Timeout => f.write_str("timed out"),
            ManagerError::NotOwner => f.write_str("release of a lock the caller does not hold"),
            ManagerError::BrokenBarrier => f.write_str("the barrier is broken"),
            ManagerError::Panicked(m) => write!(f, "the method panicked in the manager: {m}"),
            ManagerError::BadRequest(m) => {
                write!(f, "the manager refused a malformed request: {m}")
            }
            ManagerError::Unsupported(m) => write!(f, "the manager refused the request: {m}"),
            ManagerError::Signature(m) => write!(f, "the manager refused to run a function: {m}"),
            ManagerError::SizeMismatch(m) => write!(f, "an array's length is fixed: {m}"),
            ManagerError::PoolStart(m) => write!(f, "the manager could not start a pool: {m}"),
            ManagerError::Task(e) => write!(f, "a task on the manager's pool failed: {e}"),
            ManagerError::Map(e) => write!(f, "a map on the manager's pool failed: {e}"),
            ManagerError::Io(e) => write!(f, "manager connection failed: {e}"),
        }
    }
}

impl std::error::Error for ManagerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ManagerError::Connect(e) => Some(e),
            ManagerError::Io(e) => Some(e),
            ManagerError::Task(e) => Some(e),
            ManagerError::Map(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConnectError> for ManagerError {
    fn from(e: ConnectError) -> Self {
        ManagerError::Connect(e)
    }
}

/// The result of a manager operation.
pub type Result<T, E = ManagerError> = std::result::Result<T, E>;

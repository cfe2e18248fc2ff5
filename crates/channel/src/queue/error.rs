//! One small error type per queue operation.
use mproc_core::codec::{CodecError, TypeMismatch};
use std::fmt;
use std::io;

/// Why a queue could not be created.
#[derive(Debug)]
#[non_exhaustive]
pub enum QueueCreateError {
    /// The options are out of range (capacity, slot size).
    InvalidOptions(&'static str),
    /// Creating the shared region or the socket pair failed.
    Io(io::Error),
}

impl fmt::Display for QueueCreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueCreateError::InvalidOptions(m) => write!(f, "invalid queue options: {m}"),
            QueueCreateError::Io(e) => write!(f, "could not create the queue: {e}"),
        }
    }
}

impl std::error::Error for QueueCreateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QueueCreateError::Io(e) => Some(e),
            QueueCreateError::InvalidOptions(_) => None,
        }
    }
}

/// Why `put` failed. `Full` and `Closed` give the value back.
#[non_exhaustive]
pub enum PutError<T> {
    /// The queue stayed full until the timeout (`try_put`, `put_timeout`): Python's
    /// `queue.Full`.
    Full(T),
    /// The queue was closed.
    Closed(T),
    /// The value could not be serialised.
    Encode(CodecError),
    /// Handing the message's fds (handles, or its own region when it is larger than a
    /// slot) to the queue failed.
    Io(io::Error),
}

impl<T> PutError<T> {
    /// The value, when the error gave it back.
    pub fn into_inner(self) -> Option<T> {
        match self {
            PutError::Full(v) | PutError::Closed(v) => Some(v),
            PutError::Encode(_) | PutError::Io(_) => None,
        }
    }

    /// Whether this is [`PutError::Full`].
    pub fn is_full(&self) -> bool {
        matches!(self, PutError::Full(_))
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::Encode(e) => f.debug_tuple("Encode").field(e).finish(),
            PutError::Io(e) => f.debug_tuple("Io").field(e).finish(),
        }
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("queue is full"),
            PutError::Closed(_) => f.write_str("queue is closed"),
            PutError::Encode(e) => write!(f, "could not serialise the message: {e}"),
            PutError::Io(e) => write!(f, "could not hand the message's fds to the queue: {e}"),
        }
    }
}

impl<T> std::error::Error for PutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PutError::Encode(e) => Some(e),
            PutError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Why `get` failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum GetError {
    /// No message arrived before the timeout (`try_get`, `get_timeout`): Python's
    /// `queue.Empty`.
    Empty,
    /// The queue was closed and every message has been taken.
    Closed,
    /// The next message was corrupt (bad length, bad kind, failed validation) or its
    /// fds never arrived. That message is dropped; the queue stays usable.
    Corrupt(CorruptMessage),
    /// The next message's slot carries the fingerprint of another type than the
    /// queue's (a peer wrote it as another type). That message is dropped; the queue
    /// stays usable.
    TypeMismatch(TypeMismatch),
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GetError::Empty => f.write_str("queue is empty"),
            GetError::Closed => f.write_str("queue is closed and drained"),
            GetError::Corrupt(e) => write!(f, "{e}"),
            GetError::TypeMismatch(e) => write!(f, "queue {e}"),
        }
    }
}

impl std::error::Error for GetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GetError::Corrupt(e) => Some(e),
            GetError::TypeMismatch(e) => Some(e),
            _ => None,
        }
    }
}

/// What was wrong with a dropped message.
#[derive(Debug)]
#[non_exhaustive]
pub enum CorruptMessage {
    /// The slot header is impossible (unknown kind, length beyond the slot).
    BadSlot(&'static str),
    /// The bytes failed validation (bytecheck) or deserialisation.
    Invalid(CodecError),
    /// The message's fds (or its large-message region) could not be received or mapped.
    Fds(io::Error),
}

impl fmt::Display for CorruptMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorruptMessage::BadSlot(m) => write!(f, "corrupt queue slot: {m}"),
            CorruptMessage::Invalid(e) => write!(f, "corrupt queue message: {e}"),
            CorruptMessage::Fds(e) => write!(f, "queue message lost its fds: {e}"),
        }
    }
}

impl std::error::Error for CorruptMessage {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CorruptMessage::Invalid(e) => Some(e),
            CorruptMessage::Fds(e) => Some(e),
            CorruptMessage::BadSlot(_) => None,
        }
    }
}

/// `task_done` was called more times than items were put (Python's `ValueError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskDoneError;

impl fmt::Display for TaskDoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task_done() called too many times")
    }
}

impl std::error::Error for TaskDoneError {}

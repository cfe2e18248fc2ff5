//! One small error type per connection operation.
use mproc_core::codec::{CodecError, FrameError, TypeMismatch};
use std::fmt;
use std::io;

/// Why [`Connection::send`](crate::Connection::send) or
/// [`Connection::send_bytes`](crate::Connection::send_bytes) failed.
///
/// Every variant except [`SendError::Io`] and [`SendError::Disconnected`] is reported
/// before a byte is written, so the connection stays usable.
#[derive(Debug)]
#[non_exhaustive]
pub enum SendError {
    /// This end was closed with [`Connection::close`](crate::Connection::close).
    Closed,
    /// This end only receives (the reading end of `Pipe(false)`).
    NotWritable,
    /// The peer has gone (`EPIPE` / `ECONNRESET`); Python raises `BrokenPipeError`.
    Disconnected,
    /// The message is larger than the connection's maximum message size.
    TooLarge {
        /// Length of the encoded message.
        len: u64,
        /// The limit ([`Connection::max_message_size`](crate::Connection::max_message_size)).
        max: u64,
    },
    /// The message holds handles (fds) but the connection is not a Unix socket (TCP).
    FdsNotSupported,
    /// The message holds more handles than one frame may carry.
    TooManyFds(usize),
    /// The value could not be serialised.
    Encode(CodecError),
    /// The socket failed.
    Io(io::Error),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => f.write_str("connection is closed"),
            SendError::NotWritable => f.write_str("connection is read-only"),
            SendError::Disconnected => f.write_str("the peer has closed the connection"),
            SendError::TooLarge { len, max } => {
                write!(
                    f,
                    "message of {len} bytes exceeds the maximum message size of {max} bytes"
                )
            }
            SendError::FdsNotSupported => {
                f.write_str("handles (fds) can only be sent over a Unix socket connection")
            }
            SendError::TooManyFds(n) => write!(
                f,
                "message holds {n} handles' fds, more than one frame may carry ({})",
                mproc_core::codec::MAX_FDS
            ),
            SendError::Encode(e) => write!(f, "cannot encode message: {e}"),
            SendError::Io(e) => write!(f, "send failed: {e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Encode(e) => Some(e),
            SendError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a receive ([`Connection::recv`](crate::Connection::recv) and friends) or a
/// [`Connection::poll`](crate::Connection::poll) failed.
///
/// After [`Decode`](RecvError::Decode), [`TypeMismatch`](RecvError::TypeMismatch),
/// [`FdMismatch`](RecvError::FdMismatch),
/// [`BufferTooSmall`](RecvError::BufferTooSmall) and [`Timeout`](RecvError::Timeout) the
/// connection stays usable (the stream is still in step). After
/// [`Corrupt`](RecvError::Corrupt) or [`Truncated`](RecvError::Truncated) it can no
/// longer receive: later receives return [`Broken`](RecvError::Broken) or
/// [`Disconnected`](RecvError::Disconnected) (as Python's connection is "no longer
/// readable" after a bad message length).
#[derive(Debug)]
#[non_exhaustive]
pub enum RecvError {
    /// This end was closed with [`Connection::close`](crate::Connection::close).
    Closed,
    /// This end only sends (the writing end of `Pipe(false)`).
    NotReadable,
    /// The peer closed the connection and no message is left: Python's `EOFError`.
    Disconnected,
    /// The peer closed (or died) in the middle of a frame.
    Truncated,
    /// A frame header was invalid (bad magic, too large, too many fds); the stream is out
    /// of step, so the connection stops receiving.
    Corrupt(FrameError),
    /// An earlier [`Corrupt`](RecvError::Corrupt) frame left the stream out of step.
    Broken,
    /// The frame announced a different number of fds than arrived with it (the frame was
    /// consumed; the fds that did arrive were closed).
    FdMismatch {
        /// Fds the header announced.
        announced: u32,
        /// Fds that arrived.
        received: usize,
    },
    /// The frame arrived whole but its bytes are not a valid message of the requested
    /// type (the frame was consumed; the connection stays usable).
    Decode(CodecError),
    /// The message was sent as another type than the one requested (or as raw bytes
    /// with `send_bytes`): both types are named. The frame was consumed; the connection
    /// stays usable.
    TypeMismatch(TypeMismatch),
    /// [`Connection::recv_bytes_into`](crate::Connection::recv_bytes_into): the buffer is
    /// smaller than the message, which stays queued (Python's `BufferTooShort`).
    BufferTooSmall {
        /// The message's length.
        needed: usize,
    },
    /// No message arrived in time.
    Timeout,
    /// The socket failed.
    Io(io::Error),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Closed => f.write_str("connection is closed"),
            RecvError::NotReadable => f.write_str("connection is write-only"),
            RecvError::Disconnected => f.write_str("the peer has closed the connection (EOF)"),
            RecvError::Truncated => f.write_str("the peer closed the connection mid-message"),
            RecvError::Corrupt(e) => write!(f, "{e}; the connection no longer receives"),
            RecvError::Broken => {
                f.write_str("an earlier corrupt frame left the connection unreadable")
            }
            RecvError::FdMismatch {
                announced,
                received,
            } => write!(
                f,
                "frame announced {announced} fds but {received} arrived with it"
            ),
            RecvError::Decode(e) => write!(f, "cannot decode message: {e}"),
            RecvError::TypeMismatch(e) => e.fmt(f),
            RecvError::BufferTooSmall { needed } => {
                write!(f, "buffer too small for a message of {needed} bytes")
            }
            RecvError::Timeout => f.write_str("timed out waiting for a message"),
            RecvError::Io(e) => write!(f, "receive failed: {e}"),
        }
    }
}

impl std::error::Error for RecvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecvError::Corrupt(e) => Some(e),
            RecvError::Decode(e) => Some(e),
            RecvError::TypeMismatch(e) => Some(e),
            RecvError::Io(e) => Some(e),
            _ => None,
        }
    }
}

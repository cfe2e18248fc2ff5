//! Errors of process operations.
use mproc_core::codec::CodecError;
use std::fmt;
use std::io;

/// Why starting, joining or signalling a [`Process`](crate::Process) failed, or how its
/// target ended when it did not return a value.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProcessError {
    /// `start` was called on a process that was already started (Python: "cannot start
    /// a process twice").
    AlreadyStarted,
    /// The operation needs a started process.
    NotStarted,
    /// A previous `join` already returned the outcome.
    AlreadyJoined,
    /// The process was closed ([`Process::close`](crate::Process::close)); Python's
    /// `ValueError: process object is closed`.
    Closed,
    /// `close` was called on a process that is still running (Python's `ValueError:
    /// Cannot close a process while it is still running`).
    StillRunning,
    /// The arguments could not be serialised; no process was started.
    Args(CodecError),
    /// A capturing closure ([`Process::fork_closure`](crate::Process::fork_closure)) can
    /// only run under [`StartMethod::Fork`](crate::StartMethod::Fork).
    ClosureNeedsFork,
    /// The OS could not create the process (or the fork server failed).
    Start(io::Error),
    /// The target panicked (exit code 1); the panic message.
    Panicked(String),
    /// The process exited with this code without returning a value (e.g. it called
    /// `std::process::exit(3)`).
    Exited(i32),
    /// The process was killed by this signal (its `exitcode()` is `-signal`).
    Signaled(i32),
    /// The child could not run the target or report its result: corrupt bootstrap
    /// data, arguments that did not decode, a result that did not serialise.
    ChildFailed(String),
    /// The child refused to run the target, and nothing ran: its bootstrap message
    /// failed authentication (MAC), came from another build, named code outside the
    /// program, or named a function of another type than the trampoline expects (the
    /// message names both types).
    Refused(String),
    /// The result arrived but did not decode.
    Result(CodecError),
    /// Waiting for or signalling the process failed.
    Io(io::Error),
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessError::AlreadyStarted => f.write_str("cannot start a process twice"),
            ProcessError::NotStarted => f.write_str("the process has not been started"),
            ProcessError::AlreadyJoined => f.write_str("the process was already joined"),
            ProcessError::Closed => f.write_str("process object is closed"),
            ProcessError::StillRunning => {
                f.write_str("cannot close a process while it is still running")
            }
            ProcessError::Args(e) => write!(f, "the arguments could not be serialised: {e}"),
            ProcessError::ClosureNeedsFork => {
                f.write_str("a capturing closure can only be run with the fork start method")
            }
            ProcessError::Start(e) => write!(f, "could not start the process: {e}"),
            ProcessError::Panicked(m) => write!(f, "the process panicked: {m}"),
            ProcessError::Exited(c) => write!(f, "the process exited with code {c}"),
            ProcessError::Signaled(s) => write!(f, "the process was killed by signal {s}"),
            ProcessError::ChildFailed(m) => write!(f, "the process failed: {m}"),
            ProcessError::Refused(m) => write!(f, "the process refused to run the target: {m}"),
            ProcessError::Result(e) => write!(f, "the result could not be decoded: {e}"),
            ProcessError::Io(e) => write!(f, "waiting for the process failed: {e}"),
        }
    }
}

impl std::error::Error for ProcessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProcessError::Args(e) | ProcessError::Result(e) => Some(e),
            ProcessError::Start(e) | ProcessError::Io(e) => Some(e),
            _ => None,
        }
    }
}

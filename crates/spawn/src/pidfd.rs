//! A pidfd for a child, which may have been opened by another process (the fork
//! server) and received over a socket.
//!
//! (mproc-core's `Pidfd` can only be opened by pid; a `Pidfd::from_owned` there would
//! make this type unnecessary.)
use mproc_core::Deadline;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// A process fd and the pid it was opened for.
#[derive(Debug)]
pub(crate) struct ChildFd {
    fd: OwnedFd,
    pid: i32,
}

impl ChildFd {
    /// Opens a pidfd for `pid` (race-free only for an unreaped child of ours).
    pub(crate) fn open(pid: i32) -> io::Result<Self> {
        let p = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(ChildFd {
            fd: pidfd_open(p, PidfdFlags::empty())?,
            pid,
        })
    }

    /// Wraps a pidfd received from elsewhere.
    pub(crate) fn from_owned(fd: OwnedFd, pid: i32) -> Self {
        ChildFd { fd, pid }
    }

    /// The pid.
    #[allow(dead_code)]
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits until the process exits; true if it did, false on timeout.
    pub(crate) fn wait_exit(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let deadline = Deadline::from_timeout(timeout);
        loop {
            let ts = deadline.remaining().map(|left| {
                Timespec::try_from(left).unwrap_or(Timespec {
                    tv_sec: i64::MAX / 2,
                    tv_nsec: 0,
                })
            });
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, ts.as_ref()) {
                Ok(0) if deadline.is_expired() => return Ok(false),
                Ok(0) => continue,
                Ok(_) => return Ok(true),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether the process still runs (a zombie counts as ended).
    pub(crate) fn is_alive(&self) -> bool {
        !matches!(self.wait_exit(Some(Duration::ZERO)), Ok(true))
    }

    /// Sends a signal; a process that already ended is not an error.
    pub(crate) fn send_signal(&self, signal: i32) -> io::Result<()> {
        let sig = Signal::from_named_raw(signal)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        match pidfd_send_signal(&self.fd, sig) {
            Ok(()) | Err(Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for ChildFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

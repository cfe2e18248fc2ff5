//! Process file descriptors: wait for a process with a timeout, tell whether it is
//! gone, signal it without racing pid reuse.
//!
//! ```
//! use mproc_core::Pidfd;
//! use std::time::Duration;
//! let me = Pidfd::open(std::process::id() as i32).unwrap();
//! assert!(!me.wait_exit(Some(Duration::from_millis(1))).unwrap());
//! assert!(me.is_alive());
//! ```
use crate::Deadline;
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// A handle on a process that stays bound to that process even after its pid is reused.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: i32,
}

impl Pidfd {
    /// Opens a pidfd for `pid`. Fails with `ESRCH` if no such process exists.
    pub fn open(pid: i32) -> io::Result<Self> {
        let p = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = pidfd_open(p, PidfdFlags::empty())?;
        Ok(Pidfd { fd, pid })
    }

    /// Wraps a pidfd opened elsewhere (e.g. by a fork server and received over a socket)
    /// for the process `pid`.
    pub fn from_owned(fd: OwnedFd, pid: i32) -> Self {
        Pidfd { fd, pid }
    }

    /// The pid this handle was opened for.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits until the process has exited (it may still be an unreaped zombie).
    /// Returns `true` if it exited, `false` on timeout. `None` waits for ever.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> io::Result<bool> {
        self.wait_exit_until(Deadline::from_timeout(timeout))
    }

    /// As [`Pidfd::wait_exit`], with a deadline.
    pub fn wait_exit_until(&self, deadline: Deadline) -> io::Result<bool> {
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        Ok(deadline.poll(&mut fds)? > 0)
    }

    /// Whether the process is still running (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        !matches!(self.wait_exit(Some(Duration::ZERO)), Ok(true))
    }

    /// Sends `signal` (a raw signal number) to the process. Sending to a process that
    /// has exited but is not reaped yet succeeds and does nothing.
    pub fn send_signal(&self, signal: i32) -> io::Result<()> {
        let sig = Signal::from_named_raw(signal)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        match pidfd_send_signal(&self.fd, sig) {
            Ok(()) | Err(Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Whether process `pid` exists and has not exited: `false` for no such process and
/// for a zombie. (`kill(pid, 0)` calls a zombie alive, so it is not used.)
pub fn process_alive(pid: i32) -> bool {
    match Pidfd::open(pid) {
        Ok(p) => p.is_alive(),
        Err(e) => e.raw_os_error() != Some(libc::ESRCH),
    }
}

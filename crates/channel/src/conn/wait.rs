//! `wait`: block until one of many connections or process sentinels is ready, like
//! Python's `multiprocessing.connection.wait`.
use super::connection::{Connection, wait_readable};
use super::error::RecvError;
use mproc_core::Deadline;
use rustix::event::{PollFd, PollFlags};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

/// Something [`wait`] can watch: a [`Connection`] (ready when a message or end of stream
/// is waiting) or any readable fd (a process sentinel such as a pidfd, which becomes
/// readable when the process exits; a socket; a pipe).
pub trait Waitable {
    /// The fd to poll for readability; `None` if the object is closed.
    fn wait_fd(&self) -> Option<BorrowedFd<'_>>;

    /// Whether the object is ready without looking at its fd (a connection that has
    /// already read part of the next message).
    fn ready_now(&self) -> bool {
        false
    }
}

impl<T: AsFd + ?Sized> Waitable for T {
    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
}

impl Waitable for Connection {
    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        if self.readable() { self.fileno() } else { None }
    }

    fn ready_now(&self) -> bool {
        self.rx.try_lock().is_ok_and(|rx| rx.ready_now())
    }
}

/// Waits until at least one of `objects` is ready or the timeout passes, and returns the
/// indices of the ready ones (empty on timeout). Python's
/// `multiprocessing.connection.wait(object_list, timeout)`, returning positions rather
/// than the objects. `timeout` is a `Duration` or `None` to wait for ever.
///
/// A connection is ready when a message or end of stream is waiting (a receive will not
/// block); a process sentinel (pidfd) when the process has exited. Nothing is consumed.
///
/// ```
/// use mproc_channel::{Pipe, Waitable, wait};
/// use std::time::Duration;
/// let (a, b) = Pipe(true).unwrap();
/// let (c, d) = Pipe(true).unwrap();
/// d.send_bytes(b"x").unwrap();
/// let ready = wait(&[&a as &dyn Waitable, &c], Duration::from_secs(5)).unwrap();
/// assert_eq!(ready, vec![1]);
/// # drop(b);
/// ```
///
/// # Errors
/// `InvalidInput` if an object is closed (or a write-only connection); `poll(2)`
/// failures.
pub fn wait(objects: &[&dyn Waitable], timeout: impl Into<Deadline>) -> io::Result<Vec<usize>> {
    let deadline = timeout.into();
    let mut fds = Vec::with_capacity(objects.len());
    let mut now_ready = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let fd = o.wait_fd().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("wait: object #{i} is closed or cannot be read"),
            )
        })?;
        if o.ready_now() {
            now_ready.push(i);
        }
        fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
    }
    // Something is ready already: only look (timeout zero) for the others.
    let deadline = if now_ready.is_empty() {
        deadline
    } else {
        Deadline::now()
    };
    if fds.len() == 1 && now_ready.is_empty() {
        return match wait_readable(objects[0].wait_fd().expect("checked above"), deadline) {
            Ok(()) => Ok(vec![0]),
            Err(RecvError::Timeout) => Ok(vec![]),
            Err(RecvError::Io(e)) => Err(e),
            Err(e) => Err(io::Error::other(e)),
        };
    }
    deadline.poll(&mut fds)?;
    let mut ready: Vec<usize> = fds
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.revents().is_empty())
        .map(|(i, _)| i)
        .collect();
    ready.extend(now_ready);
    ready.sort_unstable();
    ready.dedup();
    Ok(ready)
}

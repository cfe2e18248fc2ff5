//! Deadlines: one overall point in time that a chain of waits shares.
//!
//! ```
//! use mproc_core::Deadline;
//! use std::time::Duration;
//! let d = Deadline::after(Duration::from_millis(5));
//! assert!(!d.is_expired());
//! std::thread::sleep(Duration::from_millis(6));
//! assert!(d.is_expired());
//! assert_eq!(Deadline::never().remaining(), None);
//! ```
use rustix::event::{PollFd, Timespec, poll};
use rustix::io::Errno;
use std::io;
use std::time::{Duration, Instant};

/// A point in time by which a wait must end, or no limit at all.
///
/// Built once from a caller's timeout and passed down, so that a loop of retries
/// (futex wake-ups, spurious returns, notifications that do not satisfy a predicate)
/// never stretches the caller's timeout: every wait computes what is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// No limit: waits block until their condition holds.
    pub const fn never() -> Self {
        Deadline(None)
    }

    /// A deadline `timeout` from now. A timeout too large to represent means no limit.
    pub fn after(timeout: Duration) -> Self {
        Deadline(Instant::now().checked_add(timeout))
    }

    /// A deadline that has already passed: waits become non-blocking tries.
    pub fn now() -> Self {
        Deadline(Some(Instant::now()))
    }

    /// `None` → [`Deadline::never`], `Some(t)` → [`Deadline::after`]`(t)`.
    pub fn from_timeout(timeout: Option<Duration>) -> Self {
        timeout.map_or(Self::never(), Self::after)
    }

    /// A deadline at a given instant.
    pub fn at(instant: Instant) -> Self {
        Deadline(Some(instant))
    }

    /// The instant, or `None` for no limit.
    pub fn instant(&self) -> Option<Instant> {
        self.0
    }

    /// Time left: `None` for no limit, `Some(Duration::ZERO)` once expired.
    pub fn remaining(&self) -> Option<Duration> {
        self.0.map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadline has passed (never true for [`Deadline::never`]).
    pub fn is_expired(&self) -> bool {
        self.0.is_some_and(|t| Instant::now() >= t)
    }

    /// Whether this deadline has a limit.
    pub fn is_finite(&self) -> bool {
        self.0.is_some()
    }

    /// The time left as a `poll(2)` timeout (`None`: no limit).
    pub fn poll_timeout(&self) -> Option<Timespec> {
        self.remaining().map(|left| {
            Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: i64::MAX / 2,
                tv_nsec: 0,
            })
        })
    }

    /// `poll(2)` on `fds` until one is ready or this deadline passes, retrying after
    /// signals and early returns. Returns how many are ready; `0` once the deadline
    /// passed.
    ///
    /// ```
    /// use mproc_core::Deadline;
    /// use rustix::event::{PollFd, PollFlags};
    /// let (r, _w) = rustix::pipe::pipe().unwrap();
    /// let mut fds = [PollFd::new(&r, PollFlags::IN)];
    /// assert_eq!(Deadline::now().poll(&mut fds).unwrap(), 0);
    /// ```
    pub fn poll(&self, fds: &mut [PollFd<'_>]) -> io::Result<usize> {
        loop {
            match poll(fds, self.poll_timeout().as_ref()) {
                Ok(0) if !self.is_expired() => continue,
                Ok(n) => return Ok(n),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The earlier of two deadlines.
    pub fn min(self, other: Deadline) -> Deadline {
        match (self.0, other.0) {
            (None, _) => other,
            (_, None) => self,
            (Some(a), Some(b)) => Deadline(Some(a.min(b))),
        }
    }
}

impl From<Duration> for Deadline {
    fn from(d: Duration) -> Self {
        Deadline::after(d)
    }
}

impl From<Option<Duration>> for Deadline {
    fn from(d: Option<Duration>) -> Self {
        Deadline::from_timeout(d)
    }
}

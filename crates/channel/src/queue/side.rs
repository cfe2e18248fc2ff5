//! The queue's side channel for file descriptors, and the small robust locks that keep
//! it in step with the ring.
//!
//! A message that carries fds (handles inside it, or its own sealed memfd when it is
//! larger than a slot) cannot put them in shared memory. Every queue owns a connected
//! `SOCK_SEQPACKET` socket pair, and every handle on the queue (in every process) holds
//! both ends: producers send on one end, consumers receive on the other, so the fds
//! stay in flight inside the kernel even after the producer exits, for as long as any
//! process holds the queue. Each datagram carries the ring position of its message as a
//! token.
//!
//! Producers of such messages claim their slot and send their datagram while holding
//! the producer lock; consumers claim such a slot and receive its datagram while holding
//! the consumer lock. Both happen in ring order, so datagrams arrive in the order their
//! slots are claimed. The token catches what a dead process leaves behind: a datagram
//! whose slot was skipped (older token) is discarded; a slot whose datagram never came
//! (newer token at the head) is reported as an error for that message.
//!
//! The locks are one word holding the owner's pid: a waiter sleeps through
//! `mproc_core::futex::wait_on_holder`, which wakes it when the owner exits (its
//! process watches the owner's pidfd), and takes the lock over.
use mproc_core::futex::{self, HolderWait};
use mproc_core::{Deadline, scm};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType, recv, socketpair};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How long a waiter sleeps before it checks whether the holder of what it waits for
/// is still alive.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(50);

const DGRAM: usize = 16;

/// Both ends of the queue's fd socket pair.
#[derive(Debug)]
pub(crate) struct Side {
    tx: OwnedFd,
    rx: OwnedFd,
}

/// Why fds could not be sent.
#[derive(Debug)]
pub(crate) enum SendFdsError {
    /// The deadline passed while the socket was full.
    TimedOut,
    /// The system call failed.
    Io(io::Error),
}

impl Side {
    /// A fresh socket pair (non-blocking, close-on-exec).
    pub(crate) fn new() -> io::Result<Side> {
        let (tx, rx) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        // More room for fds in flight; the kernel caps it at its maximum.
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&tx, 4 << 20);
        Ok(Side { tx, rx })
    }

    /// Rebuilds from the two fds a handle carried.
    pub(crate) fn from_fds(tx: OwnedFd, rx: OwnedFd) -> Side {
        Side { tx, rx }
    }

    /// The sending end.
    pub(crate) fn tx(&self) -> BorrowedFd<'_> {
        self.tx.as_fd()
    }

    /// The receiving end.
    pub(crate) fn rx(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }

    /// Sends `fds` tagged with `token`, waiting for room until `deadline`.
    pub(crate) fn send(
        &self,
        token: u64,
        fds: &[BorrowedFd<'_>],
        deadline: Deadline,
    ) -> Result<(), SendFdsError> {
        let mut d = [0u8; DGRAM];
        d[..8].copy_from_slice(&token.to_le_bytes());
        d[8..12].copy_from_slice(&(fds.len() as u32).to_le_bytes());
        loop {
            match scm::send_with_fds(self.tx.as_fd(), &[IoSlice::new(&d)], fds) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if deadline.is_expired() {
                        return Err(SendFdsError::TimedOut);
                    }
                    wait_fd(self.tx.as_fd(), PollFlags::OUT, deadline);
                }
                Err(e) => return Err(SendFdsError::Io(e)),
            }
        }
    }

    /// Receives the fds of the message at ring position `token`, discarding datagrams
    /// of older positions (left by producers that died before publishing).
    pub(crate) fn recv_for(&self, token: u64) -> io::Result<Vec<OwnedFd>> {
        let missing = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the file descriptors of this message never arrived",
            )
        };
        loop {
            let mut d = [0u8; DGRAM];
            let n = match recv(&self.rx, &mut d[..], RecvFlags::PEEK) {
                Ok((n, _)) => n,
                Err(Errno::AGAIN) => return Err(missing()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let got = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
            if n != DGRAM || got <= token {
                let (_, fds) = scm::recv_with_fds(self.rx.as_fd(), &mut d, 253)?;
                if n == DGRAM && got == token {
                    let nfds = u32::from_le_bytes(d[8..12].try_into().expect("4 bytes"));
                    if fds.len() != nfds as usize {
                        return Err(missing());
                    }
                    return Ok(fds);
                }
                // A stale or malformed datagram: its fds close here.
                continue;
            }
            return Err(missing());
        }
    }
}

/// A memfd holding `bytes`, sealed against writes, shrinking and growing, so a
/// receiver can map it read-only and trust that it never changes.
pub(crate) fn sealed_memfd(bytes: &[u8]) -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags, fcntl_add_seals, memfd_create};
    let fd = memfd_create(
        "mproc-queue-message",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, bytes.len() as u64)?;
    let mut off = 0;
    while off < bytes.len() {
        match rustix::io::pwrite(&fd, &bytes[off..], off as u64) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    retry_busy(SEAL_TRIES, || {
        fcntl_add_seals(
            &fd,
            SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )
    })?;
    Ok(fd)
}

/// How many times [`sealed_memfd`] asks for the write seal.
const SEAL_TRIES: u32 = 12;

/// Runs `op` until it does not fail with `EBUSY`, at most `tries` times, sleeping a
/// little longer each time (0.5 ms doubling to 64 ms).
///
/// `F_SEAL_WRITE` fails with `EBUSY` while the kernel still holds extra references on
/// the file's pages for a moment (page-cache batches, memory scanners): the kernel
/// waits ~75 ms for them itself, then gives up. Seen about once in 10,000 seals on an
/// idle machine; a later try succeeds.
fn retry_busy(tries: u32, mut op: impl FnMut() -> rustix::io::Result<()>) -> io::Result<()> {
    let mut pause = std::time::Duration::from_micros(500);
    let mut left = tries;
    loop {
        match op() {
            Err(Errno::BUSY) if left > 1 => {
                left -= 1;
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(64));
            }
            r => return r.map_err(io::Error::from),
        }
    }
}

fn wait_fd(fd: BorrowedFd<'_>, flags: PollFlags, deadline: Deadline) {
    let slice = deadline.min(Deadline::after(CHECK_INTERVAL));
    let ts = slice.remaining().and_then(|d| Timespec::try_from(d).ok());
    let mut fds = [PollFd::new(&fd, flags)];
    let _ = poll(&mut fds, ts.as_ref());
}

/// A lock in shared memory whose word holds the owner's pid; robust against the
/// owner's death.
#[derive(Debug)]
pub(crate) struct PidLock<'a> {
    word: &'a AtomicU32,
}

impl<'a> PidLock<'a> {
    /// The lock whose word is `word`.
    pub(crate) fn new(word: &'a AtomicU32) -> Self {
        PidLock { word }
    }

    /// Takes the lock for `pid`, waiting until `deadline`; `false` on timeout.
    pub(crate) fn lock(&self, pid: u32, deadline: Deadline) -> bool {
        loop {
            let owner =
                match self
                    .word
                    .compare_exchange(0, pid, Ordering::Acquire, Ordering::Relaxed)
                {
                    Ok(_) => return true,
                    Err(o) => o,
                };
            if deadline.is_expired() {
                return false;
            }
            let holder = if owner == pid { 0 } else { owner };
            if futex::wait_on_holder(self.word, owner, holder, deadline) == HolderWait::HolderDied
                && self
                    .word
                    .compare_exchange(owner, pid, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return true;
            }
        }
    }

    /// Releases the lock.
    pub(crate) fn unlock(&self) {
        self.word.store(0, Ordering::Release);
        futex::wake(self.word, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_seal_is_tried_again_until_it_takes() {
        let mut calls = 0;
        let r = retry_busy(5, || {
            calls += 1;
            if calls < 3 { Err(Errno::BUSY) } else { Ok(()) }
        });
        assert!(r.is_ok());
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_seal_that_stays_busy_is_an_error_after_the_last_try() {
        let mut calls = 0;
        let r = retry_busy(4, || {
            calls += 1;
            Err(Errno::BUSY)
        });
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EBUSY));
        assert_eq!(calls, 4);
        // Other errors are not tried again.
        let mut calls = 0;
        let r = retry_busy(4, || {
            calls += 1;
            Err(Errno::PERM)
        });
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_sealed_memfd_holds_the_bytes_and_refuses_writes() {
        let fd = sealed_memfd(b"hello").unwrap();
        let mut buf = [0u8; 5];
        assert_eq!(rustix::io::pread(&fd, &mut buf, 0).unwrap(), 5);
        assert_eq!(&buf, b"hello");
        assert_eq!(rustix::io::pwrite(&fd, b"x", 0), Err(Errno::PERM));
    }
}

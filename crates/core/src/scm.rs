//! Sending and receiving fds over Unix sockets (`SCM_RIGHTS`).
//!
//! Received fds are always close-on-exec, and a control buffer that was too small for
//! the fds sent is reported as an error rather than silently dropping some.
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Sends `bufs` with `fds` attached; returns the number of bytes sent (which may be
/// fewer than offered on a stream socket: send the rest without fds). At least one byte
/// must be sent with fds. Retries on `EINTR`.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    loop {
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many fds for one message",
            ));
        }
        match sendmsg(sock, bufs, &mut cmsg, SendFlags::NOSIGNAL) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives into `buf` and up to `max_fds` fds (close-on-exec). Returns the byte count
/// (0 at end of stream) and the fds. Fails with `InvalidData` if fds were cut off for
/// lack of room. Retries on `EINTR`.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds.max(1)))];
    loop {
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let r = recvmsg(
            sock,
            &mut [IoSliceMut::new(buf)],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        );
        match r {
            Ok(msg) => {
                let mut fds = Vec::new();
                for m in cmsg.drain() {
                    if let RecvAncillaryMessage::ScmRights(it) = m {
                        fds.extend(it);
                    }
                }
                if msg.flags.contains(ReturnFlags::CTRUNC) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "more fds arrived than announced (control data truncated)",
                    ));
                }
                return Ok((msg.bytes, fds));
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Borrows each fd of a slice.
pub fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}

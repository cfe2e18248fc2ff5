//! The sockets: an abstract `SOCK_SEQPACKET` name per forwarding process (no file to
//! clean up; gone when the process goes), and the fd a child sends on.
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType, sockopt,
};
use std::io;
use std::time::Duration;

fn addr(root: u32) -> io::Result<SocketAddrUnix> {
    Ok(SocketAddrUnix::new_abstract_name(
        format!("mproc-log.{root}").as_bytes(),
    )?)
}

fn socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// The output sink of process `root`: a byte stream per child stream (stdout, stderr).
fn out_addr(root: u32) -> io::Result<SocketAddrUnix> {
    Ok(SocketAddrUnix::new_abstract_name(
        format!("mproc-log.{root}.out").as_bytes(),
    )?)
}

/// Binds and listens (non-blocking) on the output sink of process `root`.
pub(crate) fn listen_output(root: u32) -> io::Result<OwnedFd> {
    let s = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&s, &out_addr(root)?)?;
    rustix::net::listen(&s, 256)?;
    rustix::io::ioctl_fionbio(&s, true)?;
    Ok(s)
}

/// In a child: connects to the output sink of `root` (if it captures output), sends
/// `header`, and makes the connection this process's stdout (`stream` 1) or stderr (2).
pub(crate) fn redirect_output(root: u32, stream: u8, header: &[u8]) -> io::Result<()> {
    let s = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&s, &out_addr(root)?)?;
    let mut h = header;
    while !h.is_empty() {
        match rustix::net::send(&s, h, SendFlags::NOSIGNAL) {
            Ok(n) => h = &h[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // dup2 clears close-on-exec on the new fd, as a stdio fd should be.
    match stream {
        1 => rustix::stdio::dup2_stdout(&s)?,
        _ => rustix::stdio::dup2_stderr(&s)?,
    }
    Ok(())
}

/// Reads what a stream peer has without blocking: `Ok(0)` at end of stream, `Err` with
/// `WouldBlock` when nothing is pending.
pub(crate) fn read_stream(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::net::recv(fd.as_fd(), &mut *buf, RecvFlags::DONTWAIT) {
            Ok((n, _)) => return Ok(n),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Binds and listens on the sink of process `root` (this process).
pub(crate) fn listen(root: u32) -> io::Result<OwnedFd> {
    let s = socket()?;
    rustix::net::bind(&s, &addr(root)?)?;
    rustix::net::listen(&s, 256)?;
    // Accepting must never block the replaying thread.
    rustix::io::ioctl_fionbio(&s, true)?;
    Ok(s)
}

/// Connects to the sink of process `root`, with a receive timeout for its replies.
pub(crate) fn connect(root: u32) -> io::Result<OwnedFd> {
    let s = socket()?;
    rustix::net::connect(&s, &addr(root)?)?;
    sockopt::set_socket_timeout(&s, sockopt::Timeout::Recv, Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// Accepts a connection without blocking; `None` when none is pending. The pid is the
/// kernel's word for the peer (-1: another user's process).
pub(crate) fn accept(l: &OwnedFd) -> io::Result<Option<(OwnedFd, i32)>> {
    match rustix::net::accept_with(l, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
        Ok(c) => {
            let cred = sockopt::socket_peercred(&c)?;
            if cred.uid != rustix::process::geteuid() {
                // Another user's process: not one of ours.
                return Ok(Some((c, -1)));
            }
            Ok(Some((c, cred.pid.as_raw_nonzero().get())))
        }
        Err(rustix::io::Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Sends one whole message; never raises SIGPIPE.
pub(crate) fn send(fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    loop {
        match rustix::net::send(fd, msg, SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// What a non-blocking receive found.
pub(crate) enum Recv {
    /// A message of this many bytes (more than the buffer: it was cut).
    Msg(usize),
    /// Nothing pending.
    Empty,
    /// The peer is gone.
    Closed,
}

/// Receives one message without blocking (`TRUNC` reports a message's real length).
pub(crate) fn recv(fd: &OwnedFd, buf: &mut [u8]) -> Recv {
    loop {
        match rustix::net::recv(
            fd.as_fd(),
            &mut *buf,
            RecvFlags::TRUNC | RecvFlags::DONTWAIT,
        ) {
            Ok((_, 0)) => return Recv::Closed,
            Ok((_, n)) => return Recv::Msg(n),
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return Recv::Empty,
            Err(_) => return Recv::Closed,
        }
    }
}

/// Blocking receive of a short reply (bounded by the receive timeout).
pub(crate) fn recv_reply(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::net::recv(fd, &mut *buf, RecvFlags::empty()) {
            Ok((_, n)) => return Ok(n),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until one of `fds` is readable or `timeout` passes.
pub(crate) fn poll(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<Vec<bool>> {
    use rustix::event::{PollFd, PollFlags};
    let mut pfds: Vec<PollFd<'_>> = fds.iter().map(|f| PollFd::new(f, PollFlags::IN)).collect();
    let ts = rustix::event::Timespec::try_from(timeout).map_err(io::Error::other)?;
    match rustix::event::poll(&mut pfds, Some(&ts)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(pfds.iter().map(|p| !p.revents().is_empty()).collect())
}

/// This process's connection to the sink, shared by all its threads without a lock (a
/// lock held by another thread at `fork` would stay locked in the child).
///
/// The word is `pid << 32 | state`: state 0 = not connected, `u32::MAX` = gave up,
/// otherwise fd + 1. A word whose pid is not this process's was inherited through
/// `fork` and is ignored: its fd number may since have been closed and reused.
pub(crate) mod conn {
    use super::*;
    use std::os::fd::{IntoRawFd, RawFd};
    use std::sync::atomic::{AtomicU64, Ordering};

    static STATE: AtomicU64 = AtomicU64::new(0);
    const GAVE_UP: u32 = u32::MAX;

    /// What the calling process has.
    pub(crate) enum Conn {
        None,
        GaveUp,
        Fd(BorrowedFd<'static>),
    }

    pub(crate) fn get(me: u32) -> Conn {
        let w = STATE.load(Ordering::Acquire);
        if (w >> 32) as u32 != me || w as u32 == 0 {
            return Conn::None;
        }
        if w as u32 == GAVE_UP {
            return Conn::GaveUp;
        }
        let fd = (w as u32 - 1) as RawFd;
        // SAFETY: the word carries this process's pid, so `fd` was published by `set`
        // in this process, and this crate never closes a published fd: it stays open
        // (and is this connection) for the rest of the process's life.
        Conn::Fd(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// Publishes `fd` (or `None`: give up) as this process's connection. If another
    /// thread won the race, `fd` is closed and theirs is returned.
    pub(crate) fn set(me: u32, fd: Option<OwnedFd>) -> Conn {
        let old = STATE.load(Ordering::Acquire);
        if (old >> 32) as u32 == me && old as u32 != 0 {
            return get(me);
        }
        let state = match &fd {
            Some(f) => {
                use std::os::fd::AsRawFd;
                f.as_raw_fd() as u32 + 1
            }
            None => GAVE_UP,
        };
        let new = (u64::from(me) << 32) | u64::from(state);
        match STATE.compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                if let Some(f) = fd {
                    // Published: from now on owned by STATE, never closed.
                    let _ = f.into_raw_fd();
                }
                get(me)
            }
            // Another thread published first; `fd` (if any) is dropped, closed.
            Err(_) => get(me),
        }
    }
}

//! The client side of the resource tracker: starts it on the first named creation of
//! each process and tells it which names to unlink if this process dies.
//!
//! Protocol: a `SOCK_SEQPACKET` socket pair; this process keeps one end, the tracker the
//! other. Each record is one packet: `R` or `U` followed by the bare name (register,
//! unregister). When every copy of this process's end is closed (exit, panic, SIGKILL,
//! exec) the tracker reads end-of-file and unlinks every name registered and not
//! unregistered since. Packets are atomic and ordered, so a name unlinked and unregistered
//! by its creator is never unlinked again by the tracker.
//!
//! One tracker per creating process: a fork child does not keep its parent's end (an
//! `atfork` handler closes it, and a changed pid is noticed too), so when a child that
//! created segments is killed, its segments go at once, whatever its parent does.
use crate::sys;
use std::io;
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// This process's end of the tracker socket, or -1.
static WRITER: AtomicI32 = AtomicI32::new(-1);
/// The pid that owns `WRITER` (a fork child sees its parent's pid here).
static OWNER: AtomicI32 = AtomicI32::new(0);
/// A tiny spin lock around starting the tracker (resettable in a fork child, unlike a
/// `Mutex`).
static STARTING: AtomicBool = AtomicBool::new(false);
static ATFORK: Once = Once::new();

extern "C" fn after_fork_in_child() {
    // Only atomics and `close` here: this runs in a fork child of a possibly
    // multi-threaded process.
    let fd = WRITER.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        sys::close_raw(fd);
    }
    OWNER.store(0, Ordering::SeqCst);
    STARTING.store(false, Ordering::SeqCst);
}

fn pid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// This process's tracker socket, starting the tracker if needed.
fn writer() -> io::Result<RawFd> {
    let me = pid();
    let fd = WRITER.load(Ordering::Acquire);
    if fd >= 0 && OWNER.load(Ordering::Acquire) == me {
        return Ok(fd);
    }
    while STARTING
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::thread::yield_now();
    }
    let r = start_locked(me);
    STARTING.store(false, Ordering::Release);
    r
}

fn start_locked(me: i32) -> io::Result<RawFd> {
    let fd = WRITER.load(Ordering::Acquire);
    if fd >= 0 {
        if OWNER.load(Ordering::Acquire) == me {
            return Ok(fd);
        }
        // Inherited across a fork that skipped the atfork handlers: the parent's end is
        // not ours to keep.
        WRITER.store(-1, Ordering::Release);
        sys::close_raw(fd);
    }
    let mut atfork = Ok(());
    ATFORK.call_once(|| atfork = sys::at_fork_child(after_fork_in_child));
    atfork?;
    let (ours, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    sys::spawn_tracker(theirs)?;
    let fd = ours.into_raw_fd();
    OWNER.store(me, Ordering::Release);
    WRITER.store(fd, Ordering::Release);
    Ok(fd)
}

fn send(op: u8, name: &str) -> io::Result<()> {
    let mut msg = [0u8; sys::SLOT];
    let n = name.len();
    if n + 1 > msg.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "name too long"));
    }
    msg[0] = op;
    msg[1..=n].copy_from_slice(name.as_bytes());
    let fd = writer()?;
    loop {
        match rustix::net::send(
            sys::borrow_fd(fd),
            &msg[..=n],
            rustix::net::SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Asks the tracker to unlink `name` when this process is gone. Restarts a tracker
/// that died (its old socket is retired without closing, so a concurrent sender can
/// never write to a reused fd number).
pub(crate) fn register(name: &str) -> io::Result<()> {
    match send(b'R', name) {
        Ok(()) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EPIPE)
                || e.raw_os_error() == Some(libc::ECONNRESET) =>
        {
            retire();
            send(b'R', name)
        }
        Err(e) => Err(e),
    }
}

/// Tells the tracker that `name` was unlinked by its creator.
pub(crate) fn unregister(name: &str) {
    // Only a process whose tracker knows the name has anything to say; a fork child
    // that inherited an owning handle has no tracker of its own for it.
    if WRITER.load(Ordering::Acquire) >= 0 && OWNER.load(Ordering::Acquire) == pid() {
        let _ = send(b'U', name);
    }
}

fn retire() {
    while STARTING
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::thread::yield_now();
    }
    WRITER.store(-1, Ordering::Release);
    STARTING.store(false, Ordering::Release);
}

/// Starts this process's resource tracker now rather than at the first named
/// [`SharedMemory::create`](crate::SharedMemory::create).
///
/// The tracker is forked from this process and shares its memory pages as they are at
/// that moment (copy-on-write); a program with a large heap that it keeps rewriting
/// should call this early, while it is small. Calling it again does nothing.
pub fn start_tracker() -> io::Result<()> {
    writer().map(|_| ())
}

//! The client side of the resource tracker, and the registration table it reads.
//!
//! The first named creation of a process makes a **registration table** (an anonymous
//! shared mapping, a memfd) and a `SOCK_SEQPACKET` socket pair, then forks the tracker
//! (see `sys::spawn_tracker`), which inherits the table's mapping and one end of the
//! socket. From then on, registering a name is a few plain stores into the table (no
//! system call, no message, no wake-up of the tracker): claim a free slot by
//! compare-and-swap, write the name, publish it. Unregistering frees the slot. The
//! tracker sleeps in `recv` until every copy of this process's end of the socket is
//! closed (exit, panic, abort, SIGKILL, exec), then unlinks every name the table still
//! holds and exits.
//!
//! A tracker that was killed (only SIGKILL can) is noticed at the next registration:
//! its end of the socket is closed. A new tracker is forked on the same table, so it
//! also unlinks the names registered before.
//!
//! One tracker per creating process: a fork child does not keep its parent's end (an
//! `atfork` handler drops it, and a changed pid is noticed too), so when a child that
//! created segments is killed, its segments go at once, whatever its parent does.
//!
//! A slot is `state: u32` (free, busy, live), a length byte and up to 255 name bytes.
//! A creator killed between creating a segment and publishing its slot (a few
//! instructions) leaks that segment; the other order could unlink a segment someone
//! else made, which is worse.
use crate::sys;
use mproc_core::Region;
use std::io;
use std::os::fd::{AsFd, IntoRawFd};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

/// The longest name a slot holds (NAME_MAX of `/dev/shm`).
pub(crate) const NAME_CAP: usize = 255;
/// Bytes per slot: state (4), length (1), name (255), padding to a multiple of 8.
const SLOT: usize = 264;
/// Slots in a table: segments one process can have registered at once.
const SLOTS: usize = 1 << 16;
/// Header: the high-water mark (slots ever used), so the tracker scans only those.
const HEADER: usize = 64;
const FREE: u32 = 0;
const BUSY: u32 = 1;
const LIVE: u32 = 2;

/// This process's end of the tracker socket, or -1.
static WRITER: AtomicI32 = AtomicI32::new(-1);
/// The pid that owns `WRITER` and `TABLE` (a fork child sees its parent's pid here).
static OWNER: AtomicI32 = AtomicI32::new(0);
/// The pid of this process's tracker (0 if none).
static TRACKER_PID: AtomicI32 = AtomicI32::new(0);
/// This process's registration table (leaked: it lives as long as the process).
static TABLE: AtomicPtr<Region> = AtomicPtr::new(std::ptr::null_mut());
/// Where to start looking for a free slot.
static HINT: AtomicUsize = AtomicUsize::new(0);
/// A tiny spin lock around starting the tracker (resettable in a fork child, unlike a
/// `Mutex`).
static STARTING: AtomicBool = AtomicBool::new(false);
static ATFORK: Once = Once::new();

extern "C" fn after_fork_in_child() {
    // Only atomics and `close` here: this runs in a fork child of a possibly
    // multi-threaded process. The parent's table stays mapped (and unused) in the child.
    let fd = WRITER.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        sys::close_raw(fd);
    }
    TABLE.store(std::ptr::null_mut(), Ordering::SeqCst);
    HINT.store(0, Ordering::SeqCst);
    OWNER.store(0, Ordering::SeqCst);
    TRACKER_PID.store(0, Ordering::SeqCst);
    STARTING.store(false, Ordering::SeqCst);
}

pub(crate) fn pid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

fn state(table: &Region, slot: usize) -> &AtomicU32 {
    table
        .atomic_u32(HEADER + slot * SLOT)
        .expect("slot inside the table")
}

fn high_water(table: &Region) -> &AtomicU32 {
    table.atomic_u32(0).expect("header inside the table")
}

/// This process's table, starting the tracker if needed (or again, if it was killed).
fn table(me: i32) -> io::Result<&'static Region> {
    let t = TABLE.load(Ordering::Acquire);
    if !t.is_null()
        && OWNER.load(Ordering::Acquire) == me
        && !sys::tracker_gone(WRITER.load(Ordering::Acquire))
    {
        return Ok(leaked(t));
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

fn leaked(t: *mut Region) -> &'static Region {
    sys::leaked_ref(t)
}

fn start_locked(me: i32) -> io::Result<&'static Region> {
    let t = TABLE.load(Ordering::Acquire);
    if !t.is_null() && OWNER.load(Ordering::Acquire) == me {
        let table = leaked(t);
        if sys::tracker_gone(WRITER.load(Ordering::Acquire)) {
            // Killed: a new tracker on the same table, which still lists every name.
            let (ours, theirs) = tracker_socket()?;
            let tracker = sys::spawn_tracker(theirs, ours.as_fd(), table)?;
            let old = WRITER.swap(ours.into_raw_fd(), Ordering::AcqRel);
            if old >= 0 {
                sys::close_raw(old);
            }
            TRACKER_PID.store(tracker, Ordering::Release);
        }
        return Ok(table);
    }
    let fd = WRITER.swap(-1, Ordering::AcqRel);
    if fd >= 0 {
        // Inherited across a fork that skipped the atfork handlers: the parent's end is
        // not ours to keep.
        sys::close_raw(fd);
    }
    let mut atfork = Ok(());
    ATFORK.call_once(|| atfork = sys::at_fork_child(after_fork_in_child));
    atfork?;
    let table: &'static Region = Box::leak(Box::new(Region::named_memfd(
        "mproc-shm-tracker",
        HEADER + SLOTS * SLOT,
    )?));
    let (ours, theirs) = tracker_socket()?;
    let tracker = sys::spawn_tracker(theirs, ours.as_fd(), table)?;
    TRACKER_PID.store(tracker, Ordering::Release);
    WRITER.store(ours.into_raw_fd(), Ordering::Release);
    HINT.store(0, Ordering::Release);
    TABLE.store(std::ptr::from_ref(table).cast_mut(), Ordering::Release);
    OWNER.store(me, Ordering::Release);
    Ok(table)
}

/// The socket pair between this process and its tracker.
fn tracker_socket() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    Ok(rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?)
}

/// The pid of this process's resource tracker, if it has one (it is started by the
/// first named creation, or by [`start_tracker`]). For diagnostics and tests.
#[doc(hidden)]
pub fn tracker_pid() -> Option<i32> {
    if OWNER.load(Ordering::Acquire) != pid() {
        return None;
    }
    let p = TRACKER_PID.load(Ordering::Acquire);
    (p > 0).then_some(p)
}

/// A registration: which slot of the creating process's table holds the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Registration {
    pid: i32,
    slot: usize,
}

impl Registration {
    /// Whether this process made the registration (and so may cancel it).
    pub(crate) fn is_ours(&self) -> bool {
        self.pid == pid()
    }
}

/// Asks this process's tracker to unlink `name` when the process is gone.
pub(crate) fn register(name: &str) -> io::Result<Registration> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > NAME_CAP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad name length",
        ));
    }
    let me = pid();
    let table = table(me)?;
    let start = HINT.load(Ordering::Relaxed).min(SLOTS);
    for slot in (start..SLOTS).chain(0..start) {
        let st = state(table, slot);
        if st.load(Ordering::Relaxed) != FREE
            || st
                .compare_exchange(FREE, BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            continue;
        }
        let base = HEADER + slot * SLOT;
        table
            .write_bytes(base + 4, &[bytes.len() as u8])
            .expect("in table");
        table.write_bytes(base + 5, bytes).expect("in table");
        high_water(table).fetch_max(slot as u32 + 1, Ordering::AcqRel);
        st.store(LIVE, Ordering::Release);
        HINT.store(slot + 1, Ordering::Relaxed);
        return Ok(Registration { pid: me, slot });
    }
    Err(io::Error::other(
        "too many tracked segments at once in this process (65536)",
    ))
}

/// Cancels a registration (its creator unlinked the name). Only the registering process
/// does anything: a fork child holding a copy of the handle has another table.
pub(crate) fn unregister(reg: Registration) {
    if !reg.is_ours() {
        return;
    }
    let t = TABLE.load(Ordering::Acquire);
    if t.is_null() {
        return;
    }
    let table = leaked(t);
    state(table, reg.slot).store(FREE, Ordering::Release);
    HINT.fetch_min(reg.slot, Ordering::Relaxed);
}

/// Calls `f` with every name registered in `table` (run by the tracker after its
/// creator is gone: no allocation, only reads of the shared table).
pub(crate) fn for_each_registered(table: &Region, mut f: impl FnMut(&[u8])) {
    let used = (high_water(table).load(Ordering::Acquire) as usize).min(SLOTS);
    let mut name = [0u8; NAME_CAP];
    for slot in 0..used {
        if state(table, slot).load(Ordering::Acquire) != LIVE {
            continue;
        }
        let base = HEADER + slot * SLOT;
        let mut len = [0u8];
        if table.read_bytes(base + 4, &mut len).is_err() {
            continue;
        }
        let len = len[0] as usize;
        if len == 0 || table.read_bytes(base + 5, &mut name[..len]).is_err() {
            continue;
        }
        let n = &name[..len];
        // The creator's checks again: never a path outside /dev/shm.
        if n == b"." || n == b".." || n.iter().any(|&b| b == b'/' || b == 0) {
            continue;
        }
        f(n);
    }
}

/// Starts this process's resource tracker now rather than at the first named
/// [`SharedMemory::create`](crate::SharedMemory::create).
///
/// The tracker is forked from this process and shares its memory pages as they are at
/// that moment (copy-on-write); a program with a large heap that it keeps rewriting
/// should call this early, while it is small. Calling it again does nothing while the
/// tracker runs, and starts a new one (on the same registrations) if it was killed.
///
/// # Errors
/// The system refused a socket, a memfd or a fork.
pub fn start_tracker() -> io::Result<()> {
    table(pid()).map(|_| ())
}

//! Every `unsafe` operation of this crate, behind small safe functions.
//!
//! # Safety
//!
//! Shared memory is written by other processes at any time. The invariants this module
//! keeps, once, for the whole crate:
//!
//! - A mapping is only ever reached through a raw pointer ([`Shared`]) or through
//!   atomics; the crate never creates a `&[u8]` or `&mut [u8]` over shared bytes in safe
//!   code. Copies in and out are made of relaxed atomic loads and stores
//!   (`mproc_core::atomic_copy`) between the mapping and a private Rust buffer, so they
//!   never data-race with the atomic views of the same bytes (`SharedMemory::atomic`)
//!   or with other processes' copies. A concurrent writer can make a read return a mix
//!   of old and new bytes (torn), which is harmless because every type read this way is
//!   valid for every bit pattern (`bytemuck::Pod`).
//! - A [`Shared`] never outlives the mapping it was made from (it borrows its owner).
//! - The tracker child (after `fork`) runs raw system calls only: no allocation, no lock,
//!   no stdio, nothing that a thread of the parent could have left half-done.

use bytemuck::Pod;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic;

/// A borrowed, bounds-checked window on shared memory: a pointer and a length, valid as
/// long as `'a`. Only copies and atomics go through it (see the module's `# Safety`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shared<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _owner: PhantomData<&'a ()>,
}

// SAFETY: the window only reaches memory through copies and atomics, which are fine from
// any thread; the memory is shared with other processes anyway.
unsafe impl Send for Shared<'_> {}
// SAFETY: as for `Send`.
unsafe impl Sync for Shared<'_> {}

impl<'a> Shared<'a> {
    /// The whole of a `memmap2` raw mapping.
    pub(crate) fn of_mmap(map: &'a memmap2::MmapRaw) -> Shared<'a> {
        Shared {
            ptr: NonNull::new(map.as_mut_ptr()).unwrap_or(NonNull::dangling()),
            len: map.len(),
            _owner: PhantomData,
        }
    }

    /// The whole of a memfd region.
    pub(crate) fn of_region(region: &'a mproc_core::Region) -> Shared<'a> {
        Shared {
            ptr: NonNull::new(region.as_ptr()).unwrap_or(NonNull::dangling()),
            len: region.len(),
            _owner: PhantomData,
        }
    }

    /// The address `offset` bytes in, if `offset + size <= len`.
    #[inline]
    fn at(&self, offset: usize, size: usize) -> Option<*mut u8> {
        let end = offset.checked_add(size)?;
        (end <= self.len).then(|| self.ptr.as_ptr().wrapping_add(offset))
    }

    /// Copies `dst.len()` bytes out, starting at `offset`.
    pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) -> Option<()> {
        let p = self.at(offset, dst.len())?;
        // SAFETY: in bounds of a live mapping (checked, and `'a` keeps it mapped), only
        // ever accessed atomically; a concurrent writer can only tear the bytes we copy
        // (module `# Safety`).
        unsafe { mproc_core::atomic_copy::load(p, dst) };
        Some(())
    }

    /// Copies `src` in, starting at `offset`.
    pub(crate) fn write(&self, offset: usize, src: &[u8]) -> Option<()> {
        let p = self.at(offset, src.len())?;
        // SAFETY: as in `read`, in the other direction. The mapping is writable
        // (every mapping of this crate is PROT_READ | PROT_WRITE).
        unsafe { mproc_core::atomic_copy::store(p, src) };
        Some(())
    }

    /// Fills `len` bytes at `offset` with `byte`.
    pub(crate) fn fill(&self, offset: usize, len: usize, byte: u8) -> Option<()> {
        let p = self.at(offset, len)?;
        // SAFETY: in bounds of a live, writable mapping (checked), accessed atomically.
        unsafe { mproc_core::atomic_copy::fill(p, len, byte) };
        Some(())
    }

    /// Reads a `P` at any byte offset (no alignment needed).
    #[inline]
    pub(crate) fn read_pod<P: Pod>(&self, offset: usize) -> Option<P> {
        let p = self.at(offset, size_of::<P>())?;
        // SAFETY: in bounds (checked); an atomic byte-wise read; any bit pattern is a
        // valid `P` (`Pod`), so a torn read is still a valid value.
        Some(unsafe { mproc_core::atomic_copy::load_pod(p) })
    }

    /// Writes a `P` at any byte offset (no alignment needed).
    #[inline]
    pub(crate) fn write_pod<P: Pod>(&self, offset: usize, value: P) -> Option<()> {
        self.write(offset, bytemuck::bytes_of(&value))
    }

    /// Reads the `index`th `P` of an array of `P` starting at byte 0 of this window.
    /// The window must start `align_of::<P>()`-aligned (page-aligned mappings are).
    #[inline]
    pub(crate) fn read_elem<P: Pod>(&self, index: usize) -> Option<P> {
        let offset = index.checked_mul(size_of::<P>())?;
        let p = self.at(offset, size_of::<P>())?;
        debug_assert!(p.cast::<P>().is_aligned());
        // SAFETY: in bounds (checked) and aligned (page-aligned start, multiple of the
        // size), read atomically; any bit pattern is valid (`Pod`).
        Some(unsafe { mproc_core::atomic_copy::load_pod(p) })
    }

    /// Writes the `index`th `P` (see [`Shared::read_elem`]).
    #[inline]
    pub(crate) fn write_elem<P: Pod>(&self, index: usize, value: P) -> Option<()> {
        let offset = index.checked_mul(size_of::<P>())?;
        let p = self.at(offset, size_of::<P>())?;
        debug_assert!(p.cast::<P>().is_aligned());
        // SAFETY: in bounds and aligned, as in `read_elem`; the mapping is writable.
        unsafe { mproc_core::atomic_copy::store_pod(p, value) };
        Some(())
    }

    /// Copies elements `start..start + dst.len()` out, converting each with `f`.
    pub(crate) fn read_elems<P: Pod, T>(
        &self,
        start: usize,
        dst: &mut [T],
        f: impl Fn(P) -> T,
    ) -> Option<()> {
        let offset = start.checked_mul(size_of::<P>())?;
        let bytes = dst.len().checked_mul(size_of::<P>())?;
        let p = self.at(offset, bytes)?;
        for (i, d) in dst.iter_mut().enumerate() {
            // SAFETY: `i < dst.len()`, so element `i` is inside the checked range; read
            // atomically; any bit pattern is a valid `P`.
            *d = f(unsafe { mproc_core::atomic_copy::load_pod(p.add(i * size_of::<P>())) });
        }
        Some(())
    }

    /// Copies `src` into elements `start..start + src.len()`, converting each with `f`.
    pub(crate) fn write_elems<P: Pod, T: Copy>(
        &self,
        start: usize,
        src: &[T],
        f: impl Fn(T) -> P,
    ) -> Option<()> {
        let offset = start.checked_mul(size_of::<P>())?;
        let bytes = src.len().checked_mul(size_of::<P>())?;
        let p = self.at(offset, bytes)?;
        for (i, s) in src.iter().enumerate() {
            // SAFETY: inside the checked range, written atomically, as in `read_elems`.
            unsafe { mproc_core::atomic_copy::store_pod(p.add(i * size_of::<P>()), f(*s)) };
        }
        Some(())
    }

    /// The atomic at byte `offset` (which must be aligned for `A`).
    pub(crate) fn atomic<A: ShmAtomic>(&self, offset: usize) -> Option<&'a A> {
        let p = self.at(offset, size_of::<A>())?;
        if !(p as usize).is_multiple_of(align_of::<A>()) {
            return None;
        }
        // SAFETY: in bounds and aligned (checked); the mapping lives for `'a`; every
        // bit pattern is a valid value of the integer atomics `ShmAtomic` is sealed to.
        Some(unsafe { A::from_ptr(p) })
    }

    /// `count` consecutive atomics starting at byte `offset` (aligned for `A`).
    pub(crate) fn atomics<A: ShmAtomic>(&self, offset: usize, count: usize) -> Option<&'a [A]> {
        let p = self.at(offset, count.checked_mul(size_of::<A>())?)?;
        if !(p as usize).is_multiple_of(align_of::<A>()) {
            return None;
        }
        // SAFETY: in bounds and aligned (checked); atomics may be shared between threads
        // and processes, and any bit pattern is valid for the sealed integer atomics.
        Some(unsafe { std::slice::from_raw_parts(p.cast::<A>(), count) })
    }

    /// The bytes as a slice.
    ///
    /// # Safety
    /// No process may write these bytes while the slice lives.
    pub(crate) unsafe fn as_slice(&self) -> &'a [u8] {
        // SAFETY: a live mapping of `len` bytes; the caller excludes writers.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes as a mutable slice.
    ///
    /// # Safety
    /// No other process or thread may read or write these bytes while the slice lives,
    /// and no other reference to them may exist.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn as_mut_slice(&self) -> &'a mut [u8] {
        // SAFETY: a live mapping of `len` bytes; the caller guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Elements as a slice of `T` (`len` must divide, start aligned).
    ///
    /// # Safety
    /// As [`Shared::as_slice`].
    pub(crate) unsafe fn as_slice_of<T: Pod>(
        &self,
        offset: usize,
        count: usize,
    ) -> Option<&'a [T]> {
        let p = self.at(offset, count.checked_mul(size_of::<T>())?)?;
        if !(p as usize).is_multiple_of(align_of::<T>()) {
            return None;
        }
        // SAFETY: in bounds and aligned (checked), any bit pattern valid (`Pod`); the
        // caller excludes writers.
        Some(unsafe { std::slice::from_raw_parts(p.cast::<T>(), count) })
    }

    /// Elements as a mutable slice of `T`.
    ///
    /// # Safety
    /// As [`Shared::as_mut_slice`].
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn as_mut_slice_of<T: Pod>(
        &self,
        offset: usize,
        count: usize,
    ) -> Option<&'a mut [T]> {
        let p = self.at(offset, count.checked_mul(size_of::<T>())?)?;
        if !(p as usize).is_multiple_of(align_of::<T>()) {
            return None;
        }
        // SAFETY: in bounds and aligned (checked); the caller guarantees exclusivity.
        Some(unsafe { std::slice::from_raw_parts_mut(p.cast::<T>(), count) })
    }
}

mod sealed {
    pub trait Sealed {}
}

/// The atomic integer types that can be placed in shared memory
/// ([`SharedMemory::atomic`](crate::SharedMemory::atomic)). Sealed: every implementor is
/// valid for every bit pattern (so `AtomicBool` and `AtomicPtr` are not among them).
pub trait ShmAtomic: sealed::Sealed + Sync + Sized + 'static {
    /// Makes a reference from a pointer.
    ///
    /// # Safety
    /// `p` must be non-null, aligned for `Self`, valid for reads and writes of
    /// `size_of::<Self>()` bytes for `'a`, and only accessed atomically during `'a`.
    #[doc(hidden)]
    unsafe fn from_ptr<'a>(p: *mut u8) -> &'a Self;
}

macro_rules! shm_atomic {
    ($($a:ident),*) => {$(
        impl sealed::Sealed for atomic::$a {}
        impl ShmAtomic for atomic::$a {
            unsafe fn from_ptr<'a>(p: *mut u8) -> &'a Self {
                // SAFETY: forwarded from this function's contract.
                unsafe { atomic::$a::from_ptr(p.cast()) }
            }
        }
    )*};
}
shm_atomic!(
    AtomicU8,
    AtomicI8,
    AtomicU16,
    AtomicI16,
    AtomicU32,
    AtomicI32,
    AtomicU64,
    AtomicI64,
    AtomicUsize,
    AtomicIsize
);

/// One `P` at byte 0 of a region this owns: the pointer is checked once (in bounds,
/// aligned) when made, so a read or write is one atomic access with no bounds check or
/// pointer chase on the way (the hot path of `Value::lock`).
pub(crate) struct OneElem<P> {
    region: std::sync::Arc<mproc_core::Region>,
    ptr: NonNull<u8>,
    _p: PhantomData<P>,
}

// SAFETY: the element is only reached through atomic copies, fine from any thread; the
// owned `Arc<Region>` is itself Send + Sync.
unsafe impl<P> Send for OneElem<P> {}
// SAFETY: as for `Send`.
unsafe impl<P> Sync for OneElem<P> {}

impl<P: Pod> OneElem<P> {
    /// Element 0 of `region`, if it holds a whole, aligned `P` there.
    pub(crate) fn new(region: std::sync::Arc<mproc_core::Region>) -> Option<Self> {
        let p = NonNull::new(region.as_ptr())?;
        // 8-aligned too, so a 1/2/4/8-byte `P` is aligned to its size (`load_word`);
        // a mapping starts on a page.
        let fits = region.len() >= size_of::<P>()
            && p.cast::<P>().is_aligned()
            && (p.as_ptr() as usize).is_multiple_of(8);
        fits.then_some(OneElem {
            region,
            ptr: p,
            _p: PhantomData,
        })
    }

    /// The region holding the element.
    pub(crate) fn region(&self) -> &std::sync::Arc<mproc_core::Region> {
        &self.region
    }

    /// Reads the element.
    #[inline(always)]
    pub(crate) fn get(&self) -> P {
        let p = self.ptr.as_ptr();
        // SAFETY: in bounds, aligned for `P` and to 8 bytes (checked in `new`, so a
        // 1/2/4/8-byte `P` is aligned to its size), mapped while `region` lives (owned), read
        // atomically; any bit pattern is a valid `P`.
        unsafe {
            match mproc_core::atomic_copy::load_word(p) {
                Some(v) => v,
                None => mproc_core::atomic_copy::load_pod(p),
            }
        }
    }

    /// Writes the element.
    #[inline(always)]
    pub(crate) fn set(&self, value: P) {
        let p = self.ptr.as_ptr();
        // SAFETY: as in `get`; every mapping of this crate is writable.
        unsafe {
            if !mproc_core::atomic_copy::store_word(p, value) {
                mproc_core::atomic_copy::store_pod(p, value);
            }
        }
    }
}

/// The table behind a pointer this crate stored in `tracker::TABLE`.
pub(crate) fn leaked_ref(t: *mut mproc_core::Region) -> &'static mproc_core::Region {
    // SAFETY: `t` comes from `Box::leak` in `tracker::start_locked` and is never freed,
    // so it is valid and immutable (the `Region` itself; its memory is shared) forever.
    unsafe { &*t }
}

/// Closes a raw fd this crate owns (the inherited tracker socket in a fork child).
pub(crate) fn close_raw(fd: RawFd) {
    // SAFETY: `fd` is the tracker socket, owned by this crate and no longer used by
    // anyone in this process. `close` is async-signal-safe (called from the atfork child
    // handler).
    unsafe { libc::close(fd) };
}

/// Registers `child` to run in the child after every `fork()` of this process.
pub(crate) fn at_fork_child(child: extern "C" fn()) -> io::Result<()> {
    // SAFETY: registering a handler with no prepare/parent part; `child` only touches
    // atomics and calls `close` (async-signal-safe).
    let r = unsafe { libc::pthread_atfork(None, None, Some(child)) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// Starts the tracker: a grandchild process in a session of its own that waits for
/// end-of-file on `reader` and then unlinks every name still registered in `table`
/// (a shared mapping it inherits across the fork; see `tracker.rs`).
///
/// # Why fork, not re-exec
///
/// Re-executing `/proc/self/exe` with a constructor hook works only when the running
/// executable links this crate (not when it is, say, a Python interpreter that loaded a
/// Rust extension), costs a full program start (~1.6 ms) and runs every other library
/// constructor of the program. A fork works in any host and costs a fraction of that,
/// on one condition, kept below: the child does nothing but async-signal-safe calls and
/// raw system calls on memory prepared before the fork (no allocation, no lock a parent
/// thread could hold, no stdio) until it exits. The price: the tracker shares the
/// parent's pages as they were at the fork (copy-on-write), so pages the parent rewrites
/// later are duplicated; call [`start_tracker`](crate::start_tracker) early in a program
/// with a large, churning heap.
///
/// The child forks once more and exits, so the tracker is nobody's child (no zombie, no
/// surprise for code that waits for "any child"); it starts a new session (process-group
/// signals aimed at the creator never reach it) and does not ask for PDEATHSIG (it must
/// outlive the creator).
/// Forks the tracker (through an intermediate child, so that it is nobody's child) on
/// `reader`, the far end of `writer`; returns the tracker's pid, which it sends first.
pub(crate) fn spawn_tracker(
    reader: OwnedFd,
    writer: BorrowedFd<'_>,
    table: &'static mproc_core::Region,
) -> io::Result<i32> {
    let rfd = reader.as_raw_fd();
    // SAFETY: `fork` from a possibly multi-threaded process. The child below only calls
    // async-signal-safe functions (`setsid`, `fork`, `_exit`, `close_range`, `signal`)
    // and raw system calls through rustix (no allocation, no locks, no TLS state).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: async-signal-safe calls only (see above). `setsid` fails only if we
        // already lead a group, which a fresh fork child never does.
        unsafe {
            libc::setsid();
            // The intermediate child forks the tracker and exits at once; being
            // single-threaded, its fork is as safe as any.
            let grandchild = libc::fork();
            if grandchild != 0 {
                libc::_exit(if grandchild > 0 { 0 } else { 1 });
            }
        }
        tracker_main(rfd, table)
    }
    drop(reader);
    loop {
        match rustix::process::waitpid(
            rustix::process::Pid::from_raw(pid),
            rustix::process::WaitOptions::empty(),
        ) {
            Ok(Some((_, status))) => {
                if status.exit_status() != Some(0) {
                    return Err(io::Error::other(
                        "the resource tracker could not be started",
                    ));
                }
                break;
            }
            Ok(None) => break,
            Err(rustix::io::Errno::INTR) => continue,
            // Someone else reaped it (a `waitpid(-1)` elsewhere).
            Err(rustix::io::Errno::CHILD) => break,
            Err(e) => return Err(e.into()),
        }
    }
    // The tracker's first message is its pid; EOF means it died at once.
    let mut buf = [0u8; 4];
    loop {
        match rustix::net::recv(writer, &mut buf[..], rustix::net::RecvFlags::empty()) {
            Ok((4, _)) => return Ok(i32::from_ne_bytes(buf)),
            Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => return Err(io::Error::other("the resource tracker died at start")),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether the tracker at the other end of `writer` is gone (its end was closed).
pub(crate) fn tracker_gone(writer: RawFd) -> bool {
    if writer < 0 {
        return true;
    }
    // SAFETY: `writer` is this process's open end of the tracker socket (the caller
    // holds it in `WRITER` and does not close it during this call).
    let fd = unsafe { BorrowedFd::borrow_raw(writer) };
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::empty(),
    )];
    match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())) {
        Ok(n) if n > 0 => fds[0]
            .revents()
            .intersects(rustix::event::PollFlags::HUP | rustix::event::PollFlags::ERR),
        _ => false,
    }
}

/// The directory POSIX shared memory lives in on Linux.
const SHM_DIR: &[u8] = b"/dev/shm/";

/// The tracker's life. Runs in the forked grandchild: raw system calls only.
fn tracker_main(rfd: RawFd, table: &'static mproc_core::Region) -> ! {
    // SAFETY: async-signal-safe calls; `close_range`, `close`, `sysconf(_SC_OPEN_MAX)`
    // (a getrlimit) and `signal` are thin wrappers of system calls. Every fd but the socket is closed, so the tracker keeps no pipe,
    // terminal or socket of the creator open (a reader waiting for EOF on the creator's
    // stdout must not wait for the tracker). Terminal and termination signals are
    // ignored: only EOF on the socket ends the tracker.
    unsafe {
        let above = libc::close_range((rfd + 1) as libc::c_uint, libc::c_uint::MAX, 0);
        if above == 0 {
            if rfd > 0 {
                libc::close_range(0, (rfd - 1) as libc::c_uint, 0);
            }
        } else {
            // No close_range (Linux before 5.9): close one by one, up to the fd limit.
            let max = match libc::sysconf(libc::_SC_OPEN_MAX) {
                n if n > 0 => n.min(1 << 20) as i32,
                _ => 1024,
            };
            for fd in (0..max).filter(|&fd| fd != rfd) {
                libc::close(fd);
            }
        }
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    let _ = rustix::process::chdir(c"/");
    // SAFETY: the socket stays open until `_exit` (closed above were all the others).
    let sock = unsafe { BorrowedFd::borrow_raw(rfd) };
    // Tell the creator who we are (so that it can tell when we are gone).
    let me = rustix::process::getpid()
        .as_raw_nonzero()
        .get()
        .to_ne_bytes();
    let _ = rustix::net::send(sock, &me, rustix::net::SendFlags::NOSIGNAL);
    let mut buf = [0u8; 16];
    loop {
        match rustix::net::recv(sock, &mut buf[..], rustix::net::RecvFlags::empty()) {
            Ok((_, 0)) => break,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    let mut path = [0u8; SHM_DIR.len() + crate::tracker::NAME_CAP + 1];
    path[..SHM_DIR.len()].copy_from_slice(SHM_DIR);
    crate::tracker::for_each_registered(table, |name| {
        let end = SHM_DIR.len() + name.len();
        path[SHM_DIR.len()..end].copy_from_slice(name);
        path[end] = 0;
        if let Ok(c) = std::ffi::CStr::from_bytes_with_nul(&path[..=end]) {
            let _ = rustix::fs::unlink(c);
        }
    });
    // SAFETY: ends the process without running any of the parent's atexit handlers or
    // destructors (none of which are ours to run).
    unsafe { libc::_exit(0) }
}

// The public `unsafe` accessors live here, beside the invariants they rely on.

impl crate::SharedMemory {
    /// The segment's bytes as a slice (Python's `shm.buf`, read-only).
    ///
    /// # Safety
    /// While the slice lives, no process (this one included, through any handle) may
    /// write these bytes: arrange it with a lock, a barrier or a protocol of your own.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.shared().as_slice() }
    }

    /// The segment's bytes as a mutable slice.
    ///
    /// # Safety
    /// While the slice lives, no other process, thread or handle may read or write these
    /// bytes, and no other slice of them may exist.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.shared().as_mut_slice() }
    }
}

impl<'a, T: Pod> crate::View<'a, T> {
    /// The elements as a slice.
    ///
    /// # Safety
    /// While the slice lives, no process may write these elements.
    pub unsafe fn as_slice(&self) -> &'a [T] {
        let (base, offset, len) = self.parts();
        // SAFETY: forwarded from this function's contract; range and alignment were
        // checked when the view was made.
        unsafe { base.as_slice_of(offset, len) }.expect("checked")
    }

    /// The elements as a mutable slice.
    ///
    /// # Safety
    /// While the slice lives, no other process, thread or handle may read or write
    /// these elements, and no other slice of them may exist.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &'a mut [T] {
        let (base, offset, len) = self.parts();
        // SAFETY: as in `as_slice`, with exclusivity from the caller.
        unsafe { base.as_mut_slice_of(offset, len) }.expect("checked")
    }
}

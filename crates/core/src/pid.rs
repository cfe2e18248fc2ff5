//! The calling process's id, cached in a way that survives `fork`.
//!
//! `getpid()` is a real system call in glibc, far too slow for an uncontended lock or a
//! queue slot's owner tag. The cache lives in a private page marked `MADV_WIPEONFORK`:
//! the kernel hands a fork child a zero-filled copy, so a child never sees its parent's
//! pid, however it was forked (libc, a raw clone, or a fork server) and without
//! `pthread_atfork`.
//!
//! The same page caches the process's pid namespace and the *owner tag* that lock
//! words and queue slots record (see [`owner_tag`] and [`holder_dead`]): a pid is only
//! meaningful inside one pid namespace, so a dead-holder check must never judge a pid
//! written in another one.
//!
//! ```
//! assert_eq!(mproc_core::pid::current(), std::process::id());
//! assert_eq!(mproc_core::pid::owner_tag(), std::process::id());
//! assert_ne!(mproc_core::pid::namespace(), 0);
//! ```
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

/// Set in an [`owner_tag`] written by a process that lives in another pid namespace
/// than the process it was forked from (its pid means nothing to the others). Real
/// pids stay below 2^22 (`PID_MAX_LIMIT`), so the bit never collides with one.
pub const FOREIGN_TAG: u32 = 1 << 30;

/// Word offsets inside the cache page.
const W_PID: usize = 0;
const W_TAG: usize = 1;
/// Set by [`crate::watch`] once this process runs its own watcher thread.
const W_WATCH: usize = 2;

/// The pid namespace of the last process that computed it (inherited through fork,
/// unlike the wiped page): a fork child compares its own with it.
static INHERITED_NS: AtomicU64 = AtomicU64::new(0);

static PID_PAGE: AtomicPtr<AtomicU32> = AtomicPtr::new(std::ptr::null_mut());
/// Set when the page could not be made (an old kernel): no cache, ask every time.
static NO_CACHE: AtomicU32 = AtomicU32::new(0);

fn getpid_raw() -> u32 {
    rustix::process::getpid().as_raw_pid() as u32
}

/// The identity of the calling process's pid namespace (the inode number of
/// `/proc/self/ns/pid` mixed with its device), or 0 if it cannot be read (no `/proc`).
/// Cached per process (a fork child reads its own).
pub fn namespace() -> u64 {
    let _ = current();
    if NO_CACHE.load(Ordering::Relaxed) != 0 {
        return read_namespace();
    }
    // `current()` filled this process's page, which recorded its namespace.
    INHERITED_NS.load(Ordering::SeqCst)
}

fn read_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self/ns/pid") {
        Ok(m) => m.ino() ^ m.dev().rotate_left(32),
        Err(_) => 0,
    }
}

/// The word `index` of the cache page, computing the page's contents first if this
/// process has not yet (a fresh process or a fork child, whose page was wiped).
#[inline(always)]
fn cached(index: usize) -> u32 {
    let page = PID_PAGE.load(Ordering::Acquire);
    if !page.is_null() {
        // SAFETY: a non-null `PID_PAGE` points at the start of a page that is never
        // unmapped (wiped on fork, but still mapped in the child); `index` < 3.
        let v = unsafe { (*page.add(index)).load(Ordering::Relaxed) };
        if v != 0 {
            return v;
        }
        fill(page);
        // SAFETY: as above.
        return unsafe { (*page.add(index)).load(Ordering::Relaxed) };
    }
    current_slow(index)
}

/// Computes the pid and the owner tag into `page` (tag first, pid last: a zero pid
/// means "not filled yet"). Racing threads agree: the first tag written wins, and it is
/// written before this process's namespace is recorded for its fork children.
#[cold]
fn fill(page: *mut AtomicU32) {
    let pid = getpid_raw();
    let mine = read_namespace();
    let tag = pid | if foreign(mine) { FOREIGN_TAG } else { 0 };
    // SAFETY: `page` is the live cache page (see `cached`).
    unsafe {
        let _ = (*page.add(W_TAG)).compare_exchange(0, tag, Ordering::SeqCst, Ordering::SeqCst);
        (*page.add(W_PID)).store(pid, Ordering::SeqCst);
    }
    INHERITED_NS.store(mine, Ordering::SeqCst);
}

/// Whether a process in namespace `mine` lives in another pid namespace than the
/// process it inherited its memory from (a fork made after `unshare(CLONE_NEWPID)`).
fn foreign(mine: u64) -> bool {
    let inherited = INHERITED_NS.load(Ordering::SeqCst);
    inherited != 0 && mine != inherited
}

/// The calling process's pid.
#[inline(always)]
pub fn current() -> u32 {
    cached(W_PID)
}

/// What a lock word or a queue slot records as its holder: the pid, with
/// [`FOREIGN_TAG`] set if this process was forked into another pid namespace than the
/// one its inherited shared memory belongs to. [`holder_dead`] never reports such a
/// holder dead.
#[inline(always)]
pub fn owner_tag() -> u32 {
    cached(W_TAG)
}

/// Whether the holder recorded as `tag` (an [`owner_tag`]) is certainly dead, so that
/// its lock may be taken over. A look at one moment (a `pidfd_open` and a poll); a
/// waiter that sleeps behind a holder is told of its death without looking, by
/// [`futex::wait_on_holder`](crate::futex::wait_on_holder) (see [`watch`](crate::watch)).
///
/// Why a pidfd and not the kernel's robust futex list (`set_robust_list`,
/// `FUTEX_OWNER_DIED`): that list has one head per thread, which the C library already
/// owns for its robust pthread mutexes, and it needs the word to hold a thread id, while
/// a Python-style lock may be released by another process than its taker. A pid is
/// reused once its process is reaped; a pidfd opened for a reused pid watches the new
/// process, so a waiter then waits for that one too: a delay, never a false "dead". Never `true` for a live holder: a tag from another pid
/// namespace, or any tag judged from a process that is itself in a foreign namespace,
/// is never called dead (a waiter then waits instead). Handles that cross between
/// processes are refused between pid namespaces (`TransferError::ForeignPidNamespace`),
/// so every other tag is a pid of the caller's own namespace.
pub fn holder_dead(tag: u32) -> bool {
    if tag == 0 || tag & FOREIGN_TAG != 0 || owner_tag() & FOREIGN_TAG != 0 {
        return false;
    }
    !crate::process_alive(tag as i32)
}

/// Whether this very process (not one it was forked from: the page is wiped in a fork
/// child) has marked itself with [`mark_watcher`]. Without the page (an old kernel)
/// always `true`: the caller then relies on comparing pids alone.
pub(crate) fn watcher_marked() -> bool {
    let _ = current();
    let page = PID_PAGE.load(Ordering::Acquire);
    if page.is_null() {
        return true;
    }
    // SAFETY: as in `cached`; `W_WATCH` < 1024 words of the page.
    unsafe { (*page.add(W_WATCH)).load(Ordering::Acquire) != 0 }
}

/// Records that this process runs its own watcher thread (see [`watcher_marked`]).
pub(crate) fn mark_watcher() {
    let _ = current();
    let page = PID_PAGE.load(Ordering::Acquire);
    if !page.is_null() {
        // SAFETY: as in `cached`.
        unsafe { (*page.add(W_WATCH)).store(1, Ordering::Release) };
    }
}

/// No page: compute every time (rare, an old kernel).
fn uncached(index: usize) -> u32 {
    let pid = getpid_raw();
    // Without a wiped page a fork child cannot tell it has not recorded its namespace
    // yet: the first one recorded stays, and every later process compares with it
    // (conservative: a fork child of a foreign process counts as foreign too).
    let mine = read_namespace();
    let _ = INHERITED_NS.compare_exchange(0, mine, Ordering::SeqCst, Ordering::SeqCst);
    if index == W_TAG && foreign(mine) {
        pid | FOREIGN_TAG
    } else {
        pid
    }
}

#[cold]
fn current_slow(index: usize) -> u32 {
    if NO_CACHE.load(Ordering::Relaxed) != 0 {
        return uncached(index);
    }
    use rustix::mm::{Advice, MapFlags, ProtFlags, madvise, mmap_anonymous, munmap};
    // SAFETY: a fresh anonymous private page; nothing else refers to it yet.
    let page = match unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            4096,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    } {
        Ok(p) => p,
        Err(_) => {
            NO_CACHE.store(1, Ordering::Relaxed);
            return uncached(index);
        }
    };
    // SAFETY: `page` is the page just mapped above, of length 4096.
    if unsafe { madvise(page, 4096, Advice::LinuxWipeOnFork) }.is_err() {
        // SAFETY: unmapping the page mapped above, which nothing refers to.
        let _ = unsafe { munmap(page, 4096) };
        NO_CACHE.store(1, Ordering::Relaxed);
        return uncached(index);
    }
    let page = page.cast::<AtomicU32>();
    if PID_PAGE
        .compare_exchange(
            std::ptr::null_mut(),
            page,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        // Another thread installed its page first: drop ours.
        // SAFETY: our page was never published, so nothing refers to it.
        let _ = unsafe { munmap(page.cast(), 4096) };
    }
    cached(index)
}

//! The calling process's id, cached in a way that survives `fork`.
//!
//! `getpid()` is a real system call in glibc, far too slow for an uncontended lock or a
//! queue slot's owner tag. The cache lives in a private page marked `MADV_WIPEONFORK`:
//! the kernel hands a fork child a zero-filled copy, so a child never sees its parent's
//! pid, however it was forked (libc, a raw clone, or a fork server) and without
//! `pthread_atfork`.
//!
//! ```
//! assert_eq!(mproc_core::pid::current(), std::process::id());
//! ```
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

static PID_PAGE: AtomicPtr<AtomicU32> = AtomicPtr::new(std::ptr::null_mut());
/// Set when the page could not be made (an old kernel): no cache, ask every time.
static NO_CACHE: AtomicU32 = AtomicU32::new(0);

fn getpid_raw() -> u32 {
    rustix::process::getpid().as_raw_pid() as u32
}

/// The calling process's pid.
#[inline(always)]
pub fn current() -> u32 {
    let page = PID_PAGE.load(Ordering::Acquire);
    if !page.is_null() {
        // SAFETY: a non-null `PID_PAGE` points at the start of a page that is never
        // unmapped (wiped on fork, but still mapped in the child).
        let cached = unsafe { (*page).load(Ordering::Relaxed) };
        if cached != 0 {
            return cached;
        }
        let pid = getpid_raw();
        // SAFETY: as above.
        unsafe { (*page).store(pid, Ordering::Relaxed) };
        return pid;
    }
    current_slow()
}

#[cold]
fn current_slow() -> u32 {
    if NO_CACHE.load(Ordering::Relaxed) != 0 {
        return getpid_raw();
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
            return getpid_raw();
        }
    };
    // SAFETY: `page` is the page just mapped above, of length 4096.
    if unsafe { madvise(page, 4096, Advice::LinuxWipeOnFork) }.is_err() {
        // SAFETY: unmapping the page mapped above, which nothing refers to.
        let _ = unsafe { munmap(page, 4096) };
        NO_CACHE.store(1, Ordering::Relaxed);
        return getpid_raw();
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
    current()
}

//! The raw locks: `#[repr(C)]` words in shared memory, and the [`RawLock`] trait the
//! typed wrappers ([`Lock`](crate::Lock), [`RLock`](crate::RLock),
//! [`Mutex`](crate::Mutex), [`Condition`](crate::Condition)) are generic over.
//!
//! The lock word holds the owner's tag (its pid, see [`mproc_core::pid::owner_tag`])
//! and a "waiters" bit (`tag | WAITERS`, 0 when free). An uncontended lock is one
//! compare-and-swap and an unlock one swap: no system call. A contended waiter
//! re-checks once, then sleeps on the futex through
//! [`futex::wait_on_holder`](mproc_core::futex::wait_on_holder): a plain sleep of
//! [`FIRST_SLICE`](mproc_core::futex::FIRST_SLICE) (1 ms), and if the lock is still held
//! by the same process after it, a sleep with no timeout while this process's watcher
//! thread waits on the holder's pidfd. When the holder exits the watcher wakes the
//! waiter, which takes the lock over and reports [`Acquired::OwnerDied`]: a holder that
//! dies is reported at once (within the waiter's scheduling delay), and a waiter behind
//! a live holder does not wake until the lock is released. The uncontended path and a
//! release that wakes a waiter are unchanged.
//!
//! **Poisoning.** A guard dropped while its thread panics releases the lock as
//! *poisoned* (`POISONED | tag`): the next acquirer takes it and gets the same
//! [`Acquired::OwnerDied`] report as for a killed holder, at once.
//!
//! **Pid reuse.** The owner is known by its pid only. If the owner dies and, before a
//! waiter opens its pidfd, the kernel gives its pid to a new process, the waiter watches
//! that process and keeps waiting until it exits too: a delay, never two owners.
//!
//! **Pid namespaces.** A pid is judged only inside the namespace it was written in:
//! handles are refused across pid namespaces when they are transferred, and a process
//! forked into another namespace tags its words so that nobody calls it dead (and it
//! calls nobody dead). See [`mproc_core::pid::holder_dead`].
use crate::sys::{SharedState, current_pid, current_tid};
use mproc_core::Deadline;
use mproc_core::futex::{self, HolderWait, WaitOutcome};
use std::sync::atomic::{AtomicU32, Ordering};

const WAITERS: u32 = 1 << 31;
/// Set (with the tag of the holder) by a guard dropped during a panic: the lock is free
/// to take, and its taker is told the holder failed.
const POISONED: u32 = 1 << 29;
/// The owner tag's bits: the pid (below 2^22) and `pid::FOREIGN_TAG` (bit 30).
const PID_MASK: u32 = !(WAITERS | POISONED);

/// How a lock was acquired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Acquired {
    /// The lock was free, or released by its holder.
    Clean,
    /// The previous holder (process `pid`) died while holding the lock, or panicked
    /// with a guard of it (the lock was poisoned); the caller now holds it and should
    /// repair whatever the lock protects.
    OwnerDied {
        /// The pid of the process that died or panicked holding the lock.
        pid: u32,
    },
}

/// A process-shared raw lock: the `lock_api::RawMutex` shape, for locks that live in
/// shared memory.
///
/// A `lock_api`-style `Mutex<R, T>` may rely on this trait: mutual exclusion holds
/// between acquisitions, and safe code cannot release a lock it does not hold (the
/// Python-style release of [`Lock`](crate::Lock) goes through its own API, and a
/// `Lock`'s raw state is reachable only through `unsafe` [`Lock::raw`](crate::Lock::raw)).
/// State placed in a region you share ([`SharedState::in_region`]) is another matter:
/// whoever holds the region can rewrite its bytes (`Region::write_bytes`, a
/// `Lock::in_region` at the same offset), so a data-guarding wrapper over such state
/// must be `unsafe` to construct, as [`Mutex::in_region`](crate::Mutex::in_region) is.
///
/// # Safety
///
/// An implementation must provide mutual exclusion between every thread of every
/// process that uses the same state: after `lock`/`try_lock_until` returned `Some`,
/// no other caller's `lock`/`try_lock_until` returns `Some` until `unlock` (or
/// `release_save`) is called — except that a recursive implementation may grant the
/// lock again to the thread that holds it, in which case it must not be used to hand
/// out `&mut` access. A holder that certainly died (never one that may still run) may
/// have its lock taken over, reported as [`Acquired::OwnerDied`]; so may a lock
/// released with [`RawLock::unlock_poisoned`]. No safe method may release a lock.
#[allow(unsafe_code)]
pub unsafe trait RawLock {
    /// Acquires the lock, waiting until `deadline`. `None` means the deadline passed.
    fn lock_until(&self, deadline: Deadline) -> Option<Acquired>;

    /// Acquires the lock, waiting as long as it takes.
    fn lock(&self) -> Acquired {
        loop {
            if let Some(a) = self.lock_until(Deadline::never()) {
                return a;
            }
        }
    }

    /// Acquires the lock if that needs no waiting (a lock held by a dead process is
    /// taken over).
    fn try_lock(&self) -> Option<Acquired> {
        self.lock_until(Deadline::now())
    }

    /// Releases the lock once.
    ///
    /// # Safety
    ///
    /// The caller must own the acquisition being released: the calling thread must
    /// hold the lock (for a plain lock, an acquisition that no guard or other code still
    /// relies on may be released from another thread, as Python's `Lock` allows).
    unsafe fn unlock(&self);

    /// Releases the lock once, marking it poisoned: the next acquirer gets
    /// [`Acquired::OwnerDied`] naming this process, as if its holder had died. Guards
    /// call this instead of [`RawLock::unlock`] when dropped during a panic. A
    /// recursive lock poisons only when its last level is released.
    ///
    /// # Safety
    ///
    /// As [`RawLock::unlock`].
    unsafe fn unlock_poisoned(&self) {
        // SAFETY: the caller's contract is unlock's.
        unsafe { self.unlock() }
    }

    /// Whether the lock is held by anyone.
    fn is_locked(&self) -> bool;

    /// Whether the calling thread holds the lock, as far as the lock can tell: for a
    /// lock that records only the owning process ([`RawMutex`]), whether this process
    /// holds it. A hint for error reporting: never rely on it for exclusive access.
    fn is_owned_by_current(&self) -> bool;

    /// Releases the lock completely (all recursion levels) and returns what
    /// [`RawLock::lock_restore`] needs to take it back (Python's `_release_save`).
    ///
    /// # Safety
    ///
    /// The calling thread must hold the lock.
    unsafe fn release_save(&self) -> u32;

    /// Takes the lock back after [`RawLock::release_save`] (Python's `_acquire_restore`).
    fn lock_restore(&self, saved: u32) -> Acquired;
}

/// Whether the owner recorded in a lock word is certainly gone (never for a holder that
/// may be alive, in particular one in another pid namespace). A held word that names no
/// owner at all (only the WAITERS bit: memory written by something else) has no holder
/// to wait for, so it is taken over too.
fn owner_dead(tag: u32) -> bool {
    tag == 0 || mproc_core::pid::holder_dead(tag)
}

/// The pid to report for an owner tag.
fn reported_pid(tag: u32) -> u32 {
    tag & !mproc_core::pid::FOREIGN_TAG
}

/// The contended path shared by the pid-word locks: sleep until woken by a release or
/// by the watcher that sees the owner exit. Returns once `word` holds
/// `me | WAITERS` (or `me`) on our behalf.
#[cold]
fn lock_word_slow(word: &AtomicU32, me: u32, deadline: Deadline) -> Option<Acquired> {
    let blocking = deadline.remaining().is_none_or(|d| !d.is_zero());
    // No spin here, unlike events: measured between two processes hammering one lock,
    // a waiter that spins (even reading only) keeps pulling the cache line away from
    // the holder and costs more throughput than its sleep. A lock's holder is running
    // and will release soon; the waiter re-checks once, then sleeps.
    loop {
        let mut cur = word.load(Ordering::Relaxed);
        if cur == 0 {
            // Take it with WAITERS set: others may still sleep on the word.
            match word.compare_exchange(0, me | WAITERS, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Some(Acquired::Clean),
                Err(_) => continue,
            }
        }
        if cur & POISONED != 0 {
            // Released by a panicking holder: take it, and say so.
            match word.compare_exchange(cur, me | WAITERS, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => {
                    return Some(Acquired::OwnerDied {
                        pid: reported_pid(cur & PID_MASK),
                    });
                }
                Err(_) => continue,
            }
        }
        let owner = cur & PID_MASK;
        if !blocking || deadline.is_expired() {
            // One last look: a lock whose holder is gone is taken over even by a try.
            if owner != me && owner_dead(owner) {
                if word
                    .compare_exchange(cur, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some(Acquired::OwnerDied {
                        pid: reported_pid(owner),
                    });
                }
                continue;
            }
            return None;
        }
        if cur & WAITERS == 0 {
            if word
                .compare_exchange(cur, cur | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            cur |= WAITERS;
        }
        let died = if owner == 0 {
            // Held by nobody (only WAITERS: memory written by something else): after a
            // short sleep, take it over.
            let slice = deadline.min(Deadline::after(futex::FIRST_SLICE));
            futex::wait(word, cur, slice) == WaitOutcome::TimedOut && !deadline.is_expired()
        } else {
            // Our own process holds it (another thread, or a Python-style lock taken
            // earlier): nobody to watch.
            let holder = if owner == me { 0 } else { owner };
            futex::wait_on_holder(word, cur, holder, deadline) == HolderWait::HolderDied
        };
        if died
            && word
                .compare_exchange(cur, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return Some(Acquired::OwnerDied {
                pid: reported_pid(owner),
            });
        }
    }
}

#[inline]
fn unlock_word(word: &AtomicU32) -> u32 {
    let prev = word.swap(0, Ordering::Release);
    if prev & WAITERS != 0 {
        futex::wake(word, 1);
    }
    prev
}

/// Releases `word` as poisoned by the calling process (see [`POISONED`]).
#[cold]
fn poison_word(word: &AtomicU32) {
    let prev = word.swap(POISONED | current_pid(), Ordering::Release);
    if prev & WAITERS != 0 {
        futex::wake(word, 1);
    }
}

/// Whether a word means "held" (poisoned means free to take).
#[inline]
fn held(w: u32) -> bool {
    w != 0 && w & POISONED == 0
}

/// The holder's tag in a held word.
#[inline]
fn holder(w: u32) -> Option<u32> {
    held(w).then_some(w & PID_MASK)
}

/// The raw lock behind [`Lock`](crate::Lock) and [`Mutex`](crate::Mutex): one futex
/// word (`owner pid | WAITERS`). All-zero is the unlocked state.
///
/// ```
/// use mproc_sync::{RawMutex, RawLock, Acquired, SharedState};
/// let region = mproc_core::Region::new(4096).unwrap();
/// let raw = RawMutex::in_region(&region, 64).unwrap(); // zeroed memory: unlocked
/// assert_eq!(raw.lock(), Acquired::Clean);
/// assert!(raw.try_lock().is_none());
/// // SAFETY: locked just above.
/// unsafe { raw.unlock() };
/// ```
#[repr(C)]
#[derive(Debug, Default)]
pub struct RawMutex {
    word: AtomicU32,
}

// SAFETY: #[repr(C)], one atomic; zero = unlocked.
#[allow(unsafe_code)]
unsafe impl SharedState for RawMutex {}

impl RawMutex {
    /// An unlocked lock (for memory you initialise yourself; shared memory that is
    /// zero-filled already holds one).
    pub const fn new() -> Self {
        RawMutex {
            word: AtomicU32::new(0),
        }
    }

    /// The pid of the process holding the lock, if any.
    pub fn owner(&self) -> Option<u32> {
        holder(self.word.load(Ordering::Relaxed)).map(reported_pid)
    }

    /// Releases the lock whoever holds it (Python's `Lock.release` semantics).
    /// Returns `false` if it was not locked (free or poisoned: a poisoned lock stays
    /// poisoned until someone acquires it).
    ///
    /// # Safety
    ///
    /// No acquisition that is still relied on for exclusive access (a guard, a
    /// `lock_api`-style mutex over this lock) may be released this way: only an
    /// acquisition that guards nothing, as Python's `Lock` does.
    ///
    /// Safe code cannot call it:
    ///
    /// ```compile_fail,E0133
    /// let raw = mproc_sync::RawMutex::new();
    /// raw.release_any();
    /// ```
    #[allow(unsafe_code)]
    pub unsafe fn release_any(&self) -> bool {
        let mut w = self.word.load(Ordering::Relaxed);
        loop {
            if !held(w) {
                return false;
            }
            match self
                .word
                .compare_exchange_weak(w, 0, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        if w & WAITERS != 0 {
            futex::wake(&self.word, 1);
        }
        true
    }

    /// The futex word (for benchmarks and diagnostics).
    #[doc(hidden)]
    pub fn word(&self) -> &AtomicU32 {
        &self.word
    }
}

// SAFETY: the word is taken by compare-and-swap from 0 (or from a dead owner's value,
// by one CAS so only one taker wins) and given back by a swap to 0: mutual exclusion.
#[allow(unsafe_code)]
unsafe impl RawLock for RawMutex {
    #[inline]
    fn lock_until(&self, deadline: Deadline) -> Option<Acquired> {
        let me = current_pid();
        if self
            .word
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Some(Acquired::Clean);
        }
        lock_word_slow(&self.word, me, deadline)
    }

    #[inline]
    fn lock(&self) -> Acquired {
        let me = current_pid();
        if self
            .word
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Acquired::Clean;
        }
        loop {
            if let Some(a) = lock_word_slow(&self.word, me, Deadline::never()) {
                return a;
            }
        }
    }

    #[inline]
    unsafe fn unlock(&self) {
        unlock_word(&self.word);
    }

    unsafe fn unlock_poisoned(&self) {
        poison_word(&self.word);
    }

    fn is_locked(&self) -> bool {
        held(self.word.load(Ordering::Relaxed))
    }

    fn is_owned_by_current(&self) -> bool {
        holder(self.word.load(Ordering::Relaxed)) == Some(current_pid())
    }

    unsafe fn release_save(&self) -> u32 {
        unlock_word(&self.word);
        1
    }

    fn lock_restore(&self, _saved: u32) -> Acquired {
        self.lock()
    }
}

/// The raw lock behind [`RLock`](crate::RLock): the pid word of [`RawMutex`] plus the
/// owning thread's id and a recursion count. All-zero is the unlocked state.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RawRLock {
    word: AtomicU32,
    tid: AtomicU32,
    count: AtomicU32,
}

// SAFETY: #[repr(C)], atomics only; zero = unlocked.
#[allow(unsafe_code)]
unsafe impl SharedState for RawRLock {}

/// Why an [`RLock`](crate::RLock) could not be released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RLockReleaseError {
    /// The calling thread does not hold the lock (Python: "cannot release un-acquired lock").
    NotOwner,
}

impl std::fmt::Display for RLockReleaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cannot release an RLock the calling thread does not hold")
    }
}

impl std::error::Error for RLockReleaseError {}

impl RawRLock {
    /// An unlocked recursive lock.
    pub const fn new() -> Self {
        RawRLock {
            word: AtomicU32::new(0),
            tid: AtomicU32::new(0),
            count: AtomicU32::new(0),
        }
    }

    #[inline]
    fn owned_by(&self, pid: u32, tid: u32) -> bool {
        // Only the owning thread ever writes its own tid here, and it clears it before
        // releasing, so seeing our own (pid, tid) means we hold the lock.
        holder(self.word.load(Ordering::Relaxed)) == Some(pid)
            && self.tid.load(Ordering::Relaxed) == tid
    }

    /// How many times the calling thread holds the lock (0 if it does not).
    pub fn recursion_count(&self) -> u32 {
        if self.owned_by(current_pid(), current_tid()) {
            self.count.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// The (pid, tid) holding the lock, if any.
    pub fn owner(&self) -> Option<(u32, u32)> {
        holder(self.word.load(Ordering::Relaxed))
            .map(|tag| (reported_pid(tag), self.tid.load(Ordering::Relaxed)))
    }

    /// Releases one level, checking that the calling thread holds the lock.
    pub fn release_checked(&self) -> Result<(), RLockReleaseError> {
        if !self.owned_by(current_pid(), current_tid()) {
            return Err(RLockReleaseError::NotOwner);
        }
        self.unlock_one(false);
        Ok(())
    }

    fn unlock_one(&self, poison: bool) {
        let c = self.count.load(Ordering::Relaxed);
        if c > 1 {
            self.count.store(c - 1, Ordering::Relaxed);
            return;
        }
        self.count.store(0, Ordering::Relaxed);
        self.tid.store(0, Ordering::Relaxed);
        if poison {
            poison_word(&self.word);
        } else {
            unlock_word(&self.word);
        }
    }

    fn take(&self, tid: u32, count: u32, how: Option<Acquired>) -> Option<Acquired> {
        if how.is_some() {
            self.tid.store(tid, Ordering::Relaxed);
            self.count.store(count, Ordering::Relaxed);
        }
        how
    }
}

// SAFETY: the pid word gives mutual exclusion between threads/processes as in
// `RawMutex`; re-entry is granted only to the (pid, tid) that holds it.
#[allow(unsafe_code)]
unsafe impl RawLock for RawRLock {
    fn lock_until(&self, deadline: Deadline) -> Option<Acquired> {
        let me = current_pid();
        let tid = current_tid();
        if self.owned_by(me, tid) {
            let c = self.count.load(Ordering::Relaxed);
            // Like std's ReentrantLock: overflowing the count is a bug, not an input.
            let c = c
                .checked_add(1)
                .expect("RLock acquired recursively more than u32::MAX times");
            self.count.store(c, Ordering::Relaxed);
            return Some(Acquired::Clean);
        }
        let how = if self
            .word
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            Some(Acquired::Clean)
        } else {
            lock_word_slow(&self.word, me, deadline)
        };
        self.take(tid, 1, how)
    }

    unsafe fn unlock(&self) {
        self.unlock_one(false);
    }

    unsafe fn unlock_poisoned(&self) {
        self.unlock_one(true);
    }

    fn is_locked(&self) -> bool {
        held(self.word.load(Ordering::Relaxed))
    }

    fn is_owned_by_current(&self) -> bool {
        self.owned_by(current_pid(), current_tid())
    }

    unsafe fn release_save(&self) -> u32 {
        let c = self.count.swap(0, Ordering::Relaxed);
        self.tid.store(0, Ordering::Relaxed);
        unlock_word(&self.word);
        c.max(1)
    }

    fn lock_restore(&self, saved: u32) -> Acquired {
        let me = current_pid();
        let tid = current_tid();
        let how = loop {
            if self
                .word
                .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                break Acquired::Clean;
            }
            if let Some(a) = lock_word_slow(&self.word, me, Deadline::never()) {
                break a;
            }
        };
        self.take(tid, saved.max(1), Some(how));
        how
    }
}

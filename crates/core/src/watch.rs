//! The kernel's notice that a lock holder died, delivered to the futex word a waiter
//! sleeps on.
//!
//! A waiter behind a held word (a lock, a queue slot) sleeps on a futex; a pidfd tells
//! when a process exits, but a thread cannot sleep on both at once. So each process has
//! one watcher thread (`mproc-watcher`, started at the first registration), blocked
//! in `epoll_wait` on the pidfds of the holders that this process's waiters sleep behind.
//! When a pidfd becomes readable the holder has exited (a pidfd stays bound to the
//! process it was opened for, so this never calls a live process dead). The watcher then
//! wakes the registered word, and keeps waking it (every millisecond for the first
//! 100 ms, then every 50 ms) until the waiter deregisters: a wake that lands between the
//! waiter's last look and its `futex_wait` is therefore never lost.
//!
//! Registration and deregistration take the watcher's lock, which the watcher also holds
//! while it wakes: once a [`HolderWatch`] is dropped, its word is never touched again.
//! The watcher wakes by address (a raw `FUTEX_WAKE`, no reference to the word), so even
//! a watch leaked with `mem::forget` cannot make it read freed memory.
//!
//! A fork child inherits no thread: the watcher records the pid of its process and
//! marks the process in its fork-wiped pid page (see [`pid`](mod@crate::pid)), so a child
//! builds its own watcher the first time it needs one, never touching its parent's.
//!
//! ```
//! use mproc_core::watch::{self, Watch};
//! use std::sync::atomic::AtomicU32;
//! let word = AtomicU32::new(1);
//! // This process is alive: an armed watch that has not fired.
//! match watch::watch_holder(&word, mproc_core::pid::owner_tag()) {
//!     Watch::Armed(w) => assert!(!w.holder_died()),
//!     other => panic!("{other:?}"),
//! }
//! // A tag of 0 names nobody: never judged.
//! assert!(matches!(watch::watch_holder(&word, 0), Watch::Unjudged));
//! ```
use crate::pid;
use rustix::event::Timespec;
use rustix::event::epoll::{self, Event, EventData, EventFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, pidfd_open};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a fired watch re-wakes its word while its waiter has not deregistered,
/// during [`REWAKE_FAST_FOR`] after the holder died; after that, [`REWAKE_SLOW`].
const REWAKE_FAST: Duration = Duration::from_millis(1);
const REWAKE_FAST_FOR: Duration = Duration::from_millis(100);
const REWAKE_SLOW: Duration = Duration::from_millis(50);

/// What [`watch_holder`] found.
#[derive(Debug)]
pub enum Watch<'a> {
    /// The holder lives (or lived when its pidfd was opened): the watcher will wake the
    /// word when it exits.
    Armed(HolderWatch<'a>),
    /// No process has the holder's pid any more: the holder is certainly gone.
    HolderGone,
    /// The tag is never judged: 0 (nobody), a tag from another pid namespace, or any tag
    /// seen from a process in a foreign namespace (see [`pid::holder_dead`]).
    Unjudged,
    /// The holder could not be watched (no fd left for its pidfd, or no watcher thread):
    /// the caller must look for itself now and then ([`pid::holder_dead`]).
    Unavailable,
}

/// A registration with this process's watcher: while it lives, the holder's exit wakes
/// the word. Dropping it deregisters (and closes the pidfd); after the drop the watcher
/// never wakes the word again.
#[derive(Debug)]
pub struct HolderWatch<'a> {
    watcher: &'static Watcher,
    id: u64,
    _word: PhantomData<&'a AtomicU32>,
}

impl HolderWatch<'_> {
    /// Whether the watcher saw the holder exit (then the holder is certainly dead).
    pub fn holder_died(&self) -> bool {
        self.watcher
            .lock()
            .entries
            .get(&self.id)
            .is_some_and(|e| e.fired.is_some())
    }
}

impl Drop for HolderWatch<'_> {
    fn drop(&mut self) {
        let entry = self.watcher.lock().entries.remove(&self.id);
        if let Some(e) = entry
            && e.fired.is_none()
        {
            // Explicitly: a fork child may hold a copy of the pidfd, so closing ours
            // would not remove it from the epoll set.
            let _ = epoll::delete(&self.watcher.epoll, &e.pidfd);
        }
    }
}

/// Registers `word` to be woken (all its waiters, in this process and others) when the
/// process recorded as `holder` (an [`owner_tag`](pid::owner_tag)) exits.
///
/// Costs a `pidfd_open` and an `epoll_ctl` (plus, once per process, a thread): meant for
/// a waiter that already waited a while, not for a briefly contended one.
pub fn watch_holder(word: &AtomicU32, holder: u32) -> Watch<'_> {
    if holder == 0 || holder & pid::FOREIGN_TAG != 0 || pid::owner_tag() & pid::FOREIGN_TAG != 0 {
        return Watch::Unjudged;
    }
    let Some(p) = Pid::from_raw(holder as i32) else {
        return Watch::Unjudged;
    };
    let pidfd = match pidfd_open(p, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(Errno::SRCH) => return Watch::HolderGone,
        Err(_) => return Watch::Unavailable,
    };
    let Some(watcher) = watcher() else {
        return Watch::Unavailable;
    };
    let mut st = watcher.lock();
    let id = st.next_id;
    st.next_id += 1;
    if epoll::add(
        &watcher.epoll,
        &pidfd,
        EventData::new_u64(id),
        EventFlags::IN,
    )
    .is_err()
    {
        return Watch::Unavailable;
    }
    st.entries.insert(
        id,
        Entry {
            word: word.as_ptr() as usize,
            pidfd,
            fired: None,
            next_wake: None,
        },
    );
    drop(st);
    Watch::Armed(HolderWatch {
        watcher,
        id,
        _word: PhantomData,
    })
}

struct Entry {
    /// The futex word's address (only ever passed to `FUTEX_WAKE`).
    word: usize,
    pidfd: OwnedFd,
    /// When the watcher saw the holder exit.
    fired: Option<Instant>,
    next_wake: Option<Instant>,
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry>,
    next_id: u64,
}

/// One process's watcher: its epoll set, its registrations, and the process it serves.
struct Watcher {
    pid: u32,
    epoll: OwnedFd,
    state: Mutex<State>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("pid", &self.pid).finish()
    }
}

impl Watcher {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// This process's watcher (leaked on purpose: it lives as long as the process; a fork
/// child leaves its parent's alone, whose lock a vanished thread may hold).
static WATCHER: AtomicPtr<Watcher> = AtomicPtr::new(std::ptr::null_mut());
/// The pid of the process one of whose threads is starting a watcher, or 0.
static STARTING: AtomicU32 = AtomicU32::new(0);

fn current_watcher(me: u32) -> Option<&'static Watcher> {
    let w = sys::installed(WATCHER.load(Ordering::Acquire))?;
    // The mark lives in a page the kernel wipes in a fork child: a descendant that
    // happens to get the pid of an ancestor whose watcher it inherited still builds its
    // own.
    (w.pid == me && pid::watcher_marked()).then_some(w)
}

fn watcher() -> Option<&'static Watcher> {
    let me = pid::current();
    if let Some(w) = current_watcher(me) {
        return Some(w);
    }
    start(me)
}

#[cold]
fn start(me: u32) -> Option<&'static Watcher> {
    // One starter per process; a value left by another process (a parent forked while
    // one of its threads was starting) counts as free.
    loop {
        let s = STARTING.load(Ordering::Acquire);
        if s == me {
            std::thread::yield_now();
            if let Some(w) = current_watcher(me) {
                return Some(w);
            }
            continue;
        }
        if STARTING
            .compare_exchange(s, me, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            break;
        }
    }
    let w = current_watcher(me).or_else(|| build(me));
    STARTING.store(0, Ordering::Release);
    w
}

fn build(me: u32) -> Option<&'static Watcher> {
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).ok()?;
    let w: &'static Watcher = Box::leak(Box::new(Watcher {
        pid: me,
        epoll,
        state: Mutex::new(State::default()),
    }));
    let spawned = std::thread::Builder::new()
        .name("mproc-watcher".into())
        .spawn(move || run(w));
    if spawned.is_err() {
        return None;
    }
    // Any previous watcher is the parent's, inherited through fork: its epoll set is
    // shared with the parent, so this process never touches it (nor closes its fd, whose
    // number this process may since have closed and reused).
    WATCHER.store(w as *const Watcher as *mut Watcher, Ordering::Release);
    pid::mark_watcher();
    Some(w)
}

/// The watcher thread: waits for holders' pidfds, wakes the words of those that exited.
fn run(w: &'static Watcher) {
    let mut events = [Event {
        flags: EventFlags::empty(),
        data: EventData::new_u64(0),
    }; 32];
    loop {
        let timeout = next_timeout(&w.lock());
        let n = match epoll::wait(&w.epoll, &mut events[..], timeout.as_ref()) {
            Ok(n) => n,
            Err(Errno::INTR) => 0,
            Err(_) => {
                // Nothing expected (EBADF cannot happen, the set is ours): do not spin.
                std::thread::sleep(REWAKE_SLOW);
                0
            }
        };
        let mut st = w.lock();
        let now = Instant::now();
        for ev in &events[..n] {
            let id = ev.data.u64();
            if let Some(e) = st.entries.get_mut(&id)
                && e.fired.is_none()
            {
                e.fired = Some(now);
                e.next_wake = Some(now);
                // A level-triggered, exited pidfd stays readable: take it out of the set.
                let _ = epoll::delete(&w.epoll, &e.pidfd);
            }
        }
        for e in st.entries.values_mut() {
            if let (Some(fired), Some(at)) = (e.fired, e.next_wake)
                && at <= now
            {
                sys::wake_all(e.word);
                let every = if now - fired < REWAKE_FAST_FOR {
                    REWAKE_FAST
                } else {
                    REWAKE_SLOW
                };
                e.next_wake = Some(now + every);
            }
        }
    }
}

/// How long the watcher may sleep: until the next re-wake of a fired watch, or for
/// ever when none has fired.
fn next_timeout(st: &State) -> Option<Timespec> {
    let next = st.entries.values().filter_map(|e| e.next_wake).min()?;
    let left = next.saturating_duration_since(Instant::now());
    Timespec::try_from(left).ok()
}

#[allow(unsafe_code)]
mod sys {
    use super::Watcher;

    /// The watcher `WATCHER` points at, if any.
    pub(super) fn installed(p: *mut Watcher) -> Option<&'static Watcher> {
        // SAFETY: `WATCHER` is null or points at a leaked `Box<Watcher>`, never freed
        // nor mutated through the pointer.
        unsafe { p.as_ref() }
    }

    /// `FUTEX_WAKE` of every waiter on the (process-shared) word at `addr`. Passing an
    /// address is sound whatever it points to: the kernel reads nothing there for a
    /// wake, and a stale address at worst wakes somebody spuriously (futex waiters
    /// always re-check).
    pub(super) fn wake_all(addr: usize) {
        // SAFETY: FUTEX_WAKE reads no user memory; see above.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                addr as *const u32,
                libc::FUTEX_WAKE,
                i32::MAX,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }
}

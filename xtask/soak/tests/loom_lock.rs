//! Loom model of mproc-sync's lock word protocol (`crates/sync/src/raw.rs`: `RawMutex`,
//! `lock_word_slow`, `unlock_word`, `poison_word`): one 32-bit word holding the owner's
//! pid and a WAITERS bit, taken by compare-and-swap from 0, given back by a swap to 0
//! (or to `POISONED | pid` by a guard dropped in a panic), and taken over from a dead
//! owner, or from a poisoned word, by one compare-and-swap from the word seen.
//!
//! Transcribed with the same orderings; each process is a loom thread with its own pid,
//! `process_alive` is a liveness table, and a process dies by marking itself dead while
//! holding the lock. The futex is a loom mutex + condvar with the kernel's contract:
//! `wait(word, cur)` compares and sleeps atomically, and `wake` (sent by unlock only
//! when the WAITERS bit was set, as in the crate) wakes the sleepers — so a lost
//! wake-up shows up as a loom deadlock. Time is not modelled; the bounded sleep's
//! timeout is: a sleeper whose word names a dead owner returns "timed out" (its timeout
//! will expire), and a death wakes every sleeper (their timeouts running out). A
//! timeout while the owner lives only loops back to the same check, so sleeping until
//! the owner's wake-up covers it. The data
//! the lock protects is a loom `UnsafeCell`, so loom reports any two holders at once.
//!
//! A faithful model of the algorithm, not the crate's code itself (the crate's words
//! live in shared mappings and use futexes, which loom cannot run).
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use loom::sync::{Condvar, Mutex};
use loom::thread;

const WAITERS: u32 = 1 << 31;
const POISONED: u32 = 1 << 29;
const PID_MASK: u32 = !(WAITERS | POISONED);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Acquired {
    Clean,
    OwnerDied { pid: u32 },
}

#[derive(PartialEq)]
enum WaitOutcome {
    Changed,
    TimedOut,
}

struct Shared {
    word: AtomicU32,
    alive: Vec<AtomicBool>,
    data: UnsafeCell<u32>,
    futex: Mutex<()>,
    sleepers: Condvar,
}

impl Shared {
    fn new(pids: usize) -> Self {
        Shared {
            word: AtomicU32::new(0),
            alive: (0..pids).map(|_| AtomicBool::new(true)).collect(),
            data: UnsafeCell::new(0),
            futex: Mutex::new(()),
            sleepers: Condvar::new(),
        }
    }

    fn owner_dead(&self, pid: u32) -> bool {
        pid == 0 || !self.alive[pid as usize].load(Ordering::SeqCst)
    }

    fn futex_wait(&self, cur: u32) -> WaitOutcome {
        let g = self.futex.lock().unwrap();
        if self.word.load(Ordering::SeqCst) != cur {
            return WaitOutcome::Changed;
        }
        if self.owner_dead(cur & PID_MASK) {
            // Its timeout will expire and nothing else can wake it.
            return WaitOutcome::TimedOut;
        }
        let _g = self.sleepers.wait(g).unwrap();
        if self.word.load(Ordering::SeqCst) != cur {
            WaitOutcome::Changed
        } else {
            WaitOutcome::TimedOut
        }
    }

    fn futex_wake(&self) {
        let _g = self.futex.lock().unwrap();
        self.sleepers.notify_all();
    }

    /// A process dies: marked dead, and the sleepers' timeouts run out.
    fn die(&self, pid: u32) {
        self.alive[pid as usize].store(false, Ordering::SeqCst);
        self.futex_wake();
    }

    /// `lock_word_slow`, with `blocking` for a deadline of never (true) or now (false).
    fn lock_word_slow(&self, me: u32, blocking: bool) -> Option<Acquired> {
        let word = &self.word;
        let mut last_owner = 0;
        loop {
            let mut cur = word.load(Ordering::Relaxed);
            if cur == 0 {
                match word.compare_exchange(0, me | WAITERS, Ordering::Acquire, Ordering::Relaxed) {
                    Ok(_) => return Some(Acquired::Clean),
                    Err(_) => continue,
                }
            }
            if cur & POISONED != 0 {
                match word.compare_exchange(cur, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                {
                    Ok(_) => {
                        return Some(Acquired::OwnerDied {
                            pid: cur & PID_MASK,
                        });
                    }
                    Err(_) => continue,
                }
            }
            let owner = cur & PID_MASK;
            if owner != last_owner {
                last_owner = owner;
            }
            if !blocking {
                if owner != me && self.owner_dead(owner) {
                    if word
                        .compare_exchange(cur, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        return Some(Acquired::OwnerDied { pid: owner });
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
            if self.futex_wait(cur) == WaitOutcome::TimedOut
                && owner != me
                && self.owner_dead(owner)
                && word
                    .compare_exchange(cur, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(Acquired::OwnerDied { pid: owner });
            }
        }
    }

    fn lock_until(&self, me: u32, blocking: bool) -> Option<Acquired> {
        if self
            .word
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Some(Acquired::Clean);
        }
        self.lock_word_slow(me, blocking)
    }

    fn unlock(&self) {
        // unlock_word: swap to 0, and wake one sleeper only if WAITERS was set (the
        // model wakes all: the futex's FIFO order is not the crate's concern).
        let prev = self.word.swap(0, Ordering::Release);
        if prev & WAITERS != 0 {
            self.futex_wake();
        }
    }

    /// `poison_word`: a guard of `me` dropped during a panic.
    fn unlock_poisoned(&self, me: u32) {
        let prev = self.word.swap(POISONED | me, Ordering::Release);
        if prev & WAITERS != 0 {
            self.futex_wake();
        }
    }

    /// The critical section: a non-atomic read-modify-write of the protected data.
    fn bump(&self) {
        // SAFETY: called only while holding the lock (the property under test); loom
        // reports it if two holders can overlap.
        self.data.with_mut(|d| unsafe { *d += 1 });
    }

    fn read(&self) -> u32 {
        // SAFETY: called after every other thread was joined.
        self.data.with(|d| unsafe { *d })
    }
}

/// Explores every interleaving with up to 3 preemptions (2 in debug builds, which run
/// ~8x slower: `cargo xtask soak` runs these in release with 3).
/// `LOOM_MAX_PREEMPTIONS` overrides.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        b.preemption_bound = Some(if cfg!(debug_assertions) { 2 } else { 3 });
    }
    b.check(f);
}

/// Three live processes: mutual exclusion, every acquisition clean.
#[test]
fn mutual_exclusion() {
    model(|| {
        let s = Arc::new(Shared::new(4));
        let ts: Vec<_> = (1..=2u32)
            .map(|pid| {
                let s = s.clone();
                thread::spawn(move || {
                    assert_eq!(s.lock_until(pid, true), Some(Acquired::Clean));
                    s.bump();
                    s.unlock();
                })
            })
            .collect();
        assert_eq!(s.lock_until(3, true), Some(Acquired::Clean));
        s.bump();
        s.unlock();
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(s.read(), 3);
        assert_eq!(s.word.load(Ordering::SeqCst), 0);
    });
}

/// The holder dies holding the lock while two processes wait: exactly one is told
/// `OwnerDied` naming it, the other then gets a clean lock; never two holders.
#[test]
fn holder_dies_two_waiters() {
    model(|| {
        let s = Arc::new(Shared::new(4));
        assert_eq!(s.lock_until(1, true), Some(Acquired::Clean));
        let waiters: Vec<_> = (2..=3u32)
            .map(|pid| {
                let s = s.clone();
                thread::spawn(move || {
                    let a = s.lock_until(pid, true).unwrap();
                    s.bump();
                    s.unlock();
                    a
                })
            })
            .collect();
        // Process 1 is killed while holding.
        s.die(1);
        let got: Vec<Acquired> = waiters.into_iter().map(|t| t.join().unwrap()).collect();
        let died = got
            .iter()
            .filter(|a| **a == Acquired::OwnerDied { pid: 1 })
            .count();
        assert_eq!(died, 1, "{got:?}");
        assert!(got.contains(&Acquired::Clean), "{got:?}");
        assert_eq!(s.read(), 2);
    });
}

/// A dead holder's lock raced for by a try (non-blocking) and a blocking waiter:
/// exactly one takes it over; the try returns `None` or `OwnerDied`, never a second
/// holder.
#[test]
fn takeover_by_try_and_waiter_race() {
    model(|| {
        let s = Arc::new(Shared::new(4));
        assert_eq!(s.lock_until(1, true), Some(Acquired::Clean));
        s.die(1);
        let w = {
            let s = s.clone();
            thread::spawn(move || {
                let a = s.lock_until(2, true).unwrap();
                s.bump();
                s.unlock();
                a
            })
        };
        let t = s.lock_until(3, false);
        if t.is_some() {
            s.bump();
            s.unlock();
        }
        let a = w.join().unwrap();
        let died = [Some(a), t]
            .iter()
            .filter(|x| matches!(x, Some(Acquired::OwnerDied { pid: 1 })))
            .count();
        assert_eq!(died, 1, "waiter {a:?}, try {t:?}");
        assert_eq!(s.read(), 1 + u32::from(t.is_some()));
    });
}

/// The holder releases the lock poisoned (a panic) while a blocking waiter and a try
/// race for it: exactly one of them is told `OwnerDied` naming the holder, nobody holds
/// it twice, and no wake-up is lost.
#[test]
fn poisoned_release_reported_once() {
    model(|| {
        let s = Arc::new(Shared::new(4));
        assert_eq!(s.lock_until(1, true), Some(Acquired::Clean));
        let w = {
            let s = s.clone();
            thread::spawn(move || {
                let a = s.lock_until(2, true).unwrap();
                s.bump();
                s.unlock();
                a
            })
        };
        s.bump();
        s.unlock_poisoned(1);
        let t = s.lock_until(3, false);
        if t.is_some() {
            s.bump();
            s.unlock();
        }
        let a = w.join().unwrap();
        let died = [Some(a), t]
            .iter()
            .filter(|x| matches!(x, Some(Acquired::OwnerDied { pid: 1 })))
            .count();
        assert_eq!(died, 1, "waiter {a:?}, try {t:?}");
        assert_eq!(s.read(), 2 + u32::from(t.is_some()));
        assert_eq!(s.word.load(Ordering::SeqCst), 0);
    });
}

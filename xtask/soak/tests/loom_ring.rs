//! Loom model of mproc-channel's shared ring (`crates/channel/src/queue/ring.rs`): a
//! Vyukov bounded MPMC queue whose 64-bit slot state packs a 32-bit sequence number
//! (steps of two: `2p` free for the producer of position `p`, `2p + 1` published) and
//! the pid of the process holding the slot, with helping on the shared positions and
//! reclaiming of slots held by dead processes.
//!
//! The functions below are transcribed from ring.rs with the same orderings; loom's
//! atomics replace std's, and each process is a loom thread with a pid. The payload of
//! a slot is a loom `UnsafeCell`, so loom reports any claim that lets two processes
//! touch one payload at once. A process "dies" by marking itself dead in a liveness
//! table (the model of `process_alive`) and stopping wherever it was.
//!
//! Waiting is modelled too: the "not empty" / "not full" words with their sleeper
//! counts, `notify` (fence, then bump and wake one only if someone sleeps) and `wait`
//! (count in, fence, read the word, re-check readiness, sleep on the word) as in
//! ring.rs, over a model futex (a loom mutex + condvar that compares and sleeps
//! atomically), so a lost wake-up shows up as a loom deadlock. Time is not modelled;
//! the bounded sleep's timeout is: a sleeper stuck behind a slot whose holder is dead
//! sees its slice run out (and a death wakes every sleeper), after which it reclaims
//! as `claim_write` / `claim_read` in queue/mod.rs do.
//!
//! This is a faithful model of the algorithm, not the crate's code itself: the crate
//! reaches its words through a shared mapping and real futexes, which loom cannot run.
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use loom::sync::{Condvar, Mutex};
use loom::thread;

fn pack(seq: u32, holder: u32) -> u64 {
    (u64::from(seq) << 32) | u64::from(holder)
}
fn unpack(s: u64) -> (u32, u32) {
    ((s >> 32) as u32, s as u32)
}
fn seq_free(p: u64) -> u32 {
    (p as u32).wrapping_mul(2)
}
fn seq_published(p: u64) -> u32 {
    seq_free(p).wrapping_add(1)
}
fn dist(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

struct Ring {
    cap: u64,
    enq: AtomicU64,
    deq: AtomicU64,
    state: Vec<AtomicU64>,
    payload: Vec<UnsafeCell<u64>>,
    /// The model of `process_alive` (the crate asks `mproc_core::pid::holder_dead`,
    /// which is `!process_alive` for a holder of the caller's own pid namespace, and
    /// never "dead" otherwise): pid `i` is alive while `alive[i]`.
    alive: Vec<AtomicBool>,
    not_empty: Word,
    not_full: Word,
}

/// A futex word, its sleeper count, and the model futex behind it.
struct Word {
    word: AtomicU32,
    waiters: AtomicU32,
    m: Mutex<()>,
    cv: Condvar,
}

impl Word {
    fn new() -> Word {
        Word {
            word: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
            m: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    /// FUTEX_WAIT: sleeps if the word still holds `v`; `true` if the sleep "timed out"
    /// (modelled only when the sleeper is stuck behind a dead holder: a timeout with a
    /// live holder in the way just loops back to the same sleep).
    fn futex_wait(&self, v: u32, stuck_on_dead: impl Fn() -> bool) -> bool {
        let g = self.m.lock().unwrap();
        if self.word.load(Ordering::SeqCst) != v {
            return false;
        }
        if stuck_on_dead() {
            return true;
        }
        drop(self.cv.wait(g).unwrap());
        false
    }

    fn futex_wake_one(&self) {
        let _g = self.m.lock().unwrap();
        self.cv.notify_one();
    }

    fn futex_wake_all(&self) {
        let _g = self.m.lock().unwrap();
        self.cv.notify_all();
    }

    /// ring.rs `notify`.
    fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) != 0 {
            self.word.fetch_add(1, Ordering::Release);
            self.futex_wake_one();
        }
    }

    /// ring.rs `wait` (without the spin); returns whether the slice timed out.
    fn wait(&self, ready: impl Fn() -> bool, stuck_on_dead: impl Fn() -> bool) -> bool {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let v = self.word.load(Ordering::SeqCst);
        let mut timed_out = false;
        if !ready() {
            timed_out = self.futex_wait(v, stuck_on_dead);
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        timed_out
    }
}

#[derive(Debug, PartialEq)]
enum Blocked {
    Wait,
}

impl Ring {
    fn new(cap: u64, pids: usize) -> Ring {
        Ring {
            cap,
            enq: AtomicU64::new(0),
            deq: AtomicU64::new(0),
            state: (0..cap)
                .map(|i| AtomicU64::new(pack(seq_free(i), 0)))
                .collect(),
            payload: (0..cap).map(|_| UnsafeCell::new(0)).collect(),
            alive: (0..pids).map(|_| AtomicBool::new(true)).collect(),
            not_empty: Word::new(),
            not_full: Word::new(),
        }
    }

    fn st(&self, p: u64) -> &AtomicU64 {
        &self.state[(p % self.cap) as usize]
    }

    fn process_alive(&self, pid: u32) -> bool {
        self.alive[pid as usize].load(Ordering::SeqCst)
    }

    /// Whether a consumer is stuck behind a slot a dead producer holds (the
    /// precondition of `reclaim_for_reader`): only then can its timeout matter.
    fn reader_stuck_on_dead(&self) -> bool {
        let q = self.deq.load(Ordering::Relaxed);
        let (seq, holder) = unpack(self.st(q).load(Ordering::Acquire));
        holder != 0 && seq == seq_free(q) && !self.process_alive(holder)
    }

    /// Whether a producer is stuck behind a slot a dead consumer holds.
    fn writer_stuck_on_dead(&self) -> bool {
        let p = self.enq.load(Ordering::Relaxed);
        let (seq, holder) = unpack(self.st(p).load(Ordering::Acquire));
        holder != 0 && seq == seq_published(p.wrapping_sub(self.cap)) && !self.process_alive(holder)
    }

    /// A process dies where it stands; sleepers' slices run out.
    fn die(&self, pid: u32) {
        self.alive[pid as usize].store(false, Ordering::SeqCst);
        self.not_empty.futex_wake_all();
        self.not_full.futex_wake_all();
    }

    fn readable(&self) -> bool {
        let q = self.deq.load(Ordering::Relaxed);
        let (seq, holder) = unpack(self.st(q).load(Ordering::Acquire));
        let d = dist(seq, seq_published(q));
        d > 0 || (d == 0 && holder == 0)
    }

    fn writable(&self) -> bool {
        let p = self.enq.load(Ordering::Relaxed);
        let (seq, holder) = unpack(self.st(p).load(Ordering::Acquire));
        let d = dist(seq, seq_free(p));
        d > 0 || (d == 0 && holder == 0)
    }

    fn try_claim_write(&self, pid: u32) -> Result<u64, Blocked> {
        let enq = &self.enq;
        let mut p = enq.load(Ordering::Relaxed);
        loop {
            let st = self.st(p);
            let s = st.load(Ordering::Acquire);
            let (seq, holder) = unpack(s);
            let d = dist(seq, seq_free(p));
            if d == 0 && holder == 0 {
                if st
                    .compare_exchange_weak(s, pack(seq, pid), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    let _ = enq.compare_exchange(p, p + 1, Ordering::Relaxed, Ordering::Relaxed);
                    return Ok(p);
                }
            } else if d < 0 {
                let now = enq.load(Ordering::Relaxed);
                if now == p {
                    return Err(Blocked::Wait);
                }
                p = now;
                continue;
            } else {
                let _ = enq.compare_exchange(p, p + 1, Ordering::Relaxed, Ordering::Relaxed);
            }
            p = enq.load(Ordering::Relaxed);
        }
    }

    fn publish(&self, pos: u64, value: u64) {
        self.payload[(pos % self.cap) as usize]
            // SAFETY: the slot is claimed for writing by this process (the protocol
            // under test); loom reports it if another access can overlap.
            .with_mut(|v| unsafe { *v = value });
        self.st(pos)
            .store(pack(seq_published(pos), 0), Ordering::Release);
        self.not_empty.notify();
    }

    fn try_claim_read(&self, pid: u32) -> Result<u64, Blocked> {
        let deq = &self.deq;
        let mut q = deq.load(Ordering::Relaxed);
        loop {
            let st = self.st(q);
            let s = st.load(Ordering::Acquire);
            let (seq, holder) = unpack(s);
            let d = dist(seq, seq_published(q));
            if d == 0 && holder == 0 {
                if st
                    .compare_exchange_weak(s, pack(seq, pid), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    let _ = deq.compare_exchange(q, q + 1, Ordering::Relaxed, Ordering::Relaxed);
                    return Ok(q);
                }
            } else if d < 0 {
                let now = deq.load(Ordering::Relaxed);
                if now == q {
                    return Err(Blocked::Wait);
                }
                q = now;
                continue;
            } else {
                let _ = deq.compare_exchange(q, q + 1, Ordering::Relaxed, Ordering::Relaxed);
            }
            q = deq.load(Ordering::Relaxed);
        }
    }

    fn read_and_release(&self, pos: u64) -> u64 {
        let v = self.payload[(pos % self.cap) as usize]
            // SAFETY: the slot is claimed for reading by this process; loom reports it
            // if a write can overlap.
            .with(|v| unsafe { *v });
        self.st(pos)
            .store(pack(seq_free(pos + self.cap), 0), Ordering::Release);
        self.not_full.notify();
        v
    }

    fn reclaim_for_reader(&self) -> bool {
        let q = self.deq.load(Ordering::Relaxed);
        let st = self.st(q);
        let s = st.load(Ordering::Acquire);
        let (seq, holder) = unpack(s);
        if holder == 0 || seq != seq_free(q) || self.process_alive(holder) {
            return false;
        }
        let done = pack(seq_free(q + self.cap), 0);
        if st
            .compare_exchange(s, done, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let _ = self
                .deq
                .compare_exchange(q, q + 1, Ordering::Relaxed, Ordering::Relaxed);
            self.not_full.notify();
            return true;
        }
        false
    }

    fn reclaim_for_writer(&self) -> bool {
        let p = self.enq.load(Ordering::Relaxed);
        let st = self.st(p);
        let s = st.load(Ordering::Acquire);
        let (seq, holder) = unpack(s);
        let lap_before = seq_published(p.wrapping_sub(self.cap));
        if holder == 0 || seq != lap_before || self.process_alive(holder) {
            return false;
        }
        st.compare_exchange(s, pack(seq_free(p), 0), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// put (queue/mod.rs `claim_write`): claim; else wait a slice, and after a slice
    /// that ran out with the ring still unwritable, reclaim from a dead consumer.
    fn put(&self, pid: u32, value: u64) {
        loop {
            match self.try_claim_write(pid) {
                Ok(p) => return self.publish(p, value),
                Err(Blocked::Wait) => {
                    let expired = self
                        .not_full
                        .wait(|| self.writable(), || self.writer_stuck_on_dead());
                    if expired && !self.writable() {
                        self.reclaim_for_writer();
                    }
                }
            }
        }
    }

    /// get (queue/mod.rs `claim_read`), giving up after `tries` waits (a timed get).
    fn get(&self, pid: u32, tries: usize) -> Option<u64> {
        for _ in 0..tries {
            match self.try_claim_read(pid) {
                Ok(q) => return Some(self.read_and_release(q)),
                Err(Blocked::Wait) => {
                    let expired = self
                        .not_empty
                        .wait(|| self.readable(), || self.reader_stuck_on_dead());
                    if expired && !self.readable() {
                        self.reclaim_for_reader();
                    }
                }
            }
        }
        None
    }

    /// A non-blocking get: one claim attempt.
    fn try_get(&self, pid: u32) -> Option<u64> {
        self.try_claim_read(pid)
            .ok()
            .map(|q| self.read_and_release(q))
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

/// Two producers, one consumer, a ring of one slot: every message arrives exactly once,
/// and no payload is touched by two processes at once (the ring wraps under them).
#[test]
fn two_producers_one_consumer_one_slot() {
    model(|| {
        let r = Arc::new(Ring::new(1, 3));
        let ps: Vec<_> = (1..=2u32)
            .map(|pid| {
                let r = r.clone();
                thread::spawn(move || r.put(pid, u64::from(pid) * 10))
            })
            .collect();
        let mut got = vec![r.get(0, usize::MAX).unwrap(), r.get(0, usize::MAX).unwrap()];
        for p in ps {
            p.join().unwrap();
        }
        got.sort_unstable();
        assert_eq!(got, vec![10, 20]);
    });
}

/// One producer, two consumers, two slots, three messages: each message is received
/// by exactly one consumer, producer order is kept per consumer.
#[test]
fn one_producer_two_consumers() {
    model(|| {
        let r = Arc::new(Ring::new(2, 3));
        let p = {
            let r = r.clone();
            thread::spawn(move || {
                for v in 1..=3 {
                    r.put(0, v);
                }
            })
        };
        let c = {
            let r = r.clone();
            thread::spawn(move || r.try_get(1).into_iter().collect::<Vec<_>>())
        };
        // The other consumer took at most one (it does not wait); this one blocks for
        // the rest, so the producer never waits on a full ring for ever.
        let theirs = c.join().unwrap();
        let mut mine = Vec::new();
        while mine.len() + theirs.len() < 3 {
            mine.extend(r.get(2, usize::MAX));
        }
        p.join().unwrap();
        let mut all: Vec<u64> = mine.iter().chain(theirs.iter()).copied().collect();
        all.sort_unstable();
        assert_eq!(all, vec![1, 2, 3], "mine {mine:?} theirs {theirs:?}");
        assert!(mine.windows(2).all(|w| w[0] < w[1]));
    });
}

/// A producer dies right after claiming a slot: the consumer skips that slot (its
/// message was never complete) and still receives the other producer's message; no
/// message is received twice and no payload is raced.
#[test]
fn producer_dies_holding_a_slot() {
    model(|| {
        let r = Arc::new(Ring::new(2, 3));
        let dead = {
            let r = r.clone();
            thread::spawn(move || {
                if r.try_claim_write(1).is_ok() {
                    // Killed before publishing.
                }
                r.die(1);
            })
        };
        let live = {
            let r = r.clone();
            thread::spawn(move || r.put(2, 7))
        };
        dead.join().unwrap();
        live.join().unwrap();
        assert_eq!(r.get(0, 4), Some(7));
        assert_eq!(r.try_get(0), None);
    });
}

/// A producer dies between claiming its slot and advancing the shared enqueue
/// position: the next producer helps the position past it, and the consumer skips it.
#[test]
fn producer_dies_before_advancing_enqueue() {
    model(|| {
        let r = Arc::new(Ring::new(2, 3));
        let dead = {
            let r = r.clone();
            thread::spawn(move || {
                // The claim's compare-and-swap alone, as try_claim_write does it.
                let p = r.enq.load(Ordering::Relaxed);
                let st = r.st(p);
                let s = st.load(Ordering::Acquire);
                let (seq, holder) = unpack(s);
                if seq == seq_free(p) && holder == 0 {
                    let _ =
                        st.compare_exchange(s, pack(seq, 1), Ordering::Acquire, Ordering::Relaxed);
                }
                r.die(1);
            })
        };
        let live = {
            let r = r.clone();
            thread::spawn(move || r.put(2, 7))
        };
        dead.join().unwrap();
        live.join().unwrap();
        assert_eq!(r.get(0, 4), Some(7));
        assert_eq!(r.try_get(0), None);
    });
}

/// A consumer dies holding a slot of a one-slot ring: the producer of the next lap
/// reclaims the slot and its message reaches the surviving consumer; the dead
/// consumer's message is lost (it held it), nothing is duplicated.
#[test]
fn consumer_dies_holding_a_slot() {
    model(|| {
        let r = Arc::new(Ring::new(1, 3));
        r.put(0, 1);
        let dead = {
            let r = r.clone();
            thread::spawn(move || {
                let claimed = r.try_claim_read(1).is_ok();
                // Killed before releasing.
                r.die(1);
                claimed
            })
        };
        let claimed = dead.join().unwrap();
        let prod = {
            let r = r.clone();
            thread::spawn(move || r.put(0, 2))
        };
        let mut got = Vec::new();
        while got.len() < if claimed { 1 } else { 2 } {
            got.extend(r.get(2, usize::MAX));
        }
        prod.join().unwrap();
        if claimed {
            assert_eq!(got, vec![2]);
        } else {
            assert_eq!(got, vec![1, 2]);
        }
    });
}

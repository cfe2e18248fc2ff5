//! Loom model of the queue ring's overflow arena (`crates/channel/src/queue/ring.rs`,
//! "The overflow arena"): `K` chunks beside the slots, chunk `p % K` usable by the
//! message of position `p`, an owner word per chunk holding `p + 1` from the producer's
//! claim until the consumer's release, freed before the slot is let go, by the holder
//! or by whoever reclaims a dead holder's slot, and taken back at once by a producer
//! that finds it held by a dead slot holder.
//!
//! Slots follow the ring model of `loom_ring.rs` (transcribed with the same orderings;
//! waiting is a yield loop here, since `loom_ring.rs` covers the futex protocol). Each
//! chunk's bytes are a loom `UnsafeCell`, so loom reports any interleaving in which two
//! processes touch one chunk at once; a process "dies" by marking itself dead and
//! stopping where it is. The models check that a message is received whole and once,
//! and that every chunk is free at the end, whoever died where.
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
fn tag(p: u64) -> u64 {
    p + 1
}

const INLINE: u64 = 1;
const ARENA: u64 = 2;

struct Ring {
    cap: u64,
    k: u64,
    enq: AtomicU64,
    deq: AtomicU64,
    state: Vec<AtomicU64>,
    kind: Vec<AtomicU64>,
    inline: Vec<UnsafeCell<u64>>,
    owner: Vec<AtomicU64>,
    chunk: Vec<UnsafeCell<u64>>,
    alive: Vec<AtomicBool>,
}

impl Ring {
    fn new(cap: u64, k: u64, pids: usize) -> Ring {
        Ring {
            cap,
            k,
            enq: AtomicU64::new(0),
            deq: AtomicU64::new(0),
            state: (0..cap)
                .map(|i| AtomicU64::new(pack(seq_free(i), 0)))
                .collect(),
            kind: (0..cap).map(|_| AtomicU64::new(0)).collect(),
            inline: (0..cap).map(|_| UnsafeCell::new(0)).collect(),
            owner: (0..k).map(|_| AtomicU64::new(0)).collect(),
            chunk: (0..k).map(|_| UnsafeCell::new(0)).collect(),
            alive: (0..pids).map(|_| AtomicBool::new(true)).collect(),
        }
    }

    fn st(&self, p: u64) -> &AtomicU64 {
        &self.state[(p % self.cap) as usize]
    }
    fn own(&self, p: u64) -> &AtomicU64 {
        &self.owner[(p % self.k) as usize]
    }
    fn dead(&self, pid: u32) -> bool {
        !self.alive[pid as usize].load(Ordering::SeqCst)
    }
    fn die(&self, pid: u32) {
        self.alive[pid as usize].store(false, Ordering::SeqCst);
    }

    fn try_claim_write(&self, pid: u32) -> Option<u64> {
        let mut p = self.enq.load(Ordering::Relaxed);
        loop {
            let st = self.st(p);
            let s = st.load(Ordering::Acquire);
            let (seq, holder) = unpack(s);
            let d = seq.wrapping_sub(seq_free(p)) as i32;
            if d == 0 && holder == 0 {
                if st
                    .compare_exchange(s, pack(seq, pid), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    let _ =
                        self.enq
                            .compare_exchange(p, p + 1, Ordering::Relaxed, Ordering::Relaxed);
                    return Some(p);
                }
            } else if d < 0 {
                let now = self.enq.load(Ordering::Relaxed);
                if now == p {
                    return None;
                }
                p = now;
                continue;
            } else {
                let _ = self
                    .enq
                    .compare_exchange(p, p + 1, Ordering::Relaxed, Ordering::Relaxed);
            }
            p = self.enq.load(Ordering::Relaxed);
        }
    }

    /// `free_chunk_of_dead` of ring.rs.
    fn free_chunk_of_dead(&self, cur: u64, pos: u64) -> bool {
        let p0 = cur.wrapping_sub(1);
        if cur == 0 || p0 >= pos || p0 % self.k != pos % self.k {
            return false;
        }
        let (seq, holder) = unpack(self.st(p0).load(Ordering::Acquire));
        if (seq != seq_free(p0) && seq != seq_published(p0)) || holder == 0 || !self.dead(holder) {
            return false;
        }
        let _ = self
            .own(pos)
            .compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Relaxed);
        true
    }

    /// `claim_chunk` of ring.rs.
    fn claim_chunk(&self, pos: u64) -> bool {
        let w = self.own(pos);
        match w.compare_exchange(0, tag(pos), Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => true,
            Err(cur) => {
                self.free_chunk_of_dead(cur, pos)
                    && w.compare_exchange(0, tag(pos), Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
            }
        }
    }

    fn free_chunk(&self, pos: u64) {
        let _ = self
            .own(pos)
            .compare_exchange(tag(pos), 0, Ordering::Release, Ordering::Relaxed);
    }

    /// Writes `value` (in the chunk if it can have it, else inline) and publishes.
    fn write_and_publish(&self, pos: u64, value: u64) {
        let kind = if self.claim_chunk(pos) {
            // SAFETY: this process owns the chunk (owner word = tag(pos)); loom
            // reports any overlapping access.
            self.chunk[(pos % self.k) as usize].with_mut(|c| unsafe { *c = value });
            ARENA
        } else {
            // SAFETY: the slot is claimed for writing by this process.
            self.inline[(pos % self.cap) as usize].with_mut(|c| unsafe { *c = value });
            INLINE
        };
        self.kind[(pos % self.cap) as usize].store(kind, Ordering::Relaxed);
        self.st(pos)
            .store(pack(seq_published(pos), 0), Ordering::Release);
    }

    fn try_claim_read(&self, pid: u32) -> Option<u64> {
        let mut q = self.deq.load(Ordering::Relaxed);
        loop {
            let st = self.st(q);
            let s = st.load(Ordering::Acquire);
            let (seq, holder) = unpack(s);
            let d = seq.wrapping_sub(seq_published(q)) as i32;
            if d == 0 && holder == 0 {
                if st
                    .compare_exchange(s, pack(seq, pid), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    let _ =
                        self.deq
                            .compare_exchange(q, q + 1, Ordering::Relaxed, Ordering::Relaxed);
                    return Some(q);
                }
            } else if d < 0 {
                let now = self.deq.load(Ordering::Relaxed);
                if now == q {
                    return None;
                }
                q = now;
                continue;
            } else {
                let _ = self
                    .deq
                    .compare_exchange(q, q + 1, Ordering::Relaxed, Ordering::Relaxed);
            }
            q = self.deq.load(Ordering::Relaxed);
        }
    }

    /// Reads the claimed message (checking, for a chunk, that it is held for `pos`).
    fn read(&self, pos: u64) -> Option<u64> {
        if self.kind[(pos % self.cap) as usize].load(Ordering::Relaxed) == ARENA {
            if self.own(pos).load(Ordering::Acquire) != tag(pos) {
                return None; // the crate: "arena chunk not held for this message"
            }
            // SAFETY: the owner word names this position, held by this read claim.
            Some(self.chunk[(pos % self.k) as usize].with(|c| unsafe { *c }))
        } else {
            // SAFETY: the slot is claimed for reading by this process.
            Some(self.inline[(pos % self.cap) as usize].with(|c| unsafe { *c }))
        }
    }

    /// `release` of ring.rs: the chunk first, then the slot.
    fn release(&self, pos: u64) {
        if self.kind[(pos % self.cap) as usize].load(Ordering::Relaxed) == ARENA {
            self.free_chunk(pos);
        }
        self.st(pos)
            .store(pack(seq_free(pos + self.cap), 0), Ordering::Release);
    }

    fn reclaim_for_reader(&self) {
        let q = self.deq.load(Ordering::Relaxed);
        let st = self.st(q);
        let s = st.load(Ordering::Acquire);
        let (seq, holder) = unpack(s);
        if holder == 0 || seq != seq_free(q) || !self.dead(holder) {
            return;
        }
        self.free_chunk(q);
        if st
            .compare_exchange(
                s,
                pack(seq_free(q + self.cap), 0),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            let _ = self
                .deq
                .compare_exchange(q, q + 1, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn reclaim_for_writer(&self) {
        let p = self.enq.load(Ordering::Relaxed);
        let st = self.st(p);
        let s = st.load(Ordering::Acquire);
        let (seq, holder) = unpack(s);
        if holder == 0 || seq != seq_published(p.wrapping_sub(self.cap)) || !self.dead(holder) {
            return;
        }
        self.free_chunk(p.wrapping_sub(self.cap));
        let _ = st.compare_exchange(s, pack(seq_free(p), 0), Ordering::AcqRel, Ordering::Relaxed);
    }

    fn put(&self, pid: u32, value: u64) {
        loop {
            if let Some(p) = self.try_claim_write(pid) {
                self.write_and_publish(p, value);
                return;
            }
            self.reclaim_for_writer();
            thread::yield_now();
        }
    }

    /// The next message, trying up to `tries` times (`None`: empty).
    fn get(&self, pid: u32, tries: usize) -> Option<u64> {
        for _ in 0..tries {
            if let Some(q) = self.try_claim_read(pid) {
                let v = self.read(q);
                self.release(q);
                return v;
            }
            self.reclaim_for_reader();
            thread::yield_now();
        }
        None
    }

    fn chunks_free(&self) -> bool {
        self.owner.iter().all(|o| o.load(Ordering::SeqCst) == 0)
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        b.preemption_bound = Some(if cfg!(debug_assertions) { 2 } else { 3 });
    }
    b.check(f);
}

/// Two producers share one chunk (K = 1, two slots) while a consumer takes: each
/// message arrives once and whole, a busy chunk sends the other inline, no chunk byte
/// is touched by two processes at once, and the chunk ends free.
#[test]
fn two_producers_share_one_chunk() {
    model(|| {
        let r = Arc::new(Ring::new(2, 1, 4));
        let ps: Vec<_> = (1..=2u32)
            .map(|pid| {
                let r = r.clone();
                thread::spawn(move || r.put(pid, u64::from(pid) * 10))
            })
            .collect();
        let mut got = Vec::new();
        while got.len() < 2 {
            got.extend(r.get(3, 1));
        }
        for p in ps {
            p.join().unwrap();
        }
        got.sort_unstable();
        assert_eq!(got, vec![10, 20]);
        assert!(r.chunks_free());
    });
}

/// A producer dies inside its chunk write (after claiming slot and chunk): a live
/// producer that needs that chunk takes it back (or the consumer's reclaim frees it),
/// its message arrives, and the chunk is freed exactly once.
#[test]
fn producer_dies_inside_the_chunk_write() {
    model(|| {
        let r = Arc::new(Ring::new(2, 1, 4));
        let dead = {
            let r = r.clone();
            thread::spawn(move || {
                if let Some(p) = r.try_claim_write(1)
                    && r.claim_chunk(p)
                {
                    // SAFETY: as in `write_and_publish`: killed mid-write.
                    r.chunk[0].with_mut(|c| unsafe { *c = 99 });
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
        assert_eq!(r.get(3, 6), Some(7));
        assert_eq!(r.get(3, 2), None);
        assert!(r.chunks_free());
    });
}

/// A consumer dies holding an arena message: the next producer of that chunk takes
/// it back at once (its slot is elsewhere), and the surviving consumer gets the new
/// message whole; the dead one's message is lost with it, nothing is duplicated.
#[test]
fn consumer_dies_holding_a_chunk() {
    model(|| {
        let r = Arc::new(Ring::new(2, 1, 4));
        r.put(1, 5); // position 0, in the chunk
        let dead = {
            let r = r.clone();
            thread::spawn(move || {
                if let Some(q) = r.try_claim_read(2) {
                    let _ = r.read(q); // holds it (a guard), then is killed
                }
                r.die(2);
            })
        };
        let prod = {
            let r = r.clone();
            thread::spawn(move || r.put(1, 6))
        };
        dead.join().unwrap();
        prod.join().unwrap();
        assert_eq!(r.get(3, 4), Some(6));
        assert_eq!(r.get(3, 2), None);
        // Position 1 took the chunk from the dead consumer, or went inline while it
        // still lived: then position 2, which needs the dead consumer's slot, frees
        // the chunk when it reclaims the slot. Either way no chunk stays held.
        r.put(1, 8);
        assert_eq!(r.get(3, 2), Some(8));
        assert!(r.chunks_free());
    });
}

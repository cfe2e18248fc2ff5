//! The shared ring: a header of atomics and `capacity` fixed-size slots in one
//! [`Region`], a bounded multi-producer multi-consumer queue after Dmitry Vyukov's
//! design, extended so that a process that dies while holding a slot can be detected.
//!
//! Each slot has a 64-bit `state` word: a 32-bit sequence number (Vyukov's) in the high
//! half and the pid of the process holding the slot (0 if none) in the low half. For
//! the position `p` that maps to a slot (`p % capacity`):
//!
//! | state | meaning |
//! |---|---|
//! | `(2p, 0)` | free for the producer of position `p` |
//! | `(2p, pid)` | producer `pid` is writing position `p` |
//! | `(2p + 1, 0)` | published, waiting for the consumer of `p` |
//! | `(2p + 1, pid)` | consumer `pid` is reading position `p` (e.g. holds a guard) |
//! | `(2(p + capacity), 0)` | released: free for the producer of `p + capacity` |
//!
//! A slot is claimed by a compare-and-swap on its state that also records the pid;
//! the shared positions (`enqueue`, `dequeue`) are then advanced, by the claimer or by
//! anyone who sees the slot already claimed (helping), so a process that dies right
//! after its claim never stalls the others. A slot whose holder has died is reclaimed
//! by the first waiter that finds it in the way: a dead producer's slot is skipped (its
//! message was never complete), a dead consumer's slot is released (its message was
//! taken). "Dead" is `mproc_core::pid::holder_dead`: never said of a holder that may
//! live (a ring is never shared across pid namespaces: its region is refused on import
//! from another one, and a process forked into one tags its claims as foreign).
//! Sequence numbers are compared with wrapping arithmetic, so 32 bits suffice.
//!
//! Waiting: two futex words, "not empty" and "not full", each with a count of sleepers.
//! A waker bumps the word and calls `FUTEX_WAKE` only when the count is non-zero, so
//! the uncontended paths never enter the kernel.
use super::spin::Spin;
use super::sys::Mapped;
use mproc_core::futex;
use mproc_core::{Deadline, Region};
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

const MAGIC: u32 = u32::from_le_bytes(*b"MPQ1");
const VERSION: u32 = 2;

const H_MAGIC: usize = 0;
const H_VERSION: usize = 4;
const H_CAPACITY: usize = 8;
const H_SLOT_SIZE: usize = 16;
const H_CLOSED: usize = 32;
/// Robust lock word (owner pid) serialising producers of messages that carry fds.
pub(crate) const H_PROD_LOCK: usize = 36;
/// Robust lock word (owner pid) serialising consumers of messages that carry fds.
pub(crate) const H_CONS_LOCK: usize = 40;
/// Flags fixed at creation: bit 0 = unbounded (Python's `Queue()` without `maxsize`).
const H_FLAGS: usize = 44;
const FLAG_UNBOUNDED: u32 = 1;
/// The message type's fingerprint (`TypeTag::hash`), fixed at creation.
const H_TYPE: usize = 48;
const H_ENQ: usize = 64;
const H_DEQ: usize = 128;
const H_NOT_EMPTY: usize = 192;
const H_NOT_EMPTY_WAITERS: usize = 196;
const H_NOT_FULL: usize = 256;
const H_NOT_FULL_WAITERS: usize = 260;
/// JoinableQueue's count of unfinished tasks (also its futex word).
pub(crate) const H_UNFINISHED: usize = 320;
/// Bytes before the first slot.
pub(crate) const HEADER: usize = 384;

const S_STATE: usize = 0;
const S_KIND: usize = 8;
const S_LEN: usize = 16;
/// Bytes of a slot before its payload (keeps the payload 16-byte aligned).
pub(crate) const SLOT_HEADER: usize = 32;

/// Largest number of slots a ring may have (sequence numbers are 32-bit).
pub(crate) const MAX_CAPACITY: u64 = 1 << 30;

/// What a slot holds (the `kind` word).
pub(crate) mod kind {
    /// The archive is in the slot.
    pub(crate) const INLINE: u32 = 1;
    /// fds travelled beside the message on the queue's socket (the archive is inline
    /// unless `LARGE` is also set).
    pub(crate) const FDS: u32 = 2;
    /// The archive is in a sealed memfd of its own, sent on the socket (implies FDS).
    pub(crate) const LARGE: u32 = 4;
    /// Nothing to deliver (a producer gave up after claiming): consumers skip it.
    pub(crate) const SKIP: u32 = 8;
    /// A flag beside the others: the archive holds handles (rebuilt with the fd table).
    pub(crate) const HANDLES: u32 = 16;
}

fn pack(seq: u32, holder: u32) -> u64 {
    (u64::from(seq) << 32) | u64::from(holder)
}

fn unpack(s: u64) -> (u32, u32) {
    ((s >> 32) as u32, s as u32)
}

/// The sequence number of a slot free for the producer of position `p`. Sequence
/// numbers count in steps of two so that "published for `p`" (`2p + 1`) and "free for
/// `p + 1`" (`2p + 2`) differ even in a ring of one slot.
fn seq_free(p: u64) -> u32 {
    (p as u32).wrapping_mul(2)
}

/// The sequence number of a slot holding the published message of position `p`.
fn seq_published(p: u64) -> u32 {
    seq_free(p).wrapping_add(1)
}

/// `a - b` as a signed distance between two wrapped sequence numbers.
fn dist(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

/// Why a claim did not succeed right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// No slot is free (producers) or published (consumers) at this position.
    Wait,
    /// The next message carries fds: claim it only while holding the consumer lock.
    NeedsLock,
}

/// One mapping of a ring.
#[derive(Debug)]
pub(crate) struct Ring {
    map: Mapped,
    cap: u64,
    slot_size: usize,
    stride: usize,
}

/// Bytes a ring of this geometry needs, or `None` if it overflows.
fn region_len(cap: u64, slot_size: usize) -> Option<(usize, usize)> {
    let stride = SLOT_HEADER
        .checked_add(slot_size)?
        .checked_next_multiple_of(64)?;
    let slots = usize::try_from(cap).ok()?.checked_mul(stride)?;
    Some((stride, HEADER.checked_add(slots)?))
}

impl Ring {
    /// Creates a fresh ring of `cap` slots of `slot_size` payload bytes each.
    pub(crate) fn create(
        cap: u64,
        slot_size: usize,
        unbounded: bool,
        type_hash: u64,
    ) -> io::Result<Ring> {
        let bad = |m| io::Error::new(io::ErrorKind::InvalidInput, m);
        if cap == 0 || cap > MAX_CAPACITY {
            return Err(bad("queue capacity must be between 1 and 2^30 slots"));
        }
        if slot_size == 0 || !slot_size.is_multiple_of(16) {
            return Err(bad("slot size must be a non-zero multiple of 16 bytes"));
        }
        let (stride, len) = region_len(cap, slot_size).ok_or_else(|| bad("queue too large"))?;
        let region = Region::named_memfd("mproc-queue", len)?;
        let ring = Ring {
            map: Mapped::new(region),
            cap,
            slot_size,
            stride,
        };
        ring.a64(H_CAPACITY).store(cap, Ordering::Relaxed);
        ring.a64(H_SLOT_SIZE)
            .store(slot_size as u64, Ordering::Relaxed);
        for i in 0..cap {
            ring.state(i).store(pack(seq_free(i), 0), Ordering::Relaxed);
        }
        if unbounded {
            ring.a32(H_FLAGS).store(FLAG_UNBOUNDED, Ordering::Relaxed);
        }
        ring.a64(H_TYPE).store(type_hash, Ordering::Relaxed);
        ring.a32(H_VERSION).store(VERSION, Ordering::Relaxed);
        ring.a32(H_MAGIC).store(MAGIC, Ordering::Release);
        Ok(ring)
    }

    /// Opens a ring another process created, checking its header against the region.
    pub(crate) fn open(region: Region) -> Result<Ring, &'static str> {
        let magic = region.atomic_u32(H_MAGIC).ok_or("queue region too small")?;
        if magic.load(Ordering::Acquire) != MAGIC {
            return Err("not a queue region");
        }
        let version = region
            .atomic_u32(H_VERSION)
            .ok_or("queue region too small")?;
        if version.load(Ordering::Relaxed) != VERSION {
            return Err("queue region of another version");
        }
        let cap = region
            .atomic_u64(H_CAPACITY)
            .ok_or("queue region too small")?;
        let cap = cap.load(Ordering::Relaxed);
        let slot_size = region
            .atomic_u64(H_SLOT_SIZE)
            .ok_or("queue region too small")?;
        let slot_size =
            usize::try_from(slot_size.load(Ordering::Relaxed)).map_err(|_| "bad slot size")?;
        if cap == 0 || cap > MAX_CAPACITY || slot_size == 0 || !slot_size.is_multiple_of(16) {
            return Err("bad queue geometry");
        }
        let (stride, len) = region_len(cap, slot_size).ok_or("bad queue geometry")?;
        if len > region.len() {
            return Err("queue region smaller than its geometry");
        }
        Ok(Ring {
            map: Mapped::new(region),
            cap,
            slot_size,
            stride,
        })
    }

    /// The region behind the ring.
    pub(crate) fn region(&self) -> &Region {
        self.map.region()
    }

    /// The fingerprint of the message type the ring was created for.
    pub(crate) fn type_hash(&self) -> u64 {
        self.a64(H_TYPE).load(Ordering::Relaxed)
    }

    /// Number of slots.
    pub(crate) fn capacity(&self) -> u64 {
        self.cap
    }

    /// Payload bytes per slot.
    pub(crate) fn slot_size(&self) -> usize {
        self.slot_size
    }

    #[inline]
    pub(crate) fn a32(&self, off: usize) -> &AtomicU32 {
        self.map.u32_at(off)
    }

    #[inline]
    fn a64(&self, off: usize) -> &AtomicU64 {
        self.map.u64_at(off)
    }

    fn slot_off(&self, pos: u64) -> usize {
        HEADER + (pos % self.cap) as usize * self.stride
    }

    fn state(&self, pos: u64) -> &AtomicU64 {
        self.a64(self.slot_off(pos) + S_STATE)
    }

    /// Offset of the payload of the slot of `pos`.
    pub(crate) fn payload_off(&self, pos: u64) -> usize {
        self.slot_off(pos) + SLOT_HEADER
    }

    /// The kind word of the slot of `pos`.
    pub(crate) fn kind(&self, pos: u64) -> &AtomicU32 {
        self.a32(self.slot_off(pos) + S_KIND)
    }

    /// The length word of the slot of `pos`.
    pub(crate) fn len_word(&self, pos: u64) -> &AtomicU64 {
        self.a64(self.slot_off(pos) + S_LEN)
    }

    /// Whether the queue was created without a `maxsize` (puts never wait: what does
    /// not fit waits in the producer process instead).
    pub(crate) fn is_unbounded(&self) -> bool {
        self.a32(H_FLAGS).load(Ordering::Relaxed) & FLAG_UNBOUNDED != 0
    }

    /// Whether the queue was closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.a32(H_CLOSED).load(Ordering::Acquire) != 0
    }

    /// Closes the queue and wakes every sleeper.
    pub(crate) fn close(&self) {
        self.a32(H_CLOSED).store(1, Ordering::Release);
        for (word, _) in [
            (H_NOT_EMPTY, H_NOT_EMPTY_WAITERS),
            (H_NOT_FULL, H_NOT_FULL_WAITERS),
        ] {
            self.a32(word).fetch_add(1, Ordering::Release);
            futex::wake_all(self.a32(word));
        }
        futex::wake_all(self.a32(H_UNFINISHED));
    }

    /// Approximate number of messages in the ring (claimed or published).
    pub(crate) fn len(&self) -> u64 {
        let deq = self.a64(H_DEQ).load(Ordering::Relaxed);
        let enq = self.a64(H_ENQ).load(Ordering::Relaxed);
        enq.saturating_sub(deq).min(self.cap)
    }

    /// Claims the next free slot for writing.
    pub(crate) fn try_claim_write(&self, pid: u32) -> Result<WriteClaim<'_>, Blocked> {
        let enq = self.a64(H_ENQ);
        let mut p = enq.load(Ordering::Relaxed);
        loop {
            let st = self.state(p);
            let s = st.load(Ordering::Acquire);
            let (seq, holder) = unpack(s);
            let d = dist(seq, seq_free(p));
            if d == 0 && holder == 0 {
                if st
                    .compare_exchange_weak(s, pack(seq, pid), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    let _ = enq.compare_exchange(p, p + 1, Ordering::Relaxed, Ordering::Relaxed);
                    return Ok(WriteClaim {
                        ring: self,
                        pos: p,
                        done: false,
                    });
                }
            } else if d < 0 {
                let now = enq.load(Ordering::Relaxed);
                if now == p {
                    return Err(Blocked::Wait);
                }
                p = now;
                continue;
            } else {
                // Position `p` is taken (or done): help move `enqueue` past it.
                let _ = enq.compare_exchange(p, p + 1, Ordering::Relaxed, Ordering::Relaxed);
            }
            p = enq.load(Ordering::Relaxed);
        }
    }

    fn publish(&self, pos: u64, kind: u32, len: u64) {
        self.kind(pos).store(kind, Ordering::Relaxed);
        self.len_word(pos).store(len, Ordering::Relaxed);
        self.state(pos)
            .store(pack(seq_published(pos), 0), Ordering::Release);
        self.notify(H_NOT_EMPTY, H_NOT_EMPTY_WAITERS);
    }

    /// Claims the next published slot for reading. A slot whose message carries fds is
    /// claimed only if `locked` (the consumer lock is held).
    pub(crate) fn try_claim_read(&self, pid: u32, locked: bool) -> Result<ReadClaim<'_>, Blocked> {
        let deq = self.a64(H_DEQ);
        let mut q = deq.load(Ordering::Relaxed);
        loop {
            let st = self.state(q);
            let s = st.load(Ordering::Acquire);
            let (seq, holder) = unpack(s);
            let d = dist(seq, seq_published(q));
            if d == 0 && holder == 0 {
                if !locked && self.kind(q).load(Ordering::Relaxed) & kind::FDS != 0 {
                    return Err(Blocked::NeedsLock);
                }
                if st
                    .compare_exchange_weak(s, pack(seq, pid), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    let _ = deq.compare_exchange(q, q + 1, Ordering::Relaxed, Ordering::Relaxed);
                    return Ok(ReadClaim { ring: self, pos: q });
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

    fn release(&self, pos: u64) {
        self.state(pos)
            .store(pack(seq_free(pos + self.cap), 0), Ordering::Release);
        self.notify(H_NOT_FULL, H_NOT_FULL_WAITERS);
    }

    /// Whether a consumer could make progress now (a published slot, or a position to
    /// help past).
    pub(crate) fn readable(&self) -> bool {
        let q = self.a64(H_DEQ).load(Ordering::Relaxed);
        let (seq, holder) = unpack(self.state(q).load(Ordering::Acquire));
        let d = dist(seq, seq_published(q));
        d > 0 || (d == 0 && holder == 0)
    }

    /// Whether a producer could make progress now.
    pub(crate) fn writable(&self) -> bool {
        let p = self.a64(H_ENQ).load(Ordering::Relaxed);
        let (seq, holder) = unpack(self.state(p).load(Ordering::Acquire));
        let d = dist(seq, seq_free(p));
        d > 0 || (d == 0 && holder == 0)
    }

    /// The holder a consumer that cannot read is stuck behind (the tag of the producer
    /// that holds the slot at the dequeue position, which may have died there), with the
    /// word that consumer sleeps on; `None` when no producer holds it (an empty queue has
    /// nobody to watch).
    pub(crate) fn reader_blocker(&self) -> Option<(u32, &AtomicU32)> {
        let q = self.a64(H_DEQ).load(Ordering::Relaxed);
        let (seq, holder) = unpack(self.state(q).load(Ordering::Acquire));
        (seq == seq_free(q) && holder != 0).then(|| (holder, self.a32(H_NOT_EMPTY)))
    }

    /// As [`Ring::reader_blocker`], for a producer that cannot write: a consumer of the
    /// previous lap that holds the slot at the enqueue position.
    pub(crate) fn writer_blocker(&self) -> Option<(u32, &AtomicU32)> {
        let p = self.a64(H_ENQ).load(Ordering::Relaxed);
        let (seq, holder) = unpack(self.state(p).load(Ordering::Acquire));
        (seq == seq_published(p.wrapping_sub(self.cap)) && holder != 0)
            .then(|| (holder, self.a32(H_NOT_FULL)))
    }

    /// A consumer is stuck behind the slot at the dequeue position: if a producer holds
    /// it and that producer is dead, skip the slot. Returns whether it did.
    pub(crate) fn reclaim_for_reader(&self) -> bool {
        let q = self.a64(H_DEQ).load(Ordering::Relaxed);
        let st = self.state(q);
        let s = st.load(Ordering::Acquire);
        let (seq, holder) = unpack(s);
        if seq != seq_free(q) || !mproc_core::pid::holder_dead(holder) {
            return false;
        }
        let done = pack(seq_free(q + self.cap), 0);
        if st
            .compare_exchange(s, done, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let deq = self.a64(H_DEQ);
            let _ = deq.compare_exchange(q, q + 1, Ordering::Relaxed, Ordering::Relaxed);
            self.notify(H_NOT_FULL, H_NOT_FULL_WAITERS);
            return true;
        }
        false
    }

    /// A producer is stuck behind the slot at the enqueue position: if a consumer of
    /// the previous lap holds it and that consumer is dead, release the slot.
    pub(crate) fn reclaim_for_writer(&self) -> bool {
        let p = self.a64(H_ENQ).load(Ordering::Relaxed);
        let st = self.state(p);
        let s = st.load(Ordering::Acquire);
        let (seq, holder) = unpack(s);
        let lap_before = seq_published(p.wrapping_sub(self.cap));
        if seq != lap_before || !mproc_core::pid::holder_dead(holder) {
            return false;
        }
        st.compare_exchange(s, pack(seq_free(p), 0), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    fn notify(&self, word: usize, waiters: usize) {
        fence(Ordering::SeqCst);
        if self.a32(waiters).load(Ordering::Relaxed) != 0 {
            self.a32(word).fetch_add(1, Ordering::Release);
            futex::wake(self.a32(word), 1);
        }
    }

    /// Spins (within `budget`) and then sleeps until `ready()` or `deadline`. Returns
    /// after at most one sleep; the caller re-tries its claim in a loop.
    fn wait(
        &self,
        word: usize,
        waiters: usize,
        budget: &Spin,
        deadline: Deadline,
        ready: impl Fn() -> bool,
    ) {
        if budget.spin(|| ready() || self.is_closed()) {
            return;
        }
        let w = self.a32(waiters);
        w.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let f = self.a32(word);
        let v = f.load(Ordering::SeqCst);
        if !ready() && !self.is_closed() {
            let t = std::time::Instant::now();
            if futex::wait(f, v, deadline) != futex::WaitOutcome::TimedOut {
                budget.slept(t.elapsed());
            }
        }
        w.fetch_sub(1, Ordering::SeqCst);
    }

    /// Waits until a consumer may be able to make progress (or `deadline`).
    pub(crate) fn wait_readable(&self, budget: &Spin, deadline: Deadline) {
        self.wait(H_NOT_EMPTY, H_NOT_EMPTY_WAITERS, budget, deadline, || {
            self.readable()
        })
    }

    /// Waits until a producer may be able to make progress (or `deadline`).
    pub(crate) fn wait_writable(&self, budget: &Spin, deadline: Deadline) {
        self.wait(H_NOT_FULL, H_NOT_FULL_WAITERS, budget, deadline, || {
            self.writable()
        })
    }
}

/// A slot this process has claimed for reading: proof that no process following the
/// protocol writes its payload until this is dropped, which releases the slot.
#[derive(Debug)]
pub(crate) struct ReadClaim<'a> {
    ring: &'a Ring,
    pos: u64,
}

impl<'a> ReadClaim<'a> {
    /// The ring position of the claimed message.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// The ring.
    pub(crate) fn ring(&self) -> &'a Ring {
        self.ring
    }

    /// The slot's kind word (see [`kind`]).
    pub(crate) fn kind(&self) -> u32 {
        self.ring.kind(self.pos).load(Ordering::Relaxed)
    }

    /// The slot's length word.
    pub(crate) fn len(&self) -> u64 {
        self.ring.len_word(self.pos).load(Ordering::Relaxed)
    }

    /// Offset of the payload within the region.
    pub(crate) fn payload_off(&self) -> usize {
        self.ring.payload_off(self.pos)
    }
}

impl Drop for ReadClaim<'_> {
    fn drop(&mut self) {
        self.ring.release(self.pos);
    }
}

/// A slot this process has claimed for writing: proof that no process following the
/// protocol reads or writes its payload until it is published. Dropping it unpublished
/// publishes an empty `SKIP` slot, so consumers never wait for it.
#[derive(Debug)]
pub(crate) struct WriteClaim<'a> {
    ring: &'a Ring,
    pos: u64,
    done: bool,
}

impl<'a> WriteClaim<'a> {
    /// The ring position of the claimed slot.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// The ring.
    pub(crate) fn ring(&self) -> &'a Ring {
        self.ring
    }

    /// Offset of the payload within the region.
    pub(crate) fn payload_off(&self) -> usize {
        self.ring.payload_off(self.pos)
    }

    /// Copies `bytes` (at most a slot's payload) into the slot.
    pub(crate) fn write(&self, bytes: &[u8]) {
        assert!(bytes.len() <= self.ring.slot_size());
        self.ring
            .region()
            .write_bytes(self.payload_off(), bytes)
            .expect("a slot's payload is inside the region");
    }

    /// Publishes the slot with its kind and length and wakes a consumer.
    pub(crate) fn publish(mut self, kind: u32, len: u64) {
        self.done = true;
        self.ring.publish(self.pos, kind, len);
    }
}

impl Drop for WriteClaim<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.ring.publish(self.pos, kind::SKIP, 0);
        }
    }
}

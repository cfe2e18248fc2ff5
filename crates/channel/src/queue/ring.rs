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
//! Every published slot also carries the fingerprint of the message type
//! (`TypeTag::hash`) in its header, beside `state`: a consumer checks it per message.
//!
//! # The overflow arena
//!
//! After the slots lie `K` chunks of `C` bytes each (both fixed at creation and kept in
//! the header), for messages larger than a slot but no larger than a chunk. Position
//! `p` may only use chunk `p % K`, and each chunk has an owner word: 0 (free) or
//! `tag(p) = p + 1`, the position whose message it holds. Ownership follows the slot
//! of `p` and is always exact, so a chunk is never freed twice nor leaked:
//!
//! | step | who | action |
//! |---|---|---|
//! | claim | producer holding slot `p` as `(2p, pid)` | CAS owner `0 → tag(p)` (busy: the message takes the memfd path) |
//! | publish | same producer | writes the archive, then the slot as `(2p + 1, 0)`, kind `ARENA` |
//! | give up | same producer | owner `tag(p) → 0`, then publishes `SKIP` |
//! | read | consumer holding slot `p` as `(2p + 1, pid)` | checks owner `== tag(p)` before reading |
//! | release | same consumer | owner `tag(p) → 0`, then releases the slot |
//! | dead producer | the reader stuck at `p` | CAS owner `tag(p) → 0`, then skips the slot |
//! | dead consumer | the writer stuck at `p + capacity` | CAS owner `tag(p) → 0`, then releases the slot |
//! | dead holder | a producer that finds chunk `p % K` owned by `tag(p0)` | if slot `p0` is `(2p0, pid)` or `(2p0 + 1, pid)` and `pid` is dead: CAS owner `tag(p0) → 0` |
//!
//! Every step frees the chunk *before* it lets go of the slot, so "owner is `tag(p0)`"
//! implies "slot `p0` has not been released" (its state still names `p0`, and nobody but
//! the dead or live holder of `p0` can write `tag(p0)`). Hence, whichever process dies at
//! whichever instruction:
//! - dies before its CAS on the owner: the chunk is free or still `tag(p0)`, and the slot
//!   still names a dead holder, so the next reclaimer (or the producer of `p0 + K`) frees it;
//! - dies between the owner CAS and the slot step: the chunk is free and the slot is
//!   still held by a dead pid, so it is reclaimed later; that reclaimer's CAS on the owner
//!   fails harmlessly (the owner is `0` or a later tag, never `tag(p0)` again);
//! - two reclaimers race: only one CAS `tag(p0) → …` succeeds.
//!
//! A producer that finds its chunk busy (a consumer more than `K` messages behind, or a
//! `get_ref` guard still held) gives its slot back as `SKIP` and sends the message in a
//! sealed memfd instead (see `side.rs`).
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
const VERSION: u32 = 3;

const H_MAGIC: usize = 0;
const H_VERSION: usize = 4;
const H_CAPACITY: usize = 8;
const H_SLOT_SIZE: usize = 16;
/// Number of arena chunks (0: no arena).
const H_CHUNKS: usize = 24;
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
/// Bytes of archive an arena chunk holds.
const H_CHUNK_SIZE: usize = 56;
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
/// The fingerprint of the published message's type.
const S_TYPE: usize = 24;
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
    /// The archive is in the arena chunk of the slot's position (with `FDS`: its fds
    /// travelled on the socket).
    pub(crate) const ARENA: u32 = 32;
}

/// Bytes between two owner words of the arena (one cache line each).
const OWNER_STRIDE: usize = 64;

/// Largest arena chunk (so that offsets stay far from overflow).
pub(crate) const MAX_CHUNK_SIZE: usize = 1 << 30;

/// The owner word of a chunk that holds the message of position `p`.
fn tag(p: u64) -> u64 {
    p.wrapping_add(1)
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

/// The shape of a ring: its slots, then the arena's owner words, then its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Number of slots.
    pub(crate) cap: u64,
    /// Payload bytes per slot.
    pub(crate) slot_size: usize,
    /// Number of arena chunks (0: none).
    pub(crate) chunks: u64,
    /// Archive bytes per chunk.
    pub(crate) chunk_size: usize,
}

/// Offsets derived from a [`Geometry`].
#[derive(Debug, Clone, Copy)]
struct Layout {
    stride: usize,
    owners: usize,
    chunk_base: usize,
    chunk_stride: usize,
    len: usize,
}

impl Geometry {
    /// Whether the numbers are in range (not yet whether they fit in memory).
    fn valid(&self) -> bool {
        self.cap != 0
            && self.cap <= MAX_CAPACITY
            && self.slot_size != 0
            && self.slot_size.is_multiple_of(16)
            && self.chunks <= MAX_CAPACITY
            && self.chunk_size <= MAX_CHUNK_SIZE
            && self.chunk_size.is_multiple_of(16)
            && (self.chunks == 0) == (self.chunk_size == 0)
    }

    /// Offsets of this geometry, or `None` if it overflows.
    fn layout(&self) -> Option<Layout> {
        let stride = SLOT_HEADER
            .checked_add(self.slot_size)?
            .checked_next_multiple_of(64)?;
        let slots = usize::try_from(self.cap).ok()?.checked_mul(stride)?;
        let owners = HEADER.checked_add(slots)?;
        let chunks = usize::try_from(self.chunks).ok()?;
        let chunk_base = owners
            .checked_add(chunks.checked_mul(OWNER_STRIDE)?)?
            .checked_next_multiple_of(4096)?;
        let chunk_stride = self.chunk_size.checked_next_multiple_of(64)?;
        let len = if chunks == 0 {
            owners
        } else {
            chunk_base.checked_add(chunks.checked_mul(chunk_stride)?)?
        };
        Some(Layout {
            stride,
            owners,
            chunk_base,
            chunk_stride,
            len,
        })
    }
}

/// One mapping of a ring.
#[derive(Debug)]
pub(crate) struct Ring {
    map: Mapped,
    cap: u64,
    slot_size: usize,
    stride: usize,
    chunks: u64,
    chunk_size: usize,
    owners: usize,
    chunk_base: usize,
    chunk_stride: usize,
    type_hash: u64,
}

impl Ring {
    fn with_layout(map: Mapped, g: Geometry, l: Layout, type_hash: u64) -> Ring {
        Ring {
            map,
            cap: g.cap,
            slot_size: g.slot_size,
            stride: l.stride,
            chunks: g.chunks,
            chunk_size: g.chunk_size,
            owners: l.owners,
            chunk_base: l.chunk_base,
            chunk_stride: l.chunk_stride,
            type_hash,
        }
    }

    /// Creates a fresh ring of this geometry. Its memory is a sparse memfd: pages of
    /// slots and chunks cost nothing until they are first used.
    pub(crate) fn create(g: Geometry, unbounded: bool, type_hash: u64) -> io::Result<Ring> {
        let bad = |m| io::Error::new(io::ErrorKind::InvalidInput, m);
        if !g.valid() {
            return Err(bad(
                "queue capacity, slot size or arena out of range (see QueueBuilder)",
            ));
        }
        let l = g.layout().ok_or_else(|| bad("queue too large"))?;
        let region = Region::named_memfd("mproc-queue", l.len)?;
        let ring = Ring::with_layout(Mapped::new(region), g, l, type_hash);
        let cap = g.cap;
        ring.a64(H_CAPACITY).store(cap, Ordering::Relaxed);
        ring.a64(H_SLOT_SIZE)
            .store(g.slot_size as u64, Ordering::Relaxed);
        ring.a64(H_CHUNKS).store(g.chunks, Ordering::Relaxed);
        ring.a64(H_CHUNK_SIZE)
            .store(g.chunk_size as u64, Ordering::Relaxed);
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
        let word = |off| {
            region
                .atomic_u64(off)
                .map(|w| w.load(Ordering::Relaxed))
                .ok_or("queue region too small")
        };
        let chunks = word(H_CHUNKS)?;
        let chunk_size = usize::try_from(word(H_CHUNK_SIZE)?).map_err(|_| "bad chunk size")?;
        let type_hash = word(H_TYPE)?;
        let g = Geometry {
            cap,
            slot_size,
            chunks,
            chunk_size,
        };
        if !g.valid() {
            return Err("bad queue geometry");
        }
        let l = g.layout().ok_or("bad queue geometry")?;
        if l.len > region.len() {
            return Err("queue region smaller than its geometry");
        }
        Ok(Ring::with_layout(Mapped::new(region), g, l, type_hash))
    }

    /// The region behind the ring.
    pub(crate) fn region(&self) -> &Region {
        self.map.region()
    }

    /// The fingerprint of the message type the ring was created for.
    pub(crate) fn type_hash(&self) -> u64 {
        self.type_hash
    }

    /// Number of arena chunks (0: no arena).
    pub(crate) fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Archive bytes per arena chunk (0: no arena).
    pub(crate) fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    fn owner(&self, pos: u64) -> &AtomicU64 {
        self.a64(self.owners + (pos % self.chunks) as usize * OWNER_STRIDE)
    }

    /// Offset of the data of the arena chunk of `pos` (only if the ring has an arena).
    pub(crate) fn chunk_off(&self, pos: u64) -> usize {
        self.chunk_base + (pos % self.chunks) as usize * self.chunk_stride
    }

    /// Whether the chunk of `pos` is held for the message of `pos` (a consumer checks
    /// this before it reads an `ARENA` slot's chunk).
    pub(crate) fn chunk_held_for(&self, pos: u64) -> bool {
        self.chunks != 0 && self.owner(pos).load(Ordering::Acquire) == tag(pos)
    }

    /// Claims the chunk of `pos` for the producer holding the slot of `pos`; `false` if
    /// it is busy with the message of an earlier position whose holder lives (or the
    /// ring has no arena).
    fn claim_chunk(&self, pos: u64) -> bool {
        if self.chunks == 0 {
            return false;
        }
        let w = self.owner(pos);
        match w.compare_exchange(0, tag(pos), Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => true,
            Err(cur) => {
                self.free_chunk_of_dead(cur, pos)
                    && w.compare_exchange(0, tag(pos), Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
            }
        }
    }

    /// Whether the chunk of the next position to be claimed is free (after freeing it
    /// if a dead process holds it). A producer asks before it claims a slot, so that a
    /// busy chunk sends it the memfd way without wasting a slot on `SKIP` (only a race
    /// with another producer still can).
    pub(crate) fn next_chunk_free(&self) -> bool {
        if self.chunks == 0 {
            return false;
        }
        let p = self.a64(H_ENQ).load(Ordering::Relaxed);
        match self.owner(p).load(Ordering::Relaxed) {
            0 => true,
            cur => self.free_chunk_of_dead(cur, p),
        }
    }

    /// The position whose message holds the chunk of the next position to be claimed,
    /// or `None` if that chunk looks free (plain loads: for waiting on).
    pub(crate) fn next_chunk_holder(&self) -> Option<u64> {
        let p = self.a64(H_ENQ).load(Ordering::Relaxed);
        match self.owner(p).load(Ordering::Relaxed) {
            0 => None,
            cur => Some(cur.wrapping_sub(1)),
        }
    }

    /// The shared dequeue position (the next message a consumer will claim).
    pub(crate) fn dequeue_pos(&self) -> u64 {
        self.a64(H_DEQ).load(Ordering::Relaxed)
    }

    /// The chunk of `pos` is owned by `cur`: if that is `tag(p0)` of an earlier position
    /// whose slot is held by a dead process, frees it. Returns whether the chunk is
    /// free now.
    fn free_chunk_of_dead(&self, cur: u64, pos: u64) -> bool {
        let p0 = cur.wrapping_sub(1);
        if cur == 0 || p0 >= pos || p0 % self.chunks != pos % self.chunks {
            return false; // not a tag this protocol writes
        }
        // The owner is `tag(p0)`, so the slot of `p0` has not been released (see the
        // table above): its state still names `p0`.
        let (seq, holder) = unpack(self.state(p0).load(Ordering::Acquire));
        if (seq != seq_free(p0) && seq != seq_published(p0))
            || holder == 0
            || !mproc_core::pid::holder_dead(holder)
        {
            return false;
        }
        let _ = self
            .owner(pos)
            .compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Relaxed);
        true
    }

    /// Frees the chunk of `pos` if the message of `pos` holds it (exact: a chunk that
    /// was already freed, or claimed since by a later position, is left alone).
    fn free_chunk(&self, pos: u64) {
        if self.chunks != 0 {
            let _ =
                self.owner(pos)
                    .compare_exchange(tag(pos), 0, Ordering::Release, Ordering::Relaxed);
        }
    }

    /// How many arena chunks are held now (a diagnostic: 0 when the queue is idle and
    /// every message was released).
    pub(crate) fn chunks_in_use(&self) -> u64 {
        (0..self.chunks)
            .filter(|&i| self.owner(i).load(Ordering::Relaxed) != 0)
            .count() as u64
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
            let off = self.slot_off(p);
            let st = self.a64(off + S_STATE);
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
                        off,
                        done: false,
                        chunk: false,
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

    /// Publishes position `pos`, whose slot is at `off`.
    fn publish(&self, pos: u64, off: usize, kind: u32, len: u64) {
        self.a32(off + S_KIND).store(kind, Ordering::Relaxed);
        self.a64(off + S_TYPE)
            .store(self.type_hash, Ordering::Relaxed);
        self.a64(off + S_LEN).store(len, Ordering::Relaxed);
        self.a64(off + S_STATE)
            .store(pack(seq_published(pos), 0), Ordering::Release);
        self.notify(H_NOT_EMPTY, H_NOT_EMPTY_WAITERS);
    }

    /// Claims the next published slot for reading. A slot whose message carries fds is
    /// claimed only if `locked` (the consumer lock is held).
    #[inline]
    pub(crate) fn try_claim_read(&self, pid: u32, locked: bool) -> Result<ReadClaim<'_>, Blocked> {
        let deq = self.a64(H_DEQ);
        let mut q = deq.load(Ordering::Relaxed);
        loop {
            let off = self.slot_off(q);
            let st = self.a64(off + S_STATE);
            let s = st.load(Ordering::Acquire);
            let (seq, holder) = unpack(s);
            let d = dist(seq, seq_published(q));
            if d == 0 && holder == 0 {
                if !locked && self.a32(off + S_KIND).load(Ordering::Relaxed) & kind::FDS != 0 {
                    return Err(Blocked::NeedsLock);
                }
                if st
                    .compare_exchange_weak(s, pack(seq, pid), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    let _ = deq.compare_exchange(q, q + 1, Ordering::Relaxed, Ordering::Relaxed);
                    return Ok(ReadClaim {
                        ring: self,
                        pos: q,
                        off,
                    });
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

    /// Releases position `pos`, whose slot is at `off`.
    fn release(&self, pos: u64, off: usize) {
        if self.a32(off + S_KIND).load(Ordering::Relaxed) & kind::ARENA != 0 {
            self.free_chunk(pos);
        }
        self.a64(off + S_STATE)
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
        // The chunk first, then the slot (see the arena table).
        self.free_chunk(q);
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
        // The chunk first, then the slot (see the arena table).
        self.free_chunk(p.wrapping_sub(self.cap));
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

    /// Waits until the chunk of the next position looks free or the dequeue position
    /// is no longer `deq` (or `deadline`): consumers wake it when they release a slot.
    pub(crate) fn wait_chunk(&self, deq: u64, budget: &Spin, deadline: Deadline) {
        self.wait(H_NOT_FULL, H_NOT_FULL_WAITERS, budget, deadline, || {
            self.next_chunk_holder().is_none() || self.dequeue_pos() != deq
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
    /// Offset of the slot (computed once: `pos % capacity` is a division).
    off: usize,
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
        self.ring.a32(self.off + S_KIND).load(Ordering::Relaxed)
    }

    /// The slot's length word.
    pub(crate) fn len(&self) -> u64 {
        self.ring.a64(self.off + S_LEN).load(Ordering::Relaxed)
    }

    /// The slot's type fingerprint word.
    pub(crate) fn type_hash(&self) -> u64 {
        self.ring.a64(self.off + S_TYPE).load(Ordering::Relaxed)
    }

    /// Offset of the data of this position's arena chunk, if this message holds it
    /// (the claim keeps it until it drops).
    pub(crate) fn chunk_off(&self) -> Option<usize> {
        self.ring
            .chunk_held_for(self.pos)
            .then(|| self.ring.chunk_off(self.pos))
    }

    /// Offset of the payload within the region.
    pub(crate) fn payload_off(&self) -> usize {
        self.off + SLOT_HEADER
    }
}

impl Drop for ReadClaim<'_> {
    fn drop(&mut self) {
        self.ring.release(self.pos, self.off);
    }
}

/// A slot this process has claimed for writing: proof that no process following the
/// protocol reads or writes its payload until it is published. Dropping it unpublished
/// publishes an empty `SKIP` slot, so consumers never wait for it.
#[derive(Debug)]
pub(crate) struct WriteClaim<'a> {
    ring: &'a Ring,
    pos: u64,
    /// Offset of the slot.
    off: usize,
    done: bool,
    chunk: bool,
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
        self.off + SLOT_HEADER
    }

    /// Copies `bytes` (at most a slot's payload) into the slot.
    pub(crate) fn write(&self, bytes: &[u8]) {
        assert!(bytes.len() <= self.ring.slot_size());
        self.ring
            .region()
            .write_bytes(self.payload_off(), bytes)
            .expect("a slot's payload is inside the region");
    }

    /// Claims this position's arena chunk; `false` if it is busy (or there is no arena).
    pub(crate) fn claim_chunk(&mut self) -> bool {
        if !self.chunk {
            self.chunk = self.ring.claim_chunk(self.pos);
        }
        self.chunk
    }

    /// Copies `bytes` (at most a chunk) into the claimed chunk.
    pub(crate) fn write_chunk(&self, bytes: &[u8]) {
        assert!(self.chunk && bytes.len() <= self.ring.chunk_size());
        self.ring
            .region()
            .write_bytes(self.ring.chunk_off(self.pos), bytes)
            .expect("a chunk is inside the region");
    }

    /// Publishes the slot with its kind and length and wakes a consumer.
    pub(crate) fn publish(mut self, kind: u32, len: u64) {
        self.done = true;
        if self.chunk && kind & kind::ARENA == 0 {
            self.ring.free_chunk(self.pos); // claimed but not used
        }
        self.ring.publish(self.pos, self.off, kind, len);
    }
}

impl Drop for WriteClaim<'_> {
    fn drop(&mut self) {
        if !self.done {
            if self.chunk {
                self.ring.free_chunk(self.pos);
            }
            self.ring.publish(self.pos, self.off, kind::SKIP, 0);
        }
    }
}

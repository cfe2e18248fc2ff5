//! `Queue`, `SimpleQueue` and `JoinableQueue`: many producers and many consumers across
//! processes, over a ring in shared memory.
//!
//! Python's `multiprocessing.Queue` pickles each object and pushes it through a pipe
//! with a feeder thread. Here a message is an rkyv archive written straight into a
//! slot of a ring that lives in shared memory (a memfd); a consumer claims the slot
//! with a compare-and-swap and can read the archive where it lies ([`Queue::get_ref`])
//! or deserialise it ([`Queue::get`]). Waiting is a futex in the same memory, after a
//! short adaptive spin.
//!
//! Messages come in three size classes: inline in a slot (≤ 224 bytes by default), in
//! the ring's overflow arena (≤ 64 KiB by default, as fast as inline), or in a sealed
//! memfd of their own. The public types' docs ([`Queue`]) say how capacity, message
//! sizes, handles and failures behave.
mod error;
mod ring;
mod side;
pub(crate) mod spin;
#[allow(unsafe_code)]
mod sys;

pub use error::{CorruptMessage, GetError, PutError, QueueCreateError, TaskDoneError};
pub use sys::InPlace;

use mproc_core::codec::{self, CodecError, Decode, Encode, TypeMismatch, TypeTag};
use mproc_core::futex;
use mproc_core::logger::Level;
use mproc_core::mp_log;
use mproc_core::transfer::{Exporter, Importer};
use mproc_core::{Deadline, Message, Region, Transfer, TransferError};
use ring::{Blocked, Geometry, ReadClaim, Ring, WriteClaim, kind};
use rkyv::Archive;
use rkyv::util::AlignedVec;
use side::{CHECK_INTERVAL, PidLock, SendFdsError, Side};
use spin::Spin;
use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};
use sys::{Checked, Held, SealedMap};

/// Slots of a queue created without a `maxsize` (Python's unbounded default).
pub const DEFAULT_CAPACITY: usize = 32_768;
/// Payload bytes per slot unless [`QueueBuilder::slot_size`] says otherwise; larger
/// messages go into the queue's arena (up to a chunk) or a region of their own.
pub const DEFAULT_SLOT_SIZE: usize = 224;
/// Most arena chunks a queue gets unless [`QueueBuilder::arena_chunks`] says otherwise
/// (never more than its capacity).
pub const DEFAULT_ARENA_CHUNKS: usize = 1024;
/// Archive bytes per arena chunk unless [`QueueBuilder::chunk_size`] says otherwise:
/// messages larger than a slot and up to this size travel through the arena.
pub const DEFAULT_CHUNK_SIZE: usize = 64 << 10;

/// The process-local state of one queue handle (shared by its clones).
#[derive(Debug)]
struct Inner {
    ring: Ring,
    side: Side,
    get_spin: Spin,
    put_spin: Spin,
    /// How long a producer spins for an arena chunk a consumer is reading.
    chunk_spin: Spin,
    /// The dequeue position when a producer last gave up waiting for a chunk whose
    /// message was still queued (`u64::MAX`: never): until consumers move past it,
    /// producers take the memfd way at once.
    chunk_stalled_at: AtomicU64,
    /// Messages of an unbounded queue that found the ring full, oldest first, waiting
    /// in this process for the feeder thread to move them into the ring.
    spill: Mutex<Spill>,
    /// Signalled when the spill is empty and the feeder has stopped.
    drained: Condvar,
    /// Messages in the spill (including the one the feeder is putting).
    pending: AtomicUsize,
    /// Live `Queue` handles on this `Inner` in this process (the feeder's is not one).
    users: AtomicUsize,
    /// The process that made this `Inner`: a fork child that uses a copy of it (a
    /// handle captured by a fork closure, not passed as an argument) has no feeder
    /// thread and never spills.
    owner: u32,
    /// The name of the message type (for type mismatch errors).
    type_name: &'static str,
}

/// An encoded message waiting in the producer process.
#[derive(Debug)]
struct Pending {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    handles: bool,
}

#[derive(Debug, Default)]
struct Spill {
    queue: VecDeque<Pending>,
    feeding: bool,
    /// `cancel_join_thread`: drop what is left instead of waiting at the last drop.
    cancelled: bool,
}

enum PutFail {
    Full,
    Closed,
    Io(std::io::Error),
}

impl<T> From<(PutFail, T)> for PutError<T> {
    fn from((f, v): (PutFail, T)) -> Self {
        match f {
            PutFail::Full => PutError::Full(v),
            PutFail::Closed => PutError::Closed(v),
            PutFail::Io(e) => PutError::Io(e),
        }
    }
}

/// The longest a put waits for an arena chunk whose message consumers are moving
/// towards (see `Inner::chunk_ready`).
const CHUNK_WAIT: Duration = Duration::from_millis(20);
/// How long consumers may stand still (a descheduled consumer on a loaded machine
/// stands still for a few ms) before a put stops waiting for an arena chunk.
const CHUNK_STALL: Duration = Duration::from_millis(5);

/// Largest serialisation buffer a thread keeps between puts (a fresh one would cost a
/// page fault per 4 KiB on every large message).
const SCRATCH_KEEP: usize = 8 << 20;

thread_local! {
    static SCRATCH: Cell<Option<AlignedVec>> = const { Cell::new(None) };
}

/// Serialises `value` and hands the bytes, the fds of its handles and whether it holds
/// handles to `f`. Messages without handles reuse a per-thread buffer (no allocation).
fn with_encoded<T: Encode, R>(
    value: &T,
    f: impl FnOnce(&[u8], Vec<OwnedFd>, bool) -> R,
) -> Result<R, CodecError> {
    let mut buf = SCRATCH.take().unwrap_or_default();
    buf.clear();
    match rkyv::api::high::to_bytes_in::<_, rkyv::rancor::BoxedError>(value, buf) {
        Ok(buf) => {
            let r = f(&buf, Vec::new(), false);
            if buf.capacity() <= SCRATCH_KEEP {
                SCRATCH.set(Some(buf));
            }
            Ok(r)
        }
        // Handles need the fd table that only `codec::encode` provides.
        Err(_) => {
            let enc = codec::encode(value)?;
            Ok(f(&enc.bytes, enc.fds, true))
        }
    }
}

/// A received message and the fds that came with it.
struct Taken<'a> {
    held: Held<'a>,
    fds: Vec<OwnedFd>,
    handles: bool,
}

/// How a waiter that cannot claim a slot sleeps next: the deadline of its next sleep,
/// and the watch (if any) that wakes it when the process holding the slot in its way
/// exits. `blocker` is that holder and the word the waiter sleeps on (see
/// [`Ring::reader_blocker`]); `seen` is the holder of the caller's previous sleep if that
/// sleep ran out (the caller clears it when woken). A holder seen for the first time
/// gets a plain [`futex::FIRST_SLICE`] (it is usually about to publish or release); the
/// same holder still in the way after a whole slice is watched, with no periodic
/// wake-up. An empty or full queue with nobody in the way sleeps in [`CHECK_INTERVAL`]
/// slices, as before.
fn behind_slot<'r>(
    blocker: Option<(u32, &'r std::sync::atomic::AtomicU32)>,
    seen: &mut u32,
    deadline: Deadline,
) -> (Deadline, Option<mproc_core::watch::HolderWatch<'r>>) {
    use mproc_core::watch::{Watch, watch_holder};
    let Some((holder, word)) = blocker else {
        *seen = 0;
        return (deadline.min(Deadline::after(CHECK_INTERVAL)), None);
    };
    if *seen != holder {
        *seen = holder;
        return (deadline.min(Deadline::after(futex::FIRST_SLICE)), None);
    }
    match watch_holder(word, holder) {
        Watch::Armed(w) => (deadline, Some(w)),
        // Reclaim at once.
        Watch::HolderGone => (Deadline::now(), None),
        Watch::Unjudged => (deadline.min(Deadline::after(CHECK_INTERVAL)), None),
        Watch::Unavailable => (
            deadline.min(Deadline::after(Duration::from_millis(5))),
            None,
        ),
    }
}

impl Inner {
    fn create(g: Geometry, unbounded: bool, tag: TypeTag) -> Result<Inner, QueueCreateError> {
        let ring = Ring::create(g, unbounded, tag.hash()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidInput {
                QueueCreateError::InvalidOptions(
                    "capacity, slot size or arena out of range (or too large together)",
                )
            } else {
                QueueCreateError::Io(e)
            }
        })?;
        Ok(Inner::from_parts(
            ring,
            Side::new().map_err(QueueCreateError::Io)?,
            tag.name(),
        ))
    }

    fn from_parts(ring: Ring, side: Side, type_name: &'static str) -> Inner {
        Inner {
            ring,
            side,
            get_spin: Spin::new(),
            put_spin: Spin::new(),
            chunk_spin: Spin::new(),
            chunk_stalled_at: AtomicU64::new(u64::MAX),
            spill: Mutex::new(Spill::default()),
            drained: Condvar::new(),
            pending: AtomicUsize::new(0),
            users: AtomicUsize::new(0),
            owner: sys::my_pid(),
            type_name,
        }
    }

    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        self.ring.region().export(out)?;
        out.put_fd(self.side.tx())?;
        out.put_fd(self.side.rx())
    }

    /// Rebuilds a queue sent by another process, checking that its ring was made for
    /// messages of type `tag` (the handle's own fingerprint was checked before).
    fn import(input: &mut Importer<'_>, tag: TypeTag) -> Result<Inner, TransferError> {
        let region = Region::import(input)?;
        let tx = input.take_fd()?;
        let rx = input.take_fd()?;
        let ring = Ring::open(region).map_err(TransferError::Malformed)?;
        if ring.type_hash() != tag.hash() {
            return Err(TransferError::TypeMismatch(TypeMismatch::new(
                tag.name(),
                "another message type (the queue's header disagrees)",
            )));
        }
        Ok(Inner::from_parts(ring, Side::from_fds(tx, rx), tag.name()))
    }

    fn claim_write(&self, pid: u32, deadline: Deadline) -> Result<WriteClaim<'_>, PutFail> {
        let mut seen = 0;
        loop {
            if let Ok(p) = self.ring.try_claim_write(pid) {
                return Ok(p);
            }
            if self.ring.is_closed() {
                return Err(PutFail::Closed);
            }
            if deadline.is_expired() {
                return Err(PutFail::Full);
            }
            let (slice, watch) = behind_slot(self.ring.writer_blocker(), &mut seen, deadline);
            self.ring.wait_writable(&self.put_spin, slice);
            let died = watch.is_some_and(|w| w.holder_died());
            let expired = slice.is_expired();
            if !expired {
                // Woken (progress, or the watch): the next holder in the way starts
                // with a plain slice again.
                seen = 0;
            }
            if (died || expired) && !self.ring.writable() {
                self.ring.reclaim_for_writer();
            }
        }
    }

    fn put_encoded(
        &self,
        bytes: &[u8],
        fds: &[OwnedFd],
        handles: bool,
        deadline: Deadline,
    ) -> Result<(), PutFail> {
        let flag = if handles { kind::HANDLES } else { 0 };
        let ring = &self.ring;
        if ring.is_closed() {
            return Err(PutFail::Closed);
        }
        let pid = sys::my_pid();
        let len = bytes.len();
        if fds.is_empty() && len <= ring.slot_size() {
            let claim = self.claim_write(pid, deadline)?;
            claim.write(bytes);
            claim.publish(kind::INLINE | flag, len as u64);
            return Ok(());
        }
        let fits_chunk = len <= ring.chunk_size();
        if fds.is_empty() && fits_chunk && self.chunk_ready(deadline) {
            let mut claim = self.claim_write(pid, deadline)?;
            if claim.claim_chunk() {
                claim.write_chunk(bytes);
                claim.publish(kind::ARENA | flag, len as u64);
                return Ok(());
            }
            // Another producer took the chunk first (the slot's position moved on):
            // this slot goes out empty (`SKIP`) and the message takes the memfd path.
            drop(claim);
        }
        // The slow path: fds travel on the side socket, in ring order.
        let large = len > ring.slot_size();
        let lock = PidLock::new(ring.a32(ring::H_PROD_LOCK));
        // The lock is held only for a claim and a send: an unbounded queue's put,
        // which asks for room "now", still waits for it.
        let lock_deadline = if self.may_spill() {
            Deadline::never()
        } else {
            deadline
        };
        if !lock.lock(pid, lock_deadline) {
            return Err(PutFail::Full);
        }
        let r = self.claim_write(pid, deadline).and_then(|mut claim| {
            // Where the archive goes: the slot, the arena chunk (only with fds here:
            // without, a free chunk was tried above) or a sealed memfd of its own.
            let (place, memfd) = if !large {
                claim.write(bytes);
                (kind::INLINE, None)
            } else if !fds.is_empty() && fits_chunk && claim.claim_chunk() {
                claim.write_chunk(bytes);
                (kind::ARENA, None)
            } else {
                (
                    kind::LARGE,
                    Some(side::sealed_memfd(bytes).map_err(PutFail::Io)?),
                )
            };
            let all: Vec<BorrowedFd<'_>> =
                memfd.iter().chain(fds.iter()).map(AsFd::as_fd).collect();
            match self.side.send(claim.pos(), &all, deadline) {
                Ok(()) => {
                    claim.publish(kind::FDS | place | flag, len as u64);
                    Ok(())
                }
                // Dropping the claim publishes an empty slot that consumers skip.
                Err(SendFdsError::TimedOut) => Err(PutFail::Full),
                Err(SendFdsError::Io(e)) => Err(PutFail::Io(e)),
            }
        });
        lock.unlock();
        r
    }

    /// Whether the arena chunk of the next position is free, or frees soon enough to be
    /// worth a wait (the memfd way costs tens of µs on both sides).
    ///
    /// The wait matters: a producer that ran `K` messages ahead of its consumers and
    /// took the memfd way would stay that far ahead for good, since each memfd message
    /// costs the consumer as much as the producer. So while consumers move towards the
    /// chunk's message, the producer waits for them (spinning, then sleeping until a
    /// consumer releases a slot), at most [`CHUNK_WAIT`] per put. When consumers do not
    /// move for [`CHUNK_STALL`] (nobody reads yet, or the chunk's reader holds it) the
    /// message takes the memfd way, and later puts do so at once until consumers move.
    /// A bounded queue's put also stops at its own `deadline` (`try_put` never waits);
    /// an unbounded queue's, which asks for room "now", still waits for its chunk.
    fn chunk_ready(&self, deadline: Deadline) -> bool {
        let ring = &self.ring;
        if ring.chunks() == 0 {
            return false;
        }
        if ring.next_chunk_free() {
            return true;
        }
        let give_up = if self.may_spill() {
            Deadline::after(CHUNK_WAIT)
        } else {
            deadline.min(Deadline::after(CHUNK_WAIT))
        };
        let mut deq = ring.dequeue_pos();
        let mut moved = Instant::now();
        loop {
            let Some(holder) = ring.next_chunk_holder() else {
                if ring.next_chunk_free() {
                    return true;
                }
                continue; // another producer took it: look at the next position's
            };
            if deq == self.chunk_stalled_at.load(Ordering::Relaxed) {
                return false; // nobody has moved since a wait last gave up
            }
            if give_up.is_expired() {
                return false;
            }
            let slice = give_up.min(Deadline::after(Duration::from_millis(1)));
            ring.wait_chunk(deq, &self.chunk_spin, slice);
            let now = ring.dequeue_pos();
            let t = Instant::now();
            // Progress counts while the chunk's message is still queued: consumers
            // moving past other messages do not free a chunk that one of them reads.
            if now != deq && holder >= deq {
                moved = t;
            }
            deq = now;
            if t - moved >= CHUNK_STALL {
                self.chunk_stalled_at.store(deq, Ordering::Relaxed);
                return false;
            }
        }
    }

    #[inline]
    fn claim_read(
        &self,
        pid: u32,
        deadline: Deadline,
    ) -> Result<(ReadClaim<'_>, Vec<OwnedFd>), GetError> {
        // The common case, a published slot without fds, first and inlined; the
        // waiting, the locked fd path and the dead-holder reclaim are out of line.
        match self.ring.try_claim_read(pid, false) {
            Ok(c) => Ok((c, Vec::new())),
            Err(_) => self.claim_read_slow(pid, deadline),
        }
    }

    #[inline(never)]
    fn claim_read_slow(
        &self,
        pid: u32,
        deadline: Deadline,
    ) -> Result<(ReadClaim<'_>, Vec<OwnedFd>), GetError> {
        let mut seen = 0;
        loop {
            match self.ring.try_claim_read(pid, false) {
                Ok(c) => return Ok((c, Vec::new())),
                Err(Blocked::NeedsLock) => {
                    let lock = PidLock::new(self.ring.a32(ring::H_CONS_LOCK));
                    if !lock.lock(pid, deadline) {
                        return Err(GetError::Empty);
                    }
                    let r = match self.ring.try_claim_read(pid, true) {
                        Ok(c) if c.kind() & kind::FDS != 0 => match self.side.recv_for(c.pos()) {
                            Ok(fds) => Ok(Some((c, fds))),
                            // Dropping the claim releases the slot: the message is lost.
                            Err(e) => Err(GetError::Corrupt(CorruptMessage::Fds(e))),
                        },
                        Ok(c) => Ok(Some((c, Vec::new()))),
                        Err(_) => Ok(None),
                    };
                    lock.unlock();
                    match r? {
                        Some(x) => return Ok(x),
                        None => continue,
                    }
                }
                Err(Blocked::Wait) => {}
            }
            if self.ring.is_closed() && !self.ring.readable() {
                return Err(GetError::Closed);
            }
            if deadline.is_expired() {
                return Err(GetError::Empty);
            }
            let (slice, watch) = behind_slot(self.ring.reader_blocker(), &mut seen, deadline);
            self.ring.wait_readable(&self.get_spin, slice);
            let died = watch.is_some_and(|w| w.holder_died());
            let expired = slice.is_expired();
            if !expired {
                // Woken (progress, or the watch): the next holder in the way starts
                // with a plain slice again.
                seen = 0;
            }
            if (died || expired) && !self.ring.readable() {
                self.ring.reclaim_for_reader();
            }
        }
    }

    /// Takes the next message: its bytes (still in the slot, or in its own mapping)
    /// and its fds.
    #[inline]
    fn take(&self, deadline: Deadline) -> Result<Taken<'_>, GetError> {
        let pid = sys::my_pid();
        loop {
            let (claim, mut fds) = self.claim_read(pid, deadline)?;
            let handles = claim.kind() & kind::HANDLES != 0;
            let k = claim.kind() & !kind::HANDLES;
            let len = claim.len();
            let bad = |m| Err(GetError::Corrupt(CorruptMessage::BadSlot(m)));
            if k == kind::SKIP {
                continue;
            }
            let found = claim.type_hash();
            if found != self.ring.type_hash() {
                // Dropping the claim releases the slot: the message is dropped.
                return Err(self.mismatch(found));
            }
            let held = match k {
                kind::INLINE => Held::slot(claim, len),
                k if k == kind::FDS | kind::INLINE => Held::slot(claim, len),
                k if k & !kind::FDS == kind::ARENA => match Held::chunk(claim, len) {
                    Ok(h) => Ok(h),
                    Err((_claim, m)) => return bad(m),
                },
                k if k == kind::FDS | kind::LARGE => {
                    drop(claim); // the archive is in its own region: free the slot now
                    if fds.is_empty() {
                        return bad("large message without its region");
                    }
                    let memfd = fds.remove(0);
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    let map = SealedMap::new(&memfd, len)
                        .map_err(|e| GetError::Corrupt(CorruptMessage::Fds(e)))?;
                    Ok(Held::large(map, len).expect("mapping has the announced length"))
                }
                _ => return bad("unknown slot kind"),
            };
            return match held {
                Ok(held) => Ok(Taken { held, fds, handles }),
                Err(_claim) => bad("message length beyond the slot"),
            };
        }
    }

    #[cold]
    #[inline(never)]
    fn mismatch(&self, found: u64) -> GetError {
        GetError::TypeMismatch(TypeMismatch::new(
            self.type_name,
            &format!("another message type (fingerprint {found:#018x})"),
        ))
    }

    fn get<T: Decode>(&self, deadline: Deadline) -> Result<T, GetError> {
        let t = self.take(deadline)?;
        let r = if t.handles || !t.fds.is_empty() {
            codec::decode::<T>(t.held.bytes(), t.fds)
        } else {
            // No handles: no fd table to set up.
            rkyv::from_bytes::<T, rkyv::rancor::BoxedError>(t.held.bytes())
                .map_err(|e| CodecError::msg(e.to_string()))
        };
        r.map_err(|e| GetError::Corrupt(CorruptMessage::Invalid(e)))
    }

    #[inline]
    fn get_ref<T: Decode>(&self, deadline: Deadline) -> Result<MessageRef<'_, T>, GetError> {
        let t = self.take(deadline)?;
        match Checked::<T>::new(t.held) {
            Ok(checked) => Ok(MessageRef {
                checked,
                fds: t.fds,
            }),
            Err((_held, e)) => Err(GetError::Corrupt(CorruptMessage::Invalid(e))),
        }
    }

    /// Whether puts that find no room keep the message in this process (an unbounded
    /// queue, used by the process that made this handle).
    fn may_spill(&self) -> bool {
        self.ring.is_unbounded() && sys::my_pid() == self.owner
    }

    fn lock_spill(&self) -> std::sync::MutexGuard<'_, Spill> {
        self.spill.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until this process's spilled messages are in the ring (or dropped by
    /// `cancel_join_thread`, or the queue is closed).
    fn join_feeder(&self) {
        if sys::my_pid() != self.owner {
            return; // a fork copy: the feeder, if any, runs in the parent
        }
        let mut spill = self.lock_spill();
        while spill.feeding {
            spill = self
                .drained
                .wait(spill)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The feeder thread: puts spilled messages into the ring, oldest first, waiting
    /// for room as long as it takes.
    fn feed(self: Arc<Inner>) {
        loop {
            let next = {
                let mut spill = self.lock_spill();
                let next = spill.queue.pop_front();
                if next.is_none() {
                    spill.feeding = false;
                    self.drained.notify_all();
                }
                next
            };
            let Some(next) = next else {
                mp_log!(
                    Level::DEBUG,
                    "feeder thread has nothing left to feed -- exiting"
                );
                return;
            };
            // Closed or failed: the message is dropped, as Python's feeder drops what
            // it cannot send.
            let _ = self.put_encoded(&next.bytes, &next.fds, next.handles, Deadline::never());
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn unfinished(&self) -> &std::sync::atomic::AtomicU32 {
        self.ring.a32(ring::H_UNFINISHED)
    }
}

/// A message received in place: the archived value where it lies in the queue's
/// shared memory, validated (bytecheck) once. Dereferences to `T::Archived`. The slot
/// is freed for producers when this guard drops.
///
/// Handles inside the message can be looked at but not rebuilt in place; use
/// [`MessageRef::deserialize`] (or [`Queue::get`]) for those.
pub struct MessageRef<'q, T: Decode> {
    checked: Checked<'q, T>,
    fds: Vec<OwnedFd>,
}

impl<T: Decode> MessageRef<'_, T> {
    /// Deserialises the message (rebuilding its handles with the fds that came with
    /// it) and frees the slot.
    pub fn deserialize(self) -> Result<T, CorruptMessage> {
        codec::decode::<T>(self.checked.bytes(), self.fds).map_err(CorruptMessage::Invalid)
    }

    /// The archive's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.checked.bytes()
    }
}

impl<T: Decode> Deref for MessageRef<'_, T> {
    type Target = T::Archived;
    fn deref(&self) -> &T::Archived {
        self.checked.get()
    }
}

impl<T: Decode> fmt::Debug for MessageRef<'_, T>
where
    T::Archived: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MessageRef")
            .field(self.checked.get())
            .finish()
    }
}

/// Options for a new queue of `T`:
/// `let q: Queue<u64> = Queue::builder().maxsize(100).slot_size(1024).build()?`.
///
/// ```
/// use mproc_channel::Queue;
/// let q: Queue<Vec<u8>> = Queue::builder()
///     .maxsize(64)
///     .slot_size(512)      // archives up to 512 bytes: inline in their slot
///     .arena_chunks(16)    // up to 16 messages in flight through the arena...
///     .chunk_size(4096)    // ...of up to 4 KiB each; larger ones: a memfd each
///     .build()
///     .unwrap();
/// q.put(vec![1; 3000]).unwrap(); // through the arena
/// assert_eq!(q.get().unwrap(), vec![1; 3000]);
/// assert_eq!((q.slot_size(), q.chunk_size()), (512, 4096));
/// ```
pub struct QueueBuilder<T> {
    maxsize: usize,
    slot_size: usize,
    arena_chunks: usize,
    chunk_size: usize,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> fmt::Debug for QueueBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueBuilder")
            .field("maxsize", &self.maxsize)
            .field("slot_size", &self.slot_size)
            .field("arena_chunks", &self.arena_chunks)
            .field("chunk_size", &self.chunk_size)
            .finish()
    }
}

impl<T> Clone for QueueBuilder<T> {
    fn clone(&self) -> Self {
        QueueBuilder { ..*self }
    }
}

impl<T> Default for QueueBuilder<T> {
    fn default() -> Self {
        QueueBuilder {
            maxsize: 0,
            slot_size: DEFAULT_SLOT_SIZE,
            arena_chunks: DEFAULT_ARENA_CHUNKS,
            chunk_size: DEFAULT_CHUNK_SIZE,
            _t: PhantomData,
        }
    }
}

impl<T: Archive> QueueBuilder<T> {
    /// Most messages the queue holds; 0 (the default, as in Python) means
    /// [`DEFAULT_CAPACITY`].
    pub fn maxsize(mut self, maxsize: usize) -> Self {
        self.maxsize = maxsize;
        self
    }

    /// Bytes of archive a slot holds (rounded up to a multiple of 16). Larger messages
    /// go into the arena (see [`QueueBuilder::chunk_size`]) or, above a chunk, into a
    /// region of their own (about 20 µs more each).
    pub fn slot_size(mut self, bytes: usize) -> Self {
        self.slot_size = bytes.max(16).div_ceil(16) * 16;
        self
    }

    /// Number of arena chunks (default [`DEFAULT_ARENA_CHUNKS`], never more than the
    /// capacity; 0: no arena). The message at ring position `p` may use chunk
    /// `p % chunks`: a producer this many messages ahead of its consumers waits for
    /// them while they move (at most 20 ms a put), and sends mid-size messages the
    /// slow way (a memfd each) while they stand still or a [`MessageRef`] holds the
    /// chunk it needs.
    pub fn arena_chunks(mut self, chunks: usize) -> Self {
        self.arena_chunks = chunks;
        self
    }

    /// Bytes of archive an arena chunk holds (default [`DEFAULT_CHUNK_SIZE`]; rounded
    /// up to a multiple of 16, at most 1 GiB; 0: no arena). A message larger than a
    /// slot and no larger than a chunk is written into a chunk of the queue's own
    /// memory, as fast as an inline one byte for byte. The arena's memory is only
    /// touched as it is used: chunks times the largest mid-size message, at most.
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes.div_ceil(16).saturating_mul(16);
        self
    }

    fn inner(&self) -> Result<Inner, QueueCreateError> {
        let cap = if self.maxsize == 0 {
            DEFAULT_CAPACITY
        } else {
            self.maxsize
        };
        let cap = u64::try_from(cap).unwrap_or(u64::MAX);
        if cap > ring::MAX_CAPACITY {
            return Err(QueueCreateError::InvalidOptions("maxsize above 2^30"));
        }
        if self.chunk_size > ring::MAX_CHUNK_SIZE {
            return Err(QueueCreateError::InvalidOptions("chunk size above 1 GiB"));
        }
        let chunks = u64::try_from(self.arena_chunks)
            .unwrap_or(u64::MAX)
            .min(cap);
        // An arena whose chunks are no larger than a slot would never be used.
        let (chunks, chunk_size) = if chunks == 0 || self.chunk_size <= self.slot_size {
            (0, 0)
        } else {
            (chunks, self.chunk_size)
        };
        let g = Geometry {
            cap,
            slot_size: self.slot_size,
            chunks,
            chunk_size,
        };
        Inner::create(g, self.maxsize == 0, TypeTag::of::<T>())
    }

    /// Creates a [`Queue`].
    pub fn build(&self) -> Result<Queue<T>, QueueCreateError> {
        Ok(Queue::from_inner(self.inner()?))
    }

    /// Creates a [`SimpleQueue`].
    pub fn build_simple(&self) -> Result<SimpleQueue<T>, QueueCreateError> {
        Ok(SimpleQueue(self.build()?))
    }

    /// Creates a [`JoinableQueue`].
    pub fn build_joinable(&self) -> Result<JoinableQueue<T>, QueueCreateError> {
        Ok(JoinableQueue(self.build()?))
    }
}

/// A multi-producer, multi-consumer FIFO queue shared between processes: Python's
/// `multiprocessing.Queue`.
///
/// Clone it to use it from several threads; pass it (or a clone) in a child's
/// arguments or in a message to use it from other processes. FIFO order holds per
/// producer.
///
/// ```
/// use mproc_channel::Queue;
/// let q: Queue<(u32, Option<u8>, String)> = Queue::new().unwrap();
/// q.put((42, None, "hello".into())).unwrap();
/// let msg = q.get_ref().unwrap();       // in place: no copy, no allocation
/// assert_eq!(msg.0, 42);
/// assert_eq!(msg.2, "hello");
/// drop(msg);                            // frees the slot
/// q.put((7, Some(1), "again".into())).unwrap();
/// assert_eq!(q.get().unwrap(), (7, Some(1), "again".to_string()));
/// assert!(q.try_get().is_err());        // Empty
/// ```
///
/// # Capacity: unbounded and bounded queues
///
/// A ring has a fixed number of slots. [`Queue::new`] (Python's `Queue()`, unbounded)
/// gets [`DEFAULT_CAPACITY`] slots, and its puts never wait: a message that finds the
/// ring full (or finds earlier messages of this process still waiting) stays in the
/// producer process, and a feeder thread moves it into the ring as room appears,
/// oldest first, as Python's feeder thread does with its pipe. The last handle of a
/// process waits, when it drops, until those messages are in the ring
/// ([`Queue::join_thread`]; [`Queue::cancel_join_thread`] opts out), so a producer
/// that puts and returns loses nothing; and, as in Python, a process that spilled and
/// exits waits for someone to read. A queue with a bound ([`Queue::with_maxsize`],
/// Python's `Queue(maxsize)`) never spills: `put` waits for room, `try_put` reports
/// `Full`, and `maxsize` is exact. Pages of the ring are only touched as they are used.
///
/// Messages in the ring are never lost when their producer exits: they sit in shared
/// memory (or, for large messages and handles, in flight in the queue's socket), which
/// lives as long as any process holds the queue.
///
/// # Message sizes
///
/// Each message takes one of three ways, by the size of its archive:
///
/// | archive | travels | cost |
/// |---|---|---|
/// | ≤ [`Queue::slot_size`] ([`DEFAULT_SLOT_SIZE`]) | inline, in its slot | one copy in, none out |
/// | ≤ [`Queue::chunk_size`] ([`DEFAULT_CHUNK_SIZE`]) | in an arena chunk of the ring's own memory | the same |
/// | larger | in a sealed memfd of its own | about 20 µs more |
///
/// The arena has [`Queue::arena_chunks`] chunks ([`DEFAULT_ARENA_CHUNKS`], at most the
/// capacity); the message at ring position `p` may use chunk `p % chunks` and holds it
/// until its consumer releases it (a [`MessageRef`] until it drops). When that chunk is
/// still held (a consumer more than `chunks` messages behind), the producer waits while
/// consumers move towards it (at most 20 ms per put, also for an unbounded queue:
/// this is what keeps a fast producer on the fast path), and takes the memfd way
/// instead when they stand still for 5 ms (nobody reading yet, a guard held):
/// slower, never lost. The arena's pages, like the slots', are only
/// touched as they are used. [`QueueBuilder::slot_size`], [`QueueBuilder::arena_chunks`]
/// and [`QueueBuilder::chunk_size`] change the classes.
///
/// # Large messages and handles
///
/// A message whose archive is larger than a chunk (or any larger than a slot when the
/// queue has no arena) is written into a memfd of its own, sealed against writes, and
/// that fd is handed to the consumer, who maps it read-only: one copy in, none out.
/// Handles inside messages (fds, regions, other queues) travel the same way (beside an
/// inline or arena archive). The fds cross on a `SOCK_SEQPACKET` socket pair that every holder of
/// the queue keeps open (see the `side` module for the protocol that keeps it in step
/// with the ring); unlike `/proc/PID/fd` or `pidfd_getfd` it needs no ptrace rights and
/// does not need the producer to stay alive.
///
/// # Failure
///
/// A process killed while it holds a slot (a consumer inside `get_ref`, a producer in
/// the middle of `put`) does not wedge the queue: a waiter that finds a held slot in
/// its way for more than 1 ms has its process watch the holder's pidfd, is woken when
/// the holder exits and takes the slot back (a waiter on a plain empty or full queue
/// wakes every 50 ms), with the arena chunk its message held; a producer that needs a
/// chunk a dead process holds takes it back at once. A corrupt message is reported as
/// [`GetError::Corrupt`], a slot stamped with another type's fingerprint as
/// [`GetError::TypeMismatch`], and the message is dropped; the queue stays usable.
pub struct Queue<T> {
    inner: Arc<Inner>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        self.inner.users.fetch_add(1, Ordering::Relaxed);
        Queue {
            inner: self.inner.clone(),
            _t: PhantomData,
        }
    }
}

/// The last handle of a process waits until the messages it spilled (an unbounded
/// queue that was full) are in the ring, as Python's `Queue` joins its feeder thread
/// at exit, unless [`Queue::cancel_join_thread`] was called.
impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        if self.inner.users.fetch_sub(1, Ordering::AcqRel) == 1
            && sys::my_pid() == self.inner.owner
            && !self.inner.lock_spill().cancelled
        {
            self.inner.join_feeder();
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("maxsize", &self.inner.ring.capacity())
            .field("qsize", &self.inner.ring.len())
            .field("closed", &self.inner.ring.is_closed())
            .finish()
    }
}

impl<T> Queue<T> {
    fn from_inner(inner: Inner) -> Self {
        inner.users.fetch_add(1, Ordering::Relaxed);
        Queue {
            inner: Arc::new(inner),
            _t: PhantomData,
        }
    }

    /// Options for a new queue (`maxsize`, `slot_size`).
    pub fn builder() -> QueueBuilder<T> {
        QueueBuilder::default()
    }
}

impl<T: Archive> Queue<T> {
    /// An unbounded queue (a ring of [`DEFAULT_CAPACITY`] slots whose puts never wait:
    /// see [`Queue`]): Python's `Queue()`.
    pub fn new() -> Result<Self, QueueCreateError> {
        QueueBuilder::default().build()
    }

    /// A queue holding at most `maxsize` messages (0: [`DEFAULT_CAPACITY`]): Python's
    /// `Queue(maxsize)`.
    pub fn with_maxsize(maxsize: usize) -> Result<Self, QueueCreateError> {
        QueueBuilder::default().maxsize(maxsize).build()
    }
}

impl<T> Queue<T> {
    /// Approximate number of messages waiting (others may be putting or getting at
    /// the same moment): Python's `qsize()`.
    pub fn qsize(&self) -> usize {
        self.inner.ring.len() as usize
    }

    /// Whether the queue looks empty (approximate, as in Python).
    pub fn is_empty(&self) -> bool {
        self.qsize() == 0
    }

    /// Whether the queue looks full (approximate, as in Python).
    pub fn is_full(&self) -> bool {
        self.inner.ring.len() >= self.inner.ring.capacity()
    }

    /// The most messages the queue holds.
    pub fn maxsize(&self) -> usize {
        self.inner.ring.capacity() as usize
    }

    /// Payload bytes per slot; larger messages go into the arena (up to
    /// [`Queue::chunk_size`]) or a region of their own.
    pub fn slot_size(&self) -> usize {
        self.inner.ring.slot_size()
    }

    /// Archive bytes per arena chunk (0: the queue has no arena).
    pub fn chunk_size(&self) -> usize {
        self.inner.ring.chunk_size()
    }

    /// Number of arena chunks (0: the queue has no arena).
    pub fn arena_chunks(&self) -> usize {
        self.inner.ring.chunks() as usize
    }

    /// Arena chunks held right now by messages put but not yet released (by every
    /// process). A diagnostic: 0 once the queue is empty and no [`MessageRef`] lives.
    pub fn arena_chunks_in_use(&self) -> usize {
        self.inner.ring.chunks_in_use() as usize
    }

    /// Closes the queue for every process: further puts fail with `Closed`; gets
    /// return the messages still queued, then `Closed` instead of blocking. (Python's
    /// `close()` only concerns the calling process; this one wakes every waiter.)
    pub fn close(&self) {
        self.inner.ring.close();
    }

    /// Whether [`Queue::close`] was called (by any process).
    pub fn is_closed(&self) -> bool {
        self.inner.ring.is_closed()
    }

    /// Waits until every message this process put has reached the ring: Python's
    /// `join_thread()`. Only an unbounded queue that was full ever holds messages back
    /// (in this process, moved into the ring by a feeder thread as room appears).
    pub fn join_thread(&self) {
        self.inner.join_feeder();
    }

    /// Lets this process's last handle drop without waiting for its spilled messages
    /// to reach the ring (they are lost if the process then exits): Python's
    /// `cancel_join_thread()`.
    pub fn cancel_join_thread(&self) {
        if self.inner.may_spill() {
            self.inner.lock_spill().cancelled = true;
        }
    }

    /// Messages this process has put that still wait for room in the ring (always 0
    /// for a bounded queue).
    pub fn spilled(&self) -> usize {
        self.inner.pending.load(Ordering::Acquire)
    }
}

impl<T: Message> Queue<T> {
    fn put_deadline(&self, value: T, deadline: Deadline) -> Result<(), PutError<T>> {
        self.put_ref_deadline(&value, deadline)
            .map_err(|e| match e {
                PutError::Full(()) => PutError::Full(value),
                PutError::Closed(()) => PutError::Closed(value),
                PutError::Encode(e) => PutError::Encode(e),
                PutError::Io(e) => PutError::Io(e),
            })
    }

    fn put_ref_deadline(&self, value: &T, deadline: Deadline) -> Result<(), PutError<()>> {
        match with_encoded(value, |bytes, fds, handles| {
            if self.inner.may_spill() {
                self.put_unbounded(bytes, fds, handles)
            } else {
                self.inner.put_encoded(bytes, &fds, handles, deadline)
            }
        }) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(f)) => Err((f, ()).into()),
            Err(e) => Err(PutError::Encode(e)),
        }
    }

    /// An unbounded queue's put: straight into the ring when it has room and nothing
    /// of this process waits before it; otherwise into the spill, which a feeder
    /// thread moves into the ring as room appears. Never waits for room.
    fn put_unbounded(&self, bytes: &[u8], fds: Vec<OwnedFd>, handles: bool) -> Result<(), PutFail> {
        let inner = &self.inner;
        if inner.pending.load(Ordering::Acquire) == 0 {
            match inner.put_encoded(bytes, &fds, handles, Deadline::now()) {
                Err(PutFail::Full) => {}
                r => return r,
            }
        }
        self.spill_one(bytes, fds, handles)
    }

    fn spill_one(&self, bytes: &[u8], fds: Vec<OwnedFd>, handles: bool) -> Result<(), PutFail> {
        let inner = &self.inner;
        let mut spill = inner.lock_spill();
        if inner.ring.is_closed() {
            return Err(PutFail::Closed);
        }
        spill.queue.push_back(Pending {
            bytes: bytes.to_vec(),
            fds,
            handles,
        });
        inner.pending.fetch_add(1, Ordering::AcqRel);
        if !spill.feeding {
            spill.feeding = true;
            mp_log!(Level::DEBUG, "starting thread to feed data to queue");
            let feeder = Arc::clone(inner);
            let started = std::thread::Builder::new()
                .name("mproc-queue-feeder".into())
                .spawn(move || feeder.feed());
            if let Err(e) = started {
                spill.feeding = false;
                spill.queue.pop_back();
                inner.pending.fetch_sub(1, Ordering::AcqRel);
                return Err(PutFail::Io(e));
            }
        }
        Ok(())
    }

    /// Puts a copy of `*value` (it is serialised, so the caller keeps it), waiting
    /// while the queue is full.
    pub fn put_ref(&self, value: &T) -> Result<(), PutError<()>> {
        self.put_ref_deadline(value, Deadline::never())
    }

    /// [`Queue::put_ref`], waiting at most `timeout` for room (then `Full`).
    pub fn put_ref_timeout(&self, value: &T, timeout: Duration) -> Result<(), PutError<()>> {
        self.put_ref_deadline(value, Deadline::after(timeout))
    }

    /// Puts `value`, waiting while a bounded queue is full: Python's `put(obj)`.
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.put_deadline(value, Deadline::never())
    }

    /// Puts `value`, waiting at most `timeout` for room (then `Full`): Python's
    /// `put(obj, timeout=t)`.
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_deadline(value, Deadline::after(timeout))
    }

    /// Puts `value` if there is room now (else `Full`): Python's `put_nowait(obj)`.
    pub fn try_put(&self, value: T) -> Result<(), PutError<T>> {
        self.put_deadline(value, Deadline::now())
    }

    /// Puts a copy of `*value` serialised straight into its slot: one copy fewer
    /// than [`Queue::put_ref`], which serialises into a buffer first, and worth it for
    /// large messages in large slots ([`QueueBuilder::slot_size`]). A message that
    /// does not fit its slot or carries handles costs an empty slot and then goes the
    /// usual way.
    pub fn put_in_place(&self, value: &T) -> Result<(), PutError<()>>
    where
        T: InPlace,
    {
        let inner = &self.inner;
        if inner.ring.is_closed() {
            return Err(PutError::Closed(()));
        }
        // An unbounded queue never waits for room: behind spilled messages or in a
        // full ring, the message joins the spill.
        let unbounded = inner.may_spill();
        if unbounded && inner.pending.load(Ordering::Acquire) != 0 {
            return self.put_ref(value);
        }
        let deadline = if unbounded {
            Deadline::now()
        } else {
            Deadline::never()
        };
        let mut claim = match inner.claim_write(sys::my_pid(), deadline) {
            Ok(c) => c,
            Err(PutFail::Full) if unbounded => return self.put_ref(value),
            Err(f) => return Err((f, ()).into()),
        };
        match sys::serialize_into_slot(&mut claim, value) {
            Ok(len) => {
                claim.publish(kind::INLINE, len as u64);
                Ok(())
            }
            Err(_) => {
                drop(claim); // published empty: consumers skip it
                self.put_ref(value)
            }
        }
    }

    /// Takes the next message, waiting for one: Python's `get()`.
    pub fn get(&self) -> Result<T, GetError> {
        self.inner.get(Deadline::never())
    }

    /// Takes the next message, waiting at most `timeout` (then `Empty`): Python's
    /// `get(timeout=t)`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.inner.get(Deadline::after(timeout))
    }

    /// Takes the next message if one is ready (else `Empty`): Python's `get_nowait()`.
    pub fn try_get(&self) -> Result<T, GetError> {
        self.inner.get(Deadline::now())
    }

    /// Takes the next message in place: a guard over the validated archive in its
    /// slot, no copy and no deserialisation. The slot is freed when the guard drops.
    pub fn get_ref(&self) -> Result<MessageRef<'_, T>, GetError> {
        self.inner.get_ref(Deadline::never())
    }

    /// [`Queue::get_ref`], waiting at most `timeout`.
    pub fn get_ref_timeout(&self, timeout: Duration) -> Result<MessageRef<'_, T>, GetError> {
        self.inner.get_ref(Deadline::after(timeout))
    }

    /// [`Queue::get_ref`] if a message is ready now (else `Empty`).
    pub fn try_get_ref(&self) -> Result<MessageRef<'_, T>, GetError> {
        self.inner.get_ref(Deadline::now())
    }
}

/// A queue travels with the fingerprint of its message type: a `Queue<Named>` received
/// as a `Queue<Point>` is a [`TransferError::TypeMismatch`] naming both.
impl<T: Archive> Transfer for Queue<T> {
    const KIND: &'static str = "mproc_channel::Queue";
    fn type_tag() -> TypeTag {
        TypeTag::of_carrier::<Self, T>()
    }
    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        self.inner.export(out)
    }
    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        Inner::import(input, TypeTag::of::<T>()).map(Queue::from_inner)
    }
}

mproc_core::impl_handle_archive!([T: Archive,] Queue<T>);

/// Python's `multiprocessing.SimpleQueue`: `put`, `get`, `is_empty`, `close`, and
/// nothing else. The same ring as [`Queue`], with [`DEFAULT_CAPACITY`] slots.
pub struct SimpleQueue<T>(Queue<T>);

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue(self.0.clone())
    }
}

impl<T> fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SimpleQueue").field(&self.0).finish()
    }
}

impl<T: Archive> SimpleQueue<T> {
    /// A new simple queue.
    pub fn new() -> Result<Self, QueueCreateError> {
        Queue::new().map(SimpleQueue)
    }
}

impl<T> SimpleQueue<T> {
    /// Whether the queue looks empty (approximate).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Closes the queue (see [`Queue::close`]).
    pub fn close(&self) {
        self.0.close()
    }
}

impl<T: Message> SimpleQueue<T> {
    /// Puts `value` (never waits: see [`Queue::new`]).
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.0.put(value)
    }

    /// Takes the next message, waiting for one.
    pub fn get(&self) -> Result<T, GetError> {
        self.0.get()
    }

    /// Takes the next message in place (see [`Queue::get_ref`]).
    pub fn get_ref(&self) -> Result<MessageRef<'_, T>, GetError> {
        self.0.get_ref()
    }
}

impl<T: Archive> Transfer for SimpleQueue<T> {
    const KIND: &'static str = "mproc_channel::SimpleQueue";
    fn type_tag() -> TypeTag {
        TypeTag::of_carrier::<Self, T>()
    }
    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        self.0.inner.export(out)
    }
    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        Inner::import(input, TypeTag::of::<T>()).map(|i| SimpleQueue(Queue::from_inner(i)))
    }
}

mproc_core::impl_handle_archive!([T: Archive,] SimpleQueue<T>);

/// Python's `multiprocessing.JoinableQueue`: a [`Queue`] that counts unfinished tasks.
/// Every `put` adds one; [`JoinableQueue::task_done`] removes one;
/// [`JoinableQueue::join`] waits until none are left.
///
/// It dereferences to its [`Queue`] for everything else (`get`, `get_ref`, `qsize`,
/// `close` …); its own `put`, `put_timeout`, `try_put`, `put_ref`, `put_ref_timeout`
/// and `put_in_place` count the task.
pub struct JoinableQueue<T>(Queue<T>);

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue(self.0.clone())
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("queue", &self.0)
            .field("unfinished", &self.unfinished_tasks())
            .finish()
    }
}

impl<T> Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.0
    }
}

impl<T: Archive> JoinableQueue<T> {
    /// A joinable queue with [`DEFAULT_CAPACITY`] slots.
    pub fn new() -> Result<Self, QueueCreateError> {
        Queue::new().map(JoinableQueue)
    }

    /// A joinable queue holding at most `maxsize` messages (0: the default).
    pub fn with_maxsize(maxsize: usize) -> Result<Self, QueueCreateError> {
        Queue::with_maxsize(maxsize).map(JoinableQueue)
    }
}

impl<T> JoinableQueue<T> {
    /// Marks one task taken from the queue as done: Python's `task_done()`. Fails
    /// when called more times than items were put.
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        let word = self.0.inner.unfinished();
        let mut n = word.load(Ordering::Relaxed);
        loop {
            if n == 0 {
                return Err(TaskDoneError);
            }
            match word.compare_exchange_weak(n, n - 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        if n == 1 {
            futex::wake_all(word);
        }
        Ok(())
    }

    /// Waits until every item put has been marked done: Python's `join()`.
    pub fn join(&self) {
        futex::wait_until(self.0.inner.unfinished(), None, Deadline::never(), |v| {
            v == 0
        });
    }

    /// [`JoinableQueue::join`] with a timeout; `true` if every task was done.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        futex::wait_until(
            self.0.inner.unfinished(),
            None,
            Deadline::after(timeout),
            |v| v == 0,
        )
    }

    /// Tasks put but not yet marked done.
    pub fn unfinished_tasks(&self) -> usize {
        self.0.inner.unfinished().load(Ordering::Relaxed) as usize
    }

    fn undo_count(&self) {
        let word = self.0.inner.unfinished();
        if word.fetch_sub(1, Ordering::AcqRel) == 1 {
            futex::wake_all(word);
        }
    }
}

impl<T: Message> JoinableQueue<T> {
    fn counted<V>(&self, r: Result<(), PutError<V>>) -> Result<(), PutError<V>> {
        if r.is_err() {
            self.undo_count();
        }
        r
    }

    /// [`Queue::put_ref`], counting one more unfinished task.
    pub fn put_ref(&self, value: &T) -> Result<(), PutError<()>> {
        self.0.inner.unfinished().fetch_add(1, Ordering::AcqRel);
        self.counted(self.0.put_ref(value))
    }

    /// [`Queue::put_ref_timeout`], counting one more unfinished task.
    pub fn put_ref_timeout(&self, value: &T, timeout: Duration) -> Result<(), PutError<()>> {
        self.0.inner.unfinished().fetch_add(1, Ordering::AcqRel);
        self.counted(self.0.put_ref_timeout(value, timeout))
    }

    /// [`Queue::put_in_place`], counting one more unfinished task.
    pub fn put_in_place(&self, value: &T) -> Result<(), PutError<()>>
    where
        T: InPlace,
    {
        self.0.inner.unfinished().fetch_add(1, Ordering::AcqRel);
        self.counted(self.0.put_in_place(value))
    }

    /// Puts `value` and counts one more unfinished task.
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.0.inner.unfinished().fetch_add(1, Ordering::AcqRel);
        self.counted(self.0.put(value))
    }

    /// [`JoinableQueue::put`], waiting at most `timeout` for room.
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.0.inner.unfinished().fetch_add(1, Ordering::AcqRel);
        self.counted(self.0.put_timeout(value, timeout))
    }

    /// [`JoinableQueue::put`] if there is room now.
    pub fn try_put(&self, value: T) -> Result<(), PutError<T>> {
        self.0.inner.unfinished().fetch_add(1, Ordering::AcqRel);
        self.counted(self.0.try_put(value))
    }
}

impl<T: Archive> Transfer for JoinableQueue<T> {
    const KIND: &'static str = "mproc_channel::JoinableQueue";
    fn type_tag() -> TypeTag {
        TypeTag::of_carrier::<Self, T>()
    }
    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        self.0.inner.export(out)
    }
    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        Inner::import(input, TypeTag::of::<T>()).map(|i| JoinableQueue(Queue::from_inner(i)))
    }
}

mproc_core::impl_handle_archive!([T: Archive,] JoinableQueue<T>);

//! The queue's unsafe code, kept in one place.
//!
//! # Safety
//!
//! The ring protocol (see `ring.rs`) gives a slot's payload to exactly one process at a
//! time: the producer that claimed it (until it publishes) or the consumer that claimed
//! it (until it releases). While a consumer holds a slot, no process following the
//! protocol writes its bytes, so a shared `&[u8]` over them is sound for that span.
//! The same holds for a slot's arena chunk: its owner word names the slot's position
//! from the producer's claim until the consumer's release (see `ring.rs`), and no
//! producer writes a chunk it has not claimed.
//! Large messages live in a memfd sealed against writes (`F_SEAL_WRITE`) before it is
//! handed over, so a read-only mapping of it can never change under the reader.
use super::ring::{ReadClaim, WriteClaim};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;

/// This process's owner tag for slots and side locks: its pid, from mproc-core's
/// fork-safe cache (see `mproc_core::pid::owner_tag`, judged by `holder_dead`).
#[inline]
pub(crate) fn my_pid() -> u32 {
    mproc_core::pid::owner_tag()
}

/// The bytes of a message this process holds: in a ring slot it has claimed for
/// reading (released when this drops), or in a sealed large-message mapping it owns.
#[derive(Debug)]
pub(crate) struct Held<'a> {
    ptr: *const u8,
    len: usize,
    _claim: Option<ReadClaim<'a>>,
    _map: Option<SealedMap>,
}

impl<'a> Held<'a> {
    /// The first `len` payload bytes of a claimed slot; gives the claim back if `len`
    /// exceeds the slot.
    #[inline]
    pub(crate) fn slot(claim: ReadClaim<'a>, len: u64) -> Result<Held<'a>, ReadClaim<'a>> {
        let ring = claim.ring();
        let Ok(len) = usize::try_from(len) else {
            return Err(claim);
        };
        let off = claim.payload_off();
        if len > ring.slot_size() || off + ring.slot_size() > ring.region().len() {
            return Err(claim);
        }
        Ok(Held {
            ptr: ring.region().as_ptr().wrapping_add(off),
            len,
            _claim: Some(claim),
            _map: None,
        })
    }

    /// The first `len` bytes of the arena chunk of a claimed `ARENA` slot; gives the
    /// claim back with the reason if the chunk is not held for this message or `len`
    /// exceeds a chunk.
    pub(crate) fn chunk(
        claim: ReadClaim<'a>,
        len: u64,
    ) -> Result<Held<'a>, (ReadClaim<'a>, &'static str)> {
        let ring = claim.ring();
        let Some(off) = claim.chunk_off() else {
            return Err((claim, "arena chunk not held for this message"));
        };
        let Ok(len) = usize::try_from(len) else {
            return Err((claim, "message length beyond its arena chunk"));
        };
        if len > ring.chunk_size() || off + ring.chunk_size() > ring.region().len() {
            return Err((claim, "message length beyond its arena chunk"));
        }
        Ok(Held {
            ptr: ring.region().as_ptr().wrapping_add(off),
            len,
            _claim: Some(claim),
            _map: None,
        })
    }

    /// The first `len` bytes of a sealed large-message mapping; `None` if it is shorter.
    pub(crate) fn large(map: SealedMap, len: usize) -> Option<Held<'a>> {
        if len > map.bytes().len() {
            return None;
        }
        Some(Held {
            ptr: map.bytes().as_ptr(),
            len,
            _claim: None,
            _map: Some(map),
        })
    }

    /// The message bytes.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is in bounds of a live mapping (checked at
        // construction; the ring's region outlives 'a, the sealed map is owned by
        // `self` and a mapping does not move when its owner moves), and nobody writes
        // it while `self` lives: `self` owns the read claim on the slot (released only
        // when `self` drops) and, for an arena chunk, the chunk's owner word named this
        // message's position when it was checked (it is freed only by this claim's drop
        // or by a reclaimer that has found this process dead), or the memfd is sealed
        // against writes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Held bytes that passed bytecheck validation as an archived `T`.
#[derive(Debug)]
pub(crate) struct Checked<'a, T> {
    held: Held<'a>,
    _t: PhantomData<fn() -> T>,
}

impl<'a, T: mproc_core::Decode> Checked<'a, T> {
    /// Validates the bytes; gives them back with the error if they are not a valid `T`.
    #[inline]
    pub(crate) fn new(held: Held<'a>) -> Result<Self, (Held<'a>, mproc_core::codec::CodecError)> {
        match mproc_core::codec::access::<T>(held.bytes()) {
            Ok(_) => Ok(Checked {
                held,
                _t: PhantomData,
            }),
            Err(e) => Err((held, e)),
        }
    }

    /// Skips validation.
    ///
    /// # Safety
    ///
    /// The bytes must be a valid archived `T` (as written by a producer of this queue
    /// for this `T`); invalid bytes cause undefined behaviour when read.
    pub(crate) unsafe fn new_unchecked(held: Held<'a>) -> Self {
        Checked {
            held,
            _t: PhantomData,
        }
    }

    /// The archived value.
    pub(crate) fn get(&self) -> &T::Archived {
        // SAFETY: validated for `T` in `new` (or promised by `new_unchecked`'s caller),
        // and the bytes cannot change while `self.held` lives.
        unsafe { rkyv::access_unchecked::<T::Archived>(self.held.bytes()) }
    }
}

/// A read-only mapping of a write-sealed memfd (a large message).
#[derive(Debug)]
pub(crate) struct SealedMap {
    map: memmap2::Mmap,
}

impl SealedMap {
    /// Maps `fd` read-only after checking that it is sealed against writes, shrinking
    /// and growing and holds at least `len` bytes.
    pub(crate) fn new(fd: &impl AsFd, len: usize) -> std::io::Result<Self> {
        use rustix::fs::{SealFlags, fcntl_get_seals, fstat};
        let need = SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW;
        let seals = fcntl_get_seals(fd)?;
        if !seals.contains(need) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "large message region is not sealed against writes",
            ));
        }
        let size = fstat(fd)?.st_size;
        if size < 0 || (size as u64) < len as u64 || len == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "large message region is smaller than announced",
            ));
        }
        // SAFETY: the memfd is sealed against writes, shrinking and growing (checked
        // above), so the mapped bytes can neither change nor disappear while mapped.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(&fd.as_fd())? };
        Ok(SealedMap { map })
    }

    /// The mapped bytes (page-aligned start).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }
}

impl<T: mproc_core::Decode> Checked<'_, T> {
    /// The archive's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.held.bytes()
    }
}

impl<T: mproc_core::Decode> super::Queue<T> {
    /// [`Queue::get_ref`](super::Queue::get_ref) without validating the archive: for
    /// peers you trust, when validation costs too much (validating text costs about
    /// 26 µs per MiB; plain bytes are free to validate anyway). Slot headers are still
    /// checked.
    ///
    /// # Safety
    ///
    /// Every process that puts into this queue must put valid archives of `T` (that
    /// is, use this crate's `put` with the same `T`), and no process may write the
    /// queue's memory by other means. Reading an invalid archive is undefined
    /// behaviour.
    pub unsafe fn get_ref_unchecked(
        &self,
        timeout: Option<std::time::Duration>,
    ) -> Result<super::MessageRef<'_, T>, super::GetError> {
        let t = self
            .inner
            .take(mproc_core::Deadline::from_timeout(timeout))?;
        Ok(super::MessageRef {
            // SAFETY: the caller guarantees the bytes are a valid archived `T`.
            checked: unsafe { Checked::new_unchecked(t.held) },
            fds: t.fds,
        })
    }
}

/// What [`Queue::put_in_place`](super::Queue::put_in_place) can serialise: rkyv's
/// serialiser over a fixed buffer (every derived or std type qualifies).
pub trait InPlace:
    for<'a, 'b> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::ser::writer::Buffer<'b>,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::BoxedError,
        >,
    >
{
}

impl<T> InPlace for T where
    T: for<'a, 'b> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::ser::writer::Buffer<'b>,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::BoxedError,
            >,
        >
{
}

/// Serialises `value` straight into the payload of the claimed slot; returns the
/// archive's length. Fails (leaving garbage in the slot) if it does not fit or needs
/// the fd table (handles).
pub(crate) fn serialize_into_slot<T: InPlace>(
    claim: &mut WriteClaim<'_>,
    value: &T,
) -> Result<usize, rkyv::rancor::BoxedError> {
    let ring = claim.ring();
    let off = claim.payload_off();
    let cap = ring.slot_size();
    assert!(off + cap <= ring.region().len(), "slot inside the region");
    // SAFETY: in bounds (checked); the write claim gives this process the slot's
    // payload exclusively until it is published (no other process following the
    // protocol reads or writes it), and `&mut claim` keeps this process from making a
    // second slice of it while this one lives.
    let buf: &mut [MaybeUninit<u8>] =
        unsafe { std::slice::from_raw_parts_mut(ring.region().as_ptr().add(off).cast(), cap) };
    let out = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::BoxedError>(
        value,
        rkyv::ser::writer::Buffer::from(buf),
    )?;
    Ok(out.len())
}

/// A region with its base address cached, so that the ring's hot paths reach their
/// atomic words without a call (and without an `Option`) per access.
#[derive(Debug)]
pub(crate) struct Mapped {
    region: mproc_core::Region,
    base: usize,
    len: usize,
}

impl Mapped {
    /// Takes ownership of the region.
    pub(crate) fn new(region: mproc_core::Region) -> Mapped {
        let base = region.as_ptr() as usize;
        let len = region.len();
        Mapped { region, base, len }
    }

    /// The region.
    pub(crate) fn region(&self) -> &mproc_core::Region {
        &self.region
    }

    /// The `AtomicU32` at `off`. Panics if out of bounds or misaligned (offsets are
    /// computed from a geometry checked against the region when the ring was opened).
    #[inline]
    pub(crate) fn u32_at(&self, off: usize) -> &std::sync::atomic::AtomicU32 {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len,
            "word outside the ring"
        );
        // SAFETY: in bounds and aligned (checked; the base is page-aligned), the
        // mapping lives as long as `self` owns the region, and every access to these
        // shared words goes through atomics.
        unsafe { std::sync::atomic::AtomicU32::from_ptr((self.base + off) as *mut u32) }
    }

    /// The `AtomicU64` at `off` (see [`Mapped::u32_at`]).
    #[inline]
    pub(crate) fn u64_at(&self, off: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(
            off.is_multiple_of(8) && off + 8 <= self.len,
            "word outside the ring"
        );
        // SAFETY: as in `u32_at`.
        unsafe { std::sync::atomic::AtomicU64::from_ptr((self.base + off) as *mut u64) }
    }
}

//! Shared memory regions that can cross into other processes.
//!
//! ```
//! use mproc_core::Region;
//! let r = Region::new(4096).unwrap();
//! assert_eq!(r.len(), 4096);
//! let first = r.atomic_u32(0).unwrap();
//! first.store(7, std::sync::atomic::Ordering::Relaxed);
//! // A second mapping of the same memory (as another process would get) sees it.
//! let again = r.try_clone().unwrap();
//! assert_eq!(again.atomic_u32(0).unwrap().load(std::sync::atomic::Ordering::Relaxed), 7);
//! ```
use crate::transfer::{Exporter, Importer, Transfer, TransferError};
use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{MemfdFlags, SealFlags, fcntl_add_seals, fstat, ftruncate, memfd_create};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64};

/// A `MAP_SHARED` mapping of a file descriptor: by default an anonymous, sealed memfd
/// that the kernel frees when the last process unmaps it and closes its fd, so it can
/// never leak. Any other shareable fd (a named POSIX segment) can be mapped with
/// [`Region::from_fd`].
///
/// All access goes through raw pointers or atomics: other processes may write the
/// memory at any time, so this type never hands out `&[u8]` or `&mut [u8]`.
#[derive(Debug)]
pub struct Region {
    map: MmapRaw,
    fd: OwnedFd,
    len: usize,
}

impl Region {
    /// Creates an anonymous shared region of `len` bytes, zero-filled.
    ///
    /// The memfd is sealed against shrinking and growing, so a receiver can never make
    /// another process's accesses fault with `SIGBUS`.
    pub fn new(len: usize) -> io::Result<Self> {
        Self::named_memfd("mproc-region", len)
    }

    /// As [`Region::new`], with a name shown in `/proc/PID/maps` (debugging only).
    pub fn named_memfd(debug_name: &str, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a region cannot be empty",
            ));
        }
        let fd = memfd_create(debug_name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        ftruncate(&fd, len as u64)?;
        fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        Self::map(fd, len)
    }

    /// Maps the whole of an existing shareable fd (its current size).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let len = usize::try_from(fstat(&fd)?.st_size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad size"))?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map an empty file",
            ));
        }
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Self> {
        // Record this process's pid namespace (and owner tag) while it still has the
        // memory it was created with: a fork child compares its own with it.
        let _ = crate::pid::current();
        let map = MmapOptions::new().len(len).map_raw(&fd)?;
        Ok(Region { map, fd, len })
    }

    /// A second, independent mapping of the same memory (with its own fd).
    pub fn try_clone(&self) -> io::Result<Self> {
        let fd = self.fd.try_clone()?;
        Self::map(fd, self.len)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Start of the mapping (page-aligned). Valid for `len()` bytes while `self` lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The fd behind the mapping.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn check(&self, offset: usize, size: usize, align: usize) -> Option<*mut u8> {
        let end = offset.checked_add(size)?;
        (end <= self.len && offset.is_multiple_of(align))
            .then(|| self.as_ptr().wrapping_add(offset))
    }

    /// The `AtomicU32` at byte `offset` (which must be 4-aligned and in bounds).
    pub fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        let p = self.check(offset, 4, 4)?;
        // SAFETY: in bounds and aligned (checked), the mapping lives as long as `&self`,
        // and every access to shared words goes through atomics.
        Some(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    /// The `AtomicU64` at byte `offset` (which must be 8-aligned and in bounds).
    pub fn atomic_u64(&self, offset: usize) -> Option<&AtomicU64> {
        let p = self.check(offset, 8, 8)?;
        // SAFETY: as in `atomic_u32`.
        Some(unsafe { AtomicU64::from_ptr(p.cast()) })
    }

    /// Copies `src` into the region at `offset`.
    ///
    /// The copy is made of relaxed atomic stores (8 bytes at a time where aligned, else
    /// byte by byte), so it never races in the undefined-behaviour sense with atomic
    /// views of the same bytes (`atomic_u32`, the locks and queues built on regions)
    /// nor with other processes' copies. Concurrent writers of the same bytes leave a
    /// mix of both, and a reader racing a writer may see a mix of old and new bytes
    /// (no tearing guarantee beyond single aligned 8-byte words).
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> Result<(), OutOfBounds> {
        let p = self.check(offset, src.len(), 1).ok_or(OutOfBounds)?;
        // SAFETY: `p..p + src.len()` is in bounds of a live mapping (checked) that we
        // only ever access atomically or through these atomic copies.
        unsafe { atomic_copy::store(p, src) };
        Ok(())
    }

    /// Copies bytes out of the region at `offset` into `dst`, with relaxed atomic loads
    /// (see [`Region::write_bytes`]).
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
        let p = self.check(offset, dst.len(), 1).ok_or(OutOfBounds)?;
        // SAFETY: as in `write_bytes`.
        unsafe { atomic_copy::load(p, dst) };
        Ok(())
    }
}

/// Byte copies between private memory and shared memory made of relaxed atomic
/// accesses: a plain `memcpy` racing an atomic access of another thread or process is
/// a data race (undefined behaviour), an atomic copy is not. Relaxed atomic loads and
/// stores compile to plain moves, so this costs little more than a simple copy loop.
pub mod atomic_copy {
    use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

    /// The widest access (8, 4, 2 or 1 bytes) aligned at `addr` that fits in `left`.
    #[inline(always)]
    fn width(addr: usize, left: usize) -> usize {
        if addr.is_multiple_of(8) && left >= 8 {
            8
        } else if addr.is_multiple_of(4) && left >= 4 {
            4
        } else if addr.is_multiple_of(2) && left >= 2 {
            2
        } else {
            1
        }
    }

    /// Copies `src[from..to]` to `dst + from` one aligned atomic at a time (the widest
    /// that fits): the unaligned head and the tail of a copy.
    ///
    /// # Safety
    ///
    /// As [`store`].
    #[inline(always)]
    unsafe fn store_steps(dst: *mut u8, src: &[u8], from: usize, to: usize) {
        let mut i = from;
        while i < to {
            let d = dst.wrapping_add(i);
            let w = width(d as usize, to - i);
            let s = &src[i..i + w];
            // SAFETY: `d..d + w` is inside the caller's range and aligned for the atomic
            // of width `w` (`width` checked it); only atomic accesses reach it.
            unsafe {
                match w {
                    8 => AtomicU64::from_ptr(d.cast()).store(
                        u64::from_ne_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]),
                        Ordering::Relaxed,
                    ),
                    4 => AtomicU32::from_ptr(d.cast()).store(
                        u32::from_ne_bytes([s[0], s[1], s[2], s[3]]),
                        Ordering::Relaxed,
                    ),
                    2 => AtomicU16::from_ptr(d.cast())
                        .store(u16::from_ne_bytes([s[0], s[1]]), Ordering::Relaxed),
                    _ => AtomicU8::from_ptr(d).store(s[0], Ordering::Relaxed),
                }
            }
            i += w;
        }
    }

    /// Copies the shared bytes `src + from .. src + to` into `dst[from..to]`, as
    /// [`store_steps`] does the other way.
    ///
    /// # Safety
    ///
    /// As [`load`].
    #[inline(always)]
    unsafe fn load_steps(src: *mut u8, dst: &mut [u8], from: usize, to: usize) {
        let mut i = from;
        while i < to {
            let p = src.wrapping_add(i);
            let w = width(p as usize, to - i);
            let d = &mut dst[i..i + w];
            // SAFETY: as in `store_steps`.
            unsafe {
                match w {
                    8 => d.copy_from_slice(
                        &AtomicU64::from_ptr(p.cast())
                            .load(Ordering::Relaxed)
                            .to_ne_bytes(),
                    ),
                    4 => d.copy_from_slice(
                        &AtomicU32::from_ptr(p.cast())
                            .load(Ordering::Relaxed)
                            .to_ne_bytes(),
                    ),
                    2 => d.copy_from_slice(
                        &AtomicU16::from_ptr(p.cast())
                            .load(Ordering::Relaxed)
                            .to_ne_bytes(),
                    ),
                    _ => d[0] = AtomicU8::from_ptr(p).load(Ordering::Relaxed),
                }
            }
            i += w;
        }
    }

    /// Copies `src` to the shared bytes at `dst`.
    ///
    /// # Safety
    ///
    /// `dst` must be valid for writes of `src.len()` bytes, and those bytes must be
    /// accessed (by anyone) only atomically while this runs.
    #[inline]
    pub unsafe fn store(dst: *mut u8, src: &[u8]) {
        let n = src.len();
        let head = dst.align_offset(8).min(n);
        let words = (n - head) / 8;
        // SAFETY: the head lies in the caller's range.
        unsafe { store_steps(dst, src, 0, head) };
        let base = dst.wrapping_add(head).cast::<u64>();
        let from = src[head..head + words * 8].as_ptr().cast::<u64>();
        for k in 0..words {
            // SAFETY: word `k` of the body lies in `src` (read unaligned: `src` is private
            // memory of any alignment) and in the caller's range, 8-aligned past the head.
            unsafe {
                let w = from.add(k).read_unaligned();
                AtomicU64::from_ptr(base.add(k)).store(w, Ordering::Relaxed);
            }
        }
        // SAFETY: the tail lies in the caller's range.
        unsafe { store_steps(dst, src, head + words * 8, n) };
    }

    /// Copies the shared bytes at `src` into `dst`.
    ///
    /// # Safety
    ///
    /// `src` must be valid for reads of `dst.len()` bytes, and those bytes must be
    /// accessed (by anyone) only atomically while this runs.
    #[inline]
    pub unsafe fn load(src: *const u8, dst: &mut [u8]) {
        let n = dst.len();
        let src = src.cast_mut();
        let head = src.align_offset(8).min(n);
        let words = (n - head) / 8;
        // SAFETY: the head lies in the caller's range.
        unsafe { load_steps(src, dst, 0, head) };
        let base = src.wrapping_add(head).cast::<u64>();
        let to = dst[head..head + words * 8].as_mut_ptr().cast::<u64>();
        for k in 0..words {
            // SAFETY: word `k` of the body lies in the caller's range, 8-aligned past the
            // head, and in `dst` (written unaligned: private memory of any alignment).
            unsafe {
                let w = AtomicU64::from_ptr(base.add(k)).load(Ordering::Relaxed);
                to.add(k).write_unaligned(w);
            }
        }
        // SAFETY: the tail lies in the caller's range.
        unsafe { load_steps(src, dst, head + words * 8, n) };
    }

    /// Sets `len` shared bytes at `dst` to `byte`.
    ///
    /// # Safety
    ///
    /// As [`store`], for `len` bytes.
    pub unsafe fn fill(dst: *mut u8, len: usize, byte: u8) {
        let chunk = [byte; 256];
        let mut i = 0;
        while i < len {
            let k = (len - i).min(chunk.len());
            // SAFETY: `dst + i .. dst + i + k` is inside the caller's range.
            unsafe { store(dst.wrapping_add(i), &chunk[..k]) };
            i += k;
        }
    }

    /// Reads a `P` of 1, 2, 4 or 8 bytes with one atomic load (the width is chosen at
    /// compile time); `None`, reading nothing, for any other size.
    ///
    /// # Safety
    ///
    /// As [`load`], for `size_of::<P>()` bytes, and `src` aligned to `size_of::<P>()`.
    #[inline(always)]
    pub unsafe fn load_word<P: bytemuck::Pod>(src: *const u8) -> Option<P> {
        use bytemuck::pod_read_unaligned as from;
        let p = src.cast_mut();
        // SAFETY: the caller's contract: in range, only accessed atomically, aligned.
        unsafe {
            Some(match size_of::<P>() {
                8 => from(
                    &AtomicU64::from_ptr(p.cast())
                        .load(Ordering::Relaxed)
                        .to_ne_bytes(),
                ),
                4 => from(
                    &AtomicU32::from_ptr(p.cast())
                        .load(Ordering::Relaxed)
                        .to_ne_bytes(),
                ),
                2 => from(
                    &AtomicU16::from_ptr(p.cast())
                        .load(Ordering::Relaxed)
                        .to_ne_bytes(),
                ),
                1 => from(&[AtomicU8::from_ptr(p).load(Ordering::Relaxed)]),
                _ => return None,
            })
        }
    }

    /// Writes a `P` of 1, 2, 4 or 8 bytes with one atomic store, as [`load_word`]
    /// reads; `false`, writing nothing, for any other size.
    ///
    /// # Safety
    ///
    /// As [`store`], for `size_of::<P>()` bytes, and `dst` aligned to `size_of::<P>()`.
    #[inline(always)]
    pub unsafe fn store_word<P: bytemuck::Pod>(dst: *mut u8, value: P) -> bool {
        use bytemuck::pod_read_unaligned as from;
        let b = bytemuck::bytes_of(&value);
        // SAFETY: the caller's contract: in range, only accessed atomically, aligned.
        unsafe {
            match size_of::<P>() {
                8 => AtomicU64::from_ptr(dst.cast()).store(from(b), Ordering::Relaxed),
                4 => AtomicU32::from_ptr(dst.cast()).store(from(b), Ordering::Relaxed),
                2 => AtomicU16::from_ptr(dst.cast()).store(from(b), Ordering::Relaxed),
                1 => AtomicU8::from_ptr(dst).store(b[0], Ordering::Relaxed),
                _ => return false,
            }
        }
        true
    }

    /// Reads a plain-data value from shared bytes at `src` (any alignment).
    ///
    /// # Safety
    ///
    /// As [`load`], for `size_of::<P>()` bytes.
    #[inline]
    pub unsafe fn load_pod<P: bytemuck::Pod>(src: *const u8) -> P {
        if (src as usize).is_multiple_of(size_of::<P>()) {
            // One aligned atomic load: the common case, a `Value`'s element, without
            // `load`'s head/body/tail split.
            // SAFETY: the caller's contract, and aligned (checked).
            if let Some(v) = unsafe { load_word(src) } {
                return v;
            }
        }
        let mut v = P::zeroed();
        // SAFETY: the caller's contract; `v` is private memory of the right size.
        unsafe { load(src, bytemuck::bytes_of_mut(&mut v)) };
        v
    }

    /// Writes a plain-data value to shared bytes at `dst` (any alignment).
    ///
    /// # Safety
    ///
    /// As [`store`], for `size_of::<P>()` bytes.
    #[inline]
    pub unsafe fn store_pod<P: bytemuck::Pod>(dst: *mut u8, value: P) {
        // SAFETY: the caller's contract, and aligned (checked) for the one-store path.
        if (dst as usize).is_multiple_of(size_of::<P>()) && unsafe { store_word(dst, value) } {
            return;
        }
        // SAFETY: the caller's contract.
        unsafe { store(dst, bytemuck::bytes_of(&value)) };
    }
}

/// An access outside a region's bounds (or misaligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBounds;

impl std::fmt::Display for OutOfBounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("access outside the region's bounds")
    }
}

impl std::error::Error for OutOfBounds {}

impl Transfer for Region {
    const KIND: &'static str = "mproc_core::Region";

    /// Writes the length, the exporter's pid namespace and the fd.
    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        out.put_u64(self.len as u64);
        out.put_u64(crate::pid::namespace());
        out.put_fd(self.fd.as_fd())
    }

    /// Refuses a region sent from another pid namespace
    /// ([`TransferError::ForeignPidNamespace`]): the locks and queues built on regions
    /// record holders by pid, and a pid means nothing across namespaces.
    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        let len =
            usize::try_from(input.get_u64()?).map_err(|_| TransferError::Malformed("length"))?;
        let ns = input.get_u64()?;
        let fd = input.take_fd()?;
        if ns != crate::pid::namespace() {
            return Err(TransferError::ForeignPidNamespace);
        }
        let actual = fstat(&fd).map_err(io::Error::from)?.st_size;
        if actual < 0 || (actual as u64) < len as u64 || len == 0 {
            return Err(TransferError::Malformed("region smaller than announced"));
        }
        Ok(Region::map(fd, len)?)
    }
}

crate::impl_handle_archive!(Region);

impl Transfer for OwnedFd {
    const KIND: &'static str = "std::os::fd::OwnedFd";

    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        out.put_fd(self.as_fd())
    }

    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        input.take_fd()
    }
}

// `OwnedFd` is foreign to this crate, so inside an rkyv message it travels wrapped in
// [`Handle`](crate::Handle): `Handle(fd)`.

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_copies_move_every_byte_at_every_alignment() {
        let r = Region::new(4096).unwrap();
        for off in 0..17 {
            for len in 0..70 {
                let src: Vec<u8> = (0..len)
                    .map(|i| (i as u8).wrapping_mul(31) ^ off as u8)
                    .collect();
                r.write_bytes(0, &[0xAA; 128]).unwrap();
                r.write_bytes(off, &src).unwrap();
                let mut back = vec![0u8; 128];
                r.read_bytes(0, &mut back).unwrap();
                assert!(
                    back[..off].iter().all(|&b| b == 0xAA),
                    "before, off {off} len {len}"
                );
                assert_eq!(&back[off..off + len], &src[..], "off {off} len {len}");
                assert!(
                    back[off + len..].iter().all(|&b| b == 0xAA),
                    "after, off {off} len {len}"
                );
                let mut part = vec![0u8; len];
                r.read_bytes(off, &mut part).unwrap();
                assert_eq!(part, src);
            }
        }
        assert_eq!(r.write_bytes(4090, &[0; 7]), Err(OutOfBounds));
    }
}

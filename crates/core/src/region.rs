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

    /// Copies `src` into the region at `offset`. Concurrent writers of the same bytes
    /// produce a mix of both, never undefined behaviour on this side.
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> Result<(), OutOfBounds> {
        let p = self.check(offset, src.len(), 1).ok_or(OutOfBounds)?;
        // SAFETY: the destination is in bounds of a live mapping; `src` is a separate
        // allocation (a Rust slice cannot alias a mapping we never hand out as a slice).
        // Volatile-free copy is acceptable: the bytes are plain data.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        Ok(())
    }

    /// Copies bytes out of the region at `offset` into `dst`.
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
        let p = self.check(offset, dst.len(), 1).ok_or(OutOfBounds)?;
        // SAFETY: the source is in bounds of a live mapping; `dst` is a separate allocation.
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) };
        Ok(())
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

    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        out.put_u64(self.len as u64);
        out.put_fd(self.fd.as_fd())
    }

    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        let len =
            usize::try_from(input.get_u64()?).map_err(|_| TransferError::Malformed("length"))?;
        let fd = input.take_fd()?;
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

//! [`Mutex<T>`]: plain data in shared memory, reached only under a process-shared lock.
use crate::error::{CreateError, LockResult, OwnerDied, TryLockError, TryLockResult};
use crate::raw::{Acquired, RawLock, RawMutex};
use crate::sys::{MutexGuard, PodSlot, Shared};
use bytemuck::Pod;
use mproc_core::transfer::{Exporter, Importer, TransferError};
use mproc_core::{Deadline, OutOfBounds, Region, Transfer};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A value of plain-data type `T` in shared memory, behind a process-shared lock: the
/// cross-process `std::sync::Mutex`.
///
/// `T: bytemuck::Pod` (valid for any bytes, no pointers) is what may live in memory
/// another process writes. A holder that dies is detected by the next `lock`, which
/// returns [`OwnerDied`] carrying the guard: the value may be half-updated, repair it.
///
/// ```
/// use mproc_sync::Mutex;
/// let counter = Mutex::new(0u64).unwrap();
/// let c2 = counter.clone(); // same shared value (also when sent to a child process)
/// *c2.lock().unwrap() += 1;
/// *counter.lock().unwrap() += 1;
/// assert_eq!(*counter.lock().unwrap(), 2);
/// ```
pub struct Mutex<T: Pod> {
    raw: Shared<RawMutex>,
    slot: PodSlot<T>,
}

/// Where the value goes after a lock at `offset`.
fn value_offset<T>(offset: usize) -> Option<usize> {
    offset
        .checked_add(size_of::<RawMutex>())?
        .checked_next_multiple_of(align_of::<T>())
}

impl<T: Pod> Mutex<T> {
    /// A mutex holding `value`, in a shared region of its own.
    ///
    /// # Errors
    /// The region could not be allocated.
    pub fn new(value: T) -> Result<Self, CreateError> {
        let len = value_offset::<T>(0)
            .and_then(|o| o.checked_add(size_of::<T>()))
            .ok_or(CreateError::InvalidArgument("value too large"))?;
        let region = Arc::new(Region::named_memfd("Mutex", len.max(8))?);
        let (raw, slot) = Self::parts(region, 0)
            .ok_or(CreateError::InvalidArgument("value too large to align"))?;
        let m = Mutex { raw, slot };
        *m.lock()
            .map_err(|_| CreateError::InvalidArgument("fresh mutex held"))? = value;
        Ok(m)
    }

    fn parts(region: Arc<Region>, offset: usize) -> Option<(Shared<RawMutex>, PodSlot<T>)> {
        let slot = PodSlot::at(&region, value_offset::<T>(offset)?)?;
        let raw = Shared::at(region, offset)?;
        Some((raw, slot))
    }

    /// A mutex at `offset` of `region`: the lock ([`RawMutex`], 4 bytes) then the value,
    /// aligned for `T`. Zeroed memory is an unlocked mutex holding an all-zero `T`.
    ///
    /// # Errors
    /// The lock or the value would lie outside the region, or misaligned.
    ///
    /// # Safety
    ///
    /// The lock and value bytes must be accessed only through `Mutex<T>` handles at
    /// this same offset — never written through the region directly, through another
    /// primitive, or with a different `T` — for as long as any such handle lives, in
    /// every process.
    #[allow(unsafe_code)]
    pub unsafe fn in_region(region: Arc<Region>, offset: usize) -> Result<Self, OutOfBounds> {
        let (raw, slot) = Self::parts(region, offset).ok_or(OutOfBounds)?;
        Ok(Mutex { raw, slot })
    }

    /// Bytes a `Mutex<T>` occupies from an 8-aligned offset of a region.
    pub fn region_size() -> usize {
        value_offset::<T>(0).unwrap_or(0) + size_of::<T>()
    }

    #[inline]
    fn guard(&self, a: Acquired) -> LockResult<MutexGuard<'_, T>> {
        let g = MutexGuard::new(self.raw.get(), &self.slot);
        match a {
            Acquired::Clean => Ok(g),
            Acquired::OwnerDied { pid } => Err(OwnerDied::new(g, pid)),
        }
    }

    fn try_guard(&self, a: Option<Acquired>) -> TryLockResult<MutexGuard<'_, T>> {
        match a {
            None => Err(TryLockError::WouldBlock),
            Some(a) => self.guard(a).map_err(TryLockError::OwnerDied),
        }
    }

    /// Locks, blocking as long as it takes.
    ///
    /// # Errors
    /// [`OwnerDied`] carrying the guard: the previous holder died holding the lock.
    #[inline]
    pub fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
        self.guard(self.raw.get().lock())
    }

    /// Locks if that needs no waiting.
    ///
    /// # Errors
    /// `WouldBlock` if held; `OwnerDied` (with the guard) if taken from a dead holder.
    pub fn try_lock(&self) -> TryLockResult<MutexGuard<'_, T>> {
        self.try_guard(self.raw.get().try_lock())
    }

    /// Locks, waiting at most `timeout`.
    ///
    /// # Errors
    /// `WouldBlock` on timeout; `OwnerDied` (with the guard) if taken from a dead holder.
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<MutexGuard<'_, T>> {
        self.try_guard(self.raw.get().lock_until(Deadline::after(timeout)))
    }

    /// Whether the mutex is locked by anyone.
    pub fn is_locked(&self) -> bool {
        self.raw.get().is_locked()
    }
}

impl<T: Pod> Clone for Mutex<T> {
    /// Another handle on the same shared value.
    fn clone(&self) -> Self {
        Mutex {
            raw: self.raw.clone(),
            slot: self.slot.clone(),
        }
    }
}

impl<T: Pod> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex")
            .field("type", &std::any::type_name::<T>())
            .field("locked", &self.is_locked())
            .finish()
    }
}

impl<T: Pod> Transfer for Mutex<T> {
    const KIND: &'static str = "mproc_sync::Mutex";
    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        self.raw.export(out)?;
        out.put_u64(size_of::<T>() as u64);
        out.put_u64(align_of::<T>() as u64);
        Ok(())
    }
    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        let raw: Shared<RawMutex> = Shared::import(input)?;
        let (size, align) = (input.get_u64()?, input.get_u64()?);
        if size != size_of::<T>() as u64 || align != align_of::<T>() as u64 {
            return Err(TransferError::Malformed("Mutex<T> sent with another T"));
        }
        let (raw, slot) = Self::parts(raw.region().clone(), raw.offset())
            .ok_or(TransferError::Malformed("Mutex value outside its region"))?;
        Ok(Mutex { raw, slot })
    }
}

mproc_core::impl_handle_archive!([T: Pod,] Mutex<T>);

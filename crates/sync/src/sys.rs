//! Every `unsafe` block of the crate lives here.
//!
//! # Safety
//!
//! The invariant the rest of the crate relies on: a [`SharedState`] is made of atomics
//! only, so every bit pattern is a valid value and every access — from this process or
//! any other that maps the same memory — goes through an atomic operation. A reference
//! to one is therefore sound for as long as the memory stays mapped, whatever other
//! processes write into it. [`Shared`] keeps the mapping alive by holding the region.
use mproc_core::Region;
use mproc_core::transfer::{Exporter, Importer, TransferError};
use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;

/// A state struct that may live in memory shared between processes.
///
/// Implemented by the raw states of this crate ([`RawMutex`](crate::RawMutex),
/// [`RawRLock`](crate::RawRLock) …); their in-place form is
/// [`SharedState::in_region`] (safe, on a [`Region`]) or [`SharedState::from_ptr`]
/// (`unsafe`, on any memory).
///
/// # Safety
///
/// An implementor must be `#[repr(C)]` (or `#[repr(transparent)]`) and consist only of
/// `AtomicU32`/`AtomicU64` fields (directly or through other `SharedState` types):
/// valid for every bit pattern, all-zero included; no pointers, no file descriptors,
/// no `Drop`; alignment at most 8.
pub unsafe trait SharedState: Sync + Send + Sized {
    /// The state at byte `offset` of `region` (in bounds and aligned, else `OutOfBounds`).
    ///
    /// Memory that was never initialised by this crate is still a valid state (all-zero
    /// is the initial state of every lock and event); see each type for what its zero
    /// state means.
    fn in_region(region: &Region, offset: usize) -> Result<&Self, mproc_core::OutOfBounds> {
        let p = checked_ptr::<Self>(region, offset).ok_or(mproc_core::OutOfBounds)?;
        // SAFETY: `p` is in bounds, aligned and lives as long as `region` is borrowed;
        // `Self: SharedState` is valid for any bytes and only accessed atomically.
        Ok(unsafe { p.as_ref() })
    }

    /// The state at `ptr`, for memory the caller manages itself.
    ///
    /// # Safety
    ///
    /// `ptr` must be non-null, aligned to `align_of::<Self>()`, and valid for reads and
    /// writes of `size_of::<Self>()` bytes for all of `'a`. The memory must be shared
    /// (`MAP_SHARED`) if other processes are to use the state, and must only ever be
    /// accessed atomically (through this crate) while `'a` lasts — no plain reads or
    /// writes from any process.
    unsafe fn from_ptr<'a>(ptr: *const u8) -> &'a Self {
        // SAFETY: guaranteed by the caller (see `# Safety`).
        unsafe { &*ptr.cast::<Self>() }
    }
}

/// A pointer to `T` at `offset` of `region`, if in bounds and aligned.
pub(crate) fn checked_ptr<T>(region: &Region, offset: usize) -> Option<NonNull<T>> {
    let end = offset.checked_add(size_of::<T>())?;
    if end > region.len() || !offset.is_multiple_of(align_of::<T>()) {
        return None;
    }
    NonNull::new(region.as_ptr().wrapping_add(offset).cast::<T>())
}

/// A state of type `S` at an offset of a shared region, kept alive by holding the region.
/// Clones share the same mapping.
pub(crate) struct Shared<S> {
    region: Arc<Region>,
    offset: usize,
    ptr: NonNull<S>,
}

// SAFETY: `S: SharedState` is made of atomics only (Sync), and the pointer stays valid
// while `region` is held: sending or sharing the handle shares only atomics.
unsafe impl<S: SharedState> Send for Shared<S> {}
// SAFETY: as above.
unsafe impl<S: SharedState> Sync for Shared<S> {}

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Shared {
            region: self.region.clone(),
            offset: self.offset,
            ptr: self.ptr,
        }
    }
}

impl<S> std::fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("region_len", &self.region.len())
            .field("offset", &self.offset)
            .finish()
    }
}

impl<S: SharedState> Shared<S> {
    /// A fresh region of its own holding one zeroed `S`.
    pub(crate) fn alloc(debug_name: &str) -> std::io::Result<Self> {
        let region = Region::named_memfd(debug_name, size_of::<S>().max(8))?;
        Self::at(Arc::new(region), 0).ok_or_else(|| std::io::Error::other("region too small"))
    }

    /// The `S` at `offset` of `region`, if in bounds and aligned.
    pub(crate) fn at(region: Arc<Region>, offset: usize) -> Option<Self> {
        let ptr = checked_ptr::<S>(&region, offset)?;
        Some(Shared {
            region,
            offset,
            ptr,
        })
    }

    /// The state.
    #[inline(always)]
    pub(crate) fn get(&self) -> &S {
        // SAFETY: `ptr` was checked in bounds and aligned at construction; `region` keeps
        // the mapping alive for as long as `self`; `S` is only accessed atomically.
        unsafe { self.ptr.as_ref() }
    }

    pub(crate) fn region(&self) -> &Arc<Region> {
        &self.region
    }

    pub(crate) fn offset(&self) -> usize {
        self.offset
    }

    /// Writes the region and the offset.
    pub(crate) fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        mproc_core::Transfer::export(&*self.region, out)?;
        out.put_u64(self.offset as u64);
        Ok(())
    }

    /// Reads what [`Shared::export`] wrote, checking bounds and alignment.
    pub(crate) fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        let region = <Region as mproc_core::Transfer>::import(input)?;
        let offset = usize::try_from(input.get_u64()?)
            .map_err(|_| TransferError::Malformed("state offset"))?;
        Self::at(Arc::new(region), offset)
            .ok_or(TransferError::Malformed("state outside its region"))
    }
}

/// A plain-data `T` at an offset of a shared region, reached only under a lock.
pub(crate) struct PodSlot<T> {
    ptr: NonNull<T>,
    _t: PhantomData<T>,
}

// SAFETY: the slot is only dereferenced by `MutexGuard`, i.e. while the process-shared
// lock is held; `T: Pod` has no pointers or thread-affine state.
unsafe impl<T: bytemuck::Pod> Send for PodSlot<T> {}
// SAFETY: as above.
unsafe impl<T: bytemuck::Pod> Sync for PodSlot<T> {}

impl<T: bytemuck::Pod> PodSlot<T> {
    pub(crate) fn at(region: &Region, offset: usize) -> Option<Self> {
        checked_ptr::<T>(region, offset).map(|ptr| PodSlot {
            ptr,
            _t: PhantomData,
        })
    }

    /// The value, shared.
    ///
    /// # Safety
    ///
    /// The lock guarding the slot must be held by the caller for all of `'a`, the
    /// region must stay mapped for `'a`, and every process must reach the slot only
    /// under that lock.
    pub(crate) unsafe fn get<'a>(&self) -> &'a T {
        // SAFETY: exclusive access by the caller's contract; any bytes are a valid `T`.
        unsafe { self.ptr.as_ref() }
    }

    /// The value, exclusively.
    ///
    /// # Safety
    ///
    /// As [`PodSlot::get`], and no other reference to the slot exists for `'a`.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get_mut<'a>(&self) -> &'a mut T {
        // SAFETY: exclusive access by the caller's contract; any bytes are a valid `T`.
        unsafe { &mut *self.ptr.as_ptr() }
    }
}

impl<T> Clone for PodSlot<T> {
    fn clone(&self) -> Self {
        PodSlot {
            ptr: self.ptr,
            _t: PhantomData,
        }
    }
}

// ---------------------------------------------------------------------------------
// The calling process's id (mproc-core's fork-safe cache) and thread id, cached.

/// The calling process's owner tag (its pid; see `mproc_core::pid::owner_tag`).
#[inline(always)]
pub(crate) fn current_pid() -> u32 {
    mproc_core::pid::owner_tag()
}

thread_local! {
    /// (pid when cached, tid). A fork child's thread inherits this copy, so the pid
    /// is compared with the (fork-safe) current pid before the tid is trusted.
    static TID: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

/// The calling thread's (kernel) thread id.
#[inline]
pub(crate) fn current_tid() -> u32 {
    let pid = current_pid();
    TID.with(|c| {
        let (p, t) = c.get();
        if p == pid && t != 0 {
            return t;
        }
        let t = rustix::thread::gettid().as_raw_pid() as u32;
        c.set((pid, t));
        t
    })
}

// ---------------------------------------------------------------------------------
// A Barrier's action: a plain `fn()` carried into another process as an offset from
// mproc-core's code anchor, sealed with the process family's secret
// (`mproc_core::code::seal`), so that only processes of the same tree (same build) can
// turn it back into a function.

/// The fingerprint of an action's type.
fn action_sig() -> mproc_core::code::FnSig {
    mproc_core::code::FnSig::of::<fn(), (), ()>()
}

/// `f`, sealed for travel.
pub(crate) fn seal_action(f: fn()) -> mproc_core::code::SealedFn {
    mproc_core::code::seal(f as usize, action_sig())
}

/// The `fn()` a sealed action names, if this process's family sealed it (same build,
/// not a foreign peer), it is a `fn()`, and it lies in this program's code.
pub(crate) fn action_from_sealed(
    s: &mproc_core::code::SealedFn,
) -> Result<fn(), mproc_core::code::CodeError> {
    let addr = mproc_core::code::unseal(s, action_sig())?;
    // SAFETY: the seal (a MAC under the family secret, over the build identity, the
    // offset and the fingerprint) proves that a process of this family, running this
    // build, computed `offset` from a `fn()` with `seal_action`; the image keeps its
    // internal layout under ASLR, and `addr` lies in this program's code: `addr` is
    // that function.
    Ok(unsafe { std::mem::transmute::<usize, fn()>(addr) })
}

// ---------------------------------------------------------------------------------
// Guards: the only places that call `RawLock::unlock` and dereference a `PodSlot`.

/// A scoped acquisition of a lock: released when dropped.
///
/// Generic over the raw lock (as `lock_api`'s guards are); returned by
/// [`Lock::lock`](crate::Lock::lock), [`RLock::lock`](crate::RLock::lock) and
/// [`Condition::lock`](crate::Condition::lock).
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a, R: crate::RawLock + ?Sized> {
    raw: &'a R,
    // Not Send: an RLock is owned by a thread; keep every guard on its thread.
    _not_send: PhantomData<*const ()>,
}

impl<'a, R: crate::RawLock + ?Sized> LockGuard<'a, R> {
    /// A guard for a lock the caller has just acquired.
    #[inline]
    pub(crate) fn new(raw: &'a R) -> Self {
        LockGuard {
            raw,
            _not_send: PhantomData,
        }
    }
}

impl<R: crate::RawLock + ?Sized> Drop for LockGuard<'_, R> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: a guard exists only while its acquisition is held (it is created right
        // after a successful lock and never cloned), so the lock is held here.
        unsafe {
            if std::thread::panicking() {
                self.raw.unlock_poisoned()
            } else {
                self.raw.unlock()
            }
        }
    }
}

impl<R: crate::RawLock + ?Sized> std::fmt::Debug for LockGuard<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockGuard { .. }")
    }
}

/// Exclusive access to the value of a [`Mutex`](crate::Mutex); unlocks when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct MutexGuard<'a, T: bytemuck::Pod> {
    raw: &'a crate::RawMutex,
    slot: &'a PodSlot<T>,
    _not_send: PhantomData<*const ()>,
}

impl<'a, T: bytemuck::Pod> MutexGuard<'a, T> {
    /// A guard for a mutex the caller has just locked.
    #[inline]
    pub(crate) fn new(raw: &'a crate::RawMutex, slot: &'a PodSlot<T>) -> Self {
        MutexGuard {
            raw,
            slot,
            _not_send: PhantomData,
        }
    }
}

impl<T: bytemuck::Pod> std::ops::Deref for MutexGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the non-recursive lock for its whole life and borrows
        // the mutex (which holds the region); every process reaches the slot only under
        // that lock; `&self` ties the reference to the guard.
        unsafe { self.slot.get() }
    }
}

impl<T: bytemuck::Pod> std::ops::DerefMut for MutexGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { self.slot.get_mut() }
    }
}

impl<T: bytemuck::Pod> Drop for MutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the guard holds the lock (created right after a successful lock).
        unsafe {
            if std::thread::panicking() {
                crate::RawLock::unlock_poisoned(self.raw)
            } else {
                crate::RawLock::unlock(self.raw)
            }
        }
    }
}

impl<T: bytemuck::Pod + std::fmt::Debug> std::fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MutexGuard").field(&**self).finish()
    }
}

/// Releases a raw lock completely for a condition wait and takes it back afterwards.
pub(crate) fn release_save<R: crate::RawLock + ?Sized>(raw: &R) -> Option<u32> {
    if !raw.is_owned_by_current() {
        return None;
    }
    // SAFETY: the calling thread (process, for a plain lock) holds the lock: checked
    // just above, and nothing else releases it between the check and here.
    Some(unsafe { raw.release_save() })
}

//! `Value` and `Array`: typed shared memory guarded by a process-shared lock (Python's
//! `multiprocessing.Value` / `Array`, which are locked by default).
use crate::element::Element;
use crate::error::{AllocError, IndexError};
use crate::raw::{RawArray, RawValue};
use mproc_core::transfer::{Exporter, Importer, Transfer, TransferError};
use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};

/// A lock that can guard a [`Value`] or an [`Array`]: process-shared, and able to
/// cross into other processes ([`Transfer`]).
///
/// The lock is pluggable: any process-shared lock can guard a value, as Python's
/// `Value('d', 0.0, lock=RLock())` allows ([`Value::with_lock`]). The default is
/// [`mproc_sync::Lock`]; [`mproc_sync::RLock`] works too.
pub trait ShmLock: Transfer {
    /// Held while the lock is taken; releases it when dropped.
    type Guard<'a>
    where
        Self: 'a;

    /// A new, unlocked lock.
    fn create() -> io::Result<Self>;

    /// Takes the lock, waiting as long as needed.
    fn acquire(&self) -> Acquisition<Self::Guard<'_>>;
}

/// How [`ShmLock::acquire`] got the lock.
#[derive(Debug)]
pub enum Acquisition<G> {
    /// From a holder that released it.
    Clean(G),
    /// From a holder that died while holding it: what it guarded may be half-updated.
    HolderDied {
        /// The lock, held now.
        guard: G,
        /// The pid of the holder that died.
        pid: u32,
    },
}

/// The previous holder of a value's lock died (or panicked) while holding it, so the
/// value (or some elements of an array) may be half-updated.
///
/// From [`Value::lock`] / [`Array::lock`] it carries the guard (`G`), as std's
/// `PoisonError` does: the caller holds the lock and can repair the data through
/// [`HolderDied::into_inner`]. From the one-shot calls (`get`, `set`, …) it carries
/// nothing (`G = ()`): the lock has been released again; check the data, then lock again
/// (the next acquisition is clean).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HolderDied<G = ()> {
    /// The pid of the process that died holding the lock.
    pub pid: u32,
    guard: G,
}

impl<G> HolderDied<G> {
    /// The guard of the acquisition that took the lock over.
    pub fn into_inner(self) -> G {
        self.guard
    }

    /// A reference to the guard.
    pub fn get_ref(&self) -> &G {
        &self.guard
    }

    /// A mutable reference to the guard.
    pub fn get_mut(&mut self) -> &mut G {
        &mut self.guard
    }

    /// The report without the guard (dropping it releases the lock).
    pub fn without_guard(self) -> HolderDied {
        HolderDied {
            pid: self.pid,
            guard: (),
        }
    }
}

impl<G> fmt::Debug for HolderDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HolderDied")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl<G> fmt::Display for HolderDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "process {} died while holding the lock; the data may be half-updated",
            self.pid
        )
    }
}

impl<G> std::error::Error for HolderDied<G> {}

/// The guard, or the report carrying it.
fn take<G>(a: Acquisition<G>) -> Result<G, HolderDied<G>> {
    match a {
        Acquisition::Clean(g) => Ok(g),
        Acquisition::HolderDied { guard, pid } => Err(HolderDied { pid, guard }),
    }
}

/// The guard, or the report without it (the lock released again).
fn take_once<G>(a: Acquisition<G>) -> Result<G, HolderDied> {
    take(a).map_err(HolderDied::without_guard)
}

fn sync_create<T, E: std::error::Error + Send + Sync + 'static>(r: Result<T, E>) -> io::Result<T> {
    r.map_err(io::Error::other)
}

impl ShmLock for mproc_sync::Lock {
    type Guard<'a> = mproc_sync::LockGuard<'a, mproc_sync::RawMutex>;

    fn create() -> io::Result<Self> {
        sync_create(mproc_sync::Lock::new())
    }

    #[inline(always)]
    fn acquire(&self) -> Acquisition<Self::Guard<'_>> {
        match self.lock() {
            Ok(g) => Acquisition::Clean(g),
            Err(e) => {
                let pid = e.pid();
                Acquisition::HolderDied {
                    guard: e.into_inner(),
                    pid,
                }
            }
        }
    }
}

impl ShmLock for mproc_sync::RLock {
    type Guard<'a> = mproc_sync::LockGuard<'a, mproc_sync::RawRLock>;

    fn create() -> io::Result<Self> {
        sync_create(mproc_sync::RLock::new())
    }

    #[inline(always)]
    fn acquire(&self) -> Acquisition<Self::Guard<'_>> {
        match self.lock() {
            Ok(g) => Acquisition::Clean(g),
            Err(e) => {
                let pid = e.pid();
                Acquisition::HolderDied {
                    guard: e.into_inner(),
                    pid,
                }
            }
        }
    }
}

/// One `T` in shared memory with a lock (Python's `Value`).
///
/// `lock()` returns a guard that reads the value once, lets you change it through
/// `*guard`, and writes it back before the lock is released, so read-modify-write is
/// atomic with respect to every process that also uses the lock:
/// `*v.lock().unwrap() += 1.0` (the error carries the guard, as std's `PoisonError`
/// does, so it borrows the value: `unwrap`, or recover with `into_inner`). [`get`](Self::get) and [`set`](Self::set) take the lock for
/// one access (as Python's `.value` does). [`raw`](Self::raw) reaches the value without
/// the lock (Python's `get_obj()`).
///
/// Crosses into child processes as an argument or inside a message ([`Transfer`]),
/// with its lock; `clone()` gives another handle on the same value in this process.
///
/// ```
/// use mproc_shm::Value;
/// let v: Value<f64> = Value::new(0.0)?;
/// *v.lock().unwrap() += 1.5;       // with v.get_lock(): v.value += 1.5
/// {
///     let mut g = v.lock().unwrap(); // several steps under one acquisition
///     *g = *g * 2.0;
/// }
/// assert_eq!(v.get()?, 3.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Value<T: Element, L: ShmLock = mproc_sync::Lock> {
    raw: RawValue<T>,
    lock: L,
}

impl<T: Element + fmt::Debug, L: ShmLock> fmt::Debug for Value<T, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Unlocked read: Debug must not block.
        f.debug_tuple("Value").field(&self.raw.get()).finish()
    }
}

impl<T: Element, L: ShmLock> Value<T, L> {
    /// A new value with a new lock of its own.
    ///
    /// # Errors
    /// [`AllocError::Io`] if the memory or the lock cannot be created.
    pub fn new(value: T) -> Result<Self, AllocError> {
        Ok(Value {
            raw: RawValue::new(value)?,
            lock: L::create()?,
        })
    }

    /// A new value guarded by `lock` (which may guard other values too, as in Python's
    /// `Value('i', 0, lock=shared_lock)`).
    ///
    /// # Errors
    /// [`AllocError::Io`] if the memory cannot be created.
    pub fn with_lock(value: T, lock: L) -> Result<Self, AllocError> {
        Ok(Value {
            raw: RawValue::new(value)?,
            lock,
        })
    }

    /// `raw` behind a new lock of its own (Python's
    /// `multiprocessing.sharedctypes.synchronized(obj)`): every handle made from this
    /// value shares the lock; handles of `raw` itself still reach the memory unlocked.
    ///
    /// ```
    /// use mproc_shm::{RawValue, Value};
    /// let raw = RawValue::new(1u64)?;
    /// let v: Value<u64> = Value::from_raw(raw.clone())?;
    /// *v.lock().unwrap() += 1;
    /// assert_eq!(raw.get(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`AllocError::Io`] if the lock cannot be created.
    #[doc(alias = "synchronized")]
    pub fn from_raw(raw: RawValue<T>) -> Result<Self, AllocError> {
        Ok(Value {
            raw,
            lock: L::create()?,
        })
    }

    /// `raw` guarded by `lock` (Python's `synchronized(obj, lock)`).
    pub fn from_raw_with_lock(raw: RawValue<T>, lock: L) -> Self {
        Value { raw, lock }
    }

    /// Takes the lock and returns a guard through which the value can be read and
    /// changed; the change is written back when the guard drops, before the lock is
    /// released.
    ///
    /// # Errors
    /// [`HolderDied`] carrying the guard: the previous holder died or panicked holding
    /// the lock; the value may be half-updated. The caller holds the lock: repair the
    /// value through [`HolderDied::into_inner`].
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    pub fn lock(&self) -> Result<ValueGuard<'_, T, L>, HolderDied<ValueGuard<'_, T, L>>> {
        match self.lock.acquire() {
            Acquisition::Clean(held) => Ok(ValueGuard {
                local: self.raw.get(),
                dirty: false,
                value: &self.raw,
                _held: held,
            }),
            Acquisition::HolderDied { guard, pid } => Err(self.died(guard, pid)),
        }
    }

    /// The report of a lock taken from a dead holder, with its guard.
    #[cold]
    #[allow(clippy::type_complexity)]
    fn died<'a>(&'a self, held: L::Guard<'a>, pid: u32) -> HolderDied<ValueGuard<'a, T, L>> {
        HolderDied {
            pid,
            guard: ValueGuard {
                local: self.raw.get(),
                dirty: false,
                value: &self.raw,
                _held: held,
            },
        }
    }

    /// Reads the value under the lock.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn get(&self) -> Result<T, HolderDied> {
        let _held = take_once(self.lock.acquire())?;
        Ok(self.raw.get())
    }

    /// Stores `value` under the lock.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn set(&self, value: T) -> Result<(), HolderDied> {
        let _held = take_once(self.lock.acquire())?;
        self.raw.set(value);
        Ok(())
    }

    /// The lock (Python's `get_lock()`): hold it to make several steps atomic.
    pub fn get_lock(&self) -> &L {
        &self.lock
    }

    /// The value without its lock (Python's `get_obj()`): each access is a single copy,
    /// but a read-modify-write through it is not atomic.
    pub fn raw(&self) -> &RawValue<T> {
        &self.raw
    }
}

/// Another handle on the same value and lock (cheap: nothing is copied).
impl<T: Element, L: ShmLock + Clone> Clone for Value<T, L> {
    fn clone(&self) -> Self {
        Value {
            raw: self.raw.clone(),
            lock: self.lock.clone(),
        }
    }
}

impl<T: Element, L: ShmLock> Transfer for Value<T, L> {
    const KIND: &'static str = "mproc_shm::Value";

    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        self.raw.export(out)?;
        self.lock.export(out)
    }

    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        let raw = RawValue::import(input)?;
        let lock = L::import(input)?;
        Ok(Value { raw, lock })
    }
}

mproc_core::impl_handle_archive!([T: Element, L: ShmLock,] Value<T, L>);

/// The lock of a [`Value`], held, with a private copy of the value. Read and change it
/// through `*guard`; the copy is written back (if changed) when the guard drops, then
/// the lock is released.
pub struct ValueGuard<'a, T: Element, L: ShmLock + 'a = mproc_sync::Lock> {
    local: T,
    dirty: bool,
    value: &'a RawValue<T>,
    _held: L::Guard<'a>,
}

impl<T: Element + fmt::Debug, L: ShmLock> fmt::Debug for ValueGuard<'_, T, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueGuard").field(&self.local).finish()
    }
}

impl<T: Element, L: ShmLock> Deref for ValueGuard<'_, T, L> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.local
    }
}

impl<T: Element, L: ShmLock> DerefMut for ValueGuard<'_, T, L> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        self.dirty = true;
        &mut self.local
    }
}

impl<T: Element, L: ShmLock> Drop for ValueGuard<'_, T, L> {
    #[inline(always)]
    fn drop(&mut self) {
        if self.dirty {
            self.value.set(self.local);
        }
        // `_held` drops after this, releasing the lock.
    }
}

/// A fixed-length array of `T` in shared memory with a lock (Python's `Array`).
///
/// [`lock`](Self::lock) returns a guard for several steps under one acquisition
/// (sum, update, copy in or out); [`get`](Self::get), [`set`](Self::set),
/// [`to_vec`](Self::to_vec) take the lock for one call each. [`raw`](Self::raw) reaches
/// the elements without the lock.
///
/// ```
/// use mproc_shm::Array;
/// let a: Array<i32> = Array::from_slice(&[1, 2, 3])?;
/// {
///     let g = a.lock().unwrap();
///     g.update(0, |x| x + 10)?;
///     g.map_in_place(|x| -x);
/// }
/// assert_eq!(a.to_vec()?, [-11, -2, -3]);
/// assert!(a.get(3).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Array<T: Element, L: ShmLock = mproc_sync::Lock> {
    raw: RawArray<T>,
    lock: L,
}

impl<T: Element + fmt::Debug, L: ShmLock> fmt::Debug for Array<T, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Array").field(&self.raw).finish()
    }
}

/// Why a locked array access failed: the lock, or the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayError {
    /// The lock's previous holder died holding it (see [`HolderDied`]).
    HolderDied(HolderDied),
    /// The index (or range) is past the end.
    Index(IndexError),
}

impl fmt::Display for ArrayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArrayError::HolderDied(e) => e.fmt(f),
            ArrayError::Index(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ArrayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ArrayError::HolderDied(e) => Some(e),
            ArrayError::Index(e) => Some(e),
        }
    }
}

impl From<IndexError> for ArrayError {
    fn from(e: IndexError) -> Self {
        ArrayError::Index(e)
    }
}

impl<G> From<HolderDied<G>> for ArrayError {
    /// Drops the guard a report may carry (releasing the lock).
    fn from(e: HolderDied<G>) -> Self {
        ArrayError::HolderDied(e.without_guard())
    }
}

impl<T: Element, L: ShmLock> Array<T, L> {
    /// `len` zeroed elements with a new lock (Python's `Array('i', 10)`).
    ///
    /// # Errors
    /// [`AllocError`]: too many elements, or the memory or lock cannot be created.
    pub fn zeroed(len: usize) -> Result<Self, AllocError> {
        Ok(Array {
            raw: RawArray::zeroed(len)?,
            lock: L::create()?,
        })
    }

    /// A copy of `items` with a new lock (Python's `Array('i', range(10))`).
    ///
    /// # Errors
    /// As [`zeroed`](Self::zeroed).
    pub fn from_slice(items: &[T]) -> Result<Self, AllocError> {
        Ok(Array {
            raw: RawArray::from_slice(items)?,
            lock: L::create()?,
        })
    }

    /// A copy of `items` guarded by `lock`.
    ///
    /// # Errors
    /// [`AllocError`] if the memory cannot be created.
    pub fn with_lock(items: &[T], lock: L) -> Result<Self, AllocError> {
        Ok(Array {
            raw: RawArray::from_slice(items)?,
            lock,
        })
    }

    /// `raw` behind a new lock of its own (Python's
    /// `multiprocessing.sharedctypes.synchronized(obj)`), as [`Value::from_raw`].
    ///
    /// # Errors
    /// [`AllocError::Io`] if the lock cannot be created.
    #[doc(alias = "synchronized")]
    pub fn from_raw(raw: RawArray<T>) -> Result<Self, AllocError> {
        Ok(Array {
            raw,
            lock: L::create()?,
        })
    }

    /// `raw` guarded by `lock` (Python's `synchronized(obj, lock)`).
    pub fn from_raw_with_lock(raw: RawArray<T>, lock: L) -> Self {
        Array { raw, lock }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Takes the lock; the guard gives access to every element until it drops.
    ///
    /// # Errors
    /// [`HolderDied`] carrying the guard (see [`Value::lock`]).
    #[inline]
    #[allow(clippy::type_complexity)]
    pub fn lock(&self) -> Result<ArrayGuard<'_, T, L>, HolderDied<ArrayGuard<'_, T, L>>> {
        let guard = |held| ArrayGuard {
            _held: held,
            array: &self.raw,
        };
        match take(self.lock.acquire()) {
            Ok(held) => Ok(guard(held)),
            Err(e) => Err(HolderDied {
                pid: e.pid,
                guard: guard(e.guard),
            }),
        }
    }

    /// Element `index`, read under the lock.
    ///
    /// # Errors
    /// [`ArrayError`]: a holder died holding the lock, or an index past the end.
    pub fn get(&self, index: usize) -> Result<T, ArrayError> {
        let g = self.lock()?;
        Ok(g.get(index)?)
    }

    /// Sets element `index` under the lock.
    ///
    /// # Errors
    /// [`ArrayError`]: a holder died holding the lock, or an index past the end.
    pub fn set(&self, index: usize, value: T) -> Result<(), ArrayError> {
        let g = self.lock()?;
        Ok(g.set(index, value)?)
    }

    /// Copies elements `start..start + dst.len()` into `dst` under the lock.
    ///
    /// # Errors
    /// [`ArrayError`]: a holder died holding the lock, or the range passes the end.
    pub fn read_into(&self, start: usize, dst: &mut [T]) -> Result<(), ArrayError> {
        Ok(self.lock()?.read_into(start, dst)?)
    }

    /// Copies `src` into elements `start..start + src.len()` under the lock.
    ///
    /// # Errors
    /// [`ArrayError`]: a holder died holding the lock, or the range passes the end.
    pub fn write_from(&self, start: usize, src: &[T]) -> Result<(), ArrayError> {
        Ok(self.lock()?.write_from(start, src)?)
    }

    /// A copy of every element, taken under the lock.
    ///
    /// # Errors
    /// [`HolderDied`] (see [`Value::lock`]).
    pub fn to_vec(&self) -> Result<Vec<T>, HolderDied> {
        Ok(self.lock().map_err(HolderDied::without_guard)?.to_vec())
    }

    /// The lock (Python's `get_lock()`).
    pub fn get_lock(&self) -> &L {
        &self.lock
    }

    /// The elements without the lock (Python's `get_obj()`).
    pub fn raw(&self) -> &RawArray<T> {
        &self.raw
    }
}

/// Another handle on the same array and lock (cheap: nothing is copied).
impl<T: Element, L: ShmLock + Clone> Clone for Array<T, L> {
    fn clone(&self) -> Self {
        Array {
            raw: self.raw.clone(),
            lock: self.lock.clone(),
        }
    }
}

impl<T: Element, L: ShmLock> Transfer for Array<T, L> {
    const KIND: &'static str = "mproc_shm::Array";

    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        self.raw.export(out)?;
        self.lock.export(out)
    }

    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        let raw = RawArray::import(input)?;
        let lock = L::import(input)?;
        Ok(Array { raw, lock })
    }
}

mproc_core::impl_handle_archive!([T: Element, L: ShmLock,] Array<T, L>);

/// The lock of an [`Array`], held: element access for as many steps as needed.
/// Every access copies (the elements never become a Rust slice that another process,
/// bypassing the lock through [`Array::raw`], could change under it).
pub struct ArrayGuard<'a, T: Element, L: ShmLock + 'a = mproc_sync::Lock> {
    _held: L::Guard<'a>,
    array: &'a RawArray<T>,
}

impl<T: Element + fmt::Debug, L: ShmLock> fmt::Debug for ArrayGuard<'_, T, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ArrayGuard").field(self.array).finish()
    }
}

impl<'a, T: Element, L: ShmLock> ArrayGuard<'a, T, L> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.array.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.array.is_empty()
    }

    /// A copy of element `index`.
    ///
    /// # Errors
    /// [`IndexError`] past the end.
    #[inline]
    pub fn get(&self, index: usize) -> Result<T, IndexError> {
        self.array.get(index)
    }

    /// Sets element `index`.
    ///
    /// # Errors
    /// [`IndexError`] past the end.
    #[inline]
    pub fn set(&self, index: usize, value: T) -> Result<(), IndexError> {
        self.array.set(index, value)
    }

    /// Replaces element `index` with `f(old)` and returns the new value.
    ///
    /// # Errors
    /// [`IndexError`] past the end.
    pub fn update(&self, index: usize, f: impl FnOnce(T) -> T) -> Result<T, IndexError> {
        let new = f(self.array.get(index)?);
        self.array.set(index, new)?;
        Ok(new)
    }

    /// Applies `f` to every element in place.
    pub fn map_in_place(&self, mut f: impl FnMut(T) -> T) {
        for i in 0..self.array.len() {
            let v = self.array.get(i).expect("in range");
            self.array.set(i, f(v)).expect("in range");
        }
    }

    /// Copies elements `start..start + dst.len()` into `dst`.
    ///
    /// # Errors
    /// [`IndexError`] if the range passes the end.
    pub fn read_into(&self, start: usize, dst: &mut [T]) -> Result<(), IndexError> {
        self.array.read_into(start, dst)
    }

    /// Copies `src` into elements `start..start + src.len()`.
    ///
    /// # Errors
    /// [`IndexError`] if the range passes the end.
    pub fn write_from(&self, start: usize, src: &[T]) -> Result<(), IndexError> {
        self.array.write_from(start, src)
    }

    /// Sets every element to `value`.
    pub fn fill(&self, value: T) {
        self.array.fill(value)
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Vec<T> {
        self.array.to_vec()
    }

    /// Iterates over copies of the elements.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.array.iter()
    }
}

//! Typed proxies: handles on objects that live in a manager's server.
use crate::client::{Session, adopt, collect, dec, enc, owner, unexpected};
use crate::error::{ManagerError, Result};
use crate::wire::{Micros, Op, Reply, Val};
use mproc_channel::Address;
use mproc_core::transfer::{Exporter, Importer, TransferError};
use mproc_core::{Decode, Encode};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// One reference to a server object, shared by the clones of a proxy; dropping the last
/// clone releases it.
pub(crate) struct RefInner {
    pub(crate) session: Arc<Session>,
    pub(crate) id: u64,
    /// The callbacks of this process still to run for the object (a pool's, or one
    /// result's).
    pub(crate) cbs: Callbacks,
}

/// Counts the callbacks (of `apply_async_with` and the like) still to run in this
/// process, and the threads running them.
#[derive(Default)]
pub(crate) struct Callbacks {
    st: std::sync::Mutex<CbState>,
    cv: std::sync::Condvar,
}

#[derive(Default)]
struct CbState {
    pending: usize,
    runners: Vec<std::thread::ThreadId>,
}

impl Callbacks {
    fn state(&self) -> std::sync::MutexGuard<'_, CbState> {
        // User code never runs under this lock: a poisoned one holds a sound count.
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more callback to wait for.
    pub(crate) fn start(&self) {
        self.state().pending += 1;
    }

    /// The calling thread runs one of the callbacks.
    pub(crate) fn enter(&self) {
        self.state().runners.push(std::thread::current().id());
    }

    /// The calling thread's callback is done.
    pub(crate) fn finish(&self) {
        let me = std::thread::current().id();
        let mut st = self.state();
        st.pending = st.pending.saturating_sub(1);
        if let Some(i) = st.runners.iter().position(|t| *t == me) {
            st.runners.swap_remove(i);
        }
        drop(st);
        self.cv.notify_all();
    }

    /// Whether no callback is left to run (a callback's own thread counts as done).
    pub(crate) fn idle(&self) -> bool {
        let st = self.state();
        st.pending == 0 || st.runners.contains(&std::thread::current().id())
    }

    /// Waits until every callback has run, unless the caller is a callback itself
    /// (which would wait for itself).
    pub(crate) fn wait(&self) {
        let me = std::thread::current().id();
        let mut st = self.state();
        while st.pending > 0 && !st.runners.contains(&me) {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for RefInner {
    fn drop(&mut self) {
        // A copy that crossed a fork by memory holds no reference of its own.
        if self.session.pid == crate::client::my_pid() {
            let _ = self.session.call(self.id, Op::Decref);
        }
    }
}

impl RefInner {
    /// Waits until this process's callbacks for the object have run. A copy that
    /// crossed a fork by memory has no callback threads to wait for.
    pub(crate) fn wait_callbacks(&self) {
        if self.session.pid == crate::client::my_pid() {
            self.cbs.wait();
        }
    }

    /// Whether no callback of this process for the object is left to run.
    pub(crate) fn callbacks_idle(&self) -> bool {
        self.session.pid != crate::client::my_pid() || self.cbs.idle()
    }

    pub(crate) fn call(&self, op: Op) -> Result<Reply> {
        self.session.call(self.id, op)
    }

    pub(crate) fn dec<T: Decode>(&self, v: Val) -> Result<T> {
        dec(&self.session, v)
    }

    fn export(&self, kind: &str, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        let token = if collect(self.id) {
            0
        } else {
            match self.call(Op::Float) {
                Ok(Reply::Id(t)) => t,
                Ok(other) => return Err(io_err(unexpected(&other))),
                Err(e) => return Err(io_err(e)),
            }
        };
        out.put_bytes(kind.as_bytes());
        match &self.session.address {
            Address::Unix(p) => {
                out.put_u64(0);
                out.put_bytes(p.as_os_str().as_encoded_bytes());
            }
            Address::Abstract(n) => {
                out.put_u64(1);
                out.put_bytes(n);
            }
            Address::Tcp(a) => {
                out.put_u64(2);
                out.put_bytes(a.to_string().as_bytes());
            }
        }
        match &self.session.authkey {
            Some(k) => {
                out.put_u64(1);
                out.put_bytes(k);
            }
            None => out.put_u64(0),
        }
        out.put_u64(self.id);
        out.put_u64(token);
        Ok(())
    }

    fn import(kind: &'static str, input: &mut Importer<'_>) -> Result<Arc<Self>, TransferError> {
        let found = input.get_bytes()?;
        if found != kind.as_bytes() {
            return Err(TransferError::KindMismatch {
                expected: kind,
                found: String::from_utf8_lossy(found).into_owned(),
            });
        }
        let address = match input.get_u64()? {
            0 => {
                let b = input.get_bytes()?;
                let s = std::str::from_utf8(b).map_err(|_| TransferError::Malformed("path"))?;
                Address::unix(s)
            }
            1 => Address::abstract_name(input.get_bytes()?.to_vec()),
            2 => {
                let b = input.get_bytes()?;
                let a = std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(TransferError::Malformed("tcp address"))?;
                Address::tcp(a)
            }
            _ => return Err(TransferError::Malformed("address kind")),
        };
        let authkey = match input.get_u64()? {
            0 => None,
            1 => Some(input.get_bytes()?.to_vec()),
            _ => return Err(TransferError::Malformed("auth key flag")),
        };
        let id = input.get_u64()?;
        let token = input.get_u64()?;
        let session = Session::get(&address, authkey.as_deref()).map_err(io_err)?;
        if !adopt(id) {
            let op = if token != 0 {
                Op::Adopt { token }
            } else {
                Op::Incref
            };
            match session.call(id, op) {
                Ok(Reply::Unit) => {}
                Ok(other) => return Err(io_err(unexpected(&other))),
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(Arc::new(RefInner {
            session,
            id,
            cbs: Callbacks::default(),
        }))
    }
}

fn io_err(e: ManagerError) -> TransferError {
    TransferError::Io(std::io::Error::other(e.to_string()))
}

pub(crate) fn micros(t: Option<Duration>) -> Micros {
    t.map(|d| d.as_micros().min(u64::MAX as u128) as u64)
}

pub(crate) fn unit(r: Reply) -> Result<()> {
    match r {
        Reply::Unit => Ok(()),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn boolean(r: Reply) -> Result<bool> {
    match r {
        Reply::Bool(b) => Ok(b),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn int(r: Reply) -> Result<i64> {
    match r {
        Reply::Int(n) => Ok(n),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn val(r: Reply) -> Result<Val> {
    match r {
        Reply::Val(v) => Ok(v),
        other => Err(unexpected(&other)),
    }
}

fn maybe(r: Reply) -> Result<Option<Val>> {
    match r {
        Reply::MaybeVal(v) => Ok(v),
        other => Err(unexpected(&other)),
    }
}

fn vals(r: Reply) -> Result<Vec<Val>> {
    match r {
        Reply::Vals(v) => Ok(v),
        other => Err(unexpected(&other)),
    }
}

macro_rules! proxy_type {
    ($(#[$m:meta])* $name:ident [$($g:ident),*], $kind:literal) => {
        $(#[$m])*
        pub struct $name<$($g),*> {
            pub(crate) r: Arc<RefInner>,
            _t: PhantomData<fn() -> ($($g,)*)>,
        }

        impl<$($g),*> $name<$($g),*> {
            pub(crate) fn from_ref(r: Arc<RefInner>) -> Self {
                $name { r, _t: PhantomData }
            }

            /// The object's id in its manager (Python's `token.id`).
            pub fn id(&self) -> u64 {
                self.r.id
            }
        }

        impl<$($g),*> Clone for $name<$($g),*> {
            /// Another handle on the same object (it shares this handle's reference).
            fn clone(&self) -> Self {
                $name { r: Arc::clone(&self.r), _t: PhantomData }
            }
        }

        impl<$($g),*> fmt::Debug for $name<$($g),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("id", &self.r.id)
                    .field("manager", &self.r.session.address)
                    .finish()
            }
        }

        /// A proxy crosses into another process (a `Process`'s arguments, a pool task, a
        /// queue, a manager container) as its manager's address, auth key and object id;
        /// the receiver connects to the manager and holds a reference of its own.
        impl<$($g),*> mproc_core::Transfer for $name<$($g),*> {
            const KIND: &'static str = $kind;
            fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
                self.r.export(std::any::type_name::<Self>(), out)
            }
            fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
                RefInner::import(std::any::type_name::<Self>(), input).map(Self::from_ref)
            }
        }

        mproc_core::impl_handle_archive!([$($g,)*] $name<$($g),*>);
    };
}

proxy_type!(
    /// A list held by a manager (Python's `manager.list()`).
    ///
    /// Elements are compared by their encoded bytes ([`remove`](Self::remove),
    /// [`contains`](Self::contains), [`index`](Self::index)): equal for values of the
    /// usual types (integers, strings, tuples, vectors, derived structs).
    ListProxy[T],
    "mproc_manager::ListProxy"
);
proxy_type!(
    /// A fixed-length array held by a manager (Python's `manager.Array(typecode,
    /// sequence)`), made by [`Manager::array`](crate::Manager::array): items are read
    /// and replaced by index or by slice, never added or removed.
    ///
    /// ```
    /// use mproc_manager::Manager;
    /// let m = Manager::start().unwrap();
    /// let a = m.array(&[1.5f64, 2.5, 3.5]).unwrap();
    /// a.set(-1, &0.5).unwrap();
    /// assert_eq!(a.len().unwrap(), 3);
    /// assert_eq!(a.slice(1..).unwrap(), [2.5, 0.5]);
    /// a.set_slice(..2, &[9.0, 8.0]).unwrap();
    /// assert_eq!(a.to_vec().unwrap(), [9.0, 8.0, 0.5]);
    /// ```
    ArrayProxy[T],
    "mproc_manager::ArrayProxy"
);
proxy_type!(
    /// A dict held by a manager (Python's `manager.dict()`). Keys are compared by their
    /// encoded bytes; insertion order is kept, as in Python.
    DictProxy[K, V],
    "mproc_manager::DictProxy"
);
proxy_type!(
    /// A single value held by a manager (Python's `manager.Value(typecode, value)`).
    ValueProxy[T],
    "mproc_manager::ValueProxy"
);
proxy_type!(
    /// A namespace held by a manager (Python's `manager.Namespace()`): typed fields by
    /// name.
    NamespaceProxy[],
    "mproc_manager::NamespaceProxy"
);
proxy_type!(
    /// A queue held by a manager (Python's `manager.Queue(maxsize)`): usable by any
    /// process that holds the proxy, on this machine or another.
    QueueProxy[T],
    "mproc_manager::QueueProxy"
);
proxy_type!(
    /// A lock held by a manager (Python's `manager.Lock()`). Any process may release it.
    LockProxy[],
    "mproc_manager::LockProxy"
);
proxy_type!(
    /// A reentrant lock held by a manager (Python's `manager.RLock()`), owned by the
    /// thread that acquired it.
    RLockProxy[],
    "mproc_manager::RLockProxy"
);
proxy_type!(
    /// A semaphore held by a manager (Python's `manager.Semaphore(n)` and
    /// `manager.BoundedSemaphore(n)`).
    SemaphoreProxy[],
    "mproc_manager::SemaphoreProxy"
);
proxy_type!(
    /// An event held by a manager (Python's `manager.Event()`).
    EventProxy[],
    "mproc_manager::EventProxy"
);
proxy_type!(
    /// A condition variable with its own reentrant lock, held by a manager (Python's
    /// `manager.Condition()`).
    ConditionProxy[],
    "mproc_manager::ConditionProxy"
);
proxy_type!(
    /// A barrier held by a manager (Python's `manager.Barrier(parties)`).
    BarrierProxy[],
    "mproc_manager::BarrierProxy"
);
proxy_type!(
    /// A process pool held by a manager (Python's `manager.Pool(processes)`), made by
    /// [`Manager::pool`](crate::Manager::pool): its workers are children of the server,
    /// and every process that holds the proxy submits work to the same pool.
    ///
    /// ```
    /// use mproc_manager::Manager;
    /// fn square(x: u64) -> u64 { x * x }
    /// let m = Manager::start().unwrap();
    /// let pool = m.pool(2).unwrap();
    /// assert_eq!(pool.map(square, 0..5u64).unwrap(), [0, 1, 4, 9, 16]);
    /// let r = pool.apply_async(square, 7).unwrap();
    /// assert_eq!(r.get().unwrap(), 49);
    /// pool.close().unwrap();
    /// pool.join().unwrap();
    /// ```
    ///
    /// Dropping the last proxy (in every process) frees the pool in the server, which
    /// terminates it; Python's `with pool:` is [`terminate`](Self::terminate). A manager
    /// that shuts down terminates its pools: waiting clients get
    /// [`ManagerError::Map`]/[`ManagerError::Task`] with `TaskError::Terminated`, or
    /// [`ManagerError::ServerGone`].
    PoolProxy[],
    "mproc_manager::PoolProxy"
);
proxy_type!(
    /// The pending result of [`PoolProxy::apply_async`], [`PoolProxy::map_async`] or
    /// [`PoolProxy::starmap_async`] (Python's `AsyncResult` proxy); `R` is the result
    /// type (a `Vec` for the maps).
    AsyncResultProxy[R],
    "mproc_manager::AsyncResultProxy"
);
proxy_type!(
    /// A custom object held by a manager (a type registered on Python's `BaseManager`):
    /// created with [`Manager::create`](crate::Manager::create), its methods called with
    /// [`call`](Self::call).
    Proxy[T],
    "mproc_manager::Proxy"
);

impl<T: Encode + Decode> ListProxy<T> {
    /// Appends `v` (Python's `append`).
    ///
    /// # Errors
    /// [`ManagerError::ServerGone`] and the other transport errors, as for every call.
    pub fn push(&self, v: &T) -> Result<()> {
        unit(self.r.call(Op::Push(enc(v)?))?)
    }

    /// Python's name for [`push`](Self::push).
    ///
    /// # Errors
    /// As [`push`](Self::push).
    pub fn append(&self, v: &T) -> Result<()> {
        self.push(v)
    }

    /// Appends every item (Python's `extend`).
    ///
    /// # Errors
    /// As [`push`](Self::push).
    pub fn extend<'a>(&self, items: impl IntoIterator<Item = &'a T>) -> Result<()>
    where
        T: 'a,
    {
        let v = items.into_iter().map(enc).collect::<Result<Vec<_>>>()?;
        unit(self.r.call(Op::Extend(v))?)
    }

    /// The item at `i` (negative counts from the end, as in Python).
    ///
    /// # Errors
    /// [`ManagerError::IndexOutOfRange`].
    pub fn get(&self, i: isize) -> Result<T> {
        let v = val(self.r.call(Op::Index(i as i64))?)?;
        self.r.dec(v)
    }

    /// Replaces the item at `i` (Python's `l[i] = v`).
    ///
    /// # Errors
    /// [`ManagerError::IndexOutOfRange`].
    pub fn set(&self, i: isize, v: &T) -> Result<()> {
        unit(self.r.call(Op::SetIndex(i as i64, enc(v)?))?)
    }

    /// Inserts `v` before position `i` (Python's `insert`, clamped as Python clamps).
    ///
    /// # Errors
    /// Transport errors.
    pub fn insert(&self, i: isize, v: &T) -> Result<()> {
        unit(self.r.call(Op::Insert(i as i64, enc(v)?))?)
    }

    /// The number of items.
    ///
    /// # Errors
    /// Transport errors.
    pub fn len(&self) -> Result<usize> {
        Ok(int(self.r.call(Op::Len)?)? as usize)
    }

    /// Whether the list is empty.
    ///
    /// # Errors
    /// Transport errors.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Removes and returns the last item (Python's `pop()`).
    ///
    /// # Errors
    /// [`ManagerError::IndexOutOfRange`] on an empty list.
    pub fn pop(&self) -> Result<T> {
        let v = val(self.r.call(Op::Pop(None))?)?;
        self.r.dec(v)
    }

    /// Removes and returns the item at `i` (Python's `pop(i)`).
    ///
    /// # Errors
    /// [`ManagerError::IndexOutOfRange`].
    pub fn pop_at(&self, i: isize) -> Result<T> {
        let v = val(self.r.call(Op::Pop(Some(i as i64)))?)?;
        self.r.dec(v)
    }

    /// Removes the first item equal to `v` (Python's `remove`).
    ///
    /// # Errors
    /// [`ManagerError::NotFound`] if there is none.
    pub fn remove(&self, v: &T) -> Result<()> {
        unit(self.r.call(Op::RemoveEq(enc(v)?))?)
    }

    /// Whether an item equals `v` (Python's `v in l`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn contains(&self, v: &T) -> Result<bool> {
        Ok(int(self.r.call(Op::Contains(enc(v)?))?)? >= 0)
    }

    /// The position of the first item equal to `v` (Python's `index`).
    ///
    /// # Errors
    /// [`ManagerError::NotFound`].
    pub fn index(&self, v: &T) -> Result<usize> {
        let i = int(self.r.call(Op::Contains(enc(v)?))?)?;
        usize::try_from(i).map_err(|_| ManagerError::NotFound)
    }

    /// Removes every item.
    ///
    /// # Errors
    /// Transport errors.
    pub fn clear(&self) -> Result<()> {
        unit(self.r.call(Op::Clear)?)
    }

    /// A snapshot of the items (Python's `list(l)` / `l[:]`).
    ///
    /// # Errors
    /// Transport errors; `Codec` if the items are not `T`s.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let vs = vals(self.r.call(Op::Snapshot)?)?;
        vs.into_iter().map(|v| self.r.dec(v)).collect()
    }

    /// Iterates over a snapshot of the items.
    ///
    /// # Errors
    /// As [`to_vec`](Self::to_vec).
    pub fn iter(&self) -> Result<std::vec::IntoIter<T>> {
        Ok(self.to_vec()?.into_iter())
    }
}

/// The bounds of a slice as Python writes them (`a[start:stop]`; negative counts from
/// the end, `None` is the open end).
fn bounds(r: impl std::ops::RangeBounds<isize>) -> (i64, i64) {
    use std::ops::Bound;
    let start = match r.start_bound() {
        Bound::Included(&s) => s as i64,
        Bound::Excluded(&s) => s as i64 + 1,
        Bound::Unbounded => 0,
    };
    let stop = match r.end_bound() {
        Bound::Included(&-1) => i64::MAX,
        Bound::Included(&e) => e as i64 + 1,
        Bound::Excluded(&e) => e as i64,
        Bound::Unbounded => i64::MAX,
    };
    (start, stop)
}

impl<T: Encode + Decode> ArrayProxy<T> {
    /// The number of items (fixed when the array was made; Python's `len(a)`).
    ///
    /// # Errors
    /// Transport errors, as for every call.
    pub fn len(&self) -> Result<usize> {
        int(self.r.call(Op::Len)?).map(|n| n as usize)
    }

    /// Whether the array has no items.
    ///
    /// # Errors
    /// As [`len`](Self::len).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The item at `i` (negative counts from the end; Python's `a[i]`).
    ///
    /// # Errors
    /// [`ManagerError::IndexOutOfRange`](crate::ManagerError::IndexOutOfRange).
    pub fn get(&self, i: isize) -> Result<T> {
        let v = val(self.r.call(Op::Index(i as i64))?)?;
        self.r.dec(v)
    }

    /// Replaces the item at `i` (Python's `a[i] = v`).
    ///
    /// # Errors
    /// [`ManagerError::IndexOutOfRange`](crate::ManagerError::IndexOutOfRange).
    pub fn set(&self, i: isize, v: &T) -> Result<()> {
        unit(self.r.call(Op::SetIndex(i as i64, enc(v)?))?)
    }

    /// The items of a slice, as Python's `a[start:stop]`: `a.slice(1..3)`,
    /// `a.slice(-2..)`, `a.slice(..)`. Bounds past either end are clamped, as in
    /// Python (never an error).
    ///
    /// # Errors
    /// Transport errors; `Codec` if the items are not `T`s.
    pub fn slice(&self, range: impl std::ops::RangeBounds<isize>) -> Result<Vec<T>> {
        let (start, stop) = bounds(range);
        let vs = vals(self.r.call(Op::Slice { start, stop })?)?;
        vs.into_iter().map(|v| self.r.dec(v)).collect()
    }

    /// Replaces the items of a slice (Python's `a[start:stop] = items`), atomically.
    ///
    /// # Errors
    /// [`ManagerError::SizeMismatch`](crate::ManagerError::SizeMismatch) if `items` is
    /// not exactly as long as the (clamped) slice: an array's length never changes.
    pub fn set_slice<'a>(
        &self,
        range: impl std::ops::RangeBounds<isize>,
        items: impl IntoIterator<Item = &'a T>,
    ) -> Result<()>
    where
        T: 'a,
    {
        let (start, stop) = bounds(range);
        let items = items.into_iter().map(enc).collect::<Result<Vec<_>>>()?;
        unit(self.r.call(Op::SetSlice { start, stop, items })?)
    }

    /// A snapshot of every item (Python's `a[:]` / `list(a)`).
    ///
    /// # Errors
    /// As [`slice`](Self::slice).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let vs = vals(self.r.call(Op::Snapshot)?)?;
        vs.into_iter().map(|v| self.r.dec(v)).collect()
    }
}

impl<T: Encode + Decode + Ord + 'static> ListProxy<T> {
    /// Sorts the list in the server (Python's `sort()`), atomically.
    ///
    /// # Errors
    /// [`ManagerError::Unsupported`] if the server runs another build of this program
    /// (sorting runs this program's `Ord` in the server); [`ManagerError::Signature`] if
    /// the server's sorting code for `T` has another type fingerprint than the client
    /// sent (nothing is sorted); `Panicked` if `Ord` panics.
    pub fn sort(&self) -> Result<()> {
        let (tramp, sig) = crate::sys::sort_tramp::<T>();
        unit(self.r.call(Op::Sort { tramp, sig })?)
    }
}

impl<K: Encode + Decode, V: Encode + Decode> DictProxy<K, V> {
    /// The value for `k`, if any (Python's `d.get(k)`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn get(&self, k: &K) -> Result<Option<V>> {
        match maybe(self.r.call(Op::DictGet(enc(k)?))?)? {
            Some(v) => self.r.dec(v).map(Some),
            None => Ok(None),
        }
    }

    /// Sets `d[k] = v`, returning the previous value.
    ///
    /// # Errors
    /// Transport errors.
    pub fn insert(&self, k: &K, v: &V) -> Result<Option<V>> {
        match maybe(self.r.call(Op::DictInsert(enc(k)?, enc(v)?))?)? {
            Some(v) => self.r.dec(v).map(Some),
            None => Ok(None),
        }
    }

    /// Removes `k`, returning its value (Python's `d.pop(k, None)`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn remove(&self, k: &K) -> Result<Option<V>> {
        match maybe(self.r.call(Op::DictRemove(enc(k)?))?)? {
            Some(v) => self.r.dec(v).map(Some),
            None => Ok(None),
        }
    }

    /// Whether `k` is a key (Python's `k in d`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn contains_key(&self, k: &K) -> Result<bool> {
        Ok(int(self.r.call(Op::Contains(enc(k)?))?)? >= 0)
    }

    /// The number of entries.
    ///
    /// # Errors
    /// Transport errors.
    pub fn len(&self) -> Result<usize> {
        Ok(int(self.r.call(Op::Len)?)? as usize)
    }

    /// Whether the dict is empty.
    ///
    /// # Errors
    /// Transport errors.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Python's `setdefault`: the value for `k`, inserting `default` first if absent.
    ///
    /// # Errors
    /// Transport errors.
    pub fn setdefault(&self, k: &K, default: &V) -> Result<V> {
        let v = val(self.r.call(Op::DictSetDefault(enc(k)?, enc(default)?))?)?;
        self.r.dec(v)
    }

    /// Inserts every pair (Python's `update`), atomically.
    ///
    /// # Errors
    /// Transport errors.
    pub fn update<'a>(&self, pairs: impl IntoIterator<Item = (&'a K, &'a V)>) -> Result<()>
    where
        K: 'a,
        V: 'a,
    {
        let p = pairs
            .into_iter()
            .map(|(k, v)| Ok((enc(k)?, enc(v)?)))
            .collect::<Result<Vec<_>>>()?;
        unit(self.r.call(Op::DictUpdate(p))?)
    }

    /// Removes every entry.
    ///
    /// # Errors
    /// Transport errors.
    pub fn clear(&self) -> Result<()> {
        unit(self.r.call(Op::Clear)?)
    }

    /// A snapshot of the entries, in insertion order (Python's `d.items()`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn items(&self) -> Result<Vec<(K, V)>> {
        match self.r.call(Op::Snapshot)? {
            Reply::Pairs(ps) => ps
                .into_iter()
                .map(|(k, v)| Ok((self.r.dec(k)?, self.r.dec(v)?)))
                .collect(),
            other => Err(unexpected(&other)),
        }
    }

    /// A snapshot of the keys.
    ///
    /// # Errors
    /// Transport errors.
    pub fn keys(&self) -> Result<Vec<K>> {
        Ok(self.items()?.into_iter().map(|(k, _)| k).collect())
    }

    /// A snapshot of the values.
    ///
    /// # Errors
    /// Transport errors.
    pub fn values(&self) -> Result<Vec<V>> {
        Ok(self.items()?.into_iter().map(|(_, v)| v).collect())
    }
}

impl<T: Encode + Decode> ValueProxy<T> {
    /// The value (Python's `v.value`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn get(&self) -> Result<T> {
        let v = val(self.r.call(Op::Get)?)?;
        self.r.dec(v)
    }

    /// Replaces the value (Python's `v.value = x`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn set(&self, v: &T) -> Result<()> {
        unit(self.r.call(Op::Set(enc(v)?))?)
    }
}

impl NamespaceProxy {
    /// The field `name` as a `T` (Python's `ns.name`).
    ///
    /// # Errors
    /// [`ManagerError::KeyMissing`] if there is no such field (Python's
    /// `AttributeError`); `Codec` if it holds another type.
    pub fn get<T: Decode>(&self, name: &str) -> Result<T> {
        let v = val(self.r.call(Op::AttrGet(name.to_owned()))?)?;
        self.r.dec(v)
    }

    /// Sets the field `name` (Python's `ns.name = v`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn set<T: Encode>(&self, name: &str, v: &T) -> Result<()> {
        unit(self.r.call(Op::AttrSet(name.to_owned(), enc(v)?))?)
    }

    /// Deletes the field `name` (Python's `del ns.name`).
    ///
    /// # Errors
    /// [`ManagerError::KeyMissing`].
    pub fn remove(&self, name: &str) -> Result<()> {
        unit(self.r.call(Op::AttrDel(name.to_owned()))?)
    }

    /// The field names, sorted.
    ///
    /// # Errors
    /// Transport errors.
    pub fn names(&self) -> Result<Vec<String>> {
        match self.r.call(Op::Snapshot)? {
            Reply::Names(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }
}

impl<T: Encode + Decode> QueueProxy<T> {
    /// Puts `v`, waiting while the queue is full (Python's `put(v)`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn put(&self, v: &T) -> Result<()> {
        self.put_timeout(v, None)
    }

    /// Puts `v`, waiting at most `timeout` (`None`: for ever).
    ///
    /// # Errors
    /// [`ManagerError::Full`] when the time runs out.
    pub fn put_timeout(&self, v: &T, timeout: Option<Duration>) -> Result<()> {
        unit(self.r.call(Op::Put {
            v: enc(v)?,
            block: true,
            timeout: micros(timeout),
        })?)
    }

    /// Puts `v` without waiting (Python's `put_nowait`).
    ///
    /// # Errors
    /// [`ManagerError::Full`].
    pub fn put_nowait(&self, v: &T) -> Result<()> {
        unit(self.r.call(Op::Put {
            v: enc(v)?,
            block: false,
            timeout: None,
        })?)
    }

    /// Takes the next item, waiting for one (Python's `get()`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn get(&self) -> Result<T> {
        self.get_timeout(None)
    }

    /// Takes the next item, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ManagerError::Empty`] when the time runs out.
    pub fn get_timeout(&self, timeout: Option<Duration>) -> Result<T> {
        let v = val(self.r.call(Op::Take {
            block: true,
            timeout: micros(timeout),
        })?)?;
        self.r.dec(v)
    }

    /// Takes the next item without waiting (Python's `get_nowait`).
    ///
    /// # Errors
    /// [`ManagerError::Empty`].
    pub fn get_nowait(&self) -> Result<T> {
        let v = val(self.r.call(Op::Take {
            block: false,
            timeout: None,
        })?)?;
        self.r.dec(v)
    }

    /// The number of items waiting (Python's `qsize`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn qsize(&self) -> Result<usize> {
        Ok(int(self.r.call(Op::Len)?)? as usize)
    }

    /// Marks one item taken with `get` as processed (Python's
    /// `JoinableQueue.task_done()`).
    ///
    /// # Errors
    /// [`ManagerError::NotFound`] if called more often than items were put;
    /// [`ManagerError::WrongKind`] on a queue made by [`Manager::queue`](crate::Manager::queue).
    pub fn task_done(&self) -> Result<()> {
        unit(self.r.call(Op::TaskDone)?)
    }

    /// Waits until every item put has been marked done (Python's
    /// `JoinableQueue.join()`), at most `timeout`; returns whether they all were.
    ///
    /// # Errors
    /// [`ManagerError::WrongKind`] on a queue made by [`Manager::queue`](crate::Manager::queue).
    pub fn join(&self, timeout: Option<Duration>) -> Result<bool> {
        boolean(self.r.call(Op::Wait {
            timeout: micros(timeout),
            owner: 0,
        })?)
    }

    /// Whether no item waits (Python's `empty`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn empty(&self) -> Result<bool> {
        Ok(self.qsize()? == 0)
    }
}

macro_rules! acquire_release {
    ($name:ident, $what:literal) => {
        impl $name {
            #[doc = concat!("Acquires the ", $what, ", waiting as long as it takes.")]
            ///
            /// # Errors
            /// Transport errors.
            pub fn acquire(&self) -> Result<()> {
                match self.acquire_timeout(None)? {
                    true => Ok(()),
                    false => Err(ManagerError::Timeout),
                }
            }

            #[doc = concat!("Acquires the ", $what, ", waiting at most `timeout` (`None`: for ever);")]
            /// returns whether it was acquired (Python's `acquire(timeout=…)`).
            ///
            /// # Errors
            /// Transport errors.
            pub fn acquire_timeout(&self, timeout: Option<Duration>) -> Result<bool> {
                boolean(self.r.call(Op::Acquire {
                    block: true,
                    timeout: micros(timeout),
                    owner: owner(&self.r.session),
                })?)
            }

            #[doc = concat!("Acquires the ", $what, " only if that needs no wait (Python's `acquire(False)`).")]
            ///
            /// # Errors
            /// Transport errors.
            pub fn try_acquire(&self) -> Result<bool> {
                boolean(self.r.call(Op::Acquire {
                    block: false,
                    timeout: None,
                    owner: owner(&self.r.session),
                })?)
            }

            #[doc = concat!("Releases the ", $what, ".")]
            ///
            /// # Errors
            /// [`ManagerError::NotOwner`] if it is not held (by this thread, for the
            /// reentrant kinds); for a bounded semaphore, released too often.
            pub fn release(&self) -> Result<()> {
                unit(self.r.call(Op::Release {
                    owner: owner(&self.r.session),
                })?)
            }
        }
    };
}

acquire_release!(LockProxy, "lock");
acquire_release!(RLockProxy, "lock");
acquire_release!(SemaphoreProxy, "semaphore");
acquire_release!(ConditionProxy, "condition's lock");

impl SemaphoreProxy {
    /// The current count.
    ///
    /// # Errors
    /// Transport errors.
    pub fn value(&self) -> Result<i64> {
        int(self.r.call(Op::Get)?)
    }
}

impl EventProxy {
    /// Sets the flag and wakes every waiter.
    ///
    /// # Errors
    /// Transport errors.
    pub fn set(&self) -> Result<()> {
        unit(self.r.call(Op::EventSet)?)
    }

    /// Clears the flag.
    ///
    /// # Errors
    /// Transport errors.
    pub fn clear(&self) -> Result<()> {
        unit(self.r.call(Op::EventClear)?)
    }

    /// Whether the flag is set.
    ///
    /// # Errors
    /// Transport errors.
    pub fn is_set(&self) -> Result<bool> {
        boolean(self.r.call(Op::EventIsSet)?)
    }

    /// Waits until the flag is set or `timeout` passes; returns the flag (Python's
    /// `wait(timeout)`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        boolean(self.r.call(Op::Wait {
            timeout: micros(timeout),
            owner: 0,
        })?)
    }
}

impl ConditionProxy {
    /// Releases the lock (which this thread must hold), waits for a notification or
    /// `timeout`, reacquires the lock; returns `false` on timeout.
    ///
    /// # Errors
    /// [`ManagerError::NotOwner`] if this thread does not hold the lock.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        boolean(self.r.call(Op::Wait {
            timeout: micros(timeout),
            owner: owner(&self.r.session),
        })?)
    }

    /// Wakes up to `n` waiters (this thread must hold the lock).
    ///
    /// # Errors
    /// [`ManagerError::NotOwner`].
    pub fn notify(&self, n: usize) -> Result<()> {
        unit(self.r.call(Op::Notify {
            n: n as u64,
            owner: owner(&self.r.session),
        })?)
    }

    /// Wakes every waiter (this thread must hold the lock).
    ///
    /// # Errors
    /// [`ManagerError::NotOwner`].
    pub fn notify_all(&self) -> Result<()> {
        self.notify(usize::MAX)
    }
}

impl BarrierProxy {
    /// Waits until `parties` callers wait; returns this caller's arrival index
    /// (`0..parties`).
    ///
    /// # Errors
    /// [`ManagerError::BrokenBarrier`] if the barrier is or becomes broken (an abort, or
    /// a waiter's timeout).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<usize> {
        Ok(int(self.r.call(Op::Wait {
            timeout: micros(timeout),
            owner: 0,
        })?)? as usize)
    }

    /// Breaks the barrier: current and future waiters fail until [`reset`](Self::reset).
    ///
    /// # Errors
    /// Transport errors.
    pub fn abort(&self) -> Result<()> {
        unit(self.r.call(Op::BarrierAbort)?)
    }

    /// Returns the barrier to its first state (current waiters fail).
    ///
    /// # Errors
    /// Transport errors.
    pub fn reset(&self) -> Result<()> {
        unit(self.r.call(Op::BarrierReset)?)
    }

    /// `(parties, n_waiting, broken)`.
    ///
    /// # Errors
    /// Transport errors.
    pub fn info(&self) -> Result<(usize, usize, bool)> {
        match self.r.call(Op::BarrierInfo)? {
            Reply::Ints(v) if v.len() == 3 => Ok((v[0] as usize, v[1] as usize, v[2] != 0)),
            other => Err(unexpected(&other)),
        }
    }
}

impl<T: Send + 'static> Proxy<T> {
    /// Calls `method(&mut object, arg)` in the server and returns its result (Python's
    /// `proxy.method(arg)`); calls on one object run one at a time.
    ///
    /// # Errors
    /// [`ManagerError::Panicked`] if the method panicked (the object stays, the server
    /// goes on); [`ManagerError::Unsupported`] if the server runs another build of this
    /// program; [`ManagerError::Signature`] if the method's type fingerprint does not
    /// match the server's code for it (nothing runs); `WrongKind` if the object is not a
    /// `T`.
    pub fn call<A: Encode + Decode, R: Encode + Decode>(
        &self,
        method: fn(&mut T, A) -> R,
        arg: A,
    ) -> Result<R> {
        let (tramp, func, sig) = crate::sys::method_refs(method);
        let v = val(self.r.call(Op::Call {
            tramp,
            func,
            sig,
            args: enc(&arg)?,
        })?)?;
        self.r.dec(v)
    }
}

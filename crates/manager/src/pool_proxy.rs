//! The client side of a manager's process pools: [`PoolProxy`]'s methods, its
//! [`AsyncResultProxy`] and [`IMapProxy`].
use crate::client::{enc, unexpected};
use crate::error::{ManagerError, Result};
use crate::proxy::{AsyncResultProxy, PoolProxy, RefInner, boolean, int, micros, unit, val};
use crate::wire::{Op, PoolRun, PoolWhat, Reply, Sig, Val};
use mproc_core::{Decode, Message};
use mproc_pool::StarFn;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

impl PoolProxy {
    /// Submits `what` of the function named by `refs` over `args`.
    fn run(
        &self,
        (tramp, func, sig): (u64, u64, Sig),
        what: PoolWhat,
        args: Val,
        chunksize: usize,
        wait: bool,
    ) -> Result<Reply> {
        self.r.call(Op::PoolRun(Box::new(PoolRun {
            tramp,
            func,
            sig,
            what,
            args,
            chunksize: chunksize as u64,
            wait,
        })))
    }

    /// A handle on the object a submission made in the server.
    fn made(&self, r: Reply) -> Result<Arc<RefInner>> {
        match r {
            Reply::Id(id) => Ok(Arc::new(RefInner {
                session: Arc::clone(&self.r.session),
                id,
            })),
            other => Err(unexpected(&other)),
        }
    }

    fn items<A: Message>(items: impl IntoIterator<Item = A>) -> Result<Val> {
        enc(&items.into_iter().collect::<Vec<A>>())
    }

    /// Runs `f(args)` on a worker of the pool and returns its result (Python's
    /// `pool.apply(f, args)`).
    ///
    /// # Errors
    /// [`ManagerError::Task`] if the task failed (it panicked, its worker died, the pool
    /// is closed or terminated…; the pool goes on); [`ManagerError::Unsupported`] if the
    /// server runs another build of this program; [`ManagerError::Signature`] if the
    /// function's type fingerprint does not match the server's code (nothing runs);
    /// transport errors, as for every call.
    pub fn apply<A, R>(&self, f: fn(A) -> R, args: A) -> Result<R>
    where
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        let refs = crate::sys::task_refs(f);
        let v = val(self.run(refs, PoolWhat::Apply, enc(&args)?, 0, true)?)?;
        self.r.dec(v)
    }

    /// Submits `f(args)` (Python's `apply_async`); the result is an object in the
    /// server, which any process holding the returned proxy can wait for.
    ///
    /// # Errors
    /// As [`apply`](Self::apply), except that a task's failure comes from the result's
    /// [`get`](AsyncResultProxy::get).
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, args: A) -> Result<AsyncResultProxy<R>>
    where
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        let refs = crate::sys::task_refs(f);
        let r = self.run(refs, PoolWhat::Apply, enc(&args)?, 0, false)?;
        Ok(AsyncResultProxy::from_ref(self.made(r)?))
    }

    /// Applies `f` to every item on the pool's workers and returns the results in input
    /// order (Python's `pool.map(f, items)`). The items travel to the server in one
    /// request, the results come back in one reply. Only this call's connection waits:
    /// the server goes on serving other requests, from this process and others.
    ///
    /// # Errors
    /// [`ManagerError::Map`]: the first item that failed, with its index; otherwise as
    /// [`apply`](Self::apply).
    pub fn map<A, R>(&self, f: fn(A) -> R, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.map_inner(f, items, 0)
    }

    /// [`map`](Self::map) handing `chunksize` items to a worker at a time (Python's
    /// `map(f, items, chunksize)`).
    ///
    /// # Errors
    /// As [`map`](Self::map).
    pub fn map_chunked<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>>
    where
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.map_inner(f, items, chunksize.max(1))
    }

    fn map_inner<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>>
    where
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        let refs = crate::sys::task_refs(f);
        let v = val(self.run(refs, PoolWhat::Map, Self::items(items)?, chunksize, true)?)?;
        self.r.dec(v)
    }

    /// Submits a map (Python's `map_async`); its result is the `Vec` of results.
    ///
    /// # Errors
    /// As [`apply_async`](Self::apply_async); a failed item is the result's
    /// [`ManagerError::Map`].
    pub fn map_async<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<AsyncResultProxy<Vec<R>>>
    where
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.map_async_chunked(f, items, None)
    }

    /// Submits a map handing `chunksize` items to a worker at a time (`None`: Python's
    /// default rule; Python's `map_async(f, items, chunksize)`).
    ///
    /// # Errors
    /// As [`map_async`](Self::map_async).
    pub fn map_async_chunked<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<AsyncResultProxy<Vec<R>>>
    where
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        let refs = crate::sys::task_refs(f);
        let chunk = chunksize.map_or(0, |n| n.max(1));
        let r = self.run(refs, PoolWhat::Map, Self::items(items)?, chunk, false)?;
        Ok(AsyncResultProxy::from_ref(self.made(r)?))
    }

    /// Python's `starmap`: `f(a, b, …)` for every tuple `(a, b, …)`, results in input
    /// order. `f` is a `fn` item of 1 to 12 arguments ([`StarFn`]); a closure is refused
    /// (`BadRequest`).
    ///
    /// ```
    /// use mproc_manager::Manager;
    /// fn mul(a: u64, b: u64) -> u64 { a * b }
    /// let m = Manager::start().unwrap();
    /// let pool = m.pool(2).unwrap();
    /// assert_eq!(pool.starmap(mul, [(2, 3), (4, 5)]).unwrap(), [6, 20]);
    /// ```
    ///
    /// # Errors
    /// As [`map`](Self::map).
    pub fn starmap<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
    ) -> Result<Vec<F::Output>>
    where
        F: StarFn<Args>,
        Args: Message + Send + 'static,
        F::Output: Message + Send + 'static,
    {
        let refs = crate::sys::star_refs(f);
        let v = val(self.run(refs, PoolWhat::Starmap, Self::items(items)?, 0, true)?)?;
        self.r.dec(v)
    }

    /// [`starmap`](Self::starmap) handing `chunksize` items to a worker at a time.
    ///
    /// # Errors
    /// As [`map`](Self::map).
    pub fn starmap_chunked<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
        chunksize: usize,
    ) -> Result<Vec<F::Output>>
    where
        F: StarFn<Args>,
        Args: Message + Send + 'static,
        F::Output: Message + Send + 'static,
    {
        let refs = crate::sys::star_refs(f);
        let chunk = chunksize.max(1);
        let v = val(self.run(refs, PoolWhat::Starmap, Self::items(items)?, chunk, true)?)?;
        self.r.dec(v)
    }

    /// Submits a starmap (Python's `starmap_async`).
    ///
    /// # Errors
    /// As [`map_async`](Self::map_async).
    pub fn starmap_async<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
    ) -> Result<AsyncResultProxy<Vec<F::Output>>>
    where
        F: StarFn<Args>,
        Args: Message + Send + 'static,
        F::Output: Message + Send + 'static,
    {
        self.starmap_async_chunked(f, items, None)
    }

    /// Submits a starmap with an explicit chunk size (`None`: Python's default rule).
    ///
    /// # Errors
    /// As [`map_async`](Self::map_async).
    pub fn starmap_async_chunked<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
        chunksize: Option<usize>,
    ) -> Result<AsyncResultProxy<Vec<F::Output>>>
    where
        F: StarFn<Args>,
        Args: Message + Send + 'static,
        F::Output: Message + Send + 'static,
    {
        let refs = crate::sys::star_refs(f);
        let chunk = chunksize.map_or(0, |n| n.max(1));
        let r = self.run(refs, PoolWhat::Starmap, Self::items(items)?, chunk, false)?;
        Ok(AsyncResultProxy::from_ref(self.made(r)?))
    }

    fn imap_inner<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        what: PoolWhat,
        chunksize: usize,
    ) -> Result<IMapProxy<R>>
    where
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        let refs = crate::sys::task_refs(f);
        let r = self.run(refs, what, Self::items(items)?, chunksize.max(1), false)?;
        Ok(IMapProxy {
            r: self.made(r)?,
            done: false,
            _t: PhantomData,
        })
    }

    /// Python's `imap`: the results in input order, each fetched from the server as it
    /// is needed (while later items still run). The items travel to the server all at
    /// once (the pool pulls them from there lazily).
    ///
    /// ```
    /// use mproc_manager::Manager;
    /// fn double(x: u32) -> u32 { 2 * x }
    /// let m = Manager::start().unwrap();
    /// let pool = m.pool(2).unwrap();
    /// let got: Vec<u32> = pool.imap(double, 0..4u32).unwrap().map(Result::unwrap).collect();
    /// assert_eq!(got, [0, 2, 4, 6]);
    /// ```
    ///
    /// # Errors
    /// As [`apply_async`](Self::apply_async); a failed item is that item's
    /// [`ManagerError::Task`].
    pub fn imap<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<IMapProxy<R>>
    where
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.imap_inner(f, items, PoolWhat::Imap, 1)
    }

    /// [`imap`](Self::imap) handing `chunksize` items to a worker at a time (Python's
    /// `imap(f, items, chunksize)`).
    ///
    /// # Errors
    /// As [`imap`](Self::imap).
    pub fn imap_chunked<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<IMapProxy<R>>
    where
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.imap_inner(f, items, PoolWhat::Imap, chunksize)
    }

    /// Python's `imap_unordered`: as [`imap`](Self::imap), results in the order they
    /// finish.
    ///
    /// # Errors
    /// As [`imap`](Self::imap).
    pub fn imap_unordered<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<IMapProxy<R>>
    where
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.imap_inner(f, items, PoolWhat::ImapUnordered, 1)
    }

    /// [`imap_unordered`](Self::imap_unordered) handing `chunksize` items to a worker
    /// at a time.
    ///
    /// # Errors
    /// As [`imap`](Self::imap).
    pub fn imap_unordered_chunked<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<IMapProxy<R>>
    where
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.imap_inner(f, items, PoolWhat::ImapUnordered, chunksize)
    }

    /// No more tasks; the workers exit once the queued ones are done (Python's
    /// `close`). Later submissions fail with `TaskError::Closed`.
    ///
    /// # Errors
    /// Transport errors.
    pub fn close(&self) -> Result<()> {
        unit(self.r.call(Op::PoolClose)?)
    }

    /// Kills the workers at once; unfinished tasks fail with `TaskError::Terminated`
    /// (Python's `terminate`, and what leaving `with pool:` does).
    ///
    /// # Errors
    /// Transport errors.
    pub fn terminate(&self) -> Result<()> {
        unit(self.r.call(Op::PoolTerminate)?)
    }

    /// Waits until the workers have finished the queued work and exited (Python's
    /// `join`; it implies [`close`](Self::close), where Python raises if `close` was not
    /// called).
    ///
    /// # Errors
    /// Transport errors.
    pub fn join(&self) -> Result<()> {
        unit(self.r.call(Op::PoolJoin)?)
    }

    /// The pids of the pool's current workers (processes of the server's machine; they
    /// change as workers are replaced).
    ///
    /// # Errors
    /// Transport errors.
    pub fn pids(&self) -> Result<Vec<i32>> {
        match self.r.call(Op::PoolPids)? {
            Reply::Ints(v) => Ok(v.into_iter().map(|p| p as i32).collect()),
            other => Err(unexpected(&other)),
        }
    }
}

impl<R: Decode> AsyncResultProxy<R> {
    fn fetch(&self, timeout: Option<Duration>) -> Result<R> {
        let v = val(self.r.call(Op::PoolGet {
            timeout: micros(timeout),
        })?)?;
        self.r.dec(v)
    }

    /// Waits for the result (Python's `get()`); it can be fetched again.
    ///
    /// # Errors
    /// [`ManagerError::Task`] (an `apply_async`) or [`ManagerError::Map`] (a map) if the
    /// work failed; transport errors.
    pub fn get(&self) -> Result<R> {
        self.fetch(None)
    }

    /// Waits at most `timeout` for the result (Python's `get(timeout)`).
    ///
    /// # Errors
    /// [`ManagerError::Timeout`] if it is not ready by then (the work goes on);
    /// otherwise as [`get`](Self::get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<R> {
        self.fetch(Some(timeout))
    }

    /// Waits until the work has finished (Python's `wait()`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn wait(&self) -> Result<()> {
        self.wait_for(None).map(|_| ())
    }

    /// Waits at most `timeout`; whether the work has finished (Python's
    /// `wait(timeout)` followed by `ready()`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.wait_for(Some(timeout))
    }

    fn wait_for(&self, timeout: Option<Duration>) -> Result<bool> {
        boolean(self.r.call(Op::Wait {
            timeout: micros(timeout),
            owner: 0,
        })?)
    }

    /// Whether the work has finished (Python's `ready()`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn ready(&self) -> Result<bool> {
        boolean(self.r.call(Op::PoolReady)?)
    }

    /// Whether it finished without error; `None` while it runs (where Python's
    /// `successful()` raises `ValueError`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn successful(&self) -> Result<Option<bool>> {
        Ok(match int(self.r.call(Op::PoolSuccessful)?)? {
            n if n < 0 => None,
            0 => Some(false),
            _ => Some(true),
        })
    }
}

/// The results of [`PoolProxy::imap`] / [`PoolProxy::imap_unordered`] (Python's
/// `IMapIterator` through a manager): each `next` fetches one result from the server,
/// waiting for it. Dropping it releases the server's iterator (items not yet started
/// are cancelled).
///
/// After a transport error (the server is gone) the iterator ends.
pub struct IMapProxy<R> {
    r: Arc<RefInner>,
    done: bool,
    _t: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for IMapProxy<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IMapProxy")
            .field("id", &self.r.id)
            .field("done", &self.done)
            .finish()
    }
}

impl<R: Decode> IMapProxy<R> {
    fn fetch(&mut self, timeout: Option<Duration>) -> Option<Result<R>> {
        if self.done {
            return None;
        }
        let r = self.r.call(Op::PoolNext {
            timeout: micros(timeout),
        });
        match r {
            Ok(Reply::MaybeVal(None)) => {
                self.done = true;
                None
            }
            Ok(Reply::Val(v)) => Some(self.r.dec(v)),
            Ok(other) => {
                self.done = true;
                Some(Err(unexpected(&other)))
            }
            Err(
                e @ (ManagerError::ServerGone | ManagerError::Io(_) | ManagerError::NoSuchObject),
            ) => {
                self.done = true;
                Some(Err(e))
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// The next result, waiting at most `timeout` (Python's `next(timeout)`): `None` at
    /// the end, `Some(Err(ManagerError::Timeout))` if none arrived in time (the iterator
    /// stays usable), `Some(Err(ManagerError::Task(_)))` for an item that failed.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R>> {
        self.fetch(Some(timeout))
    }
}

impl<R: Decode> Iterator for IMapProxy<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        self.fetch(None)
    }
}

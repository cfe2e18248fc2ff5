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
            last: true,
        })))
    }

    /// Starts an iterator over `items`: its first batch travels with the request, the
    /// others with the requests for results.
    fn stream<I, R>(
        &self,
        (tramp, func, sig): (u64, u64, Sig),
        what: PoolWhat,
        mut items: I,
        chunksize: usize,
    ) -> Result<IMapProxy<I, R>>
    where
        I: Iterator,
        I::Item: Message,
    {
        let chunksize = chunksize.max(1);
        let batch = batch_len(chunksize);
        let first: Vec<I::Item> = items.by_ref().take(batch).collect();
        let last = first.len() < batch;
        let sent = first.len() as u64;
        let r = self.r.call(Op::PoolRun(Box::new(PoolRun {
            tramp,
            func,
            sig,
            what,
            args: enc(&first)?,
            chunksize: chunksize as u64,
            wait: false,
            last,
        })))?;
        drop(first);
        Ok(IMapProxy {
            r: self.made(r)?,
            input: (!last).then_some(items),
            sent,
            received: 0,
            batch,
            done: false,
            _t: PhantomData,
        })
    }

    /// Runs `callback` or `error_callback` (exactly one of them, once) with the
    /// outcome of the result object that `r` made, on a thread of this process.
    fn with_callbacks<T>(
        &self,
        r: Reply,
        callback: impl FnOnce(T) + Send + 'static,
        error_callback: impl FnOnce(ManagerError) + Send + 'static,
    ) -> Result<AsyncResultProxy<T>>
    where
        T: Decode + Send + 'static,
    {
        let res = AsyncResultProxy::<T>::from_ref(self.made(r)?);
        let waiter = res.clone();
        let pool = Arc::clone(&self.r);
        pool.cbs.start();
        waiter.r.cbs.start();
        /// Marks the callback done however it ends.
        struct Done(Arc<RefInner>, Arc<RefInner>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.1.cbs.finish();
                self.0.cbs.finish();
            }
        }
        let spawned = std::thread::Builder::new()
            .name("mproc-manager-callback".into())
            .spawn(move || {
                let done = Done(pool, Arc::clone(&waiter.r));
                done.0.cbs.enter();
                done.1.cbs.enter();
                let got = waiter.fetch(None);
                drop(waiter);
                // A panicking callback is its own failure: the proxy and the pool go on
                // (the panic hook has reported it).
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || match got {
                    Ok(v) => callback(v),
                    Err(e) => error_callback(e),
                }));
                drop(done);
            });
        if let Err(e) = spawned {
            // The thread never ran: nothing is left to wait for.
            res.r.cbs.finish();
            self.r.cbs.finish();
            return Err(ManagerError::Io(e));
        }
        Ok(res)
    }

    /// A handle on the object a submission made in the server.
    fn made(&self, r: Reply) -> Result<Arc<RefInner>> {
        match r {
            Reply::Id(id) => Ok(Arc::new(RefInner {
                session: Arc::clone(&self.r.session),
                id,
                cbs: Default::default(),
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

    /// Python's `imap`: the results in input order, each fetched from the server as it
    /// is needed (while later items still run). The input is read lazily, as the
    /// results are: it travels to the server in batches, a batch ahead of the results
    /// fetched, so an endless iterator works and neither side holds more than a few
    /// batches (of `max(64, 4 × chunksize)` items).
    ///
    /// ```
    /// use mproc_manager::Manager;
    /// fn double(x: u32) -> u32 { 2 * x }
    /// let m = Manager::start().unwrap();
    /// let pool = m.pool(2).unwrap();
    /// let got: Vec<u32> = pool.imap(double, 0..4u32).unwrap().map(Result::unwrap).collect();
    /// assert_eq!(got, [0, 2, 4, 6]);
    /// // An endless input: only what `take` needs (and a batch or two ahead) runs.
    /// let firsts: Vec<u32> = pool.imap(double, 0..).unwrap().take(3).map(Result::unwrap).collect();
    /// assert_eq!(firsts, [0, 2, 4]);
    /// ```
    ///
    /// # Errors
    /// As [`apply_async`](Self::apply_async); a failed item is that item's
    /// [`ManagerError::Task`].
    pub fn imap<I, A, R>(&self, f: fn(A) -> R, items: I) -> Result<IMapProxy<I::IntoIter, R>>
    where
        I: IntoIterator<Item = A>,
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.imap_chunked(f, items, 1)
    }

    /// [`imap`](Self::imap) handing `chunksize` items to a worker at a time (Python's
    /// `imap(f, items, chunksize)`).
    ///
    /// # Errors
    /// As [`imap`](Self::imap).
    pub fn imap_chunked<I, A, R>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
    ) -> Result<IMapProxy<I::IntoIter, R>>
    where
        I: IntoIterator<Item = A>,
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        let refs = crate::sys::task_refs(f);
        self.stream(refs, PoolWhat::Imap, items.into_iter(), chunksize)
    }

    /// Python's `imap_unordered`: as [`imap`](Self::imap), results in the order they
    /// finish.
    ///
    /// # Errors
    /// As [`imap`](Self::imap).
    pub fn imap_unordered<I, A, R>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> Result<IMapProxy<I::IntoIter, R>>
    where
        I: IntoIterator<Item = A>,
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.imap_unordered_chunked(f, items, 1)
    }

    /// [`imap_unordered`](Self::imap_unordered) handing `chunksize` items to a worker
    /// at a time.
    ///
    /// # Errors
    /// As [`imap`](Self::imap).
    pub fn imap_unordered_chunked<I, A, R>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
    ) -> Result<IMapProxy<I::IntoIter, R>>
    where
        I: IntoIterator<Item = A>,
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        let refs = crate::sys::task_refs(f);
        self.stream(refs, PoolWhat::ImapUnordered, items.into_iter(), chunksize)
    }

    /// Lazily applies `f` to every tuple of `items`, results in input order, `chunksize`
    /// tuples at a time (mproc-pool's `Pool::istarmap`; Python's `imap` over
    /// `itertools.starmap`). The input travels as [`imap`](Self::imap)'s does.
    ///
    /// ```
    /// use mproc_manager::Manager;
    /// fn mul(a: u64, b: u64) -> u64 { a * b }
    /// let m = Manager::start().unwrap();
    /// let pool = m.pool(2).unwrap();
    /// let got: Vec<u64> = pool.istarmap(mul, [(2, 3), (4, 5)], 1).unwrap().map(Result::unwrap).collect();
    /// assert_eq!(got, [6, 20]);
    /// ```
    ///
    /// # Errors
    /// As [`imap`](Self::imap); a closure is refused (`BadRequest`), as by
    /// [`starmap`](Self::starmap).
    pub fn istarmap<I, F, Args>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<IMapProxy<I::IntoIter, F::Output>>
    where
        I: IntoIterator<Item = Args>,
        F: StarFn<Args>,
        Args: Message + Send + 'static,
        F::Output: Message + Send + 'static,
    {
        let refs = crate::sys::star_refs(f);
        self.stream(refs, PoolWhat::Istarmap, items.into_iter(), chunksize)
    }

    /// Submits `f(args)` with Python's `callback` and `error_callback` (as mproc-pool's
    /// `Pool::apply_async_with`): exactly one of them runs, once, in *this* process (as
    /// Python runs them in the process that called `apply_async`), on a thread of its
    /// own and under no lock of the proxy's: a callback may use the pool, the manager
    /// or the result. `error_callback` gets the task's failure ([`ManagerError::Task`]),
    /// or the transport error that kept the outcome from arriving. In this process the
    /// result's `get`, `wait` and `ready` and the pool's [`join`](Self::join) report the
    /// work finished only once its callback has returned, as Python's do. A callback
    /// that panics is reported by the panic hook and goes no further.
    ///
    /// ```
    /// use mproc_manager::Manager;
    /// use std::sync::mpsc;
    /// fn square(x: u64) -> u64 { x * x }
    /// let m = Manager::start().unwrap();
    /// let pool = m.pool(1).unwrap();
    /// let (tx, rx) = mpsc::channel();
    /// let r = pool.apply_async_with(square, 7, move |v| tx.send(v).unwrap(), |e| panic!("{e}")).unwrap();
    /// assert_eq!(r.get().unwrap(), 49);
    /// assert_eq!(rx.try_recv().unwrap(), 49); // the callback ran before `get` returned
    /// ```
    ///
    /// # Errors
    /// As [`apply_async`](Self::apply_async); [`ManagerError::Io`] if no thread could be
    /// started for the callbacks (the task was submitted; neither callback runs).
    pub fn apply_async_with<A, R>(
        &self,
        f: fn(A) -> R,
        args: A,
        callback: impl FnOnce(R) + Send + 'static,
        error_callback: impl FnOnce(ManagerError) + Send + 'static,
    ) -> Result<AsyncResultProxy<R>>
    where
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        let refs = crate::sys::task_refs(f);
        let r = self.run(refs, PoolWhat::Apply, enc(&args)?, 0, false)?;
        self.with_callbacks(r, callback, error_callback)
    }

    /// Submits a map with Python's `callback` (every result, in input order) and
    /// `error_callback` (the first failure, [`ManagerError::Map`]); they run as
    /// [`apply_async_with`](Self::apply_async_with)'s do.
    ///
    /// # Errors
    /// As [`apply_async_with`](Self::apply_async_with).
    pub fn map_async_with<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        callback: impl FnOnce(Vec<R>) + Send + 'static,
        error_callback: impl FnOnce(ManagerError) + Send + 'static,
    ) -> Result<AsyncResultProxy<Vec<R>>>
    where
        A: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        let refs = crate::sys::task_refs(f);
        let r = self.run(refs, PoolWhat::Map, Self::items(items)?, 0, false)?;
        self.with_callbacks(r, callback, error_callback)
    }

    /// Submits a starmap with Python's `callback` and `error_callback`; see
    /// [`map_async_with`](Self::map_async_with).
    ///
    /// # Errors
    /// As [`apply_async_with`](Self::apply_async_with).
    pub fn starmap_async_with<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
        callback: impl FnOnce(Vec<F::Output>) + Send + 'static,
        error_callback: impl FnOnce(ManagerError) + Send + 'static,
    ) -> Result<AsyncResultProxy<Vec<F::Output>>>
    where
        F: StarFn<Args>,
        Args: Message + Send + 'static,
        F::Output: Message + Send + 'static,
    {
        let refs = crate::sys::star_refs(f);
        let r = self.run(refs, PoolWhat::Starmap, Self::items(items)?, 0, false)?;
        self.with_callbacks(r, callback, error_callback)
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
    /// called), and until this process's callbacks for the pool have run (but for a
    /// callback's own thread).
    ///
    /// # Errors
    /// Transport errors.
    pub fn join(&self) -> Result<()> {
        unit(self.r.call(Op::PoolJoin)?)?;
        self.r.wait_callbacks();
        Ok(())
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
        let r = self.r.call(Op::PoolGet {
            timeout: micros(timeout),
        });
        if matches!(r, Ok(_) | Err(ManagerError::Task(_) | ManagerError::Map(_))) {
            // The work is done: its callback, if any, runs before the outcome is seen.
            self.r.wait_callbacks();
        }
        self.r.dec(val(r?)?)
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
        let done = boolean(self.r.call(Op::Wait {
            timeout: micros(timeout),
            owner: 0,
        })?)?;
        if done {
            self.r.wait_callbacks();
        }
        Ok(done)
    }

    /// Whether the work has finished (Python's `ready()`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn ready(&self) -> Result<bool> {
        Ok(boolean(self.r.call(Op::PoolReady)?)? && self.r.callbacks_idle())
    }

    /// Whether it finished without error; `None` while it runs (where Python's
    /// `successful()` raises `ValueError`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn successful(&self) -> Result<Option<bool>> {
        Ok(match int(self.r.call(Op::PoolSuccessful)?)? {
            n if n < 0 => None,
            _ if !self.r.callbacks_idle() => None,
            0 => Some(false),
            _ => Some(true),
        })
    }
}

/// Items of an `imap`'s input sent per batch: at most the pool's own window over an
/// iterator's input (`max(256, 4 × processes × chunksize)`), so that a batch is handed
/// to the workers whole as soon as it arrives.
fn batch_len(chunksize: usize) -> usize {
    chunksize.saturating_mul(4).max(64)
}

/// The results of [`PoolProxy::imap`], [`PoolProxy::imap_unordered`] and
/// [`PoolProxy::istarmap`] (Python's `IMapIterator` through a manager): each `next`
/// fetches one result from the server, waiting for it, and sends the next batch of the
/// input `I` along when the server holds less than a batch of it. Dropping it releases
/// the server's iterator: its batches are dropped and the items not yet started are
/// cancelled; the rest of the input is never read.
///
/// After a transport error (the server is gone), or an input batch that cannot be
/// encoded (that error is the last item), the iterator ends.
pub struct IMapProxy<I, R> {
    r: Arc<RefInner>,
    /// The input not sent yet (`None` once it has all been read).
    input: Option<I>,
    sent: u64,
    received: u64,
    batch: usize,
    done: bool,
    _t: PhantomData<fn() -> R>,
}

impl<I, R> fmt::Debug for IMapProxy<I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IMapProxy")
            .field("id", &self.r.id)
            .field("sent", &self.sent)
            .field("received", &self.received)
            .field("done", &self.done)
            .finish()
    }
}

impl<I, R> IMapProxy<I, R>
where
    I: Iterator,
    I::Item: Message,
    R: Decode,
{
    /// The batch of input to send with the next request, if the server is short of one,
    /// and whether the input ends there.
    fn more(&mut self) -> Result<(Option<Box<Val>>, bool)> {
        let Some(input) = self.input.as_mut() else {
            return Ok((None, false));
        };
        if self.sent.saturating_sub(self.received) > self.batch as u64 {
            return Ok((None, false));
        }
        let items: Vec<I::Item> = input.by_ref().take(self.batch).collect();
        let last = items.len() < self.batch;
        if last {
            self.input = None;
        }
        self.sent += items.len() as u64;
        if items.is_empty() {
            return Ok((None, true));
        }
        Ok((Some(Box::new(enc(&items)?)), last))
    }

    fn fetch(&mut self, timeout: Option<Duration>) -> Option<Result<R>> {
        if self.done {
            return None;
        }
        let (more, last) = match self.more() {
            Ok(m) => m,
            Err(e) => {
                self.done = true;
                self.input = None;
                return Some(Err(e));
            }
        };
        let r = self.r.call(Op::PoolNext {
            timeout: micros(timeout),
            more,
            last,
        });
        match r {
            Ok(Reply::MaybeVal(None)) => {
                self.done = true;
                None
            }
            Ok(Reply::Val(v)) => {
                self.received += 1;
                Some(self.r.dec(v))
            }
            Ok(other) => {
                self.done = true;
                Some(Err(unexpected(&other)))
            }
            Err(e @ (ManagerError::Task(_) | ManagerError::Map(_))) => {
                self.received += 1;
                Some(Err(e))
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

impl<I, R> Iterator for IMapProxy<I, R>
where
    I: Iterator,
    I::Item: Message,
    R: Decode,
{
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        self.fetch(None)
    }
}

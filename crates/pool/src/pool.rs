//! [`Pool`]: Python's `multiprocessing.Pool`, built with [`PoolBuilder`].
use crate::dispatch::{self, Chunk, Config, Item, Packed, Shared, StateBlob};
use crate::error::{MapError, PoolError, TaskError};
use crate::func::FnRef;
use crate::job::{Job, Payload, Raw, Sink};
use crate::result::{AsyncResult, IMap, MapResult, collect_each, collect_map};
use crate::star::{self, StarFn};
use mproc_core::logger::Level;
use mproc_core::mp_log;
use mproc_core::{Encode, Message};
use mproc_spawn::StartMethod;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Python's default chunk size for `map`: `divmod(len, 4 * processes)`, plus one if
/// there is a remainder (at least 1).
pub fn default_chunksize(len: usize, processes: usize) -> usize {
    let d = 4 * processes.max(1);
    let (q, r) = (len / d, len % d);
    (if r > 0 { q + 1 } else { q }).max(1)
}

/// Options of a [`Pool`] (Python: `Pool(processes, initializer, initargs,
/// maxtasksperchild, context)`), plus a per-task time limit.
pub struct PoolBuilder {
    processes: Option<usize>,
    init: Option<Result<(FnRef, Payload), TaskError>>,
    max_tasks: u64,
    start_method: Option<StartMethod>,
    time_limit: Option<Duration>,
    ctrl_c: bool,
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("max_tasks", &self.max_tasks)
            .field("start_method", &self.start_method)
            .field("time_limit", &self.time_limit)
            .finish_non_exhaustive()
    }
}

impl PoolBuilder {
    /// Number of worker processes (default: the number of CPUs, `os.cpu_count()`).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// `initializer(initargs)` runs once in every worker before its first task
    /// (handles such as locks may be among the arguments). If it panics, the pool is
    /// broken: pending and later tasks fail with [`TaskError::Broken`].
    pub fn initializer<I: Message>(mut self, f: fn(I), args: I) -> Self {
        self.init = Some(Payload::encode(&args).map(|p| (FnRef::init(f), p)));
        self
    }

    /// Python's `maxtasksperchild` (`max_tasks_per_child` of `ProcessPoolExecutor`): a
    /// worker exits after this many tasks (items) and a fresh one takes its place. `0`
    /// means never.
    #[doc(alias = "max_tasks_per_child")]
    pub fn maxtasksperchild(mut self, n: u64) -> Self {
        self.max_tasks = n;
        self
    }

    /// The start method of the workers (default: mproc-spawn's default).
    pub fn start_method(mut self, m: StartMethod) -> Self {
        self.start_method = Some(m);
        self
    }

    /// A hard time limit per task (billiard's `time_limit`): a task still running after
    /// `limit` has its worker killed and replaced, and fails with
    /// [`TaskError::TimedOut`].
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// Ctrl-C (SIGINT) terminates this pool — workers killed and reaped — and then ends
    /// the program as SIGINT's default action does (CPython's Pool hangs or leaks workers
    /// here). Off by default: SIGINT then keeps its default action, which ends the
    /// program at once, and the workers die with it (parent-death signal). Turn it on
    /// when other code in the program handles SIGINT: it installs a process-wide
    /// signal-hook action, which stays for the life of the process and always ends in
    /// SIGINT's default action.
    pub fn terminate_on_ctrl_c(mut self, on: bool) -> Self {
        self.ctrl_c = on;
        self
    }

    /// Starts the workers of an [`Executor`](crate::Executor) with these options.
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    pub fn build_executor(self) -> Result<crate::Executor, PoolError> {
        crate::Executor::from_builder(self)
    }

    /// Starts the workers.
    ///
    /// # Errors
    /// [`PoolError::InvalidArgument`] for zero processes or initializer arguments that
    /// do not encode; [`PoolError::Spawn`] if a worker cannot be started.
    pub fn build(self) -> Result<Pool, PoolError> {
        let processes = self
            .processes
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if processes == 0 {
            return Err(PoolError::InvalidArgument("processes must be at least 1"));
        }
        let init = match self.init {
            None => None,
            Some(Ok(i)) => Some(i),
            Some(Err(_)) => {
                return Err(PoolError::InvalidArgument(
                    "initializer arguments could not be encoded",
                ));
            }
        };
        let cfg = Config {
            processes,
            init,
            max_tasks: self.max_tasks,
            start_method: self.start_method,
            time_limit: self.time_limit,
        };
        let shared = Arc::new(Shared::new()?);
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = shared.clone();
        // Workers are started from this long-lived thread: a child's parent-death
        // signal follows the thread that started it.
        let thread = std::thread::Builder::new()
            .name("mproc-pool".into())
            .spawn(move || dispatch::run(s2, cfg, tx))?;
        match rx.recv() {
            Ok(Ok(())) => {
                let pool = Pool {
                    shared,
                    processes,
                    max_tasks: self.max_tasks,
                    thread: Mutex::new(Some(thread)),
                };
                if self.ctrl_c {
                    // On failure, dropping `pool` terminates its workers.
                    crate::ctrl_c::enroll(&pool.shared)?;
                }
                Ok(pool)
            }
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(PoolError::Spawn(e))
            }
            Err(_) => {
                let _ = thread.join();
                Err(PoolError::Spawn(
                    "the pool thread ended during start-up".into(),
                ))
            }
        }
    }
}

static NEXT_STATE: AtomicU64 = AtomicU64::new(1);

/// A pool of worker processes (Python's `multiprocessing.Pool`).
///
/// Task functions are plain `fn`s (no captures) whose argument and result types are
/// rkyv messages ([`Message`]). Every method takes `&self`; a `Pool` can be shared
/// between threads.
///
/// Dropping a pool terminates it, as leaving Python's `with Pool() as p:` block does:
/// workers are killed and unfinished tasks fail with [`TaskError::Terminated`]. To let
/// submitted work finish first, call [`Pool::close`] and [`Pool::join`].
///
/// ```no_run
/// use mproc_pool::Pool;
/// fn square(x: u64) -> u64 { x * x }
/// let pool = Pool::new(4).unwrap();
/// assert_eq!(pool.map(square, 0..6u64).unwrap(), vec![0, 1, 4, 9, 16, 25]);
/// ```
pub struct Pool {
    shared: Arc<Shared>,
    processes: usize,
    max_tasks: u64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes)
            .field("pids", &self.pids())
            .finish()
    }
}

impl Pool {
    /// A pool of `processes` workers with default options.
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    pub fn new(processes: usize) -> Result<Pool, PoolError> {
        Pool::builder().processes(processes).build()
    }

    /// A builder for the other options.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            processes: None,
            init: None,
            max_tasks: 0,
            start_method: None,
            time_limit: None,
            ctrl_c: false,
        }
    }

    /// The number of workers.
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// The pids of the current workers (they change as workers are replaced).
    pub fn pids(&self) -> Vec<i32> {
        self.shared.lock().pids.clone()
    }

    fn submit_items<A: Encode>(
        &self,
        sink: Arc<dyn Sink>,
        func: FnRef,
        state: Option<Arc<StateBlob>>,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> usize {
        // Chunks of several items travel as one `Vec<A>` message each way (one encode,
        // one decode per chunk); not with maxtasksperchild, which may split a chunk.
        let pack = chunksize > 1 && func.packed.is_some() && state.is_none() && self.max_tasks == 0;
        let mut chunks = Vec::new();
        let mut bytes = 0;
        let mut vals: Vec<A> = Vec::new();
        let mut it = items.into_iter();
        // Index of the next item read.
        let mut next = 0;
        loop {
            // Hand over what is encoded every so often, so that workers start on the
            // first chunks while later ones are still being encoded.
            if bytes >= 64 * 1024 || chunks.len() >= 4096 {
                self.shared.submit(std::mem::take(&mut chunks));
                bytes = 0;
            }
            let base = next;
            if pack {
                vals.clear();
                vals.extend(it.by_ref().take(chunksize));
                let n = vals.len();
                if n == 0 {
                    break;
                }
                next += n;
                match Payload::encode_chunk(&vals) {
                    Ok(payload) => {
                        bytes += payload.bytes.len();
                        chunks.push(Chunk {
                            sink: sink.clone(),
                            func,
                            state: None,
                            items: Vec::new(),
                            packed: Some(Packed {
                                base,
                                n,
                                payload: Arc::new(payload),
                                skip: Vec::new(),
                                retries: 0,
                            }),
                        })
                    }
                    Err(e) => sink.complete_many(
                        (base..base + n).map(|i| (i, Raw::err(e.clone()))).collect(),
                    ),
                }
            } else {
                let mut cur = Vec::with_capacity(chunksize);
                for a in it.by_ref().take(chunksize) {
                    let index = next;
                    next += 1;
                    match Payload::encode(&a) {
                        Ok(payload) => {
                            bytes += payload.bytes.len() + 64;
                            cur.push(Item {
                                index,
                                payload,
                                retries: 0,
                            })
                        }
                        Err(e) => sink.complete(index, Raw::err(e)),
                    }
                }
                if next == base {
                    break;
                }
                if !cur.is_empty() {
                    chunks.push(Chunk {
                        sink: sink.clone(),
                        func,
                        state: state.clone(),
                        items: cur,
                        packed: None,
                    });
                }
            }
        }
        self.shared.submit(chunks);
        next
    }

    fn map_job<A: Encode>(
        &self,
        func: FnRef,
        state: Option<Arc<StateBlob>>,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
        fail_fast: bool,
        hook: Option<crate::job::DoneHook>,
    ) -> Arc<Job> {
        let mut it = items.into_iter();
        // An input that knows its length (a range, a vector) is chunked as it is read;
        // any other is collected first, as Python's map makes a list of its iterable.
        let (lo, hi) = it.size_hint();
        let collected: Option<Vec<A>> = (hi != Some(lo)).then(|| it.by_ref().collect());
        let n = collected.as_ref().map_or(lo, Vec::len);
        let chunksize = chunksize.unwrap_or_else(|| default_chunksize(n, self.processes));
        let job = Job::new(n, fail_fast);
        job.set_driver(&self.shared);
        if let Some(h) = hook {
            job.on_done(h);
        }
        let sink: Arc<dyn Sink> = job.clone();
        let seen = match collected {
            Some(v) => self.submit_items(sink.clone(), func, state, v, chunksize.max(1)),
            None => self.submit_items(sink.clone(), func, state, it.take(n), chunksize.max(1)),
        };
        if seen < n {
            // The input ended before the length its size_hint promised.
            let e = TaskError::Codec {
                message: format!("the input ended after {seen} of the {n} items it announced"),
            };
            sink.complete_many((seen..n).map(|i| (i, Raw::err(e.clone()))).collect());
        }
        job
    }

    /// Runs `f(args)` in a worker and waits for the result (Python: `apply`).
    pub fn apply<A: Message, R: Message>(&self, f: fn(A) -> R, args: A) -> Result<R, TaskError> {
        self.apply_async(f, args).get()
    }

    /// Submits `f(args)` (Python: `apply_async`).
    pub fn apply_async<A: Message, R: Message>(&self, f: fn(A) -> R, args: A) -> AsyncResult<R> {
        let job = self.map_job::<A>(FnRef::plain(f), None, vec![args], Some(1), true, None);
        AsyncResult::new(job)
    }

    /// Submits `f(args)` with Python's `callback` and `error_callback`: one of them runs
    /// in the parent when the task finishes (before `get()` returns), on the pool's
    /// thread or on a thread waiting in `get()`, outside the dispatcher: a callback may
    /// use this pool (`apply`, `map`, waiting on its own result) or terminate it. Keep
    /// them short: they hold up the delivery of other results.
    pub fn apply_async_with<A, R>(
        &self,
        f: fn(A) -> R,
        args: A,
        callback: impl FnOnce(R) + Send + 'static,
        error_callback: impl FnOnce(TaskError) + Send + 'static,
    ) -> AsyncResult<R>
    where
        A: Message,
        R: Message,
    {
        let hook = Box::new(move |job: &Job| {
            let r = crate::result::first_outcome::<R>(&job.lock().outcomes);
            match r {
                Ok(v) => callback(v),
                Err(e) => error_callback(e),
            }
        });
        let job = self.map_job::<A>(FnRef::plain(f), None, vec![args], Some(1), true, Some(hook));
        AsyncResult::new(job)
    }

    /// Applies `f` to every item, in parallel, and returns the results in input order
    /// (Python: `map`). The first failure to arrive is returned at once, with its index.
    pub fn map<A: Message, R: Message>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>, MapError> {
        self.map_async_chunked(f, items, None).get()
    }

    /// [`Pool::map`] with an explicit `chunksize` (items handed to a worker at a time).
    pub fn map_chunked<A: Message, R: Message>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>, MapError> {
        self.map_async_chunked(f, items, Some(chunksize)).get()
    }

    /// Every item's own outcome, in input order: a failed item does not hide the others.
    pub fn map_results<A: Message, R: Message>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Vec<Result<R, TaskError>> {
        let job = self.map_job::<A>(FnRef::plain(f), None, items, None, false, None);
        job.wait(mproc_core::Deadline::never());
        collect_each(&job)
    }

    /// Submits a map (Python: `map_async`).
    pub fn map_async<A: Message, R: Message>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> MapResult<R> {
        self.map_async_chunked(f, items, None)
    }

    /// Submits a map with an explicit chunk size (`None`: Python's default rule).
    pub fn map_async_chunked<A: Message, R: Message>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> MapResult<R> {
        MapResult::new(self.map_job::<A>(FnRef::plain(f), None, items, chunksize, true, None))
    }

    /// Submits a map with Python's `callback` (all results, in order) and
    /// `error_callback` (the first failure); see [`Pool::apply_async_with`].
    pub fn map_async_with<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        callback: impl FnOnce(Vec<R>) + Send + 'static,
        error_callback: impl FnOnce(MapError) + Send + 'static,
    ) -> MapResult<R>
    where
        A: Message,
        R: Message,
    {
        let hook = Box::new(move |job: &Job| match collect_map::<R>(job) {
            Ok(v) => callback(v),
            Err(e) => error_callback(e),
        });
        MapResult::new(self.map_job::<A>(FnRef::plain(f), None, items, None, true, Some(hook)))
    }

    /// Python's `map(functools.partial(f, state), items)`: `f(&state, item)` for every
    /// item. `state` is encoded once, sent once to each worker that needs it and decoded
    /// there once, however many items follow.
    pub fn map_with<S, A, R>(
        &self,
        state: S,
        f: fn(&S, A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>, MapError>
    where
        S: Message + Send + 'static,
        A: Message,
        R: Message,
    {
        let payload = match Payload::encode(&state) {
            Ok(p) => p,
            Err(error) => return Err(MapError { index: 0, error }),
        };
        let blob = Arc::new(StateBlob {
            id: NEXT_STATE.fetch_add(1, Ordering::Relaxed),
            payload,
        });
        let job = self.map_job::<A>(FnRef::with_state(f), Some(blob), items, None, true, None);
        job.wait(mproc_core::Deadline::never());
        collect_map(&job)
    }

    /// Python's `starmap`: `f(a, b, …)` for every tuple `(a, b, …)` of `items`, results in
    /// input order. `f` is any `fn` item (not a closure) of 1 to 12
    /// arguments; see [`StarFn`](crate::StarFn).
    ///
    /// ```no_run
    /// # use mproc_pool::Pool;
    /// fn mul(a: u64, b: u64) -> u64 {
    ///     a * b
    /// }
    /// fn affine(a: f64, x: f64, b: f64) -> f64 {
    ///     a * x + b
    /// }
    /// let pool = Pool::new(2).unwrap();
    /// assert_eq!(pool.starmap(mul, [(2, 3), (4, 5)]).unwrap(), vec![6, 20]);
    /// assert_eq!(pool.starmap(affine, [(2.0, 1.0, 0.5)]).unwrap(), vec![2.5]);
    /// ```
    pub fn starmap<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
    ) -> Result<Vec<F::Output>, MapError>
    where
        F: StarFn<Args>,
        Args: Message,
        F::Output: Message,
    {
        self.starmap_async_chunked(f, items, None).get()
    }

    /// [`Pool::starmap`], submitted without waiting (Python: `starmap_async`).
    pub fn starmap_async<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
    ) -> MapResult<F::Output>
    where
        F: StarFn<Args>,
        Args: Message,
        F::Output: Message,
    {
        self.starmap_async_chunked(f, items, None)
    }

    /// [`Pool::starmap`] with an explicit chunk size.
    pub fn starmap_chunked<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
        chunksize: usize,
    ) -> Result<Vec<F::Output>, MapError>
    where
        F: StarFn<Args>,
        Args: Message,
        F::Output: Message,
    {
        self.starmap_async_chunked(f, items, Some(chunksize)).get()
    }

    /// [`Pool::starmap_async`] with an explicit chunk size (`None`: Python's default).
    pub fn starmap_async_chunked<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
        chunksize: Option<usize>,
    ) -> MapResult<F::Output>
    where
        F: StarFn<Args>,
        Args: Message,
        F::Output: Message,
    {
        self.map_async_chunked(star::as_task(f), items, chunksize)
    }

    /// [`Pool::starmap_async`] with Python's `callback` and `error_callback`; see
    /// [`Pool::map_async_with`].
    pub fn starmap_async_with<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
        callback: impl FnOnce(Vec<F::Output>) + Send + 'static,
        error_callback: impl FnOnce(MapError) + Send + 'static,
    ) -> MapResult<F::Output>
    where
        F: StarFn<Args>,
        Args: Message,
        F::Output: Message,
    {
        self.map_async_with(star::as_task(f), items, callback, error_callback)
    }

    /// Lazily applies `f` to every tuple of `items` (Python: `imap` over
    /// `itertools.starmap`), in input order, `chunksize` tuples at a time.
    pub fn istarmap<I, F, Args>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> IMap<I::IntoIter, F::Output>
    where
        I: IntoIterator<Item = Args>,
        F: StarFn<Args>,
        Args: Message,
        F::Output: Message,
    {
        self.imap_chunked(star::as_task(f), items, chunksize)
    }

    /// Lazily maps `f` over `items`, yielding results in input order (Python: `imap`,
    /// chunksize 1). See [`IMap`] for the bounded window over the input.
    pub fn imap<I, A, R>(&self, f: fn(A) -> R, items: I) -> IMap<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Message,
        R: Message,
    {
        self.imap_chunked(f, items, 1)
    }

    /// [`Pool::imap`] with an explicit chunk size.
    pub fn imap_chunked<I, A, R>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
    ) -> IMap<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Message,
        R: Message,
    {
        self.imap_inner(f, items, chunksize, true)
    }

    /// As [`Pool::imap`], yielding results as they finish (Python: `imap_unordered`).
    pub fn imap_unordered<I, A, R>(&self, f: fn(A) -> R, items: I) -> IMap<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Message,
        R: Message,
    {
        self.imap_unordered_chunked(f, items, 1)
    }

    /// [`Pool::imap_unordered`] with an explicit chunk size.
    pub fn imap_unordered_chunked<I, A, R>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
    ) -> IMap<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Message,
        R: Message,
    {
        self.imap_inner(f, items, chunksize, false)
    }

    fn imap_inner<I, A, R>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
        ordered: bool,
    ) -> IMap<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Message,
        R: Message,
    {
        IMap::new(
            self.shared.clone(),
            self.processes,
            items.into_iter(),
            FnRef::plain(f),
            chunksize,
            ordered,
            self.max_tasks == 0,
        )
    }

    /// No more tasks will be submitted; workers exit once the queued ones are done
    /// (Python: `close`). Later submissions fail with [`TaskError::Closed`].
    pub fn close(&self) {
        mp_log!(Level::DEBUG, "closing pool");
        self.close_quietly();
    }

    fn close_quietly(&self) {
        self.shared.lock().closed = true;
        self.shared.wake();
    }

    /// Kills the workers at once; unfinished tasks fail with [`TaskError::Terminated`],
    /// later submissions with [`TaskError::Closed`].
    /// Returns promptly however much work is pending (Python: `terminate`).
    pub fn terminate(&self) {
        mp_log!(Level::DEBUG, "terminating pool");
        self.shared.lock().terminate = true;
        self.shared.wake();
        self.join_thread();
    }

    /// Waits for the workers to finish the queued work and exit (Python: `join`).
    /// Implies [`Pool::close`] (where Python raises if `close` was not called).
    pub fn join(&self) {
        mp_log!(Level::DEBUG, "joining pool");
        self.close_quietly();
        self.join_thread();
    }

    fn join_thread(&self) {
        // A callback (which runs inside the dispatcher, on the pool's thread or on a
        // thread that drives it while waiting) that drops or terminates the pool must
        // not wait for the pool's thread: the dispatcher ends after the callback returns.
        if self.shared.holds_engine() {
            return;
        }
        let mut slot = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = slot.take() {
            drop(slot);
            let _ = t.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}

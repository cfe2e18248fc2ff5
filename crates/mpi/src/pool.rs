//! `MpiPool`: the SPMD and spawn constructors, and the Pool/executor API over the
//! communication thread.
use crate::engine::{
    Control, Drive, Driver, Engine, Notify, Outcome, Shared, Slot, Task, WorkerInfo,
};
use crate::env::{self, WORKER_ARG};
use crate::error::MpiError;
use crate::sys::{self, SendComm};
use crate::wire::{self, TAG_HELLO};
use mpi::point_to_point::MatchedReceiveVec;
use mpi::traits::*;
use mproc_core::{Decode, Encode, Message, codec};
use mproc_pool::{MapError, ResultError, TaskError};
use rkyv::util::AlignedVec;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long `spawn` and `spmd` wait for every worker's hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(60);

/// A function as it travels: the typed trampoline's offset and the function's, and the
/// fingerprint of the function's type (which the trampoline checks before the call).
#[derive(Clone, Copy, Debug)]
struct FnRef {
    tramp: u64,
    func: u64,
    sig: u64,
}

impl FnRef {
    fn plain<A: Decode, R: Encode>(f: fn(A) -> R) -> Self {
        FnRef {
            tramp: mproc_core::code::offset_of(
                sys::tramp_plain::<A, R> as sys::Trampoline as usize,
            ),
            func: mproc_core::code::offset_of(f as usize),
            sig: sys::sig_plain::<A, R>().hash,
        }
    }

    fn star2<A, B, R>(f: fn(A, B) -> R) -> Self
    where
        (A, B): Decode,
        R: Encode,
    {
        FnRef {
            tramp: mproc_core::code::offset_of(
                sys::tramp_star2::<A, B, R> as sys::Trampoline as usize,
            ),
            func: mproc_core::code::offset_of(f as usize),
            sig: sys::sig_star2::<A, B, R>().hash,
        }
    }
}

/// A pool of MPI worker processes: Python's `multiprocessing.Pool` and
/// `concurrent.futures` executor API (as mpi4py.futures offers them) over ranks of an
/// MPI job, possibly on many machines.
///
/// Build it with [`MpiPool::spmd`] under `mpirun`/`srun` (rank 0 gets the pool, the other
/// ranks serve; mpi4py's `MPICommExecutor`) or [`MpiPool::spawn`] from a program started
/// without `mpirun` (mpi4py's `MPIPoolExecutor`). Task functions are plain `fn`s whose
/// arguments and results are rkyv messages, as in mproc-pool; handles (fds) cannot
/// cross MPI and fail with a typed error.
///
/// Dropping the pool terminates it (queued work fails with [`TaskError::Terminated`];
/// what runs is awaited, since MPI cannot stop a running task) and releases the
/// workers; [`MpiPool::close`] + [`MpiPool::join`] let the queue drain first.
pub struct MpiPool {
    shared: Arc<Shared>,
    driver: Arc<dyn Drive>,
    thread: Mutex<Option<JoinHandle<()>>>,
    workers: Vec<WorkerInfo>,
}

impl std::fmt::Debug for MpiPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiPool")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// Receives a hello from each of `n` remote ranks `first..first + n` of `comm`.
fn collect_hellos<C: Communicator>(
    comm: &C,
    ranks: std::ops::Range<i32>,
) -> Result<Vec<WorkerInfo>, MpiError> {
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let mut out: Vec<Option<WorkerInfo>> = vec![None; ranks.len()];
    let mut missing = ranks.len();
    while missing > 0 {
        let got = {
            let _g = env::lock();
            comm.any_process()
                .immediate_matched_probe_with_tag(TAG_HELLO)
                .map(|probed| probed.matched_receive_vec::<u8>())
        };
        match got {
            Some((v, st)) => {
                let rank = st.source_rank();
                let (layout, pid, node) = wire::parse_hello(&v)?;
                if layout != mproc_core::code::layout() {
                    return Err(MpiError::Protocol(format!(
                        "worker rank {rank} runs another build of the program"
                    )));
                }
                let idx = usize::try_from(rank - ranks.start)
                    .ok()
                    .filter(|&i| i < out.len())
                    .ok_or_else(|| MpiError::Protocol(format!("hello from rank {rank}")))?;
                if out[idx].is_none() {
                    missing -= 1;
                }
                out[idx] = Some(WorkerInfo { rank, pid, node });
            }
            None => {
                if Instant::now() > deadline {
                    return Err(MpiError::Spawn(format!(
                        "{missing} worker(s) did not report in within {HELLO_TIMEOUT:?}"
                    )));
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }
    Ok(out.into_iter().flatten().collect())
}

impl MpiPool {
    /// The SPMD pool, like mpi4py's `MPICommExecutor`: call it on every rank of a job
    /// started with `mpirun -n N` (N ≥ 2). Rank 0 gets `Some(pool)` whose N − 1 workers
    /// are the other ranks; on those ranks the call serves tasks until rank 0 drops or
    /// joins its pool, then returns `None`. The call is collective, so every rank must
    /// make it, in the same order as any other collective call.
    ///
    /// MPI is not fault-tolerant: a rank that dies makes `mpirun` abort the whole job
    /// (non-zero exit status, within about a second).
    ///
    /// ```no_run
    /// # #[cfg(feature = "mpi")] {
    /// use mproc_mpi::MpiPool;
    /// fn square(x: u64) -> u64 { x * x }
    /// if let Some(pool) = MpiPool::spmd().unwrap() {
    ///     println!("{:?}", pool.map(square, 0..6u64).unwrap());
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`MpiError`] when MPI cannot start, the world has a single process, or a worker
    /// runs another build.
    pub fn spmd() -> Result<Option<MpiPool>, MpiError> {
        let world = env::init()?;
        if world.size < 2 {
            return Err(MpiError::InvalidArgument(
                "an SPMD pool needs at least 2 ranks (run under mpirun -n N, N >= 2)",
            ));
        }
        let comm = {
            let _g = env::lock();
            mpi::topology::SimpleCommunicator::world().duplicate()
        };
        if world.rank != 0 {
            let res = crate::worker::serve(&comm, 0, None);
            let _g = env::lock();
            drop(comm);
            return res.map(|()| None);
        }
        let workers = collect_hellos(&comm, 1..world.size)?;
        Ok(Some(MpiPool::start(SendComm(comm), workers)))
    }

    /// Spawns `n` workers with `MPI_Comm_spawn` from a program started without
    /// `mpirun` (MPI's singleton mode), like mpi4py's `MPIPoolExecutor(max_workers=n)`.
    /// The workers run this same executable and become workers before `main`.
    ///
    /// Spawned workers talk to this process over TCP (Open MPI's dynamic processes do not
    /// share memory with their spawner). A watchdog watches the workers' pids: a worker
    /// that dies fails the tasks it held with [`TaskError::WorkerLost`] and breaks the
    /// pool (later tasks fail with [`TaskError::Broken`]); it never hangs.
    ///
    /// # Errors
    ///
    /// [`MpiError`] when `n` is 0, MPI cannot start, or the spawn fails.
    pub fn spawn(n: usize) -> Result<MpiPool, MpiError> {
        if n == 0 {
            return Err(MpiError::InvalidArgument("zero workers"));
        }
        let n = i32::try_from(n).map_err(|_| MpiError::InvalidArgument("too many workers"))?;
        env::init()?;
        let exe = std::env::current_exe().map_err(|e| MpiError::Spawn(e.to_string()))?;
        let node = crate::env::processor_name()?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg(WORKER_ARG)
            .arg(format!("{}@{}", std::process::id(), node));
        let inter = {
            let _g = env::lock();
            let world = mpi::topology::SimpleCommunicator::world();
            // A failed spawn (too few slots, missing program) returns instead of
            // aborting this process.
            sys::errors_return(&world);
            let inter = world
                .process_at_rank(0)
                .spawn(&cmd, n)
                .map_err(|e| MpiError::Spawn(e.to_string()))?;
            sys::errors_return(&inter);
            inter
        };
        let workers = collect_hellos(&inter, 0..n)?;
        Ok(MpiPool::start(SendComm(inter), workers))
    }

    fn start<C: Communicator + 'static>(comm: SendComm<C>, workers: Vec<WorkerInfo>) -> MpiPool {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Control::default()),
            notify: Arc::new(Notify::default()),
        });
        let node = crate::env::processor_name().unwrap_or_default();
        let driver = Driver::new(Engine::new(comm, workers.clone(), &node, shared.clone()));
        let d = driver.clone();
        env::ACTIVE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let thread = std::thread::Builder::new()
            .name("mproc-mpi".into())
            .spawn(move || {
                d.run();
                env::ACTIVE.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            })
            .expect("mproc-mpi: could not start the communication thread");
        MpiPool {
            shared,
            driver,
            thread: Mutex::new(Some(thread)),
            workers,
        }
    }

    /// The number of worker processes (Python's `Pool._processes`).
    pub fn processes(&self) -> usize {
        self.workers.len()
    }

    /// The workers: rank, pid and node of each.
    pub fn workers(&self) -> &[WorkerInfo] {
        &self.workers
    }

    /// Queues one chunk (already encoded) and returns its slot.
    fn submit_chunk(&self, f: FnRef, payload: Result<AlignedVec, TaskError>) -> Arc<Slot> {
        let slot = Slot::new(self.shared.notify.clone(), Some(self.driver.clone()));
        let payload = match payload {
            Ok(p) => p,
            Err(e) => {
                slot.fill(Err(e));
                return slot;
            }
        };
        let mut c = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = &c.broken {
            slot.fill(Err(TaskError::Broken {
                reason: reason.clone(),
            }));
        } else if c.closed {
            slot.fill(Err(TaskError::Closed));
        } else {
            c.outstanding += 1;
            c.tasks.push_back(Task {
                tramp: f.tramp,
                func: f.func,
                sig: f.sig,
                payload,
                slot: slot.clone(),
            });
            drop(c);
            if let Some(t) = self
                .thread
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                t.thread().unpark();
            }
        }
        slot
    }

    fn encode_chunk<A: Encode>(items: Vec<A>) -> Result<AlignedVec, TaskError> {
        let enc = codec::encode(&items).map_err(|e| TaskError::Codec {
            message: format!("the task's arguments could not be encoded: {e}"),
        })?;
        if !enc.fds.is_empty() {
            return Err(TaskError::Codec {
                message: "the task's arguments hold handles (fds), which cannot cross MPI".into(),
            });
        }
        Ok(enc.bytes)
    }

    fn chunks<A: Encode>(
        &self,
        f: FnRef,
        items: Vec<A>,
        chunksize: usize,
    ) -> Vec<(Arc<Slot>, usize, usize)> {
        let cs = chunksize.max(1);
        let mut out = Vec::with_capacity(items.len().div_ceil(cs));
        let mut start = 0;
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let c: Vec<A> = items.by_ref().take(cs).collect();
            let n = c.len();
            out.push((self.submit_chunk(f, Self::encode_chunk(c)), start, n));
            start += n;
        }
        out
    }

    /// Runs `f(args)` on a worker and returns a handle to its result (Python's
    /// `apply_async`).
    pub fn apply_async<A: Message, R: Message>(&self, f: fn(A) -> R, args: A) -> AsyncResult<R> {
        let slot = self.submit_chunk(FnRef::plain(f), Self::encode_chunk(vec![args]));
        AsyncResult {
            slot,
            _r: PhantomData,
        }
    }

    /// `apply_async(f, args).get()`.
    ///
    /// # Errors
    ///
    /// The task's [`TaskError`].
    pub fn apply<A: Message, R: Message>(&self, f: fn(A) -> R, args: A) -> Result<R, TaskError> {
        self.apply_async(f, args).get()
    }

    /// Runs `f(args)` on a worker (`concurrent.futures.Executor.submit`).
    pub fn submit<A: Message, R: Message>(&self, f: fn(A) -> R, args: A) -> Future<R> {
        self.apply_async(f, args)
    }

    /// `f` over every item, in chunks of mproc-pool's default size, results in order
    /// (Python's `Pool.map`).
    ///
    /// # Errors
    ///
    /// The first failed item (by index) as a [`MapError`].
    pub fn map<A: Message, R: Message>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>, MapError> {
        self.map_async(f, items).get()
    }

    /// [`map`](Self::map) with an explicit `chunksize`.
    ///
    /// # Errors
    ///
    /// The first failed item (by index) as a [`MapError`].
    pub fn map_chunked<A: Message, R: Message>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>, MapError> {
        self.map_async_chunked(f, items, chunksize).get()
    }

    /// `map` without waiting (Python's `map_async`).
    pub fn map_async<A: Message, R: Message>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> MapResult<R> {
        let items: Vec<A> = items.into_iter().collect();
        let cs = mproc_pool::default_chunksize(items.len(), self.processes());
        self.map_async_chunked(f, items, cs)
    }

    /// `map_async` with an explicit `chunksize`.
    pub fn map_async_chunked<A: Message, R: Message>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> MapResult<R> {
        let items: Vec<A> = items.into_iter().collect();
        MapResult {
            len: items.len(),
            chunks: self.chunks(FnRef::plain(f), items, chunksize),
            _r: PhantomData,
        }
    }

    /// `f(a, b)` over `(a, b)` items, results in order (Python's `Pool.starmap`).
    ///
    /// # Errors
    ///
    /// The first failed item (by index) as a [`MapError`].
    pub fn starmap<A, B, R>(
        &self,
        f: fn(A, B) -> R,
        items: impl IntoIterator<Item = (A, B)>,
    ) -> Result<Vec<R>, MapError>
    where
        (A, B): Message,
        R: Message,
    {
        let items: Vec<(A, B)> = items.into_iter().collect();
        let cs = mproc_pool::default_chunksize(items.len(), self.processes());
        MapResult {
            len: items.len(),
            chunks: self.chunks(FnRef::star2(f), items, cs),
            _r: PhantomData,
        }
        .get()
    }

    /// A lazy `map` whose results come in input order as they are ready (Python's
    /// `Pool.imap`, chunksize 1). The input is read as workers need it.
    pub fn imap<I, A, R>(&self, f: fn(A) -> R, items: I) -> IMap<'_, I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Message,
        R: Message,
    {
        self.imap_chunked(f, items, 1)
    }

    /// [`imap`](Self::imap) with an explicit `chunksize`.
    pub fn imap_chunked<I, A, R>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
    ) -> IMap<'_, I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Message,
        R: Message,
    {
        IMap::new(self, FnRef::plain(f), items.into_iter(), chunksize, true)
    }

    /// As [`imap`](Self::imap), results in completion order (Python's
    /// `imap_unordered`).
    pub fn imap_unordered<I, A, R>(&self, f: fn(A) -> R, items: I) -> IMap<'_, I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Message,
        R: Message,
    {
        IMap::new(self, FnRef::plain(f), items.into_iter(), 1, false)
    }

    /// No more tasks may be submitted; queued ones still run (Python's `close`).
    pub fn close(&self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed = true;
        self.unpark();
    }

    /// Fails queued tasks with [`TaskError::Terminated`] and releases the workers once
    /// the running ones are back (Python's `terminate`; MPI cannot interrupt a task).
    pub fn terminate(&self) {
        {
            let mut c = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            c.closed = true;
            c.terminate = true;
        }
        self.unpark();
    }

    /// Closes the pool if it is not closed yet, waits until its work is done, and
    /// releases the workers (Python's `join`; as in mproc-pool, it implies `close()`). On
    /// the SPMD workers, this is when [`MpiPool::spmd`] returns.
    pub fn join(&self) {
        self.close();
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    fn unpark(&self) {
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            t.thread().unpark();
        }
    }
}

impl Drop for MpiPool {
    fn drop(&mut self) {
        self.terminate();
        self.join();
    }
}

/// Decodes a chunk's outcome into one result per item.
fn unpack<R: Decode>(o: &Outcome, len: usize) -> Vec<Result<R, TaskError>> {
    let bytes = match o {
        Ok(b) => b,
        Err(e) => return (0..len).map(|_| Err(e.clone())).collect(),
    };
    let (ok, failed): (Vec<R>, Vec<(u32, String)>) = match codec::decode(bytes, Vec::new()) {
        Ok(v) => v,
        Err(e) => {
            let e = TaskError::Codec {
                message: format!("the task's result could not be decoded: {e}"),
            };
            return (0..len).map(|_| Err(e.clone())).collect();
        }
    };
    if ok.len() + failed.len() != len {
        let e = TaskError::Codec {
            message: format!(
                "a worker returned {} outcomes for a chunk of {len}",
                ok.len() + failed.len()
            ),
        };
        return (0..len).map(|_| Err(e.clone())).collect();
    }
    let mut ok = ok.into_iter();
    let mut failed = failed.into_iter().peekable();
    (0..len)
        .map(|i| {
            if failed.peek().is_some_and(|(p, _)| *p as usize == i) {
                let (_, message) = failed.next().unwrap_or_default();
                Err(TaskError::Panicked { message })
            } else {
                ok.next().ok_or_else(|| TaskError::Codec {
                    message: "a worker's failure positions are out of order".into(),
                })
            }
        })
        .collect()
}

/// The result of one task (Python's `AsyncResult`; also what [`MpiPool::submit`]
/// returns, with `concurrent.futures.Future`'s `result`/`done`/`exception`). It is a
/// `std::future::Future` too.
pub struct AsyncResult<R> {
    slot: Arc<Slot>,
    _r: PhantomData<fn() -> R>,
}

/// The executor's name for [`AsyncResult`].
pub type Future<R> = AsyncResult<R>;

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.slot.ready())
            .finish()
    }
}

impl<R> Clone for AsyncResult<R> {
    fn clone(&self) -> Self {
        AsyncResult {
            slot: self.slot.clone(),
            _r: PhantomData,
        }
    }
}

fn one<R: Decode>(o: &Outcome) -> Result<R, TaskError> {
    unpack::<R>(o, 1).pop().unwrap_or(Err(TaskError::Codec {
        message: "empty outcome".into(),
    }))
}

impl<R: Decode> AsyncResult<R> {
    /// Waits for the result.
    ///
    /// # Errors
    ///
    /// Why the task failed.
    pub fn get(&self) -> Result<R, TaskError> {
        self.slot
            .with(None, one::<R>)
            .unwrap_or(Err(TaskError::Terminated))
    }

    /// Waits at most `timeout` for the result.
    ///
    /// # Errors
    ///
    /// [`ResultError::Timeout`] first, or the task's failure.
    pub fn get_timeout(&self, timeout: Duration) -> Result<R, ResultError> {
        match self.slot.with(Some(Instant::now() + timeout), one::<R>) {
            None => Err(ResultError::Timeout),
            Some(r) => r.map_err(ResultError::Failed),
        }
    }

    /// `Future.result(timeout)`: as [`get`](Self::get) or [`get_timeout`](Self::get_timeout).
    ///
    /// # Errors
    ///
    /// As [`get_timeout`](Self::get_timeout).
    pub fn result(&self, timeout: Option<Duration>) -> Result<R, ResultError> {
        match timeout {
            None => self.get().map_err(ResultError::Failed),
            Some(t) => self.get_timeout(t),
        }
    }

    /// Waits until the result is there.
    pub fn wait(&self) {
        self.slot.with(None, |_| ());
    }

    /// Waits at most `timeout`; whether the result is there.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.slot
            .with(Some(Instant::now() + timeout), |_| ())
            .is_some()
    }

    /// Whether the result is there (Python's `ready()`, `Future.done()`).
    pub fn ready(&self) -> bool {
        self.slot.ready()
    }

    /// `Future.done()`.
    pub fn done(&self) -> bool {
        self.slot.ready()
    }

    /// Whether the task has been handed to a worker and is not finished.
    pub fn running(&self) -> bool {
        self.slot.running()
    }

    /// Whether the task succeeded; `None` while it is not finished.
    pub fn successful(&self) -> Option<bool> {
        if !self.slot.ready() {
            return None;
        }
        self.slot.with(None, |o| one::<R>(o).is_ok())
    }
}

impl<R: Decode> std::future::Future for AsyncResult<R> {
    type Output = Result<R, TaskError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.slot.poll_with(cx.waker(), one::<R>) {
            Some(r) => std::task::Poll::Ready(r),
            None => std::task::Poll::Pending,
        }
    }
}

/// Yields the indices of `futures` as they finish (`concurrent.futures.as_completed`);
/// after `timeout` (if given) it yields one `Err(ResultError::Timeout)` and ends.
pub fn as_completed<R: Decode>(
    futures: &[AsyncResult<R>],
    timeout: Option<Duration>,
) -> impl Iterator<Item = Result<usize, ResultError>> + '_ {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut left: Vec<usize> = (0..futures.len()).collect();
    let mut timed_out = false;
    std::iter::from_fn(move || {
        if left.is_empty() || timed_out {
            return None;
        }
        loop {
            let seen: Vec<u64> = left
                .iter()
                .map(|&i| futures[i].slot.notify_generation())
                .collect();
            if let Some(pos) = left.iter().position(|&i| futures[i].ready()) {
                return Some(Ok(left.remove(pos)));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                timed_out = true;
                return Some(Err(ResultError::Timeout));
            }
            // Every future of one pool shares a notifier; waiting on the first one's
            // with a short slice also covers futures of other pools.
            let i = left[0];
            let slice = Instant::now() + Duration::from_millis(10);
            let until = deadline.map_or(slice, |d| d.min(slice));
            futures[i].slot.wait_notify(seen[0], until);
        }
    })
}

/// The result of [`MpiPool::map_async`] (Python's `MapResult`).
pub struct MapResult<R> {
    len: usize,
    chunks: Vec<(Arc<Slot>, usize, usize)>,
    _r: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for MapResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapResult")
            .field("len", &self.len)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl<R: Decode> MapResult<R> {
    fn collect(&self, deadline: Option<Instant>) -> Option<Result<Vec<R>, MapError>> {
        let mut out = Vec::with_capacity(self.len);
        let mut first: Option<MapError> = None;
        for (slot, start, len) in &self.chunks {
            let rs = slot.with(deadline, |o| unpack::<R>(o, *len))?;
            for (k, r) in rs.into_iter().enumerate() {
                match r {
                    Ok(v) => out.push(v),
                    Err(error) => {
                        if first.is_none() {
                            first = Some(MapError {
                                index: start + k,
                                error,
                            });
                        }
                    }
                }
            }
        }
        Some(match first {
            Some(e) => Err(e),
            None => Ok(out),
        })
    }

    /// Waits for every item.
    ///
    /// # Errors
    ///
    /// The first failed item (by index).
    pub fn get(&self) -> Result<Vec<R>, MapError> {
        self.collect(None).unwrap_or_else(|| {
            Err(MapError {
                index: 0,
                error: TaskError::Terminated,
            })
        })
    }

    /// Waits at most `timeout` for every item.
    ///
    /// # Errors
    ///
    /// [`ResultError::Timeout`] first, or the first failed item.
    pub fn get_timeout(&self, timeout: Duration) -> Result<Vec<R>, ResultError<MapError>> {
        match self.collect(Some(Instant::now() + timeout)) {
            None => Err(ResultError::Timeout),
            Some(r) => r.map_err(ResultError::Failed),
        }
    }

    /// Whether every item is finished.
    pub fn ready(&self) -> bool {
        self.chunks.iter().all(|(s, _, _)| s.ready())
    }
}

/// The iterator of [`MpiPool::imap`] and [`MpiPool::imap_unordered`].
pub struct IMap<'p, I, R> {
    pool: &'p MpiPool,
    f: FnRef,
    input: Option<I>,
    chunksize: usize,
    ordered: bool,
    /// Chunks submitted and not yet fully yielded, in input order.
    pending: VecDeque<(Arc<Slot>, usize)>,
    /// Results decoded and not yet yielded.
    ready: VecDeque<Result<R, TaskError>>,
}

impl<I, R> std::fmt::Debug for IMap<'_, I, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMap")
            .field("ordered", &self.ordered)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<'p, I, A, R> IMap<'p, I, R>
where
    I: Iterator<Item = A>,
    A: Message,
    R: Message,
{
    fn new(pool: &'p MpiPool, f: FnRef, input: I, chunksize: usize, ordered: bool) -> Self {
        let mut m = IMap {
            pool,
            f,
            input: Some(input),
            chunksize: chunksize.max(1),
            ordered,
            pending: VecDeque::new(),
            ready: VecDeque::new(),
        };
        m.fill();
        m
    }

    /// Keeps enough chunks submitted to feed every worker.
    fn fill(&mut self) {
        let want = (self.pool.processes() * (crate::engine::MAX_IN_FLIGHT + 1)).max(2);
        while self.pending.len() < want {
            let Some(input) = self.input.as_mut() else {
                return;
            };
            let chunk: Vec<A> = input.by_ref().take(self.chunksize).collect();
            if chunk.is_empty() {
                self.input = None;
                return;
            }
            let n = chunk.len();
            let slot = self.pool.submit_chunk(self.f, MpiPool::encode_chunk(chunk));
            self.pending.push_back((slot, n));
        }
    }

    /// The next result, waiting at most until `deadline`; `None` at the end.
    fn next_until(&mut self, deadline: Option<Instant>) -> Option<Result<R, ResultError>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r.map_err(ResultError::Failed));
            }
            self.fill();
            if self.pending.is_empty() {
                return None;
            }
            let idx = if self.ordered {
                0
            } else {
                let seen = self.pool.shared.notify.generation();
                match self.pending.iter().position(|(s, _)| s.ready()) {
                    Some(i) => i,
                    None => {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            return Some(Err(ResultError::Timeout));
                        }
                        self.pool.shared.notify.wait_past(seen, deadline);
                        continue;
                    }
                }
            };
            let (slot, n) = &self.pending[idx];
            let n = *n;
            let rs = slot.with(deadline, |o| unpack::<R>(o, n));
            match rs {
                None => return Some(Err(ResultError::Timeout)),
                Some(rs) => {
                    self.pending.remove(idx);
                    self.ready.extend(rs);
                }
            }
        }
    }

    /// The next result, waiting at most `timeout` (Python's `next(timeout)`).
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R, ResultError>> {
        self.next_until(Some(Instant::now() + timeout))
    }
}

impl<I, A, R> Iterator for IMap<'_, I, R>
where
    I: Iterator<Item = A>,
    A: Message,
    R: Message,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_until(None).map(|r| {
            r.map_err(|e| match e {
                ResultError::Failed(e) => e,
                ResultError::Timeout => TaskError::Terminated,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ok: Vec<u64>, failed: Vec<(u32, String)>) -> Outcome {
        Ok(codec::encode(&(ok, failed)).unwrap().bytes)
    }

    #[test]
    fn unpack_puts_failures_at_their_positions() {
        let o = outcome(vec![10, 30], vec![(1, "boom".into())]);
        let r = unpack::<u64>(&o, 3);
        assert_eq!(r[0], Ok(10));
        assert_eq!(
            r[1],
            Err(TaskError::Panicked {
                message: "boom".into()
            })
        );
        assert_eq!(r[2], Ok(30));
    }

    #[test]
    fn unpack_refuses_a_count_mismatch_and_bad_bytes() {
        let o = outcome(vec![1, 2], vec![]);
        assert!(
            unpack::<u64>(&o, 3)
                .iter()
                .all(|r| matches!(r, Err(TaskError::Codec { .. })))
        );
        let mut bad = AlignedVec::new();
        bad.extend_from_slice(&[0xff; 7]);
        assert!(
            unpack::<u64>(&Ok(bad), 1)
                .iter()
                .all(|r| matches!(r, Err(TaskError::Codec { .. })))
        );
        let lost = unpack::<u64>(&Err(TaskError::Terminated), 2);
        assert_eq!(
            lost,
            vec![Err(TaskError::Terminated), Err(TaskError::Terminated)]
        );
    }

    #[test]
    fn a_slot_times_out_then_delivers_once() {
        let slot = Slot::new(Arc::new(Notify::default()), None);
        let r: AsyncResult<u64> = AsyncResult {
            slot: slot.clone(),
            _r: PhantomData,
        };
        assert!(matches!(
            r.get_timeout(Duration::from_millis(5)),
            Err(ResultError::Timeout)
        ));
        assert_eq!(r.successful(), None);
        slot.fill(outcome(vec![7], vec![]));
        slot.fill(Err(TaskError::Terminated)); // a second outcome is ignored
        assert_eq!(r.get(), Ok(7));
        assert_eq!(r.successful(), Some(true));
        assert!(r.done());
    }
}

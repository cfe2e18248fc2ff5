//! [`ThreadPool`]: Python's `multiprocessing.pool.ThreadPool` (`multiprocessing.dummy.Pool`):
//! the [`Pool`](crate::Pool) API over threads of this process.
//!
//! Work stays in the process, so tasks are closures (`Fn(A) -> R + Send + Sync`), with no
//! message bounds, and results are plain values. Each worker thread takes chunks from one
//! shared queue. A thread that waits for a result while being a worker of the same pool
//! (a callback, or a task that uses its own pool) runs the queued chunks of that very
//! result meanwhile (and nothing else), so nested use of a pool never waits for itself.
use crate::error::{MapError, PoolError, ResultError, TaskError};
use crate::func::panic_text;
use crate::pool::default_chunksize;
use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a queued task is told to do: run, or fail its items without running.
enum Fate {
    Run,
    Fail(TaskError),
}

/// A queued chunk: `owner` names the job or stream it belongs to (the address of its
/// shared state, alive as long as the task), so a thread waiting on that result can
/// run it.
struct Task {
    owner: usize,
    run: Box<dyn FnOnce(Fate) + Send>,
}

impl Task {
    fn new<T>(owner: &Arc<T>, run: impl FnOnce(Fate) + Send + 'static) -> Task {
        Task {
            owner: owner_id(owner),
            run: Box::new(run),
        }
    }

    fn call(self, fate: Fate) {
        (self.run)(fate)
    }
}

fn owner_id<T>(a: &Arc<T>) -> usize {
    Arc::as_ptr(a) as *const () as usize
}

struct State {
    queue: VecDeque<Task>,
    closed: bool,
    terminated: bool,
    /// Why the pool is broken (an initializer panicked).
    broken: Option<String>,
}

struct Inner {
    id: u64,
    /// The process that made the pool: a fork child inherits the pool but not its
    /// threads, so there the pool refuses work instead of queueing it forever.
    pid: u32,
    state: Mutex<State>,
    /// Signalled when a task is queued, the pool closes, or (when helpers wait) a result
    /// arrives.
    cv: Condvar,
    /// Threads of this pool that wait for a result while running queued tasks.
    helpers: AtomicUsize,
}

static NEXT_POOL: AtomicU64 = AtomicU64::new(1);
static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The id of the pool this thread works for (0: none).
    static WORKER_OF: Cell<u64> = const { Cell::new(0) };
    /// A token naming this thread (0: not drawn yet).
    static TOKEN: Cell<u64> = const { Cell::new(0) };
}

fn thread_token() -> u64 {
    TOKEN.with(|t| {
        if t.get() == 0 {
            t.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Tasks and callbacks run outside every lock, so a poisoned lock only means a
    // panic between two plain field updates: the data is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Queues `tasks`, or fails them at once if the pool no longer runs work.
    fn submit(&self, tasks: Vec<Task>) {
        if tasks.is_empty() {
            return;
        }
        let mut g = self.lock();
        let here = mproc_core::pid::current();
        let refuse = if let Some(reason) = &g.broken {
            Some(TaskError::Broken {
                reason: reason.clone(),
            })
        } else if here != self.pid {
            Some(TaskError::Broken {
                reason: format!(
                    "this ThreadPool was made in process {}; process {here} is a fork of it, \
                     without the pool's threads",
                    self.pid
                ),
            })
        } else if g.closed || g.terminated {
            Some(TaskError::Closed)
        } else {
            None
        };
        if let Some(e) = refuse {
            drop(g);
            for t in tasks {
                t.call(Fate::Fail(e.clone()));
            }
            return;
        }
        let n = tasks.len();
        g.queue.extend(tasks);
        drop(g);
        if n == 1 && self.helpers.load(Ordering::SeqCst) == 0 {
            self.cv.notify_one();
        } else {
            self.cv.notify_all();
        }
    }

    /// Wakes threads of this pool that wait for a result while helping.
    fn result_arrived(&self) {
        if self.helpers.load(Ordering::SeqCst) > 0 {
            let _g = self.lock();
            self.cv.notify_all();
        }
    }

    /// Takes every queued task out (they are then failed with `e`, outside the lock).
    fn drain(g: &mut State) -> Vec<Task> {
        g.queue.drain(..).collect()
    }
}

/// Waits until `done(&T)` holds (checked under `m`) or the deadline passes; whether it
/// holds. A worker thread of `pool` runs the queued tasks of `owner` (the result it
/// waits for) while it waits, and no other: a task of some other job could need a lock
/// the waiting thread holds.
fn block_on<T>(
    owner: usize,
    pool: &Weak<Inner>,
    m: &Mutex<T>,
    cv: &Condvar,
    deadline: Option<Instant>,
    mut done: impl FnMut(&T) -> bool,
) -> bool {
    let helper = pool.upgrade().filter(|p| WORKER_OF.with(Cell::get) == p.id);
    if let Some(p) = helper {
        p.helpers.fetch_add(1, Ordering::SeqCst);
        let mut st = p.lock();
        let ok = loop {
            if done(&lock(m)) {
                break true;
            }
            if let Some(i) = st.queue.iter().position(|t| t.owner == owner)
                && let Some(t) = st.queue.remove(i)
            {
                drop(st);
                // A task's panic is caught inside the task itself.
                t.call(Fate::Run);
                st = p.lock();
                continue;
            }
            // The timed wait is a safety net only: arrivals notify this condvar.
            let mut slice = Duration::from_millis(50);
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    break false;
                }
                slice = slice.min(d - now);
            }
            st =
                p.cv.wait_timeout(st, slice)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
        };
        drop(st);
        p.helpers.fetch_sub(1, Ordering::SeqCst);
        return ok;
    }
    let mut g = lock(m);
    loop {
        if done(&g) {
            return true;
        }
        match deadline {
            None => g = cv.wait(g).unwrap_or_else(|e| e.into_inner()),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return false;
                }
                g = cv
                    .wait_timeout(g, d - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}

fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// The outcomes of one chunk, in item order: all values while no item failed.
enum Outcome<R> {
    Ok(Vec<R>),
    Mixed(Vec<Result<R, TaskError>>),
}

impl<R> Outcome<R> {
    fn failed(n: usize, e: &TaskError) -> Self {
        Outcome::Mixed((0..n).map(|_| Err(e.clone())).collect())
    }

    /// The first failure: its position in the chunk and the error.
    fn first_err(&self) -> Option<(usize, &TaskError)> {
        match self {
            Outcome::Ok(_) => None,
            Outcome::Mixed(v) => v
                .iter()
                .enumerate()
                .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e))),
        }
    }

    fn len(&self) -> usize {
        match self {
            Outcome::Ok(v) => v.len(),
            Outcome::Mixed(v) => v.len(),
        }
    }

    fn into_results(self) -> impl Iterator<Item = Result<R, TaskError>> {
        let (a, b) = match self {
            Outcome::Ok(v) => (Some(v.into_iter().map(Ok)), None),
            Outcome::Mixed(v) => (None, Some(v.into_iter())),
        };
        a.into_iter().flatten().chain(b.into_iter().flatten())
    }
}

/// Runs `f` over a chunk, each item on its own: a panic fails only its item.
fn run_chunk<A, R>(f: &(dyn Fn(A) -> R + Send + Sync), items: Vec<A>) -> Outcome<R> {
    let call = |a: A| {
        catch_unwind(AssertUnwindSafe(|| f(a))).map_err(|p| TaskError::Panicked {
            message: panic_text(&*p),
        })
    };
    let mut ok = Vec::with_capacity(items.len());
    let mut it = items.into_iter();
    for a in it.by_ref() {
        match call(a) {
            Ok(r) => ok.push(r),
            Err(e) => {
                let mut v: Vec<Result<R, TaskError>> = ok.into_iter().map(Ok).collect();
                v.push(Err(e));
                v.extend(it.map(call));
                return Outcome::Mixed(v);
            }
        }
    }
    Outcome::Ok(ok)
}

type Hook<R> = Box<dyn FnOnce(&Job<R>) + Send>;

struct JobState<R> {
    /// Chunk `k` covers items `k * chunksize ..`.
    chunks: Vec<Option<Outcome<R>>>,
    chunksize: usize,
    len: usize,
    remaining: usize,
    /// The first failure to arrive: item index and error.
    first_err: Option<(usize, TaskError)>,
    /// `finish` is called (once).
    finishing: bool,
    wakers: Vec<Waker>,
}

/// The shared state of an `apply_async` or a `map_async`.
struct Job<R> {
    pool: Weak<Inner>,
    m: Mutex<JobState<R>>,
    cv: Condvar,
    fail_fast: bool,
    /// The outcome is decided (every item in, or a failure of a fail-fast job).
    complete: AtomicBool,
    /// Callbacks have run: `get` may return.
    ready: AtomicBool,
    /// The thread that ran the callbacks (it may wait on this job from them).
    finisher: AtomicU64,
    /// A chunk has started running.
    started: AtomicBool,
    /// `cancel` took its chunks out of the queue.
    cancelled: AtomicBool,
    hook: Mutex<Option<Hook<R>>>,
}

impl<R> Job<R> {
    fn new(pool: &Arc<Inner>, len: usize, chunksize: usize, fail_fast: bool) -> Arc<Self> {
        let nchunks = len.div_ceil(chunksize);
        Arc::new(Job {
            pool: Arc::downgrade(pool),
            m: Mutex::new(JobState {
                chunks: (0..nchunks).map(|_| None).collect(),
                chunksize,
                len,
                remaining: nchunks,
                first_err: None,
                finishing: false,
                wakers: Vec::new(),
            }),
            cv: Condvar::new(),
            fail_fast,
            complete: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            finisher: AtomicU64::new(0),
            started: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            hook: Mutex::new(None),
        })
    }

    /// Records chunk `k`'s outcome; the last one (or a failure, fail-fast) finishes the job.
    fn put(&self, k: usize, out: Outcome<R>) {
        let mut g = lock(&self.m);
        if g.finishing || g.chunks[k].is_some() {
            return;
        }
        if g.first_err.is_none()
            && let Some((i, e)) = out.first_err()
        {
            g.first_err = Some((k * g.chunksize + i, e.clone()));
        }
        g.chunks[k] = Some(out);
        g.remaining -= 1;
        let finish = g.remaining == 0 || (self.fail_fast && g.first_err.is_some());
        g.finishing |= finish;
        drop(g);
        if finish {
            self.finish();
        }
    }

    /// Runs the callbacks (outside every lock), then wakes the waiters.
    fn finish(&self) {
        self.finisher.store(thread_token(), Ordering::Release);
        self.complete.store(true, Ordering::Release);
        let hook = lock(&self.hook).take();
        if let Some(h) = hook {
            // A panicking callback is contained: the pool and the result go on.
            let _ = catch_unwind(AssertUnwindSafe(|| h(self)));
        }
        let mut g = lock(&self.m);
        self.ready.store(true, Ordering::Release);
        let wakers = std::mem::take(&mut g.wakers);
        self.cv.notify_all();
        drop(g);
        for w in wakers {
            w.wake();
        }
        if let Some(p) = self.pool.upgrade() {
            p.result_arrived();
        }
    }

    fn decided(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            || (self.decided() && self.finisher.load(Ordering::Acquire) == thread_token())
    }

    fn wait(self: &Arc<Self>, deadline: Option<Instant>) -> bool {
        if self.is_ready() {
            return true;
        }
        block_on(
            owner_id(self),
            &self.pool,
            &self.m,
            &self.cv,
            deadline,
            |_| self.is_ready(),
        )
    }

    /// Takes this job's chunks out of the queue and fails them with
    /// [`TaskError::Cancelled`]; whether any was taken.
    fn cancel(self: &Arc<Self>) -> bool {
        let Some(p) = self.pool.upgrade() else {
            return false;
        };
        let owner = owner_id(self);
        let mut g = p.lock();
        let mut taken = Vec::new();
        let mut i = 0;
        while i < g.queue.len() {
            if g.queue[i].owner == owner
                && let Some(t) = g.queue.remove(i)
            {
                taken.push(t);
            } else {
                i += 1;
            }
        }
        drop(g);
        if taken.is_empty() {
            return false;
        }
        self.cancelled.store(true, Ordering::Release);
        for t in taken {
            t.call(Fate::Fail(TaskError::Cancelled));
        }
        true
    }

    fn successful(&self) -> Option<bool> {
        self.is_ready().then(|| lock(&self.m).first_err.is_none())
    }

    /// The results in input order, or the first failure (the job must be decided).
    fn collect_with(
        &self,
        mut each: impl FnMut(&mut Outcome<R>) -> Vec<R>,
    ) -> Result<Vec<R>, MapError> {
        let mut g = lock(&self.m);
        if let Some((index, e)) = &g.first_err {
            return Err(MapError {
                index: *index,
                error: e.clone(),
            });
        }
        let mut v = Vec::with_capacity(g.len);
        for (k, c) in g.chunks.iter_mut().enumerate() {
            match c {
                Some(out) => v.extend(each(out)),
                None => {
                    return Err(MapError {
                        index: k * g.chunksize,
                        error: TaskError::Terminated,
                    });
                }
            }
        }
        Ok(v)
    }

    /// Moves the results out (the job must be decided).
    fn take_all(&self) -> Result<Vec<R>, MapError> {
        self.collect_with(
            |out| match std::mem::replace(out, Outcome::Ok(Vec::new())) {
                Outcome::Ok(v) => v,
                Outcome::Mixed(v) => v.into_iter().flatten().collect(),
            },
        )
    }

    /// Every item's own outcome, moved out (the job must be decided).
    fn take_each(&self) -> Vec<Result<R, TaskError>> {
        let mut g = lock(&self.m);
        let (len, cs) = (g.len, g.chunksize);
        let mut v = Vec::with_capacity(len);
        for (k, c) in g.chunks.iter_mut().enumerate() {
            match c.take() {
                Some(out) => v.extend(out.into_results()),
                None => {
                    let n = cs.min(len - k * cs);
                    v.extend((0..n).map(|_| Err(TaskError::Terminated)));
                }
            }
        }
        v
    }
}

impl<R: Clone> Job<R> {
    fn clone_all(&self) -> Result<Vec<R>, MapError> {
        self.collect_with(|out| match out {
            Outcome::Ok(v) => v.clone(),
            Outcome::Mixed(v) => v.iter().filter_map(|r| r.as_ref().ok().cloned()).collect(),
        })
    }
}

fn first<R>(r: Result<Vec<R>, MapError>) -> Result<R, TaskError> {
    match r {
        Ok(v) => v.into_iter().next().ok_or(TaskError::Terminated),
        Err(e) => Err(e.error),
    }
}

/// The result of [`ThreadPool::apply_async`] (Python's `AsyncResult`). Also a
/// `std::future::Future` when `R: Clone`.
///
/// `get` hands out a clone of the value (so it can be asked again, as in Python);
/// [`ThreadAsyncResult::into_result`] moves it out without `Clone`.
pub struct ThreadAsyncResult<R> {
    job: Arc<Job<R>>,
}

impl<R> std::fmt::Debug for ThreadAsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadAsyncResult")
            .field("ready", &self.job.is_ready())
            .finish()
    }
}

impl<R> ThreadAsyncResult<R> {
    /// Waits for the result and moves it out.
    pub fn into_result(self) -> Result<R, TaskError> {
        self.job.wait(None);
        first(self.job.take_all())
    }

    /// Waits until the task has finished (Python: `wait()`).
    pub fn wait(&self) {
        self.job.wait(None);
    }

    /// Waits at most `timeout`; whether the task has finished (Python: `wait(timeout)`
    /// then `ready()`).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.job.wait(deadline_after(timeout))
    }

    /// Whether the task has finished (Python: `ready()`).
    pub fn ready(&self) -> bool {
        self.job.is_ready()
    }

    /// Whether it finished without error; `None` while it has not finished (where
    /// Python raises `ValueError`).
    pub fn successful(&self) -> Option<bool> {
        self.job.successful()
    }

    /// Cancels the task if no thread has taken it yet; then it fails with
    /// [`TaskError::Cancelled`]. Returns whether it was cancelled (now or before).
    pub fn cancel(&self) -> bool {
        self.cancelled() || self.job.cancel()
    }

    /// Whether the task was cancelled.
    pub fn cancelled(&self) -> bool {
        self.job.cancelled.load(Ordering::Acquire)
    }

    /// Whether a thread is running it now.
    pub fn running(&self) -> bool {
        self.job.started.load(Ordering::Acquire) && !self.job.decided()
    }
}

impl<R: Clone> ThreadAsyncResult<R> {
    /// Waits for the result (Python: `get()`): the task's value, or why it failed.
    pub fn get(&self) -> Result<R, TaskError> {
        self.job.wait(None);
        first(self.job.clone_all())
    }

    /// Waits at most `timeout` (Python: `get(timeout)`); [`ResultError::Timeout`] if the
    /// task has not finished by then (it goes on; ask again later).
    pub fn get_timeout(&self, timeout: Duration) -> Result<R, ResultError> {
        if !self.job.wait(deadline_after(timeout)) {
            return Err(ResultError::Timeout);
        }
        first(self.job.clone_all()).map_err(ResultError::Failed)
    }
}

impl<R: Clone> std::future::Future for ThreadAsyncResult<R> {
    type Output = Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.job.is_ready() {
            let mut g = lock(&self.job.m);
            // Checked again under the lock that `finish` takes before waking.
            if !self.job.ready.load(Ordering::Acquire) {
                if !g.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    g.wakers.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
        }
        Poll::Ready(first(self.job.clone_all()))
    }
}

/// The result of [`ThreadPool::map_async`] (Python's `MapResult`).
pub struct ThreadMapResult<R> {
    job: Arc<Job<R>>,
}

impl<R> std::fmt::Debug for ThreadMapResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadMapResult")
            .field("ready", &self.job.is_ready())
            .finish()
    }
}

impl<R> ThreadMapResult<R> {
    /// Waits for every result and moves them out, in input order.
    pub fn into_result(self) -> Result<Vec<R>, MapError> {
        self.job.wait(None);
        self.job.take_all()
    }

    /// Waits, then every item's own outcome, in input order (moved out).
    pub fn into_results(self) -> Vec<Result<R, TaskError>> {
        self.job.wait(None);
        self.job.take_each()
    }

    /// Waits until finished (Python: `wait()`).
    pub fn wait(&self) {
        self.job.wait(None);
    }

    /// Waits at most `timeout`; whether finished.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.job.wait(deadline_after(timeout))
    }

    /// Whether finished (Python: `ready()`).
    pub fn ready(&self) -> bool {
        self.job.is_ready()
    }

    /// Whether finished without error; `None` while not finished.
    pub fn successful(&self) -> Option<bool> {
        self.job.successful()
    }
}

impl<R: Clone> ThreadMapResult<R> {
    /// Waits for every result, in input order; the first failure to arrive fails the
    /// whole call, as in Python.
    pub fn get(&self) -> Result<Vec<R>, MapError> {
        self.job.wait(None);
        self.job.clone_all()
    }

    /// As [`ThreadMapResult::get`], waiting at most `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<Vec<R>, ResultError<MapError>> {
        if !self.job.wait(deadline_after(timeout)) {
            return Err(ResultError::Timeout);
        }
        self.job.clone_all().map_err(ResultError::Failed)
    }
}

impl<R: Clone> std::future::Future for ThreadMapResult<R> {
    type Output = Result<Vec<R>, MapError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.job.is_ready() {
            let mut g = lock(&self.job.m);
            if !self.job.ready.load(Ordering::Acquire) {
                if !g.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    g.wakers.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
        }
        Poll::Ready(self.job.clone_all())
    }
}

struct StreamState<R> {
    /// Ordered: chunk number → outcome.
    ordered: BTreeMap<usize, Outcome<R>>,
    /// Unordered: outcomes as they arrive.
    unordered: VecDeque<Outcome<R>>,
}

struct Stream<R> {
    pool: Weak<Inner>,
    m: Mutex<StreamState<R>>,
    cv: Condvar,
    ordered: bool,
    /// The iterator was dropped: chunks not started are skipped.
    cancelled: AtomicBool,
}

impl<R> Stream<R> {
    fn put(&self, k: usize, out: Outcome<R>) {
        let mut g = lock(&self.m);
        if self.ordered {
            g.ordered.insert(k, out);
        } else {
            g.unordered.push_back(out);
        }
        drop(g);
        self.cv.notify_all();
        if let Some(p) = self.pool.upgrade() {
            p.result_arrived();
        }
    }
}

/// Streams the results of [`ThreadPool::imap`] (in input order) and
/// [`ThreadPool::imap_unordered`] (as they finish), Python's `IMapIterator`.
///
/// The input is pulled lazily, in the thread that iterates, a bounded window ahead of
/// the results consumed: an endless input is fine. A failed item yields its error and
/// the stream goes on. Dropping it early skips the chunks not started yet.
pub struct ThreadIMap<I: Iterator, R> {
    pool: Arc<Inner>,
    input: I,
    input_done: bool,
    func: Arc<dyn Fn(I::Item) -> R + Send + Sync>,
    chunksize: usize,
    window: usize,
    stream: Arc<Stream<R>>,
    /// Items and chunks handed to the pool, items yielded, next chunk (ordered).
    submitted: usize,
    chunks: usize,
    yielded: usize,
    next_chunk: usize,
    /// Results of a chunk taken from the stream, not handed out yet.
    buffer: VecDeque<Result<R, TaskError>>,
}

impl<I: Iterator, R> std::fmt::Debug for ThreadIMap<I, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadIMap")
            .field("ordered", &self.stream.ordered)
            .field("submitted", &self.submitted)
            .field("yielded", &self.yielded)
            .finish()
    }
}

impl<I, R> ThreadIMap<I, R>
where
    I: Iterator,
    I::Item: Send + 'static,
    R: Send + 'static,
{
    fn feed(&mut self) {
        let mut tasks: Vec<Task> = Vec::new();
        while !self.input_done && self.submitted - self.yielded < self.window {
            let items: Vec<I::Item> = self.input.by_ref().take(self.chunksize).collect();
            if items.len() < self.chunksize {
                self.input_done = true;
            }
            if items.is_empty() {
                break;
            }
            self.submitted += items.len();
            let k = self.chunks;
            self.chunks += 1;
            let (f, stream) = (self.func.clone(), self.stream.clone());
            tasks.push(Task::new(&stream.clone(), move |fate| {
                let n = items.len();
                let out = match fate {
                    Fate::Run if stream.cancelled.load(Ordering::Acquire) => {
                        Outcome::failed(n, &TaskError::Cancelled)
                    }
                    Fate::Run => run_chunk(&*f, items),
                    Fate::Fail(e) => Outcome::failed(n, &e),
                };
                stream.put(k, out);
            }));
        }
        self.pool.submit(tasks);
    }

    /// The next result, waiting at most `timeout` (Python: `IMapIterator.next(timeout)`).
    /// `None` at the end; `Some(Err(ResultError::Timeout))` if nothing arrived in time (the
    /// iterator stays usable).
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R, ResultError>> {
        self.next_until(deadline_after(timeout))
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Option<Result<R, ResultError>> {
        if let Some(r) = self.buffer.pop_front() {
            self.yielded += 1;
            return Some(r.map_err(ResultError::Failed));
        }
        self.feed();
        if self.input_done && self.yielded == self.submitted {
            return None;
        }
        let (ordered, k) = (self.stream.ordered, self.next_chunk);
        let has = |s: &StreamState<R>| {
            if ordered {
                s.ordered.contains_key(&k)
            } else {
                !s.unordered.is_empty()
            }
        };
        let stream = self.stream.clone();
        if !block_on(
            owner_id(&stream),
            &stream.pool,
            &stream.m,
            &stream.cv,
            deadline,
            has,
        ) {
            return Some(Err(ResultError::Timeout));
        }
        let out = {
            let mut g = lock(&stream.m);
            if ordered {
                g.ordered.remove(&k)
            } else {
                g.unordered.pop_front()
            }
        };
        if let Some(out) = out {
            if ordered {
                self.next_chunk += 1;
            }
            self.buffer.extend(out.into_results());
        }
        let r = self.buffer.pop_front()?;
        self.yielded += 1;
        Some(r.map_err(ResultError::Failed))
    }
}

impl<I, R> Iterator for ThreadIMap<I, R>
where
    I: Iterator,
    I::Item: Send + 'static,
    R: Send + 'static,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Without a deadline the only error is the item's own.
        self.next_until(None).map(|r| {
            r.map_err(|e| match e {
                ResultError::Failed(e) => e,
                ResultError::Timeout => TaskError::Terminated,
            })
        })
    }
}

impl<I: Iterator, R> Drop for ThreadIMap<I, R> {
    fn drop(&mut self) {
        self.stream.cancelled.store(true, Ordering::Release);
    }
}

/// A function whose arguments come as one tuple `Args`: what [`ThreadPool::starmap`]
/// takes. Implemented for every closure or function of 1 to 12 arguments that is
/// `Send + Sync + 'static`: `Fn(A, B) -> R` is a `ThreadStarFn<(A, B)>`. Sealed.
pub trait ThreadStarFn<Args>: Send + Sync + 'static {
    /// What the function returns.
    type Output;
    /// Calls the function on the tuple's elements.
    #[doc(hidden)]
    fn call_star(&self, args: Args, _: private::Token) -> Self::Output;
}

mod private {
    /// Only this crate can name it, so only this crate implements `ThreadStarFn`.
    #[derive(Debug)]
    pub struct Token;
}

macro_rules! thread_star_fn {
    ($($a:ident),+) => {
        impl<F, R, $($a,)+> ThreadStarFn<($($a,)+)> for F
        where
            F: Fn($($a),+) -> R + Send + Sync + 'static,
        {
            type Output = R;
            #[allow(non_snake_case)]
            fn call_star(&self, ($($a,)+): ($($a,)+), _: private::Token) -> R {
                self($($a),+)
            }
        }
    };
}

thread_star_fn!(A1);
thread_star_fn!(A1, A2);
thread_star_fn!(A1, A2, A3);
thread_star_fn!(A1, A2, A3, A4);
thread_star_fn!(A1, A2, A3, A4, A5);
thread_star_fn!(A1, A2, A3, A4, A5, A6);
thread_star_fn!(A1, A2, A3, A4, A5, A6, A7);
thread_star_fn!(A1, A2, A3, A4, A5, A6, A7, A8);
thread_star_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9);
thread_star_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10);
thread_star_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11);
thread_star_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12);

fn star<F, Args>(f: F) -> impl Fn(Args) -> F::Output + Send + Sync + 'static
where
    F: ThreadStarFn<Args>,
{
    move |args| f.call_star(args, private::Token)
}

type Init = Arc<dyn Fn() + Send + Sync>;

/// Options of a [`ThreadPool`] (Python: `ThreadPool(processes, initializer, initargs)`).
pub struct ThreadPoolBuilder {
    processes: Option<usize>,
    init: Option<Init>,
    name: String,
}

impl std::fmt::Debug for ThreadPoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPoolBuilder")
            .field("processes", &self.processes)
            .field("initializer", &self.init.is_some())
            .field("name", &self.name)
            .finish()
    }
}

impl ThreadPoolBuilder {
    /// Number of worker threads (Python keeps the name `processes`; default: the number
    /// of CPUs, `os.cpu_count()`).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// `initializer(initargs)` runs once in every worker thread before its first task
    /// (each thread gets a clone of `args`). If it panics, the pool is broken: pending
    /// and later tasks fail with [`TaskError::Broken`] carrying the panic message.
    pub fn initializer<I, F>(mut self, f: F, args: I) -> Self
    where
        I: Clone + Send + Sync + 'static,
        F: Fn(I) + Send + Sync + 'static,
    {
        self.init = Some(Arc::new(move || f(args.clone())));
        self
    }

    /// The worker threads' name (default `mproc-threadpool`), as seen in debuggers and
    /// panic messages.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Starts the worker threads.
    ///
    /// # Errors
    /// [`PoolError::InvalidArgument`] for zero processes; [`PoolError::Io`] if a thread
    /// cannot be started (the ones already started are stopped and joined).
    pub fn build(self) -> Result<ThreadPool, PoolError> {
        let processes = self
            .processes
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if processes == 0 {
            return Err(PoolError::InvalidArgument("processes must be at least 1"));
        }
        let inner = Arc::new(Inner {
            id: NEXT_POOL.fetch_add(1, Ordering::Relaxed),
            pid: mproc_core::pid::current(),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                terminated: false,
                broken: None,
            }),
            cv: Condvar::new(),
            helpers: AtomicUsize::new(0),
        });
        let pool = ThreadPool {
            inner,
            processes,
            threads: Mutex::new(Vec::with_capacity(processes)),
        };
        for _ in 0..processes {
            let (inner, init) = (pool.inner.clone(), self.init.clone());
            let t = std::thread::Builder::new()
                .name(self.name.clone())
                .spawn(move || worker(inner, init))?;
            lock(&pool.threads).push(t);
        }
        Ok(pool)
    }
}

/// A worker thread: runs the initializer, then queued tasks until the pool closes (and
/// its queue is empty) or terminates.
fn worker(inner: Arc<Inner>, init: Option<Init>) {
    WORKER_OF.with(|w| w.set(inner.id));
    if let Some(init) = init
        && let Err(p) = catch_unwind(AssertUnwindSafe(|| init()))
    {
        let reason = format!("initializer panicked: {}", panic_text(&*p));
        let mut g = inner.lock();
        if g.broken.is_none() {
            g.broken = Some(reason.clone());
        }
        let reason = g.broken.clone().unwrap_or(reason);
        let pending = Inner::drain(&mut g);
        drop(g);
        inner.cv.notify_all();
        for t in pending {
            t.call(Fate::Fail(TaskError::Broken {
                reason: reason.clone(),
            }));
        }
        return;
    }
    let mut g = inner.lock();
    loop {
        if g.terminated || g.broken.is_some() {
            return;
        }
        if let Some(t) = g.queue.pop_front() {
            drop(g);
            t.call(Fate::Run);
            g = inner.lock();
            continue;
        }
        if g.closed {
            return;
        }
        g = inner.cv.wait(g).unwrap_or_else(|e| e.into_inner());
    }
}

/// A pool of worker threads with the [`Pool`](crate::Pool) API (Python's
/// `multiprocessing.pool.ThreadPool`, also `multiprocessing.dummy.Pool`).
///
/// Tasks are closures, `Fn(A) -> R + Send + Sync + 'static`, and may borrow nothing
/// but what they own (an `Arc` of shared state, say); arguments and results are plain
/// `Send` values. Every method takes `&self`; a `ThreadPool` can be shared between
/// threads. A child process (any start method) makes and uses its own pools as the
/// parent does; a pool a fork child inherits from its parent has no threads there, so
/// there it fails every submission with [`TaskError::Broken`] rather than queue work
/// that would never run.
///
/// Dropping a pool terminates it, as leaving Python's `with ThreadPool() as p:` block
/// does: tasks not started fail with [`TaskError::Terminated`]. Threads cannot be
/// killed, so tasks already running finish, and `terminate()` (and the drop) waits
/// for them, as CPython's does. Use [`ThreadPool::close`] + [`ThreadPool::join`] to let
/// the queue drain first.
///
/// ```
/// use mproc_pool::ThreadPool;
/// use std::sync::Arc;
///
/// let pool = ThreadPool::new(4).unwrap();
/// let offset = Arc::new(10u64);
/// let o = offset.clone();
/// assert_eq!(pool.map(move |x: u64| x * x + *o, 0..4u64).unwrap(), vec![10, 11, 14, 19]);
/// let r = pool.apply_async(|s: String| s.len(), "four".to_string());
/// assert_eq!(r.get().unwrap(), 4);
/// ```
#[doc(alias = "multiprocessing.dummy.Pool")]
#[doc(alias = "dummy")]
pub struct ThreadPool {
    inner: Arc<Inner>,
    processes: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.inner.lock();
        f.debug_struct("ThreadPool")
            .field("processes", &self.processes)
            .field("queued", &g.queue.len())
            .field("closed", &g.closed)
            .field("terminated", &g.terminated)
            .finish()
    }
}

impl ThreadPool {
    /// A pool of `processes` worker threads with default options.
    ///
    /// # Errors
    /// As [`ThreadPoolBuilder::build`].
    pub fn new(processes: usize) -> Result<ThreadPool, PoolError> {
        ThreadPool::builder().processes(processes).build()
    }

    /// A builder for the other options.
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder {
            processes: None,
            init: None,
            name: "mproc-threadpool".into(),
        }
    }

    /// The number of worker threads.
    pub fn processes(&self) -> usize {
        self.processes
    }

    fn job<A, R, F>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
        fail_fast: bool,
        hook: Option<Hook<R>>,
    ) -> Arc<Job<R>>
    where
        A: Send + 'static,
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        // An input that knows its length (a range, a vector) is chunked as it is read;
        // any other is collected first, as Python's map makes a list of its iterable.
        let mut it = items.into_iter();
        let (lo, hi) = it.size_hint();
        let collected: Option<Vec<A>> = (hi != Some(lo)).then(|| it.by_ref().collect());
        let hint = collected.as_ref().map_or(lo, Vec::len);
        let cs = chunksize
            .unwrap_or_else(|| default_chunksize(hint, self.processes))
            .max(1);
        // The chunks as read: `n` is what the input really held, whatever its hint said.
        let mut chunks: Vec<Vec<A>> = Vec::with_capacity(hint.div_ceil(cs));
        let mut cut = |it: &mut dyn Iterator<Item = A>| loop {
            let chunk: Vec<A> = it.take(cs).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        };
        match collected {
            Some(v) => cut(&mut v.into_iter()),
            None => cut(&mut it),
        }
        let n = chunks.iter().map(Vec::len).sum();
        let job = Job::new(&self.inner, n, cs, fail_fast);
        if n == 0 {
            // Ready at once; as in CPython (and `Pool`), no callback runs for an empty map.
            job.finish();
            return job;
        }
        if let Some(h) = hook {
            *lock(&job.hook) = Some(h);
        }
        let f: Arc<dyn Fn(A) -> R + Send + Sync> = Arc::new(f);
        let mut tasks: Vec<Task> = Vec::with_capacity(chunks.len());
        for (k, chunk) in chunks.into_iter().enumerate() {
            let (f, job) = (f.clone(), job.clone());
            tasks.push(Task::new(&job.clone(), move |fate| {
                let n = chunk.len();
                let out = match fate {
                    // A fail-fast job that has failed already skips its other chunks.
                    Fate::Run if job.decided() => return,
                    Fate::Run => {
                        job.started.store(true, Ordering::Release);
                        run_chunk(&*f, chunk)
                    }
                    Fate::Fail(e) => Outcome::failed(n, &e),
                };
                debug_assert_eq!(out.len(), n);
                job.put(k, out);
            }));
        }
        self.inner.submit(tasks);
        job
    }

    /// Runs `f(args)` on a worker thread and waits for the result (Python: `apply`).
    pub fn apply<A, R, F>(&self, f: F, args: A) -> Result<R, TaskError>
    where
        A: Send + 'static,
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.apply_async(f, args).into_result()
    }

    /// Submits `f(args)` (Python: `apply_async`).
    pub fn apply_async<A, R, F>(&self, f: F, args: A) -> ThreadAsyncResult<R>
    where
        A: Send + 'static,
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        ThreadAsyncResult {
            job: self.job(f, [args], Some(1), true, None),
        }
    }

    /// Submits `f(args)` with Python's `callback` and `error_callback`: one of them runs
    /// when the task finishes, before `get()` returns, on the worker thread that ran
    /// the task, outside every lock of the pool. A callback may use this pool (`apply`,
    /// `map`, waiting on its own result: the thread runs the awaited work itself) or
    /// terminate it; a panicking callback is contained.
    pub fn apply_async_with<A, R, F>(
        &self,
        f: F,
        args: A,
        callback: impl FnOnce(R) + Send + 'static,
        error_callback: impl FnOnce(TaskError) + Send + 'static,
    ) -> ThreadAsyncResult<R>
    where
        A: Send + 'static,
        R: Clone + Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        let hook: Hook<R> = Box::new(move |job: &Job<R>| match first(job.clone_all()) {
            Ok(v) => callback(v),
            Err(e) => error_callback(e),
        });
        ThreadAsyncResult {
            job: self.job(f, [args], Some(1), true, Some(hook)),
        }
    }

    /// Applies `f` to every item, in parallel, and returns the results in input order
    /// (Python: `map`). The first failure to arrive is returned, with its index.
    pub fn map<A, R, F>(&self, f: F, items: impl IntoIterator<Item = A>) -> Result<Vec<R>, MapError>
    where
        A: Send + 'static,
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.map_async_chunked(f, items, None).into_result()
    }

    /// [`ThreadPool::map`] with an explicit `chunksize` (items handed to a thread at a time).
    pub fn map_chunked<A, R, F>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>, MapError>
    where
        A: Send + 'static,
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.map_async_chunked(f, items, Some(chunksize))
            .into_result()
    }

    /// Every item's own outcome, in input order: a failed item does not hide the others.
    pub fn map_results<A, R, F>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
    ) -> Vec<Result<R, TaskError>>
    where
        A: Send + 'static,
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        ThreadMapResult {
            job: self.job(f, items, None, false, None),
        }
        .into_results()
    }

    /// Submits a map (Python: `map_async`).
    pub fn map_async<A, R, F>(&self, f: F, items: impl IntoIterator<Item = A>) -> ThreadMapResult<R>
    where
        A: Send + 'static,
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.map_async_chunked(f, items, None)
    }

    /// Submits a map with an explicit chunk size (`None`: Python's default rule).
    pub fn map_async_chunked<A, R, F>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> ThreadMapResult<R>
    where
        A: Send + 'static,
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        ThreadMapResult {
            job: self.job(f, items, chunksize, true, None),
        }
    }

    /// Submits a map with Python's `callback` (all results, in order) and
    /// `error_callback` (the first failure); see [`ThreadPool::apply_async_with`].
    pub fn map_async_with<A, R, F>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        callback: impl FnOnce(Vec<R>) + Send + 'static,
        error_callback: impl FnOnce(MapError) + Send + 'static,
    ) -> ThreadMapResult<R>
    where
        A: Send + 'static,
        R: Clone + Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        let hook: Hook<R> = Box::new(move |job: &Job<R>| match job.clone_all() {
            Ok(v) => callback(v),
            Err(e) => error_callback(e),
        });
        ThreadMapResult {
            job: self.job(f, items, None, true, Some(hook)),
        }
    }

    /// Python's `starmap`: `f(a, b, …)` for every tuple `(a, b, …)` of `items`, results
    /// in input order. `f` is any closure or function of 1 to 12 arguments
    /// ([`ThreadStarFn`]).
    ///
    /// ```
    /// # use mproc_pool::ThreadPool;
    /// let pool = ThreadPool::new(2).unwrap();
    /// assert_eq!(pool.starmap(|a: u64, b: u64| a * b, [(2, 3), (4, 5)]).unwrap(), vec![6, 20]);
    /// ```
    pub fn starmap<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
    ) -> Result<Vec<F::Output>, MapError>
    where
        F: ThreadStarFn<Args>,
        Args: Send + 'static,
        F::Output: Send + 'static,
    {
        self.map_async_chunked(star(f), items, None).into_result()
    }

    /// [`ThreadPool::starmap`] with an explicit chunk size.
    pub fn starmap_chunked<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
        chunksize: usize,
    ) -> Result<Vec<F::Output>, MapError>
    where
        F: ThreadStarFn<Args>,
        Args: Send + 'static,
        F::Output: Send + 'static,
    {
        self.map_async_chunked(star(f), items, Some(chunksize))
            .into_result()
    }

    /// [`ThreadPool::starmap`], submitted without waiting (Python: `starmap_async`).
    pub fn starmap_async<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
    ) -> ThreadMapResult<F::Output>
    where
        F: ThreadStarFn<Args>,
        Args: Send + 'static,
        F::Output: Send + 'static,
    {
        self.map_async_chunked(star(f), items, None)
    }

    /// [`ThreadPool::starmap_async`] with Python's `callback` and `error_callback`.
    pub fn starmap_async_with<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
        callback: impl FnOnce(Vec<F::Output>) + Send + 'static,
        error_callback: impl FnOnce(MapError) + Send + 'static,
    ) -> ThreadMapResult<F::Output>
    where
        F: ThreadStarFn<Args>,
        Args: Send + 'static,
        F::Output: Clone + Send + 'static,
    {
        self.map_async_with(star(f), items, callback, error_callback)
    }

    /// Lazily applies `f` to every tuple of `items` (Python: `imap` over
    /// `itertools.starmap`), in input order, `chunksize` tuples at a time.
    pub fn istarmap<I, F, Args>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> ThreadIMap<I::IntoIter, F::Output>
    where
        I: IntoIterator<Item = Args>,
        F: ThreadStarFn<Args>,
        Args: Send + 'static,
        F::Output: Send + 'static,
    {
        self.imap_inner(star(f), items, chunksize, true)
    }

    /// Lazily maps `f` over `items`, yielding results in input order (Python: `imap`,
    /// chunksize 1). See [`ThreadIMap`].
    pub fn imap<I, A, R, F>(&self, f: F, items: I) -> ThreadIMap<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.imap_inner(f, items, 1, true)
    }

    /// [`ThreadPool::imap`] with an explicit chunk size.
    pub fn imap_chunked<I, A, R, F>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> ThreadIMap<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.imap_inner(f, items, chunksize, true)
    }

    /// As [`ThreadPool::imap`], yielding results as they finish (Python: `imap_unordered`).
    pub fn imap_unordered<I, A, R, F>(&self, f: F, items: I) -> ThreadIMap<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.imap_inner(f, items, 1, false)
    }

    /// [`ThreadPool::imap_unordered`] with an explicit chunk size.
    pub fn imap_unordered_chunked<I, A, R, F>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> ThreadIMap<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.imap_inner(f, items, chunksize, false)
    }

    fn imap_inner<I, A, R, F>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
        ordered: bool,
    ) -> ThreadIMap<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        let chunksize = chunksize.max(1);
        ThreadIMap {
            pool: self.inner.clone(),
            input: items.into_iter(),
            input_done: false,
            func: Arc::new(f),
            chunksize,
            window: (4 * self.processes * chunksize).max(256),
            stream: Arc::new(Stream {
                pool: Arc::downgrade(&self.inner),
                m: Mutex::new(StreamState {
                    ordered: BTreeMap::new(),
                    unordered: VecDeque::new(),
                }),
                cv: Condvar::new(),
                ordered,
                cancelled: AtomicBool::new(false),
            }),
            submitted: 0,
            chunks: 0,
            yielded: 0,
            next_chunk: 0,
            buffer: VecDeque::new(),
        }
    }

    /// No more tasks will be submitted; the threads exit once the queued ones are done
    /// (Python: `close`). Later submissions fail with [`TaskError::Closed`].
    pub fn close(&self) {
        self.inner.lock().closed = true;
        self.inner.cv.notify_all();
    }

    /// Stops handing out queued tasks: they fail with [`TaskError::Terminated`], later
    /// submissions with [`TaskError::Closed`]. Tasks already running cannot be stopped
    /// (threads cannot be killed): this waits for them to finish, as CPython's
    /// `ThreadPool.terminate` does (Python: `terminate`). Called from a task or a
    /// callback of this pool, it does not wait for the threads.
    pub fn terminate(&self) {
        let mut g = self.inner.lock();
        g.terminated = true;
        let pending = Inner::drain(&mut g);
        drop(g);
        self.inner.cv.notify_all();
        for t in pending {
            t.call(Fate::Fail(TaskError::Terminated));
        }
        self.join_threads();
    }

    /// Waits for the threads to finish the queued work and exit (Python: `join`).
    /// Implies [`ThreadPool::close`] (where Python raises if `close` was not called).
    /// Called from a task or a callback of this pool, it does not wait (the thread
    /// would wait for itself).
    pub fn join(&self) {
        self.close();
        self.join_threads();
    }

    fn join_threads(&self) {
        if WORKER_OF.with(Cell::get) == self.inner.id {
            return;
        }
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            // A worker's panics are all caught; `join` only fails if one escaped.
            let _ = t.join();
        }
    }
}

impl Drop for ThreadPool {
    /// Terminates the pool, as leaving Python's `with ThreadPool() as p:` block does.
    fn drop(&mut self) {
        self.terminate();
    }
}

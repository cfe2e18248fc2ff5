//! [`Executor`]: Python's `concurrent.futures.ProcessPoolExecutor`, over a [`Pool`].
use crate::error::{PoolError, ResultError, TaskError};
use crate::job::Job;
use crate::pool::{Pool, PoolBuilder};
use crate::result::{AsyncResult, IMap};
use mproc_core::{Deadline, Decode, Message};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// A pending call submitted to an [`Executor`] (Python's `concurrent.futures.Future`).
///
/// It implements `std::future::Future` (await it from any async runtime) and has the
/// blocking [`TaskFuture::result`].
pub struct TaskFuture<R> {
    inner: AsyncResult<R>,
}

impl<R> std::fmt::Debug for TaskFuture<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFuture")
            .field("done", &self.inner.job.is_finished())
            .finish()
    }
}

impl<R> Clone for TaskFuture<R> {
    fn clone(&self) -> Self {
        TaskFuture {
            inner: self.inner.clone(),
        }
    }
}

impl<R: Decode> TaskFuture<R> {
    /// Waits for the value (`None`: no limit); [`ResultError::Timeout`] if `timeout` passes
    /// first (Python: `result(timeout)`).
    pub fn result(&self, timeout: Option<Duration>) -> Result<R, ResultError> {
        match timeout {
            None => self.inner.get().map_err(ResultError::Failed),
            Some(t) => self.inner.get_timeout(t),
        }
    }

    /// The error the call failed with, `None` if it succeeded (Python: `exception()`).
    pub fn exception(&self, timeout: Option<Duration>) -> Result<Option<TaskError>, ResultError> {
        match self.result(timeout) {
            Ok(_) => Ok(None),
            Err(ResultError::Failed(e)) => Ok(Some(e)),
            Err(ResultError::Timeout) => Err(ResultError::Timeout),
        }
    }

    /// Whether the call finished (or was cancelled).
    pub fn done(&self) -> bool {
        self.inner.ready()
    }

    /// Whether a worker is running it now.
    pub fn running(&self) -> bool {
        self.inner.running()
    }

    /// Cancels the call if it has not started; whether it is cancelled.
    pub fn cancel(&self) -> bool {
        self.inner.cancel()
    }

    /// Whether it was cancelled.
    pub fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }

    /// Python's `add_done_callback(fn)`: `f(&future)` runs when the call finishes (on the
    /// pool's thread), or at once on this thread if it already has.
    pub fn add_done_callback(&self, f: impl FnOnce(&TaskFuture<R>) + Send + 'static)
    where
        R: 'static,
    {
        let me = self.clone();
        self.inner.job.add_hook(Box::new(move |_| f(&me)));
    }

    fn job(&self) -> &Arc<Job> {
        &self.inner.job
    }
}

impl<R: Decode> std::future::Future for TaskFuture<R> {
    type Output = Result<R, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// Python's `concurrent.futures.ProcessPoolExecutor`.
///
/// Dropping it is `shutdown(wait=True)`, as leaving its `with` block is.
///
/// ```
/// use mproc_pool::Executor;
///
/// fn cube(x: u64) -> u64 {
///     x * x * x
/// }
///
/// let ex = Executor::new(2).unwrap();
/// // submit: one task, one Future (also a std Future: `.await` it in async code).
/// let f = ex.submit(cube, 3);
/// assert_eq!(f.result(None).unwrap(), 27);
/// // map: results in input order; each item is its own Result.
/// let cubes: Vec<u64> = ex.map(cube, 1..=4u64, 1).map(Result::unwrap).collect();
/// assert_eq!(cubes, [1, 8, 27, 64]);
/// ex.shutdown(true, false);
/// ```
pub struct Executor {
    pool: Option<Pool>,
    submitted: Mutex<Vec<Weak<Job>>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("pool", &self.pool)
            .finish()
    }
}

impl Executor {
    /// `ProcessPoolExecutor(max_workers)`.
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    pub fn new(max_workers: usize) -> Result<Self, PoolError> {
        Self::from_builder(Pool::builder().processes(max_workers))
    }

    /// An executor with the options of a [`PoolBuilder`] (initializer,
    /// `max_tasks_per_child` = [`PoolBuilder::maxtasksperchild`], start method, time limit).
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    pub fn from_builder(b: PoolBuilder) -> Result<Self, PoolError> {
        Ok(Executor {
            pool: Some(b.build()?),
            submitted: Mutex::new(Vec::new()),
        })
    }

    fn pool(&self) -> &Pool {
        self.pool.as_ref().expect("the pool lives until drop")
    }

    /// Schedules `f(args)`; after [`Executor::shutdown`] the future fails with
    /// [`TaskError::Closed`]; after a worker's initializer failed, with
    /// [`TaskError::Broken`].
    pub fn submit<A: Message, R: Message>(&self, f: fn(A) -> R, args: A) -> TaskFuture<R> {
        let inner = self.pool().apply_async(f, args);
        let mut list = self.submitted.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.upgrade().is_some_and(|j| !j.is_finished()));
        list.push(Arc::downgrade(&inner.job));
        TaskFuture { inner }
    }

    /// Results of `f` over `items`, in order, computed ahead lazily (Python:
    /// `Executor.map`, with `chunksize`).
    pub fn map<I, A, R>(&self, f: fn(A) -> R, items: I, chunksize: usize) -> IMap<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Message,
        R: Message,
    {
        self.pool().imap_chunked(f, items, chunksize)
    }

    /// [`Executor::map`] over tuples: `f(a, b, …)` for every `(a, b, …)` of `items`
    /// (Python: `Executor.map(f, as_, bs)`, the iterables zipped into tuples). `f` is any
    /// `fn` of 1 to 12 arguments; see [`StarFn`](crate::StarFn).
    pub fn starmap<I, F, Args>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> IMap<I::IntoIter, F::Output>
    where
        I: IntoIterator<Item = Args>,
        F: crate::StarFn<Args>,
        Args: Message,
        F::Output: Message,
    {
        self.pool().istarmap(f, items, chunksize)
    }

    /// Python's `shutdown(wait, cancel_futures)`: no more submissions; with
    /// `cancel_futures`, calls that have not started are cancelled; with `wait`, returns
    /// once every running call has finished and the workers have exited.
    pub fn shutdown(&self, wait: bool, cancel_futures: bool) {
        if cancel_futures {
            let list =
                std::mem::take(&mut *self.submitted.lock().unwrap_or_else(|e| e.into_inner()));
            for j in list.iter().filter_map(Weak::upgrade) {
                j.cancel();
            }
        }
        self.pool().close();
        if wait {
            self.pool().join();
        }
    }

    /// The pids of the current workers.
    pub fn pids(&self) -> Vec<i32> {
        self.pool().pids()
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if let Some(p) = self.pool.take() {
            p.join();
        }
    }
}

/// When [`wait_futures`] returns (Python's `FIRST_COMPLETED`, `FIRST_EXCEPTION`,
/// `ALL_COMPLETED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnWhen {
    /// As soon as any future finishes.
    FirstCompleted,
    /// As soon as any future fails, or when all have finished.
    FirstException,
    /// When all have finished.
    AllCompleted,
}

/// Wakes a blocked thread (used to wait on many futures at once).
struct Notify {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Wake for Notify {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        *self.flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }
}

impl Notify {
    fn new() -> Arc<Self> {
        Arc::new(Notify {
            flag: Mutex::new(false),
            cv: Condvar::new(),
        })
    }

    /// Sleeps until woken or `deadline`; `false` on timeout.
    fn sleep(&self, deadline: Deadline) -> bool {
        let mut g = self.flag.lock().unwrap_or_else(|e| e.into_inner());
        while !*g {
            match deadline.remaining() {
                None => g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(left) if left.is_zero() => return false,
                Some(left) => {
                    g = self
                        .cv
                        .wait_timeout(g, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            }
        }
        *g = false;
        true
    }
}

/// Waits on `futures` (Python: `concurrent.futures.wait`); returns the indices of
/// those done and those not done when the condition held or `timeout` passed.
///
/// Named apart from `mproc_channel::wait` (Python's
/// `multiprocessing.connection.wait`) so both can be glob-imported together.
#[doc(alias = "wait")]
pub fn wait_futures<R: Decode>(
    futures: &[TaskFuture<R>],
    timeout: Option<Duration>,
    return_when: ReturnWhen,
) -> (Vec<usize>, Vec<usize>) {
    let deadline = Deadline::from_timeout(timeout);
    let notify = Notify::new();
    let waker = Waker::from(notify.clone());
    loop {
        let mut done = Vec::new();
        let mut not_done = Vec::new();
        let mut failed = false;
        for (i, f) in futures.iter().enumerate() {
            if f.job().is_finished() || f.job().register(&waker) {
                failed |= f.job().lock().first_err.is_some();
                done.push(i);
            } else {
                not_done.push(i);
            }
        }
        let met = match return_when {
            ReturnWhen::AllCompleted => not_done.is_empty(),
            ReturnWhen::FirstCompleted => !done.is_empty() || futures.is_empty(),
            ReturnWhen::FirstException => failed || not_done.is_empty(),
        };
        if met || !notify.sleep(deadline) {
            return (done, not_done);
        }
    }
}

/// Yields the futures of `futures` as they finish, each with its index (Python:
/// `concurrent.futures.as_completed`). With a `timeout`, iteration ends with
/// `Err(ResultError::Timeout)` if some are still pending when it passes.
///
/// ```
/// use mproc_pool::{Executor, as_completed};
/// use std::time::Duration;
///
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// let ex = Executor::new(2).unwrap();
/// let fs: Vec<_> = [300, 10].into_iter().map(|ms| ex.submit(nap, ms)).collect();
/// let mut order = Vec::new();
/// for done in as_completed(&fs, Some(Duration::from_secs(30))) {
///     let (i, f) = done.unwrap();
///     order.push((i, f.result(None).unwrap()));
/// }
/// assert_eq!(order, [(1, 10), (0, 300)]);
/// ```
pub fn as_completed<R: Decode>(
    futures: &[TaskFuture<R>],
    timeout: Option<Duration>,
) -> impl Iterator<Item = Result<(usize, &TaskFuture<R>), ResultError>> + '_ {
    let deadline = Deadline::from_timeout(timeout);
    let notify = Notify::new();
    let waker = Waker::from(notify.clone());
    let mut pending: Vec<usize> = (0..futures.len()).collect();
    let mut ready: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    let mut timed_out = false;
    std::iter::from_fn(move || {
        loop {
            if let Some(i) = ready.pop_front() {
                return Some(Ok((i, &futures[i])));
            }
            if pending.is_empty() || timed_out {
                return None;
            }
            pending.retain(|&i| {
                let j = futures[i].job();
                if j.is_finished() || j.register(&waker) {
                    ready.push_back(i);
                    false
                } else {
                    true
                }
            });
            if ready.is_empty() && !notify.sleep(deadline) {
                timed_out = true;
                return Some(Err(ResultError::Timeout));
            }
        }
    })
}

//! Typed handles on submitted work: [`AsyncResult`] (one call), [`MapResult`] (a map),
//! [`IMap`] (a stream of results). They decode results on demand in the caller's thread.
use crate::dispatch::{Chunk, Item, Shared};
use crate::error::{MapError, ResultError, TaskError};
use crate::func::FnRef;
use crate::job::{At, Job, Outcomes, Payload, Raw, Stream};
use mproc_core::{Deadline, Decode, Encode};
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Decodes outcomes; a packed chunk's `Vec<R>` is decoded once for all its items.
pub(crate) struct Unpack<R> {
    last: Option<(Arc<Payload>, Vec<Option<R>>)>,
}

impl<R: Decode> Unpack<R> {
    pub(crate) fn new() -> Self {
        Unpack { last: None }
    }

    /// Decodes item outcome `at`.
    pub(crate) fn take_at(&mut self, at: At<'_>) -> Result<R, TaskError> {
        match at {
            At::Raw(raw) => self.take(raw),
            At::Pack(arc, k) => self.element(arc, k),
        }
    }

    /// Keeps a packed chunk's decoded results for [`Unpack::take_at`].
    fn keep(&mut self, arc: &Arc<Payload>, v: Vec<R>) {
        self.last = Some((arc.clone(), v.into_iter().map(Some).collect()));
    }

    fn element(&mut self, arc: &Arc<Payload>, k: u32) -> Result<R, TaskError> {
        if !self.last.as_ref().is_some_and(|l| Arc::ptr_eq(&l.0, arc)) {
            let v: Vec<R> = arc.decode::<Vec<R>>()?;
            self.last = Some((arc.clone(), v.into_iter().map(Some).collect()));
        }
        self.last
            .as_mut()
            .and_then(|l| l.1.get_mut(k as usize))
            .and_then(Option::take)
            .ok_or_else(|| TaskError::Codec {
                message: "a packed result is missing an element".into(),
            })
    }

    pub(crate) fn take(&mut self, raw: &Raw) -> Result<R, TaskError> {
        match raw {
            Raw::Ok(p) => p.decode::<R>(),
            Raw::Err(e) => Err((**e).clone()),
            Raw::Run(_) => Err(TaskError::Codec {
                message: "a packed result where one item was expected".into(),
            }),
        }
    }
}

/// Decodes the outcome of a one-item job (`None`: it never ran).
pub(crate) fn first_outcome<R: Decode>(out: &Outcomes) -> Result<R, TaskError> {
    match out.get(0) {
        Some(at) => Unpack::new().take_at(at),
        None => Err(TaskError::Terminated),
    }
}

/// The result of [`Pool::apply_async`](crate::Pool::apply_async) (Python's
/// `AsyncResult`). It is also a `std::future::Future`, usable from any async runtime.
pub struct AsyncResult<R> {
    pub(crate) job: Arc<Job>,
    _r: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.job.is_finished())
            .finish()
    }
}

impl<R> Clone for AsyncResult<R> {
    fn clone(&self) -> Self {
        AsyncResult {
            job: self.job.clone(),
            _r: PhantomData,
        }
    }
}

impl<R: Decode> AsyncResult<R> {
    pub(crate) fn new(job: Arc<Job>) -> Self {
        AsyncResult {
            job,
            _r: PhantomData,
        }
    }

    fn take(&self) -> Result<R, TaskError> {
        first_outcome(&self.job.lock().outcomes)
    }

    /// Waits for the result (Python: `get()`). The value can be fetched again.
    pub fn get(&self) -> Result<R, TaskError> {
        self.job.wait(Deadline::never());
        self.take()
    }

    /// Waits at most `timeout` (Python: `get(timeout)`); [`ResultError::Timeout`] if the
    /// task has not finished by then (it goes on).
    pub fn get_timeout(&self, timeout: Duration) -> Result<R, ResultError> {
        if !self.job.wait(Deadline::after(timeout)) {
            return Err(ResultError::Timeout);
        }
        self.take().map_err(ResultError::Failed)
    }

    /// Waits until the task has finished.
    pub fn wait(&self) {
        self.job.wait(Deadline::never());
    }

    /// Waits at most `timeout`; whether the task has finished.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.job.wait(Deadline::after(timeout))
    }

    /// Whether the task has finished (Python: `ready()`).
    pub fn ready(&self) -> bool {
        self.job.is_finished()
    }

    /// Whether it finished without error; `None` while it has not finished (where
    /// Python raises `ValueError`).
    pub fn successful(&self) -> Option<bool> {
        if !self.ready() {
            return None;
        }
        Some(self.job.lock().first_err.is_none())
    }

    /// Cancels the task if it has not been handed to a worker yet; then it fails with
    /// [`TaskError::Cancelled`]. Returns whether it is cancelled.
    pub fn cancel(&self) -> bool {
        self.job.cancel()
    }

    /// Whether the task was cancelled.
    pub fn cancelled(&self) -> bool {
        self.job.is_cancelled()
    }

    /// Whether a worker is running it now.
    pub fn running(&self) -> bool {
        self.job.is_running()
    }
}

impl<R: Decode> std::future::Future for AsyncResult<R> {
    type Output = Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.job.is_finished() || self.job.register(cx.waker()) {
            Poll::Ready(self.take())
        } else {
            Poll::Pending
        }
    }
}

/// The result of [`Pool::map_async`](crate::Pool::map_async) (Python's `MapResult`).
pub struct MapResult<R> {
    pub(crate) job: Arc<Job>,
    _r: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for MapResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapResult")
            .field("len", &self.job.len())
            .field("ready", &self.job.is_finished())
            .finish()
    }
}

pub(crate) fn collect_map<R: Decode>(job: &Job) -> Result<Vec<R>, MapError> {
    let mut g = job.lock();
    if let Some(index) = g.first_err {
        let error = match g.outcomes.get(index) {
            Some(At::Raw(Raw::Err(e))) => (**e).clone(),
            _ => TaskError::Terminated,
        };
        return Err(MapError { index, error });
    }
    let n = g.outcomes.len();
    let runs = g.outcomes.runs().to_vec();
    let out = &g.outcomes;
    let mut v = Vec::with_capacity(n);
    let mut un = Unpack::new();
    let mut index = 0;
    let mut r = 0;
    while index < n {
        while runs.get(r).is_some_and(|run| run.base + run.len <= index) {
            r += 1;
        }
        // Fast path: a run that is a whole packed chunk is its decoded `Vec<R>` as it is.
        if let Some(run) = runs.get(r)
            && run.base == index
            && run.first == 0
        {
            let all = &out.packs[run.pack as usize];
            // rkyv rebuilds a whole vector of plain data at copying speed: decode it
            // whole, then move it into place (or take it as the output, if first).
            let mut dec: Vec<R> = all.decode().map_err(|error| MapError { index, error })?;
            if dec.len() == run.len {
                if v.is_empty() {
                    v = dec;
                    v.reserve(n - run.len);
                } else {
                    v.append(&mut dec);
                }
                index += run.len;
                r += 1;
                continue;
            }
            // Only part of the chunk's results belong here: keep them for item by item.
            un.keep(all, dec);
        }
        let item = match out.get(index) {
            Some(at) => un.take_at(at),
            None => Err(TaskError::Terminated),
        };
        v.push(item.map_err(|error| MapError { index, error })?);
        index += 1;
    }
    Ok(v)
}

pub(crate) fn collect_each<R: Decode>(job: &Job) -> Vec<Result<R, TaskError>> {
    let mut g = job.lock();
    g.outcomes.runs();
    let out = &g.outcomes;
    let mut un = Unpack::new();
    (0..out.len())
        .map(|i| match out.get(i) {
            Some(at) => un.take_at(at),
            None => Err(TaskError::Terminated),
        })
        .collect()
}

impl<R: Decode> MapResult<R> {
    pub(crate) fn new(job: Arc<Job>) -> Self {
        MapResult {
            job,
            _r: PhantomData,
        }
    }

    /// Waits for every result, in input order; the first failure to arrive fails the
    /// whole call at once, as in Python.
    pub fn get(&self) -> Result<Vec<R>, MapError> {
        self.job.wait(Deadline::never());
        collect_map(&self.job)
    }

    /// As [`MapResult::get`], waiting at most `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<Vec<R>, ResultError<MapError>> {
        if !self.job.wait(Deadline::after(timeout)) {
            return Err(ResultError::Timeout);
        }
        collect_map(&self.job).map_err(ResultError::Failed)
    }

    /// Waits until finished.
    pub fn wait(&self) {
        self.job.wait(Deadline::never());
    }

    /// Waits at most `timeout`; whether finished.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.job.wait(Deadline::after(timeout))
    }

    /// Whether finished (Python: `ready()`).
    pub fn ready(&self) -> bool {
        self.job.is_finished()
    }

    /// Whether finished without error; `None` while not finished.
    pub fn successful(&self) -> Option<bool> {
        if !self.ready() {
            return None;
        }
        Some(self.job.lock().first_err.is_none())
    }
}

/// Streams results of [`Pool::imap`](crate::Pool::imap) and
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered).
///
/// Input is pulled lazily, in the thread that iterates, only as far as a bounded window
/// ahead of the results consumed: an endless input is fine, and memory stays bounded.
/// Dropping it early cancels the items not yet started.
pub struct IMap<I, R> {
    shared: Arc<Shared>,
    input: I,
    input_done: bool,
    func: FnRef,
    chunksize: usize,
    window: usize,
    stream: Arc<Stream>,
    ordered: bool,
    pack: bool,
    submitted: usize,
    yielded: usize,
    /// Decodes single outcomes.
    unpack: Unpack<R>,
    /// A packed chunk's decoded results not handed out yet, with their item indexes.
    stash: VecDeque<(usize, Result<R, TaskError>)>,
}

impl<I, R> std::fmt::Debug for IMap<I, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMap")
            .field("ordered", &self.ordered)
            .field("submitted", &self.submitted)
            .field("yielded", &self.yielded)
            .finish()
    }
}

impl<I, R> IMap<I, R>
where
    I: Iterator,
    I::Item: Encode,
    R: Decode,
{
    pub(crate) fn new(
        shared: Arc<Shared>,
        processes: usize,
        input: I,
        func: FnRef,
        chunksize: usize,
        ordered: bool,
        pack: bool,
    ) -> Self {
        let chunksize = chunksize.max(1);
        IMap {
            shared,
            input,
            input_done: false,
            func,
            chunksize,
            window: (4 * processes * chunksize).max(256),
            stream: Arc::new(Stream::new(ordered)),
            ordered,
            pack,
            submitted: 0,
            yielded: 0,
            unpack: Unpack::new(),
            stash: VecDeque::new(),
        }
    }

    fn feed(&mut self) {
        let mut chunks = Vec::new();
        while !self.input_done && self.submitted - self.yielded < self.window {
            if self.pack && self.chunksize > 1 && self.func.packed.is_some() {
                // A chunk travels as one `Vec` message each way.
                let base = self.submitted;
                let vals: Vec<I::Item> = self.input.by_ref().take(self.chunksize).collect();
                if vals.len() < self.chunksize {
                    self.input_done = true;
                }
                if vals.is_empty() {
                    break;
                }
                let n = vals.len();
                self.submitted += n;
                match Payload::encode_chunk(&vals) {
                    Ok(payload) => chunks.push(Chunk {
                        sink: self.stream.clone(),
                        func: self.func,
                        state: None,
                        items: Vec::new(),
                        packed: Some(crate::dispatch::Packed {
                            base,
                            n,
                            payload: Arc::new(payload),
                            skip: Vec::new(),
                            retries: 0,
                        }),
                    }),
                    Err(e) => crate::job::Sink::complete_many(
                        &*self.stream,
                        (base..base + n).map(|i| (i, Raw::err(e.clone()))).collect(),
                    ),
                }
                continue;
            }
            let mut items = Vec::with_capacity(self.chunksize);
            while items.len() < self.chunksize {
                let Some(a) = self.input.next() else {
                    self.input_done = true;
                    break;
                };
                let index = self.submitted;
                self.submitted += 1;
                match Payload::encode(&a) {
                    Ok(payload) => items.push(Item {
                        index,
                        payload,
                        retries: 0,
                    }),
                    Err(e) => crate::job::Sink::complete(&*self.stream, index, Raw::err(e)),
                }
            }
            if !items.is_empty() {
                chunks.push(Chunk {
                    sink: self.stream.clone(),
                    func: self.func,
                    state: None,
                    items,
                    packed: None,
                });
            }
        }
        if !chunks.is_empty() {
            self.shared.submit(chunks);
        }
    }
}

impl<I, R> IMap<I, R>
where
    I: Iterator,
    I::Item: Encode,
    R: Decode,
{
    /// The next result, waiting at most `timeout` (Python: `IMapIterator.next(timeout)`).
    /// `None` at the end; `Some(Err(ResultError::Timeout))` if nothing arrived in time (the
    /// iterator stays usable).
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R, ResultError>> {
        self.next_until(Deadline::after(timeout))
    }

    /// The next outcome from the stash of a decoded packed chunk, if it is next.
    fn next_stashed(&mut self) -> Option<Result<R, ResultError>> {
        let (i, _) = self.stash.front()?;
        if self.ordered && *i != self.yielded {
            return None;
        }
        let (_, r) = self.stash.pop_front()?;
        self.yielded += 1;
        Some(r.map_err(ResultError::Failed))
    }

    /// Decodes a packed chunk's successes into the stash.
    fn unpack_run(&mut self, run: crate::job::PackRun) {
        let items = run.positions.iter().map(|&p| run.base + p as usize);
        match run.all.decode::<Vec<R>>() {
            Ok(v) if v.len() == run.positions.len() => {
                self.stash.extend(items.zip(v.into_iter().map(Ok)));
            }
            Ok(_) => {
                let e = TaskError::Codec {
                    message: "a packed result has the wrong number of elements".into(),
                };
                self.stash.extend(items.map(|i| (i, Err(e.clone()))));
            }
            Err(e) => self.stash.extend(items.map(|i| (i, Err(e.clone())))),
        }
    }

    fn next_until(&mut self, deadline: Deadline) -> Option<Result<R, ResultError>> {
        self.feed();
        if let Some(r) = self.next_stashed() {
            return Some(r);
        }
        let stream = self.stream.clone();
        let mut g = stream.lock();
        loop {
            let raw = if self.ordered {
                g.ordered.remove(&self.yielded)
            } else {
                g.unordered.pop_front().map(|(_, r)| r)
            };
            if let Some(raw) = raw {
                drop(g);
                if let Raw::Run(run) = raw {
                    self.unpack_run(*run);
                    if let Some(r) = self.next_stashed() {
                        return Some(r);
                    }
                    g = stream.lock();
                    continue;
                }
                self.yielded += 1;
                return Some(self.unpack.take(&raw).map_err(ResultError::Failed));
            }
            if self.input_done && self.yielded == self.submitted {
                return None;
            }
            if deadline.remaining().is_some_and(|l| l.is_zero()) {
                return Some(Err(ResultError::Timeout));
            }
            // Run the pool's dispatcher on this thread while waiting, if nobody else does.
            drop(g);
            let (ordered, next) = (self.ordered, self.yielded);
            let arrived = || stream.lock().has(ordered, next);
            let drove = self.shared.drive(&arrived, deadline);
            g = stream.lock();
            if drove || g.has(ordered, next) {
                continue;
            }
            match deadline.remaining() {
                Some(left) if left.is_zero() => return Some(Err(ResultError::Timeout)),
                Some(left) => {
                    g = stream
                        .cv
                        .wait_timeout(g, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => g = stream.cv.wait(g).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

impl<I, R> Iterator for IMap<I, R>
where
    I: Iterator,
    I::Item: Encode,
    R: Decode,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Without a deadline the only error is the item's own.
        self.next_until(Deadline::never()).map(|r| {
            r.map_err(|e| match e {
                ResultError::Failed(e) => e,
                ResultError::Timeout => TaskError::Terminated,
            })
        })
    }
}

impl<I, R> Drop for IMap<I, R> {
    fn drop(&mut self) {
        self.stream.cancel();
    }
}

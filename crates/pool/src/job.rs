//! Where outcomes land in the parent: a [`Job`] collects the outcomes of a fixed number
//! of items (`apply`, `map`, a future); a [`Stream`] hands them out as they arrive
//! (`imap`, `imap_unordered`). Both are untyped (encoded results); the typed handles in
//! `result.rs` decode on demand.
use crate::dispatch::Shared;
use crate::error::TaskError;
use mproc_core::futex::Spinner;
use mproc_core::{Deadline, Decode, Encode};
use rkyv::util::AlignedVec;
use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::task::Waker;

/// An encoded value: aligned bytes plus the fds of its handles.
#[derive(Debug, Default)]
pub(crate) struct Payload {
    pub(crate) bytes: AlignedVec,
    pub(crate) fds: Vec<OwnedFd>,
}

impl Payload {
    pub(crate) fn encode<T: Encode>(v: &T) -> Result<Self, TaskError> {
        let e = mproc_core::codec::encode(v).map_err(|e| TaskError::Codec {
            message: format!("arguments could not be encoded: {e}"),
        })?;
        Ok(Payload {
            bytes: e.bytes,
            fds: e.fds,
        })
    }

    /// Duplicates the fds (for a send that may have to be repeated).
    pub(crate) fn dup_fds(&self) -> Vec<OwnedFd> {
        self.fds.iter().filter_map(|f| f.try_clone().ok()).collect()
    }

    /// Decodes without consuming (fds are duplicated), so a result can be read twice.
    pub(crate) fn decode<T: Decode>(&self) -> Result<T, TaskError> {
        mproc_core::codec::decode(&self.bytes, self.dup_fds()).map_err(|e| TaskError::Codec {
            message: format!("result could not be decoded: {e}"),
        })
    }
}

/// One item's outcome as the dispatcher delivers it (small: a map holds one per item).
#[derive(Debug)]
pub(crate) enum Raw {
    /// The item's own encoded result.
    Ok(Box<Payload>),
    /// Element `k` of a packed chunk's encoded `Vec<R>`.
    Packed(Arc<Payload>, u32),
    /// Element `k` of the job's pack number `p` (see [`JobInner::packs`]).
    InPack(u32, u32),
    Err(Box<TaskError>),
}

impl Raw {
    pub(crate) fn ok(p: Payload) -> Self {
        Raw::Ok(Box::new(p))
    }

    pub(crate) fn err(e: TaskError) -> Self {
        Raw::Err(Box::new(e))
    }
}

/// Receives outcomes; implemented by [`Job`] and [`Stream`].
pub(crate) trait Sink: Send + Sync {
    /// Delivers item `index`'s outcome. Later deliveries for the same item are ignored.
    fn complete(&self, index: usize, outcome: Raw);
    /// Delivers a packed chunk's successes: items `base + pos` for each `pos` in
    /// `positions` are the elements of `all`'s `Vec<R>`, in order.
    fn complete_packed(&self, base: usize, positions: Vec<u32>, all: Arc<Payload>) {
        let v = positions
            .into_iter()
            .enumerate()
            .map(|(k, pos)| (base + pos as usize, Raw::Packed(all.clone(), k as u32)))
            .collect();
        self.complete_many(v);
    }

    /// Delivers several outcomes at once.
    fn complete_many(&self, outcomes: Vec<(usize, Raw)>) {
        for (i, r) in outcomes {
            self.complete(i, r);
        }
    }
    /// Marks the sink as started; `false` if it was cancelled (its items are dropped).
    fn start(&self) -> bool;
}

const PENDING: u8 = 0;
const STARTED: u8 = 1;
const CANCELLED: u8 = 2;

pub(crate) static SPIN: Spinner = Spinner::new();

pub(crate) type DoneHook = Box<dyn FnOnce(&Job) + Send>;

pub(crate) struct JobInner {
    pub(crate) outcomes: Vec<Option<Raw>>,
    pub(crate) done: usize,
    pub(crate) first_err: Option<usize>,
    /// Packed results, referred to by [`Raw::InPack`].
    pub(crate) packs: Vec<Arc<Payload>>,
    waker: Option<Waker>,
    finishing: bool,
    /// The thread running the job's callbacks: a callback that waits on its own job
    /// finds it complete instead of waiting for itself.
    finisher: Option<std::thread::ThreadId>,
}

/// The outcomes of a fixed number of items.
pub(crate) struct Job {
    n: usize,
    fail_fast: bool,
    finished: AtomicBool,
    state: AtomicU8,
    inner: Mutex<JobInner>,
    cv: Condvar,
    /// Hooks to run when the job finishes, before waiters wake (Python's
    /// `AsyncResult` callbacks).
    on_done: Mutex<Option<DoneHook>>,
    /// Hooks to run once the job is done (Python's `Future.add_done_callback`); `None`
    /// once they have run.
    after: Mutex<Option<Vec<DoneHook>>>,
    /// The pool whose dispatcher a waiter may run (see `Shared::drive`).
    driver: OnceLock<Weak<Shared>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("n", &self.n)
            .field("finished", &self.finished.load(Ordering::Relaxed))
            .finish()
    }
}

impl Job {
    /// A job of `n` items. With `fail_fast`, it finishes at the first failure (as
    /// Python's `MapResult` does); otherwise when every item is in.
    pub(crate) fn new(n: usize, fail_fast: bool) -> Self {
        Job {
            n,
            fail_fast,
            finished: AtomicBool::new(n == 0),
            state: AtomicU8::new(PENDING),
            inner: Mutex::new(JobInner {
                outcomes: (0..n).map(|_| None).collect(),
                done: 0,
                first_err: None,
                packs: Vec::new(),
                waker: None,
                finishing: false,
                finisher: None,
            }),
            cv: Condvar::new(),
            on_done: Mutex::new(None),
            after: Mutex::new(Some(Vec::new())),
            driver: OnceLock::new(),
        }
    }

    /// Lets a waiter run `pool`'s dispatcher (set before the items are submitted).
    pub(crate) fn set_driver(&self, pool: &Arc<Shared>) {
        let _ = self.driver.set(Arc::downgrade(pool));
    }

    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// Runs `hook` once when the job finishes, on the thread that finishes it, before
    /// waiters wake (as Python runs a callback before `get()` returns). Must be set
    /// before the job's items are submitted. A panic in the hook is contained.
    pub(crate) fn on_done(&self, hook: DoneHook) {
        *self.on_done.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// Adds a hook that runs once the job is done (results readable), on the thread
    /// that finishes it, or at once on this thread if it is done already.
    pub(crate) fn add_hook(&self, hook: DoneHook) {
        let mut slot = self.after.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_mut() {
            Some(v) => v.push(hook),
            None => {
                drop(slot);
                let _ = catch_unwind(AssertUnwindSafe(|| hook(self)));
            }
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, JobInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Waits until finished or `deadline`; `true` when finished.
    pub(crate) fn wait(&self, deadline: Deadline) -> bool {
        if self.is_finished() {
            return true;
        }
        // Run the pool's dispatcher on this thread while waiting, if nobody else does.
        if let Some(s) = self.driver.get().and_then(Weak::upgrade)
            && s.drive(&|| self.is_finished(), deadline)
        {
            return true;
        }
        if self.is_finished() || SPIN.spin(|| self.is_finished()) {
            return true;
        }
        // Tell the spinner how long the sleep lasted, so the spin adapts to how fast
        // results come back.
        let slept = std::time::Instant::now();
        let mut g = self.lock();
        loop {
            if self.is_finished() || g.finisher == Some(std::thread::current().id()) {
                SPIN.after_sleep(slept.elapsed(), true);
                return true;
            }
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
    }

    /// Registers the waker of an async task polling this job.
    pub(crate) fn register(&self, w: &Waker) -> bool {
        let mut g = self.lock();
        if self.is_finished() {
            return true;
        }
        match &mut g.waker {
            Some(old) if old.will_wake(w) => {}
            slot => *slot = Some(w.clone()),
        }
        false
    }

    /// Cancels the job if no item has started: every item fails with `Cancelled`.
    pub(crate) fn cancel(&self) -> bool {
        let ok = self
            .state
            .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if ok {
            for i in 0..self.n {
                self.complete(i, Raw::err(TaskError::Cancelled));
            }
        }
        ok || self.state.load(Ordering::Acquire) == CANCELLED
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::Acquire) == CANCELLED
    }

    pub(crate) fn is_running(&self) -> bool {
        self.state.load(Ordering::Acquire) == STARTED && !self.is_finished()
    }
}

impl Sink for Job {
    fn start(&self) -> bool {
        match self
            .state
            .compare_exchange(PENDING, STARTED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(s) => s == STARTED,
        }
    }

    fn complete(&self, index: usize, outcome: Raw) {
        self.complete_many(vec![(index, outcome)]);
    }

    fn complete_packed(&self, base: usize, positions: Vec<u32>, all: Arc<Payload>) {
        let mut g = self.lock();
        let p = g.packs.len() as u32;
        g.packs.push(all);
        let mut finish = false;
        for (k, pos) in positions.into_iter().enumerate() {
            let Some(slot) = g.outcomes.get_mut(base + pos as usize) else {
                continue;
            };
            if slot.is_some() {
                continue;
            }
            *slot = Some(Raw::InPack(p, k as u32));
            g.done += 1;
            finish |= g.done == self.n;
        }
        self.finish_if(g, finish);
    }

    fn complete_many(&self, outcomes: Vec<(usize, Raw)>) {
        let mut g = self.lock();
        let mut finish = false;
        for (index, outcome) in outcomes {
            let Some(slot) = g.outcomes.get_mut(index) else {
                continue;
            };
            if slot.is_some() {
                continue;
            }
            let failed = matches!(outcome, Raw::Err(_));
            *slot = Some(outcome);
            g.done += 1;
            if failed && g.first_err.is_none() {
                g.first_err = Some(index);
            }
            finish |= g.done == self.n || (failed && self.fail_fast);
        }
        self.finish_if(g, finish);
    }
}

impl Job {
    fn finish_if(&self, mut g: MutexGuard<'_, JobInner>, finish: bool) {
        if !finish || self.is_finished() || g.finishing {
            return;
        }
        g.finishing = true;
        g.finisher = Some(std::thread::current().id());
        drop(g);
        let hook = self
            .on_done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = hook {
            let _ = catch_unwind(AssertUnwindSafe(|| h(self)));
        }
        let mut g = self.lock();
        self.finished.store(true, Ordering::Release);
        let waker = g.waker.take();
        self.cv.notify_all();
        drop(g);
        if let Some(w) = waker {
            w.wake();
        }
        let after = self
            .after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        for h in after {
            let _ = catch_unwind(AssertUnwindSafe(|| h(self)));
        }
    }
}

pub(crate) struct StreamInner {
    pub(crate) ordered: HashMap<usize, Raw>,
    pub(crate) unordered: VecDeque<(usize, Raw)>,
    pub(crate) arrived: usize,
}

/// Outcomes handed out as they arrive (`imap`, `imap_unordered`).
pub(crate) struct Stream {
    ordered: bool,
    cancelled: AtomicBool,
    pub(crate) inner: Mutex<StreamInner>,
    pub(crate) cv: Condvar,
}

impl Stream {
    pub(crate) fn new(ordered: bool) -> Self {
        Stream {
            ordered,
            cancelled: AtomicBool::new(false),
            inner: Mutex::new(StreamInner {
                ordered: HashMap::new(),
                unordered: VecDeque::new(),
                arrived: 0,
            }),
            cv: Condvar::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, StreamInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the items not yet started (the consumer went away).
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }
}

impl Sink for Stream {
    fn complete(&self, index: usize, outcome: Raw) {
        if self.cancelled.load(Ordering::Acquire) {
            return;
        }
        let mut g = self.lock();
        g.arrived += 1;
        if self.ordered {
            g.ordered.insert(index, outcome);
        } else {
            g.unordered.push_back((index, outcome));
        }
        drop(g);
        self.cv.notify_all();
    }

    fn start(&self) -> bool {
        !self.cancelled.load(Ordering::Acquire)
    }
}

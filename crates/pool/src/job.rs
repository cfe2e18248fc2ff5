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
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::task::Waker;

/// An encoded value: aligned bytes plus the fds of its handles.
#[derive(Debug, Default)]
pub(crate) struct Payload {
    pub(crate) bytes: AlignedVec,
    pub(crate) fds: Vec<OwnedFd>,
}

impl Drop for Payload {
    fn drop(&mut self) {
        crate::bufs::give(std::mem::take(&mut self.bytes));
    }
}

impl Payload {
    /// A received payload: a copy of `bytes` in a buffer of its own.
    pub(crate) fn copied(bytes: &[u8], fds: Vec<OwnedFd>) -> Self {
        let mut b = crate::bufs::take(bytes.len());
        b.extend_from_slice(bytes);
        Payload { bytes: b, fds }
    }

    pub(crate) fn encode<T: Encode>(v: &T) -> Result<Self, TaskError> {
        Self::encode_with_capacity(v, 0)
    }

    /// Encodes a chunk's `Vec<A>` into a buffer sized for it from the start.
    pub(crate) fn encode_chunk<A>(v: &Vec<A>) -> Result<Self, TaskError>
    where
        Vec<A>: Encode,
    {
        Self::encode_with_capacity(v, std::mem::size_of_val(v.as_slice()) + 64)
    }

    fn encode_with_capacity<T: Encode>(v: &T, cap: usize) -> Result<Self, TaskError> {
        let e = mproc_core::codec::encode_into(v, crate::bufs::take(cap)).map_err(|e| {
            TaskError::Codec {
                message: format!("arguments could not be encoded: {e}"),
            }
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
    /// A packed chunk's successes, handed to a stream as one outcome.
    Run(Box<PackRun>),
    Err(Box<TaskError>),
}

/// Items `base + positions[k]` are the elements `k` of `all`'s encoded `Vec<R>`.
#[derive(Debug)]
pub(crate) struct PackRun {
    pub(crate) all: Arc<Payload>,
    pub(crate) base: usize,
    pub(crate) positions: Vec<u32>,
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
    fn complete_packed(&self, base: usize, positions: Vec<u32>, all: Arc<Payload>);

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

/// Where a settled item's outcome is.
pub(crate) enum At<'a> {
    Raw(&'a Raw),
    /// Element `k` of a packed chunk's `Vec<R>`.
    Pack(&'a Arc<Payload>, u32),
}

/// Items `base..base + len` are elements `first..first + len` of `packs[pack]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    pub(crate) base: usize,
    pub(crate) len: usize,
    pub(crate) pack: u32,
    pub(crate) first: u32,
}

/// The outcomes of a job's items. A packed chunk's results are kept as runs over its
/// one encoded `Vec<R>`, not item by item: a map of many small items then allocates
/// (and later frees) nothing per item.
#[derive(Default)]
pub(crate) struct Outcomes {
    n: usize,
    /// One slot per item, for items delivered on their own; empty until the first.
    slots: Vec<Option<Raw>>,
    /// One bit per item: its outcome is in (a later delivery is ignored).
    settled: Vec<u64>,
    pub(crate) packs: Vec<Arc<Payload>>,
    runs: Vec<Run>,
    sorted: bool,
}

impl Outcomes {
    fn new(n: usize) -> Self {
        Outcomes {
            n,
            settled: vec![0; n.div_ceil(64)],
            sorted: true,
            ..Default::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// Marks items `lo..hi` settled if none of them is yet (one word at a time).
    fn settle_range(&mut self, lo: usize, hi: usize) -> bool {
        if hi > self.n || lo >= hi {
            return false;
        }
        let mask = |w: usize| {
            let a = (w * 64).max(lo) - w * 64;
            let b = ((w + 1) * 64).min(hi) - w * 64;
            (u64::MAX >> (64 - (b - a))) << a
        };
        let words = lo / 64..=(hi - 1) / 64;
        if words.clone().any(|w| self.settled[w] & mask(w) != 0) {
            return false;
        }
        for w in words {
            self.settled[w] |= mask(w);
        }
        true
    }

    /// Marks item `i` settled; `false` if it was already (or is out of range).
    fn settle(&mut self, i: usize) -> bool {
        if i >= self.n {
            return false;
        }
        let (w, b) = (i / 64, 1u64 << (i % 64));
        let was = self.settled[w] & b != 0;
        self.settled[w] |= b;
        !was
    }

    fn put(&mut self, i: usize, raw: Raw) {
        if self.slots.is_empty() {
            self.slots.resize_with(self.n, || None);
        }
        self.slots[i] = Some(raw);
    }

    /// Records a packed chunk's successes: item `base + positions[k]` is element `k`.
    /// Returns how many items it settled.
    fn put_pack(&mut self, base: usize, positions: &[u32], all: Arc<Payload>) -> usize {
        let pack = self.packs.len() as u32;
        self.packs.push(all);
        // The usual case: a whole chunk, none of it settled before.
        if let (Some(&lo), Some(&hi)) = (positions.first(), positions.last())
            && (hi - lo) as usize + 1 == positions.len()
            && self.settle_range(base + lo as usize, base + hi as usize + 1)
        {
            self.push_run(Run {
                base: base + lo as usize,
                len: positions.len(),
                pack,
                first: 0,
            });
            return positions.len();
        }
        let mut settled = 0;
        let mut cur: Option<Run> = None;
        for (k, &pos) in positions.iter().enumerate() {
            let i = base + pos as usize;
            if !self.settle(i) {
                // Already settled (only a race can do this): it ends the current run.
                if let Some(r) = cur.take() {
                    self.push_run(r);
                }
                continue;
            }
            settled += 1;
            match &mut cur {
                Some(r) if r.base + r.len == i && r.first as usize + r.len == k => r.len += 1,
                _ => {
                    if let Some(r) = cur.take() {
                        self.push_run(r);
                    }
                    cur = Some(Run {
                        base: i,
                        len: 1,
                        pack,
                        first: k as u32,
                    });
                }
            }
        }
        if let Some(r) = cur {
            self.push_run(r);
        }
        settled
    }

    fn push_run(&mut self, r: Run) {
        if self.runs.last().is_some_and(|l| l.base > r.base) {
            self.sorted = false;
        }
        self.runs.push(r);
    }

    /// The runs, ordered by first item.
    pub(crate) fn runs(&mut self) -> &[Run] {
        if !self.sorted {
            self.runs.sort_unstable_by_key(|r| r.base);
            self.sorted = true;
        }
        &self.runs
    }

    /// Item `i`'s outcome, if it is in.
    pub(crate) fn get(&self, i: usize) -> Option<At<'_>> {
        if let Some(Some(raw)) = self.slots.get(i) {
            return Some(At::Raw(raw));
        }
        let inside = |r: &Run| r.base <= i && i < r.base + r.len;
        let run = if self.sorted {
            let k = self.runs.partition_point(|r| r.base + r.len <= i);
            self.runs.get(k).filter(|r| inside(r))
        } else {
            self.runs.iter().find(|r| inside(r))
        }?;
        let k = run.first + (i - run.base) as u32;
        Some(At::Pack(&self.packs[run.pack as usize], k))
    }
}

pub(crate) struct JobInner {
    pub(crate) outcomes: Outcomes,
    pub(crate) done: usize,
    pub(crate) first_err: Option<usize>,
    waker: Option<Waker>,
    finishing: bool,
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
    /// The thread running the job's callbacks ([`thread_token`]; 0: none yet): a
    /// callback that waits on its own job finds it complete instead of waiting for
    /// itself.
    finisher: AtomicUsize,
    /// This job, for finishing it later: a job completed by a thread that holds the
    /// pool's engine runs its callbacks once the engine is released (see
    /// `dispatch::defer_finish`), so a callback may use its own pool.
    me: Weak<Job>,
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
    pub(crate) fn new(n: usize, fail_fast: bool) -> Arc<Self> {
        Arc::new_cyclic(|me| Self::with_self(n, fail_fast, me.clone()))
    }

    fn with_self(n: usize, fail_fast: bool, me: Weak<Job>) -> Self {
        Job {
            n,
            fail_fast,
            finished: AtomicBool::new(n == 0),
            state: AtomicU8::new(PENDING),
            inner: Mutex::new(JobInner {
                outcomes: Outcomes::new(n),
                done: 0,
                first_err: None,
                waker: None,
                finishing: false,
            }),
            cv: Condvar::new(),
            on_done: Mutex::new(None),
            after: Mutex::new(Some(Vec::new())),
            driver: OnceLock::new(),
            finisher: AtomicUsize::new(0),
            me,
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
        // A callback of this job that waits on it: its outcomes are in (the callback
        // runs before the job is marked finished).
        if self.finisher.load(Ordering::Acquire) == thread_token() {
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
            if self.is_finished() || self.finisher.load(Ordering::Acquire) == thread_token() {
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
        let settled = g.outcomes.put_pack(base, &positions, all);
        g.done += settled;
        let finish = settled > 0 && g.done == self.n;
        self.finish_if(g, finish);
    }

    fn complete_many(&self, outcomes: Vec<(usize, Raw)>) {
        let mut g = self.lock();
        let mut finish = false;
        for (index, outcome) in outcomes {
            if !g.outcomes.settle(index) {
                continue;
            }
            let failed = matches!(outcome, Raw::Err(_));
            g.outcomes.put(index, outcome);
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
        drop(g);
        // Inside the dispatcher, callbacks wait until it is released: one that submits
        // to or waits on its own pool would otherwise wait for itself.
        if let Some(me) = self.me.upgrade()
            && crate::dispatch::defer_finish(me)
        {
            return;
        }
        self.finish_now();
    }

    /// Runs the callbacks of a job whose outcomes are all in, then wakes its waiters.
    pub(crate) fn finish_now(&self) {
        self.finisher.store(thread_token(), Ordering::Release);
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
}

impl StreamInner {
    /// Whether the next outcome to hand out is in: item `next` (in order), or any.
    pub(crate) fn has(&self, ordered: bool, next: usize) -> bool {
        if ordered {
            self.ordered.contains_key(&next)
        } else {
            !self.unordered.is_empty()
        }
    }
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

impl Stream {
    fn put(&self, g: &mut StreamInner, index: usize, outcome: Raw) {
        if self.ordered {
            g.ordered.insert(index, outcome);
        } else {
            g.unordered.push_back((index, outcome));
        }
    }
}

impl Sink for Stream {
    fn complete(&self, index: usize, outcome: Raw) {
        self.complete_many(vec![(index, outcome)]);
    }

    fn complete_many(&self, outcomes: Vec<(usize, Raw)>) {
        if self.cancelled.load(Ordering::Acquire) || outcomes.is_empty() {
            return;
        }
        let mut g = self.lock();
        for (index, outcome) in outcomes {
            self.put(&mut g, index, outcome);
        }
        drop(g);
        self.cv.notify_all();
    }

    /// A packed chunk's successes stay one outcome, filed under its first item: the
    /// consumer decodes them together and hands them out one by one.
    fn complete_packed(&self, base: usize, positions: Vec<u32>, all: Arc<Payload>) {
        let Some(&first) = positions.first() else {
            return;
        };
        if self.cancelled.load(Ordering::Acquire) {
            return;
        }
        let mut g = self.lock();
        let run = PackRun {
            all,
            base,
            positions,
        };
        self.put(&mut g, base + first as usize, Raw::Run(Box::new(run)));
        drop(g);
        self.cv.notify_all();
    }

    fn start(&self) -> bool {
        !self.cancelled.load(Ordering::Acquire)
    }
}

/// A number unique to the calling thread among live threads, never 0 (the address of a
/// thread-local).
fn thread_token() -> usize {
    thread_local! {
        static TOKEN: u8 = const { 0 };
    }
    TOKEN.with(|t| t as *const u8 as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack() -> Arc<Payload> {
        Arc::new(Payload::default())
    }

    fn at(o: &Outcomes, i: usize) -> Option<(u32, bool)> {
        match o.get(i)? {
            At::Pack(_, k) => Some((k, true)),
            At::Raw(_) => Some((0, false)),
        }
    }

    #[test]
    fn packed_runs_map_items_to_elements() {
        let mut o = Outcomes::new(200);
        // A whole chunk (items 70..140, across word boundaries) in one run.
        assert_eq!(o.put_pack(70, &(0..70).collect::<Vec<_>>(), pack()), 70);
        // A chunk of items 0..10 whose item 3 failed on its own (its results hold the
        // nine others), and a stray duplicate delivery of item 3 inside a pack.
        assert!(o.settle(3));
        o.put(3, Raw::err(TaskError::Cancelled));
        assert_eq!(o.put_pack(0, &[0, 1, 2, 4, 5, 6, 7, 8, 9], pack()), 9);
        assert_eq!(o.put_pack(0, &[3], pack()), 0);
        // A chunk with gaps (items 150, 151, 155).
        assert_eq!(o.put_pack(150, &[0, 1, 5], pack()), 3);
        assert_eq!(at(&o, 69), None);
        assert_eq!(at(&o, 70), Some((0, true)));
        assert_eq!(at(&o, 139), Some((69, true)));
        assert_eq!(at(&o, 3), Some((0, false)));
        assert_eq!(at(&o, 4), Some((3, true)), "element after the failed one");
        assert_eq!(at(&o, 155), Some((2, true)));
        assert_eq!(at(&o, 152), None);
        let runs: Vec<(usize, usize)> = o.runs().iter().map(|r| (r.base, r.len)).collect();
        assert_eq!(runs, [(0, 3), (4, 6), (70, 70), (150, 2), (155, 1)]);
        // The same lookups once sorted.
        assert_eq!(at(&o, 4), Some((3, true)));
        assert_eq!(at(&o, 139), Some((69, true)));
        // Settled items are not settled twice.
        assert_eq!(o.put_pack(70, &[0, 1], pack()), 0);
        assert!(!o.settle_range(60, 71));
        assert!(o.settle_range(140, 150));
        assert!(!o.settle(145));
        assert!(!o.settle_range(199, 201), "out of range");
    }
}

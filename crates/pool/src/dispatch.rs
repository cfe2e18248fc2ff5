//! The dispatcher: the state that owns a pool's workers. It feeds each worker chunks
//! over the worker's own socket, collects results, watches every worker's pidfd,
//! enforces time limits and replaces dead or retired workers. It never blocks on a
//! worker (every parent-side socket is non-blocking), so no user call can hang on one.
//!
//! It sits behind a mutex and runs on whichever thread holds it: a caller that has just
//! submitted work (it hands the work to a worker at once), a caller waiting for its
//! result (it reads the answer itself: [`Shared::drive`]), or the pool's own thread when
//! nobody else does. Each worker bumps a doorbell word in shared memory after it sends
//! results, and rings the pool's eventfd only while no caller drives, so the pool's
//! thread sleeps through a caller's round trips.
use crate::error::TaskError;
use crate::func::FnRef;
use crate::job::{Job, Payload, Raw, Sink};
use crate::wire::{self, Cursor, FrameBuf, InBuf, OutQueue};
use crate::worker::{self, InitArgs, PROGRESS_LEN, Progress, WorkerArgs};
use mproc_core::Deadline;
use mproc_core::futex::Spinner;
use mproc_core::logger::Level;
use mproc_core::mp_log;
use mproc_core::{Handle, Region};
use mproc_spawn::{Process, StartMethod};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// The `map_with` state, encoded once and sent once to each worker that needs it.
#[derive(Debug)]
pub(crate) struct StateBlob {
    pub(crate) id: u64,
    pub(crate) payload: Payload,
}

/// One item waiting to run.
#[derive(Debug)]
pub(crate) struct Item {
    /// Its index in its job (or stream).
    pub(crate) index: usize,
    pub(crate) payload: Payload,
    /// How often it was re-queued because its worker died before it started.
    pub(crate) retries: u8,
}

/// A whole chunk encoded as one `Vec<A>`: items `base..base + n` of its job.
#[derive(Debug)]
pub(crate) struct Packed {
    pub(crate) base: usize,
    pub(crate) n: usize,
    /// Shared with the frames that carry it (sent without a copy).
    pub(crate) payload: Arc<Payload>,
    /// Positions already settled (before a re-queue): not to run again. Sorted.
    pub(crate) skip: Vec<u32>,
    pub(crate) retries: u8,
}

/// A unit of work handed to one worker at a time: items encoded one by one, or packed.
pub(crate) struct Chunk {
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) func: FnRef,
    pub(crate) state: Option<Arc<StateBlob>>,
    pub(crate) items: Vec<Item>,
    pub(crate) packed: Option<Packed>,
}

impl Chunk {
    fn fail(self, e: &TaskError) {
        let mut v: Vec<(usize, Raw)> = self
            .items
            .into_iter()
            .map(|it| (it.index, Raw::err(e.clone())))
            .collect();
        if let Some(p) = self.packed {
            v.extend(
                (0..p.n)
                    .filter(|k| p.skip.binary_search(&(*k as u32)).is_err())
                    .map(|k| (p.base + k, Raw::err(e.clone()))),
            );
        }
        self.sink.complete_many(v);
    }
}

/// What user threads and the dispatcher share.
///
/// The dispatcher's state (the [`Dispatcher`]) sits in `engine`. Whichever thread holds
/// it runs the dispatcher: the pool's own thread when nobody else does, or a user
/// thread that waits for a result ([`Shared::drive`]) or has just submitted work. So a
/// caller that waits for its task hands it to the worker and reads the answer itself,
/// and a round trip needs no other thread to wake up (on two cores, a third party
/// means a sleeping hand-over, which costs far more than the work).
pub(crate) struct Shared {
    q: Mutex<Queue>,
    /// Rung when the queue's state changes while another thread holds the engine, and
    /// by workers that send results while nobody drives.
    wake: OwnedFd,
    /// Bumped on every submission: a driver spins on it.
    submitted: AtomicU64,
    /// Shared with every worker: word 0 is 1 while a thread drives the engine (it
    /// watches the workers itself, so they need not ring `wake`).
    bells: Region,
    engine: Mutex<Option<Dispatcher>>,
}

thread_local! {
    /// The pool whose engine this thread holds, if any (see [`Shared::holds_engine`]).
    static HOLDING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The pool whose callbacks this thread is running, if any.
    static CALLING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Jobs this thread completed while holding an engine: their callbacks run once the
    /// engine is released ([`run_deferred`]).
    static DEFERRED: std::cell::RefCell<Vec<Arc<Job>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Called by a job whose outcomes are all in: if this thread holds a pool's engine, the
/// job is kept to be finished (callbacks, then waiters woken) once the engine is
/// released, and `true` is returned; otherwise the caller finishes it at once.
///
/// Callbacks run outside the engine so that one may submit to its own pool and wait
/// (Python allows `apply` from a callback): run inside, the wait would need the engine
/// its own thread holds.
pub(crate) fn defer_finish(job: Arc<Job>) -> bool {
    if HOLDING.with(std::cell::Cell::get) == 0 {
        return false;
    }
    DEFERRED.with(|d| d.borrow_mut().push(job));
    true
}

fn has_deferred() -> bool {
    DEFERRED.with(|d| !d.borrow().is_empty())
}

/// Finishes the jobs this thread completed while it held `shared`'s engine (which it
/// no longer holds). Returns whether there were any.
fn run_deferred(shared: &Shared) -> bool {
    let mut any = false;
    loop {
        let jobs = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
        if jobs.is_empty() {
            return any;
        }
        any = true;
        let prev = CALLING.with(|c| c.replace(shared as *const Shared as usize));
        for j in jobs {
            j.finish_now();
        }
        CALLING.with(|c| c.set(prev));
    }
}

/// Marks the calling thread as holding `shared`'s engine while it lives.
struct Holding(usize);

impl Holding {
    fn new(shared: &Shared) -> Self {
        let prev = HOLDING.with(|h| h.replace(shared as *const Shared as usize));
        Holding(prev)
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        HOLDING.with(|h| h.set(self.0));
    }
}

#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) chunks: VecDeque<Chunk>,
    pub(crate) closed: bool,
    pub(crate) terminate: bool,
    pub(crate) broken: Option<String>,
    pub(crate) pids: Vec<i32>,
    pub(crate) finished: bool,
    /// Ctrl-C: kill and reap the workers, then leave every task pending (the process is
    /// about to end by SIGINT; nothing should wake and return in the meantime).
    pub(crate) interrupted: bool,
}

/// Pools alive in this process: the last one to go frees the buffer stock and trims the
/// heap.
static LIVE_POOLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for Shared {
    fn drop(&mut self) {
        if LIVE_POOLS.fetch_sub(1, Ordering::AcqRel) == 1 {
            crate::bufs::clear();
            crate::sys::trim_heap();
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new() -> io::Result<Self> {
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        let bells = Region::new(64)?;
        LIVE_POOLS.fetch_add(1, Ordering::Relaxed);
        Ok(Shared {
            q: Mutex::new(Queue::default()),
            wake,
            submitted: AtomicU64::new(0),
            bells,
            engine: Mutex::new(None),
        })
    }

    fn driving(&self) -> &AtomicU64 {
        self.bells
            .atomic_u64(0)
            .expect("the bell region holds a word")
    }

    fn engine(&self) -> MutexGuard<'_, Option<Dispatcher>> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn try_engine(&self) -> Option<MutexGuard<'_, Option<Dispatcher>>> {
        match self.engine.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Whether the calling thread holds this pool's engine or runs this pool's
    /// callbacks (perhaps on the pool's own thread): it must not wait for the pool's
    /// thread.
    pub(crate) fn holds_engine(&self) -> bool {
        let me = self as *const Shared as usize;
        HOLDING.with(|h| h.get() == me) || CALLING.with(|c| c.get() == me)
    }

    /// Runs the dispatcher on this thread until `ready()` or `deadline`, if no other
    /// thread holds it; returns `ready()`. `false` also means "wait the ordinary way".
    ///
    /// Jobs finished meanwhile run their callbacks after the engine is released; then,
    /// if `ready()` is still false, it drives again.
    pub(crate) fn drive(&self, ready: &dyn Fn() -> bool, deadline: Deadline) -> bool {
        loop {
            let Some(mut g) = self.try_engine() else {
                return false;
            };
            let Some(d) = g.as_mut() else {
                return false;
            };
            let holding = Holding::new(self);
            // Workers now leave their results on the socket without ringing `wake`.
            self.driving().store(1, Ordering::SeqCst);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                d.drive(&|| ready() || has_deferred(), deadline)
            }));
            self.driving().store(0, Ordering::SeqCst);
            // Results that arrive from now on ring `wake`; what arrived unannounced while
            // this thread drove is still held (unread): hand it to the pool's thread.
            let handover = d.outstanding();
            drop(holding);
            drop(g);
            if handover {
                self.wake();
            }
            let ran = run_deferred(self);
            match r {
                Ok(_) if ready() => return true,
                Ok(_) if ran && !deadline.is_expired() => continue,
                Ok(_) => return false,
                Err(p) => std::panic::resume_unwind(p),
            }
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn wake(&self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Queues chunks, or fails them if the pool no longer takes work.
    pub(crate) fn submit(&self, chunks: Vec<Chunk>) {
        let mut q = self.lock();
        let refuse = if let Some(r) = &q.broken {
            Some(TaskError::Broken { reason: r.clone() })
        } else if q.terminate || q.closed || q.finished {
            // Nothing was submitted: as after `close()`, "pool not running" (Python's
            // ValueError), whether the pool was closed, terminated or has finished.
            Some(TaskError::Closed)
        } else {
            None
        };
        match refuse {
            Some(e) => {
                drop(q);
                for c in chunks {
                    c.fail(&e);
                }
            }
            None => {
                q.chunks.extend(chunks);
                drop(q);
                self.submitted.fetch_add(1, Ordering::SeqCst);
                // Hand the work to a worker from here if the engine is free; else its
                // holder learns of it from `submitted` or `wake`.
                match self.try_engine() {
                    Some(mut g) => {
                        let holding = Holding::new(self);
                        let Some(d) = g.as_mut() else { return };
                        d.step();
                        // The pool's thread sleeps with a poll set made before this
                        // dispatch: it must look again if writes are pending or a time
                        // limit now needs watching.
                        let look = d.needs_pool_thread();
                        drop(holding);
                        drop(g);
                        if look {
                            self.wake();
                        }
                        run_deferred(self);
                    }
                    None => self.wake(),
                }
            }
        }
    }
}

/// How workers are made.
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) init: Option<(FnRef, Payload)>,
    pub(crate) max_tasks: u64,
    pub(crate) start_method: Option<StartMethod>,
    pub(crate) time_limit: Option<Duration>,
}

struct Held {
    sink: Arc<dyn Sink>,
    func: FnRef,
    state: Option<Arc<StateBlob>>,
    items: Vec<Option<Item>>,
    /// A packed chunk and which of its positions are still open.
    packed: Option<(Packed, Vec<bool>)>,
    left: usize,
}

struct Worker {
    proc: Process<()>,
    pid: i32,
    sock: Arc<OwnedFd>,
    /// A duplicate of the worker's pidfd that the pool's thread may poll without
    /// holding the engine (it stays open, so its number is never reused meanwhile).
    pidfd: Option<Arc<OwnedFd>>,
    progress: Region,
    inbuf: InBuf,
    out: OutQueue,
    pending: FrameBuf,
    held: HashMap<u64, Held>,
    held_items: usize,
    sent_items: u64,
    states: HashSet<u64>,
    exiting: bool,
    /// The worker's end is closed for reading (it exited or the stream broke).
    eof: bool,
    /// Writing failed (the worker is gone): send nothing more, but keep reading what it
    /// sent before it died.
    wdead: bool,
    killed_for: Option<Duration>,
    /// The worker's doorbell (`Progress::from_worker`) as of the last read.
    seen_from: u64,
}

fn spawn_worker(cfg: &Config, shared: &Shared) -> Result<Worker, String> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    let (parent, child) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| format!("socketpair: {e}"))?;
    let progress = Region::new(PROGRESS_LEN).map_err(|e| format!("progress region: {e}"))?;
    let init = cfg.init.as_ref().map(|(f, p)| InitArgs {
        tramp: f.tramp,
        func: f.func,
        sig: f.sig,
        bytes: p.bytes.to_vec(),
        fds: p.dup_fds().into_iter().map(Handle).collect(),
    });
    let args = WorkerArgs {
        sock: Handle(child),
        progress: progress
            .try_clone()
            .map_err(|e| format!("progress region: {e}"))?,
        init,
        max_tasks: cfg.max_tasks,
        wake: Handle(
            shared
                .wake
                .try_clone()
                .map_err(|e| format!("eventfd: {e}"))?,
        ),
        bells: shared
            .bells
            .try_clone()
            .map_err(|e| format!("bell region: {e}"))?,
    };
    // Python's pool names its workers `ForkPoolWorker-N`/`SpawnPoolWorker-N`; the
    // name shows in forwarded log records and `current_process()`.
    static WORKERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = WORKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let mut proc = Process::new(worker::worker_main, args)
        .daemon(true)
        .name(format!("PoolWorker-{n}"));
    if let Some(m) = cfg.start_method {
        proc = proc.start_method(m);
    }
    proc.start().map_err(|e| e.to_string())?;
    mp_log!(Level::DEBUG, "added worker");
    let pid = proc.pid().unwrap_or(0);
    rustix::fs::fcntl_setfl(&parent, rustix::fs::OFlags::NONBLOCK)
        .map_err(|e| format!("socket: {e}"))?;
    let pidfd = proc
        .sentinel()
        .and_then(|p| p.try_clone_to_owned().ok())
        .map(Arc::new);
    Ok(Worker {
        proc,
        pid,
        sock: Arc::new(parent),
        pidfd,
        progress,
        inbuf: InBuf::new(),
        out: OutQueue::default(),
        pending: FrameBuf::new(),
        held: HashMap::new(),
        held_items: 0,
        sent_items: 0,
        states: HashSet::new(),
        exiting: false,
        eof: false,
        wdead: false,
        killed_for: None,
        seen_from: 0,
    })
}

/// Builds the initial workers; then runs the loop until the pool ends.
pub(crate) fn run(
    shared: Arc<Shared>,
    cfg: Config,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let mut d = Dispatcher {
        shared,
        workers: Vec::new(),
        queue: VecDeque::new(),
        ewma_us: None,
        states: HashMap::new(),
        next_chunk: 1,
        exit_sent: false,
        seen_submitted: 0,
        done: false,
        cfg,
    };
    for _ in 0..d.cfg.processes {
        match spawn_worker(&d.cfg, &d.shared) {
            Ok(w) => d.workers.push(Some(w)),
            Err(e) => {
                d.terminate_all(&TaskError::Broken { reason: e.clone() });
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
    d.publish_pids();
    let shared = d.shared.clone();
    *shared.engine() = Some(d);
    let _ = ready.send(Ok(()));
    drop(ready);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| background(&shared)));
    // Jobs this thread finished inside the engine before a panic still get their
    // callbacks and wake their waiters.
    run_deferred(&shared);
    // Taking the dispatcher out breaks the cycle between it and `shared`.
    let d = shared.engine().take();
    if let (Err(p), Some(mut d)) = (r, d) {
        // A bug here must not leave callers waiting for ever: fail everything.
        let reason = format!(
            "the pool's dispatcher failed: {}",
            crate::func::panic_text(&*p)
        );
        d.shared.lock().broken = Some(reason.clone());
        d.terminate_all(&TaskError::Broken { reason });
    }
}

/// What the pool's thread watches while it sleeps without the engine.
enum Watch {
    /// Worker `i` (with this pid) exited.
    Exit(usize, i32),
    /// Worker `i`'s socket can take more, or (without a pidfd) has data or hung up.
    Sock(usize, i32),
}

/// The pool's own thread: runs the dispatcher whenever no user thread does, and sleeps
/// without holding it.
fn background(shared: &Shared) {
    let mut ready: Vec<(usize, i32, bool)> = Vec::new();
    loop {
        let (watch, timeout) = {
            let mut g = shared.engine();
            let Some(d) = g.as_mut() else { return };
            let _holding = Holding::new(shared);
            let mut b = [0u8; 8];
            let _ = rustix::io::read(&shared.wake, &mut b);
            // Events seen while the engine was free: act on them only if the worker
            // is still the one that was watched.
            let ready: Vec<(usize, bool)> = std::mem::take(&mut ready)
                .into_iter()
                .filter(|&(i, pid, _)| {
                    d.workers
                        .get(i)
                        .and_then(Option::as_ref)
                        .is_some_and(|w| w.pid == pid)
                })
                .map(|(i, _, exit)| (i, exit))
                .collect();
            d.read_and_reap(ready);
            d.read_rung();
            if d.step() {
                drop(_holding);
                drop(g);
                run_deferred(shared);
                return;
            }
            (d.watch_set(), d.check_time_limits())
        };
        // Callbacks of the jobs finished above, outside the engine.
        if run_deferred(shared) {
            continue;
        }
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(watch.len() + 1);
        fds.push(PollFd::new(&shared.wake, PollFlags::IN));
        for (fd, flags, _) in &watch {
            fds.push(PollFd::new(&**fd, *flags));
        }
        let ts = timeout.map(|t| {
            Timespec::try_from(t).unwrap_or(Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            })
        });
        if let Ok(n) = poll(&mut fds, ts.as_ref())
            && n > 0
        {
            for (f, (_, _, w)) in fds[1..].iter().zip(&watch) {
                if f.revents().is_empty() {
                    continue;
                }
                match *w {
                    Watch::Exit(i, pid) => ready.push((i, pid, true)),
                    Watch::Sock(i, pid) => ready.push((i, pid, false)),
                }
            }
        }
    }
}

struct Dispatcher {
    shared: Arc<Shared>,
    cfg: Config,
    workers: Vec<Option<Worker>>,
    queue: VecDeque<Chunk>,
    ewma_us: Option<f64>,
    states: HashMap<u64, (Weak<StateBlob>, Vec<usize>)>,
    next_chunk: u64,
    exit_sent: bool,
    /// `Shared::submitted` as of the last look at the queue.
    seen_submitted: u64,
    /// The pool has ended (terminated, or closed and drained).
    done: bool,
}

/// The cores this process may run on (counted once).
fn cores() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// How long the dispatcher spins for a submission or a result before it sleeps in
/// `poll` (adapts to how soon the sleeps end).
static SPIN: Spinner = Spinner::new();

impl Dispatcher {
    fn publish_pids(&self) {
        let pids = self.workers.iter().flatten().map(|w| w.pid).collect();
        self.shared.lock().pids = pids;
    }

    /// One round of the dispatcher that never blocks: takes new work, hands it out,
    /// writes what can be written. `true` once the pool has ended.
    fn step(&mut self) -> bool {
        let ended = self.step_inner();
        if ended && !self.done {
            self.done = true;
            // The pool's thread may be asleep: it must see the end and exit.
            self.shared.wake();
        }
        ended
    }

    fn step_inner(&mut self) -> bool {
        if self.done {
            return true;
        }
        {
            self.seen_submitted = self.shared.submitted.load(Ordering::SeqCst);
            let (terminate, closed, broken, interrupted) = {
                let mut q = self.shared.lock();
                self.queue.append(&mut q.chunks);
                (q.terminate, q.closed, q.broken.clone(), q.interrupted)
            };
            if interrupted {
                for w in self.workers.iter_mut().flatten() {
                    kill(w);
                }
                for w in self.workers.iter_mut().flatten() {
                    let _ = reap(w);
                }
                let mut q = self.shared.lock();
                q.pids.clear();
                q.finished = true;
                drop(q);
                // Every task stays pending (dropping a chunk completes nothing): the
                // process ends by SIGINT before any blocked call returns.
                self.workers.clear();
                self.queue.clear();
                return true;
            }
            if terminate {
                self.terminate_all(&TaskError::Terminated);
                return true;
            }
            if let Some(reason) = broken {
                let e = TaskError::Broken { reason };
                for c in self.queue.drain(..) {
                    c.fail(&e);
                }
            }
            self.drop_dead_states();
            self.dispatch();
            let idle =
                self.queue.is_empty() && self.workers.iter().flatten().all(|w| w.held.is_empty());
            if closed && idle && !self.exit_sent {
                self.exit_sent = true;
                for w in self.workers.iter_mut().flatten() {
                    w.pending.begin(wire::K_EXIT, 0, 0);
                    w.pending.end();
                    w.exiting = true;
                }
            }
            self.flush_all();
            if self.exit_sent && self.workers.iter().all(Option::is_none) {
                self.shared.lock().finished = true;
                return true;
            }
            false
        }
    }

    /// Work is under way that nobody watches once the engine is let go.
    fn outstanding(&self) -> bool {
        !self.queue.is_empty()
            || self
                .workers
                .iter()
                .flatten()
                .any(|w| !w.held.is_empty() || !w.out.is_empty())
    }

    /// After a user thread dispatched: whether the pool's thread must rebuild its poll
    /// set (a write is pending, or a time limit needs a timeout).
    fn needs_pool_thread(&self) -> bool {
        self.workers
            .iter()
            .flatten()
            .any(|w| !w.out.is_empty() || (self.cfg.time_limit.is_some() && !w.held.is_empty()))
    }

    /// What the pool's thread polls (besides `wake`) while it sleeps without the engine:
    /// every worker's exit, sockets with pending writes, and the sockets of workers
    /// without a pidfd.
    fn watch_set(&self) -> Vec<(Arc<OwnedFd>, PollFlags, Watch)> {
        let mut v = Vec::new();
        for (i, w) in self.workers.iter().enumerate() {
            let Some(w) = w else { continue };
            match &w.pidfd {
                Some(p) if w.proc.sentinel().is_some() => {
                    v.push((p.clone(), PollFlags::IN, Watch::Exit(i, w.pid)))
                }
                _ if !w.eof => v.push((w.sock.clone(), PollFlags::IN, Watch::Sock(i, w.pid))),
                _ => {}
            }
            if !w.out.is_empty() && !w.wdead && !w.eof {
                v.push((w.sock.clone(), PollFlags::OUT, Watch::Sock(i, w.pid)));
            }
        }
        v
    }

    /// Reads every worker whose doorbell rang since it was last read.
    fn read_rung(&mut self) {
        for i in 0..self.workers.len() {
            if !self.rang(i) {
                continue;
            }
            self.read_worker_until(i, false);
            if let Some(w) = &self.workers[i]
                && w.eof
                && w.proc.sentinel().is_none()
            {
                self.handle_death(i);
            }
        }
    }

    fn rang(&self, i: usize) -> bool {
        self.workers[i].as_ref().is_some_and(|w| {
            !w.eof
                && w.progress
                    .atomic_u64(worker::FROM_WORKER)
                    .is_some_and(|b| b.load(Ordering::Acquire) != w.seen_from)
        })
    }

    /// The dispatcher loop on a user thread, until `ready()` or `deadline`.
    fn drive(&mut self, ready: &dyn Fn() -> bool, deadline: Deadline) -> bool {
        loop {
            if ready() {
                return true;
            }
            // Read first, then dispatch: results just read may have freed a worker,
            // which must get more work before this thread goes to sleep.
            self.read_rung();
            if self.step() {
                return ready();
            }
            if ready() {
                return true;
            }
            let left = deadline.remaining();
            if left.is_some_and(|l| l.is_zero()) {
                return false;
            }
            // Spin only while a core is free: with every core busy running workers, a
            // spinning caller would take turns with them instead of letting them work.
            if self.busy_workers() < cores() && SPIN.spin(|| ready() || self.bell_rang()) {
                continue;
            }
            // Nothing soon: sleep on everything (a submission from a thread that could
            // not take the engine rings `wake`), but wake now and then to look at
            // `ready()`, which another thread may settle (a cancel).
            let mut timeout = Duration::from_millis(20);
            if let Some(l) = left {
                timeout = timeout.min(l);
            }
            if let Some(t) = self.check_time_limits() {
                timeout = timeout.min(t);
            }
            let slept = std::time::Instant::now();
            self.poll_events(Some(timeout));
            SPIN.after_sleep(slept.elapsed(), true);
        }
    }

    /// Hands queued chunks to workers that want more, least loaded first.
    fn dispatch(&mut self) {
        let long_tasks = self.ewma_us.is_none_or(|e| e >= 1000.0);
        loop {
            if self.queue.is_empty() {
                return;
            }
            let mut best: Option<usize> = None;
            for (i, w) in self.workers.iter().enumerate() {
                let Some(w) = w else { continue };
                if w.exiting || w.eof || w.wdead || w.killed_for.is_some() {
                    continue;
                }
                if self.cfg.max_tasks != 0 && w.sent_items >= self.cfg.max_tasks {
                    continue;
                }
                let wants = if w.held.is_empty() {
                    true
                } else if long_tasks {
                    false
                } else {
                    let est = self.ewma_us.unwrap_or(1000.0) * w.held_items as f64;
                    w.held.len() < 256 && est < 2000.0
                };
                if wants
                    && best.is_none_or(|b| {
                        self.workers[b]
                            .as_ref()
                            .map_or(usize::MAX, |bw| bw.held_items)
                            > w.held_items
                    })
                {
                    best = Some(i);
                }
            }
            let Some(i) = best else { return };
            let Some(mut chunk) = self.queue.pop_front() else {
                return;
            };
            if !chunk.sink.start() {
                // Cancelled before it started: drop silently (the sink already reported).
                continue;
            }
            let w = self.workers[i].as_mut().expect("chosen worker exists");
            if self.cfg.max_tasks != 0 {
                let room = (self.cfg.max_tasks - w.sent_items) as usize;
                if chunk.packed.is_none() && chunk.items.len() > room {
                    let rest = chunk.items.split_off(room);
                    self.queue.push_front(Chunk {
                        sink: chunk.sink.clone(),
                        func: chunk.func,
                        state: chunk.state.clone(),
                        items: rest,
                        packed: None,
                    });
                }
            }
            let id = self.next_chunk;
            self.next_chunk += 1;
            if let Some(st) = &chunk.state {
                self.states
                    .entry(st.id)
                    .or_insert_with(|| (Arc::downgrade(st), Vec::new()))
                    .1
                    .push(i);
            }
            send_chunk(w, id, chunk, self.cfg.time_limit.is_some());
        }
    }

    fn flush_all(&mut self) {
        let mut dead = Vec::new();
        for (i, slot) in self.workers.iter_mut().enumerate() {
            let Some(w) = slot else { continue };
            if !w.pending.is_empty() {
                w.out.push(std::mem::take(&mut w.pending));
            }
            if w.out.is_empty() || w.wdead {
                continue;
            }
            match w.out.flush(w.sock.as_fd()) {
                Ok(_) => {
                    if let Some(b) = w.progress.atomic_u64(worker::TO_WORKER) {
                        b.fetch_add(1, Ordering::Release);
                    }
                }
                Err(_) => {
                    // The worker is gone (EPIPE/ECONNRESET): its pidfd reports the
                    // death; what it wrote before dying is still read.
                    w.wdead = true;
                    w.out = OutQueue::default();
                    if w.proc.sentinel().is_none() {
                        dead.push(i);
                    }
                }
            }
        }
        for i in dead {
            self.handle_death(i);
        }
    }

    fn drop_dead_states(&mut self) {
        if self.states.is_empty() {
            return;
        }
        let gone: Vec<u64> = self
            .states
            .iter()
            .filter(|(_, (w, _))| w.strong_count() == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            let (_, holders) = self.states.remove(&id).expect("listed");
            for i in holders {
                if let Some(w) = self.workers.get_mut(i).and_then(Option::as_mut)
                    && w.states.remove(&id)
                {
                    w.pending.begin(wire::K_DROP_STATE, 0, id);
                    w.pending.end();
                }
            }
        }
    }

    /// Kills workers past the time limit; returns how long to sleep at most.
    fn check_time_limits(&mut self) -> Option<Duration> {
        let limit = self.cfg.time_limit?;
        let now = worker::now_ns();
        let mut next: Option<Duration> = None;
        let limit_ns = limit.as_nanos() as u64;
        for w in self.workers.iter_mut().flatten() {
            if w.held.is_empty() || w.killed_for.is_some() {
                continue;
            }
            let Some(p) = Progress::new(&w.progress) else {
                continue;
            };
            let wait = match p.running() {
                Some(r) => {
                    let deadline = r.start_ns.saturating_add(limit_ns);
                    if now >= deadline {
                        w.killed_for = Some(limit);
                        kill(w);
                        continue;
                    }
                    Duration::from_nanos(deadline - now)
                }
                None => Duration::from_millis(5),
            };
            next = Some(next.map_or(wait, |n| n.min(wait)));
        }
        next
    }

    /// Workers that hold work (each is, or is about to be, running on a core).
    fn busy_workers(&self) -> usize {
        self.workers
            .iter()
            .flatten()
            .filter(|w| !w.held.is_empty())
            .count()
    }

    /// Whether a submission or a worker's result arrived since they were last looked at.
    fn bell_rang(&self) -> bool {
        self.shared.submitted.load(Ordering::SeqCst) != self.seen_submitted
            || (0..self.workers.len()).any(|i| self.rang(i))
    }

    fn poll_events(&mut self, timeout: Option<Duration>) {
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(1 + 2 * self.workers.len());
        let mut who: Vec<(usize, bool)> = Vec::new();
        fds.push(PollFd::new(&self.shared.wake, PollFlags::IN));
        for (i, w) in self.workers.iter().enumerate() {
            let Some(w) = w else { continue };
            if !w.eof {
                let mut fl = PollFlags::IN;
                if !w.out.is_empty() && !w.wdead {
                    fl |= PollFlags::OUT;
                }
                fds.push(PollFd::new(&*w.sock, fl));
                who.push((i, false));
            }
            if let Some(p) = w.proc.sentinel() {
                fds.push(PollFd::from_borrowed_fd(p, PollFlags::IN));
                who.push((i, true));
            }
        }
        let ts = timeout.map(|t| {
            Timespec::try_from(t).unwrap_or(Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            })
        });
        match poll(&mut fds, ts.as_ref()) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let ready: Vec<(usize, bool)> = fds[1..]
            .iter()
            .zip(&who)
            .filter(|(f, _)| !f.revents().is_empty())
            .map(|(_, &(i, pidfd))| (i, pidfd))
            .collect();
        let woke = !fds[0].revents().is_empty();
        drop(fds);
        if woke {
            let mut b = [0u8; 8];
            let _ = rustix::io::read(&self.shared.wake, &mut b);
        }
        self.read_and_reap(ready);
    }

    /// Reads the workers whose sockets are ready, and handles the deaths among them
    /// (`true`: the worker's pidfd reported its exit).
    fn read_and_reap(&mut self, ready: Vec<(usize, bool)>) {
        let mut deaths = Vec::new();
        for (i, is_pidfd) in ready {
            if is_pidfd {
                deaths.push(i);
            } else {
                self.read_worker(i);
                if let Some(w) = &self.workers[i]
                    && w.eof
                    && w.proc.sentinel().is_none()
                {
                    deaths.push(i);
                }
            }
        }
        deaths.sort_unstable();
        deaths.dedup();
        for i in deaths {
            self.handle_death(i);
        }
    }

    /// Reads everything the worker sent and delivers it.
    fn read_worker(&mut self, i: usize) {
        self.read_worker_until(i, true)
    }

    /// Reads what worker `i` sent: until the socket is empty (`drain`), or until a read
    /// comes back short (its doorbell rings again for anything sent later).
    fn read_worker_until(&mut self, i: usize, drain: bool) {
        loop {
            let Some(w) = self.workers[i].as_mut() else {
                return;
            };
            if w.eof {
                return;
            }
            if let Some(b) = w.progress.atomic_u64(worker::FROM_WORKER) {
                w.seen_from = b.load(Ordering::Acquire);
            }
            let mut more = true;
            match w.inbuf.fill(w.sock.as_fd()) {
                Ok(0) => w.eof = true,
                Ok(_) => more = drain || w.inbuf.filled_up(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => w.eof = true,
            }
            if self.process_frames(i).is_err()
                && let Some(w) = self.workers[i].as_mut()
            {
                // A corrupt stream: stop trusting this worker.
                w.eof = true;
                kill(w);
            }
            if !more {
                return;
            }
        }
    }

    fn process_frames(&mut self, i: usize) -> io::Result<()> {
        let mut deliveries: Vec<(Arc<dyn Sink>, usize, Raw)> = Vec::new();
        let mut packs: Vec<PackDelivery> = Vec::new();
        let mut broken = None;
        {
            let Some(w) = self.workers[i].as_mut() else {
                return Ok(());
            };
            while let Some(mut frame) = w.inbuf.next_frame()? {
                let body = w.inbuf.body(&frame);
                let mut c = Cursor::new(body);
                let kind = c.u32()?;
                let count = c.u32()?;
                let _ = c.u64()?;
                for _ in 0..count {
                    let chunk = c.u64()?;
                    let pos = c.u32()? as usize;
                    let status = c.u32()?;
                    let len = c.u64()? as usize;
                    let elapsed_us = c.u32()?;
                    let nfds = c.u32()? as usize;
                    let payload = c.payload(len)?;
                    let fds: Vec<OwnedFd> = frame.fds.drain(..nfds.min(frame.fds.len())).collect();
                    if kind == wire::K_INIT_FAILED {
                        broken = Some(format!(
                            "a worker's initializer failed: {}",
                            String::from_utf8_lossy(payload)
                        ));
                        continue;
                    }
                    let text = || String::from_utf8_lossy(payload).into_owned();
                    let x = elapsed_us as f64;
                    self.ewma_us = Some(self.ewma_us.map_or(x, |e| 0.8 * e + 0.2 * x));
                    let Some(h) = w.held.get_mut(&chunk) else {
                        continue;
                    };
                    let before = h.left;
                    match (&mut h.packed, status) {
                        (Some((p, open)), wire::ST_PACKED) => {
                            let all = Arc::new(Payload::copied(payload, fds));
                            let positions: Vec<u32> = if h.left == open.len() {
                                // Every item of the chunk was still open (the usual case).
                                open.fill(false);
                                h.left = 0;
                                (0..open.len() as u32).collect()
                            } else {
                                let mut v = Vec::with_capacity(h.left);
                                for (pos, o) in open.iter_mut().enumerate() {
                                    if *o {
                                        *o = false;
                                        v.push(pos as u32);
                                        h.left -= 1;
                                    }
                                }
                                v
                            };
                            packs.push((h.sink.clone(), p.base, positions, all));
                        }
                        (Some((p, open)), wire::ST_PACKED_ERR) => {
                            let e = TaskError::Codec { message: text() };
                            for (pos, o) in open.iter_mut().enumerate() {
                                if *o {
                                    *o = false;
                                    deliveries.push((
                                        h.sink.clone(),
                                        p.base + pos,
                                        Raw::err(e.clone()),
                                    ));
                                    h.left -= 1;
                                }
                            }
                        }
                        (Some((p, open)), _) => {
                            if let Some(o) = open.get_mut(pos)
                                && *o
                            {
                                *o = false;
                                h.left -= 1;
                                let e = if status == wire::ST_PANIC {
                                    TaskError::Panicked { message: text() }
                                } else {
                                    TaskError::Codec { message: text() }
                                };
                                deliveries.push((h.sink.clone(), p.base + pos, Raw::err(e)));
                            }
                        }
                        (None, _) => {
                            if let Some(item) = h.items.get_mut(pos).and_then(Option::take) {
                                h.left -= 1;
                                let raw = match status {
                                    wire::ST_OK => Raw::ok(Payload::copied(payload, fds)),
                                    wire::ST_PANIC => {
                                        Raw::err(TaskError::Panicked { message: text() })
                                    }
                                    _ => Raw::err(TaskError::Codec { message: text() }),
                                };
                                deliveries.push((h.sink.clone(), item.index, raw));
                            }
                        }
                    }
                    w.held_items -= before - h.left;
                    if h.left == 0 {
                        w.held.remove(&chunk);
                    }
                }
                w.inbuf.consume(&frame);
            }
        }
        if let Some(reason) = broken {
            let mut q = self.shared.lock();
            if q.broken.is_none() {
                q.broken = Some(reason);
            }
        }
        // Failures first: a fail-fast job then reports the failure, not a partial list.
        deliver(deliveries);
        for (sink, base, positions, all) in packs {
            sink.complete_packed(base, positions, all);
        }
        Ok(())
    }

    /// A worker exited: deliver what it sent, fail the item it was running, re-queue
    /// the items it never started, and replace it.
    fn handle_death(&mut self, i: usize) {
        self.read_worker(i);
        let Some(mut w) = self.workers[i].take() else {
            return;
        };
        let running = Progress::new(&w.progress).and_then(|p| p.running());
        let (signal, exitcode) = reap(&mut w);
        mp_log!(Level::DEBUG, "cleaning up worker {i}");
        let lost = match w.killed_for {
            Some(limit) => TaskError::TimedOut { pid: w.pid, limit },
            None => TaskError::WorkerLost {
                pid: w.pid,
                signal,
                exitcode,
            },
        };
        let mut requeue = Vec::new();
        let mut fails = Vec::new();
        let mut ids: Vec<u64> = w.held.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let h = w.held.remove(&id).expect("listed");
            if let Some((mut p, open)) = h.packed {
                let mut any = false;
                for (pos, o) in open.iter().enumerate() {
                    if !*o {
                        continue;
                    }
                    let culprit = running.is_some_and(|r| r.chunk == id && r.pos as usize == pos);
                    if culprit || p.retries >= 2 {
                        fails.push((h.sink.clone(), p.base + pos, lost.clone()));
                    } else {
                        any = true;
                    }
                }
                if any {
                    p.skip = (0..p.n as u32)
                        .filter(|&k| {
                            !open[k as usize]
                                || running.is_some_and(|r| r.chunk == id && r.pos == k)
                        })
                        .collect();
                    p.retries += 1;
                    requeue.push(Chunk {
                        sink: h.sink,
                        func: h.func,
                        state: h.state,
                        items: Vec::new(),
                        packed: Some(p),
                    });
                }
                continue;
            }
            let mut again = Vec::new();
            for (pos, it) in h.items.into_iter().enumerate() {
                let Some(mut it) = it else { continue };
                let culprit = running.is_some_and(|r| r.chunk == id && r.pos as usize == pos);
                if culprit || it.retries >= 2 {
                    fails.push((h.sink.clone(), it.index, lost.clone()));
                } else {
                    it.retries += 1;
                    again.push(it);
                }
            }
            if !again.is_empty() {
                requeue.push(Chunk {
                    sink: h.sink,
                    func: h.func,
                    state: h.state,
                    items: again,
                    packed: None,
                });
            }
        }
        for c in requeue.into_iter().rev() {
            self.queue.push_front(c);
        }
        deliver(
            fails
                .into_iter()
                .map(|(s, i, e)| (s, i, Raw::err(e)))
                .collect(),
        );
        let (closed, broken) = {
            let q = self.shared.lock();
            (q.closed || q.terminate, q.broken.is_some())
        };
        let needed = !broken && (!closed || !self.queue.is_empty()) && !self.exit_sent;
        if needed {
            match spawn_worker(&self.cfg, &self.shared) {
                Ok(nw) => self.workers[i] = Some(nw),
                Err(e) => {
                    let mut q = self.shared.lock();
                    if q.broken.is_none() {
                        q.broken = Some(format!("a replacement worker could not be started: {e}"));
                    }
                }
            }
        }
        if broken || self.workers.iter().all(Option::is_none) {
            // Nothing can run the queue any more.
            let reason = self.shared.lock().broken.clone();
            if let Some(reason) = reason {
                let e = TaskError::Broken { reason };
                for c in self.queue.drain(..) {
                    c.fail(&e);
                }
                if self.workers.iter().all(Option::is_none) {
                    self.exit_sent = true;
                }
            }
        }
        self.publish_pids();
    }

    /// Kills every worker, fails everything, reaps.
    fn terminate_all(&mut self, e: &TaskError) {
        mp_log!(Level::DEBUG, "terminating workers");
        for w in self.workers.iter_mut().flatten() {
            kill(w);
        }
        mp_log!(Level::DEBUG, "joining pool workers");
        let mut fails = Vec::new();
        for slot in self.workers.iter_mut() {
            if let Some(mut w) = slot.take() {
                for (_, h) in w.held.drain() {
                    for it in h.items.into_iter().flatten() {
                        fails.push((h.sink.clone(), it.index));
                    }
                    if let Some((p, open)) = h.packed {
                        for (k, o) in open.iter().enumerate() {
                            if *o {
                                fails.push((h.sink.clone(), p.base + k));
                            }
                        }
                    }
                }
                let _ = reap(&mut w);
            }
        }
        let queued: Vec<Chunk> = {
            let mut q = self.shared.lock();
            q.finished = true;
            q.pids.clear();
            q.chunks.drain(..).collect()
        };
        deliver(
            fails
                .into_iter()
                .map(|(s, i)| (s, i, Raw::err(e.clone())))
                .collect(),
        );
        for c in self.queue.drain(..).chain(queued) {
            c.fail(e);
        }
    }
}

fn kill(w: &mut Worker) {
    let _ = w.proc.kill();
}

/// Waits for an exited (or killed) worker and returns (signal, exit code).
fn reap(w: &mut Worker) -> (Option<i32>, Option<i32>) {
    let _ = w.proc.join_timeout(Duration::from_secs(5));
    let code = w.proc.exitcode();
    let signal = code.filter(|c| *c < 0).map(|c| -c);
    (signal, code)
}

/// A packed chunk's successes on their way to the sink: base, positions, results.
type PackDelivery = (Arc<dyn Sink>, usize, Vec<u32>, Arc<Payload>);

/// Hands outcomes to their sinks, several at a time per sink.
fn deliver(v: Vec<(Arc<dyn Sink>, usize, Raw)>) {
    let mut batch: Vec<(usize, Raw)> = Vec::new();
    let mut cur: Option<Arc<dyn Sink>> = None;
    for (s, i, r) in v {
        if cur.as_ref().is_some_and(|c| !Arc::ptr_eq(c, &s))
            && let Some(c) = cur.take()
        {
            c.complete_many(std::mem::take(&mut batch));
        }
        cur = Some(s);
        batch.push((i, r));
    }
    if let Some(c) = cur {
        c.complete_many(batch);
    }
}

fn send_chunk(w: &mut Worker, id: u64, chunk: Chunk, timed: bool) {
    let timed_flag = if timed { wire::F_TIMED } else { 0 };
    if let Some(p) = chunk.packed {
        let fb = &mut w.pending;
        fb.begin(wire::K_RUN, p.n as u32, id);
        fb.put_u64(chunk.func.packed.unwrap_or(chunk.func.tramp));
        fb.put_u64(chunk.func.func);
        fb.put_u64(0);
        fb.put_u64(wire::F_PACKED | timed_flag);
        fb.put_u64(chunk.func.sig);
        fb.put_u64(0);
        let fds = p.payload.dup_fds();
        fb.put_u32(0);
        fb.put_u32(fds.len() as u32);
        fb.put_u64(p.payload.bytes.len() as u64);
        fb.put_shared(p.payload.clone());
        fb.put_fds(fds);
        fb.put_u32(p.skip.len() as u32);
        fb.put_u32(0);
        fb.put_u64(0);
        let skip: Vec<u8> = p.skip.iter().flat_map(|k| k.to_le_bytes()).collect();
        fb.put_payload(&skip);
        fb.end();
        let open: Vec<bool> = (0..p.n as u32)
            .map(|k| p.skip.binary_search(&k).is_err())
            .collect();
        let n = open.iter().filter(|o| **o).count();
        w.sent_items += n as u64;
        w.held_items += n;
        w.held.insert(
            id,
            Held {
                sink: chunk.sink,
                func: chunk.func,
                state: chunk.state,
                items: Vec::new(),
                packed: Some((p, open)),
                left: n,
            },
        );
        return;
    }
    let fb = &mut w.pending;
    if let Some(st) = &chunk.state
        && w.states.insert(st.id)
    {
        fb.begin(wire::K_STATE, 1, st.id);
        let fds = st.payload.dup_fds();
        fb.put_u32(0);
        fb.put_u32(fds.len() as u32);
        fb.put_u64(st.payload.bytes.len() as u64);
        fb.put_payload(&st.payload.bytes);
        fb.put_fds(fds);
        fb.end();
    }
    fb.begin(wire::K_RUN, chunk.items.len() as u32, id);
    fb.put_u64(chunk.func.tramp);
    fb.put_u64(chunk.func.func);
    fb.put_u64(chunk.state.as_ref().map_or(0, |s| s.id));
    fb.put_u64(timed_flag);
    fb.put_u64(chunk.func.sig);
    fb.put_u64(0);
    for (pos, it) in chunk.items.iter().enumerate() {
        let fds = it.payload.dup_fds();
        fb.put_u32(pos as u32);
        fb.put_u32(fds.len() as u32);
        fb.put_u64(it.payload.bytes.len() as u64);
        fb.put_payload(&it.payload.bytes);
        fb.put_fds(fds);
    }
    fb.end();
    let n = chunk.items.len();
    w.sent_items += n as u64;
    w.held_items += n;
    w.held.insert(
        id,
        Held {
            sink: chunk.sink,
            func: chunk.func,
            state: chunk.state,
            items: chunk.items.into_iter().map(Some).collect(),
            packed: None,
            left: n,
        },
    );
}

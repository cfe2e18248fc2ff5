//! The pool's communication thread: the only thread of the pool's rank that talks MPI.
//!
//! It takes submitted chunks from a queue, hands each worker at most [`MAX_IN_FLIGHT`]
//! at a time through non-blocking sends, receives outcomes (probing all the time, so a
//! worker's result send always finds a receiver), and fills the result slots. A
//! watchdog polls the pidfds of workers on this node: a worker that dies fails the
//! chunks it held with `TaskError::WorkerLost` and breaks the pool (MPI cannot replace
//! it), so nothing waits for ever.
use crate::env;
use crate::sys::{Isend, SendComm};
use crate::wire::{self, TAG_RESULT, TAG_STOP, TAG_TASK};
use mpi::point_to_point::MatchedReceiveVec;
use mpi::traits::*;
use mproc_core::Pidfd;
use mproc_pool::TaskError;
use rkyv::util::AlignedVec;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

/// Chunks a worker holds at once (one running, the next ones already delivered).
pub(crate) const MAX_IN_FLIGHT: usize = 2;

/// How often the watchdog looks at the workers' pidfds.
const WATCH_EVERY: Duration = Duration::from_millis(20);
/// How long the stop messages may take to leave before the workers count as lost.
const STOP_WAIT: Duration = Duration::from_secs(30);
/// After this long without traffic the thread sleeps between polls.
const HOT: Duration = Duration::from_millis(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A chunk's outcome: the encoded `(Vec<R>, Vec<(u32, String)>)`, or why it failed.
pub(crate) type Outcome = Result<AlignedVec, TaskError>;

/// Wakes whoever waits for "some result of this pool arrived" (as_completed, unordered
/// imap).
#[derive(Debug, Default)]
pub(crate) struct Notify {
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Notify {
    fn bump(&self) {
        *lock(&self.generation) += 1;
        self.cv.notify_all();
    }

    pub(crate) fn generation(&self) -> u64 {
        *lock(&self.generation)
    }

    /// Waits until the generation moves past `seen` or `deadline` passes.
    pub(crate) fn wait_past(&self, seen: u64, deadline: Option<Instant>) {
        let mut g = lock(&self.generation);
        while *g == seen {
            match deadline {
                None => g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return;
                    }
                    g = self
                        .cv
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct SlotState {
    outcome: Option<Outcome>,
    running: bool,
    waker: Option<Waker>,
}

/// Moves a pool's communication forward on the calling thread, if no other thread does
/// it at this moment. Whether anything moved.
pub(crate) trait Drive: Send + Sync {
    fn drive(&self) -> bool;
}

/// Where one chunk's outcome lands.
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    cv: Condvar,
    notify: Arc<Notify>,
    driver: Option<Arc<dyn Drive>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

/// How long a waiting caller drives the communication itself after the last thing that
/// moved, before it sleeps and leaves the work to the communication thread.
const DRIVE_FOR: Duration = Duration::from_millis(2);

impl Slot {
    pub(crate) fn new(notify: Arc<Notify>, driver: Option<Arc<dyn Drive>>) -> Arc<Slot> {
        Arc::new(Slot {
            state: Mutex::new(SlotState::default()),
            cv: Condvar::new(),
            notify,
            driver,
        })
    }

    pub(crate) fn fill(&self, o: Outcome) {
        let waker = {
            let mut s = lock(&self.state);
            if s.outcome.is_some() {
                return;
            }
            s.outcome = Some(o);
            s.running = false;
            s.waker.take()
        };
        self.cv.notify_all();
        self.notify.bump();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The pool-wide completion count (see [`Notify`]).
    pub(crate) fn notify_generation(&self) -> u64 {
        self.notify.generation()
    }

    /// Waits until some result of this slot's pool arrives after `seen`, or `until`.
    pub(crate) fn wait_notify(&self, seen: u64, until: Instant) {
        self.notify.wait_past(seen, Some(until));
    }

    fn set_running(&self) {
        lock(&self.state).running = true;
    }

    pub(crate) fn running(&self) -> bool {
        lock(&self.state).running
    }

    pub(crate) fn ready(&self) -> bool {
        lock(&self.state).outcome.is_some()
    }

    /// Waits for the outcome until `deadline`; applies `f` to it if it came. The waiting
    /// thread first drives the communication itself for a while (a round trip then
    /// wakes no other thread), then sleeps.
    pub(crate) fn with<T>(
        &self,
        deadline: Option<Instant>,
        f: impl FnOnce(&Outcome) -> T,
    ) -> Option<T> {
        if let Some(d) = &self.driver {
            let mut moved = Instant::now();
            loop {
                if let Some(o) = &lock(&self.state).outcome {
                    return Some(f(o));
                }
                let now = Instant::now();
                if deadline.is_some_and(|dl| now >= dl) || now - moved > DRIVE_FOR {
                    break;
                }
                if d.drive() {
                    moved = now;
                } else {
                    std::thread::yield_now();
                }
            }
        }
        let mut s = lock(&self.state);
        loop {
            if let Some(o) = &s.outcome {
                return Some(f(o));
            }
            match deadline {
                None => s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    s = self
                        .cv
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    /// The outcome if it is there; otherwise registers `waker`.
    pub(crate) fn poll_with<T>(&self, waker: &Waker, f: impl FnOnce(&Outcome) -> T) -> Option<T> {
        let mut s = lock(&self.state);
        match &s.outcome {
            Some(o) => Some(f(o)),
            None => {
                s.waker = Some(waker.clone());
                None
            }
        }
    }
}

/// A chunk waiting to be sent.
pub(crate) struct Task {
    pub(crate) tramp: u64,
    pub(crate) func: u64,
    /// `FnSig::hash` of the function's type.
    pub(crate) sig: u64,
    pub(crate) payload: AlignedVec,
    pub(crate) slot: Arc<Slot>,
}

/// What user threads share with the communication thread.
pub(crate) struct Shared {
    pub(crate) queue: Mutex<Control>,
    pub(crate) notify: Arc<Notify>,
}

/// The submission queue and the pool's state.
#[derive(Default)]
pub(crate) struct Control {
    pub(crate) tasks: VecDeque<Task>,
    /// No more submissions (close or terminate).
    pub(crate) closed: bool,
    /// Fail what is queued; stop once what runs is back.
    pub(crate) terminate: bool,
    /// Why the pool cannot run work any more.
    pub(crate) broken: Option<String>,
    /// The communication thread has ended.
    pub(crate) stopped: bool,
    /// Chunks submitted and not yet finished.
    pub(crate) outstanding: usize,
}

/// A worker as the pool sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Its rank in the pool's communicator (the remote group's in spawn mode).
    pub rank: i32,
    /// Its process id (on its own node).
    pub pid: i32,
    /// The node it runs on (`MPI_Get_processor_name`).
    pub node: String,
}

struct Worker {
    info: WorkerInfo,
    pidfd: Option<Pidfd>,
    alive: bool,
    held: Vec<u64>,
    sends: Vec<Isend>,
}

/// The communication state of a pool, driven by its communication thread and by
/// callers waiting for results.
pub(crate) struct Driver<C> {
    engine: Mutex<Option<Engine<C>>>,
    /// A caller drove since the communication thread last looked.
    caller_drove: std::sync::atomic::AtomicBool,
}

impl<C: Communicator> Drive for Driver<C> {
    fn drive(&self) -> bool {
        let Ok(mut g) = self.engine.try_lock() else {
            return false;
        };
        self.caller_drove
            .store(true, std::sync::atomic::Ordering::Relaxed);
        g.as_mut().is_some_and(Engine::tick)
    }
}

impl<C: Communicator> Driver<C> {
    pub(crate) fn new(engine: Engine<C>) -> Arc<Self> {
        Arc::new(Driver {
            engine: Mutex::new(Some(engine)),
            caller_drove: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The communication thread: drives while no caller does, until the pool is closed
    /// and its work is back, then releases the workers.
    pub(crate) fn run(&self) {
        let mut last = Instant::now();
        loop {
            if self
                .caller_drove
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                // A waiting caller drives; stay out of its way.
                std::thread::park_timeout(Duration::from_micros(300));
                continue;
            }
            let (busy, done) = {
                let mut g = lock(&self.engine);
                match g.as_mut() {
                    Some(e) => (e.tick(), e.done()),
                    None => return,
                }
            };
            if done {
                break;
            }
            if busy {
                last = Instant::now();
            } else if last.elapsed() < HOT {
                std::thread::yield_now();
            } else {
                std::thread::park_timeout(Duration::from_micros(200));
            }
        }
        let engine = lock(&self.engine).take();
        if let Some(e) = engine {
            e.shutdown();
        }
    }
}

/// The communication thread's state.
pub(crate) struct Engine<C> {
    comm: SendComm<C>,
    workers: Vec<Worker>,
    shared: Arc<Shared>,
    local: VecDeque<Task>,
    inflight: HashMap<u64, (usize, Arc<Slot>)>,
    next_id: u64,
    next_worker: usize,
    closed: bool,
    watched: Instant,
}

impl<C: Communicator> Engine<C> {
    /// `local_node`: this rank's node name; workers on it are watched through pidfds.
    pub(crate) fn new(
        comm: SendComm<C>,
        workers: Vec<WorkerInfo>,
        local_node: &str,
        shared: Arc<Shared>,
    ) -> Self {
        let workers = workers
            .into_iter()
            .map(|info| Worker {
                pidfd: (info.node == local_node)
                    .then(|| Pidfd::open(info.pid).ok())
                    .flatten(),
                info,
                alive: true,
                held: Vec::new(),
                sends: Vec::new(),
            })
            .collect();
        Engine {
            comm,
            workers,
            shared,
            local: VecDeque::new(),
            inflight: HashMap::new(),
            next_id: 1,
            next_worker: 0,
            closed: false,
            watched: Instant::now(),
        }
    }

    fn finish(&self, n: usize) {
        let mut c = lock(&self.shared.queue);
        c.outstanding = c.outstanding.saturating_sub(n);
    }

    /// Takes what was submitted; fails it at once after a `terminate`.
    fn pull(&mut self) {
        let terminate = {
            let mut c = lock(&self.shared.queue);
            self.local.extend(c.tasks.drain(..));
            self.closed = c.closed;
            c.terminate
        };
        if terminate && !self.local.is_empty() {
            let n = self.local.len();
            for t in self.local.drain(..) {
                t.slot.fill(Err(TaskError::Terminated));
            }
            self.finish(n);
        }
    }

    /// One round: submissions, MPI traffic, and the watchdog when due. Whether anything
    /// moved.
    fn tick(&mut self) -> bool {
        self.pull();
        let busy = self.step();
        if self.watched.elapsed() >= WATCH_EVERY {
            self.watched = Instant::now();
            self.watch();
        }
        busy
    }

    /// Closed, and everything sent came back.
    fn done(&self) -> bool {
        self.closed && self.local.is_empty() && self.inflight.is_empty()
    }

    /// Releases the workers (or, after a loss, what can be released).
    fn shutdown(mut self) {
        let clean = self.workers.iter().all(|w| w.alive) && self.stop_workers();
        if clean {
            let _g = env::lock();
            drop(self.comm);
        } else {
            // MPI cannot go on with a dead (or unresponsive) peer: a disconnect, or
            // `MPI_Finalize`, would wait for it for ever. Stop the survivors we can
            // reach, keep the communicator, and skip finalisation at exit.
            for w in &self.workers {
                if w.alive
                    && let Some(p) = &w.pidfd
                {
                    let _ = p.send_signal(libc::SIGKILL);
                }
            }
            env::POISONED.store(true, std::sync::atomic::Ordering::SeqCst);
            std::mem::forget(self.comm);
        }
        let mut c = lock(&self.shared.queue);
        c.stopped = true;
        drop(c);
        self.shared.notify.bump();
    }

    /// One round of receiving, completing sends and dispatching. Whether anything moved.
    fn step(&mut self) -> bool {
        let mut busy = false;
        let _g = env::lock();
        while let Some(probed) = self
            .comm
            .0
            .any_process()
            .immediate_matched_probe_with_tag(TAG_RESULT)
        {
            let (v, st) = probed.matched_receive_vec::<u8>();
            busy = true;
            self.on_result(st.source_rank(), &v);
        }
        for w in &mut self.workers {
            w.sends.retain_mut(|s| !s.poll());
        }
        let n = self.workers.len();
        for k in 0..n {
            if self.local.is_empty() {
                break;
            }
            let i = (self.next_worker + k) % n;
            while self.workers[i].alive
                && self.workers[i].held.len() < MAX_IN_FLIGHT
                && let Some(t) = self.local.pop_front()
            {
                let id = self.next_id;
                self.next_id += 1;
                let frame = wire::task(id, t.tramp, t.func, t.sig, &t.payload);
                let w = &mut self.workers[i];
                let send = Isend::start(&self.comm.0.process_at_rank(w.info.rank), TAG_TASK, frame);
                w.sends.push(send);
                w.held.push(id);
                t.slot.set_running();
                self.inflight.insert(id, (i, t.slot));
                busy = true;
            }
        }
        self.next_worker = (self.next_worker + 1) % n.max(1);
        busy
    }

    fn on_result(&mut self, rank: i32, frame: &[u8]) {
        let parsed = match wire::parse_result(frame) {
            Ok(p) => p,
            Err(e) => {
                self.break_pool(format!("worker rank {rank}: {e}"));
                return;
            }
        };
        let (id, outcome) = parsed;
        let Some((wi, slot)) = self.inflight.remove(&id) else {
            return;
        };
        self.workers[wi].held.retain(|&h| h != id);
        let o = match outcome {
            Ok(bytes) => {
                let mut a = AlignedVec::with_capacity(bytes.len());
                a.extend_from_slice(bytes);
                Ok(a)
            }
            Err(text) => Err(TaskError::Codec { message: text }),
        };
        slot.fill(o);
        self.finish(1);
    }

    /// Fails everything queued and every later submission with `Broken`.
    fn break_pool(&mut self, reason: String) {
        let n = self.local.len();
        for t in self.local.drain(..) {
            t.slot.fill(Err(TaskError::Broken {
                reason: reason.clone(),
            }));
        }
        let mut c = lock(&self.shared.queue);
        c.outstanding = c.outstanding.saturating_sub(n);
        let queued: Vec<Task> = c.tasks.drain(..).collect();
        c.outstanding = c.outstanding.saturating_sub(queued.len());
        for t in queued {
            t.slot.fill(Err(TaskError::Broken {
                reason: reason.clone(),
            }));
        }
        c.closed = true;
        if c.broken.is_none() {
            c.broken = Some(reason);
        }
    }

    /// The watchdog: a worker on this node whose process ended is lost.
    fn watch(&mut self) {
        for i in 0..self.workers.len() {
            let w = &mut self.workers[i];
            if !w.alive || w.pidfd.as_ref().is_none_or(|p| p.is_alive()) {
                continue;
            }
            w.alive = false;
            for s in w.sends.drain(..) {
                s.abandon();
            }
            let pid = w.info.pid;
            let held = std::mem::take(&mut w.held);
            let n = held.len();
            for id in held {
                if let Some((_, slot)) = self.inflight.remove(&id) {
                    slot.fill(Err(TaskError::WorkerLost {
                        pid,
                        signal: None,
                        exitcode: None,
                    }));
                }
            }
            let rank = w.info.rank;
            self.finish(n);
            self.break_pool(format!(
                "MPI worker rank {rank} (pid {pid}) died; MPI cannot replace it"
            ));
        }
    }

    /// Tells every live worker to stop and waits until the stops left (or the worker died).
    /// Whether every worker took its stop (false after a death, or past `STOP_WAIT`).
    fn stop_workers(&mut self) -> bool {
        let deadline = Instant::now() + STOP_WAIT;
        {
            let _g = env::lock();
            for w in &mut self.workers {
                if w.alive {
                    let s = Isend::start(
                        &self.comm.0.process_at_rank(w.info.rank),
                        TAG_STOP,
                        Vec::new(),
                    );
                    w.sends.push(s);
                }
            }
        }
        loop {
            let pending = {
                let _g = env::lock();
                let mut pending = false;
                for w in &mut self.workers {
                    w.sends.retain_mut(|s| !s.poll());
                    pending |= w.alive && !w.sends.is_empty();
                }
                pending
            };
            if !pending {
                return self.workers.iter().all(|w| w.alive);
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(100));
            self.watch();
        }
    }
}

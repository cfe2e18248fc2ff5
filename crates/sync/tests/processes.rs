//! Every primitive between processes, started with the default start method
//! (`cargo xtask test-all` re-runs this file under fork, spawn and forkserver).
//! Behaviours ported from CPython's `_test_multiprocessing` (`_TestLock`,
//! `_TestSemaphore`, `_TestCondition`, `_TestEvent`, `_TestBarrier`).
//!
//! Every child is a `Process` owned by the test: dropping it (also when an assertion
//! fails) kills and reaps it.
use mproc_core::Region;
use mproc_spawn::Process;
use mproc_sync::*;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn start<A, R>(f: fn(A) -> R, args: A) -> Process<R>
where
    A: mproc_core::Message + Send + 'static,
    R: mproc_core::Message + 'static,
{
    let mut p = Process::new(f, args);
    p.start().expect("start a child");
    p
}

fn join<R: mproc_core::Message + 'static>(p: &mut Process<R>) -> R {
    match p.join_timeout(Duration::from_secs(120)) {
        Ok(Some(r)) => r,
        Ok(None) => panic!("child did not finish in time"),
        Err(e) => panic!("child failed: {e}"),
    }
}

// ---------------------------------------------------------------- Lock

fn increment(args: (Lock, Region, u32)) -> u32 {
    let (lock, region, n) = args;
    let counter = region.atomic_u64(0).unwrap();
    for _ in 0..n {
        lock.acquire().unwrap();
        // A plain read-modify-write: only the lock makes it exact.
        let v = counter.load(Ordering::Relaxed);
        counter.store(v + 1, Ordering::Relaxed);
        lock.release().unwrap();
    }
    n
}

#[test]
fn two_processes_100k_increments_each_end_at_200k() {
    let lock = Lock::new().unwrap();
    let region = Region::new(4096).unwrap();
    let mut ps: Vec<_> = (0..2)
        .map(|_| {
            start(
                increment,
                (lock.clone(), region.try_clone().unwrap(), 100_000),
            )
        })
        .collect();
    for p in &mut ps {
        assert_eq!(join(p), 100_000);
    }
    assert_eq!(
        region.atomic_u64(0).unwrap().load(Ordering::SeqCst),
        200_000
    );
    assert!(!lock.locked());
}

fn mutex_increment(args: (Mutex<u64>, u32)) -> u32 {
    for _ in 0..args.1 {
        *args.0.lock().unwrap() += 1;
    }
    args.1
}

#[test]
fn typed_mutex_counts_exactly_across_processes() {
    let m = Mutex::new(0u64).unwrap();
    let mut ps: Vec<_> = (0..2)
        .map(|_| start(mutex_increment, (m.clone(), 20_000)))
        .collect();
    for p in &mut ps {
        join(p);
    }
    assert_eq!(*m.lock().unwrap(), 40_000);
}

fn hold_until(args: (Lock, Event, Event)) -> bool {
    let (lock, held, done) = args;
    lock.acquire().unwrap();
    held.set();
    let ok = done.wait_timeout(Duration::from_secs(60));
    lock.release().unwrap();
    ok
}

#[test]
fn acquire_timeout_on_a_lock_held_by_another_process() {
    let (lock, held, done) = (
        Lock::new().unwrap(),
        Event::new().unwrap(),
        Event::new().unwrap(),
    );
    let mut p = start(hold_until, (lock.clone(), held.clone(), done.clone()));
    assert!(held.wait_timeout(Duration::from_secs(60)));
    let t0 = Instant::now();
    assert!(!lock.acquire_timeout(Duration::from_millis(100)).unwrap());
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(100), "{took:?}");
    done.set();
    assert!(join(&mut p));
    // Released by the child: free again.
    assert!(lock.acquire_timeout(Duration::from_secs(10)).unwrap());
    lock.release().unwrap();
}

fn release_from_child(lock: Lock) -> bool {
    lock.release().is_ok()
}

#[test]
fn a_lock_may_be_released_by_another_process() {
    let lock = Lock::new().unwrap();
    lock.acquire().unwrap();
    let mut p = start(release_from_child, lock.clone());
    assert!(join(&mut p));
    assert!(!lock.locked());
}

fn rlock_probe(r: RLock) -> (bool, bool) {
    (r.try_acquire().unwrap(), r.release().is_err())
}

#[test]
fn rlock_is_owned_by_its_process_and_thread() {
    let r = RLock::new().unwrap();
    let _g = r.lock().unwrap();
    let mut p = start(rlock_probe, r.clone());
    assert_eq!(join(&mut p), (false, true));
    assert_eq!(r.recursion_count(), 1);
}

// ---------------------------------------------------------------- owner died

fn die_holding(args: (Lock, Event)) -> u32 {
    let (lock, held) = args;
    lock.acquire().unwrap();
    held.set();
    // Die while holding the lock, without any chance to release it.
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::thread::sleep(Duration::from_secs(60));
    0
}

#[test]
fn holder_killed_while_holding_next_acquirer_gets_owner_died() {
    let (lock, held) = (Lock::new().unwrap(), Event::new().unwrap());
    let mut p = start(die_holding, (lock.clone(), held.clone()));
    assert!(held.wait_timeout(Duration::from_secs(60)));
    let child_pid = p.pid().unwrap() as u32;
    assert!(p.join_timeout(Duration::from_secs(60)).is_err()); // killed by SIGKILL
    let t0 = Instant::now();
    let err = lock
        .acquire()
        .expect_err("the dead holder must be reported");
    assert_eq!(err.pid(), child_pid);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // Recover: we hold the lock; release it, and it works normally again.
    lock.release().unwrap();
    assert!(lock.try_acquire().unwrap());
    lock.release().unwrap();
    let mut p = start(increment, (lock.clone(), Region::new(64).unwrap(), 100));
    assert_eq!(join(&mut p), 100);
}

fn hold_forever(args: (Mutex<u64>, Event)) -> u32 {
    let (m, held) = args;
    let mut g = m.lock().unwrap();
    *g = 13; // a half-done update the survivor must repair
    held.set();
    std::thread::sleep(Duration::from_secs(120));
    0
}

#[test]
fn blocked_waiter_learns_of_a_killed_holder_within_bounded_time() {
    let (m, held) = (Mutex::new(0u64).unwrap(), Event::new().unwrap());
    let p = start(hold_forever, (m.clone(), held.clone()));
    assert!(held.wait_timeout(Duration::from_secs(60)));
    let m2 = m.clone();
    let waiter = std::thread::spawn(move || {
        let r = match m2.lock() {
            Ok(_) => None,
            Err(e) => {
                let pid = e.pid();
                let mut g = e.into_inner();
                let seen = *g;
                *g = 0; // repaired
                Some((pid, seen))
            }
        };
        (r, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(50));
    let pid = p.pid().unwrap() as u32;
    p.kill().unwrap();
    let killed = Instant::now();
    let (report, got) = waiter.join().unwrap();
    assert_eq!(report, Some((pid, 13)));
    let delay = got.saturating_duration_since(killed);
    // Aim: ≤ 10 ms (woken at the holder's exit); a generous bound for a loaded machine.
    assert!(delay < Duration::from_secs(3), "took over after {delay:?}");
    *m.lock().unwrap() += 1;
    assert_eq!(*m.lock().unwrap(), 1);
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process on the machine, so a
/// time read in a child compares with one read in the parent.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn hold_lock_forever(args: (Lock, Event)) -> u32 {
    let (lock, held) = args;
    lock.acquire().unwrap();
    held.set();
    std::thread::sleep(Duration::from_secs(120));
    0
}

/// Waits for the lock (already held by another process); returns the pid its report
/// names (0 if it was released cleanly) and the monotonic time of the report.
fn wait_for_lock(args: (Lock, Event)) -> (u32, u64) {
    let (lock, waiting) = args;
    waiting.set();
    match lock.acquire() {
        Ok(()) => (0, monotonic_ns()),
        Err(e) => {
            let at = monotonic_ns();
            (e.pid(), at)
        }
    }
}

/// Issue #11's target: a holder SIGKILLed while another *process* sleeps waiting for
/// its lock is reported to that waiter within 10 ms (the waiter's process watches the
/// holder's pidfd and is woken when it exits). Timed over 30 trials from the moment the parent sends
/// SIGKILL; the assertion bound is generous (the machine may be loaded), the figures
/// are printed (`--nocapture`).
#[test]
fn waiting_process_learns_of_a_sigkilled_holder_within_10ms() {
    const TRIALS: usize = 30;
    let mut delays = Vec::with_capacity(TRIALS);
    for trial in 0..TRIALS {
        let (lock, held, waiting) = (
            Lock::new().unwrap(),
            Event::new().unwrap(),
            Event::new().unwrap(),
        );
        let holder = start(hold_lock_forever, (lock.clone(), held.clone()));
        assert!(held.wait_timeout(Duration::from_secs(60)));
        let mut waiter = start(wait_for_lock, (lock.clone(), waiting.clone()));
        assert!(waiting.wait_timeout(Duration::from_secs(60)));
        // Let the waiter sleep on the futex long enough that a backoff would have grown
        // (the old 10 → 100 ms one reported this kill after ~40 ms), then kill at a
        // different moment in each trial.
        let jitter = Duration::from_micros((trial as u64 * 1_700) % 10_000);
        std::thread::sleep(Duration::from_millis(200) + jitter);
        let holder_pid = holder.pid().unwrap() as u32;
        let killed = monotonic_ns();
        holder.kill().unwrap();
        let (pid, at) = join(&mut waiter);
        assert_eq!(
            pid, holder_pid,
            "the waiter must get OwnerDied naming the holder"
        );
        let delay = Duration::from_nanos(at.saturating_sub(killed));
        assert!(
            delay < Duration::from_millis(500),
            "reported after {delay:?}"
        );
        delays.push(delay);
        // The waiter exited holding the lock it took over: the parent's acquire is
        // an OwnerDied report too, and leaves the lock usable.
        assert!(lock.acquire().is_err());
        lock.release().unwrap();
    }
    delays.sort();
    let median = delays[TRIALS / 2];
    eprintln!(
        "dead holder reported after: median {median:?}, max {:?} (min {:?}) over {TRIALS} trials",
        delays[TRIALS - 1],
        delays[0]
    );
    // The median shrugs off a few scheduling spikes; 30 ms is three times the target.
    assert!(
        median < Duration::from_millis(30),
        "median report delay {median:?}"
    );
}

/// The calling thread's voluntary context switches so far (each futex sleep is one).
fn voluntary_switches() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches in /proc/thread-self/status")
}

/// How many `mproc-watcher` threads this process has.
fn watcher_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "mproc-watcher")
        .count()
}

/// Takes the lock, says so, waits until the waiter sleeps, holds it `ms` more, releases.
fn hold_for(args: (Lock, Event, Event, u64)) -> u32 {
    let (lock, held, waiting, ms) = args;
    lock.acquire().unwrap();
    held.set();
    assert!(waiting.wait_timeout(Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(ms));
    lock.release().unwrap();
    0
}

/// Waits for the lock; returns whether it came clean and how often this thread went to
/// sleep meanwhile.
fn wait_counting_sleeps(args: (Lock, Event)) -> (bool, u64) {
    let (lock, waiting) = args;
    let before = voluntary_switches();
    waiting.set();
    let clean = lock.acquire().is_ok();
    let slept = voluntary_switches() - before;
    lock.release().unwrap();
    (clean, slept)
}

/// A waiter behind a live holder (400 ms) is not woken periodically (the old 5 ms
/// polling slept ~80 times) and never calls the holder dead.
#[test]
fn a_waiter_behind_a_live_holder_sleeps_without_periodic_wakeups() {
    let (lock, held, waiting) = (
        Lock::new().unwrap(),
        Event::new().unwrap(),
        Event::new().unwrap(),
    );
    let mut holder = start(hold_for, (lock.clone(), held.clone(), waiting.clone(), 400));
    assert!(held.wait_timeout(Duration::from_secs(60)));
    let mut waiter = start(wait_counting_sleeps, (lock.clone(), waiting.clone()));
    let (clean, slept) = join(&mut waiter);
    assert_eq!(join(&mut holder), 0);
    assert!(clean, "a live holder was reported dead");
    eprintln!("the waiter slept {slept} times behind a 400 ms holder");
    assert!(slept < 20, "the waiter woke {slept} times: it polls");
}

/// Waits for the lock, then reports what `wait_for_lock` does and how many watcher
/// threads this process has.
fn wait_for_lock_count_watchers(args: (Lock, Event)) -> (u32, u64, usize) {
    let (pid, at) = wait_for_lock(args);
    (pid, at, watcher_threads())
}

/// A process whose parent already had a watcher thread (a fork child inherits the
/// memory, not the thread) still learns of a dead holder: it starts its own watcher.
#[test]
fn a_child_of_a_watching_parent_learns_of_a_dead_holder() {
    // Make this process start its watcher: wait > 1 ms behind a live holder.
    let (first, held1, waiting1) = (
        Lock::new().unwrap(),
        Event::new().unwrap(),
        Event::new().unwrap(),
    );
    let mut holder1 = start(
        hold_for,
        (first.clone(), held1.clone(), waiting1.clone(), 0),
    );
    assert!(held1.wait_timeout(Duration::from_secs(60)));
    assert!(matches!(
        first.acquire_timeout(Duration::from_millis(30)),
        Ok(false)
    ));
    assert_eq!(watcher_threads(), 1);
    waiting1.set();
    assert_eq!(join(&mut holder1), 0);

    let (lock, held, waiting) = (
        Lock::new().unwrap(),
        Event::new().unwrap(),
        Event::new().unwrap(),
    );
    let holder = start(hold_lock_forever, (lock.clone(), held.clone()));
    assert!(held.wait_timeout(Duration::from_secs(60)));
    let mut waiter = start(
        wait_for_lock_count_watchers,
        (lock.clone(), waiting.clone()),
    );
    assert!(waiting.wait_timeout(Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(100));
    let holder_pid = holder.pid().unwrap() as u32;
    let killed = monotonic_ns();
    holder.kill().unwrap();
    let (pid, at, watchers) = join(&mut waiter);
    assert_eq!(
        pid, holder_pid,
        "the waiter must get OwnerDied naming the holder"
    );
    let delay = Duration::from_nanos(at.saturating_sub(killed));
    assert!(delay < Duration::from_secs(2), "reported after {delay:?}");
    assert_eq!(
        watchers, 1,
        "the waiter runs exactly its own watcher thread"
    );
}

/// `n` threads of one process wait for the lock; returns how many got `OwnerDied` and
/// how many got it cleanly.
fn many_waiters(args: (Lock, Event, u32)) -> (u32, u32) {
    let (lock, waiting, n) = args;
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let lock = lock.clone();
            std::thread::spawn(move || {
                let died = lock.acquire().is_err();
                lock.release().unwrap();
                died
            })
        })
        .collect();
    // Let every thread go to sleep behind the holder (past the first 1 ms slice).
    std::thread::sleep(Duration::from_millis(50));
    waiting.set();
    let died = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|d| *d)
        .count() as u32;
    (died, n - died)
}

#[test]
fn many_waiters_in_one_process_behind_one_killed_holder() {
    let (lock, held, waiting) = (
        Lock::new().unwrap(),
        Event::new().unwrap(),
        Event::new().unwrap(),
    );
    let holder = start(hold_lock_forever, (lock.clone(), held.clone()));
    assert!(held.wait_timeout(Duration::from_secs(60)));
    let mut waiter = start(many_waiters, (lock.clone(), waiting.clone(), 6));
    assert!(waiting.wait_timeout(Duration::from_secs(60)));
    let t0 = Instant::now();
    holder.kill().unwrap();
    assert_eq!(join(&mut waiter), (1, 5));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(!lock.locked());
}

// ---------------------------------------------------------------- Semaphore

fn try_take(s: Semaphore) -> bool {
    s.try_acquire()
}

#[test]
fn semaphore_of_two_across_processes() {
    let s = Semaphore::new(2).unwrap();
    for _ in 0..2 {
        let mut p = start(try_take, s.clone());
        assert!(join(&mut p));
    }
    assert!(!s.try_acquire());
    let mut p = start(try_take, s.clone());
    assert!(!join(&mut p));
    assert_eq!(s.get_value(), 0);
    s.release().unwrap();
    assert_eq!(s.get_value(), 1);
}

fn over_release(s: BoundedSemaphore) -> (bool, bool) {
    let first = s.release().is_err();
    s.acquire();
    (first, s.release().is_ok())
}

#[test]
fn bounded_semaphore_over_release_errors_in_a_child() {
    let s = BoundedSemaphore::new(1).unwrap();
    let mut p = start(over_release, s.clone());
    assert_eq!(join(&mut p), (true, true));
    assert_eq!(s.get_value(), 1);
}

// ---------------------------------------------------------------- Event

fn set_later(e: Event) -> bool {
    std::thread::sleep(Duration::from_millis(50));
    e.set();
    true
}

#[test]
fn event_wait_times_out_then_is_set_by_another_process() {
    let e = Event::new().unwrap();
    let t0 = Instant::now();
    assert!(!e.wait_timeout(Duration::from_millis(100)));
    assert!(t0.elapsed() >= Duration::from_millis(100));
    let mut p = start(set_later, e.clone());
    assert!(e.wait_timeout(Duration::from_secs(60)));
    assert!(join(&mut p));
}

fn ping(args: (Event, Event, u32)) -> u32 {
    let (a, b, n) = args;
    for _ in 0..n {
        a.wait();
        a.clear();
        b.set();
    }
    n
}

#[test]
fn event_pingpong_between_processes() {
    let (a, b) = (Event::new().unwrap(), Event::new().unwrap());
    let mut p = start(ping, (a.clone(), b.clone(), 2_000));
    for _ in 0..2_000 {
        a.set();
        assert!(b.wait_timeout(Duration::from_secs(60)));
        b.clear();
    }
    assert_eq!(join(&mut p), 2_000);
}

// ---------------------------------------------------------------- Condition

fn cond_waiter(args: (Condition, Region, u32)) -> bool {
    let (cond, region, slot) = args;
    let _g = cond.lock().unwrap();
    region
        .atomic_u32(slot as usize * 4)
        .unwrap()
        .store(1, Ordering::SeqCst);
    let woken = cond.wait_timeout(Duration::from_secs(60)).unwrap();
    region
        .atomic_u32(64 + slot as usize * 4)
        .unwrap()
        .store(woken as u32, Ordering::SeqCst);
    woken
}

#[test]
fn notify_two_wakes_exactly_two_of_five_processes() {
    let cond = Condition::new().unwrap();
    let region = Region::new(4096).unwrap();
    let mut ps: Vec<_> = (0..5)
        .map(|i| start(cond_waiter, (cond.clone(), region.try_clone().unwrap(), i)))
        .collect();
    let t0 = Instant::now();
    while cond.n_waiting() < 5 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "waiters never arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let woken = || {
        (0..5)
            .filter(|i| {
                region
                    .atomic_u32(64 + i * 4)
                    .unwrap()
                    .load(Ordering::SeqCst)
                    == 1
            })
            .count()
    };
    {
        let _g = cond.lock().unwrap();
        assert_eq!(cond.notify(2).unwrap(), 2);
    }
    let t0 = Instant::now();
    while woken() < 2 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(woken(), 2);
    assert_eq!(cond.n_waiting(), 3);
    {
        let _g = cond.lock().unwrap();
        assert_eq!(cond.notify_all().unwrap(), 3);
    }
    let results: Vec<bool> = ps.iter_mut().map(join).collect();
    assert!(results.iter().all(|&w| w));
}

fn noisy_notifier(args: (Condition, Event)) -> u32 {
    let (cond, stop) = args;
    let mut n = 0;
    while !stop.is_set() {
        {
            let _g = cond.lock().unwrap();
            let _ = cond.notify_all();
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    n
}

#[test]
fn wait_for_times_out_on_one_deadline_while_notifications_arrive() {
    let cond = Condition::new().unwrap();
    let stop = Event::new().unwrap();
    let mut p = start(noisy_notifier, (cond.clone(), stop.clone()));
    std::thread::sleep(Duration::from_millis(50));
    let g = cond.lock().unwrap();
    let mut checks = 0u32;
    let t0 = Instant::now();
    let r = cond
        .wait_for(
            || {
                checks += 1;
                false
            },
            Some(Duration::from_millis(300)),
        )
        .unwrap();
    let took = t0.elapsed();
    drop(g);
    stop.set();
    let notifies = join(&mut p);
    assert!(!r);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(notifies > 0);
    assert!(
        checks > 1,
        "notifications should have re-checked the predicate"
    );
}

// ---------------------------------------------------------------- Barrier

static BARRIER_REGION: OnceLock<Region> = OnceLock::new();
const PARTIES: usize = 5;
const ROUNDS: usize = 1_000;
// Layout of the test region: [0..PARTIES) round slots (u32), action counter at 64,
// then one u32 per (round, index).
const ACTION_AT: usize = 64;
const SEEN_AT: usize = 128;

fn count_round() {
    if let Some(r) = BARRIER_REGION.get() {
        r.atomic_u32(ACTION_AT)
            .unwrap()
            .fetch_add(1, Ordering::SeqCst);
    }
}

fn barrier_party(args: (Barrier, Region, u32)) -> u32 {
    let (b, region, me) = args;
    let region = BARRIER_REGION.get_or_init(|| region);
    let mut mixed = 0;
    for r in 0..ROUNDS as u32 {
        region
            .atomic_u32(me as usize * 4)
            .unwrap()
            .store(r, Ordering::SeqCst);
        let idx = b.wait().unwrap();
        region
            .atomic_u32(SEEN_AT + (r as usize * PARTIES + idx) * 4)
            .unwrap()
            .fetch_add(1, Ordering::SeqCst);
        for j in 0..PARTIES {
            let v = region.atomic_u32(j * 4).unwrap().load(Ordering::SeqCst);
            if v != r && v != r + 1 {
                mixed += 1;
            }
        }
    }
    mixed
}

#[test]
fn five_processes_thousand_barrier_rounds_never_mix() {
    let b = Barrier::builder(PARTIES as u32)
        .action(count_round)
        .build()
        .unwrap();
    let region = Region::new(SEEN_AT + PARTIES * ROUNDS * 4).unwrap();
    let mut ps: Vec<_> = (0..PARTIES as u32)
        .map(|i| start(barrier_party, (b.clone(), region.try_clone().unwrap(), i)))
        .collect();
    for p in &mut ps {
        assert_eq!(join(p), 0, "a party saw another round's slot");
    }
    for k in 0..PARTIES * ROUNDS {
        let v = region
            .atomic_u32(SEEN_AT + k * 4)
            .unwrap()
            .load(Ordering::SeqCst);
        assert_eq!(
            v,
            1,
            "round {} index {} seen {v} times",
            k / PARTIES,
            k % PARTIES
        );
    }
    assert_eq!(
        region.atomic_u32(ACTION_AT).unwrap().load(Ordering::SeqCst),
        ROUNDS as u32
    );
    assert!(!b.broken());
}

fn barrier_waiter(b: Barrier) -> bool {
    matches!(b.wait_timeout(Duration::from_secs(60)), Err(BrokenBarrier))
}

#[test]
fn abort_from_another_process_breaks_every_waiter() {
    let b = Barrier::new(4).unwrap();
    let mut ps: Vec<_> = (0..3).map(|_| start(barrier_waiter, b.clone())).collect();
    let t0 = Instant::now();
    while b.n_waiting() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
    }
    b.abort();
    for p in &mut ps {
        assert!(join(p), "every waiter gets BrokenBarrier");
    }
    assert!(b.broken());
    b.reset();
    assert!(!b.broken());
}

// ---------------------------------------------------------------- pid cache, RLock death

fn lock_and_report(lock: Lock) -> (u32, u32) {
    lock.acquire().unwrap();
    let owner = lock.owner().unwrap_or(0);
    lock.release().unwrap();
    (owner, std::process::id())
}

#[test]
fn a_child_records_its_own_pid_never_its_parents() {
    // Fill this process's pid cache first: a forked child must not inherit it.
    let warm = Lock::new().unwrap();
    warm.acquire().unwrap();
    assert_eq!(warm.owner(), Some(std::process::id()));
    warm.release().unwrap();
    let lock = Lock::new().unwrap();
    let mut p = start(lock_and_report, lock.clone());
    let (owner, child) = join(&mut p);
    assert_eq!(owner, child);
    assert_ne!(child, std::process::id());
}

fn die_holding_rlock(args: (RLock, Event)) -> u32 {
    let (r, held) = args;
    r.acquire().unwrap();
    r.acquire().unwrap();
    held.set();
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::thread::sleep(Duration::from_secs(60));
    0
}

#[test]
fn rlock_holder_killed_next_acquirer_gets_owner_died() {
    let (r, held) = (RLock::new().unwrap(), Event::new().unwrap());
    let mut p = start(die_holding_rlock, (r.clone(), held.clone()));
    assert!(held.wait_timeout(Duration::from_secs(60)));
    let pid = p.pid().unwrap() as u32;
    let _ = p.join_timeout(Duration::from_secs(60));
    match r.lock() {
        Err(e) => {
            assert_eq!(e.pid(), pid);
            let _g = e.into_inner();
            // The dead owner's recursion count is gone: we hold it once.
            assert_eq!(r.recursion_count(), 1);
        }
        Ok(_) => panic!("the dead holder was not reported"),
    }
    assert!(!r.locked());
}

// ---------------------------------------------------------------- producer/consumer

fn producer(args: (Condition<Lock>, Mutex<[u32; 2]>, u32)) -> u32 {
    // [0] = items in the buffer (at most 4), [1] = items consumed in total.
    let (cond, state, n) = args;
    for _ in 0..n {
        let _g = cond.lock().unwrap();
        let ok = cond
            .wait_for(
                || state.lock().unwrap()[0] < 4,
                Some(Duration::from_secs(60)),
            )
            .unwrap();
        assert!(ok, "producer starved: a wake-up was lost");
        state.lock().unwrap()[0] += 1;
        cond.notify(1).unwrap();
    }
    n
}

fn consumer(args: (Condition<Lock>, Mutex<[u32; 2]>, u32)) -> u32 {
    let (cond, state, n) = args;
    for _ in 0..n {
        let _g = cond.lock().unwrap();
        let ok = cond
            .wait_for(
                || state.lock().unwrap()[0] > 0,
                Some(Duration::from_secs(60)),
            )
            .unwrap();
        assert!(ok, "consumer starved: a wake-up was lost");
        let mut s = state.lock().unwrap();
        s[0] -= 1;
        s[1] += 1;
        drop(s);
        cond.notify(1).unwrap();
    }
    n
}

#[test]
fn bounded_buffer_with_notify_one_loses_no_wakeup() {
    // Two producers and two consumers share one condition and wake one another with
    // notify(1): a lost or misdirected wake-up shows as a starved party (timeout).
    let cond = Condition::with_lock(Lock::new().unwrap()).unwrap();
    let state = Mutex::new([0u32; 2]).unwrap();
    let n = 500;
    let mut ps = vec![
        start(producer, (cond.clone(), state.clone(), n)),
        start(producer, (cond.clone(), state.clone(), n)),
        start(consumer, (cond.clone(), state.clone(), n)),
        start(consumer, (cond.clone(), state.clone(), n)),
    ];
    for p in &mut ps {
        assert_eq!(join(p), n);
    }
    assert_eq!(*state.lock().unwrap(), [0, 2 * n]);
}

fn take_cond_lock_and_die(args: (Condition, Event)) -> u32 {
    let (cond, held) = args;
    let g = cond.lock().unwrap();
    held.set();
    std::mem::forget(g);
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::thread::sleep(Duration::from_secs(60));
    0
}

#[test]
fn condition_wait_reports_a_lock_holder_that_died_meanwhile() {
    let (cond, held) = (Condition::new().unwrap(), Event::new().unwrap());
    let g = cond.lock().unwrap();
    let mut p = start(take_cond_lock_and_die, (cond.clone(), held.clone()));
    // While we wait, the child takes the lock and dies holding it; when our wait times
    // out, re-acquiring the lock finds the dead holder.
    let t0 = Instant::now();
    let r = loop {
        match cond.wait_timeout(Duration::from_millis(200)) {
            // The child has not taken the lock yet (slow start): wait again.
            Ok(false) if !held.is_set() && t0.elapsed() < Duration::from_secs(60) => continue,
            other => break other,
        }
    };
    assert!(held.is_set());
    let pid = p.pid().unwrap() as u32;
    assert_eq!(
        r,
        Err(WaitError::OwnerDied {
            pid,
            notified: false
        })
    );
    assert_eq!(cond.get_lock().recursion_count(), 1);
    drop(g);
    assert!(!cond.get_lock().locked());
    let _ = p.join_timeout(Duration::from_secs(60));
}

// ---------------------------------------------------------------- panics poison

fn panic_holding_mutex(m: Mutex<u64>) -> u32 {
    let mut g = m.lock().unwrap();
    *g = 99; // half-done: the panic comes before the update is finished
    panic!("a holder that panics while holding the mutex");
}

#[test]
fn a_mutex_guard_dropped_by_a_panic_reports_owner_died_to_the_next_process() {
    let m = Mutex::new(1u64).unwrap();
    let mut p = start(panic_holding_mutex, m.clone());
    assert!(
        p.join_timeout(Duration::from_secs(120)).is_err(),
        "the child panics"
    );
    let child = p.pid().unwrap() as u32;
    assert!(!m.is_locked(), "a poisoned mutex is free to take");
    let t0 = Instant::now();
    let err = m
        .lock()
        .expect_err("the panic must be reported, as std's poisoning");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(err.pid(), child);
    let mut g = err.into_inner();
    assert_eq!(*g, 99);
    *g = 1; // repaired
    drop(g);
    // One-shot: the next acquisition is clean.
    assert_eq!(*m.lock().unwrap(), 1);
}

fn panic_holding_lock(lock: Lock) -> u32 {
    let _g = lock.lock().unwrap();
    panic!("a holder that panics while holding the lock");
}

fn panic_holding_rlock(lock: RLock) -> u32 {
    let _outer = lock.lock().unwrap();
    let _inner = lock.lock().unwrap();
    panic!("a holder that panics while holding the rlock twice");
}

#[test]
fn lock_and_rlock_guards_dropped_by_a_panic_poison_for_other_processes() {
    let lock = Lock::new().unwrap();
    let mut p = start(panic_holding_lock, lock.clone());
    assert!(p.join_timeout(Duration::from_secs(120)).is_err());
    let child = p.pid().unwrap() as u32;
    assert!(!lock.locked());
    match lock.try_lock() {
        Err(TryLockError::OwnerDied(e)) => assert_eq!(e.pid(), child),
        other => panic!("expected OwnerDied, got {other:?}"),
    }
    assert!(lock.try_acquire().unwrap(), "clean after the report");
    lock.release().unwrap();

    let rlock = RLock::new().unwrap();
    let mut p = start(panic_holding_rlock, rlock.clone());
    assert!(p.join_timeout(Duration::from_secs(120)).is_err());
    let child = p.pid().unwrap() as u32;
    let err = rlock.acquire().expect_err("poisoned by the panic");
    assert_eq!(err.pid(), child);
    assert_eq!(rlock.recursion_count(), 1);
    rlock.release().unwrap();
    assert!(!rlock.locked());
}

#[test]
fn a_released_poisoned_lock_is_not_locked_and_release_reports_it() {
    let lock = Lock::new().unwrap();
    let l2 = lock.clone();
    let r = std::thread::spawn(move || {
        let _g = l2.lock().unwrap();
        panic!("poison it");
    })
    .join();
    assert!(r.is_err());
    assert!(!lock.locked());
    assert_eq!(lock.owner(), None);
    // Python: releasing an unlocked lock is an error; the poison stays for the taker.
    assert!(lock.release().is_err());
    assert!(lock.acquire().is_err());
    lock.release().unwrap();
}

//! Area `sync`: locks and events, mproc beside the raw futex floor (written inline
//! here: a three-state futex mutex and a futex ping-pong in shared memory) and
//! parking_lot (in one process only: it cannot work across processes).
//!
//! - `lock.uncontended` (ns per acquire + release, one thread);
//! - `lock.contended_2p` (ops/s: 2 processes × N of lock; counter += 1; unlock);
//! - `event.pingpong` (µs per round trip through two events between 2 processes);
//!   `raw` spins ~200 iterations before sleeping and skips the wake when nobody
//!   sleeps, `raw-sleep` sleeps on every hand-over.
//! - `lock.rlock_uncontended` / `lock.semaphore_uncontended` (ns per acquire + release of
//!   an `RLock` / a `Semaphore(1)`, one thread); raw: the three-state futex mutex plus an
//!   owner and a count word / a futex counting semaphore.
//! - `value.contended_2p` (ops/s: 2 processes × 100,000 of `*v.lock()? += 1` on one
//!   `Value<i64>`); raw: the bare futex mutex and counter of `lock.contended_2p`.
//! - `condition.pingpong` (µs per round trip between 2 processes through one
//!   `Condition` and a turn word: each side, holding the lock, sets the turn, notifies
//!   and `wait_for`s its own turn); raw: the futex ping-pong of `event.pingpong`.
//! - `barrier.cycles_2p` (cycles/s of a `Barrier(2)` that 2 processes wait on in a
//!   loop); raw: a counter and a generation word, spinning ~200 iterations before a
//!   futex sleep, the last to arrive waking only when someone sleeps.
use crate::harness::{Opts, Record, rate, time_per_op};
use mproc::core::Region;
use mproc::shm::Value;
use mproc::spawn::Process;
use mproc::sync::{Barrier, Condition, Event, Lock, RLock, Semaphore};
use rustix::thread::futex;
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

// ------------------------------------------------------------------ raw floor

/// Drepper's three-state mutex (0 free, 1 locked, 2 locked with waiters).
#[inline]
fn raw_lock(w: &AtomicU32) {
    if w.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        return;
    }
    let mut c = w.swap(2, Ordering::Acquire);
    while c != 0 {
        let _ = futex::wait(w, futex::Flags::empty(), 2, None);
        c = w.swap(2, Ordering::Acquire);
    }
}

#[inline]
fn raw_unlock(w: &AtomicU32) {
    if w.fetch_sub(1, Ordering::Release) != 1 {
        w.store(0, Ordering::Release);
        let _ = futex::wake(w, futex::Flags::empty(), 1);
    }
}

/// A one-shot signal word: 0 empty, 1 signalled, 2 empty with a sleeper.
#[inline]
fn raw_signal(w: &AtomicU32) {
    if w.swap(1, Ordering::Release) == 2 {
        let _ = futex::wake(w, futex::Flags::empty(), 1);
    }
}

#[inline]
fn raw_wait(w: &AtomicU32, spin: bool) {
    if spin {
        for _ in 0..200 {
            if w.load(Ordering::Acquire) == 1 {
                w.store(0, Ordering::Relaxed);
                return;
            }
            std::hint::spin_loop();
        }
    }
    loop {
        match w.compare_exchange(0, 2, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) | Err(2) => {
                let _ = futex::wait(w, futex::Flags::empty(), 2, None);
            }
            Err(_) => {
                w.store(0, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// A counting semaphore word with a sleepers word beside it.
#[inline]
fn raw_sem_acquire(w: &AtomicU32, sleepers: &AtomicU32) {
    loop {
        let v = w.load(Ordering::Relaxed);
        if v > 0 {
            if w.compare_exchange(v, v - 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        } else {
            sleepers.fetch_add(1, Ordering::SeqCst);
            let _ = futex::wait(w, futex::Flags::empty(), 0, None);
            sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[inline]
fn raw_sem_release(w: &AtomicU32, sleepers: &AtomicU32) {
    w.fetch_add(1, Ordering::SeqCst);
    if sleepers.load(Ordering::SeqCst) > 0 {
        let _ = futex::wake(w, futex::Flags::empty(), 1);
    }
}

/// A two-party barrier: an arrival counter, a generation word and a sleepers word.
#[inline]
fn raw_barrier(count: &AtomicU32, gen_: &AtomicU32, sleepers: &AtomicU32) {
    let g = gen_.load(Ordering::Acquire);
    if count.fetch_add(1, Ordering::AcqRel) == 1 {
        count.store(0, Ordering::Relaxed);
        gen_.store(g.wrapping_add(1), Ordering::SeqCst);
        if sleepers.swap(0, Ordering::SeqCst) != 0 {
            let _ = futex::wake(gen_, futex::Flags::empty(), u32::MAX);
        }
        return;
    }
    for _ in 0..200 {
        if gen_.load(Ordering::Acquire) != g {
            return;
        }
        std::hint::spin_loop();
    }
    while gen_.load(Ordering::Acquire) == g {
        sleepers.store(1, Ordering::SeqCst);
        let _ = futex::wait(gen_, futex::Flags::empty(), g, None);
    }
}

// ------------------------------------------------------------------ placement

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Pins the calling thread to the `k`-th allowed CPU (of `cpus`), if there are two or
/// more: the cross-process workloads measure two processes that really run at once
/// (on a loaded 2-core machine the scheduler otherwise often runs them in turn).
fn pin(cpus: &[u32], k: usize) {
    if cpus.len() >= 2 {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpus[k % cpus.len()] as usize);
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
}

// ------------------------------------------------------------------ children

const IMPL_MPROC: u32 = 0;
const IMPL_RAW: u32 = 1;
const IMPL_RAW_SLEEP: u32 = 2;

/// Shared region layout (byte offsets): 0 start flag, 64 raw lock word, 128 counter
/// (u64), 192 raw ping word, 256 raw pong word.
fn word(r: &Region, off: usize) -> &AtomicU32 {
    r.atomic_u32(off).expect("bench region layout")
}

/// CLOCK_MONOTONIC in ns: comparable between processes (unlike `Instant`).
fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Waits for the start flag, then runs `n` increments under the lock; returns when
/// it started and ended (monotonic ns).
fn contender(args: (Lock, Region, u32, u64, Vec<u32>, u32)) -> (u64, u64) {
    let (lock, region, imp, n, cpus, k) = args;
    pin(&cpus, k as usize);
    let start = word(&region, 0);
    let counter: &AtomicU64 = region.atomic_u64(128).expect("layout");
    let raw = word(&region, 64);
    while start.load(Ordering::Acquire) == 0 {
        std::hint::spin_loop();
    }
    let t = mono_ns();
    if imp == IMPL_MPROC {
        for _ in 0..n {
            let _g = lock.lock();
            counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    } else {
        for _ in 0..n {
            raw_lock(raw);
            counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            raw_unlock(raw);
        }
    }
    (t, mono_ns())
}

fn contended(imp: u32, n: u64) -> f64 {
    let lock = Lock::new().expect("lock");
    let region = Region::new(4096).expect("region");
    let cpus: Vec<u32> = allowed_cpus().into_iter().map(|c| c as u32).collect();
    let mut ps = Vec::new();
    for k in 0..2 {
        let mut p = Process::new(
            contender,
            (
                lock.clone(),
                region.try_clone().expect("clone"),
                imp,
                n,
                cpus.clone(),
                k,
            ),
        );
        if p.start().is_err() {
            return f64::NAN;
        }
        ps.push(p);
    }
    // Give both children time to reach the spin on the start flag.
    std::thread::sleep(Duration::from_millis(20));
    word(&region, 0).store(1, Ordering::Release);
    // From the first start to the last end: the two children's spans overlap when
    // they run at once, and add up when the scheduler runs them one after the other.
    let (mut first, mut last) = (u64::MAX, 0u64);
    for p in &mut ps {
        match p.join_timeout(Duration::from_secs(120)) {
            Ok(Some((s, e))) => {
                first = first.min(s);
                last = last.max(e);
            }
            _ => return f64::NAN,
        }
    }
    let total = region
        .atomic_u64(128)
        .expect("layout")
        .load(Ordering::SeqCst);
    if total != 2 * n {
        eprintln!("sync bench: contended counter {total} != {}", 2 * n);
        return f64::NAN;
    }
    (2 * n) as f64 / (last.saturating_sub(first).max(1) as f64 / 1e9)
}

/// Waits for the start flag, then runs `n` increments of the `Value` under its lock;
/// returns when it started and ended (monotonic ns).
fn value_contender(args: (Value<i64>, Region, u64, Vec<u32>, u32)) -> (u64, u64) {
    let (v, region, n, cpus, k) = args;
    pin(&cpus, k as usize);
    let start = word(&region, 0);
    while start.load(Ordering::Acquire) == 0 {
        std::hint::spin_loop();
    }
    let t = mono_ns();
    for _ in 0..n {
        *v.lock().expect("value lock") += 1;
    }
    (t, mono_ns())
}

/// `value.contended_2p`: ops/s of 2 processes × `n` locked increments of one `Value`.
fn value_contended(n: u64) -> f64 {
    let v: Value<i64> = Value::new(0).expect("value");
    let region = Region::new(4096).expect("region");
    let cpus: Vec<u32> = allowed_cpus().into_iter().map(|c| c as u32).collect();
    let mut ps = Vec::new();
    for k in 0..2 {
        let mut p = Process::new(
            value_contender,
            (
                v.clone(),
                region.try_clone().expect("clone"),
                n,
                cpus.clone(),
                k,
            ),
        );
        if p.start().is_err() {
            return f64::NAN;
        }
        ps.push(p);
    }
    std::thread::sleep(Duration::from_millis(20));
    word(&region, 0).store(1, Ordering::Release);
    let (mut first, mut last) = (u64::MAX, 0u64);
    for p in &mut ps {
        match p.join_timeout(Duration::from_secs(120)) {
            Ok(Some((s, e))) => {
                first = first.min(s);
                last = last.max(e);
            }
            _ => return f64::NAN,
        }
    }
    let total = v.get().expect("value get");
    if total != 2 * n as i64 {
        eprintln!("sync bench: value counter {total} != {}", 2 * n);
        return f64::NAN;
    }
    (2 * n) as f64 / (last.saturating_sub(first).max(1) as f64 / 1e9)
}

/// Region layout for the condition and barrier workloads: 320 turn word (condition),
/// 384 arrival count, 448 generation, 512 sleepers (raw barrier).
const TURN: usize = 320;

/// Answers `total` condition pings: waits for turn 1, sets turn 0, notifies.
fn cond_ponger(args: (Condition, Region, u64, Vec<u32>)) -> u64 {
    let (cond, region, total, cpus) = args;
    pin(&cpus, 1);
    let turn = word(&region, TURN);
    for _ in 0..total {
        let g = cond.lock().expect("condition lock");
        cond.wait_for(|| turn.load(Ordering::Acquire) == 1, None)
            .expect("wait_for");
        turn.store(0, Ordering::Release);
        cond.notify(1).expect("notify");
        drop(g);
    }
    total
}

fn cond_pingpong(samples: usize, iters: u64) -> Vec<f64> {
    let cond = Condition::new().expect("condition");
    let region = Region::new(4096).expect("region");
    let total = iters.div_ceil(10).max(1) + samples as u64 * iters;
    let cpus: Vec<u32> = allowed_cpus().into_iter().map(|c| c as u32).collect();
    let mut p = Process::new(
        cond_ponger,
        (
            cond.clone(),
            region.try_clone().expect("clone"),
            total,
            cpus.clone(),
        ),
    );
    if p.start().is_err() {
        return vec![f64::NAN];
    }
    let saved = rustix::thread::sched_getaffinity(None).ok();
    pin(&cpus, 0);
    let turn = word(&region, TURN);
    let out = time_per_op(samples, iters, 1e-6, |n| {
        for _ in 0..n {
            let g = cond.lock().expect("condition lock");
            turn.store(1, Ordering::Release);
            cond.notify(1).expect("notify");
            cond.wait_for(|| turn.load(Ordering::Acquire) == 0, None)
                .expect("wait_for");
            drop(g);
        }
    });
    if let Some(set) = saved {
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
    match p.join_timeout(Duration::from_secs(120)) {
        Ok(Some(_)) => out,
        _ => vec![f64::NAN],
    }
}

/// Waits on the barrier `total` times (mproc's, or the raw one in `region`).
fn barrier_party(args: (Barrier, Region, u32, u64, Vec<u32>)) -> u64 {
    let (b, region, imp, total, cpus) = args;
    pin(&cpus, 1);
    let (c, g, sl) = (word(&region, 384), word(&region, 448), word(&region, 512));
    for _ in 0..total {
        if imp == IMPL_MPROC {
            b.wait().expect("barrier");
        } else {
            raw_barrier(c, g, sl);
        }
    }
    total
}

fn barrier_cycles(imp: u32, samples: usize, ops: u64) -> Vec<f64> {
    let b = Barrier::new(2).expect("barrier");
    let region = Region::new(4096).expect("region");
    let total = ops.div_ceil(10).max(1) + samples as u64 * ops;
    let cpus: Vec<u32> = allowed_cpus().into_iter().map(|c| c as u32).collect();
    let mut p = Process::new(
        barrier_party,
        (
            b.clone(),
            region.try_clone().expect("clone"),
            imp,
            total,
            cpus.clone(),
        ),
    );
    if p.start().is_err() {
        return vec![f64::NAN];
    }
    let saved = rustix::thread::sched_getaffinity(None).ok();
    pin(&cpus, 0);
    let (c, g, sl) = (word(&region, 384), word(&region, 448), word(&region, 512));
    let out = rate(samples, ops, |n| {
        for _ in 0..n {
            if imp == IMPL_MPROC {
                b.wait().expect("barrier");
            } else {
                raw_barrier(c, g, sl);
            }
        }
    });
    if let Some(set) = saved {
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
    match p.join_timeout(Duration::from_secs(120)) {
        Ok(Some(_)) => out,
        _ => vec![f64::NAN],
    }
}

/// Answers `total` pings: mproc through two Events, raw through two futex words.
fn ponger(args: (Event, Event, Region, u32, u64, Vec<u32>)) -> u64 {
    let (ping, pong, region, imp, total, cpus) = args;
    pin(&cpus, 1);
    let (pw, qw) = (word(&region, 192), word(&region, 256));
    for _ in 0..total {
        match imp {
            IMPL_MPROC => {
                ping.wait();
                ping.clear();
                pong.set();
            }
            _ => {
                raw_wait(pw, imp == IMPL_RAW);
                raw_signal(qw);
            }
        }
    }
    total
}

fn pingpong(imp: u32, samples: usize, iters: u64) -> Vec<f64> {
    let (ping, pong) = (Event::new().expect("event"), Event::new().expect("event"));
    let region = Region::new(4096).expect("region");
    let total = iters.div_ceil(10).max(1) + samples as u64 * iters;
    let cpus: Vec<u32> = allowed_cpus().into_iter().map(|c| c as u32).collect();
    let mut p = Process::new(
        ponger,
        (
            ping.clone(),
            pong.clone(),
            region.try_clone().expect("clone"),
            imp,
            total,
            cpus.clone(),
        ),
    );
    if p.start().is_err() {
        return vec![f64::NAN];
    }
    // This thread on one CPU, the child on another; restored afterwards.
    let saved = rustix::thread::sched_getaffinity(None).ok();
    pin(&cpus, 0);
    let (pw, qw) = (word(&region, 192), word(&region, 256));
    let out = time_per_op(samples, iters, 1e-6, |n| {
        for _ in 0..n {
            match imp {
                IMPL_MPROC => {
                    ping.set();
                    pong.wait();
                    pong.clear();
                }
                _ => {
                    raw_signal(pw);
                    raw_wait(qw, imp == IMPL_RAW);
                }
            }
        }
    });
    if let Some(set) = saved {
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
    match p.join_timeout(Duration::from_secs(120)) {
        Ok(Some(_)) => out,
        _ => vec![f64::NAN],
    }
}

// ------------------------------------------------------------------ area

pub fn run(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    let samples = opts.pick(9, 5);

    let w = "lock.uncontended";
    if opts.wants(w) {
        let iters = opts.pick(20_000_000, 2_000_000);
        let lock = Lock::new().expect("lock");
        let region = Region::new(4096).expect("region");
        let raw = word(&region, 64);
        let pl = parking_lot::Mutex::new(());
        // One sample of each in turn, so that frequency changes and neighbours' load
        // fall on all three alike.
        let (mut m, mut r, mut p) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..samples {
            m.extend(time_per_op(1, iters, 1e-9, |n| {
                for _ in 0..n {
                    drop(black_box(lock.lock()));
                }
            }));
            r.extend(time_per_op(1, iters, 1e-9, |n| {
                for _ in 0..n {
                    raw_lock(black_box(raw));
                    raw_unlock(black_box(raw));
                }
            }));
            p.extend(time_per_op(1, iters, 1e-9, |n| {
                for _ in 0..n {
                    drop(black_box(pl.lock()));
                }
            }));
        }
        emit(Record::from_samples(w, "mproc", "ns", &m));
        emit(Record::from_samples(w, "raw", "ns", &r));
        emit(Record::from_samples(w, "parking_lot", "ns", &p));
    }

    let w = "lock.rlock_uncontended";
    if opts.wants(w) {
        let iters = opts.pick(20_000_000, 2_000_000);
        let lock = RLock::new().expect("rlock");
        let region = Region::new(4096).expect("region");
        let (raw, owner, count) = (word(&region, 64), word(&region, 128), word(&region, 192));
        let me = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        let (mut m, mut r) = (Vec::new(), Vec::new());
        for _ in 0..samples {
            m.extend(time_per_op(1, iters, 1e-9, |n| {
                for _ in 0..n {
                    drop(black_box(lock.lock()));
                }
            }));
            r.extend(time_per_op(1, iters, 1e-9, |n| {
                for _ in 0..n {
                    // A recursive lock's bookkeeping: the owner and the depth.
                    if black_box(owner).load(Ordering::Relaxed) == me {
                        count.fetch_add(1, Ordering::Relaxed);
                    } else {
                        raw_lock(black_box(raw));
                        owner.store(me, Ordering::Relaxed);
                        count.store(1, Ordering::Relaxed);
                    }
                    if count.fetch_sub(1, Ordering::Relaxed) == 1 {
                        owner.store(0, Ordering::Relaxed);
                        raw_unlock(black_box(raw));
                    }
                }
            }));
        }
        emit(Record::from_samples(w, "mproc", "ns", &m));
        emit(Record::from_samples(w, "raw", "ns", &r));
    }

    let w = "lock.semaphore_uncontended";
    if opts.wants(w) {
        let iters = opts.pick(20_000_000, 2_000_000);
        let sem = Semaphore::new(1).expect("semaphore");
        let region = Region::new(4096).expect("region");
        let (raw, sleepers) = (word(&region, 64), word(&region, 128));
        raw.store(1, Ordering::SeqCst);
        let (mut m, mut r) = (Vec::new(), Vec::new());
        for _ in 0..samples {
            m.extend(time_per_op(1, iters, 1e-9, |n| {
                for _ in 0..n {
                    drop(black_box(sem.permit()));
                }
            }));
            r.extend(time_per_op(1, iters, 1e-9, |n| {
                for _ in 0..n {
                    raw_sem_acquire(black_box(raw), sleepers);
                    raw_sem_release(black_box(raw), sleepers);
                }
            }));
        }
        emit(Record::from_samples(w, "mproc", "ns", &m));
        emit(Record::from_samples(w, "raw", "ns", &r));
    }

    let w = "value.contended_2p";
    if opts.wants(w) {
        let n = opts.pick(100_000, 20_000);
        let runs = opts.pick(7, 3);
        let (mut m, mut r) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            m.push(value_contended(n));
            r.push(contended(IMPL_RAW, n));
        }
        emit(Record::from_samples(w, "mproc", "ops/s", &m));
        emit(Record::from_samples(w, "raw", "ops/s", &r));
    }

    let w = "condition.pingpong";
    if opts.wants(w) {
        let iters = opts.pick(20_000, 5_000);
        emit(Record::from_samples(
            w,
            "mproc",
            "us",
            &cond_pingpong(samples, iters),
        ));
        emit(Record::from_samples(
            w,
            "raw",
            "us",
            &pingpong(IMPL_RAW, samples, iters),
        ));
    }

    let w = "barrier.cycles_2p";
    if opts.wants(w) {
        let ops = opts.pick(50_000, 10_000);
        for (imp, name) in [(IMPL_MPROC, "mproc"), (IMPL_RAW, "raw")] {
            let s = barrier_cycles(imp, samples, ops);
            emit(Record::from_samples(w, name, "cycles/s", &s));
        }
    }

    let w = "lock.contended_2p";
    if opts.wants(w) {
        let n = opts.pick(1_000_000, 200_000);
        let runs = opts.pick(7, 3);
        // Alternate the two, so that both meet the same neighbours' load.
        let (mut m, mut r) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            m.push(contended(IMPL_MPROC, n));
            r.push(contended(IMPL_RAW, n));
        }
        emit(Record::from_samples(w, "mproc", "ops/s", &m));
        emit(Record::from_samples(w, "raw", "ops/s", &r));
    }

    let w = "event.pingpong";
    if opts.wants(w) {
        let iters = opts.pick(20_000, 5_000);
        for (imp, name) in [
            (IMPL_MPROC, "mproc"),
            (IMPL_RAW, "raw"),
            (IMPL_RAW_SLEEP, "raw-sleep"),
        ] {
            // The sleeping variant is ~100x slower per round: fewer rounds.
            let it = if imp == IMPL_RAW_SLEEP {
                (iters / 10).max(200)
            } else {
                iters
            };
            let s = pingpong(imp, samples, it);
            emit(Record::from_samples(w, name, "us", &s));
        }
    }
}

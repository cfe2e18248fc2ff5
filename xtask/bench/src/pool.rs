//! Area `pool`: the process pool, mproc beside CPython (in the Python script) and rayon
//! (in-process threads: the ceiling a process pool can approach on CPU-bound work).
//!
//! - `pool.map_trivial_c1` / `_cdefault` / `_c1000` (items/s): Pool(2) map of x*x over
//!   100,000 integers with chunksize 1, Python's default rule, and 1000;
//!   each also as `mproc-serde`: the same with `Serde<u64>` tasks and results;
//! - `pool.apply_async_rtt` (µs per submit + get of a trivial task, one at a time);
//! - `pool.imap_c1000` (items/s): Pool(2) `imap` of x*x over 100,000 integers, chunksize
//!   1000, consumed in order;
//! - `pool.imap_unordered_c1` / `_c1000` (items/s): Pool(2) `imap_unordered` of x*x over
//!   20,000 integers with chunksize 1 and 100,000 with chunksize 1000, consumed as they come;
//! - `pool.startup_first_result_fork` / `_spawn` / `_forkserver` (ms): `Pool(2)` creation
//!   with that start method to the first result of `apply` (the pool's shutdown is not
//!   timed); `raw` (fork only): a bare `fork`, the child writes the result into a pipe
//!   and exits, the parent reads it;
//! - `pool.executor_map_c1` / `_c1000` (items/s): the executor's `map` of x*x (CPython:
//!   `ProcessPoolExecutor(2).map`), over 5,000 and 100,000 integers;
//! - `pool.cpu_bound_speedup` (×): Pool(2) map over 40 tasks of ~20 ms, sequential time
//!   divided by pool time; `rayon` on the same work beside it;
//! - `pool.cpu_bound_speedup_executor` (×): the same through the executor (CPython:
//!   `ProcessPoolExecutor`).
//! - `pool.threadpool_map_c1000` (items/s): ThreadPool(2) map of x*x over 1,000,000
//!   integers, chunksize 1000 (CPython: `multiprocessing.pool.ThreadPool(2).map`).
use crate::harness::{Opts, Record, rate, time_per_op};
use mproc::Serde;
use mproc::pool::{Executor, Pool, ThreadPool};
use mproc::spawn::StartMethod;
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Instant;

fn square(x: u64) -> u64 {
    x * x
}

/// `square` with serde messages (bincode inside), for the `mproc-serde` rows.
fn square_serde(x: Serde<u64>) -> Serde<u64> {
    Serde(x.0 * x.0)
}

/// A CPU-bound loop of `iters` rounds of xorshift.
fn burn(iters: u64) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ iters;
    for _ in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = black_box(x);
    }
    x
}

/// Rounds of `burn` that take about `ms` milliseconds here.
fn calibrate(ms: f64) -> u64 {
    let mut n = 100_000u64;
    loop {
        let t = Instant::now();
        black_box(burn(n));
        let el = t.elapsed().as_secs_f64() * 1e3;
        if el > 20.0 {
            return (n as f64 * ms / el) as u64;
        }
        n *= 2;
    }
}

/// ms from `Pool(2)` creation with `method` to the first result of `apply`, per sample.
fn startup(method: StartMethod, samples: usize) -> Vec<f64> {
    (0..samples)
        .map(|_| {
            let t = Instant::now();
            let pool = match Pool::builder().processes(2).start_method(method).build() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("pool bench: {method:?}: {e}");
                    return f64::NAN;
                }
            };
            let r = pool.apply(square, 3);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            drop(pool);
            if r.ok() != Some(9) {
                return f64::NAN;
            }
            ms
        })
        .collect()
}

/// The raw floor of `pool.startup_first_result_fork`: fork, the child writes x*x into a
/// pipe and exits, the parent reads it and reaps the child. ms per sample.
fn raw_startup(samples: usize) -> Vec<f64> {
    (0..samples)
        .map(|_| {
            let t = Instant::now();
            let (r, w) = rustix::pipe::pipe().expect("pipe");
            let child = crate::harness::fork(move || {
                let _ = rustix::io::write(&w, &square(3).to_le_bytes());
            });
            let mut b = [0u8; 8];
            let ok = rustix::io::read(&r, &mut b).is_ok_and(|n| n == 8);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            drop(child);
            if ok && u64::from_le_bytes(b) == 9 {
                ms
            } else {
                f64::NAN
            }
        })
        .collect()
}

pub fn run(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    for (name, method) in [
        ("pool.startup_first_result_fork", StartMethod::Fork),
        ("pool.startup_first_result_spawn", StartMethod::Spawn),
        (
            "pool.startup_first_result_forkserver",
            StartMethod::ForkServer,
        ),
    ] {
        if !opts.wants(name) {
            continue;
        }
        let samples = opts.pick(7, 3);
        // A warm-up: the first forkserver start also starts the server.
        black_box(startup(method, 1));
        emit(Record::from_samples(
            name,
            "mproc",
            "ms",
            &startup(method, samples),
        ));
        if method == StartMethod::Fork {
            emit(Record::from_samples(
                name,
                "raw",
                "ms",
                &raw_startup(samples),
            ));
        }
    }
    let pool = match Pool::new(2) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pool bench: {e}");
            return;
        }
    };
    let samples = opts.pick(5, 3);
    let n: u64 = 100_000;
    for (name, cs) in [
        ("pool.map_trivial_c1", Some(1)),
        ("pool.map_trivial_cdefault", None),
        ("pool.map_trivial_c1000", Some(1000)),
    ] {
        if !opts.wants(name) {
            continue;
        }
        let s = rate(samples, n, |k| {
            let r = pool.map_async_chunked(square, 0..k, cs).get().expect("map");
            black_box(r);
        });
        emit(Record::from_samples(name, "mproc", "items/s", &s));
        let s = rate(samples, n, |k| {
            let r = pool
                .map_async_chunked(square_serde, (0..k).map(Serde), cs)
                .get()
                .expect("map");
            black_box(r);
        });
        emit(Record::from_samples(name, "mproc-serde", "items/s", &s));
    }
    if opts.wants("pool.imap_c1000") {
        let s = rate(samples, n, |k| {
            let r: Vec<Result<u64, _>> = pool.imap_chunked(square, 0..k, 1000).collect();
            black_box(r);
        });
        emit(Record::from_samples(
            "pool.imap_c1000",
            "mproc",
            "items/s",
            &s,
        ));
    }
    for (name, cs, items) in [
        ("pool.imap_unordered_c1", 1, opts.pick(20_000, 5_000)),
        ("pool.imap_unordered_c1000", 1000, n),
    ] {
        if !opts.wants(name) {
            continue;
        }
        let s = rate(samples, items, |k| {
            let r: Vec<Result<u64, _>> = pool.imap_unordered_chunked(square, 0..k, cs).collect();
            black_box(r);
        });
        emit(Record::from_samples(name, "mproc", "items/s", &s));
    }
    for (name, cs, items) in [
        ("pool.executor_map_c1", 1, opts.pick(5_000, 1_000)),
        ("pool.executor_map_c1000", 1000, n),
    ] {
        if !opts.wants(name) {
            continue;
        }
        let ex = Executor::new(2).expect("executor");
        let s = rate(samples.min(3), items, |k| {
            let r: Vec<Result<u64, _>> = ex.map(square, 0..k, cs).collect();
            black_box(r);
        });
        emit(Record::from_samples(name, "mproc", "items/s", &s));
    }
    if opts.wants("pool.threadpool_map_c1000") {
        let tp = ThreadPool::new(2).expect("thread pool");
        let s = rate(samples, 1_000_000, |k| {
            black_box(tp.map_chunked(square, 0..k, 1000).expect("map"));
        });
        emit(Record::from_samples(
            "pool.threadpool_map_c1000",
            "mproc",
            "items/s",
            &s,
        ));
    }
    if opts.wants("pool.apply_async_rtt") {
        let iters = opts.pick(5000, 1000);
        let s = time_per_op(samples, iters, 1e-6, |k| {
            for i in 0..k {
                black_box(pool.apply_async(square, i).get().expect("apply"));
            }
        });
        emit(Record::from_samples(
            "pool.apply_async_rtt",
            "mproc",
            "us",
            &s,
        ));
    }
    if opts.wants("pool.cpu_bound_speedup") {
        let iters = calibrate(20.0);
        let tasks: Vec<u64> = vec![iters; 40];
        let rounds = opts.pick(3, 2);
        let mut seq = Vec::new();
        let mut par = Vec::new();
        let mut ray = Vec::new();
        let mut exe = Vec::new();
        let ex = Executor::new(2).expect("executor");
        let rp = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("rayon");
        for _ in 0..rounds {
            let t = Instant::now();
            black_box(tasks.iter().map(|&i| burn(i)).collect::<Vec<_>>());
            let s = t.elapsed().as_secs_f64();
            seq.push(s);
            let t = Instant::now();
            black_box(pool.map_chunked(burn, tasks.clone(), 1).expect("map"));
            par.push(s / t.elapsed().as_secs_f64());
            let t = Instant::now();
            black_box(rp.install(|| tasks.par_iter().map(|&i| burn(i)).collect::<Vec<_>>()));
            ray.push(s / t.elapsed().as_secs_f64());
            let t = Instant::now();
            let fs: Vec<_> = tasks.iter().map(|&i| ex.submit(burn, i)).collect();
            for f in fs {
                black_box(f.result(None).expect("submit"));
            }
            exe.push(s / t.elapsed().as_secs_f64());
        }
        emit(Record::from_samples(
            "pool.cpu_bound_speedup",
            "mproc",
            "x",
            &par,
        ));
        emit(Record::from_samples(
            "pool.cpu_bound_speedup",
            "rayon",
            "x",
            &ray,
        ));
        emit(Record::from_samples(
            "pool.cpu_bound_speedup_executor",
            "mproc",
            "x",
            &exe,
        ));
    }
}

//! `mproc-mpi-bench`: the `mpi.` rows of `cargo xtask bench`, one JSON record per line
//! (the format of mproc-bench). Under `mpirun -n 3` it measures mproc-mpi's SPMD pool
//! (2 workers); started alone, mproc-pool's `Pool(2)` on the same workloads (in a
//! process of its own, so idle MPI ranks do not share its cores).
//!
//! - `mpi.map_trivial_c1000` (items/s): map of x*x over 1,000,000 integers, chunksize
//!   1000;
//! - `mpi.apply_rtt` (µs per submit + get of a trivial task, one at a time).
//!
//! Usage: `[mpirun -n 3] mproc-mpi-bench [--quick] [--filter SUBSTRING]`.
use mproc_mpi::MpiPool;
use std::hint::black_box;
use std::time::Instant;

fn square(x: u64) -> u64 {
    x * x
}

fn emit(workload: &str, imp: &str, unit: &str, samples: &[f64]) {
    let mut s: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return;
    }
    println!(
        r#"{{"workload": "{workload}", "impl": "{imp}", "unit": "{unit}", "median": {}, "min": {}, "max": {}}}"#,
        s[s.len() / 2],
        s[0],
        s[s.len() - 1]
    );
}

fn rate(samples: usize, ops: u64, mut f: impl FnMut(u64)) -> Vec<f64> {
    f(ops.div_ceil(10).max(1));
    (0..samples)
        .map(|_| {
            let t = Instant::now();
            f(ops);
            ops as f64 / t.elapsed().as_secs_f64().max(1e-9)
        })
        .collect()
}

fn time_per_op_us(samples: usize, iters: u64, mut f: impl FnMut(u64)) -> Vec<f64> {
    f(iters.div_ceil(10).max(1));
    (0..samples)
        .map(|_| {
            let t = Instant::now();
            f(iters);
            t.elapsed().as_secs_f64() / iters as f64 * 1e6
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let filter = args
        .iter()
        .position(|a| a == "--filter")
        .and_then(|i| args.get(i + 1).cloned());
    let wants = |w: &str| filter.as_deref().is_none_or(|f| w.contains(f));
    let pick = |full: u64, q: u64| if quick { q } else { full };
    let samples = if quick { 3 } else { 5 };
    let n = pick(1_000_000, 200_000);
    let iters = pick(5000, 1000);

    if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_none() {
        let local = mproc_pool::Pool::new(2).expect("mproc-pool");
        if wants("mpi.map_trivial_c1000") {
            let s = rate(samples, n, |k| {
                black_box(local.map_chunked(square, 0..k, 1000).expect("map"));
            });
            emit("mpi.map_trivial_c1000", "mproc-pool", "items/s", &s);
        }
        if wants("mpi.apply_rtt") {
            let s = time_per_op_us(samples, iters, |k| {
                for i in 0..k {
                    black_box(local.apply_async(square, i).get().expect("apply"));
                }
            });
            emit("mpi.apply_rtt", "mproc-pool", "us", &s);
        }
        return;
    }
    if let Some(pool) = MpiPool::spmd().expect("mproc-mpi pool (run under mpirun -n 3)") {
        if wants("mpi.map_trivial_c1000") {
            let s = rate(samples, n, |k| {
                black_box(pool.map_chunked(square, 0..k, 1000).expect("map"));
            });
            emit("mpi.map_trivial_c1000", "mproc", "items/s", &s);
        }
        if wants("mpi.apply_rtt") {
            let s = time_per_op_us(samples, iters, |k| {
                for i in 0..k {
                    black_box(pool.apply_async(square, i).get().expect("apply"));
                }
            });
            emit("mpi.apply_rtt", "mproc", "us", &s);
        }
    }
}

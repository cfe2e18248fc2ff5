//! mproc quick start: count the primes below 20 million by splitting the range into
//! chunks, sieving each chunk in its own process, and adding up the counts; then do the
//! same work in one process and print the speedup.
//!
//! Each chunk is a plain `fn((u64, u64)) -> u64` run with `Process::new(f, args)`;
//! `join()` hands back its result.
//! expect: ^primes below 20000000: 1270607$
//! expect: ^\d+ processes: \d+\.\d+ s$
//! expect: ^one process: \d+\.\d+ s$
//! expect: ^speedup: \d+\.\d+x$
use mproc::spawn::{Process, usable_cpu_count};
use std::time::Instant;

const N: u64 = 20_000_000;

/// Counts the primes in `[lo, hi)` with a segmented sieve of Eratosthenes.
fn count_primes((lo, hi): (u64, u64)) -> u64 {
    let limit = (hi as f64).sqrt() as u64 + 1;
    // Small primes up to sqrt(hi), by a plain sieve.
    let mut small = vec![true; limit as usize + 1];
    let mut base = Vec::new();
    for i in 2..=limit as usize {
        if small[i] {
            base.push(i as u64);
            let mut j = i * i;
            while j <= limit as usize {
                small[j] = false;
                j += i;
            }
        }
    }
    let mut seg = vec![true; (hi - lo) as usize];
    for &p in &base {
        let start = (p * p).max(lo.div_ceil(p) * p);
        let mut m = start;
        while m < hi {
            seg[(m - lo) as usize] = false;
            m += p;
        }
    }
    (lo..hi)
        .zip(&seg)
        .filter(|&(n, &is_prime)| is_prime && n >= 2)
        .count() as u64
}

fn chunks(parts: u64) -> Vec<(u64, u64)> {
    let step = N.div_ceil(parts);
    (0..parts)
        .map(|i| (i * step, ((i + 1) * step).min(N)))
        .collect()
}

fn main() {
    let workers = usable_cpu_count().max(2);
    let parts = chunks(workers as u64 * 2);

    let t = Instant::now();
    let mut total = 0;
    // Run `workers` chunks at a time, each in its own process.
    for batch in parts.chunks(workers) {
        let mut procs: Vec<Process<u64>> = batch
            .iter()
            .map(|&range| {
                let mut p = Process::new(count_primes, range);
                p.start().expect("start a worker");
                p
            })
            .collect();
        for p in &mut procs {
            total += p.join().expect("a worker's count");
        }
    }
    let parallel = t.elapsed().as_secs_f64();
    println!("primes below {N}: {total}");
    println!("{workers} processes: {parallel:.3} s");

    let t = Instant::now();
    let sequential: u64 = parts.iter().map(|&r| count_primes(r)).sum();
    let one = t.elapsed().as_secs_f64();
    assert_eq!(sequential, total);
    println!("one process: {one:.3} s");
    println!("speedup: {:.2}x", one / parallel);
}

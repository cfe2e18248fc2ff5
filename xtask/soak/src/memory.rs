//! Scenario 7: a pool task allocates until its worker's address-space limit stops it.
//!
//! The pool's initializer sets RLIMIT_AS in each worker (current size + 256 MiB). A
//! task then allocates and touches 16 MiB blocks until allocation fails (the Rust
//! runtime aborts the worker). The pool must report that task's loss (WorkerLost or a
//! panic error), run the small tasks submitted beside it, and go on.
use crate::{Budget, Outcome};
use mproc_pool::{Pool, TaskError};
use rustix::process::{Resource, Rlimit, setrlimit};
use std::time::{Duration, Instant};

const HEADROOM: u64 = 256 << 20;

fn limit_as(headroom: u64) {
    let vm_kb: u64 = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmSize:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(1 << 20);
    let lim = vm_kb * 1024 + headroom;
    setrlimit(
        Resource::As,
        Rlimit {
            current: Some(lim),
            maximum: Some(lim),
        },
    )
    .expect("setrlimit(RLIMIT_AS)");
}

/// Allocates until the limit stops it; returns only if 8 GiB fit (the limit failed).
fn hog(block: u64) -> u64 {
    let mut keep: Vec<Vec<u8>> = Vec::new();
    let mut total = 0u64;
    while total < 8 << 30 {
        keep.push(vec![1u8; block as usize]);
        total += block;
    }
    total + keep.len() as u64
}

fn small(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    x + 1
}

pub(crate) fn run(b: Budget) -> Outcome {
    let mut out = Outcome {
        nothing_lost: true,
        ..Outcome::default()
    };
    let pool = match Pool::builder()
        .processes(2)
        .initializer(limit_as, HEADROOM)
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            out.violate(format!("pool: {e}"));
            return out;
        }
    };
    let t0 = Instant::now();
    let (mut rounds, mut lost, mut panicked, mut smalls) = (0u64, 0u64, 0u64, 0u64);
    let mut signals = std::collections::BTreeSet::new();
    while t0.elapsed() < b.time || rounds < 2 {
        rounds += 1;
        let h = pool.apply_async(hog, 16u64 << 20);
        let others: Vec<_> = (0..20u64)
            .map(|x| (x, pool.apply_async(small, x)))
            .collect();
        match h.get_timeout(Duration::from_secs(60)) {
            Err(mproc_pool::ResultError::Failed(TaskError::WorkerLost { signal, .. })) => {
                lost += 1;
                signals.insert(signal.unwrap_or(0));
            }
            Err(mproc_pool::ResultError::Failed(TaskError::Panicked { .. })) => panicked += 1,
            other => out.violate(format!("round {rounds}: the hog gave {other:?}")),
        }
        for (x, r) in others {
            match r.get_timeout(Duration::from_secs(60)) {
                Ok(v) if v == x + 1 => smalls += 1,
                other => out.violate(format!("round {rounds}: small task {x} gave {other:?}")),
            }
        }
        if out.violations.len() > 5 || t0.elapsed() > b.time * 3 {
            break;
        }
    }
    let goes_on = pool.apply(small, 41).ok() == Some(42);
    if !goes_on {
        out.violate("the pool did not answer after the memory faults");
    }
    if smalls != rounds * 20 {
        out.nothing_lost = false;
    }
    out.load = format!(
        "Pool(2), RLIMIT_AS = size + 256 MiB per worker; {rounds} hogs (16 MiB blocks) beside {} small tasks",
        rounds * 20
    );
    out.faults = format!("{rounds} allocations past the limit");
    out.seen = format!(
        "{lost} WorkerLost (signals {signals:?}), {panicked} panic errors; {smalls} small tasks Ok; pool answers after: {goes_on}"
    );
    out
}

//! Scenario 5: many process starts of each start method; the parent's open fds,
//! threads, zombie children and `/dev/shm` entries must be the same at the end as at
//! the start (after one warm-up start per method, which may start a fork server).
use crate::util::{Snapshot, snapshot};
use crate::{Budget, Outcome};
use mproc_spawn::{Process, StartMethod};
use std::time::{Duration, Instant};

fn echo(x: u64) -> u64 {
    x ^ 0x5A5A
}

/// Children started at once (kept modest: the machine is shared).
const BATCH: usize = 4;

pub(crate) fn run(b: Budget) -> Outcome {
    let mut out = Outcome {
        nothing_lost: true,
        ..Outcome::default()
    };
    let target = b.count(10_000, 50);
    // The slowest method last: it gets what the others leave of the slice.
    let methods = [
        ("fork", StartMethod::Fork),
        ("forkserver", StartMethod::ForkServer),
        ("spawn", StartMethod::Spawn),
    ];
    let slice_start = Instant::now();
    // Warm up every method first, so a fork server started on first use is part of
    // the baseline.
    for (name, m) in methods {
        let mut p = Process::new(echo, 1u64).start_method(m);
        if p.start().is_err() || p.join().ok() != Some(echo(1)) {
            out.violate(format!("{name}: warm-up start failed"));
        }
    }
    let mut seen = Vec::new();
    let mut total = 0u64;
    for (i, (name, m)) in methods.into_iter().enumerate() {
        let per_method = b.time.saturating_sub(slice_start.elapsed()) / (3 - i as u32);
        let before = snapshot();
        let t0 = Instant::now();
        let mut n = 0u64;
        let mut bad = 0u64;
        while n < target && t0.elapsed() < per_method {
            let mut batch = Vec::with_capacity(BATCH);
            for i in 0..BATCH as u64 {
                let mut p = Process::new(echo, n + i).start_method(m);
                match p.start() {
                    Ok(()) => batch.push((n + i, p)),
                    Err(e) => {
                        bad += 1;
                        if bad < 4 {
                            out.violate(format!("{name}: start {} failed: {e}", n + i));
                        }
                    }
                }
            }
            for (x, mut p) in batch {
                match p.join_timeout(Duration::from_secs(30)) {
                    Ok(Some(r)) if r == echo(x) => {}
                    other => {
                        bad += 1;
                        if bad < 4 {
                            out.violate(format!("{name}: child {x} gave {other:?}"));
                        }
                    }
                }
            }
            n += BATCH as u64;
        }
        let rate = n as f64 / t0.elapsed().as_secs_f64();
        // Give exiting helpers a moment, then compare.
        let mut after = snapshot();
        let settle = Instant::now();
        while after != before && settle.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(50));
            after = snapshot();
        }
        println!(
            "  {name}: {n} starts ({rate:.0}/s), before {} after {}",
            show(&before),
            show(&after)
        );
        if after != before {
            out.nothing_lost = false;
            out.violate(format!(
                "{name}: after {n} starts the parent holds {} (before: {})",
                show(&after),
                show(&before)
            ));
        }
        if n < target {
            println!("  {name}: time slice ended at {n} of {target} starts");
        }
        total += n;
        seen.push(format!("{name} {n} ({rate:.0}/s)"));
    }
    out.load = format!("{total} starts+joins in batches of {BATCH} (target {target} per method)");
    out.faults = "none (leak check)".into();
    out.seen = format!(
        "{}; fds, threads, zombies, /dev/shm unchanged: {}",
        seen.join(", "),
        out.violations.is_empty()
    );
    out
}

fn show(s: &Snapshot) -> String {
    format!(
        "{} fds, {} threads, {} zombies, {} shm",
        s.fds,
        s.threads,
        s.zombies,
        s.shm.len()
    )
}

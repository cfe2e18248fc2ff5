//! Scenario 1: a pool under load while its workers are SIGKILLed at random.
//!
//! Every submitted task must get exactly one outcome (its own result, or `WorkerLost`),
//! results must belong to the task that asked (no cross-wiring), `WorkerLost` count
//! cannot exceed the kills, and the pool must still answer afterwards.
use crate::util::{METHODS, Rng, kill_ours, ms};
use crate::{Budget, Outcome};
use mproc_pool::{Pool, TaskError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A task: a short sleep derived from its id, then (id, pid).
fn work(id: u64) -> (u64, u32) {
    let us = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) * 4; // 0..4 ms
    std::thread::sleep(Duration::from_micros(us));
    (id, std::process::id())
}

pub(crate) fn run(b: Budget) -> Outcome {
    let mut out = Outcome {
        nothing_lost: true,
        ..Outcome::default()
    };
    // One pool per start method, each a fifth of the time and of the kills; the
    // fourth (forkserver) has a 20 ms initializer, so kills also land mid-initializer;
    // the fifth feeds imap_unordered to workers that also retire every 50 tasks.
    let quarter = Budget {
        time: b.time / 5,
        scale: b.scale / 5.0,
        seed: b.seed,
    };
    let mut parts = Vec::new();
    let kinds = METHODS.into_iter().map(|(n, m)| (n, m, false)).chain([(
        "forkserver+initializer",
        METHODS[2].1,
        true,
    )]);
    for (i, (name, m, init)) in kinds.enumerate() {
        let o = run_one(
            Budget {
                seed: b.seed.wrapping_add(i as u64),
                ..quarter
            },
            m,
            init,
        );
        println!("  {name}: {}; {}", o.faults, o.seen);
        out.violations
            .extend(o.violations.iter().map(|v| format!("{name}: {v}")));
        out.nothing_lost &= o.nothing_lost;
        parts.push((name, o));
    }
    {
        let name = "imap_unordered+maxtasksperchild";
        let o = run_imap(Budget {
            seed: b.seed.wrapping_add(9),
            ..quarter
        });
        println!("  {name}: {}; {}", o.faults, o.seen);
        out.violations
            .extend(o.violations.iter().map(|v| format!("{name}: {v}")));
        out.nothing_lost &= o.nothing_lost;
        parts.push((name, o));
    }
    let sum = |f: fn(&Counts) -> u64| parts.iter().map(|(_, o)| f(&o.counts)).sum::<u64>();
    out.load = format!(
        "5 pools of 4 workers (fork, spawn, forkserver, forkserver with a 20 ms initializer: apply_async and map_results batches of 64; forkserver with maxtasksperchild 50: imap_unordered in chunks of 8), {} tasks of 0-4 ms",
        sum(|c| c.submitted)
    );
    out.faults = format!("{} SIGKILLs of random workers", sum(|c| c.kills));
    out.seen = format!(
        "{} results + {} WorkerLost = {} outcomes for {} tasks, 0 duplicated, 0 cross-wired; slowest batch {}; every pool answers after",
        sum(|c| c.ok),
        sum(|c| c.lost),
        sum(|c| c.ok + c.lost),
        sum(|c| c.submitted),
        ms(parts
            .iter()
            .map(|(_, o)| o.slowest)
            .max()
            .unwrap_or_default())
    );
    out
}

#[derive(Debug, Default)]
struct Counts {
    submitted: u64,
    ok: u64,
    lost: u64,
    kills: u64,
}

#[derive(Debug, Default)]
struct Part {
    counts: Counts,
    slowest: Duration,
    faults: String,
    seen: String,
    violations: Vec<String>,
    nothing_lost: bool,
}

impl Part {
    fn violate(&mut self, what: impl Into<String>) {
        let w = what.into();
        eprintln!("  VIOLATION: {w}");
        self.violations.push(w);
    }
}

/// A thread that SIGKILLs a random worker of a pool every `interval` until finished.
struct Killer {
    stop: Arc<AtomicBool>,
    kills: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Killer {
    fn start(pool: &Arc<Pool>, interval: Duration, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let kills = Arc::new(AtomicU64::new(0));
        let thread = {
            let (pool, stop, kills) = (pool.clone(), stop.clone(), kills.clone());
            let mut rng = Rng::new(seed);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(interval);
                    let pids = pool.pids();
                    if !pids.is_empty() && kill_ours(pids[rng.below(pids.len() as u64) as usize]) {
                        kills.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Killer {
            stop,
            kills,
            thread,
        }
    }

    /// Stops the thread; returns how many kills landed.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.kills.load(Ordering::Relaxed)
    }
}

/// imap_unordered (chunks of 8, lazily fed) on a pool whose workers also retire every
/// 50 tasks, while workers are killed: each item yields once; the results' ids are
/// unique and every id not returned is matched by a `WorkerLost`.
fn run_imap(b: Budget) -> Part {
    let mut out = Part {
        nothing_lost: true,
        ..Part::default()
    };
    let pool = match Pool::builder().processes(4).maxtasksperchild(50).build() {
        Ok(p) => Arc::new(p),
        Err(e) => {
            out.violate(format!("pool did not start: {e}"));
            out.nothing_lost = false;
            return out;
        }
    };
    let target_kills = b.count(1_050, 10);
    let load_time = b.time.mul_f64(0.85);
    let interval = load_time / target_kills as u32;
    let killer = Killer::start(&pool, interval, b.seed);
    let started = Instant::now();
    let (mut submitted, mut ok, mut lost) = (0u64, 0u64, 0u64);
    let mut next = 0u64;
    while started.elapsed() < load_time {
        let ids: Vec<u64> = (next..next + 512).collect();
        next += 512;
        submitted += 512;
        let mut seen = std::collections::HashSet::new();
        let mut it = pool.imap_unordered_chunked(work, ids.clone(), 8);
        let mut outcomes = 0u64;
        loop {
            match it.next_timeout(Duration::from_secs(60)) {
                None => break,
                Some(Ok((id, _))) => {
                    outcomes += 1;
                    if !seen.insert(id) || !(ids[0]..ids[0] + 512).contains(&id) {
                        out.violate(format!("imap_unordered yielded id {id} twice or unasked"));
                    }
                    ok += 1;
                }
                Some(Err(mproc_pool::ResultError::Failed(TaskError::WorkerLost { .. }))) => {
                    outcomes += 1;
                    lost += 1;
                }
                Some(Err(e)) => {
                    out.violate(format!("imap_unordered: {e}"));
                    break;
                }
            }
        }
        if outcomes != 512 {
            out.nothing_lost = false;
            out.violate(format!(
                "imap_unordered gave {outcomes} outcomes for 512 items"
            ));
        }
        if out.violations.len() > 5 {
            break;
        }
    }
    let kills = killer.finish();
    if lost > kills {
        out.violate(format!("{lost} items lost for only {kills} kills"));
    }
    let answers = pool.map(work, 0..32u64).is_ok_and(|v| v.len() == 32);
    if !answers {
        out.violate("the pool did not answer after the kills");
    }
    out.counts = Counts {
        submitted,
        ok,
        lost,
        kills,
    };
    out.faults = format!("{submitted} items, {kills} SIGKILLs");
    out.seen = format!(
        "{ok} results + {lost} WorkerLost = {} outcomes for {submitted} items, 0 duplicated; pool answers after: {answers}",
        ok + lost
    );
    out
}

fn slow_init(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn run_one(b: Budget, method: mproc_spawn::StartMethod, init: bool) -> Part {
    let mut out = Part {
        nothing_lost: true,
        ..Part::default()
    };
    let mut builder = Pool::builder().processes(4).start_method(method);
    if init {
        builder = builder.initializer(slow_init, 20u64);
    }
    let pool = match builder.build() {
        Ok(p) => Arc::new(p),
        Err(e) => {
            out.violate(format!("pool did not start: {e}"));
            out.nothing_lost = false;
            return out;
        }
    };
    // A little above 1,000 in all, so the kills that land (the first waits one interval) reach it.
    let target_kills = b.count(1_050, 10);
    let load_time = b.time.mul_f64(0.85);
    let interval = load_time / target_kills as u32;
    let killer = Killer::start(&pool, interval, b.seed);

    let started = Instant::now();
    let (mut submitted, mut ok, mut lost, mut wrong, mut other, mut hung) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut map_batches = 0u64;
    let mut next_id = 0u64;
    let mut slowest = Duration::ZERO;
    let mut round = 0u64;
    while started.elapsed() < load_time {
        round += 1;
        if round.is_multiple_of(3) {
            // A map over a batch: one outcome per item, in order.
            let ids: Vec<u64> = (next_id..next_id + 64).collect();
            next_id += 64;
            submitted += ids.len() as u64;
            map_batches += 1;
            let t = Instant::now();
            let res = pool.map_results(work, ids.clone());
            slowest = slowest.max(t.elapsed());
            if res.len() != ids.len() {
                out.violate(format!(
                    "map_results gave {} outcomes for {} items",
                    res.len(),
                    ids.len()
                ));
            }
            for (id, r) in ids.iter().zip(res) {
                tally(*id, r, &mut ok, &mut lost, &mut wrong, &mut other);
            }
        } else {
            let batch: Vec<_> = (next_id..next_id + 64)
                .map(|id| (id, pool.apply_async(work, id)))
                .collect();
            next_id += 64;
            submitted += batch.len() as u64;
            for (id, r) in batch {
                let t = Instant::now();
                match r.get_timeout(Duration::from_secs(60)) {
                    Ok(v) => tally(id, Ok(v), &mut ok, &mut lost, &mut wrong, &mut other),
                    Err(mproc_pool::ResultError::Failed(e)) => {
                        tally(id, Err(e), &mut ok, &mut lost, &mut wrong, &mut other)
                    }
                    Err(e) => {
                        hung += 1;
                        if hung < 5 {
                            out.violate(format!("task {id}: no outcome within 60 s ({e})"));
                        }
                    }
                }
                slowest = slowest.max(t.elapsed());
            }
        }
    }
    let kills = killer.finish();

    // The pool still answers.
    let after = pool.apply_async(work, u64::MAX - 1);
    let answers =
        matches!(after.get_timeout(Duration::from_secs(30)), Ok((id, _)) if id == u64::MAX - 1);
    let again = pool.map(work, 0..32u64).ok();
    let answers =
        answers && again.is_some_and(|v| v.iter().enumerate().all(|(i, r)| r.0 == i as u64));
    if !answers {
        out.violate("the pool did not answer after the kills");
    }
    let accounted = ok + lost + wrong + other;
    if accounted != submitted || hung > 0 {
        out.nothing_lost = false;
        out.violate(format!(
            "{submitted} submitted but {accounted} outcomes ({hung} never answered)"
        ));
    }
    if wrong > 0 {
        out.violate(format!("{wrong} results belonged to another task"));
    }
    if other > 0 {
        out.violate(format!(
            "{other} outcomes were neither a result nor WorkerLost"
        ));
    }
    if lost > kills {
        out.violate(format!("{lost} tasks lost for only {kills} kills"));
    }
    if kills < target_kills / 2 {
        out.violate(format!("only {kills} kills landed (target {target_kills})"));
    }
    out.counts = Counts {
        submitted,
        ok,
        lost,
        kills,
    };
    out.slowest = slowest;
    out.faults = format!(
        "{kills} SIGKILLs of random workers (one every {}) over {map_batches} map batches",
        ms(interval)
    );
    out.seen = format!(
        "{ok} results + {lost} WorkerLost = {accounted} outcomes for {submitted} tasks, 0 duplicated; slowest batch {}; pool answers after: {answers}",
        ms(slowest)
    );
    out
}

fn tally(
    id: u64,
    r: Result<(u64, u32), TaskError>,
    ok: &mut u64,
    lost: &mut u64,
    wrong: &mut u64,
    other: &mut u64,
) {
    match r {
        Ok((got, _)) if got == id => *ok += 1,
        Ok(_) => *wrong += 1,
        Err(TaskError::WorkerLost { .. }) => *lost += 1,
        Err(e) => {
            *other += 1;
            eprintln!("  task {id}: unexpected outcome {e}");
        }
    }
}

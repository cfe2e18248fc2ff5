//! `mproc-soak`: fault injection and soak runs over mproc's crates.
//!
//! `mproc-soak [--seconds N] [--only NAME[,NAME..]] [--seed S]` runs every scenario in a
//! slice of the `N` seconds (default 180), each printing what it tried and what it saw,
//! then a table. Exits non-zero when any invariant was violated. Counts scale with `N`:
//! the default run is the full load (≥ 1,000 worker kills, 10,000 starts per method).
#![deny(unsafe_code)]

mod frames;
mod locks;
mod memory;
mod parent;
mod pool;
mod queue;
mod starts;
mod util;

use std::process::ExitCode;
use std::time::{Duration, Instant};

/// What one scenario reports.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Load: how much work ran.
    pub(crate) load: String,
    /// Faults injected.
    pub(crate) faults: String,
    /// What was seen.
    pub(crate) seen: String,
    /// Invariant violations, each described (empty = pass).
    pub(crate) violations: Vec<String>,
    /// Whether nothing was lost (false when a message/task/resource went missing).
    pub(crate) nothing_lost: bool,
}

impl Outcome {
    pub(crate) fn violate(&mut self, what: impl Into<String>) {
        let w = what.into();
        eprintln!("  VIOLATION: {w}");
        self.violations.push(w);
    }
}

/// Budget handed to a scenario: its time slice and the load scale (1.0 = default run).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub(crate) time: Duration,
    pub(crate) scale: f64,
    pub(crate) seed: u64,
}

impl Budget {
    /// `full` scaled to this run, at least `min`.
    pub(crate) fn count(&self, full: u64, min: u64) -> u64 {
        ((full as f64 * self.scale) as u64).max(min)
    }
}

type Scenario = (&'static str, &'static str, f64, fn(Budget) -> Outcome);

const SCENARIOS: [Scenario; 7] = [
    (
        "pool",
        "1. pool workers SIGKILLed under load",
        0.28,
        pool::run,
    ),
    ("locks", "2. lock holders SIGKILLed", 0.10, locks::run),
    (
        "queue",
        "3. queue producers/consumers SIGKILLed",
        0.15,
        queue::run,
    ),
    (
        "parent",
        "4. parent SIGKILLed with its tree alive",
        0.06,
        parent::run,
    ),
    ("starts", "5. process starts per method", 0.31, starts::run),
    (
        "frames",
        "6. corrupt/truncated/oversized frames",
        0.05,
        frames::run,
    ),
    (
        "memory",
        "7. task allocating past a ulimit",
        0.05,
        memory::run,
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let seconds: f64 = flag("--seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(180.0);
    let only: Option<Vec<String>> =
        flag("--only").map(|s| s.split(',').map(str::to_owned).collect());
    let seed: u64 = flag("--seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| util::mono_ns() ^ u64::from(std::process::id()));
    let scale = (seconds / 180.0).max(0.01);
    println!("mproc-soak: {seconds} s in all, load scale {scale:.3}, seed {seed}");

    // Bounded in time whatever happens: a hang anywhere ends the run as a failure.
    let limit = Duration::from_secs_f64(seconds * 3.0 + 120.0);
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "mproc-soak: HANG: still running after {} s; giving up",
            limit.as_secs()
        );
        std::process::exit(3);
    });
    let started = Instant::now();
    let mut rows = Vec::new();
    // Time a scenario leaves unused passes to the next one.
    let mut spare = Duration::ZERO;
    for (key, title, share, run) in SCENARIOS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|k| k == key)) {
            continue;
        }
        let slice = Duration::from_secs_f64(seconds * share);
        let budget = Budget {
            time: slice + spare,
            scale,
            seed: seed.wrapping_add(rows.len() as u64),
        };
        println!("\n== {title} (slice {:.0} s)", budget.time.as_secs_f64());
        let t0 = Instant::now();
        let out = run(budget);
        spare = budget.time.saturating_sub(t0.elapsed());
        println!("  load:   {}", out.load);
        println!("  faults: {}", out.faults);
        println!("  saw:    {}", out.seen);
        println!(
            "  => {} in {:.1} s",
            if out.violations.is_empty() {
                "PASS"
            } else {
                "FAIL"
            },
            t0.elapsed().as_secs_f64()
        );
        rows.push((title, out));
    }

    println!("\n| scenario | load | faults injected | outcome | nothing lost |");
    println!("|---|---|---|---|---|");
    let mut failed = 0;
    for (title, o) in &rows {
        let outcome = if o.violations.is_empty() {
            o.seen.clone()
        } else {
            failed += 1;
            format!("FAIL: {}", o.violations.join("; "))
        };
        println!(
            "| {title} | {} | {} | {outcome} | {} |",
            o.load,
            o.faults,
            if o.nothing_lost { "yes" } else { "no" }
        );
    }
    println!(
        "\nmproc-soak: {} scenarios, {failed} failed, {:.0} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

//! Three worker processes go through three phases in step: a `Barrier` keeps any worker
//! from starting phase p+1 before every worker has finished phase p. The barrier's
//! action runs once per round, in the last worker to arrive.
//! Python: `multiprocessing.Barrier(3, action=...)`.
//!
//! expect: ^phase 0: worker [0-2] done$
//! expect: ^phase 0: worker [0-2] done$
//! expect: ^phase 0: worker [0-2] done$
//! expect: ^--- all 3 workers passed the barrier ---$
//! expect: ^phase 1: worker [0-2] done$
//! expect: ^phase 1: worker [0-2] done$
//! expect: ^phase 1: worker [0-2] done$
//! expect: ^--- all 3 workers passed the barrier ---$
//! expect: ^phase 2: worker [0-2] done$
//! expect: ^phase 2: worker [0-2] done$
//! expect: ^phase 2: worker [0-2] done$
//! expect: ^--- all 3 workers passed the barrier ---$
//! expect: ^indices per round were unique: true$
use mproc::spawn::Process;
use mproc::sync::Barrier;
use std::io::Write;
use std::time::Duration;

const WORKERS: u32 = 3;
const PHASES: u32 = 3;

fn announce() {
    println!("--- all {WORKERS} workers passed the barrier ---");
    let _ = std::io::stdout().flush();
}

/// Returns the index `wait` gave this worker in each round.
fn worker((barrier, me): (Barrier, u32)) -> Vec<u32> {
    let mut indices = Vec::new();
    for phase in 0..PHASES {
        // Uneven work: the barrier still keeps the phases apart.
        std::thread::sleep(Duration::from_millis(
            u64::from((me * 7 + phase * 3) % 5) * 10,
        ));
        println!("phase {phase}: worker {me} done");
        let _ = std::io::stdout().flush();
        match barrier.wait() {
            Ok(i) => indices.push(i as u32),
            Err(e) => {
                eprintln!("worker {me}: {e}");
                return indices;
            }
        }
    }
    indices
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let barrier = Barrier::builder(WORKERS)
        .action(announce)
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut workers = Vec::new();
    for me in 0..WORKERS {
        let mut p = Process::new(worker, (barrier.clone(), me));
        p.start()?;
        workers.push(p);
    }
    let mut per_round = vec![Vec::new(); PHASES as usize];
    for p in &mut workers {
        for (round, i) in p.join()?.into_iter().enumerate() {
            per_round[round].push(i);
        }
    }
    let unique = per_round.iter_mut().all(|r| {
        r.sort_unstable();
        *r == (0..WORKERS).collect::<Vec<_>>()
    });
    println!("indices per round were unique: {unique}");
    Ok(())
}

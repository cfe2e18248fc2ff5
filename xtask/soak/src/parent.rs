//! Scenario 4: a parent SIGKILLed while its children, a pool and named segments live.
//!
//! The "parent" is a child process of ours: it starts two children, a pool of two
//! workers and creates two named segments, reports the pids and names, and sleeps. We
//! SIGKILL it; 1 s later none of those processes may be alive, no segment may remain
//! in `/dev/shm`, and no process of this binary may exist beyond those that existed
//! before the round.
use crate::util::{METHODS, alive_not_zombie, kill_ours, processes_of_this_binary};
use crate::{Budget, Outcome};
use mproc_channel::Queue;
use mproc_pool::Pool;
use mproc_shm::SharedMemory;
use mproc_spawn::Process;
use std::time::{Duration, Instant};

type Report = (Vec<i32>, Vec<String>);

fn sleeper(_: u32) -> u32 {
    std::thread::sleep(Duration::from_secs(600));
    0
}

fn tree_parent((q, round): (Queue<Report>, u64)) -> u32 {
    let me = std::process::id();
    let method = METHODS[round as usize % 3].1;
    let mut kids = Vec::new();
    for _ in 0..2 {
        let mut p = Process::new(sleeper, 0u32).start_method(method);
        if p.start().is_ok() {
            kids.push(p);
        }
    }
    let pool = Pool::builder()
        .processes(2)
        .start_method(method)
        .build()
        .ok();
    // Make sure the pool's workers are up before reporting them.
    if let Some(p) = &pool {
        let _ = p.apply(sleeper_short, 1u32);
    }
    let segs: Vec<SharedMemory> = (0..2)
        .filter_map(|i| {
            SharedMemory::create_named(&format!("mproc-soak-{me}-{round}-{i}"), 4096).ok()
        })
        .collect();
    let mut pids: Vec<i32> = kids.iter().filter_map(|p| p.pid()).collect();
    if let Some(p) = &pool {
        pids.extend(p.pids());
    }
    let names = segs.iter().map(|s| s.name().to_owned()).collect();
    let _ = q.put((pids, names));
    std::thread::sleep(Duration::from_secs(600));
    drop((kids, pool, segs));
    0
}

fn sleeper_short(x: u32) -> u32 {
    x
}

pub(crate) fn run(b: Budget) -> Outcome {
    let mut out = Outcome {
        nothing_lost: true,
        ..Outcome::default()
    };
    let rounds = ((b.time.as_secs_f64() / 2.0) as u64).clamp(3, 30);
    let (mut procs, mut segs, mut left_procs, mut left_segs) = (0usize, 0usize, 0usize, 0usize);
    let mut worst_gone = Duration::ZERO;
    for round in 0..rounds {
        let before = processes_of_this_binary();
        let q: Queue<Report> = match Queue::new() {
            Ok(q) => q,
            Err(e) => {
                out.violate(format!("queue: {e}"));
                break;
            }
        };
        // The parent itself and its tree use the same start method, in turn.
        let mut parent = Process::new(tree_parent, (q.clone(), round))
            .start_method(METHODS[round as usize % 3].1);
        if let Err(e) = parent.start() {
            out.violate(format!("could not start the parent: {e}"));
            break;
        }
        let Ok((pids, names)) = q.get_timeout(Duration::from_secs(60)) else {
            let _ = parent.kill();
            out.violate("the parent never reported its tree");
            break;
        };
        if pids.len() != 4 || names.len() != 2 {
            out.violate(format!(
                "the parent built only {} processes and {} segments (expected 4 and 2)",
                pids.len(),
                names.len()
            ));
        }
        procs += pids.len() + 1;
        segs += names.len();
        let ppid = parent.pid().unwrap_or(0);
        if !kill_ours(ppid) {
            out.violate("could not kill the parent");
        }
        let killed = Instant::now();
        let _ = parent.join_timeout(Duration::from_secs(10));
        // Measure how soon everything is gone, up to the 1 s bound.
        let gone = |names: &[String]| {
            pids.iter().all(|&p| !alive_not_zombie(p))
                && names
                    .iter()
                    .all(|n| !std::path::Path::new("/dev/shm").join(n).exists())
        };
        while !gone(&names) && killed.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(5));
        }
        worst_gone = worst_gone.max(killed.elapsed());
        std::thread::sleep(Duration::from_secs(1).saturating_sub(killed.elapsed()));
        for &p in &pids {
            if alive_not_zombie(p) {
                left_procs += 1;
                out.violate(format!(
                    "round {round}: process {p} of the killed parent's tree still alive 1 s later"
                ));
                kill_ours(p);
            }
        }
        for n in &names {
            if std::path::Path::new("/dev/shm").join(n).exists() {
                left_segs += 1;
                out.violate(format!(
                    "round {round}: segment {n} still in /dev/shm 1 s later"
                ));
                let _ = mproc_shm::unlink(n);
            }
        }
        let after = processes_of_this_binary();
        let extra: Vec<i32> = after
            .iter()
            .filter(|p| !before.contains(p))
            .copied()
            .collect();
        if !extra.is_empty() {
            left_procs += extra.len();
            out.violate(format!(
                "round {round}: other processes of this binary left: {extra:?}"
            ));
            for p in extra {
                kill_ours(p);
            }
        }
    }
    if left_procs + left_segs > 0 {
        out.nothing_lost = false;
    }
    out.load = format!(
        "{rounds} trees (fork, spawn, forkserver in turn): parent + 2 children + Pool(2) + 2 named segments each"
    );
    out.faults = format!("{rounds} SIGKILLs of the parent");
    out.seen = format!(
        "{procs} processes and {segs} segments to clean: {left_procs} processes and {left_segs} segments left after 1 s; all gone within {:.0} ms worst",
        worst_gone.as_secs_f64() * 1e3
    );
    out
}

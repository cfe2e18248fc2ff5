//! The program the MPI tests run under `mpirun` (or alone, for spawn mode): one
//! scenario per first argument, each printing `ok <what>` lines the tests check.
use mproc_mpi::{MpiPool, ResultError, TaskError, as_completed};
use std::time::Duration;

fn square(x: u64) -> u64 {
    x * x
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn fail_on_3(x: u64) -> u64 {
    assert!(x != 3, "three is not allowed");
    x
}

fn big(n: u64) -> Vec<u8> {
    vec![(n % 251) as u8; 4 << 20]
}

fn sum_bytes(v: Vec<u8>) -> u64 {
    v.iter().map(|&b| u64::from(b)).sum()
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Where a worker runs: its node's shared-memory domain (the fake node's vader backing
/// directory, or the default) and its node's name.
fn whereami(_: u64) -> String {
    std::thread::sleep(Duration::from_millis(20));
    let dir =
        std::env::var("OMPI_MCA_btl_vader_backing_directory").unwrap_or_else(|_| "default".into());
    format!("{dir}|{}", mproc_mpi::processor_name().unwrap_or_default())
}

fn die(_: u64) -> u64 {
    // SAFETY: raise(SIGKILL) only kills this process.
    unsafe {
        libc::raise(libc::SIGKILL);
    }
    0
}

fn pid_of(_: u64) -> u32 {
    std::process::id()
}

fn region_len(r: mproc_core::Region) -> usize {
    r.len()
}

fn check(what: &str, ok: bool) {
    if ok {
        println!("ok {what}");
    } else {
        println!("FAILED {what}");
        std::process::exit(2);
    }
}

fn exercise(pool: &MpiPool) {
    check(
        "map",
        pool.map(square, 0..6u64).unwrap() == vec![0, 1, 4, 9, 16, 25],
    );
    let want: Vec<u64> = (0..1000u64).map(square).collect();
    check(
        "map_chunked",
        pool.map_chunked(square, 0..1000u64, 7).unwrap() == want,
    );
    check(
        "map_async",
        pool.map_async(square, 0..100u64).get().unwrap() == want[..100],
    );
    let got: Vec<u64> = pool.imap(square, 0..50u64).map(Result::unwrap).collect();
    check("imap", got == want[..50]);
    let mut un: Vec<u64> = pool
        .imap_unordered(square, 0..50u64)
        .map(Result::unwrap)
        .collect();
    un.sort_unstable();
    check("imap_unordered", un == want[..50]);
    check(
        "starmap",
        pool.starmap(add, vec![(1u64, 2u64), (3, 4), (5, 6)])
            .unwrap()
            == vec![3, 7, 11],
    );
    check(
        "apply_async",
        pool.apply_async(square, 12).get().unwrap() == 144,
    );
    check("apply", pool.apply(square, 5).unwrap() == 25);
    let e = pool.map(fail_on_3, 0..6u64).unwrap_err();
    check(
        "map panic is typed",
        e.index == 3
            && matches!(&e.error, TaskError::Panicked { message } if message.contains("three")),
    );
    let r: Vec<Result<u64, TaskError>> = pool.imap(fail_on_3, 0..6u64).collect();
    check(
        "imap panic fails one item",
        r.iter().filter(|x| x.is_err()).count() == 1 && r[5] == Ok(5),
    );
    let futs: Vec<_> = [200u64, 10, 50]
        .iter()
        .map(|&m| pool.submit(nap, m))
        .collect();
    let order: Vec<usize> = as_completed(&futs, None).map(Result::unwrap).collect();
    check("as_completed", order.len() == 3 && order[0] != 0);
    check(
        "future result",
        futs[0].result(None).unwrap() == 200 && futs[1].done(),
    );
    let slow = pool.apply_async(nap, 300);
    check(
        "get_timeout",
        matches!(
            slow.get_timeout(Duration::from_millis(10)),
            Err(ResultError::Timeout)
        ) && slow.get().unwrap() == 300,
    );
    let region = mproc_core::Region::new(4096).unwrap();
    check(
        "handles are refused",
        matches!(pool.apply(region_len, region), Err(TaskError::Codec { .. })),
    );
    // Large messages both ways, several in flight per worker: never a deadlock.
    let sums = pool.map_chunked(sum_bytes, (0..6u64).map(big), 1).unwrap();
    check(
        "large messages",
        sums.iter()
            .enumerate()
            .all(|(i, &s)| s == (i as u64 % 251) * (4 << 20)),
    );
    let bigs = pool.map_chunked(big, 0..6u64, 1).unwrap();
    check(
        "large results",
        bigs.iter()
            .enumerate()
            .all(|(i, v)| v.len() == 4 << 20 && v[0] == i as u8),
    );
}

fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    match scenario.as_str() {
        "spmd" => {
            if let Some(pool) = MpiPool::spmd().unwrap() {
                check("workers", pool.processes() == 2);
                exercise(&pool);
                pool.close();
                pool.join();
                check(
                    "closed pool refuses",
                    pool.apply(square, 1) == Err(TaskError::Closed),
                );
            }
            // A second pool after the first: the constructor is collective and repeatable.
            if let Some(pool) = MpiPool::spmd().unwrap() {
                check("second pool", pool.apply(square, 9).unwrap() == 81);
                // terminate: what is queued fails, what runs finishes.
                let rs: Vec<_> = (0..20).map(|_| pool.apply_async(nap, 100)).collect();
                std::thread::sleep(Duration::from_millis(30));
                pool.terminate();
                let out: Vec<_> = rs.iter().map(|r| r.get()).collect();
                check(
                    "terminate fails the queued tasks",
                    out.contains(&Ok(100)) && out.contains(&Err(TaskError::Terminated)),
                );
            }
            println!("done rank {}", mproc_mpi::world_rank().unwrap());
        }
        "nodes" => {
            if let Some(pool) = MpiPool::spmd().unwrap() {
                let mut places = pool.map_chunked(whereami, 0..40u64, 1).unwrap();
                places.sort();
                places.dedup();
                println!("places {places:?}");
                check("two nodes", places.len() == 2);
            }
        }
        "kill" => {
            if let Some(pool) = MpiPool::spmd().unwrap() {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                println!("ok started");
                println!("killing at {}", now.as_millis());
                let r = pool.apply(die, 0);
                // Under mpirun the job is aborted before this line runs.
                println!("apply returned {r:?}");
            }
        }
        "spawn" => {
            let pool = MpiPool::spawn(2).unwrap();
            check("spawned workers", pool.processes() == 2);
            exercise(&pool);
            let pids = pool.map_chunked(pid_of, 0..20u64, 1).unwrap();
            check(
                "spawned are other processes",
                !pids.contains(&std::process::id()),
            );
        }
        "spawn_kill" => {
            let pool = MpiPool::spawn(2).unwrap();
            check("spawn_kill started", pool.apply(square, 3).unwrap() == 9);
            let r = pool.apply(die, 0);
            println!("lost: {r:?}");
            check(
                "lost worker is typed",
                matches!(r, Err(TaskError::WorkerLost { .. })),
            );
            let r = pool.apply(square, 2);
            check("then broken", matches!(r, Err(TaskError::Broken { .. })));
            drop(pool);
            println!("ok dropped");
        }
        "spawn_too_many" => {
            let r = MpiPool::spawn(8);
            println!("spawn(8): {r:?}");
            check(
                "failed spawn is typed",
                matches!(r, Err(mproc_mpi::MpiError::Spawn(_))),
            );
        }
        "spawn_zero" => {
            check(
                "zero workers refused",
                matches!(
                    MpiPool::spawn(0),
                    Err(mproc_mpi::MpiError::InvalidArgument(_))
                ),
            );
        }
        other => {
            eprintln!("unknown scenario {other:?}");
            std::process::exit(3);
        }
    }
}

//! A task kills its own worker (SIGKILL). CPython's Pool hangs for ever here
//! (python/cpython#96062); mproc fails that one task with WorkerLost, replaces the
//! worker, and every other result still arrives.
//! expect: ^item 0: ok 0$
//! expect: ^item 3: WorkerLost \(signal Some\(9\)\)$
//! expect: ^item 7: ok 49$
//! expect: ^the pool goes on: 144$
use mproc::pool::{Pool, TaskError};

fn square_or_die(x: u64) -> u64 {
    if x == 3 {
        let me = rustix::process::getpid();
        let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
    }
    x * x
}

fn main() {
    let pool = Pool::new(2).expect("start the pool");
    for (i, r) in pool
        .map_results(square_or_die, 0..8u64)
        .into_iter()
        .enumerate()
    {
        match r {
            Ok(v) => println!("item {i}: ok {v}"),
            Err(TaskError::WorkerLost { pid, signal, .. }) => {
                println!("item {i}: WorkerLost (signal {signal:?})");
                eprintln!("(worker {pid} died)");
            }
            Err(e) => println!("item {i}: {e}"),
        }
    }
    println!(
        "the pool goes on: {}",
        pool.apply(square_or_die, 12).expect("apply")
    );
}

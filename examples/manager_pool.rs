//! A process pool held by a manager (Python: `p = manager.Pool(processes=2)`), used by
//! this process and by a child that received the proxy, then closed and joined.
//! expect: ^map: \[0, 1, 4, 9, 16, 25, 36, 49\]$
//! expect: ^apply_async: 1764$
//! expect: ^child's starmap: \[6, 20\]$
//! expect: ^imap: \[0, 2, 4, 6\]$
//! expect: ^task 3 failed: .*boom at 3
//! expect: ^after close: .*pool not running
use mproc::manager::{Manager, ManagerError, PoolProxy};
use mproc::spawn::Process;

fn square(x: u64) -> u64 {
    x * x
}

fn mul(a: u64, b: u64) -> u64 {
    a * b
}

fn double(x: u32) -> u32 {
    2 * x
}

fn boom(x: u32) -> u32 {
    if x == 3 {
        panic!("boom at {x}");
    }
    x
}

fn child(pool: PoolProxy) -> Vec<u64> {
    pool.starmap(mul, [(2, 3), (4, 5)])
        .expect("starmap in the child")
}

fn main() {
    let m = Manager::start().expect("start the manager");
    let pool = m.pool(2).expect("a pool in the manager");
    println!("map: {:?}", pool.map(square, 0..8u64).expect("map"));
    let r = pool.apply_async(square, 42).expect("apply_async");
    println!("apply_async: {}", r.get().expect("its result"));

    let mut p = Process::new(child, pool.clone());
    p.start().expect("start a child");
    println!("child's starmap: {:?}", p.join().expect("join the child"));

    let doubled: Result<Vec<u32>, ManagerError> =
        pool.imap(double, 0..4u32).expect("imap").collect();
    println!("imap: {:?}", doubled.expect("every item"));
    if let Err(e) = pool.map(boom, 0..5u32) {
        println!("task 3 failed: {e}");
    }

    pool.close().expect("close");
    pool.join().expect("join");
    if let Err(e) = pool.apply(square, 1) {
        println!("after close: {e}");
    }
    m.shutdown().expect("stop the manager");
}

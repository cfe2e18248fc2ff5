//! `imap_unordered`: results as they finish (shorter sleeps first), and `imap` over an
//! endless input, consumed only as far as needed.
//! expect: ^first finished: 1$
//! expect: ^all: \[1, 2, 3, 4\]$
//! expect: ^imap over 0\.\.: \[0, 1, 4, 9, 16\]$
use mproc::pool::Pool;
use std::time::Duration;

fn nap(tenths: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(100 * tenths));
    tenths
}

fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    let pool = Pool::new(4).expect("start the pool");
    let mut order = Vec::new();
    for r in pool.imap_unordered(nap, [4u64, 3, 1, 2]) {
        let v = r.expect("task");
        if order.is_empty() {
            println!("first finished: {v}");
        }
        order.push(v);
    }
    order.sort_unstable();
    println!("all: {order:?}");
    let first: Vec<u64> = pool
        .imap(square, 0u64..)
        .take(5)
        .map(|r| r.expect("task"))
        .collect();
    println!("imap over 0..: {first:?}");
}

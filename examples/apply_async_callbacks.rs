//! `apply_async(..., callback=..., error_callback=...)`: the callbacks run in the
//! parent when each task finishes, before `get()` returns.
//! expect: ^callback: 49$
//! expect: ^error_callback: task panicked: no negative numbers, please$
//! expect: ^get: Ok\(49\)$
use mproc::pool::Pool;

fn checked_square(x: i64) -> i64 {
    if x < 0 {
        panic!("no negative numbers, please");
    }
    x * x
}

fn main() {
    let pool = Pool::new(2).expect("start the pool");
    let ok = pool.apply_async_with(
        checked_square,
        7,
        |v| println!("callback: {v}"),
        |e| println!("error_callback: {e}"),
    );
    ok.wait();
    let bad = pool.apply_async_with(
        checked_square,
        -1,
        |v| println!("callback: {v}"),
        |e| println!("error_callback: {e}"),
    );
    bad.wait();
    println!("get: {:?}", ok.get());
}

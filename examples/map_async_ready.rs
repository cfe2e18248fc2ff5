//! `map_async`: `ready()` is false while the work runs, true after `wait()`.
//! expect: ^ready: false$
//! expect: ^ready: true$
//! expect: ^successful: Some\(true\)$
//! expect: ^\[0, 1, 4, 9, 16, 25, 36, 49\]$
use mproc::pool::Pool;
use std::time::Duration;

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(200));
    x * x
}

fn main() {
    let pool = Pool::new(2).expect("start the pool");
    let r = pool.map_async(slow_square, 0..8u64);
    println!("ready: {}", r.ready());
    r.wait();
    println!("ready: {}", r.ready());
    println!("successful: {:?}", r.successful());
    println!("{:?}", r.get().expect("map"));
}

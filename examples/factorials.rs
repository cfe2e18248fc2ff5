//! Factorials computed in parallel, results in input order.
//! expect: ^\[120, 40320, 3628800, 1307674368000, 6, 720, 24\]$
use mproc::pool::Pool;

fn factorial(n: u64) -> u64 {
    (1..=n).product()
}

fn main() {
    let pool = Pool::new(4).expect("start the pool");
    let out = pool
        .map(factorial, [5u64, 8, 10, 15, 3, 6, 4])
        .expect("map");
    println!("{out:?}");
}

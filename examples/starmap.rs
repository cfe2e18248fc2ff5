//! `Pool.starmap`: a two-argument function over pairs, as Python's
//! `p.starmap(mul, zip(range(1, 10), range(10, 19)))`.
//! expect: ^\[10, 22, 36, 52, 70, 90, 112, 136, 162\]$
use mproc::pool::Pool;

fn mul(x: u64, y: u64) -> u64 {
    x * y
}

fn main() {
    let pool = Pool::new(2).expect("start the pool");
    let out = pool
        .starmap(mul, (1..10u64).zip(10..19u64))
        .expect("starmap");
    println!("{out:?}");
}

//! Python's first Pool example: `with Pool(4) as p: print(p.map(f, range(6)))`.
//! expect: ^\[0, 1, 4, 9, 16, 25\]$
use mproc::pool::Pool;

fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    let pool = Pool::new(4).expect("start the pool");
    let squares = pool.map(square, 0..6u64).expect("map");
    println!("{squares:?}");
}

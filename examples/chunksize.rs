//! `chunksize`: 24 items handed to workers 1, 2 or 3 at a time give the same results;
//! Python's default rule picks `ceil(24 / (4 * processes))`.
//! expect: ^chunksize 1: \[0, 1, 4, 9, 16, 25, 36, 49, 64, 81, 100, 121, 144, 169, 196, 225, 256, 289, 324, 361, 400, 441, 484, 529\]$
//! expect: ^chunksize 2: same$
//! expect: ^chunksize 3: same$
//! expect: ^default chunksize for 24 items on 2 workers: 3$
use mproc::pool::{Pool, default_chunksize};

fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    let pool = Pool::new(2).expect("start the pool");
    let one = pool.map_chunked(square, 0..24u64, 1).expect("map");
    println!("chunksize 1: {one:?}");
    for cs in [2, 3] {
        let other = pool.map_chunked(square, 0..24u64, cs).expect("map");
        println!(
            "chunksize {cs}: {}",
            if other == one { "same" } else { "DIFFERENT" }
        );
    }
    println!(
        "default chunksize for 24 items on 2 workers: {}",
        default_chunksize(24, 2)
    );
}

//! Two CPU-bound tasks, first one after the other in this process, then at the same time:
//! one in this process and one in a child. With two free cores the second run takes
//! about half the time of the first.
//! expect: ^sequential: \d+\.\d+ s$
//! expect: ^parallel \(one here, one in a child\): \d+\.\d+ s$
//! expect: ^ratio: \d+\.\d+$
use mproc::spawn::Process;
use std::time::Instant;

/// A fixed amount of arithmetic (xorshift rounds); returns a checksum.
fn burn(rounds: u64) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x)
}

fn main() {
    let rounds = if cfg!(debug_assertions) {
        60_000_000
    } else {
        600_000_000
    };

    let t = Instant::now();
    let a = burn(rounds);
    let b = burn(rounds);
    let sequential = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut child = Process::new(burn, rounds);
    child.start().expect("start the child");
    let here = burn(rounds);
    let there = child.join().expect("the child's checksum");
    let parallel = t.elapsed().as_secs_f64();
    assert_eq!((a, b), (here, there));

    println!("sequential: {sequential:.3} s");
    println!("parallel (one here, one in a child): {parallel:.3} s");
    println!("ratio: {:.2}", parallel / sequential);
}

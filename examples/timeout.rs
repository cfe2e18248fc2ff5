//! `get(timeout)`: waiting for a 5 s task at most 2 s gives a timeout error on time;
//! the task goes on, and dropping the pool terminates it.
//! expect: ^timeout error after 2\.\d s: timed out waiting for the result$
use mproc::pool::Pool;
use std::time::{Duration, Instant};

fn slow(secs: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(secs));
    secs
}

fn main() {
    let pool = Pool::new(1).expect("start the pool");
    let r = pool.apply_async(slow, 5);
    let t = Instant::now();
    match r.get_timeout(Duration::from_secs(2)) {
        Err(e) => println!(
            "timeout error after {:.1} s: {e}",
            t.elapsed().as_secs_f64()
        ),
        Ok(v) => println!("unexpected result {v}"),
    }
}

//! `ProcessPoolExecutor` + `as_completed`: futures reported as they finish.
//! expect: ^done: 4 -> 4$
//! expect: ^all 4 done; sum 10$
use mproc::pool::{Executor, as_completed};
use std::time::Duration;

fn nap(tenths: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(150 * (4 - tenths)));
    tenths
}

fn main() {
    let ex = Executor::new(4).expect("start the executor");
    let futures: Vec<_> = (1..=4u64).map(|i| ex.submit(nap, i)).collect();
    let mut sum = 0;
    let mut n = 0;
    for (k, done) in as_completed(&futures, Some(Duration::from_secs(60))).enumerate() {
        // Python's `for f in as_completed(fs): f.result()`, with the index beside it.
        let (i, future) = done.expect("within the timeout");
        let v = future.result(None).expect("task");
        if k == 0 {
            println!("done: {} -> {v}", i + 1);
        }
        sum += v;
        n += 1;
    }
    println!("all {n} done; sum {sum}");
    ex.shutdown(true, false);
}

//! Python's `Process` hello world: three workers run at the same time, each printing its
//! letter a few times, so their lines interleave; the parent joins them all and prints
//! `Done`.
//! expect: ^worker [ABC]: step 1$
//! expect: ^worker [ABC]: step 3$
//! expect: ^Done$
use mproc::spawn::Process;
use std::time::Duration;

fn worker(letter: String) {
    for step in 1..=3 {
        println!("worker {letter}: step {step}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    let mut workers: Vec<Process<()>> = ["A", "B", "C"]
        .iter()
        .map(|l| Process::new(worker, l.to_string()).name(format!("worker-{l}")))
        .collect();
    for w in &mut workers {
        w.start().expect("start a worker");
    }
    for w in &mut workers {
        w.join().expect("a worker finished");
    }
    println!("Done");
}

//! Python's logging cookbook: workers log "Worker started", and a `QueueHandler` /
//! `QueueListener` pair brings the records to the parent's handler, where
//! `%(processName)s` tells them apart. Here one call does it: `mproc::logging::forward`.
//! Each line is the parent's logger printing a child's record, tagged `[name pid]`.
//! expect: ^INFO \[Process-[123] \d+\] Worker started$
//! expect: ^INFO \[Process-[123] \d+\] Worker started$
//! expect: ^INFO \[Process-[123] \d+\] Worker started$
//! expect: ^INFO main: all workers done$
use mproc::spawn::Process;

/// The parent's own logger: `LEVEL message` on stdout (any `log::Log` will do, such
/// as an `env_logger::Logger`).
struct Stdout;

impl log::Log for Stdout {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        println!("{} {}", r.level(), r.args());
    }
    fn flush(&self) {}
}

fn worker(_: ()) {
    log::info!("Worker started");
    log::debug!("not shown: the parent keeps Info and above");
}

fn main() {
    // The parent's logger goes behind mproc's, so that fork children forward too.
    let forwarding = mproc::logging::Forwarding::new()
        .logger(Stdout)
        .max_level(log::LevelFilter::Info)
        .start()
        .expect("start forwarding");
    let mut workers: Vec<Process<()>> = (0..3).map(|_| Process::new(worker, ())).collect();
    for w in &mut workers {
        w.start().expect("start a worker");
    }
    for w in &mut workers {
        w.join().expect("join a worker");
    }
    // Replays what is still queued, then stops.
    drop(forwarding);
    log::info!("main: all workers done");
}

//! mproc's own lifecycle records (`mproc_core::logger`, Python's
//! `multiprocessing.get_logger()`) written in a forwarding child reach the parent's
//! logger like any other record, under the start method of `MPROC_START_METHOD`.
use mproc_core::logger::{self, Level};
use mproc_spawn::Process;
use std::sync::Mutex;

/// The parent's logger: keeps every line it is given.
struct Capture;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        let line = format!("{} {} {}", r.level(), r.target(), r.args());
        LINES.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

fn seven(_: ()) -> u32 {
    7
}

#[test]
fn a_childs_lifecycle_records_reach_the_parents_logger() {
    logger::get_logger().set_level(Level::INFO);
    let fwd = mproc_log::Forwarding::new()
        .logger(Capture)
        .max_level(log::LevelFilter::Debug)
        .start()
        .expect("forwarding starts");
    let mut p = Process::new(seven, ());
    p.start().unwrap();
    let pid = p.pid().unwrap();
    assert_eq!(p.join().unwrap(), 7);
    drop(fwd);
    let lines = std::mem::take(&mut *LINES.lock().unwrap());
    let tag = format!("[Process-1 {pid}]");
    let mine: Vec<&String> = lines.iter().filter(|l| l.contains(&tag)).collect();
    assert_eq!(
        mine,
        [
            &format!("INFO mproc {tag} child process calling self.run()"),
            &format!("INFO mproc {tag} process shutting down"),
            &format!("INFO mproc {tag} process exiting with exitcode 0"),
        ],
        "all lines: {lines:#?}"
    );
}

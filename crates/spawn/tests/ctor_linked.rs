//! The bootstrap constructor must be linked into every binary that starts processes,
//! including another crate's test binary like this one: a spawned child that reached
//! `main` (the test harness) instead of the constructor would never report a result.
use mproc_spawn::{Process, StartMethod, current_process, parent_process};

fn whoami(_: ()) -> (String, i32, i32) {
    let me = current_process();
    let parent = parent_process().map(|p| p.pid()).unwrap_or(0);
    (me.name().to_owned(), me.pid(), parent)
}

#[test]
fn spawned_child_dispatches_before_main() {
    let mut p = Process::new(whoami, ())
        .name("linked")
        .start_method(StartMethod::Spawn);
    p.start().unwrap();
    let pid = p.pid().unwrap();
    let (name, child_pid, parent) = p.join().unwrap();
    assert_eq!(name, "linked");
    assert_eq!(child_pid, pid);
    assert_eq!(parent, std::process::id() as i32);
}

//! The same target under each start method: it prints the method, the pid of the process
//! that started it, and its own pid. Under forkserver the OS parent is the fork server,
//! shown beside the logical parent.
//! expect: ^main process: pid \d+$
//! expect: ^method fork: parent pid \d+, own pid \d+, os parent \d+$
//! expect: ^method spawn: parent pid \d+, own pid \d+, os parent \d+$
//! expect: ^method forkserver: parent pid \d+, own pid \d+, os parent \d+$
use mproc::spawn::{Process, StartMethod, current_process, parent_process};

fn report(method: String) {
    let parent = parent_process().map_or(0, |p| p.pid());
    let os_parent = std::os::unix::process::parent_id();
    println!(
        "method {method}: parent pid {parent}, own pid {}, os parent {os_parent}",
        current_process().pid()
    );
}

fn main() {
    println!("main process: pid {}", std::process::id());
    for method in StartMethod::ALL {
        let mut p = Process::new(report, method.to_string()).start_method(method);
        p.start().expect("start");
        p.join().expect("join");
    }
}

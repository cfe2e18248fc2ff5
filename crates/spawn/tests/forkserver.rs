//! Fork-server specifics: children are the server's, preload runs once in the server,
//! a stopped or dead server is replaced. (One test function: the preload must be set
//! before this binary's server starts.)
use mproc_spawn::{Process, StartMethod, parent_process, set_forkserver_preload, stop_forkserver};
use std::sync::atomic::{AtomicU32, Ordering};

static PRELOADED: AtomicU32 = AtomicU32::new(0);

fn preload() {
    PRELOADED.fetch_add(1, Ordering::SeqCst);
}

/// (preload count seen by the child, real parent pid, logical parent pid)
fn report(_: ()) -> (u32, i32, i32) {
    (
        PRELOADED.load(Ordering::SeqCst),
        rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()),
        parent_process().map_or(0, |p| p.pid()),
    )
}

fn server_pid(_: ()) -> i32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get())
}

#[test]
fn fork_server_behaviour() {
    set_forkserver_preload(&[preload]);
    let me = std::process::id() as i32;
    let run = |f: fn(()) -> _| {
        let mut p = Process::new(f, ()).start_method(StartMethod::ForkServer);
        p.start().unwrap();
        p.join().unwrap()
    };
    let (count, real_parent, logical_parent) = run(report);
    assert_eq!(count, 1, "the preload ran once, in the server");
    assert_ne!(real_parent, me, "the server forked the child");
    assert_eq!(logical_parent, me);
    assert_eq!(
        PRELOADED.load(Ordering::SeqCst),
        0,
        "preload never ran here"
    );
    // The same server serves the next start.
    let mut p = Process::new(server_pid, ()).start_method(StartMethod::ForkServer);
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), real_parent);

    // A server that was killed is replaced on the next start.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(real_parent).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mut p = Process::new(server_pid, ()).start_method(StartMethod::ForkServer);
    p.start().unwrap();
    let second = p.join().unwrap();
    assert_ne!(second, real_parent);
    assert_ne!(second, me);

    // stop_forkserver makes the next start use a new server; children of the old one
    // keep running and are still reported.
    let mut survivor = Process::new(sleep_then, 300u64).start_method(StartMethod::ForkServer);
    survivor.start().unwrap();
    stop_forkserver();
    let mut p = Process::new(server_pid, ()).start_method(StartMethod::ForkServer);
    p.start().unwrap();
    let third = p.join().unwrap();
    assert_ne!(third, second);
    assert_eq!(survivor.join().unwrap(), 300);
    assert_eq!(survivor.exitcode(), Some(0));
}

fn sleep_then(ms: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(ms));
    ms
}

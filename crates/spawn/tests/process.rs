//! Process behaviour under the default start method (test-all repeats this file under
//! each method): results, handles, names, nesting, sentinels, drop, threads; and the
//! per-method checks that loop over all three.
mod support;

use mproc_core::Handle;
use mproc_spawn::{
    Process, ProcessError, StartMethod, active_children, current_process, get_context,
    parent_process,
};
use rustix::event::{PollFd, PollFlags, poll};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::Duration;
use support::*;

fn echo(v: (String, Vec<u32>, Option<i64>)) -> (String, Vec<u32>, Option<i64>) {
    v
}

fn big(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn sum_bytes(v: Vec<u8>) -> u64 {
    v.iter().map(|&b| u64::from(b)).sum()
}

fn sleeper(ms: u64) -> u64 {
    sleep_ms(ms)
}

fn write_to(w: Handle<OwnedFd>) -> u32 {
    let mut f = std::fs::File::from(w.0);
    f.write_all(b"through an inherited fd").unwrap();
    1
}

fn identity(_: ()) -> (String, i32, bool, Option<i32>, Option<String>) {
    let me = current_process();
    let parent = parent_process();
    (
        me.name().to_owned(),
        me.pid(),
        me.daemon(),
        parent.as_ref().map(|p| p.pid()),
        parent.map(|p| p.name().to_owned()),
    )
}

/// Starts a child of its own (and a fork-closure-free grandchild) and reports names.
fn nested(_: ()) -> (String, String, i32) {
    let me = current_process().name().to_owned();
    let mut p = Process::new(identity, ());
    p.start().unwrap();
    let (child_name, _, _, parent_pid, parent_name) = p.join().unwrap();
    assert_eq!(parent_name.as_deref(), Some(me.as_str()));
    (me, child_name, parent_pid.unwrap())
}

#[test]
fn results_round_trip() {
    let v = ("héllo".to_string(), vec![1, 2, 3], Some(-5));
    let mut p = Process::new(echo, v.clone());
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), v);
    assert_eq!(p.exitcode(), Some(0));
}

#[test]
fn large_arguments_and_results() {
    let n = 8 << 20;
    let mut p = Process::new(big, n);
    p.start().unwrap();
    let v = p.join().unwrap();
    assert_eq!(v.len(), n);
    assert_eq!(v, big(n));
    let expect: u64 = v.iter().map(|&b| u64::from(b)).sum();
    let mut p = Process::new(sum_bytes, v);
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), expect);
}

#[test]
fn a_large_result_does_not_block_join_timeout() {
    // The child cannot exit before its 8 MiB result is read: join_timeout reads it
    // while it waits.
    let mut p = Process::new(big, 8 << 20);
    p.start().unwrap();
    let mut got = None;
    for _ in 0..200 {
        if let Some(v) = p.join_timeout(Duration::from_millis(100)).unwrap() {
            got = Some(v);
            break;
        }
    }
    assert_eq!(got.map(|v| v.len()), Some(8 << 20));
}

#[test]
fn handles_cross_into_the_child() {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let mut p = Process::new(write_to, Handle(w));
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), 1);
    let mut s = String::new();
    std::fs::File::from(r).read_to_string(&mut s).unwrap();
    assert_eq!(s, "through an inherited fd");
}

#[test]
fn names_pids_daemon_and_parent() {
    let mut p = Process::new(identity, ()).name("worker-7").daemon(true);
    assert_eq!(p.process_name(), "worker-7");
    p.start().unwrap();
    let pid = p.pid().unwrap();
    let (name, child_pid, daemon, parent_pid, parent_name) = p.join().unwrap();
    assert_eq!(name, "worker-7");
    assert_eq!(child_pid, pid);
    assert!(daemon);
    assert_eq!(parent_pid, Some(std::process::id() as i32));
    assert_eq!(parent_name.as_deref(), Some("MainProcess"));
    assert_eq!(current_process().name(), "MainProcess");
    assert!(parent_process().is_none());

    let p = Process::new(identity, ());
    assert!(p.process_name().starts_with("Process-"));
}

#[test]
fn a_child_starts_children_with_nested_names() {
    let mut p = Process::new(nested, ());
    let pname = p.process_name().to_owned();
    p.start().unwrap();
    let pid = p.pid().unwrap();
    let (me, child, child_parent) = p.join().unwrap();
    assert_eq!(me, pname);
    assert_eq!(child, format!("{me}:1"), "Python's Process-N:1 naming");
    assert_eq!(child_parent, pid);
}

#[test]
fn sentinel_becomes_readable_at_exit() {
    let mut p = Process::new(sleeper, 200);
    assert!(p.sentinel().is_none());
    p.start().unwrap();
    let s = p.sentinel().unwrap();
    let mut fds = [PollFd::new(&s, PollFlags::IN)];
    let ts = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    assert_eq!(poll(&mut fds, Some(&ts)).unwrap(), 0);
    assert_eq!(poll(&mut fds, None).unwrap(), 1);
    assert_eq!(p.join().unwrap(), 200);
}

#[test]
fn active_children_lists_running_children() {
    let mut a = Process::new(sleeper, 30_000);
    let mut b = Process::new(sleeper, 30_000);
    a.start().unwrap();
    b.start().unwrap();
    let (pa, pb) = (a.pid().unwrap(), b.pid().unwrap());
    let kids: Vec<i32> = active_children().iter().map(|c| c.pid).collect();
    assert!(kids.contains(&pa) && kids.contains(&pb), "{kids:?}");
    a.kill().unwrap();
    let _ = a.join();
    let kids: Vec<i32> = active_children().iter().map(|c| c.pid).collect();
    assert!(!kids.contains(&pa) && kids.contains(&pb), "{kids:?}");
    drop(b);
    let kids: Vec<i32> = active_children().iter().map(|c| c.pid).collect();
    assert!(!kids.contains(&pb));
}

#[test]
fn drop_kills_and_reaps() {
    let mut p = Process::new(sleeper, 30_000);
    p.start().unwrap();
    let pid = p.pid().unwrap();
    assert!(mproc_core::process_alive(pid));
    drop(p);
    assert!(!mproc_core::process_alive(pid));
    // Not a zombie of ours either (fork and spawn children are ours to reap).
    let reaped = rustix::process::waitpid(
        rustix::process::Pid::from_raw(pid),
        rustix::process::WaitOptions::NOHANG,
    );
    assert!(
        matches!(reaped, Err(rustix::io::Errno::CHILD)),
        "{reaped:?}"
    );
}

#[test]
fn a_child_outlives_the_short_lived_thread_that_started_it() {
    // PDEATHSIG follows the creating thread; mproc creates children from a long-lived
    // thread, so this child is not killed when the starting thread ends.
    let p = std::thread::spawn(|| {
        let mut p = Process::new(sleeper, 300);
        p.start().unwrap();
        p
    })
    .join()
    .unwrap();
    let mut p = p;
    assert_eq!(p.join().unwrap(), 300);
}

#[test]
fn join_before_start_and_signals_before_start_are_errors() {
    let mut p = Process::new(sleeper, 1);
    assert!(matches!(p.join(), Err(ProcessError::NotStarted)));
    assert!(matches!(p.terminate(), Err(ProcessError::NotStarted)));
    assert_eq!(p.exitcode(), None);
    assert!(!p.is_alive());
}

// ----- per-method checks: each loops over all three methods.

fn whoami(_: ()) -> (i32, i32) {
    (
        rustix::process::getpid().as_raw_nonzero().get(),
        parent_process().map_or(0, |p| p.pid()),
    )
}

#[test]
fn every_method_through_a_context() {
    for m in StartMethod::ALL {
        let ctx = get_context(m);
        assert_eq!(ctx.start_method(), m);
        let mut p = ctx.spawn(whoami, ()).unwrap();
        assert_eq!(p.method(), m);
        let pid = p.pid().unwrap();
        assert_eq!(p.join().unwrap(), (pid, std::process::id() as i32), "{m}");
        assert_eq!(p.exitcode(), Some(0));
    }
}

#[test]
fn fork_closure_runs_captures_and_only_under_fork() {
    let data: Vec<u64> = (1..=100).collect();
    // SAFETY: the closure touches only its captures, which no other thread holds.
    let mut p = unsafe { Process::fork_closure(move || data.iter().sum::<u64>()) };
    assert_eq!(p.method(), StartMethod::Fork);
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), 5050);

    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        // SAFETY: never forked (the start method is refused).
        let mut p = unsafe { Process::fork_closure(|| 1u32) }.start_method(m);
        assert!(matches!(p.start(), Err(ProcessError::ClosureNeedsFork)));
        assert_eq!(p.pid(), None);
    }
}

fn panicker(_: ()) -> u8 {
    panic!("method-specific panic")
}

#[test]
fn every_method_reports_panics_exits_and_signals() {
    for m in StartMethod::ALL {
        let mut p = Process::new(panicker, ()).start_method(m);
        p.start().unwrap();
        assert!(
            matches!(p.join(), Err(ProcessError::Panicked(ref s)) if s == "method-specific panic"),
            "{m}"
        );
        assert_eq!(p.exitcode(), Some(1), "{m}");

        let mut p = Process::new(sleeper, 30_000).start_method(m);
        p.start().unwrap();
        p.terminate().unwrap();
        assert!(matches!(p.join(), Err(ProcessError::Signaled(15))), "{m}");
        assert_eq!(p.exitcode(), Some(-15), "{m}");
    }
}

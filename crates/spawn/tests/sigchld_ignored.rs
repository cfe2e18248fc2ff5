//! A parent that ignores SIGCHLD (its children are reaped by the kernel the moment they
//! exit, and their pids may be reused at once) can still start, join and terminate
//! processes under every start method (`MPROC_START_METHOD`), and mproc never signals a
//! pid it does not hold a pidfd for. One test per binary: the disposition is
//! process-wide.
mod support;

use mproc_spawn::{Process, ProcessError};
use std::time::Duration;
use support::*;

fn double(x: u32) -> u32 {
    x * 2
}

fn sleeper(ms: u64) -> u64 {
    sleep_ms(ms)
}

fn sigchld_ignored() -> bool {
    // SAFETY: a zeroed sigaction is a valid out-buffer; a null new action only queries.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old);
        old.sa_sigaction == libc::SIG_IGN
    }
}

#[test]
fn a_parent_that_ignores_sigchld_starts_joins_and_terminates() {
    // SAFETY: installing SIG_IGN runs no code.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
    }
    for round in 0..20u32 {
        let mut p = Process::new(double, round);
        p.start().unwrap();
        assert_eq!(
            p.join_timeout(Duration::from_secs(60)).unwrap(),
            Some(round * 2)
        );
        assert!(!p.is_alive());
        // The child is gone (reaped by the kernel): these reach nobody, and succeed.
        p.terminate().unwrap();
        p.kill().unwrap();
        assert!(sigchld_ignored(), "the program's disposition is restored");
    }
    let mut p = Process::new(sleeper, 60_000);
    p.start().unwrap();
    assert!(p.is_alive());
    p.terminate().unwrap();
    match p.join_timeout(Duration::from_secs(60)) {
        // The exit status is lost to the kernel's reaping; the process ended.
        Err(ProcessError::Signaled(libc::SIGTERM)) | Err(ProcessError::Exited(_)) => {}
        other => panic!("expected the child to end, got {other:?}"),
    }
    assert!(!p.is_alive());
    // A started process dropped without a join is killed through its pidfd.
    let mut p = Process::new(sleeper, 60_000);
    p.start().unwrap();
    let pid = p.pid().unwrap();
    drop(p);
    assert!(eventually(Duration::from_secs(10), || {
        !mproc_core::process_alive(pid)
    }));
    assert!(
        eventually(Duration::from_secs(10), || stray_children().is_empty()),
        "{:?}",
        stray_children()
    );
    assert!(sigchld_ignored());
}

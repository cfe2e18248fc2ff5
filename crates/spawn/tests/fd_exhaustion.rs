//! Starting a process with the fd table full (RLIMIT_NOFILE reached at some step of the
//! start: the socket pairs, the child's pidfd, the fork server's) gives a typed error
//! and leaves no zombie and no stray child, under every start method
//! (`MPROC_START_METHOD`). One test per binary: the fd table is process-wide.
mod support;

use mproc_spawn::{Process, ProcessError};
use std::os::fd::OwnedFd;
use std::time::Duration;
use support::*;

fn double(x: u32) -> u32 {
    x * 2
}

/// Opens /dev/null until the fd table is full; the fds that fill it.
fn fill() -> Vec<OwnedFd> {
    let mut v = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        v.push(OwnedFd::from(f));
    }
    v
}

#[test]
fn a_start_that_runs_out_of_fds_is_a_typed_error_without_a_stray_child() {
    // A small table, so that filling it is quick.
    let lim = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain structs as in/out buffers.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut old);
        let lower = libc::rlimit {
            rlim_cur: lim.rlim_cur.min(old.rlim_cur),
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lower), 0);
    }
    let (mut failed, mut started) = (0, 0);
    for free in 0..24 {
        let mut filler = fill();
        filler.truncate(filler.len().saturating_sub(free));
        let mut p = Process::new(double, free as u32);
        let r = p.start();
        drop(filler);
        match r {
            Ok(()) => {
                started += 1;
                assert_eq!(
                    p.join_timeout(Duration::from_secs(60)).unwrap(),
                    Some(free as u32 * 2)
                );
            }
            Err(ProcessError::Start(e)) => {
                failed += 1;
                // EMFILE from the step that ran out (the fork server's reply, whose
                // pidfd cannot be received, reports truncated control data).
                let text = e.to_string();
                assert!(
                    e.raw_os_error() == Some(libc::EMFILE) || text.contains("truncated"),
                    "{e}"
                );
                assert!(
                    eventually(Duration::from_secs(10), || stray_children().is_empty()),
                    "a failed start ({e}, {free} fds free) left children (or zombies): {:?}",
                    children()
                        .iter()
                        .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat"))
                            .unwrap_or_default())
                        .collect::<Vec<_>>()
                );
            }
            Err(e) => panic!("expected a start error, got {e:?}"),
        }
    }
    // SAFETY: restoring the limit read above.
    unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &old);
    }
    assert!(
        failed > 0 && started > 0,
        "failed {failed}, started {started}"
    );
    assert!(
        eventually(Duration::from_secs(10), || stray_children().is_empty()),
        "{:?}",
        stray_children()
    );
}

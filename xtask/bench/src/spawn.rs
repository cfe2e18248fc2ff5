//! Process start workloads: start + join of a no-op child, µs each.
//!
//! - `start.fork`: mproc `Process` with `StartMethod::Fork`; raw: `libc::fork` +
//!   `_exit(0)` + `waitpid`.
//! - `start.spawn`: mproc `StartMethod::Spawn`; raw: re-exec of `/proc/self/exe` with the
//!   variable that makes mproc-spawn's constructor exit at once, before `main`
//!   (`Command::spawn` + `wait`, no pipes).
//! - `start.forkserver`: mproc `StartMethod::ForkServer` (the server is started by the
//!   warm-up); raw: the bare fork, as for `start.fork`.
use crate::harness::{Opts, Record, time_per_op};
use mproc::spawn::{Process, StartMethod};

fn noop(_: ()) {}

fn mproc_start(method: StartMethod, n: u64) {
    for _ in 0..n {
        let mut p = Process::new(noop, ()).start_method(method);
        p.start().expect("start");
        p.join().expect("join");
    }
}

fn raw_fork(n: u64) {
    for _ in 0..n {
        // SAFETY: this bench is single-threaded at this point; the child only `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: leave the child at once.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: reaping our own child by pid.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
}

/// Marks the raw re-exec: the copy of this benchmark exits at once, before `main`, as a
/// spawned child's bootstrap runs before `main`.
const EXIT_AT_START: &str = "MPROC_BENCH_EXIT_AT_START";

#[ctor::ctor(unsafe)]
fn exit_at_start() {
    if std::env::var_os(EXIT_AT_START).is_some() {
        // SAFETY: ends this process at once; nothing of it is in use yet.
        unsafe { libc::_exit(0) };
    }
}

fn raw_reexec(n: u64) {
    for _ in 0..n {
        let st = std::process::Command::new("/proc/self/exe")
            .env(EXIT_AT_START, "1")
            .status()
            .expect("re-exec");
        assert!(st.success());
    }
}

pub fn run(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    let samples = opts.pick(11, 5);
    let forks = opts.pick(400, 100);
    let execs = opts.pick(60, 20);
    if opts.wants("start.fork") {
        let s = time_per_op(samples, forks, 1e-6, |n| mproc_start(StartMethod::Fork, n));
        emit(Record::from_samples("start.fork", "mproc", "us", &s));
        let s = time_per_op(samples, forks, 1e-6, raw_fork);
        emit(Record::from_samples("start.fork", "raw", "us", &s));
    }
    if opts.wants("start.spawn") {
        let s = time_per_op(samples, execs, 1e-6, |n| mproc_start(StartMethod::Spawn, n));
        emit(Record::from_samples("start.spawn", "mproc", "us", &s));
        let s = time_per_op(samples, execs, 1e-6, raw_reexec);
        emit(Record::from_samples("start.spawn", "raw", "us", &s));
    }
    if opts.wants("start.forkserver") {
        let s = time_per_op(samples, forks, 1e-6, |n| {
            mproc_start(StartMethod::ForkServer, n)
        });
        emit(Record::from_samples("start.forkserver", "mproc", "us", &s));
        let s = time_per_op(samples, forks, 1e-6, raw_fork);
        emit(Record::from_samples("start.forkserver", "raw", "us", &s));
    }
}

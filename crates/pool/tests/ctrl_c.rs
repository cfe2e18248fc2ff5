//! Ctrl-C in a program blocked in `map`: the program ends as a Ctrl-C'd program does and
//! leaves no worker behind, with and without `terminate_on_ctrl_c`. (CPython's Pool
//! hangs or leaks workers here.) The "program" is a child process running a pool.
use mproc_core::{Handle, process_alive};
use mproc_pool::Pool;
use mproc_spawn::{Process, ProcessError};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The program under test: starts a pool, reports its workers' pids, blocks in `map`.
fn program(args: (Handle<OwnedFd>, bool)) -> u32 {
    let (Handle(w), opt_in) = args;
    let pool = Pool::builder()
        .processes(2)
        .terminate_on_ctrl_c(opt_in)
        .build()
        .expect("pool");
    let mut f = std::fs::File::from(w);
    let pids: Vec<String> = pool.pids().iter().map(|p| p.to_string()).collect();
    writeln!(f, "{}", pids.join(" ")).expect("report pids");
    drop(f);
    let _ = pool.map_chunked(sleep_ms, vec![20_000u64; 4], 1);
    0
}

#[test]
fn ctrl_c_during_map_ends_the_program_and_its_workers() {
    for opt_in in [false, true] {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let mut p = Process::new(program, (Handle(w), opt_in));
        p.start().unwrap();
        let mut line = String::new();
        BufReader::new(std::fs::File::from(r))
            .read_line(&mut line)
            .unwrap();
        let pids: Vec<i32> = line
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2, "{line:?}");
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        p.signal(libc::SIGINT).unwrap();
        match p.join_timeout(Duration::from_secs(20)) {
            Err(ProcessError::Signaled(2)) => {}
            other => panic!("opt_in {opt_in}: {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|&pid| process_alive(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for pid in &pids {
            assert!(
                !process_alive(*pid),
                "opt_in {opt_in}: worker {pid} left behind"
            );
        }
    }
}

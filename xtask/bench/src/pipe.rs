//! Pipe workloads: mproc's `Connection` beside the raw floor (bare `write`/`read` on a
//! Unix stream socketpair, same bytes), each between this process and a forked child.
//!
//! - `pipe.pingpong`: a u64 there and back, µs per round trip. mproc: `send(&u64)` /
//!   `recv::<u64>()` (rkyv, validated); raw: 8 bytes written and read.
//! - `pipe.bw_1mib`: 1 MiB messages one way, GB/s. mproc: `send_bytes` /
//!   `recv_bytes_view` (framed, received in place); raw: 1 MiB `write`s and `read`s.
//! - `pipe.bw_64mib_one`: one 64 MiB message at a time, acknowledged by the receiver
//!   before the next, GB/s. mproc: `send_bytes` / `recv_bytes` (the receiver gets a
//!   fresh 64 MiB `Vec`, as CPython's `recv_bytes` gets fresh `bytes`); raw: 64 MiB
//!   written and read into a buffer the child reuses. `mproc-view`: received with
//!   `recv_bytes_view` (lent in place, no copy out).
use crate::harness::{Opts, Record, fork, rate, time_per_op};
use mproc::channel::{Connection, Pipe};
use std::os::fd::OwnedFd;

const MIB: usize = 1 << 20;

fn raw_pair() -> (OwnedFd, OwnedFd) {
    rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair")
}

fn write_all(fd: &OwnedFd, mut b: &[u8]) -> bool {
    while !b.is_empty() {
        match rustix::io::write(fd, b) {
            Ok(n) => b = &b[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
        }
    }
    true
}

fn read_exact(fd: &OwnedFd, b: &mut [u8]) -> bool {
    let mut off = 0;
    while off < b.len() {
        match rustix::io::read(fd, &mut b[off..]) {
            Ok(0) => return false,
            Ok(n) => off += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
        }
    }
    true
}

pub fn run(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    if opts.wants("pipe.pingpong") {
        pingpong(opts, emit);
    }
    if opts.wants("pipe.bw_1mib") {
        bandwidth(opts, emit);
    }
    if opts.wants("pipe.bw_64mib_one") {
        one_big(opts, emit);
    }
}

fn one_big(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    const SIZE: usize = 64 * MIB;
    let samples = opts.pick(7, 3);
    let msgs = opts.pick(3, 1);
    let w = "pipe.bw_64mib_one";
    let gbps = |s: Vec<f64>| -> Vec<f64> { s.into_iter().map(|m| m * SIZE as f64 / 1e9).collect() };
    let payload = vec![0x5au8; SIZE];
    {
        let (a, b): (Connection, Connection) = Pipe(true).expect("pipe");
        let _child = fork(move || {
            while let Ok(m) = b.recv_bytes() {
                let ok = m.len() == SIZE;
                drop(m);
                if !ok || b.send_bytes(b"").is_err() {
                    break;
                }
            }
        });
        let s = rate(samples, msgs, |n| {
            for _ in 0..n {
                a.send_bytes(&payload).unwrap();
                a.recv_bytes().unwrap();
            }
        });
        emit(Record::from_samples(w, "mproc", "GB/s", &gbps(s)));
    }
    {
        // The same received with `recv_bytes_view` (lent in place: no copy out).
        let (a, b): (Connection, Connection) = Pipe(true).expect("pipe");
        let _child = fork(move || {
            while let Ok(m) = b.recv_bytes_view() {
                let ok = m.len() == SIZE;
                drop(m);
                if !ok || b.send_bytes(b"").is_err() {
                    break;
                }
            }
        });
        let s = rate(samples, msgs, |n| {
            for _ in 0..n {
                a.send_bytes(&payload).unwrap();
                a.recv_bytes().unwrap();
            }
        });
        emit(Record::from_samples(w, "mproc-view", "GB/s", &gbps(s)));
    }
    {
        let (a, b) = raw_pair();
        let _child = fork(move || {
            let mut buf = vec![0u8; SIZE];
            while read_exact(&b, &mut buf) {
                if !write_all(&b, b"k") {
                    return;
                }
            }
        });
        let s = rate(samples, msgs, |n| {
            for _ in 0..n {
                assert!(write_all(&a, &payload));
                let mut k = [0u8; 1];
                assert!(read_exact(&a, &mut k));
            }
        });
        emit(Record::from_samples(w, "raw", "GB/s", &gbps(s)));
    }
}

fn pingpong(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    let samples = opts.pick(15, 5);
    let iters = opts.pick(20_000, 5_000);
    let w = "pipe.pingpong";
    {
        let (a, b): (Connection, Connection) = Pipe(true).expect("pipe");
        let _child = fork(move || {
            while let Ok(v) = b.recv::<u64>() {
                if b.send(&v).is_err() {
                    break;
                }
            }
        });
        let s = time_per_op(samples, iters, 1e-6, |n| {
            for i in 0..n {
                a.send(&i).unwrap();
                assert_eq!(a.recv::<u64>().unwrap(), i);
            }
        });
        emit(Record::from_samples(w, "mproc", "µs", &s));
    }
    {
        let (a, b) = raw_pair();
        let _child = fork(move || {
            let mut buf = [0u8; 8];
            while read_exact(&b, &mut buf) {
                if !write_all(&b, &buf) {
                    break;
                }
            }
        });
        let s = time_per_op(samples, iters, 1e-6, |n| {
            let mut buf = [0u8; 8];
            for i in 0..n {
                assert!(write_all(&a, &i.to_le_bytes()));
                assert!(read_exact(&a, &mut buf));
            }
        });
        emit(Record::from_samples(w, "raw", "µs", &s));
    }
}

/// GB/s from messages per second of 1 MiB.
fn to_gbps(s: Vec<f64>) -> Vec<f64> {
    s.into_iter().map(|m| m * MIB as f64 / 1e9).collect()
}

fn bandwidth(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    let samples = opts.pick(10, 5);
    let msgs = opts.pick(2_000, 500);
    let w = "pipe.bw_1mib";
    let payload = vec![0x5au8; MIB];
    {
        // The child counts messages and acknowledges each batch's end (an empty message),
        // so a sample ends when every byte has been received.
        let (a, b): (Connection, Connection) = Pipe(true).expect("pipe");
        let _child = fork(move || {
            loop {
                let Ok(m) = b.recv_bytes_view() else { break };
                let ack = m.is_empty();
                drop(m);
                if ack && b.send_bytes(b"").is_err() {
                    break;
                }
            }
        });
        let s = rate(samples, msgs, |n| {
            for _ in 0..n {
                a.send_bytes(&payload).unwrap();
            }
            a.send_bytes(b"").unwrap();
            a.recv_bytes().unwrap();
        });
        emit(Record::from_samples(w, "mproc", "GB/s", &to_gbps(s)));
    }
    {
        let (a, b) = raw_pair();
        let _child = fork(move || {
            let mut buf = vec![0u8; MIB];
            let mut n = [0u8; 8];
            // Each batch: its length (8 bytes), then that many 1 MiB blocks, then an ack.
            while read_exact(&b, &mut n) {
                for _ in 0..u64::from_le_bytes(n) {
                    if !read_exact(&b, &mut buf) {
                        return;
                    }
                }
                if !write_all(&b, b"k") {
                    return;
                }
            }
        });
        let s = rate(samples, msgs, |n| {
            assert!(write_all(&a, &n.to_le_bytes()));
            for _ in 0..n {
                assert!(write_all(&a, &payload));
            }
            let mut k = [0u8; 1];
            assert!(read_exact(&a, &mut k));
        });
        emit(Record::from_samples(w, "raw", "GB/s", &to_gbps(s)));
    }
}

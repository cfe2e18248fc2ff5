//! Manager workloads: a proxy call to a manager's server process over a Unix socket,
//! beside CPython's `Manager()` and beside a raw mproc `Connection` round trip (the
//! floor a proxy call is built on: one request frame out, one reply frame back).
//!
//! - `manager.list_append`: `ListProxy::append(&u64)`, µs per call.
//! - `manager.list_len`: `ListProxy::len()`, µs per call; raw: a u64 sent to a forked
//!   echo child over a `Connection` and received back: the socket round trip a proxy
//!   call would cost without the shared-memory doorbell local connections use.
//! - `manager.dict_setget_child`: a forked child alternates `DictProxy::insert` and
//!   `DictProxy::get` on a dict of the parent's manager, µs per operation (CPython:
//!   `d[k] = v` / `d[k]` from a child process).
use crate::harness::{Opts, Record, fork, time_per_op};
use mproc::channel::{Connection, Pipe};
use mproc::manager::Manager;

pub fn run(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    let samples = opts.pick(15, 5);
    let iters = opts.pick(20_000, 3_000);
    if !opts.wants("manager.") {
        return;
    }
    let m = Manager::start().expect("start a manager");
    let l = m.list::<u64>().expect("a managed list");
    if opts.wants("manager.list_append") {
        let s = time_per_op(samples, iters, 1e-6, |n| {
            for i in 0..n {
                l.append(&i).unwrap();
            }
            l.clear().unwrap();
        });
        emit(Record::from_samples(
            "manager.list_append",
            "mproc",
            "µs",
            &s,
        ));
    }
    if opts.wants("manager.list_len") {
        l.append(&1).unwrap();
        let s = time_per_op(samples, iters, 1e-6, |n| {
            for _ in 0..n {
                assert_eq!(l.len().unwrap(), 1);
            }
        });
        emit(Record::from_samples("manager.list_len", "mproc", "µs", &s));
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
        emit(Record::from_samples("manager.list_len", "raw", "µs", &s));
    }
    if opts.wants("manager.dict_setget_child") {
        let d = m.dict::<u64, u64>().expect("a managed dict");
        let (a, b): (Connection, Connection) = Pipe(true).expect("pipe");
        let dc = d.clone();
        let _child = fork(move || {
            while let Ok(n) = b.recv::<u64>() {
                // Even steps set key (i % 64) to i, odd steps read it back.
                for i in 0..n {
                    if i % 2 == 0 {
                        dc.insert(&(i % 64), &i).unwrap();
                    } else {
                        assert_eq!(dc.get(&((i - 1) % 64)).unwrap(), Some(i - 1));
                    }
                }
                if b.send(&n).is_err() {
                    break;
                }
            }
        });
        let s = time_per_op(samples, iters, 1e-6, |n| {
            a.send(&n).unwrap();
            assert_eq!(a.recv::<u64>().unwrap(), n);
        });
        emit(Record::from_samples(
            "manager.dict_setget_child",
            "mproc",
            "µs",
            &s,
        ));
    }
    drop(l);
    m.shutdown().expect("stop the manager");
}

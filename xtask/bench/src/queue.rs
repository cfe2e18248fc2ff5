//! Queue workloads: mproc's shared-memory ring beside the raw floor (bare atomics,
//! futexes and memcpy over a shared mapping) and ipc-channel, each between this process
//! and one forked child.
//!
//! - `queue.pingpong`: a u64 there and back, µs per round trip.
//! - `queue.small_throughput`: one producer process, one consumer, u64 messages, msgs/s
//!   (`mproc-serde`: the same values as `Serde<u64>`).
//! - `queue.simplequeue_small_throughput`: as small_throughput through a `SimpleQueue`
//!   (raw: the same SPSC ring as small_throughput's).
//! - `queue.mid_512b_throughput` / `queue.mid_1kib_throughput` /
//!   `queue.mid_8kib_throughput`: as small_throughput,
//!   with `Vec<u8>` messages of 512 bytes, 1 KiB and 8 KiB, larger than a default slot (224
//!   bytes) and so carried by the queue's arena; each `get` allocates the vector, as
//!   CPython's unpickling does. Raw: an SPSC ring of 512 B / 8 KiB blocks in shared
//!   memory, memcpy in and out (into a fresh `Vec`), spinning when full or empty.
//!   (The 1 KiB row was added later; the other two keep their history.)
//! - `queue.bw_1mib`: 1 MiB `Vec<u8>` messages, GB/s. mproc: slots sized for them,
//!   `put_in_place` (serialised straight into the slot) and `get_ref` (the consumer
//!   checks the length and two bytes, then frees the slot); "mproc-region": default
//!   slots and `put_ref`, so each message travels in a sealed memfd of its own; raw:
//!   memcpy of 1 MiB blocks into a shared 8 MiB ring, one process.
//! - `queue.get_ref_1kib` / `queue.get_ref_1mib`: the in-place receive alone (claim,
//!   validate, release), µs per message.
use crate::harness::{self, Child, Opts, Record, rate, time_per_op};
use mproc::Serde;
use mproc::channel::{Queue, SimpleQueue};
use mproc_core::Region;
use mproc_core::futex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// The CPUs this process may run on (as first asked, before any pinning).
fn allowed_cpus() -> &'static [usize] {
    static CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    CPUS.get_or_init(|| match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => Vec::new(),
    })
}

fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// While alive, this process runs on its first allowed CPU and forked children on
/// the second, so that the two sides of a workload really run at the same time (on a
/// loaded 2-core machine the scheduler otherwise often runs them in turn).
struct Pinned(Option<rustix::thread::CpuSet>);

impl Pinned {
    fn new() -> Pinned {
        let cpus = allowed_cpus();
        if cpus.len() < 2 {
            return Pinned(None);
        }
        let saved = rustix::thread::sched_getaffinity(None).ok();
        pin_to(cpus[0]);
        Pinned(saved)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(set) = &self.0 {
            let _ = rustix::thread::sched_setaffinity(None, set);
        }
    }
}

/// Runs `f` in a forked child, on the second allowed CPU.
fn fork(f: impl FnOnce()) -> Child {
    let cpus = allowed_cpus();
    harness::fork(move || {
        if cpus.len() >= 2 {
            pin_to(cpus[1]);
        }
        f()
    })
}

const STOP: u64 = u64::MAX;

pub fn run(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    let _pinned = Pinned::new();
    if opts.wants("queue.pingpong") {
        pingpong(opts, emit);
    }
    if opts.wants("queue.small_throughput") {
        throughput(opts, emit);
    }
    if opts.wants("queue.simplequeue_small_throughput") {
        simple_throughput(opts, emit);
    }
    for (w, size) in [
        ("queue.mid_512b_throughput", 512),
        ("queue.mid_1kib_throughput", 1 << 10),
        ("queue.mid_8kib_throughput", 8 << 10),
    ] {
        if opts.wants(w) {
            mid_throughput(opts, emit, w, size);
        }
    }
    if opts.wants("queue.bw_1mib") {
        bandwidth(opts, emit);
    }
    if opts.wants("queue.get_ref") {
        in_place(opts, emit);
    }
}

fn pingpong(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    let samples = opts.pick(15, 5);
    let iters = opts.pick(50_000, 10_000);
    let w = "queue.pingpong";
    {
        let ping: Queue<u64> = Queue::with_maxsize(16).unwrap();
        let pong: Queue<u64> = Queue::with_maxsize(16).unwrap();
        let _child = fork(|| {
            while let Ok(v) = ping.get() {
                if v == STOP || pong.put(v).is_err() {
                    break;
                }
            }
        });
        let s = time_per_op(samples, iters, 1e-6, |n| {
            for i in 0..n {
                ping.put(i).unwrap();
                pong.get().unwrap();
            }
        });
        let _ = ping.put(STOP);
        emit(Record::from_samples(w, "mproc", "µs", &s));
    }
    {
        // Raw: one shared word, spin up to 200 times, then sleep on the futex.
        let r = Region::new(4096).unwrap();
        let word = r.atomic_u32(0).unwrap();
        fn await_value(word: &AtomicU32, want: u32) {
            for _ in 0..200 {
                if word.load(Ordering::Acquire) == want {
                    return;
                }
                std::hint::spin_loop();
            }
            loop {
                let v = word.load(Ordering::Acquire);
                if v == want {
                    return;
                }
                futex::wait(word, v, mproc_core::Deadline::never());
            }
        }
        let _child = fork(|| {
            loop {
                await_value(word, 1);
                word.store(2, Ordering::Release);
                futex::wake(word, 1);
            }
        });
        let s = time_per_op(samples, iters, 1e-6, |n| {
            for _ in 0..n {
                word.store(1, Ordering::Release);
                futex::wake(word, 1);
                await_value(word, 2);
            }
        });
        emit(Record::from_samples(w, "raw", "µs", &s));
    }
    {
        let (ping_tx, ping_rx) = ipc_channel::ipc::channel::<u64>().unwrap();
        let (pong_tx, pong_rx) = ipc_channel::ipc::channel::<u64>().unwrap();
        let _child = fork(|| {
            while let Ok(v) = ping_rx.recv() {
                if v == STOP || pong_tx.send(v).is_err() {
                    break;
                }
            }
        });
        let iters = iters / 10;
        let s = time_per_op(samples, iters, 1e-6, |n| {
            for i in 0..n {
                ping_tx.send(i).unwrap();
                pong_rx.recv().unwrap();
            }
        });
        let _ = ping_tx.send(STOP);
        emit(Record::from_samples(w, "ipc-channel", "µs", &s));
    }
}

fn throughput(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    let samples = opts.pick(10, 5);
    let ops = opts.pick(2_000_000, 400_000);
    let w = "queue.small_throughput";
    {
        let go: Queue<u64> = Queue::new().unwrap();
        let data: Queue<u64> = Queue::new().unwrap();
        let _child = fork(|| {
            while let Ok(n) = go.get() {
                if n == STOP {
                    break;
                }
                for i in 0..n {
                    data.put(i).unwrap();
                }
            }
        });
        let s = rate(samples, ops, |n| {
            go.put(n).unwrap();
            for _ in 0..n {
                data.get().unwrap();
            }
        });
        let _ = go.put(STOP);
        emit(Record::from_samples(w, "mproc", "msg/s", &s));
    }
    {
        // The same with serde messages (bincode inside a `Serde`).
        let go: Queue<u64> = Queue::new().unwrap();
        let data: Queue<Serde<u64>> = Queue::new().unwrap();
        let _child = fork(|| {
            while let Ok(n) = go.get() {
                if n == STOP {
                    break;
                }
                for i in 0..n {
                    data.put(Serde(i)).unwrap();
                }
            }
        });
        let s = rate(samples, ops, |n| {
            go.put(n).unwrap();
            for _ in 0..n {
                data.get().unwrap();
            }
        });
        let _ = go.put(STOP);
        emit(Record::from_samples(w, "mproc-serde", "msg/s", &s));
    }
    {
        // Raw: a single-producer single-consumer ring of u64 in shared memory.
        let s = raw_spsc(
            samples,
            ops,
            4096,
            8,
            |r, off, i| r.atomic_u64(off).unwrap().store(i, Ordering::Relaxed),
            |r, off| {
                std::hint::black_box(r.atomic_u64(off).unwrap().load(Ordering::Relaxed));
            },
        );
        emit(Record::from_samples(w, "raw", "msg/s", &s));
    }
    {
        let (go_tx, go_rx) = ipc_channel::ipc::channel::<u64>().unwrap();
        let (tx, rx) = ipc_channel::ipc::channel::<u64>().unwrap();
        let _child = fork(|| {
            while let Ok(n) = go_rx.recv() {
                if n == STOP {
                    break;
                }
                for i in 0..n {
                    tx.send(i).unwrap();
                }
            }
        });
        let s = rate(samples, ops / 10, |n| {
            go_tx.send(n).unwrap();
            for _ in 0..n {
                rx.recv().unwrap();
            }
        });
        let _ = go_tx.send(STOP);
        emit(Record::from_samples(w, "ipc-channel", "msg/s", &s));
    }
}

/// `queue.simplequeue_small_throughput`: u64 messages through a `SimpleQueue`.
fn simple_throughput(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    let samples = opts.pick(10, 5);
    let ops = opts.pick(2_000_000, 400_000);
    let w = "queue.simplequeue_small_throughput";
    {
        let go: SimpleQueue<u64> = SimpleQueue::new().unwrap();
        let data: SimpleQueue<u64> = SimpleQueue::new().unwrap();
        let _child = fork(|| {
            while let Ok(n) = go.get() {
                if n == STOP {
                    break;
                }
                for i in 0..n {
                    data.put(i).unwrap();
                }
            }
        });
        let s = rate(samples, ops, |n| {
            go.put(n).unwrap();
            for _ in 0..n {
                data.get().unwrap();
            }
        });
        let _ = go.put(STOP);
        emit(Record::from_samples(w, "mproc", "msg/s", &s));
    }
    {
        let s = raw_spsc(
            samples,
            ops,
            4096,
            8,
            |r, off, i| r.atomic_u64(off).unwrap().store(i, Ordering::Relaxed),
            |r, off| {
                std::hint::black_box(r.atomic_u64(off).unwrap().load(Ordering::Relaxed));
            },
        );
        emit(Record::from_samples(w, "raw", "msg/s", &s));
    }
}

/// msg/s of `Vec<u8>` messages of `size` bytes from one producer process to this one.
fn mid_throughput(opts: &Opts, emit: &mut dyn FnMut(Record), w: &str, size: usize) {
    let samples = opts.pick(10, 5);
    let ops: u64 = if size <= 1024 {
        opts.pick(1_000_000, 200_000)
    } else {
        opts.pick(200_000, 50_000)
    };
    {
        let go: Queue<u64> = Queue::new().unwrap();
        let data: Queue<Vec<u8>> = Queue::new().unwrap();
        let _child = fork(|| {
            let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
            while let Ok(n) = go.get() {
                if n == STOP {
                    break;
                }
                for _ in 0..n {
                    data.put_ref(&payload).unwrap();
                }
            }
        });
        let s = rate(samples, ops, |n| {
            go.put(n).unwrap();
            for _ in 0..n {
                let v = data.get().unwrap();
                std::hint::black_box(v.len());
            }
        });
        let _ = go.put(STOP);
        emit(Record::from_samples(w, "mproc", "msg/s", &s));
    }
    {
        // Raw: an SPSC ring of `size`-byte blocks, memcpy in and out.
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let s = raw_spsc(
            samples,
            ops,
            256,
            size.next_multiple_of(64),
            |r, off, _| r.write_bytes(off, &payload).unwrap(),
            |r, off| {
                let mut v = vec![0u8; size];
                r.read_bytes(off, &mut v).unwrap();
                std::hint::black_box(v.len());
            },
        );
        emit(Record::from_samples(w, "raw", "msg/s", &s));
    }
}

/// The raw floor of the throughput rows: a single-producer single-consumer ring of `cap`
/// blocks of `block` bytes in shared memory, bare atomics, spinning (yielding) when full
/// or empty. A forked producer fills block `i` with `put(region, offset, i)`; this
/// process empties it with `take(region, offset)`. msg/s per sample.
fn raw_spsc(
    samples: usize,
    ops: u64,
    cap: u64,
    block: usize,
    put: impl Fn(&Region, usize, u64),
    mut take: impl FnMut(&Region, usize),
) -> Vec<f64> {
    let r = Region::new(256 + cap as usize * block).unwrap();
    let head = r.atomic_u64(0).unwrap(); // next to write
    let tail = r.atomic_u64(64).unwrap(); // next to read
    let order = r.atomic_u64(128).unwrap(); // messages requested
    let at = |i: u64| 256 + (i % cap) as usize * block;
    let _child = fork(|| {
        let mut done = 0u64;
        loop {
            let want = order.load(Ordering::Acquire);
            if want == STOP {
                break;
            }
            if done == want {
                std::thread::yield_now();
                continue;
            }
            while head.load(Ordering::Relaxed) - tail.load(Ordering::Acquire) == cap {
                std::hint::spin_loop();
            }
            let h = head.load(Ordering::Relaxed);
            put(&r, at(h), done);
            head.store(h + 1, Ordering::Release);
            done += 1;
        }
    });
    let mut requested = 0u64;
    let s = rate(samples, ops, |n| {
        requested += n;
        order.store(requested, Ordering::Release);
        for _ in 0..n {
            let t = tail.load(Ordering::Relaxed);
            while head.load(Ordering::Acquire) == t {
                std::hint::spin_loop();
            }
            take(&r, at(t));
            tail.store(t + 1, Ordering::Release);
        }
    });
    order.store(STOP, Ordering::Release);
    s
}

const MIB: usize = 1 << 20;

/// GB/s of `n` 1 MiB messages through `q` from a forked producer.
fn queue_bw(q: &Queue<Vec<u8>>, in_place: bool, samples: usize, msgs: u64) -> Vec<f64> {
    let go: Queue<u64> = Queue::new().unwrap();
    let _child = fork(|| {
        let buf: Vec<u8> = (0..MIB).map(|i| i as u8).collect();
        while let Ok(n) = go.get() {
            if n == STOP {
                break;
            }
            for _ in 0..n {
                if in_place {
                    q.put_in_place(&buf).unwrap();
                } else {
                    q.put_ref(&buf).unwrap();
                }
            }
        }
    });
    let s = rate(samples, msgs, |n| {
        go.put(n).unwrap();
        for _ in 0..n {
            let m = q.get_ref().unwrap();
            assert_eq!(m.len(), MIB);
            std::hint::black_box((m[0], m[MIB - 1]));
        }
    });
    let _ = go.put(STOP);
    s.iter().map(|r| r * MIB as f64 / 1e9).collect()
}

fn bandwidth(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    let samples = opts.pick(10, 5);
    let msgs = opts.pick(1000, 200);
    let w = "queue.bw_1mib";
    let q: Queue<Vec<u8>> = Queue::builder()
        .maxsize(4)
        .slot_size(MIB + 64)
        .build()
        .unwrap();
    emit(Record::from_samples(
        w,
        "mproc",
        "GB/s",
        &queue_bw(&q, true, samples, msgs),
    ));
    let q: Queue<Vec<u8>> = Queue::with_maxsize(16).unwrap();
    emit(Record::from_samples(
        w,
        "mproc-region",
        "GB/s",
        &queue_bw(&q, false, samples, msgs / 4),
    ));
    // Raw: memcpy of 1 MiB blocks into a shared 8 MiB ring (pages already faulted in).
    let dst = Region::new(8 * MIB).unwrap();
    let src: Vec<u8> = (0..MIB).map(|i| i as u8).collect();
    for i in 0..8 {
        dst.write_bytes(i * MIB, &src).unwrap();
    }
    let mut k = 0usize;
    let s = rate(samples, msgs, |n| {
        for _ in 0..n {
            dst.write_bytes((k % 8) * MIB, &src).unwrap();
            k += 1;
        }
    });
    let s: Vec<f64> = s.iter().map(|r| r * MIB as f64 / 1e9).collect();
    emit(Record::from_samples(w, "raw", "GB/s", &s));
}

fn in_place(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    let samples = opts.pick(10, 5);
    let msgs = opts.pick(2000, 400);
    let q: Queue<Vec<u8>> = Queue::builder()
        .maxsize(2)
        .slot_size(MIB + 64)
        .build()
        .unwrap();
    for (w, size) in [("queue.get_ref_1kib", 1024), ("queue.get_ref_1mib", MIB)] {
        let msg = vec![7u8; size];
        let mut s = Vec::new();
        for _ in 0..samples {
            let mut total = 0.0;
            for _ in 0..msgs {
                q.put_ref(&msg).unwrap();
                let t = Instant::now();
                let m = q.get_ref().unwrap();
                std::hint::black_box(m.len());
                drop(m);
                total += t.elapsed().as_secs_f64();
            }
            s.push(total / msgs as f64 * 1e6);
        }
        emit(Record::from_samples(w, "mproc", "µs", &s));
    }
}

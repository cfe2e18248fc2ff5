//! Area `shm`: named segments and locked values, mproc beside the raw syscalls.
//!
//! - `shm.create_unlink` (µs per create + close + unlink of a 4 KiB segment); `raw` is
//!   bare `shm_open` + `ftruncate` + `mmap` + `munmap` + `close` + `shm_unlink`.
//! - `shm.bw` (GB/s): a new segment, a child process that writes every byte of it,
//!   the parent reading it all back, process start included; the segment size over the
//!   whole time (256 MiB, 32 MiB in quick
//!   mode). Fresh pages dominate (a page fault each). `raw` is an anonymous shared
//!   mapping and a bare `fork`; `mproc+populate` creates the segment with
//!   `populate(true)` (MAP_POPULATE in the parent and in the child's mapping) and
//!   `raw+populate` is the same flag on the raw floor; `mproc+prefault` has the parent
//!   fault in the back half (`prefault_range`) while the child starts and fills the
//!   front, so two cores take the page faults.
//! - `value.locked_incr` (ops/s, one process): `*v.lock()? += 1.0` on a `Value<f64>`;
//!   `raw` is a bare futex-mutex word and an f64 in a shared page.
//! - `rawvalue.incr` (ops/s, one process): `v.set(v.get() + 1.0)` on a `RawValue<f64>`,
//!   no lock; `raw` is the same on a bare f64 in a shared page (volatile).
use crate::harness::{Opts, Record, rate, time_per_op};
use mproc::shm::{RawValue, SharedMemory, Value};
use mproc::spawn::Process;
use rustix::fs::Mode;
use rustix::mm::{MapFlags, ProtFlags};
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

const CHUNK: usize = 1 << 20;

pub fn run(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    create_unlink(opts, emit);
    bandwidth(opts, emit);
    locked_incr(opts, emit);
    raw_incr(opts, emit);
}

fn create_unlink(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    let w = "shm.create_unlink";
    if !opts.wants(w) {
        return;
    }
    let (samples, iters) = (opts.pick(15, 5), opts.pick(2_000, 300));
    let mproc = time_per_op(samples, iters, 1e-6, |n| {
        for _ in 0..n {
            let shm = SharedMemory::create(4096).expect("create");
            shm.unlink().expect("unlink");
            drop(black_box(shm));
        }
    });
    emit(Record::from_samples(w, "mproc", "µs", &mproc));
    // The same without the tracker (`track(false)`): what leak-proofing costs.
    let untracked = time_per_op(samples, iters, 1e-6, |n| {
        for _ in 0..n {
            let shm = SharedMemory::builder()
                .size(4096)
                .track(false)
                .create()
                .expect("create");
            shm.unlink().expect("unlink");
            drop(black_box(shm));
        }
    });
    emit(Record::from_samples(w, "mproc-untracked", "µs", &untracked));
    let name = format!("/mproc_bench_raw_{}", std::process::id());
    let raw = time_per_op(samples, iters, 1e-6, |n| {
        for _ in 0..n {
            let fd = rustix::shm::open(
                name.as_str(),
                rustix::shm::OFlags::CREATE | rustix::shm::OFlags::EXCL | rustix::shm::OFlags::RDWR,
                Mode::from_raw_mode(0o600),
            )
            .expect("shm_open");
            rustix::fs::ftruncate(&fd, 4096).expect("ftruncate");
            // SAFETY: a fresh shared mapping of our own fd, unmapped right below.
            let p = unsafe {
                rustix::mm::mmap(
                    std::ptr::null_mut(),
                    4096,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED,
                    &fd,
                    0,
                )
            }
            .expect("mmap");
            black_box(p);
            // SAFETY: the mapping made above, no longer used.
            unsafe { rustix::mm::munmap(p, 4096) }.expect("munmap");
            drop(fd);
            rustix::shm::unlink(name.as_str()).expect("shm_unlink");
        }
    });
    emit(Record::from_samples(w, "raw", "µs", &raw));
}

/// Writes every byte of `dst` (len bytes) from a 1 MiB pattern buffer.
fn write_all(dst: *mut u8, len: usize) {
    let src: Vec<u8> = (0..CHUNK).map(|i| i as u8).collect();
    let mut off = 0;
    while off < len {
        let n = CHUNK.min(len - off);
        // SAFETY: `dst..dst + len` is a live shared mapping only this process writes now.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.add(off), n) };
        off += n;
    }
}

/// Reads every byte of `src` into a 1 MiB buffer; returns a checksum.
fn read_all(src: *const u8, len: usize) -> u64 {
    let mut buf = vec![0u8; CHUNK];
    let mut sum = 0u64;
    let mut off = 0;
    while off < len {
        let n = CHUNK.min(len - off);
        // SAFETY: `src..src + len` is a live mapping nobody writes any more.
        unsafe { std::ptr::copy_nonoverlapping(src.add(off), buf.as_mut_ptr(), n) };
        sum = sum.wrapping_add(u64::from(black_box(&buf)[n - 1]));
        off += n;
    }
    sum
}

fn bw_child(shm: SharedMemory) -> u64 {
    let mut off = 0;
    let src: Vec<u8> = (0..CHUNK).map(|i| i as u8).collect();
    while off < shm.size() {
        let n = CHUNK.min(shm.size() - off);
        shm.write(off, &src[..n]).expect("in range");
        off += n;
    }
    shm.size() as u64
}

fn bandwidth(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    let w = "shm.bw";
    if !opts.wants(w) {
        return;
    }
    let len: usize = opts.pick(256 << 20, 32 << 20);
    let samples = opts.pick(5, 3);
    let gbs = |t: f64| len as f64 / t / 1e9;
    for (imp, populate, overlap) in [
        ("mproc", false, false),
        ("mproc+populate", true, false),
        ("mproc+prefault", false, true),
    ] {
        let mut xs = Vec::new();
        for _ in 0..=samples {
            let t = Instant::now();
            let shm = SharedMemory::builder()
                .size(len)
                .populate(populate)
                .create()
                .expect("create");
            let mut p = Process::new(bw_child, shm.try_clone().expect("clone"));
            p.start().expect("start");
            if overlap {
                // While the child starts and fills the front, fault in the back half
                // on this core: fresh-page faults are the cost, and two cores take
                // them in parallel.
                shm.prefault_range(len / 2, len - len / 2)
                    .expect("in range");
            }
            assert_eq!(p.join().expect("join"), len as u64);
            let mut buf = vec![0u8; CHUNK];
            let mut sum = 0u64;
            let mut off = 0;
            while off < len {
                let n = CHUNK.min(len - off);
                shm.read(off, &mut buf[..n]).expect("in range");
                sum = sum.wrapping_add(u64::from(black_box(&buf)[n - 1]));
                off += n;
            }
            black_box(sum);
            shm.unlink().expect("unlink");
            drop(shm);
            xs.push(gbs(t.elapsed().as_secs_f64()));
        }
        xs.remove(0); // warm-up (starts the fork server and the tracker)
        emit(Record::from_samples(w, imp, "GB/s", &xs));
    }
    for (imp, populate) in [("raw", false), ("raw+populate", true)] {
        let mut xs = Vec::new();
        for _ in 0..=samples {
            let t = Instant::now();
            let mut flags = MapFlags::SHARED;
            if populate {
                flags |= MapFlags::POPULATE;
            }
            // SAFETY: a fresh anonymous shared mapping, unmapped below.
            let p = unsafe {
                rustix::mm::mmap_anonymous(
                    std::ptr::null_mut(),
                    len,
                    ProtFlags::READ | ProtFlags::WRITE,
                    flags,
                )
            }
            .expect("mmap")
            .cast::<u8>();
            // SAFETY: fork; the child only copies into the mapping and `_exit`s.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                write_all(p, len);
                // SAFETY: end the child without running the parent's destructors.
                unsafe { libc::_exit(0) };
            }
            assert!(pid > 0, "fork failed");
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            black_box(read_all(p, len));
            // SAFETY: the mapping made above; the child is gone.
            unsafe { rustix::mm::munmap(p.cast(), len) }.expect("munmap");
            xs.push(gbs(t.elapsed().as_secs_f64()));
        }
        xs.remove(0);
        emit(Record::from_samples(w, imp, "GB/s", &xs));
    }
}

fn locked_incr(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    let w = "value.locked_incr";
    if !opts.wants(w) {
        return;
    }
    let (samples, ops) = (opts.pick(15, 5), opts.pick(20_000_000, 2_000_000));
    let v: Value<f64> = Value::new(0.0).expect("value");
    let mproc = rate(samples, ops, |n| {
        for _ in 0..n {
            *v.lock().expect("lock") += 1.0;
        }
    });
    black_box(v.get().expect("get"));
    emit(Record::from_samples(w, "mproc", "ops/s", &mproc));

    // SAFETY: a fresh anonymous shared page, kept for the rest of the process.
    let page = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            4096,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
        )
    }
    .expect("mmap")
    .cast::<u8>();
    // SAFETY: page-aligned, in bounds, only reached atomically.
    let word = unsafe { AtomicU32::from_ptr(page.cast()) };
    // SAFETY: 8 bytes in, 8-aligned, in bounds.
    let value = unsafe { page.add(8).cast::<f64>() };
    let raw = rate(samples, ops, |n| {
        for _ in 0..n {
            while word
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                std::hint::spin_loop();
            }
            // SAFETY: the lock word excludes other writers; in bounds and aligned.
            unsafe { value.write_volatile(value.read_volatile() + 1.0) };
            if word.swap(0, Ordering::Release) == 2 {
                let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), 1);
            }
        }
    });
    emit(Record::from_samples(w, "raw", "ops/s", &raw));
}

fn raw_incr(opts: &Opts, emit: &mut dyn FnMut(Record)) {
    let w = "rawvalue.incr";
    if !opts.wants(w) {
        return;
    }
    let (samples, ops) = (opts.pick(15, 5), opts.pick(50_000_000, 5_000_000));
    let v: RawValue<f64> = RawValue::new(0.0).expect("raw value");
    let mproc = rate(samples, ops, |n| {
        for _ in 0..n {
            let v = black_box(&v);
            v.set(v.get() + 1.0);
        }
    });
    black_box(v.get());
    emit(Record::from_samples(w, "mproc", "ops/s", &mproc));

    // SAFETY: a fresh anonymous shared page, kept for the rest of the process.
    let page = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            4096,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
        )
    }
    .expect("mmap")
    .cast::<f64>();
    let raw = rate(samples, ops, |n| {
        for _ in 0..n {
            let p = black_box(page);
            // SAFETY: the page is mapped, aligned and only this thread touches it.
            unsafe { p.write_volatile(p.read_volatile() + 1.0) };
        }
    });
    emit(Record::from_samples(w, "raw", "ops/s", &raw));
}

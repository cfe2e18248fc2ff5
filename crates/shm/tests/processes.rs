//! Shared memory between processes started by `mproc_spawn::Process` with the default
//! start method (`cargo xtask test-all` re-runs this file under fork, spawn and
//! forkserver): values and arrays written by children, segments opened by name or
//! received as handles, and the tracker cleaning up after a creator killed by SIGKILL.
//!
//! Every child is a `Process` owned by the test: dropping it (also when an assertion
//! fails) kills and reaps it. Every name a test uses is removed by a `Cleanup` guard.
mod common;

use common::{Cleanup, exists, gone_within};
use mproc_shm::{Array, RawArray, RawValue, SharedMemory, Value};
use mproc_spawn::Process;
use std::time::{Duration, Instant};

fn start<A, R>(f: fn(A) -> R, args: A) -> Process<R>
where
    A: mproc_core::Message + Send + 'static,
    R: mproc_core::Message + 'static,
{
    let mut p = Process::new(f, args);
    p.start().expect("start a child");
    p
}

fn join<R: mproc_core::Message + 'static>(p: &mut Process<R>) -> R {
    match p.join_timeout(Duration::from_secs(120)) {
        Ok(Some(r)) => r,
        Ok(None) => panic!("child did not finish in time"),
        Err(e) => panic!("child failed: {e}"),
    }
}

fn set_and_negate(args: (Value<f64>, Array<i32>)) -> u32 {
    let (v, a) = args;
    *v.lock().unwrap() = 1.25;
    a.lock().unwrap().map_in_place(|x| -x);
    a.len() as u32
}

#[test]
fn child_writes_value_and_array_parent_reads() {
    let v: Value<f64> = Value::new(0.0).unwrap();
    let a: Array<i32> = Array::from_slice(&(0..10).collect::<Vec<_>>()).unwrap();
    let mut p = start(set_and_negate, (v.clone(), a.clone()));
    assert_eq!(join(&mut p), 10);
    assert_eq!(v.get().unwrap(), 1.25);
    assert_eq!(a.to_vec().unwrap(), (0..10).map(|x| -x).collect::<Vec<_>>());
}

fn add_many(args: (Value<u64>, RawValue<u64>, u32)) -> u32 {
    let (v, raw, n) = args;
    for _ in 0..n {
        *v.lock().unwrap() += 1;
        raw.set(raw.get() + 1); // unlocked, as a contrast: no assertion on it
    }
    n
}

#[test]
fn locked_value_counts_exactly_across_processes() {
    let v: Value<u64> = Value::new(0).unwrap();
    let raw = RawValue::new(0u64).unwrap();
    let mut ps: Vec<_> = (0..2)
        .map(|_| start(add_many, (v.clone(), raw.clone(), 20_000)))
        .collect();
    for p in &mut ps {
        assert_eq!(join(p), 20_000);
    }
    assert_eq!(v.get().unwrap(), 40_000);
    assert!(raw.get() <= 40_000);
}

fn open_and_sum(name: String) -> i64 {
    let shm = SharedMemory::open(&name).expect("open by name in the child");
    assert!(!shm.is_creator());
    let sum = shm.view_all::<i64>().iter().sum();
    shm.write_at(0, -1i64).unwrap();
    sum
}

#[test]
fn child_opens_by_name() {
    let mut c = Cleanup::default();
    let name = c.name("byname");
    let shm = SharedMemory::create_named(&name, 8 * 1000).unwrap();
    shm.view::<i64>(0, 1000)
        .unwrap()
        .write_from(0, &(0..1000).collect::<Vec<i64>>())
        .unwrap();
    let mut p = start(open_and_sum, name.clone());
    assert_eq!(join(&mut p), 499_500);
    assert_eq!(shm.read_at::<i64>(0).unwrap(), -1);
    // The child opened it and exited: the segment is still there.
    assert!(exists(&name));
    shm.unlink().unwrap();
}

fn fill_received(shm: SharedMemory) -> (String, bool) {
    shm.fill(0, shm.size(), 0x5a).unwrap();
    (shm.name().to_owned(), shm.is_creator())
}

#[test]
fn segment_handle_crosses_as_a_non_owner() {
    let mut c = Cleanup::default();
    let name = c.name("handle");
    let shm = SharedMemory::create_named(&name, 1 << 16).unwrap();
    let mut p = start(fill_received, shm.try_clone().unwrap());
    let (seen, creator) = join(&mut p);
    assert_eq!(seen, name);
    assert!(!creator, "a received handle must not own the segment");
    assert!(shm.to_vec().iter().all(|&b| b == 0x5a));
    std::thread::sleep(Duration::from_millis(200));
    assert!(exists(&name), "the child unlinked what it did not create");
    shm.unlink().unwrap();
}

fn open_missing(name: String) -> String {
    match SharedMemory::open(&name) {
        Err(e) => e.to_string(),
        Ok(_) => "opened".into(),
    }
}

#[test]
fn child_sees_typed_error_for_missing_name() {
    let mut c = Cleanup::default();
    let name = c.name("missing");
    let mut p = start(open_missing, name.clone());
    let msg = join(&mut p);
    assert!(msg.contains("no shared memory segment"), "{msg}");
}

/// Creates a segment, reports its name through `out` (length in `len`), then waits to
/// be killed.
fn create_and_wait(args: (RawArray<u8>, RawValue<u32>, String)) -> u32 {
    let (out, len, name) = args;
    let shm = SharedMemory::create_named(&name, 4096).expect("child create");
    out.write_from(0, shm.name().as_bytes()).unwrap();
    len.set(shm.name().len() as u32);
    loop {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn reported(out: &RawArray<u8>, len: &RawValue<u32>) -> String {
    let end = Instant::now() + Duration::from_secs(60);
    while len.get() == 0 {
        assert!(Instant::now() < end, "the child never reported its segment");
        std::thread::sleep(Duration::from_millis(2));
    }
    String::from_utf8(out.to_vec()[..len.get() as usize].to_vec()).unwrap()
}

#[test]
fn creator_killed_by_sigkill_segment_is_gone_within_a_second() {
    let mut c = Cleanup::default();
    let name = c.name("killed");
    let out = RawArray::<u8>::zeroed(256).unwrap();
    let len = RawValue::new(0u32).unwrap();
    let mut p = start(create_and_wait, (out.clone(), len.clone(), name.clone()));
    assert_eq!(reported(&out, &len), name);
    assert!(exists(&name));
    p.kill().unwrap();
    let _ = p.join_timeout(Duration::from_secs(30));
    let t = Instant::now();
    assert!(
        gone_within(&name, Duration::from_secs(2)),
        "{name} outlived its SIGKILLed creator"
    );
    eprintln!("segment gone {:?} after the creator's death", t.elapsed());
}

fn create_and_return(name: String) -> bool {
    let shm = SharedMemory::create_named(&name, 4096).unwrap();
    shm.is_creator()
}

#[test]
fn child_creator_exiting_cleans_up_while_parent_lives() {
    let mut c = Cleanup::default();
    let name = c.name("childexit");
    let mut p = start(create_and_return, name.clone());
    assert!(join(&mut p));
    assert!(
        gone_within(&name, Duration::from_secs(2)),
        "the child's segment outlived it"
    );
}

fn hold_lock_forever(args: (Value<u64>, RawValue<u32>)) -> u32 {
    let (v, ready) = args;
    let _held = v.lock().unwrap(); // held until the process is killed
    v.raw().set(7);
    ready.set(1);
    loop {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn holder_killed_while_locked_is_reported_then_lock_is_clean() {
    let v: Value<u64> = Value::new(0).unwrap();
    let ready = RawValue::new(0u32).unwrap();
    let mut p = start(hold_lock_forever, (v.clone(), ready.clone()));
    let end = Instant::now() + Duration::from_secs(60);
    while ready.get() == 0 {
        assert!(Instant::now() < end, "the child never took the lock");
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = p.pid().expect("started") as u32;
    p.kill().unwrap();
    let _ = p.join_timeout(Duration::from_secs(30));
    // The report carries the guard: the survivor holds the lock and repairs the value.
    match v.lock() {
        Err(e) => {
            assert_eq!(e.pid, pid);
            let mut g = e.into_inner();
            assert_eq!(*g, 7);
            *g = 10; // repaired under the lock
        }
        Ok(_) => panic!("a dead holder must be reported"),
    }
    // Reported once; the repair was written back and the lock released.
    assert_eq!(*v.lock().unwrap(), 10);
    *v.lock().unwrap() = 7;
    *v.lock().unwrap() += 1;
    assert_eq!(v.get().unwrap(), 8);
}

fn panic_in_value_guard(v: Value<u64>) -> u32 {
    let mut g = v.lock().unwrap();
    *g = 41;
    panic!("a holder that panics with the value's guard");
}

#[test]
fn a_value_guard_dropped_by_a_panic_reports_the_holder_with_the_guard() {
    let v: Value<u64> = Value::new(1).unwrap();
    let mut p = start(panic_in_value_guard, v.clone());
    assert!(
        p.join_timeout(Duration::from_secs(120)).is_err(),
        "the child panics"
    );
    let pid = p.pid().expect("started") as u32;
    let t0 = Instant::now();
    match v.lock() {
        Err(e) => {
            assert_eq!(e.pid, pid);
            let mut g = e.into_inner();
            assert_eq!(
                *g, 41,
                "the guard's change was written back before the release"
            );
            *g = 1;
        }
        Ok(_) => panic!("a panicking holder must be reported, as std's poisoning"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(v.get().unwrap(), 1);
    // The one-shot calls report once and release.
    let mut p = start(panic_in_value_guard, v.clone());
    assert!(p.join_timeout(Duration::from_secs(120)).is_err());
    assert!(v.get().is_err());
    assert_eq!(v.get().unwrap(), 41);
}

// ------------------------------------------------- create-or-open, owner scope (#15)

fn create_or_open_and_mark(args: (String, mproc_sync::Barrier, u32)) -> bool {
    let (name, start, i) = args;
    let _ = start.wait(); // all at once: they race to create
    let shm = SharedMemory::create_or_open(&name, 4096).expect("create or open");
    shm.atomic::<std::sync::atomic::AtomicU64>(8 * i as usize)
        .unwrap()
        .store(u64::from(i) + 1, std::sync::atomic::Ordering::SeqCst);
    let _ = start.wait(); // every mark is written
    let _ = start.wait(); // nobody leaves (and unlinks through its tracker) early
    shm.is_creator()
}

#[test]
fn create_or_open_racing_processes_make_exactly_one_segment() {
    let mut c = Cleanup::default();
    let name = c.name("create_or_open");
    const N: u32 = 4;
    let start_line = mproc_sync::Barrier::new(N + 1).unwrap();
    let mut ps: Vec<_> = (0..N)
        .map(|i| {
            start(
                create_or_open_and_mark,
                (name.clone(), start_line.clone(), i),
            )
        })
        .collect();
    start_line.wait().unwrap();
    start_line.wait().unwrap();
    // Everyone has written; read the marks through our own attachment.
    let mine = SharedMemory::create_or_open(&name, 4096).unwrap();
    assert!(!mine.is_creator(), "a child created it");
    for i in 0..N {
        let v = mine.read_at::<u64>(8 * i as usize).unwrap();
        assert_eq!(v, u64::from(i) + 1, "child {i} wrote into another segment");
    }
    // A size other than the segment's is refused, not silently attached.
    assert!(matches!(
        SharedMemory::create_or_open(&name, 8192),
        Err(mproc_shm::CreateOrOpenError::Open(
            mproc_shm::OpenError::SizeMismatch { .. }
        ))
    ));
    start_line.wait().unwrap();
    let creators = ps.iter_mut().map(join).filter(|&c| c).count();
    assert_eq!(creators, 1, "exactly one process creates the segment");
}

fn write_through_name(args: (String, u64)) -> u64 {
    let shm = SharedMemory::open(&args.0).expect("attach by name");
    shm.write_at(0, args.1).unwrap();
    args.1
}

#[test]
fn shared_memory_manager_unlinks_everything_it_created_when_it_ends() {
    let mut c = Cleanup::default();
    let smm = mproc_shm::SegmentScope::new();
    let shm = smm.shared_memory(4096).unwrap();
    let list = smm
        .shareable_list(&[mproc_shm::Item::Int(1), "two".into()])
        .unwrap();
    let (a, b) = (shm.name().to_owned(), list.name().to_owned());
    c.add(&a);
    c.add(&b);
    // Another process attaches by name while the manager lives.
    let mut p = start(write_through_name, (a.clone(), 77u64));
    assert_eq!(join(&mut p), 77);
    assert_eq!(shm.read_at::<u64>(0).unwrap(), 77);
    assert!(exists(&a) && exists(&b));
    assert_eq!(smm.names().len(), 2);
    drop(smm);
    assert!(
        !exists(&a) && !exists(&b),
        "the manager's end unlinks its segments"
    );
    // The handles stay usable; only the names are gone.
    shm.write_at(8, 5u64).unwrap();
    assert_eq!(shm.read_at::<u64>(8).unwrap(), 5);
    assert_eq!(list.get(0).unwrap(), mproc_shm::Item::Int(1));
    let mut p = start(write_through_name, (a.clone(), 1u64));
    assert!(
        p.join_timeout(Duration::from_secs(120)).is_err(),
        "nobody can attach any more"
    );
}

// --------------------------------------------- copies beside atomic views (#11 item 4)

fn flip_words(args: (SharedMemory, u32)) -> u32 {
    let (shm, rounds) = args;
    // Unaligned start: the copy's head, its 8-byte middle and its tail all run.
    let mut ones = vec![0xFFu8; 4093];
    for r in 0..rounds {
        ones.fill(if r % 2 == 0 { 0xFF } else { 0 });
        shm.write(3, &ones).unwrap();
    }
    rounds
}

#[test]
fn byte_copies_racing_atomic_views_never_tear_an_aligned_word() {
    let shm = SharedMemory::create(4096).unwrap();
    let mut p = start(flip_words, (shm.try_clone().unwrap(), 2_000));
    let words = shm.atomics::<std::sync::atomic::AtomicU64>(8, 500).unwrap();
    let mut seen = 0u64;
    while p.exitcode().is_none() {
        for w in words {
            let v = w.load(std::sync::atomic::Ordering::Relaxed);
            assert!(v == 0 || v == u64::MAX, "torn word {v:#x}");
            seen += 1;
        }
    }
    assert_eq!(join(&mut p), 2_000);
    assert!(seen > 0);
    shm.unlink().unwrap();
}

fn add_through_synchronized(args: (Value<u64>, RawValue<u64>, RawArray<i32>, u32)) -> u32 {
    let (v, copy, array_copy, n) = args;
    for _ in 0..n {
        *v.lock().unwrap() += 1;
    }
    copy.set(99);
    array_copy.fill(-1);
    n
}

#[test]
fn copies_are_independent_and_synchronized_raw_values_count_exactly() {
    // Python: c = sharedctypes.copy(raw); v = sharedctypes.synchronized(raw)
    let raw = RawValue::new(5u64).unwrap();
    let copy = raw.copy().unwrap();
    let array = RawArray::from_slice(&[1i32, 2, 3]).unwrap();
    let array_copy = array.copy().unwrap();
    let v: Value<u64> = Value::from_raw(raw.clone()).unwrap();
    let mut a = start(
        add_through_synchronized,
        (v.clone(), copy.clone(), array_copy.clone(), 500),
    );
    let mut b = start(
        add_through_synchronized,
        (v.clone(), copy.clone(), array_copy.clone(), 500),
    );
    assert_eq!(join(&mut a) + join(&mut b), 1000);
    // Every increment went through the one lock, and reached the raw memory.
    assert_eq!(raw.get(), 1005);
    assert_eq!(v.get().unwrap(), 1005);
    // The copies were written by the children; the originals were not.
    assert_eq!(copy.get(), 99);
    assert_eq!(array_copy.to_vec(), [-1, -1, -1]);
    assert_eq!(array.to_vec(), [1, 2, 3]);
    // A synchronized array over an existing raw one, with a lock given by the caller.
    let lock = mproc_sync::Lock::new().unwrap();
    let arr: Array<i32> = Array::from_raw_with_lock(array.clone(), lock.clone());
    lock.acquire().unwrap();
    assert!(
        arr.get_lock().try_acquire().is_ok_and(|got| !got),
        "same lock"
    );
    lock.release().unwrap();
    arr.set(0, 7).unwrap();
    assert_eq!(array.get(0).unwrap(), 7);
}

#[test]
fn copy_of_a_large_array_crosses_its_pieces() {
    let n = 200_000; // more than one copy piece
    let items: Vec<u32> = (0..n).collect();
    let a = RawArray::from_slice(&items).unwrap();
    let c = a.copy().unwrap();
    assert_eq!(c.len(), a.len());
    assert_eq!(c.to_vec(), items);
    assert_eq!(RawArray::<u8>::zeroed(0).unwrap().copy().unwrap().len(), 0);
}

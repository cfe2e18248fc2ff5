//! Queue behaviour within one process (threads) and across `fork`: ports of CPython's
//! `test_multiprocessing` Queue cases (timeouts, FIFO, no loss under contention), plus
//! large messages, handles inside messages, corrupt slots and dead slot holders.
use mproc_channel::{GetError, JoinableQueue, PutError, Queue, SimpleQueue};
use mproc_core::{Region, codec};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A forked child, killed and reaped on drop if the test did not wait for it.
struct Child(libc::pid_t);

impl Child {
    fn wait(mut self) -> i32 {
        let pid = std::mem::replace(&mut self.0, 0);
        wait_pid(pid)
    }
}

fn wait_pid(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINTR)
        );
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: signalling and reaping our own child.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
            wait_pid(self.0);
        }
    }
}

/// Runs `f` in a forked child whose exit status is `f`'s result (101 on panic).
fn fork(f: impl FnOnce() -> i32) -> Child {
    // SAFETY: the child only runs `f` (queue operations: atomics, futexes, memcpy,
    // malloc, which glibc makes fork-safe) and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: leave the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    Child(pid)
}

type Msg = (u32, Option<u8>, String);

#[test]
fn put_get_in_place_and_owned() {
    let q: Queue<Msg> = Queue::new().unwrap();
    q.put((42, None, "hello".into())).unwrap();
    {
        let m = q.get_ref().unwrap();
        assert_eq!(m.0, 42);
        assert!(m.1.is_none());
        assert_eq!(m.2.as_str(), "hello");
    }
    q.put((7, Some(3), "x".repeat(100))).unwrap();
    assert_eq!(q.get().unwrap(), (7, Some(3), "x".repeat(100)));
    assert!(matches!(q.try_get(), Err(GetError::Empty)));
    assert!(q.is_empty());
}

#[test]
fn get_timeout_on_empty_waits_at_least_the_timeout() {
    let q: Queue<u64> = Queue::new().unwrap();
    let t = Instant::now();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(100)),
        Err(GetError::Empty)
    ));
    assert!(t.elapsed() >= Duration::from_millis(100));
}

#[test]
fn bounded_queue_is_full_at_maxsize() {
    let q: Queue<u64> = Queue::with_maxsize(3).unwrap();
    assert_eq!(q.maxsize(), 3);
    for i in 0..3 {
        q.try_put(i).unwrap();
    }
    assert!(q.is_full());
    match q.try_put(99) {
        Err(PutError::Full(v)) => assert_eq!(v, 99),
        other => panic!("expected Full, got {other:?}"),
    }
    let t = Instant::now();
    assert!(
        q.put_timeout(5, Duration::from_millis(50))
            .unwrap_err()
            .is_full()
    );
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert_eq!(q.qsize(), 3);
    for i in 0..3 {
        assert_eq!(q.get().unwrap(), i);
    }
    // Wraps around many times.
    for i in 0..1000u64 {
        q.put(i).unwrap();
        assert_eq!(q.get().unwrap(), i);
    }
}

#[test]
fn blocked_put_wakes_when_a_consumer_takes() {
    let q: Queue<u64> = Queue::with_maxsize(1).unwrap();
    q.put(1).unwrap();
    let q2 = q.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        q2.get().unwrap()
    });
    q.put(2).unwrap(); // blocks until the thread takes 1
    assert_eq!(t.join().unwrap(), 1);
    assert_eq!(q.get().unwrap(), 2);
}

#[test]
fn close_drains_then_reports_closed() {
    let q: Queue<u64> = Queue::new().unwrap();
    q.put(1).unwrap();
    let q2 = q.clone();
    let waiter = std::thread::spawn(move || {
        let a = q2.get();
        let b = q2.get(); // blocks until close
        (a.unwrap(), matches!(b, Err(GetError::Closed)))
    });
    std::thread::sleep(Duration::from_millis(50));
    q.close();
    assert_eq!(waiter.join().unwrap(), (1, true));
    assert!(matches!(q.put(3), Err(PutError::Closed(3))));
    assert!(q.is_closed());
}

fn check_all_arrived(got: Vec<(u32, u32)>, producers: u32, per: u32) {
    assert_eq!(got.len(), (producers * per) as usize, "lost messages");
    let set: HashSet<_> = got.iter().copied().collect();
    assert_eq!(set.len(), got.len(), "duplicated messages");
}

#[test]
fn threads_many_producers_two_consumers_lose_nothing() {
    let (producers, per) = (4u32, 20_000u32);
    let q: Queue<(u32, u32)> = Queue::with_maxsize(64).unwrap();
    let prods: Vec<_> = (0..producers)
        .map(|p| {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    q.put((p, i)).unwrap();
                }
            })
        })
        .collect();
    let cons: Vec<_> = (0..2)
        .map(|_| {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut last = vec![None::<u32>; producers as usize];
                loop {
                    match q.get() {
                        Ok((p, i)) => {
                            // FIFO per producer, as seen by each consumer.
                            if let Some(prev) = last[p as usize] {
                                assert!(i > prev, "out of order");
                            }
                            last[p as usize] = Some(i);
                            got.push((p, i));
                        }
                        Err(GetError::Closed) => return got,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for p in prods {
        p.join().unwrap();
    }
    q.close();
    let mut all = Vec::new();
    for c in cons {
        all.extend(c.join().unwrap());
    }
    check_all_arrived(all, producers, per);
}

#[test]
fn large_message_in_its_own_region() {
    let q: Queue<Vec<u8>> = Queue::new().unwrap();
    let big: Vec<u8> = (0..16 << 20)
        .map(|i: u32| (i * 7 + i / 4096) as u8)
        .collect();
    q.put(big.clone()).unwrap();
    q.put(vec![1, 2, 3]).unwrap();
    {
        let r = q.get_ref().unwrap();
        assert_eq!(r.len(), big.len());
        assert!(r.as_slice() == big.as_slice());
    }
    assert_eq!(q.get().unwrap(), vec![1, 2, 3]);
    q.put(big.clone()).unwrap();
    assert!(q.get().unwrap() == big);
}

#[test]
fn handles_inside_messages() {
    let q: Queue<(String, Region)> = Queue::new().unwrap();
    let r = Region::new(4096).unwrap();
    r.atomic_u32(0).unwrap().store(77, Ordering::Relaxed);
    q.put(("region".into(), r)).unwrap();
    q.put(("region2".into(), Region::new(4096).unwrap()))
        .unwrap();
    let (name, r2) = q.get().unwrap();
    assert_eq!(name, "region");
    assert_eq!(r2.atomic_u32(0).unwrap().load(Ordering::Relaxed), 77);
    // In place: the handle can be looked at, then rebuilt.
    let m = q.get_ref().unwrap();
    assert_eq!(m.0.as_str(), "region2");
    let (_, r3) = m.deserialize().unwrap();
    assert_eq!(r3.len(), 4096);
}

#[test]
fn queue_travels_as_a_handle() {
    let q: Queue<u32> = Queue::new().unwrap();
    let enc = codec::encode(&(5u8, q.clone())).unwrap();
    let (_, q2): (u8, Queue<u32>) = codec::decode(&enc.bytes, enc.fds).unwrap();
    q2.put(11).unwrap();
    assert_eq!(q.get().unwrap(), 11);
    let jq: JoinableQueue<u32> = JoinableQueue::new().unwrap();
    let enc = codec::encode(&jq).unwrap();
    let jq2: JoinableQueue<u32> = codec::decode(&enc.bytes, enc.fds).unwrap();
    jq2.put(1).unwrap();
    assert_eq!(jq.unfinished_tasks(), 1);
    // A handle of one kind is refused as another.
    let enc = codec::encode(&jq).unwrap();
    assert!(codec::decode::<SimpleQueue<u32>>(&enc.bytes, enc.fds).is_err());
}

#[test]
fn joinable_queue_task_done_and_join() {
    let q: JoinableQueue<u32> = JoinableQueue::new().unwrap();
    assert!(q.task_done().is_err());
    for i in 0..10 {
        q.put(i).unwrap();
    }
    assert!(!q.join_timeout(Duration::from_millis(20)));
    let worker = {
        let q = q.clone();
        std::thread::spawn(move || {
            for _ in 0..10 {
                q.get().unwrap();
                std::thread::sleep(Duration::from_millis(2));
                q.task_done().unwrap();
            }
        })
    };
    q.join();
    assert_eq!(q.unfinished_tasks(), 0);
    worker.join().unwrap();
    assert!(q.task_done().is_err());
    // Every put form counts.
    q.put_ref(&1).unwrap();
    q.put_in_place(&2).unwrap();
    q.put_ref_timeout(&3, Duration::from_secs(1)).unwrap();
    q.try_put(4).unwrap();
    q.put_timeout(5, Duration::from_secs(1)).unwrap();
    assert_eq!(q.unfinished_tasks(), 5);
}

#[test]
fn simple_queue() {
    let q: SimpleQueue<String> = SimpleQueue::new().unwrap();
    assert!(q.is_empty());
    q.put("a".into()).unwrap();
    assert!(!q.is_empty());
    assert_eq!(q.get().unwrap(), "a");
}

/// Offsets of the ring layout (queue/ring.rs), to corrupt slots on purpose.
const HEADER: usize = 384;
const SLOT_HEADER: usize = 32;
const STRIDE_DEFAULT: usize = 256;
const ENQ: usize = 64;

fn ring_region<T: rkyv::Archive>(q: &Queue<T>) -> Region {
    let enc = codec::encode(q).unwrap();
    Region::from_fd(enc.fds.into_iter().next().unwrap()).unwrap()
}

#[test]
fn corrupt_slot_bytes_give_an_error_and_the_queue_goes_on() {
    let q: Queue<(u32, String)> = Queue::new().unwrap();
    let raw = ring_region(&q);
    // 1. Invalid UTF-8 where the text lies (rkyv writes it before the root).
    q.put((1, "hello world, out of line".into())).unwrap();
    raw.write_bytes(HEADER + SLOT_HEADER, &[0xff; 4]).unwrap();
    let r = q.get();
    assert!(matches!(r, Err(GetError::Corrupt(_))), "{r:?}");
    // 2. Unknown kind word.
    q.put((2, "x".into())).unwrap();
    raw.write_bytes(HEADER + STRIDE_DEFAULT + 8, &[0xee; 4])
        .unwrap();
    assert!(matches!(q.get_ref(), Err(GetError::Corrupt(_))));
    // 3. Length beyond the slot.
    q.put((3, "y".into())).unwrap();
    raw.write_bytes(HEADER + 2 * STRIDE_DEFAULT + 16, &u64::MAX.to_le_bytes())
        .unwrap();
    assert!(matches!(q.get(), Err(GetError::Corrupt(_))));
    // 4. Every byte of a payload overwritten in turn: never a crash.
    for i in 0..48 {
        q.put((4, "some text".into())).unwrap();
        let slot = (3 + i) % mproc_channel::DEFAULT_CAPACITY;
        raw.write_bytes(
            HEADER + slot * STRIDE_DEFAULT + SLOT_HEADER + i % 32,
            &[0x99],
        )
        .unwrap();
        let _ = q.get();
    }
    // Still usable.
    q.put((5, "fine".into())).unwrap();
    assert_eq!(q.get().unwrap(), (5, "fine".to_string()));
}

#[test]
fn dead_producer_slot_is_skipped() {
    let q: Queue<u64> = Queue::new().unwrap();
    let raw = ring_region(&q);
    let dead = fork(|| 0);
    let pid = dead.0 as u64;
    dead.wait();
    // Pretend that process claimed position 0 and died before publishing it.
    raw.atomic_u64(HEADER).unwrap().store(pid, Ordering::SeqCst);
    raw.atomic_u64(ENQ).unwrap().store(1, Ordering::SeqCst);
    q.put(9).unwrap();
    let t = Instant::now();
    assert_eq!(q.get_timeout(Duration::from_secs(10)).unwrap(), 9);
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn fork_child_puts_parent_gets() {
    let q: Queue<Msg> = Queue::new().unwrap();
    let child = {
        let q = q.clone();
        fork(move || {
            q.put((42, None, "hello".into())).unwrap();
            q.put((43, Some(1), "x".repeat(1000))).unwrap(); // larger than a slot
            0
        })
    };
    assert_eq!(child.wait(), 0); // exited: its messages are still there
    assert_eq!(q.get().unwrap(), (42, None, "hello".into()));
    assert_eq!(q.get().unwrap(), (43, Some(1), "x".repeat(1000)));
}

#[test]
fn fork_four_producers_two_consumers_lose_and_duplicate_nothing() {
    let (producers, per) = (4u32, 50_000u32);
    let q: Queue<(u32, u32)> = Queue::with_maxsize(1024).unwrap();
    let results: Queue<Vec<(u32, u32)>> = Queue::builder().slot_size(64).build().unwrap();
    let mut children = Vec::new();
    for p in 0..producers {
        let q = q.clone();
        children.push(fork(move || {
            for i in 0..per {
                q.put((p, i)).unwrap();
            }
            0
        }));
    }
    for _ in 0..2 {
        let (q, results) = (q.clone(), results.clone());
        children.push(fork(move || {
            let mut got = Vec::new();
            let mut last = [None::<u32>; 4];
            loop {
                match q.get() {
                    Ok((p, i)) => {
                        if last[p as usize].is_some_and(|prev| i <= prev) {
                            return 3; // out of order
                        }
                        last[p as usize] = Some(i);
                        got.push((p, i));
                    }
                    Err(GetError::Closed) => break,
                    Err(_) => return 2,
                }
            }
            results.put(got).unwrap();
            0
        }));
    }
    let consumers = children.split_off(producers as usize);
    for c in children {
        assert_eq!(c.wait(), 0);
    }
    q.close();
    let mut all = Vec::new();
    for _ in 0..2 {
        all.extend(results.get_timeout(Duration::from_secs(60)).unwrap());
    }
    for c in consumers {
        assert_eq!(c.wait(), 0);
    }
    check_all_arrived(all, producers, per);
}

#[test]
fn consumer_killed_while_holding_a_slot_does_not_wedge() {
    let q: Queue<u64> = Queue::with_maxsize(2).unwrap();
    let ready: Queue<u32> = Queue::new().unwrap();
    q.put(1).unwrap();
    let holder = {
        let (q, ready) = (q.clone(), ready.clone());
        fork(move || {
            let _guard = q.get_ref().unwrap(); // holds slot 0
            ready.put(1).unwrap();
            std::thread::sleep(Duration::from_secs(600));
            0
        })
    };
    ready.get_timeout(Duration::from_secs(30)).unwrap();
    // SAFETY: killing our own child.
    unsafe { libc::kill(holder.0, libc::SIGKILL) };
    assert_eq!(holder.wait(), -libc::SIGKILL);
    // Slot 1 is free; the next put needs slot 0, which the dead child held.
    q.put(2).unwrap();
    let t = Instant::now();
    q.put_timeout(3, Duration::from_secs(10)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(q.get().unwrap(), 2);
    assert_eq!(q.get().unwrap(), 3);
}

#[test]
fn put_in_place_serialises_into_the_slot_or_falls_back() {
    let q: Queue<Vec<u8>> = Queue::builder().slot_size(4096).build().unwrap();
    q.put_in_place(&vec![5u8; 4000]).unwrap(); // fits
    q.put_in_place(&vec![6u8; 100_000]).unwrap(); // does not: own region
    q.put_in_place(&vec![7u8; 10]).unwrap();
    assert_eq!(q.get().unwrap(), vec![5u8; 4000]);
    assert_eq!(q.get().unwrap(), vec![6u8; 100_000]);
    assert_eq!(q.get_ref().unwrap().as_slice(), &[7u8; 10]);
    // Handles need the fd table: falls back too.
    let h: Queue<(u8, Region)> = Queue::new().unwrap();
    h.put_in_place(&(1, Region::new(4096).unwrap())).unwrap();
    let (one, r) = h.get().unwrap();
    assert_eq!((one, r.len()), (1, 4096));
    assert!(h.try_get().is_err());
}

#[test]
fn unchecked_in_place_receive() {
    let q: Queue<(u32, String)> = Queue::new().unwrap();
    q.put((9, "trusted".into())).unwrap();
    // SAFETY: only this test puts into `q`, with this crate's `put` and the same type.
    let m = unsafe { q.get_ref_unchecked(Some(Duration::from_secs(5))) }.unwrap();
    assert_eq!(m.0, 9);
    assert_eq!(m.1.as_str(), "trusted");
    drop(m);
    // SAFETY: as above.
    let r = unsafe { q.get_ref_unchecked(Some(Duration::from_millis(10))) };
    assert!(matches!(r, Err(GetError::Empty)));
}

/// Byte offsets of the robust locks that keep fd-carrying messages in ring order.
const PROD_LOCK: usize = 36;
const CONS_LOCK: usize = 40;

#[test]
fn dead_holders_of_the_fd_locks_are_taken_over() {
    // Bounded, so that a put that cannot take the lock in time reports Full (an
    // unbounded queue would keep the message in this process instead).
    let q: Queue<(u8, Region)> = Queue::with_maxsize(16).unwrap();
    let raw = ring_region(&q);
    let dead = fork(|| 0);
    let pid = dead.0 as u32;
    dead.wait();
    // A producer and a consumer of fd-carrying messages died holding the locks.
    raw.atomic_u32(PROD_LOCK)
        .unwrap()
        .store(pid, Ordering::SeqCst);
    raw.atomic_u32(CONS_LOCK)
        .unwrap()
        .store(pid, Ordering::SeqCst);
    let t = Instant::now();
    q.put_timeout((1, Region::new(4096).unwrap()), Duration::from_secs(10))
        .unwrap();
    let (one, r) = q.get_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((one, r.len()), (1, 4096));
    assert!(t.elapsed() < Duration::from_secs(5));
    // A live holder is waited for, up to the timeout.
    raw.atomic_u32(PROD_LOCK)
        .unwrap()
        .store(std::process::id(), Ordering::SeqCst);
    let t = Instant::now();
    let r = q.put_timeout((2, Region::new(4096).unwrap()), Duration::from_millis(120));
    assert!(r.unwrap_err().is_full());
    assert!(t.elapsed() >= Duration::from_millis(120));
}

#[test]
fn unbounded_queue_spills_instead_of_blocking_and_keeps_order() {
    let q: Queue<u64> = Queue::new().unwrap();
    let n = mproc_channel::DEFAULT_CAPACITY as u64 + 5_000;
    for i in 0..n {
        q.try_put(i).unwrap(); // never Full: Python's unbounded Queue
    }
    assert!(q.spilled() > 0);
    // More while some wait in this process: still in order behind them.
    q.put_in_place(&n).unwrap();
    q.put(n + 1).unwrap();
    for i in 0..n + 2 {
        assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), i);
    }
    q.join_thread();
    assert_eq!(q.spilled(), 0);
    assert!(q.try_get().is_err());
}

/// A fork child that uses a handle copied by `fork` (captured, not passed as an
/// argument) has no feeder thread: its puts wait for room instead of spilling.
#[test]
fn a_fork_copy_of_an_unbounded_queue_waits_for_room() {
    let q: Queue<u64> = Queue::new().unwrap();
    let n = mproc_channel::DEFAULT_CAPACITY as u64 + 3_000;
    let child = {
        let q = q.clone();
        fork(move || {
            for i in 0..n {
                q.put(i).unwrap();
            }
            0
        })
    };
    for i in 0..n {
        assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), i);
    }
    assert_eq!(child.wait(), 0);
}

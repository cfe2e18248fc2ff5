//! Every primitive between threads of one process (behaviours ported from CPython's
//! `test_threading` / `_test_multiprocessing` lock, condition, event and barrier tests).
use mproc_sync::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn lock_counts_exactly_under_contention() {
    let lock = Lock::new().unwrap();
    let counter = Arc::new(AtomicU32::new(0));
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let (lock, counter) = (lock.clone(), counter.clone());
            thread::spawn(move || {
                for _ in 0..20_000 {
                    let _g = lock.lock().unwrap();
                    // A non-atomic read-modify-write: lost updates show a broken lock.
                    let v = counter.load(Ordering::Relaxed);
                    counter.store(v + 1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(counter.load(Ordering::Relaxed), 80_000);
    assert!(!lock.locked());
}

#[test]
fn lock_python_semantics() {
    let lock = Lock::new().unwrap();
    assert_eq!(lock.release(), Err(ReleaseError::NotLocked));
    lock.acquire().unwrap();
    assert!(lock.locked());
    assert!(!lock.try_acquire().unwrap());
    // Released by another thread: allowed for Lock.
    let l2 = lock.clone();
    thread::spawn(move || l2.release().unwrap()).join().unwrap();
    assert!(!lock.locked());
    assert!(lock.try_acquire().unwrap());
    lock.release().unwrap();
}

#[test]
fn acquire_timeout_on_held_lock_waits_at_least_the_timeout() {
    let lock = Lock::new().unwrap();
    let _g = lock.lock().unwrap();
    let l2 = lock.clone();
    let t = thread::spawn(move || {
        let t0 = Instant::now();
        let got = l2.acquire_timeout(Duration::from_millis(100)).unwrap();
        (got, t0.elapsed())
    });
    let (got, took) = t.join().unwrap();
    assert!(!got);
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(matches!(
        lock.lock_timeout(Duration::from_millis(1)),
        Err(TryLockError::WouldBlock)
    ));
}

#[test]
fn blocked_waiter_gets_the_lock_when_released() {
    let lock = Lock::new().unwrap();
    let g = lock.lock().unwrap();
    let l2 = lock.clone();
    let t = thread::spawn(move || {
        let t0 = Instant::now();
        l2.acquire().unwrap();
        l2.release().unwrap();
        t0.elapsed()
    });
    thread::sleep(Duration::from_millis(50));
    drop(g);
    let waited = t.join().unwrap();
    assert!(waited >= Duration::from_millis(40));
    assert!(waited < Duration::from_secs(10));
}

#[test]
fn rlock_recursion_and_ownership() {
    let r = RLock::new().unwrap();
    assert_eq!(r.release(), Err(RLockReleaseError::NotOwner));
    r.acquire().unwrap();
    r.acquire().unwrap();
    assert_eq!(r.recursion_count(), 2);
    let r2 = r.clone();
    let other = thread::spawn(move || {
        (
            r2.try_acquire().unwrap(),
            r2.release(),
            r2.recursion_count(),
        )
    })
    .join()
    .unwrap();
    assert_eq!(other, (false, Err(RLockReleaseError::NotOwner), 0));
    r.release().unwrap();
    assert!(r.locked());
    r.release().unwrap();
    assert!(!r.locked());
    // Now another thread can take it.
    let r3 = r.clone();
    assert!(
        thread::spawn(move || {
            let ok = r3.try_acquire().unwrap();
            r3.release().unwrap();
            ok
        })
        .join()
        .unwrap()
    );
}

#[test]
fn rlock_excludes_other_threads() {
    let r = RLock::new().unwrap();
    let counter = Arc::new(AtomicU32::new(0));
    let hs: Vec<_> = (0..3)
        .map(|_| {
            let (r, counter) = (r.clone(), counter.clone());
            thread::spawn(move || {
                for _ in 0..5_000 {
                    let _a = r.lock().unwrap();
                    let _b = r.lock().unwrap();
                    let v = counter.load(Ordering::Relaxed);
                    counter.store(v + 1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(counter.load(Ordering::Relaxed), 15_000);
}

#[test]
fn mutex_counts_exactly() {
    let m = Mutex::new(0u64).unwrap();
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            thread::spawn(move || {
                for _ in 0..10_000 {
                    *m.lock().unwrap() += 1;
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(*m.lock().unwrap(), 40_000);
    let g = m.try_lock().unwrap();
    assert!(matches!(m.try_lock(), Err(TryLockError::WouldBlock)));
    drop(g);
}

#[test]
fn mutex_of_a_pod_struct() {
    #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
    #[repr(C)]
    struct Point {
        x: f64,
        y: f64,
        n: u32,
        _pad: u32,
    }
    let m = Mutex::new(Point {
        x: 1.0,
        y: 2.0,
        n: 0,
        _pad: 0,
    })
    .unwrap();
    {
        let mut p = m.lock().unwrap();
        p.x += 1.5;
        p.n = 7;
    }
    let p = *m.lock().unwrap();
    assert_eq!((p.x, p.y, p.n), (2.5, 2.0, 7));
}

#[test]
fn semaphore_two_then_blocks() {
    let s = Semaphore::new(2).unwrap();
    assert!(s.try_acquire());
    assert!(s.try_acquire());
    assert!(!s.try_acquire());
    assert_eq!(s.get_value(), 0);
    let t0 = Instant::now();
    assert!(!s.acquire_timeout(Duration::from_millis(50)));
    assert!(t0.elapsed() >= Duration::from_millis(50));
    let s2 = s.clone();
    let t = thread::spawn(move || {
        s2.acquire();
        true
    });
    thread::sleep(Duration::from_millis(20));
    s.release().unwrap();
    assert!(t.join().unwrap());
    s.release_n(3).unwrap();
    assert_eq!(s.get_value(), 3);
}

#[test]
fn bounded_semaphore_over_release_errors() {
    let s = BoundedSemaphore::new(2).unwrap();
    assert_eq!(s.release(), Err(SemaphoreReleaseError::TooManyReleases));
    assert!(s.try_acquire());
    s.release().unwrap();
    assert_eq!(s.release(), Err(SemaphoreReleaseError::TooManyReleases));
    assert_eq!(s.get_value(), 2);
    {
        let _a = s.permit();
        let _b = s.permit();
        assert_eq!(s.get_value(), 0);
        assert!(!s.try_acquire());
    }
    assert_eq!(s.get_value(), 2);
    let zero = BoundedSemaphore::new(0).unwrap();
    assert!(zero.release().is_err());
}

#[test]
fn event_wait_timeout_then_set() {
    let e = Event::new().unwrap();
    let t0 = Instant::now();
    assert!(!e.wait_timeout(Duration::from_millis(50)));
    assert!(t0.elapsed() >= Duration::from_millis(50));
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let e = e.clone();
            thread::spawn(move || e.wait_timeout(Duration::from_secs(30)))
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    e.set();
    for w in waiters {
        assert!(w.join().unwrap());
    }
    assert!(e.is_set());
    e.clear();
    assert!(!e.is_set());
    assert!(!e.wait_timeout(Duration::from_millis(1)));
}

#[test]
fn event_pingpong_between_threads() {
    let (a, b) = (Event::new().unwrap(), Event::new().unwrap());
    let (a2, b2) = (a.clone(), b.clone());
    let t = thread::spawn(move || {
        for _ in 0..2000 {
            a2.wait();
            a2.clear();
            b2.set();
        }
    });
    for _ in 0..2000 {
        a.set();
        b.wait();
        b.clear();
    }
    t.join().unwrap();
}

fn notify_two_of_five<L: ConditionLock + Send + 'static>(cond: Condition<L>) {
    let woken = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..5)
        .map(|_| {
            let (cond, woken, ready) = (cond.clone(), woken.clone(), ready.clone());
            thread::spawn(move || {
                let _g = cond.lock().unwrap();
                ready.fetch_add(1, Ordering::SeqCst);
                if cond.wait_timeout(Duration::from_secs(60)).unwrap() {
                    woken.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    while cond.n_waiting() < 5 {
        thread::sleep(Duration::from_millis(5));
    }
    {
        let _g = cond.lock().unwrap();
        assert_eq!(cond.notify(2).unwrap(), 2);
    }
    let t0 = Instant::now();
    while woken.load(Ordering::SeqCst) < 2 && t0.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(5));
    }
    // Give a wrongly woken third waiter time to show up.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(woken.load(Ordering::SeqCst), 2);
    {
        let _g = cond.lock().unwrap();
        assert_eq!(cond.notify_all().unwrap(), 3);
    }
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(woken.load(Ordering::SeqCst), 5);
    assert_eq!(ready.load(Ordering::SeqCst), 5);
}

#[test]
fn condition_notify_two_of_five_over_rlock() {
    notify_two_of_five(Condition::new().unwrap());
}

#[test]
fn condition_notify_two_of_five_over_lock() {
    notify_two_of_five(Condition::with_lock(Lock::new().unwrap()).unwrap());
}

#[test]
fn condition_requires_the_lock() {
    let c = Condition::new().unwrap();
    assert_eq!(c.wait(), Err(WaitError::NotOwner));
    assert_eq!(c.notify(1), Err(NotifyError::NotOwner));
    let _g = c.lock().unwrap();
    let _g2 = c.lock().unwrap(); // RLock: recursive
    // wait releases every level and restores them.
    assert_eq!(c.wait_timeout(Duration::from_millis(10)), Ok(false));
    assert_eq!(c.get_lock().recursion_count(), 2);
}

#[test]
fn condition_notify_with_nobody_waiting_is_lost() {
    let c = Condition::new().unwrap();
    let _g = c.lock().unwrap();
    assert_eq!(c.notify(5), Ok(0));
    assert_eq!(c.wait_timeout(Duration::from_millis(20)), Ok(false));
}

#[test]
fn wait_for_has_one_overall_deadline() {
    let c = Condition::new().unwrap();
    let stop = Arc::new(AtomicU32::new(0));
    let (c2, stop2) = (c.clone(), stop.clone());
    // A notifier that keeps notifying without ever making the predicate true.
    let noisy = thread::spawn(move || {
        while stop2.load(Ordering::Relaxed) == 0 {
            {
                let _g = c2.lock().unwrap();
                let _ = c2.notify_all();
            }
            thread::sleep(Duration::from_millis(5));
        }
    });
    let _g = c.lock().unwrap();
    let t0 = Instant::now();
    let r = c
        .wait_for(|| false, Some(Duration::from_millis(300)))
        .unwrap();
    let took = t0.elapsed();
    drop(_g);
    stop.store(1, Ordering::Relaxed);
    noisy.join().unwrap();
    assert!(!r);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn wait_for_sees_the_predicate_become_true() {
    let c = Condition::new().unwrap();
    let value = Mutex::new(0u32).unwrap();
    let (c2, v2) = (c.clone(), value.clone());
    let t = thread::spawn(move || {
        for _ in 0..5 {
            thread::sleep(Duration::from_millis(5));
            let _g = c2.lock().unwrap();
            *v2.lock().unwrap() += 1;
            c2.notify_all().unwrap();
        }
    });
    let _g = c.lock().unwrap();
    let ok = c
        .wait_for(
            || *value.lock().unwrap() >= 5,
            Some(Duration::from_secs(30)),
        )
        .unwrap();
    assert!(ok);
    drop(_g);
    t.join().unwrap();
}

static ACTIONS: AtomicU32 = AtomicU32::new(0);
fn count_action() {
    ACTIONS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn barrier_rounds_indices_and_action() {
    const PARTIES: usize = 4;
    const ROUNDS: usize = 200;
    let b = Barrier::builder(PARTIES as u32)
        .action(count_action)
        .build()
        .unwrap();
    let slots: Arc<Vec<AtomicUsize>> =
        Arc::new((0..PARTIES).map(|_| AtomicUsize::new(0)).collect());
    let seen: Arc<Vec<AtomicUsize>> =
        Arc::new((0..PARTIES * ROUNDS).map(|_| AtomicUsize::new(0)).collect());
    let hs: Vec<_> = (0..PARTIES)
        .map(|me| {
            let (b, slots, seen) = (b.clone(), slots.clone(), seen.clone());
            thread::spawn(move || {
                for r in 0..ROUNDS {
                    slots[me].store(r, Ordering::SeqCst);
                    let idx = b.wait().unwrap();
                    assert!(idx < PARTIES);
                    seen[r * PARTIES + idx].fetch_add(1, Ordering::SeqCst);
                    for s in slots.iter() {
                        let v = s.load(Ordering::SeqCst);
                        assert!(v == r || v == r + 1, "round {r} saw {v}");
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert!(seen.iter().all(|s| s.load(Ordering::SeqCst) == 1));
    assert_eq!(ACTIONS.load(Ordering::SeqCst), ROUNDS as u32);
    assert_eq!(b.n_waiting(), 0);
    assert!(!b.broken());
}

#[test]
fn barrier_abort_reset_and_timeout() {
    let b = Barrier::new(3).unwrap();
    assert_eq!(b.parties(), 3);
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let b = b.clone();
            thread::spawn(move || b.wait_timeout(Duration::from_secs(30)))
        })
        .collect();
    while b.n_waiting() < 2 {
        thread::sleep(Duration::from_millis(2));
    }
    b.abort();
    for w in waiters {
        assert_eq!(w.join().unwrap(), Err(BrokenBarrier));
    }
    assert!(b.broken());
    assert_eq!(b.wait(), Err(BrokenBarrier));
    b.reset();
    assert!(!b.broken());
    // reset while waiting: waiters get BrokenBarrier, the barrier is usable after.
    let b2 = b.clone();
    let w = thread::spawn(move || b2.wait_timeout(Duration::from_secs(30)));
    while b.n_waiting() < 1 {
        thread::sleep(Duration::from_millis(2));
    }
    b.reset();
    assert_eq!(w.join().unwrap(), Err(BrokenBarrier));
    assert!(!b.broken());
    // A timeout breaks the barrier for everyone.
    let t0 = Instant::now();
    assert_eq!(
        b.wait_timeout(Duration::from_millis(50)),
        Err(BrokenBarrier)
    );
    assert!(t0.elapsed() >= Duration::from_millis(50));
    assert!(b.broken());
    assert!(Barrier::new(0).is_err());
}

#[test]
fn in_region_forms_share_one_region() {
    let region = Arc::new(mproc_core::Region::new(4096).unwrap());
    let lock = Lock::in_region(region.clone(), 0).unwrap();
    let same = Lock::in_region(region.clone(), 0).unwrap();
    let ev = Event::in_region(region.clone(), 64).unwrap();
    let sem = Semaphore::in_region(region.clone(), 128, 1).unwrap();
    assert!(Lock::in_region(region.clone(), 4094).is_err());
    assert!(Lock::in_region(region.clone(), 3).is_err());
    lock.acquire().unwrap();
    assert!(same.locked());
    same.release().unwrap();
    ev.set();
    assert!(Event::in_region(region.clone(), 64).unwrap().is_set());
    assert!(sem.try_acquire());
    let raw = RawMutex::in_region(&region, 256).unwrap();
    assert_eq!(raw.lock(), Acquired::Clean);
    assert!(raw.try_lock().is_none());
    // SAFETY: nothing relies on this acquisition.
    assert!(unsafe { raw.release_any() });
}

#[test]
fn handles_travel_through_the_codec() {
    use mproc_core::codec;
    let lock = Lock::new().unwrap();
    let m = Mutex::new(41u64).unwrap();
    let e = Event::new().unwrap();
    let b = Barrier::builder(1).action(count_action).build().unwrap();
    let c = Condition::new().unwrap();
    let s = BoundedSemaphore::new(3).unwrap();
    let msg = (lock.clone(), m.clone(), e.clone(), b, c, s, 7u32);
    let enc = codec::encode(&msg).unwrap();
    #[allow(clippy::type_complexity)]
    let (lock2, m2, e2, b2, c2, s2, seven): (
        Lock,
        Mutex<u64>,
        Event,
        Barrier,
        Condition,
        BoundedSemaphore,
        u32,
    ) = codec::decode(&enc.bytes, enc.fds).unwrap();
    assert_eq!(seven, 7);
    lock2.acquire().unwrap();
    assert!(lock.locked());
    lock.release().unwrap();
    *m2.lock().unwrap() += 1;
    assert_eq!(*m.lock().unwrap(), 42);
    e2.set();
    assert!(e.is_set());
    let before = ACTIONS.load(Ordering::SeqCst);
    assert_eq!(b2.wait(), Ok(0));
    assert!(ACTIONS.load(Ordering::SeqCst) > before);
    let _g = c2.lock().unwrap();
    assert_eq!(c2.notify(1), Ok(0));
    assert_eq!(s2.get_value(), 3);
    // A Mutex<u64> handle cannot be read back as a Lock or with another size.
    let enc = codec::encode(&m).unwrap();
    assert!(codec::decode::<Lock>(&enc.bytes, enc.fds).is_err());
    let enc = codec::encode(&m).unwrap();
    assert!(codec::decode::<Mutex<u32>>(&enc.bytes, enc.fds).is_err());
}

/// A pid that belonged to a process which has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn lock_held_by_a_dead_pid_is_taken_over() {
    let lock = Lock::new().unwrap();
    let dead = dead_pid();
    // SAFETY: only the word is used, to plant a holder; no data relies on it.
    unsafe { lock.raw() }.word().store(dead, Ordering::SeqCst);
    let t0 = Instant::now();
    let err = lock.acquire().unwrap_err();
    assert_eq!(err.pid(), dead);
    assert!(t0.elapsed() < Duration::from_secs(5));
    lock.release().unwrap();
    // The lock works normally again, and the report was one-shot.
    assert!(lock.try_acquire().unwrap());
    lock.release().unwrap();
    // A try on a dead holder's lock takes it over too.
    // SAFETY: only the word is used, to plant a holder; no data relies on it.
    unsafe { lock.raw() }.word().store(dead, Ordering::SeqCst);
    match lock.try_lock() {
        Err(TryLockError::OwnerDied(e)) => assert_eq!(e.pid(), dead),
        other => panic!("{other:?}"),
    }
    assert!(!lock.locked());
}

#[test]
fn blocked_waiter_detects_a_dead_holder_within_bounded_time() {
    // Simulate a holder: the word names a live process, which then dies.
    let mut child = std::process::Command::new("sleep")
        .arg("0.3")
        .spawn()
        .unwrap();
    let pid = child.id();
    let lock = Lock::new().unwrap();
    // SAFETY: only the word is used, to plant a holder; no data relies on it.
    unsafe { lock.raw() }.word().store(pid, Ordering::SeqCst);
    let l2 = lock.clone();
    let waiter = thread::spawn(move || {
        let r = l2.acquire();
        (r.map_err(|e| e.pid()), Instant::now())
    });
    child.wait().unwrap();
    let died = Instant::now();
    let (r, got) = waiter.join().unwrap();
    assert_eq!(r, Err(pid));
    let delay = got.saturating_duration_since(died);
    assert!(delay < Duration::from_secs(2), "took over after {delay:?}");
    lock.release().unwrap();
}

#[test]
fn rlock_and_mutex_report_a_dead_holder() {
    let r = RLock::new().unwrap();
    let dead = dead_pid();
    // RawRLock's first word is the pid word, like RawMutex.
    let region = Arc::new(mproc_core::Region::new(64).unwrap());
    let r2 = RLock::in_region(region.clone(), 0).unwrap();
    RawMutex::in_region(&region, 0)
        .unwrap()
        .word()
        .store(dead, Ordering::SeqCst);
    match r2.lock() {
        Err(e) => {
            assert_eq!(e.pid(), dead);
            let g = e.into_inner();
            assert_eq!(r2.recursion_count(), 1);
            drop(g);
        }
        Ok(_) => panic!("no owner-died report"),
    }
    assert!(!r2.locked());
    drop(r);
    let m = Mutex::new(1u32).unwrap();
    let g = m.lock().unwrap();
    std::mem::forget(g); // "holder" is this live process: others must wait
    assert!(matches!(
        m.lock_timeout(Duration::from_millis(30)),
        Err(TryLockError::WouldBlock)
    ));
}

//! What CPython's Pool gets wrong, done right: worker deaths (python/cpython#96062),
//! time limits, terminate with pending work, huge panic messages, maxtasksperchild,
//! initializers. Ported in spirit from `_TestPool` / `_TestPoolWorkerLifetime` in
//! Lib/test/_test_multiprocessing.py.
use mproc_pool::{Pool, ResultError, TaskError};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn sqr(x: u64) -> u64 {
    x * x
}

fn pid_of(_: u64) -> i32 {
    std::thread::sleep(Duration::from_millis(5));
    std::process::id() as i32
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn self_kill_at_7(x: u64) -> u64 {
    if x == 7 {
        let me = rustix::process::getpid();
        let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
        std::thread::sleep(Duration::from_secs(10));
    }
    x * 2
}

fn abort_at_2(x: u64) -> u64 {
    if x == 2 {
        std::process::abort();
    }
    x
}

fn huge_panic(n: u64) -> u64 {
    panic!("{}", "x".repeat(n as usize));
}

static INIT_RUNS: AtomicU32 = AtomicU32::new(0);
static INIT_VALUE: AtomicU32 = AtomicU32::new(0);

fn init(v: u32) {
    INIT_RUNS.fetch_add(1, Ordering::SeqCst);
    INIT_VALUE.store(v, Ordering::SeqCst);
}

fn init_report(_: u64) -> (i32, u32, u32) {
    std::thread::sleep(Duration::from_millis(2));
    (
        std::process::id() as i32,
        INIT_RUNS.load(Ordering::SeqCst),
        INIT_VALUE.load(Ordering::SeqCst),
    )
}

fn bad_init(_: u32) {
    panic!("initializer refuses");
}

fn len_of(v: Vec<u8>) -> u64 {
    v.len() as u64
}

#[test]
fn worker_killed_mid_task_fails_only_its_task() {
    let pool = Pool::new(2).unwrap();
    let before = pool.pids();
    let out = pool.map_results(self_kill_at_7, 0..20u64);
    for (i, r) in out.iter().enumerate() {
        if i == 7 {
            match r {
                Err(TaskError::WorkerLost { pid, signal, .. }) => {
                    assert!(before.contains(pid), "lost pid {pid} not among {before:?}");
                    assert_eq!(*signal, Some(9));
                }
                other => panic!("item 7: {other:?}"),
            }
        } else {
            assert_eq!(r.as_ref().unwrap(), &(i as u64 * 2), "item {i}");
        }
    }
    // Replaced, and the pool goes on.
    assert_eq!(pool.map(sqr, 0..10u64).unwrap()[9], 81);
    let after = pool.pids();
    assert_eq!(after.len(), 2);
    assert_ne!(before, after);
}

#[test]
fn abort_reports_sigabrt_and_map_fails_with_index() {
    let pool = Pool::new(2).unwrap();
    let e = pool.map_chunked(abort_at_2, 0..5u64, 1).unwrap_err();
    assert_eq!(e.index, 2);
    assert!(
        matches!(
            e.error,
            TaskError::WorkerLost {
                signal: Some(6),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(pool.apply(sqr, 4).unwrap(), 16);
}

#[test]
fn one_mib_panic_message_arrives_intact() {
    let pool = Pool::new(1).unwrap();
    match pool.apply(huge_panic, 1 << 20) {
        Err(TaskError::Panicked { message }) => {
            assert_eq!(message.len(), 1 << 20);
            assert!(message.bytes().all(|b| b == b'x'));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn maxtasksperchild_replaces_workers() {
    let pool = Pool::builder()
        .processes(2)
        .maxtasksperchild(2)
        .build()
        .unwrap();
    let first = pool.pids();
    let pids = pool.map_chunked(pid_of, 0..12u64, 1).unwrap();
    let distinct: HashSet<i32> = pids.iter().copied().collect();
    assert!(
        distinct.len() >= 6,
        "{} distinct pids: {pids:?}",
        distinct.len()
    );
    // Give the last replacements a moment to be published.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.pids().iter().any(|p| first.contains(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(pool.pids().iter().all(|p| !first.contains(p)));
}

#[test]
fn initializer_runs_once_per_worker_with_its_args() {
    let pool = Pool::builder()
        .processes(2)
        .initializer(init, 42)
        .build()
        .unwrap();
    let out = pool.map_chunked(init_report, 0..20u64, 1).unwrap();
    for (_, runs, value) in &out {
        assert_eq!(*runs, 1);
        assert_eq!(*value, 42);
    }
    let pids: HashSet<i32> = out.iter().map(|r| r.0).collect();
    assert!(!pids.is_empty() && pids.len() <= 2);
}

#[test]
fn failing_initializer_breaks_the_pool() {
    let pool = Pool::builder()
        .processes(1)
        .initializer(bad_init, 0)
        .build()
        .unwrap();
    match pool
        .apply_async(sqr, 2)
        .get_timeout(Duration::from_secs(30))
    {
        Err(ResultError::Failed(TaskError::Broken { reason })) => {
            assert!(reason.contains("initializer refuses"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn terminate_with_10000_pending_returns_promptly() {
    let pool = Pool::new(2).unwrap();
    let rs: Vec<_> = (0..10_000)
        .map(|_| pool.apply_async(sleep_ms, 10_000))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    pool.terminate();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    for r in &rs {
        assert_eq!(
            r.get_timeout(Duration::from_secs(1)),
            Err(ResultError::Failed(TaskError::Terminated))
        );
    }
    assert_eq!(pool.apply(sqr, 1), Err(TaskError::Closed));
}

#[test]
fn get_timeout_returns_on_time() {
    let pool = Pool::new(1).unwrap();
    let r = pool.apply_async(sleep_ms, 3000);
    let t = Instant::now();
    assert_eq!(
        r.get_timeout(Duration::from_millis(200)),
        Err(ResultError::Timeout)
    );
    let el = t.elapsed();
    assert!(
        el >= Duration::from_millis(200) && el < Duration::from_secs(2),
        "{el:?}"
    );
    assert!(!r.ready());
    assert!(!r.wait_timeout(Duration::from_millis(10)));
}

#[test]
fn time_limit_kills_and_replaces_the_worker() {
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let out = pool.map_results(sleep_ms, [10u64, 20_000, 30, 40]);
    assert_eq!(out[0], Ok(10));
    assert!(
        matches!(out[1], Err(TaskError::TimedOut { limit, .. }) if limit == Duration::from_millis(500)),
        "{:?}",
        out[1]
    );
    assert_eq!(out[2], Ok(30));
    assert_eq!(out[3], Ok(40));
    assert_eq!(pool.apply(sqr, 5).unwrap(), 25);
}

#[test]
fn queued_task_can_be_cancelled() {
    let pool = Pool::new(1).unwrap();
    let long = pool.apply_async(sleep_ms, 300);
    let queued = pool.apply_async(sqr, 3);
    assert!(queued.cancel());
    assert!(queued.cancelled());
    assert_eq!(queued.get(), Err(TaskError::Cancelled));
    assert_eq!(long.get().unwrap(), 300);
    assert!(!long.cancel());
}

#[test]
fn worker_dies_while_parent_sends_4_mib() {
    let pool = Pool::new(1).unwrap();
    let big: Vec<Vec<u8>> = (0..8).map(|_| vec![7u8; 4 << 20]).collect();
    std::thread::scope(|s| {
        let h = s.spawn(|| pool.map_results(len_of, big));
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(30));
            for pid in pool.pids() {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
        }
        let out = h.join().unwrap();
        assert_eq!(out.len(), 8);
        for r in out {
            match r {
                Ok(n) => assert_eq!(n, 4 << 20),
                Err(TaskError::WorkerLost { .. }) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
    });
    assert_eq!(pool.apply(len_of, vec![1u8; 4 << 20]).unwrap(), 4 << 20);
}

#[test]
fn close_and_join_finish_the_queue() {
    let pool = Pool::new(2).unwrap();
    let rs: Vec<_> = (0..20u64).map(|i| pool.apply_async(sqr, i)).collect();
    pool.close();
    assert_eq!(pool.apply(sqr, 1), Err(TaskError::Closed));
    pool.join();
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r.get().unwrap(), (i * i) as u64);
    }
    assert!(pool.pids().is_empty());
}

#[test]
fn time_limit_applies_per_item_inside_a_chunk() {
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    // One packed chunk: three 250 ms items (each under the limit, together over it),
    // then one that would run for 20 s.
    let e = pool
        .map_chunked(sleep_ms, [250u64, 250, 250, 20_000], 4)
        .unwrap_err();
    assert_eq!(e.index, 3, "{e:?}");
    assert!(matches!(e.error, TaskError::TimedOut { .. }), "{e:?}");
    // The pool goes on.
    assert_eq!(
        pool.map_chunked(sleep_ms, [1u64, 2, 3], 3).unwrap(),
        vec![1, 2, 3]
    );
}

/// Waiting callers run the dispatcher themselves; several at once must take turns
/// without losing or mixing up anyone's results.
#[test]
fn many_threads_wait_on_their_own_results_at_once() {
    let pool = std::sync::Arc::new(Pool::new(2).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 0..150u64 {
                    let x = t * 1000 + i;
                    assert_eq!(pool.apply(sqr, x).unwrap(), x * x);
                    if i % 50 == 0 {
                        let v: Vec<u64> = (0..100).collect();
                        let want: Vec<u64> = v.iter().map(|x| x * x).collect();
                        assert_eq!(pool.map(sqr, v).unwrap(), want);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// With nobody waiting, results still arrive: workers then wake the pool's own thread,
/// which runs the callbacks.
#[test]
fn callbacks_run_when_nobody_waits() {
    let pool = Pool::new(2).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let n = 60u64;
    let _handles: Vec<_> = (0..n)
        .map(|i| {
            let tx = tx.clone();
            pool.apply_async_with(sqr, i, move |v| tx.send(v).unwrap(), |e| panic!("{e}"))
        })
        .collect();
    let mut got: Vec<u64> = (0..n)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(30))
                .expect("a callback")
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..n).map(|i| i * i).collect::<Vec<_>>());
}

/// A worker killed while a caller drives the dispatcher (it waits in `get`) is seen by
/// that caller: the task fails with WorkerLost and the pool goes on.
#[test]
fn worker_death_is_seen_by_a_waiting_caller() {
    let pool = Pool::new(1).unwrap();
    let pid = pool.apply(pid_of, 0).unwrap();
    let r = pool.apply_async(sleep_ms, 20_000);
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).expect("a pid"),
            rustix::process::Signal::KILL,
        );
    });
    let e = r.get_timeout(Duration::from_secs(30)).unwrap_err();
    killer.join().unwrap();
    assert!(
        matches!(e, ResultError::Failed(TaskError::WorkerLost { pid: p, signal: Some(9), .. }) if p == pid),
        "{e:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(pool.apply(sqr, 5).unwrap(), 25);
}

/// Results far bigger than a socket's buffer (python's default chunksize over 100,000
/// items: 100 KiB-1 MiB per frame), while the caller sleeps in `get()` rather than
/// driving the pool: a worker whose socket is full must tell the parent so, or it waits
/// for room the parent never makes (it waits for the frame's end). Hung 1 run in 3 before.
#[test]
fn result_frames_bigger_than_the_socket_buffer_arrive() {
    let rounds = 60;
    let (tx, rx) = std::sync::mpsc::channel();
    let _maps = std::thread::spawn(move || {
        let pool = Pool::new(2).unwrap();
        for _ in 0..rounds {
            for cs in [None, Some(1000), Some(50_000)] {
                let v = pool.map_async_chunked(sqr, 0..100_000u64, cs).get();
                if tx.send(v.map(|v| (v.len(), v[99_999]))).is_err() {
                    return;
                }
            }
        }
    });
    for round in 0..rounds * 3 {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(r) => assert_eq!(r.unwrap(), (100_000, 99_999 * 99_999), "map {round}"),
            Err(_) => panic!("map {round} never finished: a worker is stuck writing results"),
        }
    }
}

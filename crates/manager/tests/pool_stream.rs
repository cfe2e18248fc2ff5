//! A manager pool's lazy iterators and callbacks, across processes under the start
//! method the run selects (`MPROC_START_METHOD`): `imap`/`imap_unordered`/`istarmap`
//! read their input in batches (an endless input works, a dropped iterator stops its
//! work), and `apply_async_with`/`map_async_with`/`starmap_async_with` run exactly one
//! callback, once, in the process that submitted.
use mproc_manager::{Manager, ManagerError, PoolProxy};
use mproc_pool::{MapError, TaskError};
use mproc_spawn::Process;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn square(x: u64) -> u64 {
    x * x
}

fn mul(a: u64, b: u64) -> u64 {
    a * b
}

fn boom(x: u64) -> u64 {
    if x == 70 {
        panic!("boom at {x}");
    }
    x
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The largest batch the proxy sends for chunk size 1, and how many it may hold ahead.
const BATCH: u64 = 64;

/// In a child: the first 300 squares of an endless input, ordered and unordered, and
/// how many items each read from its input.
fn child_takes_from_endless(pool: PoolProxy) -> (Vec<u64>, Vec<u64>, u64, u64) {
    let pulled = AtomicU64::new(0);
    let ordered: Vec<u64> = pool
        .imap(
            square,
            (0u64..).inspect(|_| {
                pulled.fetch_add(1, Ordering::Relaxed);
            }),
        )
        .unwrap()
        .take(300)
        .map(Result::unwrap)
        .collect();
    let read_ordered = pulled.swap(0, Ordering::Relaxed);
    let mut unordered: Vec<u64> = pool
        .imap_unordered_chunked(
            square,
            (0u64..).inspect(|_| {
                pulled.fetch_add(1, Ordering::Relaxed);
            }),
            3,
        )
        .unwrap()
        .take(300)
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    (
        ordered,
        unordered,
        read_ordered,
        pulled.load(Ordering::Relaxed),
    )
}

#[test]
fn an_endless_input_is_read_lazily_in_batches() {
    let m = Manager::start().unwrap();
    let pool = m.pool(2).unwrap();
    let t = Instant::now();
    let mut p = Process::new(child_takes_from_endless, pool.clone());
    p.start().unwrap();
    let (ordered, unordered, read_ordered, read_unordered) = p.join().unwrap();
    assert_eq!(p.exitcode(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(120), "{:?}", t.elapsed());
    assert_eq!(ordered, (0..300u64).map(square).collect::<Vec<_>>());
    // Unordered: 300 distinct squares, of items the client sent.
    assert_eq!(unordered.len(), 300);
    assert!(unordered.windows(2).all(|w| w[0] < w[1]), "{unordered:?}");
    // The client read what it needed and at most a few batches ahead.
    assert!(
        (300..=300 + 3 * BATCH).contains(&read_ordered),
        "{read_ordered}"
    );
    assert!(
        (300..=300 + 3 * BATCH).contains(&read_unordered),
        "{read_unordered}"
    );
    // The same in this process, on the same pool.
    let firsts: Vec<u64> = pool
        .imap(square, 1u64..)
        .unwrap()
        .take(5)
        .map(Result::unwrap)
        .collect();
    assert_eq!(firsts, [1, 4, 9, 16, 25]);
    m.shutdown().unwrap();
}

#[test]
fn a_long_input_crosses_batches_in_order() {
    let m = Manager::start().unwrap();
    let pool = m.pool(3).unwrap();
    let want: Vec<u64> = (0..1000u64).map(square).collect();
    for chunk in [1, 7, 100] {
        let got: Vec<u64> = pool
            .imap_chunked(square, 0..1000u64, chunk)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, want, "chunksize {chunk}");
        let mut got: Vec<u64> = pool
            .imap_unordered_chunked(square, 0..1000u64, chunk)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        got.sort_unstable();
        assert_eq!(got, want, "unordered, chunksize {chunk}");
    }
    // An input of exactly one batch, and an empty one.
    let got: Vec<u64> = pool
        .imap(square, 0..BATCH)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got.len() as u64, BATCH);
    assert_eq!(pool.imap(square, 0..0u64).unwrap().count(), 0);
    assert_eq!(pool.imap_unordered(square, 0..0u64).unwrap().count(), 0);
    m.shutdown().unwrap();
}

/// In a child: `imap` of a function that panics at item 70 (in the second batch).
fn child_imaps_boom(pool: PoolProxy) -> (Vec<u64>, Vec<String>) {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for r in pool.imap(boom, 0..200u64).unwrap() {
        match r {
            Ok(v) => ok.push(v),
            Err(ManagerError::Task(TaskError::Panicked { message })) => failed.push(message),
            Err(e) => panic!("{e:?}"),
        }
    }
    (ok, failed)
}

#[test]
fn a_task_panicking_mid_imap_fails_that_item_only() {
    let m = Manager::start().unwrap();
    let pool = m.pool(2).unwrap();
    let mut p = Process::new(child_imaps_boom, pool.clone());
    p.start().unwrap();
    let (ok, failed) = p.join().unwrap();
    assert_eq!(ok, (0..200u64).filter(|&x| x != 70).collect::<Vec<_>>());
    assert_eq!(failed.len(), 1);
    assert!(failed[0].contains("boom at 70"), "{failed:?}");
    // Unordered, chunked and here: one failure among 199 results.
    let all: Vec<_> = pool
        .imap_unordered_chunked(boom, 0..200u64, 4)
        .unwrap()
        .collect();
    assert_eq!(all.len(), 200);
    assert_eq!(all.iter().filter(|r| r.is_err()).count(), 1);
    assert!(
        all.iter()
            .any(|r| matches!(r, Err(ManagerError::Task(TaskError::Panicked { .. }))))
    );
    m.shutdown().unwrap();
}

/// In a child: takes three results of an endless 50 ms-per-item imap, then drops it.
fn child_drops_imap_early(pool: PoolProxy) -> u64 {
    let mut it = pool.imap(nap, std::iter::repeat(50u64)).unwrap();
    let mut n = 0;
    for _ in 0..3 {
        n += it.next().unwrap().unwrap();
    }
    drop(it);
    n
}

#[test]
fn dropping_an_imap_early_cancels_its_work_and_the_pool_serves_others() {
    let m = Manager::start().unwrap();
    let pool = m.pool(2).unwrap();
    let mut p = Process::new(child_drops_imap_early, pool.clone());
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), 150);
    // Two batches of 50 ms naps were sent: had they not been cancelled, they would
    // hold the two workers for over three seconds.
    let t = Instant::now();
    assert_eq!(
        pool.map(square, 0..10u64).unwrap(),
        (0..10u64).map(square).collect::<Vec<_>>()
    );
    let took = t.elapsed();
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // Dropped here too, and the pool goes on.
    let mut it = pool.imap_unordered(nap, std::iter::repeat(20u64)).unwrap();
    assert_eq!(it.next().unwrap().unwrap(), 20);
    drop(it);
    assert_eq!(pool.apply(square, 9).unwrap(), 81);
    m.shutdown().unwrap();
}

fn child_istarmaps(pool: PoolProxy) -> Vec<u64> {
    pool.istarmap(mul, (0..150u64).map(|i| (i, 2)), 4)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn istarmap_streams_tuples_in_order() {
    let m = Manager::start().unwrap();
    let pool = m.pool(2).unwrap();
    let mut p = Process::new(child_istarmaps, pool.clone());
    p.start().unwrap();
    assert_eq!(
        p.join().unwrap(),
        (0..150u64).map(|i| 2 * i).collect::<Vec<_>>()
    );
    // A closure is refused, as by starmap.
    let add = |a: u64, b: u64| a + b;
    match pool.istarmap(add, [(1, 2)], 1) {
        Err(ManagerError::BadRequest(msg)) => assert!(msg.contains("closure"), "{msg}"),
        other => panic!("expected a refused closure, got {other:?}"),
    }
    // An endless input of tuples.
    let got: Vec<u64> = pool
        .istarmap(mul, (1u64..).map(|i| (i, i)), 1)
        .unwrap()
        .take(4)
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, [1, 4, 9, 16]);
    m.shutdown().unwrap();
}

/// What the callbacks of one submission saw.
#[derive(Default)]
struct Seen {
    ok: AtomicUsize,
    err: AtomicUsize,
    last: Mutex<String>,
}

/// In a child: every callback kind, success and failure; returns for each submission
/// `(callbacks, error callbacks, what was seen)` once its `get` has returned.
fn child_uses_callbacks(pool: PoolProxy) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let me = std::process::id();
    let mut check = |seen: &Arc<Seen>| {
        out.push((
            seen.ok.load(Ordering::SeqCst),
            seen.err.load(Ordering::SeqCst),
            seen.last.lock().unwrap().clone(),
        ));
    };
    let on = |seen: &Arc<Seen>| {
        let (a, b) = (Arc::clone(seen), Arc::clone(seen));
        (
            move |v: String| {
                assert_eq!(std::process::id(), me, "a callback runs in the submitter");
                a.ok.fetch_add(1, Ordering::SeqCst);
                *a.last.lock().unwrap() = v;
            },
            move |e: ManagerError| {
                assert_eq!(std::process::id(), me);
                b.err.fetch_add(1, Ordering::SeqCst);
                *b.last.lock().unwrap() = format!("{e:?}");
            },
        )
    };

    let s = Arc::new(Seen::default());
    let (c, e) = on(&s);
    let r = pool
        .apply_async_with(square, 7, move |v| c(v.to_string()), e)
        .unwrap();
    assert_eq!(r.get().unwrap(), 49);
    check(&s);

    let s = Arc::new(Seen::default());
    let (c, e) = on(&s);
    let r = pool
        .apply_async_with(boom, 70, move |v| c(v.to_string()), e)
        .unwrap();
    assert!(matches!(
        r.get(),
        Err(ManagerError::Task(TaskError::Panicked { .. }))
    ));
    check(&s);

    let s = Arc::new(Seen::default());
    let (c, e) = on(&s);
    let r = pool
        .map_async_with(square, 0..5u64, move |v| c(format!("{v:?}")), e)
        .unwrap();
    r.wait().unwrap();
    check(&s);

    let s = Arc::new(Seen::default());
    let (c, e) = on(&s);
    let r = pool
        .map_async_with(boom, 0..100u64, move |v| c(format!("{v:?}")), e)
        .unwrap();
    assert!(matches!(
        r.get(),
        Err(ManagerError::Map(MapError { index: 70, .. }))
    ));
    check(&s);

    let s = Arc::new(Seen::default());
    let (c, e) = on(&s);
    let r = pool
        .starmap_async_with(mul, [(2, 3), (4, 5)], move |v| c(format!("{v:?}")), e)
        .unwrap();
    assert!(r.ready().is_ok());
    assert_eq!(r.get().unwrap(), [6, 20]);
    check(&s);
    out
}

#[test]
fn callbacks_run_exactly_once_in_the_submitting_process() {
    let m = Manager::start().unwrap();
    let pool = m.pool(2).unwrap();
    let mut p = Process::new(child_uses_callbacks, pool.clone());
    p.start().unwrap();
    let seen = p.join().unwrap();
    assert_eq!(p.exitcode(), Some(0));
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[0], (1, 0, "49".into()));
    assert_eq!((seen[1].0, seen[1].1), (0, 1));
    assert!(seen[1].2.contains("Panicked"), "{}", seen[1].2);
    assert_eq!(seen[2], (1, 0, "[0, 1, 4, 9, 16]".into()));
    assert_eq!((seen[3].0, seen[3].1), (0, 1));
    assert!(seen[3].2.contains("index: 70"), "{}", seen[3].2);
    assert_eq!(seen[4], (1, 0, "[6, 20]".into()));
    m.shutdown().unwrap();
}

#[test]
fn a_panicking_or_slow_callback_does_not_break_the_proxy() {
    let m = Manager::start().unwrap();
    let pool = m.pool(2).unwrap();
    // A callback that panics: the result and the pool go on.
    let r = pool
        .apply_async_with(square, 3, |_| panic!("callback fails"), |e| panic!("{e}"))
        .unwrap();
    assert_eq!(r.get().unwrap(), 9);
    assert_eq!(r.successful().unwrap(), Some(true));
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
    // A callback may use the pool and its own result.
    let got = Arc::new(AtomicU64::new(0));
    let g = Arc::clone(&got);
    let (p2, slot) = (pool.clone(), Arc::new(Mutex::new(None)));
    let slot2 = Arc::clone(&slot);
    let r = pool
        .apply_async_with(
            square,
            5,
            move |v| {
                let own = slot2
                    .lock()
                    .unwrap()
                    .take()
                    .map(|r: mproc_manager::AsyncResultProxy<u64>| r.get().unwrap());
                g.store(
                    v + p2.apply(square, 2).unwrap() + own.unwrap_or(0),
                    Ordering::SeqCst,
                );
            },
            |e| panic!("{e}"),
        )
        .unwrap();
    *slot.lock().unwrap() = Some(r.clone());
    r.wait().unwrap();
    let v = got.load(Ordering::SeqCst);
    assert!(v == 25 + 4 + 25 || v == 25 + 4, "{v}");
    // `join` waits for this process's callbacks.
    let done = Arc::new(AtomicUsize::new(0));
    for i in 0..4u64 {
        let d = Arc::clone(&done);
        pool.apply_async_with(
            square,
            i,
            move |_| {
                std::thread::sleep(Duration::from_millis(100));
                d.fetch_add(1, Ordering::SeqCst);
            },
            |e| panic!("{e}"),
        )
        .unwrap();
    }
    pool.close().unwrap();
    pool.join().unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 4);
    m.shutdown().unwrap();
}

#[test]
fn a_dead_server_reaches_the_error_callback() {
    let m = Manager::start().unwrap();
    let pool = m.pool(1).unwrap();
    let errs = Arc::new(AtomicUsize::new(0));
    let oks = Arc::new(AtomicUsize::new(0));
    let (e2, o2) = (Arc::clone(&errs), Arc::clone(&oks));
    let r = pool
        .apply_async_with(
            nap,
            30_000,
            move |_| {
                o2.fetch_add(1, Ordering::SeqCst);
            },
            move |_| {
                e2.fetch_add(1, Ordering::SeqCst);
            },
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    m.shutdown().unwrap();
    assert!(r.get().is_err());
    let t = Instant::now();
    while errs.load(Ordering::SeqCst) == 0 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        (oks.load(Ordering::SeqCst), errs.load(Ordering::SeqCst)),
        (0, 1)
    );
}

/// Each callback waits on a thread of its own: a thousand in flight all run, and `join`
/// returns after the last.
#[test]
fn a_thousand_callbacks_in_flight_all_run_before_join_returns() {
    let m = Manager::start().unwrap();
    let pool = m.pool(2).unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut rs = Vec::new();
    for i in 0..1000u64 {
        let n = Arc::clone(&n);
        rs.push(
            pool.apply_async_with(
                square,
                i,
                move |v| {
                    n.fetch_add(v, Ordering::SeqCst);
                },
                |e| panic!("{e}"),
            )
            .unwrap(),
        );
    }
    pool.close().unwrap();
    pool.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(120), "{:?}", t.elapsed());
    assert_eq!(
        n.load(Ordering::SeqCst),
        (0..1000u64).map(square).sum::<u64>()
    );
    assert!(rs.iter().all(|r| r.ready().unwrap()));
    m.shutdown().unwrap();
}

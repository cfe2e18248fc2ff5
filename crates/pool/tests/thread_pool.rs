//! `ThreadPool`, ported from CPython's `_TestPool` as its `ThreadsMixin` runs it
//! (Lib/test/_test_multiprocessing.py: `multiprocessing.pool.ThreadPool`), plus the
//! initializer test of `_TestInitializers`, re-entrant callbacks, terminate with pending
//! work, and a pool run inside a child process under the configured start method.
use mproc_pool::{MapError, PoolError, ResultError, TaskError, ThreadPool};
use mproc_spawn::Process;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

fn sqr(x: u64) -> u64 {
    x * x
}

/// CPython's `sqr(x, wait)`: sleeps, then squares.
fn slow_sqr((x, wait_ms): (u64, u64)) -> u64 {
    std::thread::sleep(Duration::from_millis(wait_ms));
    x * x
}

fn boom_at_5(x: u64) -> u64 {
    if x == 5 {
        panic!("boom at {x}");
    }
    x * x
}

const LONG: Duration = Duration::from_secs(30);

#[test]
fn apply() {
    let pool = ThreadPool::new(4).unwrap();
    assert_eq!(pool.apply(sqr, 5).unwrap(), 25);
    assert_eq!(pool.apply(slow_sqr, (3, 0)).unwrap(), 9);
    // A closure with captures, and values that are not messages.
    let base = Arc::new(Mutex::new(vec![1u8, 2]));
    let b = base.clone();
    let r = pool
        .apply(
            move |extra: Vec<u8>| b.lock().unwrap().len() + extra.len(),
            vec![0; 3],
        )
        .unwrap();
    assert_eq!(r, 5);
}

#[test]
fn map_in_order_with_every_chunksize() {
    let pool = ThreadPool::new(4).unwrap();
    assert_eq!(
        pool.map(sqr, 0..10u64).unwrap(),
        (0..10).map(sqr).collect::<Vec<_>>()
    );
    let want: Vec<u64> = (0..100).map(sqr).collect();
    assert_eq!(pool.map(sqr, 0..100u64).unwrap(), want);
    for cs in [1, 2, 3, 7, 53, 100, 1000] {
        assert_eq!(
            pool.map_chunked(sqr, 0..100u64, cs).unwrap(),
            want,
            "chunksize {cs}"
        );
    }
    // chunksize 0 is taken as 1.
    assert_eq!(
        pool.map_chunked(sqr, 0..5u64, 0).unwrap(),
        vec![0, 1, 4, 9, 16]
    );
    // An input without a known length.
    let odd = (0..50u64).filter(|x| x % 2 == 1);
    assert_eq!(
        pool.map(sqr, odd).unwrap(),
        (0..50u64)
            .filter(|x| x % 2 == 1)
            .map(sqr)
            .collect::<Vec<_>>()
    );
}

#[test]
fn map_runs_on_the_pool_threads_in_parallel() {
    let pool = ThreadPool::new(3).unwrap();
    let me = std::thread::current().id();
    let ids: Vec<ThreadId> = pool
        .map_chunked(
            |_: u32| {
                std::thread::sleep(Duration::from_millis(30));
                std::thread::current().id()
            },
            0..12u32,
            1,
        )
        .unwrap();
    let distinct: HashSet<ThreadId> = ids.iter().copied().collect();
    assert!(!distinct.contains(&me));
    assert!(distinct.len() <= 3, "{distinct:?}");
    assert!(distinct.len() >= 2, "only one thread ran 12 sleeping items");
    let names: Vec<String> = pool
        .map(
            |_: u8| std::thread::current().name().unwrap_or("").to_owned(),
            [0u8],
        )
        .unwrap();
    assert_eq!(names, vec!["mproc-threadpool".to_owned()]);
}

#[test]
fn empty_iterable() {
    let pool = ThreadPool::new(2).unwrap();
    assert_eq!(pool.map(sqr, Vec::<u64>::new()).unwrap(), Vec::<u64>::new());
    assert_eq!(
        pool.map_chunked(sqr, Vec::<u64>::new(), 1).unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(pool.imap(sqr, Vec::<u64>::new()).count(), 0);
    assert_eq!(pool.imap_unordered(sqr, Vec::<u64>::new()).count(), 0);
    let r = pool.map_async(sqr, Vec::<u64>::new());
    assert!(r.wait_timeout(LONG));
    assert_eq!(r.get().unwrap(), Vec::<u64>::new());
    assert_eq!(r.successful(), Some(true));
    // As in CPython (and mproc's Pool), an empty map calls no callback.
    let called = Arc::new(AtomicUsize::new(0));
    let (c1, c2) = (called.clone(), called.clone());
    let r = pool.map_async_with(
        sqr,
        Vec::<u64>::new(),
        move |_| {
            c1.fetch_add(1, Ordering::SeqCst);
        },
        move |_| {
            c2.fetch_add(1, Ordering::SeqCst);
        },
    );
    assert_eq!(r.get().unwrap(), Vec::<u64>::new());
    assert_eq!(called.load(Ordering::SeqCst), 0);
    assert_eq!(
        pool.starmap(|a: u64, b: u64| a + b, Vec::<(u64, u64)>::new())
            .unwrap(),
        Vec::<u64>::new()
    );
}

#[test]
fn starmap_and_starmap_async() {
    let pool = ThreadPool::new(2).unwrap();
    let tuples: Vec<(u64, u64)> = (0..10).map(|i| (i, i + 1)).collect();
    let want: Vec<u64> = tuples.iter().map(|(a, b)| a * b).collect();
    assert_eq!(
        pool.starmap(|a: u64, b: u64| a * b, tuples.clone())
            .unwrap(),
        want
    );
    assert_eq!(
        pool.starmap_chunked(|a: u64, b: u64| a * b, tuples.clone(), 3)
            .unwrap(),
        want
    );
    let r = pool.starmap_async(|a: u64, b: u64| a * b, tuples.clone());
    assert_eq!(r.get_timeout(LONG).unwrap(), want);
    // One, three and twelve arguments; a plain `fn` works too.
    fn three(a: u8, b: String, c: i64) -> String {
        format!("{a}{b}{c}")
    }
    assert_eq!(
        pool.starmap(three, [(1, "x".to_string(), -2)]).unwrap(),
        vec!["1x-2"]
    );
    assert_eq!(
        pool.starmap(|a: u8| a + 1, [(1,), (2,)]).unwrap(),
        vec![2, 3]
    );
    #[allow(clippy::too_many_arguments)]
    fn twelve(
        a: u8,
        b: u8,
        c: u8,
        d: u8,
        e: u8,
        f: u8,
        g: u8,
        h: u8,
        i: u8,
        j: u8,
        k: u8,
        l: u8,
    ) -> u32 {
        [a, b, c, d, e, f, g, h, i, j, k, l]
            .iter()
            .map(|&x| u32::from(x))
            .sum()
    }
    assert_eq!(
        pool.starmap(twelve, [(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)])
            .unwrap(),
        vec![78]
    );
    let lazy: Vec<u64> = pool
        .istarmap(|a: u64, b: u64| a * b, tuples, 4)
        .map(Result::unwrap)
        .collect();
    assert_eq!(lazy, want);
}

#[test]
fn async_get_and_timeout() {
    let pool = ThreadPool::new(2).unwrap();
    // CPython's test_async: a task finishing within the timeout.
    let r = pool.apply_async(slow_sqr, (7, 50));
    assert_eq!(r.get_timeout(LONG).unwrap(), 49);
    // test_async_timeout: get(timeout) on a slow task raises TimeoutError; it goes on.
    let r = pool.apply_async(slow_sqr, (6, 400));
    let t = Instant::now();
    assert_eq!(
        r.get_timeout(Duration::from_millis(50)),
        Err(ResultError::Timeout)
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!r.ready());
    assert_eq!(r.successful(), None);
    assert!(!r.wait_timeout(Duration::from_millis(1)));
    assert_eq!(r.get_timeout(LONG).unwrap(), 36);
    assert!(r.ready());
    assert_eq!(r.successful(), Some(true));
    // The value can be fetched again, and moved out at last.
    assert_eq!(r.get().unwrap(), 36);
    assert_eq!(r.into_result().unwrap(), 36);
    // The same on a map.
    let m = pool.map_async_chunked(slow_sqr, [(2, 300), (3, 0)], Some(1));
    assert!(matches!(
        m.get_timeout(Duration::from_millis(30)),
        Err(ResultError::Timeout)
    ));
    assert_eq!(m.get_timeout(LONG).unwrap(), vec![4, 9]);
    m.wait();
    assert!(m.ready());
}

#[test]
fn successful_is_none_until_ready() {
    let pool = ThreadPool::new(1).unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    let gate = pool.apply_async(move |_: ()| rx.lock().unwrap().recv().is_ok(), ());
    // CPython raises ValueError here; mproc says None.
    assert_eq!(gate.successful(), None);
    tx.send(()).unwrap();
    assert!(gate.get_timeout(LONG).unwrap());
    assert_eq!(gate.successful(), Some(true));
    let bad = pool.apply_async(boom_at_5, 5);
    bad.wait();
    assert_eq!(bad.successful(), Some(false));
}

#[test]
fn a_panicking_task_fails_alone() {
    let pool = ThreadPool::new(2).unwrap();
    // test_traceback: the task's exception is re-raised by get.
    let e = pool.apply(boom_at_5, 5).unwrap_err();
    assert_eq!(
        e,
        TaskError::Panicked {
            message: "boom at 5".into()
        }
    );
    for cs in [1, 3, 100] {
        let e = pool.map_chunked(boom_at_5, 0..10u64, cs).unwrap_err();
        assert_eq!(
            e,
            MapError {
                index: 5,
                error: TaskError::Panicked {
                    message: "boom at 5".into()
                }
            },
            "chunksize {cs}"
        );
    }
    let all = pool.map_results(boom_at_5, 0..10u64);
    for (i, r) in all.iter().enumerate() {
        if i == 5 {
            assert!(matches!(r, Err(TaskError::Panicked { .. })), "{r:?}");
        } else {
            assert_eq!(*r.as_ref().unwrap(), sqr(i as u64));
        }
    }
    // The pool goes on, with every thread.
    assert_eq!(pool.map_chunked(sqr, 0..20u64, 1).unwrap().len(), 20);
}

#[test]
fn imap_and_imap_unordered() {
    let pool = ThreadPool::new(4).unwrap();
    let want: Vec<u64> = (0..10).map(sqr).collect();
    let mut it = pool.imap(sqr, 0..10u64);
    for w in &want {
        assert_eq!(it.next().unwrap().unwrap(), *w);
    }
    assert!(it.next().is_none());
    assert!(it.next().is_none());
    let want: Vec<u64> = (0..1000).map(sqr).collect();
    let got: Vec<u64> = pool
        .imap_chunked(sqr, 0..1000u64, 100)
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, want);
    for cs in [1, 53] {
        let mut got: Vec<u64> = pool
            .imap_unordered_chunked(sqr, 0..1000u64, cs)
            .map(Result::unwrap)
            .collect();
        got.sort_unstable();
        assert_eq!(got, want, "chunksize {cs}");
    }
    // An endless input is consumed only as far as needed.
    let first: Vec<u64> = pool.imap(sqr, 0u64..).take(5).map(Result::unwrap).collect();
    assert_eq!(first, vec![0, 1, 4, 9, 16]);
}

#[test]
fn imap_unordered_yields_as_completed() {
    let pool = ThreadPool::new(2).unwrap();
    let got: Vec<u64> = pool
        .imap_unordered(slow_sqr, [(1, 800), (2, 0)])
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, vec![4, 1]);
}

#[test]
fn imap_reports_a_failing_item_and_goes_on() {
    let pool = ThreadPool::new(3).unwrap();
    for cs in [1, 2, 4, 100] {
        let out: Vec<Result<u64, TaskError>> = pool.imap_chunked(boom_at_5, 0..10u64, cs).collect();
        assert_eq!(out.len(), 10);
        for (i, r) in out.iter().enumerate() {
            if i == 5 {
                assert_eq!(
                    r,
                    &Err(TaskError::Panicked {
                        message: "boom at 5".into()
                    })
                );
            } else {
                assert_eq!(r, &Ok(sqr(i as u64)), "chunksize {cs}, item {i}");
            }
        }
        let out: Vec<Result<u64, TaskError>> = pool
            .imap_unordered_chunked(boom_at_5, 0..10u64, cs)
            .collect();
        assert_eq!(out.len(), 10);
        assert_eq!(out.iter().filter(|r| r.is_err()).count(), 1);
    }
}

#[test]
fn imap_next_timeout() {
    let pool = ThreadPool::new(2).unwrap();
    let mut it = pool.imap(slow_sqr, [(3, 400), (4, 0)]);
    assert!(matches!(
        it.next_timeout(Duration::from_millis(30)),
        Some(Err(ResultError::Timeout))
    ));
    assert_eq!(it.next_timeout(LONG).unwrap().unwrap(), 9);
    assert_eq!(it.next_timeout(LONG).unwrap().unwrap(), 16);
    assert!(it.next_timeout(LONG).is_none());
}

#[test]
fn dropping_an_imap_early_skips_chunks_not_started() {
    let pool = ThreadPool::new(1).unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let mut it = pool.imap(
        move |x: u64| {
            r.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            x
        },
        0..100u64,
    );
    assert_eq!(it.next().unwrap().unwrap(), 0);
    drop(it);
    pool.close();
    pool.join();
    assert!(
        ran.load(Ordering::SeqCst) < 100,
        "{}",
        ran.load(Ordering::SeqCst)
    );
}

#[test]
fn map_async_callbacks() {
    let pool = ThreadPool::new(2).unwrap();
    let (tx, rx) = mpsc::channel();
    let (etx, erx) = mpsc::channel();
    let tx2 = tx.clone();
    let r = pool.map_async_with(
        sqr,
        0..10u64,
        move |v| tx.send(v).unwrap(),
        move |e| etx.send(e).unwrap(),
    );
    assert_eq!(
        r.get_timeout(LONG).unwrap(),
        (0..10).map(sqr).collect::<Vec<_>>()
    );
    // The callback ran before get() returned.
    assert_eq!(rx.try_recv().unwrap(), (0..10).map(sqr).collect::<Vec<_>>());
    assert!(erx.try_recv().is_err());
    let (etx, erx) = mpsc::channel();
    let r = pool.map_async_with(
        boom_at_5,
        0..10u64,
        move |v| tx2.send(v).unwrap(),
        move |e| etx.send(e).unwrap(),
    );
    let e = r.get_timeout(LONG).unwrap_err();
    let ResultError::Failed(e) = e else {
        panic!("{e:?}")
    };
    assert_eq!(e.index, 5);
    assert_eq!(erx.try_recv().unwrap(), e);
    assert!(rx.try_recv().is_err());
    // starmap_async's callbacks too.
    let (tx, rx) = mpsc::channel();
    let r = pool.starmap_async_with(
        |a: u64, b: u64| a + b,
        [(1, 2), (3, 4)],
        move |v| tx.send(v).unwrap(),
        |e| panic!("{e}"),
    );
    r.wait();
    assert_eq!(rx.try_recv().unwrap(), vec![3, 7]);
}

#[test]
fn apply_async_callbacks_run_on_a_pool_thread() {
    let pool = ThreadPool::new(2).unwrap();
    let (tx, rx) = mpsc::channel();
    let r = pool.apply_async_with(
        sqr,
        7,
        move |v| {
            tx.send((v, std::thread::current().name().map(str::to_owned)))
                .unwrap()
        },
        |e| panic!("{e}"),
    );
    assert_eq!(r.get().unwrap(), 49);
    assert_eq!(
        rx.try_recv().unwrap(),
        (49, Some("mproc-threadpool".to_owned()))
    );
    // test_async_error_callback.
    let (etx, erx) = mpsc::channel();
    let r = pool.apply_async_with(
        boom_at_5,
        5,
        |_| panic!("not this one"),
        move |e| etx.send(e).unwrap(),
    );
    assert!(matches!(r.get(), Err(TaskError::Panicked { .. })));
    assert!(matches!(
        erx.try_recv().unwrap(),
        TaskError::Panicked { .. }
    ));
}

#[test]
fn a_panicking_callback_does_not_kill_the_pool() {
    let pool = ThreadPool::new(1).unwrap();
    let r = pool.apply_async_with(sqr, 3, |_| panic!("callback panics"), |_| {});
    assert_eq!(r.get_timeout(LONG).unwrap(), 9);
    let r = pool.map_async_with(sqr, 0..4u64, |_| panic!("again"), |_| {});
    assert_eq!(r.get_timeout(LONG).unwrap(), vec![0, 1, 4, 9]);
    assert_eq!(pool.apply(sqr, 4).unwrap(), 16);
}

#[test]
fn callbacks_may_use_their_own_pool() {
    // One thread: a callback that waits on its own pool must run the work itself.
    for n in [1, 2] {
        let pool = Arc::new(ThreadPool::new(n).unwrap());
        let (tx, rx) = mpsc::channel();
        let p = pool.clone();
        let r = pool.apply_async_with(
            sqr,
            2,
            move |v| {
                let a = p.apply(sqr, v).unwrap();
                let m = p.map(sqr, 0..5u64).unwrap();
                let nested = p.apply_async_with(sqr, 3, |_| {}, |_| {}).get().unwrap();
                tx.send((a, m, nested)).unwrap();
            },
            |e| panic!("{e}"),
        );
        assert_eq!(r.get_timeout(LONG).unwrap(), 4);
        let got = rx.recv_timeout(LONG).unwrap();
        assert_eq!(got, (16, vec![0, 1, 4, 9, 16], 9));
        // A task may use its pool too, even with one thread.
        let p = pool.clone();
        let inner = pool
            .apply(
                move |x: u64| p.map(sqr, 0..x).unwrap().iter().sum::<u64>(),
                4,
            )
            .unwrap();
        assert_eq!(inner, 14);
    }
}

#[test]
fn a_callback_waits_on_its_own_result() {
    let pool = ThreadPool::new(1).unwrap();
    let slot: Arc<Mutex<Option<mproc_pool::ThreadMapResult<u64>>>> = Arc::default();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    // Hold the only thread until the handle is stored.
    pool.apply_async(move |_: ()| go_rx.lock().unwrap().recv().unwrap(), ());
    let (tx, rx) = mpsc::channel();
    let s2 = slot.clone();
    let r = pool.map_async_with(
        sqr,
        0..3u64,
        move |_| {
            let got = s2.lock().unwrap().as_ref().map(|r| r.get_timeout(LONG));
            tx.send(got).unwrap();
        },
        |e| panic!("{e}"),
    );
    *slot.lock().unwrap() = Some(r);
    go_tx.send(()).unwrap();
    let got = rx.recv_timeout(LONG).unwrap();
    assert_eq!(got, Some(Ok(vec![0, 1, 4])));
    let r = slot.lock().unwrap().take().unwrap();
    assert_eq!(r.get_timeout(LONG).unwrap(), vec![0, 1, 4]);
}

#[test]
fn terminate_fails_pending_work() {
    // test_terminate: terminate with a long queue returns promptly.
    let pool = ThreadPool::new(2).unwrap();
    let r = pool.map_async_chunked(
        |ms: u64| std::thread::sleep(Duration::from_millis(ms)),
        vec![100u64; 10_000],
        Some(1),
    );
    let one = pool.apply_async(sqr, 3);
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    pool.terminate();
    // Only the running items (at most one per thread) were waited for.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let e = r.get_timeout(LONG).unwrap_err();
    assert!(matches!(
        e,
        ResultError::Failed(MapError {
            error: TaskError::Terminated,
            ..
        })
    ));
    assert_eq!(one.get(), Err(TaskError::Terminated));
    assert_eq!(one.successful(), Some(false));
    // Later submissions fail with Closed (Python: ValueError "Pool not running").
    assert_eq!(pool.apply(sqr, 2), Err(TaskError::Closed));
    assert_eq!(pool.map(sqr, 0..3u64).unwrap_err().error, TaskError::Closed);
    let out: Vec<_> = pool.imap(sqr, 0..2u64).collect();
    assert_eq!(out, vec![Err(TaskError::Closed), Err(TaskError::Closed)]);
    pool.join();
}

#[test]
fn close_and_join_drain_the_queue() {
    let pool = ThreadPool::new(2).unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let r = pool.map_async_chunked(
        move |x: u64| {
            std::thread::sleep(Duration::from_millis(2));
            d.fetch_add(1, Ordering::SeqCst);
            x
        },
        0..100u64,
        Some(1),
    );
    pool.close();
    assert_eq!(pool.apply(sqr, 1), Err(TaskError::Closed));
    pool.join();
    assert_eq!(done.load(Ordering::SeqCst), 100);
    assert!(r.ready());
    assert_eq!(r.get().unwrap(), (0..100).collect::<Vec<_>>());
    // join again, terminate after join: no-ops.
    pool.join();
    pool.terminate();
}

#[test]
fn drop_terminates_like_leaving_with() {
    // test_context: `with ThreadPool(2) as p:` then the pool is terminated.
    let (r, pending) = {
        let p = ThreadPool::new(2).unwrap();
        let r = p.map_async(sqr, 0..10u64);
        assert_eq!(
            r.get_timeout(LONG).unwrap(),
            (0..10).map(sqr).collect::<Vec<_>>()
        );
        let pending = p.map_async_chunked(
            |ms: u64| std::thread::sleep(Duration::from_millis(ms)),
            vec![50u64; 200],
            Some(1),
        );
        (r, pending)
    };
    // Results fetched before the drop stay readable.
    assert_eq!(r.get().unwrap().len(), 10);
    assert!(pending.ready());
    assert!(matches!(
        pending.get(),
        Err(MapError {
            error: TaskError::Terminated,
            ..
        })
    ));
}

#[test]
fn callbacks_may_terminate_or_drop_their_pool() {
    let pool = Arc::new(ThreadPool::new(1).unwrap());
    let p = pool.clone();
    let r = pool.apply_async_with(sqr, 2, move |_| p.terminate(), |_| {});
    assert_eq!(r.get_timeout(LONG).unwrap(), 4);
    assert_eq!(pool.apply(sqr, 2), Err(TaskError::Closed));
    // The last handle dropped in a callback.
    let pool = ThreadPool::new(1).unwrap();
    let holder = Arc::new(Mutex::new(Some(pool)));
    let h = holder.clone();
    let r = holder.lock().unwrap().as_ref().unwrap().apply_async_with(
        sqr,
        3,
        move |_| drop(h.lock().unwrap().take()),
        |_| {},
    );
    assert_eq!(r.get_timeout(LONG).unwrap(), 9);
    assert!(holder.lock().unwrap().is_none());
}

#[test]
fn bad_arguments_are_typed_errors() {
    // test_make_pool: Pool(0) raises ValueError.
    assert!(matches!(
        ThreadPool::new(0),
        Err(PoolError::InvalidArgument(_))
    ));
    let p = ThreadPool::builder().build().unwrap();
    assert_eq!(
        p.processes(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}

#[test]
fn initializer_runs_once_per_thread() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    thread_local! {
        static TAG: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let pool = ThreadPool::builder()
        .processes(3)
        .initializer(
            move |tag: u64| {
                TAG.with(|t| t.set(tag));
                s.lock().unwrap().push(std::thread::current().id());
            },
            42,
        )
        .build()
        .unwrap();
    let tags = pool
        .map_chunked(|_: u8| TAG.with(|t| t.get()), 0..30u8, 1)
        .unwrap();
    assert!(tags.iter().all(|&t| t == 42), "{tags:?}");
    pool.close();
    pool.join();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 3);
}

#[test]
fn a_panicking_initializer_breaks_the_pool() {
    let pool = ThreadPool::builder()
        .processes(2)
        .initializer(|_: ()| panic!("init failed"), ())
        .build()
        .unwrap();
    let r = pool.apply_async(sqr, 2);
    match r.get_timeout(LONG) {
        Err(ResultError::Failed(TaskError::Broken { reason })) => {
            assert!(reason.contains("init failed"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(pool.apply(sqr, 2), Err(TaskError::Broken { .. })));
}

#[test]
fn async_result_is_a_future() {
    let pool = ThreadPool::new(2).unwrap();
    let r = pool.apply_async(slow_sqr, (5, 30));
    assert_eq!(block_on(r).unwrap(), 25);
    let m = pool.map_async(sqr, 0..4u64);
    assert_eq!(block_on(m).unwrap(), vec![0, 1, 4, 9]);
}

/// A minimal executor: parks the thread until woken.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    let deadline = Instant::now() + LONG;
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(Instant::now() < deadline, "future never woke");
        std::thread::park_timeout(Duration::from_secs(1));
    }
}

/// The body run in a child process: a ThreadPool works there as in the parent.
fn child_body(n: u64) -> u64 {
    let pool = ThreadPool::new(3).unwrap();
    let v = pool.map_chunked(sqr, 0..n, 7).unwrap();
    let it: u64 = pool.imap_unordered(sqr, 0..n).map(Result::unwrap).sum();
    let e = pool.apply(boom_at_5, 5).unwrap_err();
    assert!(matches!(e, TaskError::Panicked { .. }));
    assert_eq!(it, v.iter().sum::<u64>());
    v.iter().sum()
}

#[test]
fn works_inside_a_child_process() {
    // Under the start method MPROC_START_METHOD names (the suite runs all three). A
    // ThreadPool in the parent first: fork must not inherit a broken state.
    let parent = ThreadPool::new(2).unwrap();
    assert_eq!(parent.apply(sqr, 3).unwrap(), 9);
    let mut p = Process::new(child_body, 100u64).daemon(true);
    p.start().unwrap();
    let got = p.join_timeout(LONG);
    if !matches!(got, Ok(Some(_))) {
        let _ = p.kill();
        let _ = p.join_timeout(LONG);
    }
    assert_eq!(got.unwrap(), Some((0..100u64).map(sqr).sum()));
    assert_eq!(parent.apply(sqr, 4).unwrap(), 16);
}

#[test]
fn a_waiting_task_runs_only_its_own_work() {
    // One thread; a task holding a lock maps on its own pool while another job that
    // needs the lock is queued ahead of the map's chunks. The waiting thread runs the
    // map's chunks itself and never the other job (which would wait for the lock it
    // holds). On failure the pool is leaked rather than joined, so the test fails
    // instead of hanging.
    let pool = Arc::new(std::mem::ManuallyDrop::new(ThreadPool::new(1).unwrap()));
    let m = Arc::new(Mutex::new(0u64));
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (queued_tx, queued_rx) = mpsc::channel::<()>();
    let queued_rx = Mutex::new(queued_rx);
    let (p, m1) = (pool.clone(), m.clone());
    let first = pool.apply_async(
        move |_: ()| {
            let mut g = m1.lock().unwrap();
            started_tx.send(()).unwrap();
            queued_rx.lock().unwrap().recv().unwrap();
            *g = p.map(sqr, 0..4u64).unwrap().iter().sum();
            *g
        },
        (),
    );
    started_rx.recv_timeout(LONG).unwrap();
    let m2 = m.clone();
    let second = pool.apply_async(move |_: ()| *m2.lock().unwrap() + 1, ());
    queued_tx.send(()).unwrap();
    assert_eq!(first.get_timeout(Duration::from_secs(20)), Ok(14));
    assert_eq!(second.get_timeout(Duration::from_secs(20)), Ok(15));
    let pool = Arc::into_inner(pool).unwrap();
    drop(std::mem::ManuallyDrop::into_inner(pool));
}

#[test]
fn join_after_a_failed_map_returns() {
    // test_map_no_failfast (bpo-23992): a map that fails does not hang close + join.
    let pool = ThreadPool::new(2).unwrap();
    let e = pool.map_chunked(boom_at_5, 0..200u64, 1).unwrap_err();
    assert_eq!(e.index, 5);
    let t = Instant::now();
    pool.close();
    pool.join();
    assert!(t.elapsed() < LONG);
}

#[test]
fn task_functions_and_arguments_are_released() {
    // test_release_task_refs: once the work is done, the pool holds no reference to the
    // function, its arguments or its results.
    let pool = ThreadPool::new(2).unwrap();
    let f_ref = Arc::new(());
    let args: Vec<Arc<()>> = (0..10).map(|_| Arc::new(())).collect();
    let f = f_ref.clone();
    let out = pool
        .map_chunked(
            move |a: Arc<()>| {
                let _ = &f;
                Arc::strong_count(&a)
            },
            args.clone(),
            3,
        )
        .unwrap();
    assert!(out.iter().all(|&c| c >= 2));
    let r = pool.apply_async(|a: Arc<()>| a, args[0].clone());
    drop(r.get().unwrap());
    drop(r);
    let mut it = pool.imap(|a: Arc<()>| a, args.clone());
    drop(it.next());
    drop(it);
    pool.close();
    pool.join();
    assert_eq!(Arc::strong_count(&f_ref), 1);
    for a in &args {
        assert_eq!(Arc::strong_count(a), 1);
    }
}

/// An iterator whose `size_hint` claims `claim` items exactly, whatever it holds.
struct Liar {
    left: u64,
    claim: usize,
}

impl Iterator for Liar {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        self.left = self.left.checked_sub(1)?;
        Some(self.left)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.claim, Some(self.claim))
    }
}

#[test]
fn an_input_whose_length_hint_lies_is_taken_as_it_is() {
    let pool = ThreadPool::new(2).unwrap();
    let fewer = pool.map(sqr, Liar { left: 3, claim: 50 }).unwrap();
    assert_eq!(fewer, vec![4, 1, 0]);
    let more = pool.map(sqr, Liar { left: 30, claim: 2 }).unwrap();
    assert_eq!(more, (0..30u64).rev().map(sqr).collect::<Vec<_>>());
}

static GLOBAL: std::sync::LazyLock<ThreadPool> =
    std::sync::LazyLock::new(|| ThreadPool::new(2).unwrap());

/// Uses the program-wide pool: under `fork` the child inherits the parent's, without
/// its threads; under `spawn`/`forkserver` it makes its own.
fn use_global(x: u64) -> (bool, String) {
    match GLOBAL.apply(sqr, x) {
        Ok(v) => (true, v.to_string()),
        Err(e) => (false, e.to_string()),
    }
}

#[test]
fn a_pool_inherited_through_fork_refuses_work() {
    assert_eq!(GLOBAL.apply(sqr, 2).unwrap(), 4);
    let mut p = Process::new(use_global, 5u64).daemon(true);
    p.start().unwrap();
    let got = p.join_timeout(LONG);
    if !matches!(got, Ok(Some(_))) {
        let _ = p.kill();
        let _ = p.join_timeout(LONG);
    }
    let (ok, text) = got.unwrap().unwrap();
    if mproc_spawn::get_start_method() == mproc_spawn::StartMethod::Fork {
        assert!(!ok && text.contains("fork"), "{text}");
    } else {
        assert!(ok && text == "25", "{text}");
    }
    assert_eq!(GLOBAL.apply(sqr, 3).unwrap(), 9);
}

#[test]
fn cancel_a_task_not_started() {
    let pool = ThreadPool::new(1).unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    let gate = pool.apply_async(move |_: ()| rx.lock().unwrap().recv().is_ok(), ());
    let deadline = Instant::now() + LONG;
    while !gate.running() {
        assert!(Instant::now() < deadline, "the gate never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    let queued = pool.apply_async(sqr, 4);
    assert!(!queued.running());
    assert!(!gate.cancel(), "a running task cannot be cancelled");
    assert!(queued.cancel());
    assert!(queued.cancel());
    assert!(queued.cancelled());
    assert_eq!(queued.get(), Err(TaskError::Cancelled));
    assert_eq!(queued.successful(), Some(false));
    tx.send(()).unwrap();
    assert!(gate.get_timeout(LONG).unwrap());
    assert!(!gate.running());
    assert!(!gate.cancelled());
    // A finished task is not cancelled either.
    assert!(!gate.cancel());
    assert_eq!(pool.apply(sqr, 5).unwrap(), 25);
}

#[test]
fn handles_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ThreadPool>();
    send_sync::<mproc_pool::ThreadAsyncResult<String>>();
    send_sync::<mproc_pool::ThreadMapResult<Vec<u8>>>();
    fn send<T: Send>() {}
    send::<mproc_pool::ThreadIMap<std::ops::Range<u64>, u64>>();
    // A ThreadPool shared between threads, each submitting.
    let pool = Arc::new(ThreadPool::new(2).unwrap());
    let hs: Vec<_> = (0..4u64)
        .map(|t| {
            let p = pool.clone();
            std::thread::spawn(move || p.map(move |x: u64| x + t, 0..100u64).unwrap())
        })
        .collect();
    for (t, h) in hs.into_iter().enumerate() {
        let v = h.join().unwrap();
        assert_eq!(v, (0..100u64).map(|x| x + t as u64).collect::<Vec<_>>());
    }
}

#[test]
fn terminate_waits_for_running_tasks_and_keeps_their_results() {
    // Threads cannot be killed: a task running at terminate() finishes, terminate waits
    // for it, and its result is delivered (CPython's ThreadPool leaves it unset forever).
    let pool = ThreadPool::new(1).unwrap();
    let running = pool.apply_async(slow_sqr, (6, 300));
    let deadline = Instant::now() + LONG;
    while !running.running() {
        assert!(Instant::now() < deadline, "the task never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    let queued = pool.apply_async(sqr, 2);
    pool.terminate();
    assert!(
        running.ready(),
        "terminate returned before the running task ended"
    );
    assert_eq!(running.get(), Ok(36));
    assert_eq!(queued.get(), Err(TaskError::Terminated));
}

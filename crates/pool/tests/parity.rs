//! Python parity of the pool (issue 15) and callback re-entrancy (issue 11, item 8):
//! `starmap` of any arity, `Closed` after `terminate()`, callbacks that use their own pool.
use mproc_pool::{Executor, Pool, ResultError, TaskError};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn one(a: u64) -> u64 {
    a + 1
}

fn three(a: u8, b: String, c: i64) -> String {
    format!("{a}-{b}-{c}")
}

#[allow(clippy::too_many_arguments)]
fn twelve(
    a: u64,
    b: u64,
    c: u64,
    d: u64,
    e: u64,
    f: u64,
    g: u64,
    h: u64,
    i: u64,
    j: u64,
    k: u64,
    l: u32,
) -> u64 {
    a + b + c + d + e + f + g + h + i + j + k + l as u64
}

fn pair_fails(a: u64, b: u64) -> u64 {
    if a == 3 {
        panic!("no {a}");
    }
    a * b
}

fn pid_of(a: u64, b: u64) -> (u64, u32) {
    (a + b, std::process::id())
}

#[test]
fn starmap_takes_any_arity_up_to_twelve() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(
        pool.starmap(one, (0..5u64).map(|x| (x,))).unwrap(),
        vec![1, 2, 3, 4, 5]
    );
    let r = pool
        .starmap(
            three,
            vec![(1u8, "x".to_string(), -1i64), (2, "y".into(), 7)],
        )
        .unwrap();
    assert_eq!(r, vec!["1-x--1".to_string(), "2-y-7".to_string()]);
    let t = (1u64, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12u32);
    assert_eq!(pool.starmap(twelve, vec![t; 3]).unwrap(), vec![78; 3]);
    // A closure (even one without captures) is refused, item by item.
    let e = pool
        .starmap(|a: u64, b: u64| a.pow(b as u32), vec![(2, 10), (3, 2)])
        .unwrap_err();
    match e.error {
        TaskError::Panicked { message } => {
            assert!(message.contains("starmap takes a `fn` item"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // The items really run in the workers.
    let me = std::process::id();
    for (sum, pid) in pool
        .starmap_chunked(pid_of, (0..20u64).map(|x| (x, 1)), 3)
        .unwrap()
    {
        assert!(sum >= 1);
        assert_ne!(pid, me);
    }
}

#[test]
fn starmap_async_failure_and_callbacks() {
    let pool = Pool::new(2).unwrap();
    let r = pool.starmap_async(pair_fails, (0..6u64).map(|x| (x, 2)));
    let e = r.get().unwrap_err();
    assert_eq!(e.index, 3);
    assert_eq!(
        e.error,
        TaskError::Panicked {
            message: "no 3".into()
        }
    );
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    pool.starmap_async_with(
        pair_fails,
        vec![(1u64, 5u64), (2, 5)],
        move |v| tx.send(Ok(v)).unwrap(),
        move |e| tx2.send(Err(e.index)).unwrap(),
    )
    .wait();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), Ok(vec![5, 10]));
    let it: Vec<_> = pool
        .istarmap(pair_fails, (0..5u64).map(|x| (x, 1)), 2)
        .collect();
    assert_eq!(it[..3], [Ok(0), Ok(1), Ok(2)]);
    assert!(matches!(it[3], Err(TaskError::Panicked { .. })));
    assert_eq!(it[4], Ok(4));
}

#[test]
fn executor_starmap_zips_arguments() {
    let ex = Executor::new(2).unwrap();
    let got: Vec<u64> = ex
        .starmap(
            twelve,
            (0..10u64).map(|x| (x, x, x, x, x, x, x, x, x, x, x, 1u32)),
            4,
        )
        .map(Result::unwrap)
        .collect();
    let want: Vec<u64> = (0..10u64).map(|x| 11 * x + 1).collect();
    assert_eq!(got, want);
}

#[test]
fn a_task_after_terminate_is_closed_not_terminated() {
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(one, 1), Ok(2));
    pool.terminate();
    let e = pool.apply(one, 1).unwrap_err();
    assert_eq!(e, TaskError::Closed);
    assert_eq!(e.to_string(), "pool not running");
    assert_eq!(
        pool.apply_async(one, 1).get_timeout(LONG),
        Err(ResultError::Failed(TaskError::Closed))
    );
    assert_eq!(pool.map(one, 0..3u64).unwrap_err().error, TaskError::Closed);
    assert_eq!(
        pool.starmap(one, [(1u64,)]).unwrap_err().error,
        TaskError::Closed
    );
    // As after close().
    let pool = Pool::new(1).unwrap();
    pool.close();
    assert_eq!(pool.apply(one, 1), Err(TaskError::Closed));
    pool.join();
    // An executor after shutdown.
    let ex = Executor::new(1).unwrap();
    ex.shutdown(true, false);
    assert_eq!(
        ex.submit(one, 1).result(Some(LONG)),
        Err(ResultError::Failed(TaskError::Closed))
    );
}

fn sqr(x: u64) -> u64 {
    x * x
}

fn boom(x: u64) -> u64 {
    panic!("boom {x}")
}

/// A callback that uses its own pool (`apply`, `map`, `apply_async(..).get()`), on
/// the pool's thread (nobody waits) — it used to wait for ever on the engine its own
/// thread held.
#[test]
fn callbacks_may_use_their_own_pool_when_nobody_waits() {
    let pool = Arc::new(Pool::new(2).unwrap());
    let (tx, rx) = mpsc::channel::<(&str, u64)>();

    let (p, t) = (pool.clone(), tx.clone());
    let (p2, t2) = (pool.clone(), tx.clone());
    let _r = pool.apply_async_with(
        sqr,
        3,
        move |v| t.send(("apply ok", p.apply(sqr, v).unwrap())).unwrap(),
        move |_| t2.send(("apply err", p2.apply(sqr, 0).unwrap())).unwrap(),
    );
    assert_eq!(rx.recv_timeout(LONG).unwrap(), ("apply ok", 81));

    let (p, t) = (pool.clone(), tx.clone());
    let (p2, t2) = (pool.clone(), tx.clone());
    let _r = pool.apply_async_with(
        boom,
        1,
        move |_| t.send(("boom ok?", p.apply(sqr, 0).unwrap())).unwrap(),
        move |e| {
            assert!(matches!(e, TaskError::Panicked { .. }));
            let nested = p2.apply_async(sqr, 5).get().unwrap();
            t2.send(("apply err", nested)).unwrap()
        },
    );
    assert_eq!(rx.recv_timeout(LONG).unwrap(), ("apply err", 25));

    let (p, t) = (pool.clone(), tx.clone());
    let (p2, t2) = (pool.clone(), tx.clone());
    let _m = pool.map_async_with(
        sqr,
        0..4u64,
        move |v| {
            let again = p.map(sqr, v).unwrap();
            t.send(("map ok", again.iter().sum())).unwrap()
        },
        move |_| t2.send(("map err?", p2.apply(sqr, 0).unwrap())).unwrap(),
    );
    assert_eq!(rx.recv_timeout(LONG).unwrap(), ("map ok", 1 + 16 + 81));

    let (p, t) = (pool.clone(), tx.clone());
    let (p2, t2) = (pool.clone(), tx);
    let _m = pool.map_async_with(
        boom,
        0..4u64,
        move |_| t.send(("map ok?", p.apply(sqr, 0).unwrap())).unwrap(),
        move |e| {
            let n = p2.map(sqr, 0..e.index as u64 + 2).unwrap().len() as u64;
            t2.send(("map err", n)).unwrap()
        },
    );
    let (what, n) = rx.recv_timeout(LONG).unwrap();
    assert_eq!(what, "map err");
    assert!(n >= 2);
}

/// The same while a caller waits on the result and so drives the pool itself: the
/// callback runs on the caller's thread, before `get()` returns, outside the engine.
#[test]
fn callbacks_may_use_their_own_pool_while_a_caller_drives() {
    let pool = Arc::new(Pool::new(2).unwrap());
    let (tx, rx) = mpsc::channel::<u64>();

    let (p, t) = (pool.clone(), tx.clone());
    let r = pool.apply_async_with(
        sqr,
        4,
        move |v| t.send(p.apply(sqr, v).unwrap()).unwrap(),
        |_| {},
    );
    assert_eq!(r.get_timeout(LONG), Ok(16));
    // `get` returned after the callback ran.
    assert_eq!(rx.try_recv(), Ok(256));

    let (p, t) = (pool.clone(), tx.clone());
    let r = pool.apply_async_with(
        boom,
        4,
        |_| {},
        move |_| t.send(p.map(sqr, 0..3u64).unwrap().iter().sum()).unwrap(),
    );
    assert!(matches!(
        r.get_timeout(LONG),
        Err(ResultError::Failed(TaskError::Panicked { .. }))
    ));
    assert_eq!(rx.try_recv(), Ok(5));

    let (p, t) = (pool.clone(), tx.clone());
    let m = pool.map_async_with(
        sqr,
        1..4u64,
        move |v| {
            let nested = p.apply_async(sqr, v[2]).get().unwrap();
            t.send(nested).unwrap()
        },
        |_| {},
    );
    assert_eq!(m.get().unwrap(), vec![1, 4, 9]);
    assert_eq!(rx.try_recv(), Ok(81));

    let (p, t) = (pool.clone(), tx);
    let m = pool.map_async_with(
        boom,
        1..4u64,
        |_| {},
        move |e| t.send(p.apply(sqr, e.index as u64 + 10).unwrap()).unwrap(),
    );
    assert!(m.get().is_err());
    let v = rx.try_recv().unwrap();
    assert!((100..=144).contains(&v), "{v}");
    // The pool is still whole.
    assert_eq!(pool.map(sqr, 0..100u64).unwrap().len(), 100);
}

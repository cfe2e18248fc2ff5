//! `concurrent.futures.ProcessPoolExecutor` behaviours (ported in spirit from
//! Lib/test/test_concurrent_futures), callbacks, `map_with`, and results awaited as
//! `std::future::Future`s.
use mproc_pool::{Executor, Pool, ResultError, ReturnWhen, TaskError, as_completed, wait_futures};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

fn sqr(x: u64) -> u64 {
    x * x
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn fail(_: u64) -> u64 {
    panic!("failed on purpose");
}

// `map_with` hands the state as `&S`, and `S` here is `Vec<u64>`.
#[allow(clippy::ptr_arg)]
fn scaled(k: &Vec<u64>, x: u64) -> u64 {
    k.iter().sum::<u64>() * x
}

/// A minimal `block_on`: parks the thread until woken.
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

#[test]
fn submit_result_and_await() {
    let ex = Executor::new(2).unwrap();
    let f = ex.submit(sqr, 12);
    assert_eq!(f.result(Some(Duration::from_secs(30))).unwrap(), 144);
    assert!(f.done());
    let g = ex.submit(sleep_ms, 50);
    assert_eq!(block_on(g.clone()).unwrap(), 50);
    let h = ex.submit(fail, 0);
    assert!(matches!(
        h.exception(None),
        Ok(Some(TaskError::Panicked { .. }))
    ));
    let r: Vec<u64> = ex.map(sqr, 0..10u64, 3).map(Result::unwrap).collect();
    assert_eq!(r[9], 81);
}

#[test]
fn as_completed_and_wait() {
    let ex = Executor::new(2).unwrap();
    let fs: Vec<_> = [400u64, 10]
        .iter()
        .map(|&ms| ex.submit(sleep_ms, ms))
        .collect();
    let order: Vec<(usize, u64)> = as_completed(&fs, Some(Duration::from_secs(30)))
        .map(|r| {
            let (i, f) = r.unwrap();
            (i, f.result(None).unwrap())
        })
        .collect();
    assert_eq!(order, vec![(1, 10), (0, 400)]);

    let fs: Vec<_> = [1000u64, 10]
        .iter()
        .map(|&ms| ex.submit(sleep_ms, ms))
        .collect();
    let (done, not_done) = wait_futures(
        &fs,
        Some(Duration::from_secs(30)),
        ReturnWhen::FirstCompleted,
    );
    assert_eq!(done, vec![1]);
    assert_eq!(not_done, vec![0]);
    let (done, not_done) = wait_futures(
        &fs,
        Some(Duration::from_millis(50)),
        ReturnWhen::AllCompleted,
    );
    assert_eq!((done, not_done), (vec![1], vec![0]));
    let (done, _) = wait_futures(&fs, None, ReturnWhen::AllCompleted);
    assert_eq!(done, vec![0, 1]);

    let fs = vec![ex.submit(sleep_ms, 1000)];
    let t = Instant::now();
    let mut it = as_completed(&fs, Some(Duration::from_millis(100)));
    assert!(matches!(it.next(), Some(Err(ResultError::Timeout))));
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn shutdown_cancels_pending_futures() {
    let ex = Executor::new(1).unwrap();
    let running = ex.submit(sleep_ms, 300);
    std::thread::sleep(Duration::from_millis(100));
    let queued: Vec<_> = (0..5).map(|i| ex.submit(sqr, i)).collect();
    ex.shutdown(true, true);
    assert_eq!(running.result(None).unwrap(), 300);
    for q in &queued {
        assert!(q.cancelled());
        assert_eq!(
            q.result(None),
            Err(ResultError::Failed(TaskError::Cancelled))
        );
    }
    assert_eq!(
        ex.submit(sqr, 1).result(None),
        Err(ResultError::Failed(TaskError::Closed))
    );
}

#[test]
fn callbacks_run_in_the_parent_before_get_returns() {
    let pool = Pool::new(2).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s1, s2) = (seen.clone(), seen.clone());
    let r = pool.apply_async_with(
        sqr,
        6,
        move |v| {
            s1.lock()
                .unwrap()
                .push(format!("ok {v} in {}", std::process::id()))
        },
        move |e| s2.lock().unwrap().push(format!("err {e}")),
    );
    assert_eq!(r.get().unwrap(), 36);
    let (s3, s4) = (seen.clone(), seen.clone());
    let m = pool.map_async_with(
        fail,
        0..3u64,
        move |v| s3.lock().unwrap().push(format!("ok {v:?}")),
        move |e| s4.lock().unwrap().push(format!("map err at {}", e.error)),
    );
    assert!(m.get().is_err());
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], format!("ok 36 in {}", std::process::id()));
    assert!(seen[1].starts_with("map err at task panicked: failed on purpose"));
}

#[test]
fn map_with_shared_state() {
    let pool = Pool::new(2).unwrap();
    let r = pool.map_with(vec![1u64, 2, 3], scaled, 0..10u64).unwrap();
    assert_eq!(r, (0..10).map(|x| 6 * x).collect::<Vec<_>>());
    // A second call with other state is not confused with the first.
    let r = pool.map_with(vec![10u64], scaled, 0..3u64).unwrap();
    assert_eq!(r, vec![0, 10, 20]);
}

#[test]
fn async_result_is_a_future() {
    let pool = Pool::new(1).unwrap();
    let r = pool.apply_async(sleep_ms, 30);
    assert_eq!(block_on(r).unwrap(), 30);
}

#[test]
fn a_callback_may_terminate_its_own_pool() {
    let pool = Arc::new(Pool::new(1).unwrap());
    let p2 = pool.clone();
    let r = pool.apply_async_with(sqr, 3, move |_| p2.terminate(), |_| {});
    assert_eq!(r.get_timeout(Duration::from_secs(30)).unwrap(), 9);
    let later = pool.apply_async(sqr, 4);
    assert_eq!(
        later.get_timeout(Duration::from_secs(30)),
        Err(ResultError::Failed(TaskError::Closed))
    );
}

fn my_pid(_: u64) -> i32 {
    std::process::id() as i32
}

#[test]
fn executor_max_tasks_per_child_and_broken_initializer() {
    let ex = Pool::builder()
        .processes(1)
        .maxtasksperchild(1)
        .build_executor()
        .unwrap();
    let pids: Vec<i32> = (0..4)
        .map(|i| ex.submit(my_pid, i).result(None).unwrap())
        .collect();
    let distinct: std::collections::HashSet<_> = pids.iter().collect();
    assert_eq!(distinct.len(), 4, "{pids:?}");

    fn bad_init(_: u8) {
        panic!("no");
    }
    let ex = Pool::builder()
        .processes(1)
        .initializer(bad_init, 0)
        .build_executor()
        .unwrap();
    assert!(matches!(
        ex.submit(sqr, 1).result(Some(Duration::from_secs(30))),
        Err(ResultError::Failed(TaskError::Broken { .. }))
    ));
}

#[test]
fn add_done_callback_and_imap_next_timeout() {
    let ex = Executor::new(1).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let f = ex.submit(sleep_ms, 100);
    let s1 = seen.clone();
    f.add_done_callback(move |f| s1.lock().unwrap().push(f.result(None).unwrap()));
    assert_eq!(f.result(None).unwrap(), 100);
    // Added after it finished: runs at once, here.
    let s2 = seen.clone();
    f.add_done_callback(move |f| s2.lock().unwrap().push(f.result(None).unwrap() + 1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(*seen.lock().unwrap(), vec![100, 101]);

    let pool = Pool::new(1).unwrap();
    let mut it = pool.imap(sleep_ms, [600u64, 1]);
    assert_eq!(
        it.next_timeout(Duration::from_millis(50)),
        Some(Err(ResultError::Timeout))
    );
    assert_eq!(it.next_timeout(Duration::from_secs(30)), Some(Ok(600)));
    assert_eq!(it.next(), Some(Ok(1)));
    assert_eq!(it.next(), None);
}

#[test]
fn a_callback_may_wait_on_its_own_result() {
    let pool = Arc::new(Pool::new(1).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let slot: Arc<Mutex<Option<mproc_pool::AsyncResult<u64>>>> = Arc::new(Mutex::new(None));
    let s2 = slot.clone();
    let r = pool.apply_async_with(
        sleep_ms,
        50,
        move |_| {
            // Python would block for ever here; the value is already in.
            let deadline = Instant::now() + Duration::from_secs(10);
            let me = loop {
                if let Some(me) = s2.lock().unwrap().clone() {
                    break me;
                }
                assert!(Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(1));
            };
            tx.send(me.get()).unwrap();
        },
        |_| {},
    );
    *slot.lock().unwrap() = Some(r.clone());
    assert_eq!(r.get_timeout(Duration::from_secs(30)).unwrap(), 50);
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), Ok(50));
}

//! Every mproc crate glob-imported at once (and the prelude on its own, below): the
//! names must not clash, with each other or with std's prelude (`Future`). Each name
//! that once clashed is used, so an ambiguity is a compile error here.
use mproc::channel::*;
use mproc::core::*;
use mproc::pool::*;
use mproc::shm::*;
use mproc::spawn::*;
use mproc::sync::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn double(x: u64) -> u64 {
    x * 2
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn put_one(q: Queue<u64>) {
    q.put(41).unwrap();
}

fn is_future<F: Future>(_: &F) -> bool {
    true
}

#[test]
fn all_crates_glob_imported_together() {
    // The pool's names…
    let pool = Pool::new(2).unwrap();
    let r: Result<u64, ResultError> = pool.apply_async(double, 4).get_timeout(LONG);
    assert_eq!(r, Ok(8));
    assert_eq!(pool.starmap(add, [(1u64, 2u64)]).unwrap(), vec![3]);
    let ex = Executor::new(1).unwrap();
    let f: TaskFuture<u64> = ex.submit(double, 5);
    assert!(is_future(&f));
    let (done, _) = wait_futures(
        std::slice::from_ref(&f),
        Some(LONG),
        ReturnWhen::AllCompleted,
    );
    assert_eq!(done, vec![0]);
    assert_eq!(f.result(None), Ok(10));
    // … beside the channel's.
    let q: Queue<u64> = Queue::new().unwrap();
    assert!(matches!(q.try_get(), Err(GetError::Empty)));
    let mut p = Process::new(put_one, q.clone());
    p.start().unwrap();
    assert_eq!(q.get_timeout(LONG).unwrap(), 41);
    p.join().unwrap();
    let (a, b) = Pipe(true).unwrap();
    a.send(&1u8).unwrap();
    let ready = wait(&[&b], Some(LONG)).unwrap();
    assert_eq!(ready.len(), 1);
    // core, sync, shm and spawn names.
    let _r: Region = Region::new(64).unwrap();
    let l = Lock::new().unwrap();
    drop(l.acquire());
    let _m: StartMethod = get_start_method();
    assert!(cpu_count() >= 1);
    let _: Option<SharedMemory> = None;
}

mod prelude_alone {
    use mproc::prelude::*;

    fn triple(x: u64) -> u64 {
        x * 3
    }

    #[test]
    fn prelude_brings_the_everyday_names() {
        let pool = Pool::new(1).unwrap();
        assert_eq!(pool.map(triple, 0..3u64).unwrap(), vec![0, 3, 6]);
        let (a, b) = Pipe(true).unwrap();
        a.send(&String::from("x")).unwrap();
        assert_eq!(b.recv::<String>().unwrap(), "x");
        let e = Event::new().unwrap();
        e.set();
        assert!(e.is_set());
        // Python's `get_logger` / `log_to_stderr` (not called: they switch logging on).
        let _: fn() -> mproc::Logger = get_logger;
        let _: fn(Option<mproc::LogLevel>) -> mproc::Logger = log_to_stderr;
    }
}

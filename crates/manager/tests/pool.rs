//! A process pool held by a manager's server (Python's `manager.Pool(processes)`), used
//! across processes under the start method the run selects (`MPROC_START_METHOD`).
//! `test_pool` follows CPython's `TestSyncManagerTypes.test_pool`; the others cover
//! results, task failures, other clients during a long map, and shutdown.
use mproc_manager::{
    AsyncResultProxy, DictProxy, ListProxy, LockProxy, Manager, ManagerError, PoolProxy,
};
use mproc_pool::{MapError, TaskError};
use mproc_spawn::Process;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn square(x: u64) -> u64 {
    x * x
}

fn mul(a: u64, b: u64) -> u64 {
    a * b
}

fn boom(x: u32) -> u32 {
    if x == 3 {
        panic!("boom at {x}");
    }
    x
}

fn die(_: u32) -> u32 {
    // SAFETY: a worker process kills itself, as an OOM kill would.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL)
    };
    0
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Marks that it started (`<path>.started`), then waits (at most a minute) until the
/// file `path` exists.
fn wait_for_file(path: String) -> u32 {
    let _ = std::fs::write(format!("{path}.started"), b"");
    let t = Instant::now();
    while !Path::new(&path).exists() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    1
}

fn marker(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir()
        .join(format!(
            "mproc-mgrpool-{tag}-{}-{nanos}",
            std::process::id()
        ))
        .to_str()
        .unwrap()
        .to_owned()
}

fn wait_started(path: &str) {
    let started = format!("{path}.started");
    let t = Instant::now();
    while !Path::new(&started).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no task of the map started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Removes a marker's files when dropped, even when the test fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(format!("{}.started", self.0));
    }
}

/// Whether `pid` is gone (no such process, or a zombie nobody reaped yet).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_ascii_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

fn wait_dead(pid: i32, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if dead(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Every live descendant of `root`, from the process table.
fn descendants(root: i32) -> HashSet<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_ascii_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = HashSet::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            if out.insert(c) {
                todo.push(c);
            }
        }
    }
    out
}

/// CPython's `_test_pool`: the child uses the manager's pool and leaves it as `with
/// obj:` does, by terminating it.
fn child_uses_pool(pool: PoolProxy) -> u64 {
    let s = pool.map(square, 0..10u64).unwrap().into_iter().sum();
    pool.terminate().unwrap();
    s
}

#[test]
fn test_pool() {
    let m = Manager::start().unwrap();
    let pool = m.pool(4).unwrap();
    assert_eq!(pool.pids().unwrap().len(), 4);
    let mut p = Process::new(child_uses_pool, pool.clone());
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), 285);
    assert_eq!(p.exitcode(), Some(0));
    // The child terminated the one pool every holder shares.
    match pool.apply(square, 2) {
        Err(ManagerError::Task(TaskError::Closed)) => {}
        other => panic!("expected a closed pool, got {other:?}"),
    }
    m.shutdown().unwrap();
}

fn child_gets(r: AsyncResultProxy<Vec<u64>>) -> Vec<u64> {
    r.get().unwrap()
}

#[test]
fn map_apply_and_async_results_are_right() {
    let m = Manager::start().unwrap();
    let pool = m.pool(2).unwrap();
    let squares: Vec<u64> = (0..20).map(|x| x * x).collect();
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
    assert_eq!(pool.map(square, 0..20u64).unwrap(), squares);
    assert_eq!(pool.map_chunked(square, 0..20u64, 3).unwrap(), squares);
    assert_eq!(pool.map(square, Vec::new()).unwrap(), Vec::<u64>::new());
    // Items and results larger than a doorbell buffer travel on the socket.
    let big = pool.map(square, 0..50_000u64).unwrap();
    assert_eq!(big.len(), 50_000);
    assert!(
        big.iter()
            .enumerate()
            .all(|(i, &r)| r == (i as u64) * (i as u64))
    );
    assert_eq!(pool.starmap(mul, [(2, 3), (4, 5)]).unwrap(), [6, 20]);

    let a = pool.apply_async(square, 9).unwrap();
    assert_eq!(a.get().unwrap(), 81);
    assert!(a.ready().unwrap());
    assert_eq!(a.successful().unwrap(), Some(true));
    assert_eq!(a.get().unwrap(), 81, "a result can be fetched again");

    let slow = pool.apply_async(nap, 1500).unwrap();
    assert!(matches!(
        slow.get_timeout(Duration::from_millis(10)),
        Err(ManagerError::Timeout)
    ));
    assert_eq!(slow.successful().unwrap(), None);
    assert!(slow.wait_timeout(Duration::from_secs(60)).unwrap());
    assert_eq!(slow.get().unwrap(), 1500);

    let ma = pool.map_async(square, 0..5u64).unwrap();
    // The result proxy crosses into a child, which waits on the same result.
    let mut p = Process::new(child_gets, ma.clone());
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), [0, 1, 4, 9, 16]);
    assert_eq!(ma.get().unwrap(), [0, 1, 4, 9, 16]);
    let sa = pool.starmap_async(mul, vec![(1, 1), (2, 2)]).unwrap();
    assert_eq!(sa.get().unwrap(), [1, 4]);
    let chunked = pool.map_async_chunked(square, 0..20u64, Some(7)).unwrap();
    assert_eq!(chunked.get().unwrap(), squares);
    let pairs: Vec<(u64, u64)> = (0..20).map(|x| (x, x)).collect();
    assert_eq!(
        pool.starmap_chunked(mul, pairs.clone(), 6).unwrap(),
        squares
    );
    let sc = pool.starmap_async_chunked(mul, pairs, Some(4)).unwrap();
    assert_eq!(sc.get().unwrap(), squares);
    let ic: Vec<u64> = pool
        .imap_chunked(square, 0..20u64, 5)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ic, squares);
    let mut iu: Vec<u64> = pool
        .imap_unordered_chunked(square, 0..20u64, 3)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    iu.sort();
    assert_eq!(iu, squares);

    let ordered: Vec<u64> = pool
        .imap(square, 0..20u64)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ordered, squares);
    let mut any: Vec<u64> = pool
        .imap_unordered(square, 0..20u64)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    any.sort();
    assert_eq!(any, squares);
    let mut it = pool.imap(nap, [1500u64]).unwrap();
    assert!(matches!(
        it.next_timeout(Duration::from_millis(10)),
        Some(Err(ManagerError::Timeout))
    ));
    assert_eq!(it.next().unwrap().unwrap(), 1500);
    assert!(it.next().is_none());

    pool.close().unwrap();
    pool.join().unwrap();
    match pool.apply(square, 1) {
        Err(ManagerError::Task(TaskError::Closed)) => {}
        other => panic!("expected a closed pool, got {other:?}"),
    }
    m.shutdown().unwrap();
}

fn record((d, i): (DictProxy<u32, u32>, u32)) -> u32 {
    d.insert(&i, &(i * i)).unwrap();
    i
}

#[test]
fn tasks_take_proxies_of_the_same_manager() {
    let m = Manager::start().unwrap();
    let pool = m.pool(2).unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    let args: Vec<_> = (0..6).map(|i| (d.clone(), i)).collect();
    assert_eq!(pool.map(record, args).unwrap(), [0, 1, 2, 3, 4, 5]);
    let mut items = d.items().unwrap();
    items.sort();
    assert_eq!(items, (0..6).map(|i| (i, i * i)).collect::<Vec<_>>());
    m.shutdown().unwrap();
}

#[test]
fn a_failed_task_is_a_typed_error_and_the_pool_goes_on() {
    let m = Manager::start().unwrap();
    let pool = m.pool(2).unwrap();
    match pool.apply(boom, 3) {
        Err(ManagerError::Task(TaskError::Panicked { message })) => {
            assert!(message.contains("boom at 3"), "{message}")
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    match pool.map(boom, 0..6u32) {
        Err(ManagerError::Map(MapError {
            index: 3,
            error: TaskError::Panicked { .. },
        })) => {}
        other => panic!("expected item 3's panic, got {other:?}"),
    }
    let r = pool.apply_async(boom, 3).unwrap();
    assert!(matches!(
        r.get(),
        Err(ManagerError::Task(TaskError::Panicked { .. }))
    ));
    assert_eq!(r.successful().unwrap(), Some(false));
    let items: Vec<_> = pool.imap(boom, 0..5u32).unwrap().collect();
    assert_eq!(items.len(), 5);
    assert!(matches!(
        items[3],
        Err(ManagerError::Task(TaskError::Panicked { .. }))
    ));
    assert_eq!(items[4].as_ref().unwrap(), &4);
    // A worker that dies fails its task alone; the pool replaces it.
    match pool.apply(die, 0) {
        Err(ManagerError::Task(TaskError::WorkerLost { signal, .. })) => {
            assert_eq!(signal, Some(libc::SIGKILL))
        }
        other => panic!("expected a lost worker, got {other:?}"),
    }
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
    assert_eq!(pool.map(square, 0..4u64).unwrap(), [0, 1, 4, 9]);
    m.shutdown().unwrap();
}

fn appender((l, n): (ListProxy<u32>, u32)) {
    for i in 0..n {
        l.append(&i).unwrap();
    }
}

#[test]
fn a_long_map_does_not_block_other_clients() {
    let m = Manager::start().unwrap();
    let pool = m.pool(2).unwrap();
    let l = m.list::<u32>().unwrap();
    let path = marker("block");
    let _cleanup = Cleanup(path.clone());
    let (p2, arg) = (pool.clone(), path.clone());
    // The map cannot finish before the marker file exists.
    let mapper = std::thread::spawn(move || p2.map(wait_for_file, vec![arg; 4]));
    wait_started(&path);
    let mut c = Process::new(appender, (l.clone(), 50));
    c.start().unwrap();
    let joined = c.join_timeout(Duration::from_secs(60));
    // This process's own other calls go on too (on another connection).
    l.append(&99).unwrap();
    let mapping = !mapper.is_finished();
    std::fs::write(&path, b"").unwrap();
    let mapped = mapper.join().unwrap();
    assert!(
        matches!(joined, Ok(Some(()))),
        "the second client did not finish: {joined:?}"
    );
    assert!(mapping, "the map ended before its marker existed");
    assert_eq!(mapped.unwrap(), [1, 1, 1, 1]);
    assert_eq!(l.len().unwrap(), 51);
    m.shutdown().unwrap();
}

fn child_maps((pool, lock, path): (PoolProxy, LockProxy, String)) -> Vec<u32> {
    lock.acquire().unwrap();
    pool.map(wait_for_file, vec![path; 2]).unwrap()
}

#[test]
fn a_client_killed_during_a_map_leaves_the_server_and_pool_working() {
    let m = Manager::start().unwrap();
    let pool = m.pool(2).unwrap();
    let lock = m.lock().unwrap();
    let path = marker("killed");
    let _cleanup = Cleanup(path.clone());
    let mut c = Process::new(child_maps, (pool.clone(), lock.clone(), path.clone()));
    c.start().unwrap();
    wait_started(&path);
    c.kill().unwrap();
    let _ = c.join_timeout(Duration::from_secs(30));
    assert_eq!(c.exitcode(), Some(-libc::SIGKILL));
    // The lock the child held is released when its session ends, which needs the
    // connection waiting on its map to notice it left: before the map could end.
    let freed = lock.acquire_timeout(Some(Duration::from_secs(30)));
    assert!(matches!(freed, Ok(true)), "{freed:?}");
    // The server goes on; the orphaned tasks finish once their marker exists, and the
    // pool serves the next map.
    let l = m.list::<u8>().unwrap();
    l.append(&1).unwrap();
    std::fs::write(&path, b"").unwrap();
    assert_eq!(pool.map(square, 0..4u64).unwrap(), [0, 1, 4, 9]);
    m.shutdown().unwrap();
}

#[test]
fn shutdown_during_a_map_is_a_typed_error_and_leaves_no_process() {
    let m = Manager::start().unwrap();
    let server = m.pid().unwrap();
    let pool = m.pool(2).unwrap();
    let workers = pool.pids().unwrap();
    assert_eq!(workers.len(), 2);
    let path = marker("shutdown");
    let _cleanup = Cleanup(path.clone());
    let (p2, arg) = (pool.clone(), path.clone());
    // Its marker never comes: the map runs until the shutdown.
    let mapper = std::thread::spawn(move || p2.map(wait_for_file, vec![arg; 4]));
    wait_started(&path);
    let tree = descendants(server);
    for w in &workers {
        assert!(tree.contains(w), "worker {w} is not under the server");
    }
    m.shutdown().unwrap();
    let r = mapper.join().unwrap();
    assert!(
        matches!(
            r,
            Err(ManagerError::ServerGone)
                | Err(ManagerError::Map(MapError {
                    error: TaskError::Terminated,
                    ..
                }))
        ),
        "{r:?}"
    );
    assert!(dead(server));
    for pid in tree {
        assert!(
            wait_dead(pid, Duration::from_secs(10)),
            "process {pid} outlived the manager's server"
        );
    }
    assert!(matches!(
        pool.apply(square, 1),
        Err(ManagerError::ServerGone)
    ));
}

#[test]
fn a_killed_server_takes_its_pool_with_it() {
    let m = Manager::start().unwrap();
    let server = m.pid().unwrap();
    let pool = m.pool(2).unwrap();
    let path = marker("sigkill");
    let _cleanup = Cleanup(path.clone());
    let (p2, arg) = (pool.clone(), path.clone());
    let mapper = std::thread::spawn(move || p2.map(wait_for_file, vec![arg; 4]));
    wait_started(&path);
    let tree = descendants(server);
    assert!(tree.len() >= 2, "{tree:?}");
    // SAFETY: SIGKILL to the server process this test started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(server, libc::SIGKILL)
    };
    let r = mapper.join().unwrap();
    assert!(matches!(r, Err(ManagerError::ServerGone)), "{r:?}");
    for pid in tree {
        assert!(
            wait_dead(pid, Duration::from_secs(10)),
            "process {pid} outlived the killed server"
        );
    }
    drop(pool);
    drop(m);
}

#[test]
fn dropping_the_last_proxy_terminates_the_pool() {
    let m = Manager::start().unwrap();
    let pool = m.pool(2).unwrap();
    let workers = pool.pids().unwrap();
    let n = m.number_of_objects().unwrap();
    drop(pool);
    assert_eq!(m.number_of_objects().unwrap(), n - 1);
    for w in workers {
        assert!(
            wait_dead(w, Duration::from_secs(10)),
            "worker {w} outlived its pool"
        );
    }
    m.shutdown().unwrap();
}

static BASE: AtomicU64 = AtomicU64::new(0);

fn init_base(base: u64) {
    BASE.store(base, Ordering::Relaxed);
}

fn init_panics(_: u64) {
    panic!("initializer refused");
}

fn offset(x: u64) -> u64 {
    BASE.load(Ordering::Relaxed) + x
}

fn my_pid(_: u32) -> i32 {
    std::process::id() as i32
}

#[test]
fn pool_options_follow_python() {
    let m = Manager::start().unwrap();
    // initializer / initargs: run in every worker before its tasks.
    let pool = m
        .pool_builder()
        .processes(2)
        .initializer(init_base, 1000)
        .build()
        .unwrap();
    assert_eq!(
        pool.map(offset, 0..6u64).unwrap(),
        [1000, 1001, 1002, 1003, 1004, 1005]
    );
    drop(pool);

    // maxtasksperchild = 1: every task runs in a fresh worker.
    let pool = m
        .pool_builder()
        .processes(1)
        .maxtasksperchild(1)
        .build()
        .unwrap();
    let pids: HashSet<i32> = (0..3).map(|i| pool.apply(my_pid, i).unwrap()).collect();
    assert_eq!(pids.len(), 3, "{pids:?}");
    drop(pool);

    // A task past the time limit fails alone; the pool goes on.
    let pool = m
        .pool_builder()
        .processes(1)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    match pool.apply(nap, 30_000) {
        Err(ManagerError::Task(TaskError::TimedOut { limit, .. })) => {
            assert_eq!(limit, Duration::from_millis(300))
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(pool.apply(square, 6).unwrap(), 36);
    drop(pool);

    // An initializer that panics breaks the pool: tasks fail, nothing hangs.
    let pool = m
        .pool_builder()
        .processes(1)
        .initializer(init_panics, 0)
        .build();
    if let Ok(pool) = pool {
        match pool.apply(square, 1) {
            Err(ManagerError::Task(TaskError::Broken { .. })) => {}
            other => panic!("expected a broken pool, got {other:?}"),
        }
    }
    // A pool of the CPU count by default.
    let pool = m.pool_builder().build().unwrap();
    assert_eq!(
        pool.pids().unwrap().len(),
        std::thread::available_parallelism().unwrap().get()
    );
    m.shutdown().unwrap();
}

fn child_maps_range((pool, base): (PoolProxy, u64)) -> Vec<u64> {
    let mut out = Vec::new();
    for round in 0..5 {
        out.extend(
            pool.map(square, base + round * 10..base + round * 10 + 10)
                .unwrap(),
        );
    }
    out
}

#[test]
fn clients_map_on_one_pool_at_once() {
    let m = Manager::start().unwrap();
    let pool = m.pool(2).unwrap();
    let mut kids: Vec<_> = (0..3u64)
        .map(|k| {
            let mut p = Process::new(child_maps_range, (pool.clone(), k * 1000));
            p.start().unwrap();
            (k, p)
        })
        .collect();
    // This process maps too, meanwhile.
    for _ in 0..5 {
        assert_eq!(
            pool.map(square, 0..10u64).unwrap(),
            (0..10).map(|x| x * x).collect::<Vec<_>>()
        );
    }
    for (k, p) in kids.iter_mut() {
        let k = *k;
        let want: Vec<u64> = (k * 1000..k * 1000 + 50).map(|x| x * x).collect();
        assert_eq!(p.join().unwrap(), want);
    }
    m.shutdown().unwrap();
}

#[test]
fn a_pool_over_tcp() {
    let m = Manager::builder()
        .address(mproc_channel::Address::tcp("127.0.0.1:0".parse().unwrap()))
        .authkey(b"pool over tcp".to_vec())
        .start()
        .unwrap();
    let remote = Manager::connect(m.address(), b"pool over tcp").unwrap();
    let pool = remote.pool(2).unwrap();
    assert_eq!(pool.map(square, 0..5u64).unwrap(), [0, 1, 4, 9, 16]);
    let r = pool.apply_async(square, 12).unwrap();
    assert_eq!(r.get().unwrap(), 144);
    let mut p = Process::new(child_uses_pool, pool.clone());
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), 285);
    drop((pool, r, remote));
    m.shutdown().unwrap();
}

fn child_maps_only(pool: PoolProxy) -> u64 {
    pool.map(square, 0..10u64).unwrap().into_iter().sum()
}

#[test]
fn the_owner_may_drop_its_proxy_while_a_child_uses_the_pool() {
    let m = Manager::start().unwrap();
    let before = m.number_of_objects().unwrap();
    let pool = m.pool(2).unwrap();
    let workers = pool.pids().unwrap();
    let mut p = Process::new(child_maps_only, pool.clone());
    p.start().unwrap();
    // The proxy on its way to the child keeps the pool.
    drop(pool);
    assert_eq!(p.join().unwrap(), 285);
    // With the child's reference gone too, the pool is freed and its workers end.
    let t = Instant::now();
    while m.number_of_objects().unwrap() != before {
        assert!(t.elapsed() < Duration::from_secs(10), "the pool stayed");
        std::thread::sleep(Duration::from_millis(10));
    }
    for w in workers {
        assert!(
            wait_dead(w, Duration::from_secs(10)),
            "worker {w} outlived its pool"
        );
    }
    m.shutdown().unwrap();
}

#[test]
fn a_server_in_this_process_terminates_its_pools_when_it_stops() {
    let name = format!("mproc-mgrpool-inproc-{}", std::process::id());
    let server =
        Manager::get_server(mproc_channel::Address::abstract_name(name), b"in process").unwrap();
    let address = server.address().clone();
    let serving = std::thread::spawn(move || server.serve_forever());
    let m = Manager::connect(&address, b"in process").unwrap();
    let pool = m.pool(2).unwrap();
    let workers = pool.pids().unwrap();
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
    m.shutdown_server().unwrap();
    serving.join().unwrap().unwrap();
    // This process goes on; the server's pool did not.
    for w in workers {
        assert!(
            wait_dead(w, Duration::from_secs(10)),
            "worker {w} outlived the server"
        );
    }
    assert!(pool.apply(square, 1).is_err());
}

#[test]
fn zero_processes_is_a_bad_request() {
    let m = Manager::start().unwrap();
    assert!(matches!(m.pool(0), Err(ManagerError::BadRequest(_))));
    // The server goes on.
    assert_eq!(m.pool(1).unwrap().apply(square, 3).unwrap(), 9);
    m.shutdown().unwrap();
}

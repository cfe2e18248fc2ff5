//! Manager objects used across processes, under the start method the run selects
//! (`MPROC_START_METHOD`): containers, queues, the synchronisation kinds, custom
//! objects. Cases follow CPython's `test_multiprocessing` manager tests
//! (`_TestContainers`, `_TestQueue`, `_TestLock`, `_TestEvent`, `_TestCondition`,
//! `_TestBarrier`, `_TestMyManager`).
use mproc_manager::{
    ArrayProxy, BarrierProxy, ConditionProxy, DictProxy, EventProxy, ListProxy, LockProxy, Manager,
    ManagerError, NamespaceProxy, Proxy, QueueProxy, RLockProxy,
};
use mproc_spawn::Process;
use std::time::{Duration, Instant};

fn start<A: mproc_core::Message + Send + 'static, R: mproc_core::Message + 'static>(
    f: fn(A) -> R,
    args: A,
) -> Process<R> {
    let mut p = Process::new(f, args);
    p.start().expect("start child");
    p
}

fn child_append((l, s): (ListProxy<String>, String)) {
    l.append(&s).unwrap();
}

#[test]
fn list_seed_and_children_append() {
    let m = Manager::start().unwrap();
    let l = m.list::<String>().unwrap();
    l.append(&"Hello".into()).unwrap();
    assert_eq!(l.to_vec().unwrap(), ["Hello"]);
    let mut ps: Vec<_> = (0..3)
        .map(|i| start(child_append, (l.clone(), format!("c{i}"))))
        .collect();
    for p in &mut ps {
        p.join().unwrap();
    }
    let mut got = l.to_vec().unwrap();
    got.sort();
    assert_eq!(got, ["Hello", "c0", "c1", "c2"]);
    m.shutdown().unwrap();
}

#[test]
fn list_operations_follow_python() {
    let m = Manager::start().unwrap();
    let l = m.list_from(&[5i64, 3, 9, 1]).unwrap();
    assert_eq!(l.len().unwrap(), 4);
    assert_eq!(l.get(-1).unwrap(), 1);
    assert!(matches!(l.get(4), Err(ManagerError::IndexOutOfRange)));
    l.set(0, &7).unwrap();
    l.insert(-100, &0).unwrap();
    assert_eq!(l.to_vec().unwrap(), [0, 7, 3, 9, 1]);
    l.sort().unwrap();
    assert_eq!(l.to_vec().unwrap(), [0, 1, 3, 7, 9]);
    assert_eq!(l.pop().unwrap(), 9);
    assert_eq!(l.pop_at(0).unwrap(), 0);
    l.remove(&3).unwrap();
    assert!(matches!(l.remove(&3), Err(ManagerError::NotFound)));
    assert!(l.contains(&7).unwrap());
    assert_eq!(l.index(&7).unwrap(), 1);
    assert_eq!(l.iter().unwrap().collect::<Vec<_>>(), [1, 7]);
    l.clear().unwrap();
    assert!(l.is_empty().unwrap());
    assert!(matches!(l.pop(), Err(ManagerError::IndexOutOfRange)));
}

#[test]
fn a_proxy_or_value_of_the_wrong_type_is_a_typed_error() {
    let m = Manager::start().unwrap();
    let l = m.list::<String>().unwrap();
    l.push(&"not a number".into()).unwrap();
    // A proxy imported as a proxy of another element type is refused.
    let enc = mproc_core::codec::encode(&l).unwrap();
    assert!(mproc_core::codec::decode::<ListProxy<u64>>(&enc.bytes, enc.fds).is_err());
    let enc = mproc_core::codec::encode(&l).unwrap();
    assert!(mproc_core::codec::decode::<DictProxy<String, u8>>(&enc.bytes, enc.fds).is_err());
    let enc = mproc_core::codec::encode(&l).unwrap();
    let same: ListProxy<String> = mproc_core::codec::decode(&enc.bytes, enc.fds).unwrap();
    assert_eq!(same.get(0).unwrap(), "not a number");
}

fn child_square((d, i): (DictProxy<u32, u32>, u32)) {
    d.insert(&i, &(i * i)).unwrap();
}

#[test]
fn dict_written_by_four_processes() {
    let m = Manager::start().unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    let mut ps: Vec<_> = (0..4)
        .map(|i| start(child_square, (d.clone(), i)))
        .collect();
    for p in &mut ps {
        p.join().unwrap();
    }
    let mut items = d.items().unwrap();
    items.sort();
    assert_eq!(items, [(0, 0), (1, 1), (2, 4), (3, 9)]);
    assert_eq!(d.len().unwrap(), 4);
    assert!(d.contains_key(&3).unwrap());
    assert_eq!(d.insert(&3, &10).unwrap(), Some(9));
    assert_eq!(d.remove(&3).unwrap(), Some(10));
    assert_eq!(d.remove(&3).unwrap(), None);
    assert_eq!(d.setdefault(&7, &70).unwrap(), 70);
    assert_eq!(d.setdefault(&7, &71).unwrap(), 70);
    d.update([(&8, &80), (&0, &1)]).unwrap();
    assert_eq!(d.get(&0).unwrap(), Some(1));
    let mut keys = d.keys().unwrap();
    keys.sort();
    assert_eq!(keys, [0, 1, 2, 7, 8]);
    // Insertion order, as Python's dict keeps it; a replaced value keeps its place.
    d.clear().unwrap();
    d.update([(&5, &50), (&1, &10), (&3, &30)]).unwrap();
    d.insert(&1, &11).unwrap();
    assert_eq!(d.keys().unwrap(), [5, 1, 3]);
    assert_eq!(d.values().unwrap(), [50, 11, 30]);
    d.clear().unwrap();
    assert!(d.is_empty().unwrap());
}

fn child_ns(ns: NamespaceProxy) -> Result<i64, String> {
    let x: i64 = ns.get("x").map_err(|e| e.to_string())?;
    ns.set("y", &format!("seen {x}"))
        .map_err(|e| e.to_string())?;
    Ok(x)
}

#[test]
fn namespace_and_value_across_processes() {
    let m = Manager::start().unwrap();
    let ns = m.namespace().unwrap();
    ns.set("x", &41i64).unwrap();
    assert_eq!(start(child_ns, ns.clone()).join().unwrap(), Ok(41));
    assert_eq!(ns.get::<String>("y").unwrap(), "seen 41");
    assert!(matches!(ns.get::<i64>("z"), Err(ManagerError::KeyMissing)));
    // Read back as another type: a typed error, not a reinterpretation.
    assert!(matches!(ns.get::<u8>("y"), Err(ManagerError::Codec(_))));
    assert!(matches!(
        ns.get::<Vec<u64>>("y"),
        Err(ManagerError::Codec(_))
    ));
    assert_eq!(ns.names().unwrap(), ["x", "y"]);
    ns.remove("x").unwrap();
    assert!(matches!(ns.remove("x"), Err(ManagerError::KeyMissing)));

    let v = m.value(&1.5f64).unwrap();
    v.set(&2.5).unwrap();
    assert_eq!(v.get().unwrap(), 2.5);
}

fn producer((q, n): (QueueProxy<u64>, u64)) {
    for i in 0..n {
        q.put(&i).unwrap();
    }
}

#[test]
fn queue_between_processes() {
    let m = Manager::start().unwrap();
    let q = m.queue::<u64>(4).unwrap();
    let mut p = start(producer, (q.clone(), 100));
    let got: Vec<u64> = (0..100)
        .map(|_| q.get_timeout(Some(Duration::from_secs(30))).unwrap())
        .collect();
    p.join().unwrap();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert!(q.empty().unwrap());
    let t = Instant::now();
    assert!(matches!(
        q.get_timeout(Some(Duration::from_millis(100))),
        Err(ManagerError::Empty)
    ));
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(matches!(q.get_nowait(), Err(ManagerError::Empty)));
    for i in 0..4 {
        q.put_nowait(&i).unwrap();
    }
    assert!(matches!(q.put_nowait(&9), Err(ManagerError::Full)));
    assert!(matches!(
        q.put_timeout(&9, Some(Duration::from_millis(50))),
        Err(ManagerError::Full)
    ));
    assert_eq!(q.qsize().unwrap(), 4);
}

fn hold_lock((l, ev): (LockProxy, EventProxy)) {
    l.acquire().unwrap();
    ev.set().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn lock_held_by_a_killed_process_is_released() {
    let m = Manager::start().unwrap();
    let l = m.lock().unwrap();
    let ev = m.event().unwrap();
    let mut p = start(hold_lock, (l.clone(), ev.clone()));
    assert!(ev.wait(Some(Duration::from_secs(30))).unwrap());
    assert!(!l.try_acquire().unwrap());
    assert!(!l.acquire_timeout(Some(Duration::from_millis(50))).unwrap());
    p.kill().unwrap();
    let _ = p.join();
    // The dead client's session ends and its lock is released.
    assert!(l.acquire_timeout(Some(Duration::from_secs(10))).unwrap());
    l.release().unwrap();
    assert!(matches!(l.release(), Err(ManagerError::NotOwner)));
}

#[test]
fn rlock_is_reentrant_and_owned_by_a_thread() {
    let m = Manager::start().unwrap();
    let r = m.rlock().unwrap();
    r.acquire().unwrap();
    r.acquire().unwrap();
    let r2: RLockProxy = r.clone();
    let other = std::thread::spawn(move || (r2.try_acquire().unwrap(), r2.release().is_err()))
        .join()
        .unwrap();
    assert_eq!(other, (false, true));
    r.release().unwrap();
    r.release().unwrap();
    assert!(matches!(r.release(), Err(ManagerError::NotOwner)));
}

#[test]
fn semaphores_count_and_bound() {
    let m = Manager::start().unwrap();
    let s = m.semaphore(2).unwrap();
    assert!(s.try_acquire().unwrap());
    assert!(s.try_acquire().unwrap());
    assert!(!s.try_acquire().unwrap());
    assert_eq!(s.value().unwrap(), 0);
    s.release().unwrap();
    s.release().unwrap();
    s.release().unwrap(); // unbounded: Python allows it
    assert_eq!(s.value().unwrap(), 3);
    let b = m.bounded_semaphore(1).unwrap();
    b.acquire().unwrap();
    b.release().unwrap();
    assert!(matches!(b.release(), Err(ManagerError::NotOwner)));
}

fn set_later(ev: EventProxy) {
    std::thread::sleep(Duration::from_millis(100));
    ev.set().unwrap();
}

#[test]
fn event_set_by_a_child_wakes_the_parent() {
    let m = Manager::start().unwrap();
    let ev = m.event().unwrap();
    assert!(!ev.wait(Some(Duration::from_millis(20))).unwrap());
    let mut p = start(set_later, ev.clone());
    assert!(ev.wait(Some(Duration::from_secs(30))).unwrap());
    assert!(ev.is_set().unwrap());
    ev.clear().unwrap();
    assert!(!ev.is_set().unwrap());
    p.join().unwrap();
}

fn cond_waiter((c, q): (ConditionProxy, QueueProxy<u8>)) -> bool {
    c.acquire().unwrap();
    q.put(&1).unwrap();
    let woke = c.wait(Some(Duration::from_secs(30))).unwrap();
    c.release().unwrap();
    woke
}

#[test]
fn condition_notify_wakes_a_waiting_process() {
    let m = Manager::start().unwrap();
    let c = m.condition().unwrap();
    let q = m.queue::<u8>(0).unwrap();
    let mut p = start(cond_waiter, (c.clone(), q.clone()));
    q.get_timeout(Some(Duration::from_secs(30))).unwrap();
    // The waiter released the lock inside wait: this acquire succeeds.
    c.acquire().unwrap();
    c.notify(1).unwrap();
    c.release().unwrap();
    assert!(p.join().unwrap());
    assert!(matches!(c.notify(1), Err(ManagerError::NotOwner)));
    c.acquire().unwrap();
    assert!(!c.wait(Some(Duration::from_millis(50))).unwrap());
    c.release().unwrap();
}

fn at_barrier(b: BarrierProxy) -> usize {
    b.wait(Some(Duration::from_secs(30))).unwrap()
}

#[test]
fn barrier_of_three_processes() {
    let m = Manager::start().unwrap();
    let b = m.barrier(3).unwrap();
    let mut ps: Vec<_> = (0..2).map(|_| start(at_barrier, b.clone())).collect();
    let mine = b.wait(Some(Duration::from_secs(30))).unwrap();
    let mut all: Vec<usize> = ps.iter_mut().map(|p| p.join().unwrap()).collect();
    all.push(mine);
    all.sort();
    assert_eq!(all, [0, 1, 2]);
    assert_eq!(b.info().unwrap(), (3, 0, false));
    // A waiter that times out breaks the barrier.
    assert!(matches!(
        b.wait(Some(Duration::from_millis(50))),
        Err(ManagerError::BrokenBarrier)
    ));
    assert!(b.info().unwrap().2);
    b.reset().unwrap();
    assert!(!b.info().unwrap().2);
    b.abort().unwrap();
    assert!(matches!(b.wait(None), Err(ManagerError::BrokenBarrier)));
}

struct Counter {
    n: i64,
    log: Vec<String>,
}

impl Counter {
    fn new(n: i64) -> Self {
        Counter { n, log: Vec::new() }
    }
    fn incr(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }
    fn note(&mut self, s: String) -> usize {
        self.log.push(s);
        self.log.len()
    }
    fn explode(&mut self, why: String) -> i64 {
        panic!("explode: {why}")
    }
}

fn child_incr(c: Proxy<Counter>) -> i64 {
    c.call(Counter::incr, 5).unwrap()
}

#[test]
fn custom_objects_typed_calls_and_panics() {
    let m = Manager::start().unwrap();
    let c = m.create(Counter::new, 10).unwrap();
    assert_eq!(c.call(Counter::incr, 1).unwrap(), 11);
    let mut ps: Vec<_> = (0..2).map(|_| start(child_incr, c.clone())).collect();
    for p in &mut ps {
        p.join().unwrap();
    }
    assert_eq!(c.call(Counter::incr, 0).unwrap(), 21);
    assert_eq!(c.call(Counter::note, "a".to_string()).unwrap(), 1);
    match c.call(Counter::explode, "on purpose".to_string()) {
        Err(ManagerError::Panicked(msg)) => assert!(msg.contains("on purpose"), "{msg}"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    // The server and the object go on.
    assert_eq!(c.call(Counter::incr, 1).unwrap(), 22);
    assert_eq!(c.call(Counter::note, "b".to_string()).unwrap(), 2);
}

#[test]
fn proxies_travel_through_a_channel_queue_to_a_running_process() {
    let m = Manager::start().unwrap();
    let q: mproc_channel::Queue<ListProxy<u8>> = mproc_channel::Queue::new().unwrap();
    fn recv_and_fill(q: mproc_channel::Queue<ListProxy<u8>>) -> usize {
        let l = q.get().unwrap();
        l.push(&7).unwrap();
        l.len().unwrap()
    }
    let mut p = start(recv_and_fill, q.clone());
    {
        // The sender's proxy is gone before the receiver imports it: the floating
        // reference keeps the object.
        let l = m.list::<u8>().unwrap();
        l.push(&1).unwrap();
        q.put(l).unwrap();
    }
    assert_eq!(p.join().unwrap(), 2);
}

fn consume_and_mark(q: QueueProxy<u32>) -> u32 {
    let mut sum = 0;
    for _ in 0..5 {
        sum += q.get_timeout(Some(Duration::from_secs(30))).unwrap();
        q.task_done().unwrap();
    }
    sum
}

#[test]
fn joinable_queue_join_waits_for_task_done() {
    let m = Manager::start().unwrap();
    let q = m.joinable_queue::<u32>(0).unwrap();
    assert!(q.join(Some(Duration::from_millis(10))).unwrap());
    for i in 1..=5 {
        q.put(&i).unwrap();
    }
    assert!(!q.join(Some(Duration::from_millis(20))).unwrap());
    let mut p = start(consume_and_mark, q.clone());
    assert!(q.join(Some(Duration::from_secs(30))).unwrap());
    assert_eq!(p.join().unwrap(), 15);
    assert!(matches!(q.task_done(), Err(ManagerError::NotFound)));
    let plain = m.queue::<u32>(0).unwrap();
    assert!(matches!(plain.task_done(), Err(ManagerError::WrongKind)));
}

fn child_array_writes((a, k): (ArrayProxy<i64>, isize)) -> i64 {
    a.set(k, &(k as i64 * 10)).unwrap();
    a.set_slice(4 + k..5 + k, &[-(k as i64)]).unwrap();
    a.get(k).unwrap()
}

#[test]
fn array_fixed_length_shared_by_processes() {
    let m = Manager::start().unwrap();
    // Python: m.Array('q', 8)
    let a = m.array(&[0i64; 8]).unwrap();
    assert_eq!(a.len().unwrap(), 8);
    let mut ps: Vec<_> = (0..4)
        .map(|k| start(child_array_writes, (a.clone(), k)))
        .collect();
    for (k, p) in ps.iter_mut().enumerate() {
        assert_eq!(p.join().unwrap(), k as i64 * 10);
    }
    assert_eq!(a.to_vec().unwrap(), [0, 10, 20, 30, 0, -1, -2, -3]);
    // Slices as Python's: negative and out-of-range bounds clamp.
    assert_eq!(a.slice(-3..).unwrap(), [-1, -2, -3]);
    assert_eq!(a.slice(1..=2).unwrap(), [10, 20]);
    assert_eq!(a.slice(6..100).unwrap(), [-2, -3]);
    let (from, to) = (5, 2);
    assert_eq!(a.slice(from..to).unwrap(), Vec::<i64>::new());
    assert_eq!(a.slice(-100..=-8).unwrap(), [0]);
    assert_eq!(a.get(-1).unwrap(), -3);
    // Failure paths: the length never changes.
    assert!(matches!(a.get(8), Err(ManagerError::IndexOutOfRange)));
    assert!(matches!(a.set(-9, &1), Err(ManagerError::IndexOutOfRange)));
    assert!(matches!(
        a.set_slice(0..2, &[1, 2, 3]),
        Err(ManagerError::SizeMismatch(_))
    ));
    assert!(matches!(
        a.set_slice(.., &[1]),
        Err(ManagerError::SizeMismatch(_))
    ));
    assert_eq!(a.len().unwrap(), 8);
    a.set_slice(.., &[7; 8]).unwrap();
    assert_eq!(a.to_vec().unwrap(), [7; 8]);
    // An empty array; an array of strings.
    let e = m.array::<u8>(&[]).unwrap();
    assert!(e.is_empty().unwrap());
    assert!(matches!(e.get(0), Err(ManagerError::IndexOutOfRange)));
    let s = m.array(&["x".to_string()]).unwrap();
    s.set(0, &"y".to_string()).unwrap();
    assert_eq!(s.to_vec().unwrap(), ["y"]);
}

fn child_push_via_array(a: ArrayProxy<ListProxy<u8>>) {
    a.get(0).unwrap().push(&42).unwrap();
}

#[test]
fn an_array_of_proxies_keeps_its_objects() {
    let m = Manager::start().unwrap();
    let l = m.list::<u8>().unwrap();
    let a = m.array(&[l]).unwrap();
    let before = m.number_of_objects().unwrap();
    // The list's only proxy left is inside the array.
    assert_eq!(before, 2);
    let mut p = start(child_push_via_array, a.clone());
    p.join().unwrap();
    assert_eq!(a.get(0).unwrap().to_vec().unwrap(), [42]);
    drop(a);
    // The array and the list it held are freed together.
    let t = Instant::now();
    while m.number_of_objects().unwrap() != 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(m.number_of_objects().unwrap(), 0);
}

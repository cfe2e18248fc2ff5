//! Reference counting as CPython's manager does it: an object lives while a proxy to it
//! lives in any process or inside another manager object; a client that dies releases
//! its references; nothing leaks after many proxies come and go.
use mproc_manager::{DictProxy, ListProxy, Manager, QueueProxy};
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

fn eventually(m: &Manager, want: usize) {
    let t = Instant::now();
    loop {
        let n = m.number_of_objects().unwrap();
        if n == want {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{n} objects in the server, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ten_thousand_proxies_come_and_go_without_a_leak() {
    let m = Manager::start().unwrap();
    let keep = m.list::<u32>().unwrap();
    for i in 0..10_000u32 {
        match i % 4 {
            0 => {
                let l = m.list::<u32>().unwrap();
                l.push(&i).unwrap();
                let l2 = l.clone();
                drop(l);
                assert_eq!(l2.len().unwrap(), 1);
            }
            1 => {
                let d = m.dict::<u32, u32>().unwrap();
                d.insert(&i, &i).unwrap();
            }
            2 => {
                let _v = m.value(&i).unwrap();
            }
            _ => {
                let _e = m.event().unwrap();
            }
        }
    }
    keep.push(&1).unwrap();
    assert_eq!(m.number_of_objects().unwrap(), 1);
}

#[test]
fn nested_proxies_keep_their_objects_alive() {
    let m = Manager::start().unwrap();
    let outer = m.list::<DictProxy<String, i32>>().unwrap();
    for i in 0..3 {
        // The temporary proxy is dropped at once; the list's element keeps the dict.
        let d = m.dict::<String, i32>().unwrap();
        d.insert(&"i".into(), &i).unwrap();
        outer.push(&d).unwrap();
    }
    assert_eq!(m.number_of_objects().unwrap(), 4);
    let second = outer.get(1).unwrap();
    assert_eq!(second.get(&"i".into()).unwrap(), Some(1));
    second.insert(&"j".into(), &10).unwrap();
    // Changes through one proxy are seen through another (CPython 3.6+ semantics).
    assert_eq!(outer.get(1).unwrap().get(&"j".into()).unwrap(), Some(10));
    let popped = outer.pop().unwrap();
    assert_eq!(m.number_of_objects().unwrap(), 4);
    drop(popped);
    eventually(&m, 3);
    outer.clear().unwrap();
    // `second` still holds the middle dict.
    eventually(&m, 2);
    drop(second);
    eventually(&m, 1);
    drop(outer);
    eventually(&m, 0);
}

#[test]
fn a_list_of_lists_freed_as_a_tree() {
    let m = Manager::start().unwrap();
    let top = m.list::<ListProxy<ListProxy<u8>>>().unwrap();
    let mid = m.list::<ListProxy<u8>>().unwrap();
    mid.push(&m.list_from(&[1u8, 2]).unwrap()).unwrap();
    top.push(&mid).unwrap();
    drop(mid);
    assert_eq!(
        top.get(0).unwrap().get(0).unwrap().to_vec().unwrap(),
        [1, 2]
    );
    eventually(&m, 3);
    drop(top);
    eventually(&m, 0);
}

fn leak_objects((q, name, key, n): (QueueProxy<u8>, Vec<u8>, Vec<u8>, u32)) {
    let m = Manager::connect(&mproc_channel::Address::abstract_name(name), &key).unwrap();
    let objs: Vec<ListProxy<u8>> = (0..n).map(|_| m.list().unwrap()).collect();
    q.put(&1).unwrap();
    // Never released by this process: only its death can free them.
    std::mem::forget(objs);
    std::mem::forget(m);
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_client_that_dies_releases_its_references() {
    let m = Manager::start().unwrap();
    let q = m.queue::<u8>(0).unwrap();
    let mproc_channel::Address::Abstract(name) = m.address().clone() else {
        panic!("the default address is an abstract socket")
    };
    let mut p = start(leak_objects, (q.clone(), name, m.authkey().to_vec(), 5));
    q.get_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(m.number_of_objects().unwrap(), 6);
    p.kill().unwrap();
    let _ = p.join();
    eventually(&m, 1);
}

fn hold_then_drop(l: ListProxy<u8>) -> usize {
    l.push(&9).unwrap();
    l.len().unwrap()
}

#[test]
fn a_proxy_given_to_a_process_keeps_the_object_until_it_is_done() {
    let m = Manager::start().unwrap();
    let l = m.list::<u8>().unwrap();
    let mut p = Process::new(hold_then_drop, l);
    // The parent's only proxy moved into the process's arguments.
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), 1);
    eventually(&m, 0);
}

fn look_up((name, key): (Vec<u8>, Vec<u8>)) -> Vec<u32> {
    let m = Manager::connect(&mproc_channel::Address::abstract_name(name), &key).unwrap();
    let l: ListProxy<u32> = m.lookup("numbers").unwrap();
    l.push(&4).unwrap();
    l.to_vec().unwrap()
}

#[test]
fn published_objects_live_until_withdrawn() {
    let m = Manager::start().unwrap();
    let mproc_channel::Address::Abstract(name) = m.address().clone() else {
        panic!("the default address is an abstract socket")
    };
    m.publish("numbers", &m.list_from(&[1u32, 2, 3]).unwrap())
        .unwrap();
    // Only the registry holds the list now.
    assert_eq!(m.number_of_objects().unwrap(), 1);
    let mut p = start(look_up, (name, m.authkey().to_vec()));
    assert_eq!(p.join().unwrap(), [1, 2, 3, 4]);
    assert!(matches!(
        m.lookup::<ListProxy<u32>>("missing"),
        Err(mproc_manager::ManagerError::KeyMissing)
    ));
    assert!(matches!(
        m.lookup::<ListProxy<u8>>("numbers"),
        Err(mproc_manager::ManagerError::Codec(_))
    ));
    m.unpublish("numbers").unwrap();
    eventually(&m, 0);
}

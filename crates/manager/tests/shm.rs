//! `SharedMemoryManager`: segments made through the server are shared with children and
//! unlinked when the server shuts down, is dropped, or its owner is killed.
use mproc_manager::{Manager, QueueProxy, SharedMemoryManager};
use mproc_shm::{Item, SharedMemory};
use mproc_spawn::Process;
use std::path::Path;
use std::time::{Duration, Instant};

fn exists(name: &str) -> bool {
    Path::new("/dev/shm")
        .join(name.trim_start_matches('/'))
        .exists()
}

fn gone_within(names: &[String], limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if names.iter().all(|n| !exists(n)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn child_write(shm: SharedMemory) {
    shm.write(0, b"from the child").unwrap();
}

#[test]
fn segments_are_shared_and_unlinked_at_shutdown() {
    let smm = SharedMemoryManager::start().unwrap();
    let shm = smm.shared_memory(4096).unwrap();
    assert!(!shm.is_creator());
    let sl = smm
        .shareable_list(&[Item::Int(1), Item::Str("two".into()), Item::Float(3.0)])
        .unwrap();
    assert_eq!(sl.get(1).unwrap(), Item::Str("two".into()));
    let names = smm.segment_names().unwrap();
    assert_eq!(names.len(), 2);
    assert!(names.iter().all(|n| exists(n)), "{names:?}");
    let mut p = Process::new(child_write, shm.try_clone().unwrap());
    p.start().unwrap();
    p.join().unwrap();
    let mut buf = [0u8; 14];
    shm.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"from the child");
    smm.shutdown().unwrap();
    assert!(gone_within(&names, Duration::from_secs(5)), "{names:?}");
    // Still mapped here, as in Python.
    shm.read(0, &mut buf).unwrap();
}

#[test]
fn dropping_the_manager_unlinks_too() {
    let smm = SharedMemoryManager::start().unwrap();
    let _a = smm.shared_memory(100).unwrap();
    let names = smm.segment_names().unwrap();
    drop(smm);
    assert!(gone_within(&names, Duration::from_secs(5)), "{names:?}");
}

fn own_segments(report: QueueProxy<(Vec<String>, i32)>) {
    let smm = SharedMemoryManager::start().unwrap();
    let _a = smm.shared_memory(1000).unwrap();
    let _b = smm.shareable_list(&[Item::Int(7)]).unwrap();
    report
        .put(&(smm.segment_names().unwrap(), smm.pid().unwrap()))
        .unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn the_owners_sigkill_unlinks_every_segment() {
    let m = Manager::start().unwrap();
    let q = m.queue::<(Vec<String>, i32)>(0).unwrap();
    let mut p = Process::new(own_segments, q.clone());
    p.start().unwrap();
    let (names, server) = q.get_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(names.len(), 2);
    assert!(names.iter().all(|n| exists(n)));
    p.kill().unwrap();
    let _ = p.join();
    assert!(
        gone_within(&names, Duration::from_secs(10)),
        "{names:?} left in /dev/shm"
    );
    // The server died with its owner.
    let t = Instant::now();
    while server_alive(server) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the server outlived its owner"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn server_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    #[allow(unsafe_code)]
    let r = unsafe { libc::kill(pid, 0) };
    r == 0
}

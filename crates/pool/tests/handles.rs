//! Handles (here mproc-core's `Region`, a shared memfd mapping) travel inside task
//! arguments, `map_with` state and initializer arguments, as locks and queues do in
//! Python's `Pool(initializer=init, initargs=(lock,))`.
use mproc_core::Region;
use mproc_pool::Pool;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

fn bump(r: Region) -> u64 {
    r.atomic_u64(0).unwrap().fetch_add(1, Ordering::SeqCst) + 1
}

fn bump_by(r: &Region, k: u64) -> u64 {
    r.atomic_u64(8).unwrap().fetch_add(k, Ordering::SeqCst);
    k
}

static SHARED: Mutex<Option<Region>> = Mutex::new(None);

fn init(r: Region) {
    *SHARED.lock().unwrap() = Some(r);
}

fn bump_global(k: u64) -> u64 {
    let g = SHARED.lock().unwrap();
    g.as_ref()
        .unwrap()
        .atomic_u64(16)
        .unwrap()
        .fetch_add(k, Ordering::SeqCst);
    k
}

#[test]
fn regions_in_args_state_and_initializer() {
    let region = Region::new(4096).unwrap();
    let pool = Pool::builder()
        .processes(2)
        .initializer(init, region.try_clone().unwrap())
        .build()
        .unwrap();
    // One handle per call, passed with the call.
    let rs: Vec<_> = (0..10)
        .map(|_| pool.apply_async(bump, region.try_clone().unwrap()))
        .collect();
    for r in rs {
        r.get().unwrap();
    }
    assert_eq!(region.atomic_u64(0).unwrap().load(Ordering::SeqCst), 10);
    // In a packed chunk: several handles in one message.
    let many: Vec<Region> = (0..6).map(|_| region.try_clone().unwrap()).collect();
    pool.map_chunked(bump, many, 3).unwrap();
    assert_eq!(region.atomic_u64(0).unwrap().load(Ordering::SeqCst), 16);
    // As `map_with` state, sent once per worker.
    let out = pool
        .map_with(region.try_clone().unwrap(), bump_by, 1..=10u64)
        .unwrap();
    assert_eq!(out.iter().sum::<u64>(), 55);
    assert_eq!(region.atomic_u64(8).unwrap().load(Ordering::SeqCst), 55);
    // Through the initializer.
    pool.map_chunked(bump_global, 1..=10u64, 1).unwrap();
    assert_eq!(region.atomic_u64(16).unwrap().load(Ordering::SeqCst), 55);
}

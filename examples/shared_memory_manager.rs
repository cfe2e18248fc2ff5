//! `SharedMemoryManager` (Python: `with SharedMemoryManager() as smm: sl =
//! smm.ShareableList(range(4)); ...`): the manager's server makes the segments, worker
//! processes fill them, and shutting the manager down unlinks every one.
//! expect: ^list after the workers: \[0, 10, 20, 30\]$
//! expect: ^block starts with "hello from a worker"$
//! expect: ^segments left in /dev/shm after shutdown: 0$
use mproc::manager::SharedMemoryManager;
use mproc::shm::{Item, ShareableList, SharedMemory};
use mproc::spawn::Process;

fn scale((sl, i): (ShareableList, usize)) {
    let Item::Int(v) = sl.get(i).expect("read") else {
        panic!("an int")
    };
    sl.set(i, Item::Int(v * 10)).expect("write");
}

fn greet(shm: SharedMemory) {
    shm.write(0, b"hello from a worker").expect("write");
}

fn main() {
    let smm = SharedMemoryManager::start().expect("start the manager");
    let items: Vec<Item> = (0..4).map(Item::Int).collect();
    let sl = smm.shareable_list(&items).expect("a shareable list");
    let shm = smm.shared_memory(64).expect("a block");
    let mut ps: Vec<_> = (0..4)
        .map(|i| Process::new(scale, (ShareableList::open(sl.name()).expect("open"), i)))
        .collect();
    for p in &mut ps {
        p.start().expect("start");
    }
    for p in &mut ps {
        p.join().expect("join");
    }
    let mut g = Process::new(greet, shm.try_clone().expect("clone"));
    g.start().expect("start");
    g.join().expect("join");
    let shown: Vec<String> = sl
        .to_vec()
        .expect("read")
        .iter()
        .map(|i| match i {
            Item::Int(v) => v.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    println!("list after the workers: [{}]", shown.join(", "));
    let mut buf = [0u8; 19];
    shm.read(0, &mut buf).expect("read");
    println!("block starts with \"{}\"", String::from_utf8_lossy(&buf));
    let names = smm.segment_names().expect("names");
    smm.shutdown().expect("shutdown");
    let left = names
        .iter()
        .filter(|n| {
            std::path::Path::new("/dev/shm")
                .join(n.trim_start_matches('/'))
                .exists()
        })
        .count();
    println!("segments left in /dev/shm after shutdown: {left}");
}

//! Four processes write `d[i] = i * i` into one managed dict (Python:
//! `d = manager.dict()` shared with `Process(target=f, args=(d, i))`).
//! expect: ^\{0: 0, 1: 1, 2: 4, 3: 9\}$
use mproc::manager::{DictProxy, Manager};
use mproc::spawn::Process;

fn worker((d, i): (DictProxy<u32, u32>, u32)) {
    d.insert(&i, &(i * i)).expect("write the square");
}

fn main() {
    let m = Manager::start().expect("start the manager");
    let d = m.dict::<u32, u32>().expect("a managed dict");
    let mut ps: Vec<_> = (0..4)
        .map(|i| Process::new(worker, (d.clone(), i)))
        .collect();
    for p in &mut ps {
        p.start().expect("start a worker");
    }
    for p in &mut ps {
        p.join().expect("join");
    }
    let mut items = d.items().expect("read the dict");
    items.sort();
    let shown: Vec<String> = items.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("{{{}}}", shown.join(", "));
}

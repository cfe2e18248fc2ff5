//! A list held by a manager process (Python: `with Manager() as m: l = m.list();
//! l.append('Hello'); print(l)`), then appended to by two child processes.
//! expect: ^\["Hello"\]$
//! expect: ^\["Hello", "from child 1", "from child 2"\]$
use mproc::manager::{ListProxy, Manager};
use mproc::spawn::Process;

fn child((l, i): (ListProxy<String>, u32)) {
    l.append(&format!("from child {i}")).expect("append");
}

fn main() {
    let m = Manager::start().expect("start the manager");
    let l = m.list::<String>().expect("a managed list");
    l.append(&"Hello".to_string()).expect("append");
    println!("{:?}", l.to_vec().expect("read the list"));
    for i in 1..=2 {
        // One child at a time, so the order is fixed.
        let mut p = Process::new(child, (l.clone(), i));
        p.start().expect("start a child");
        p.join().expect("join");
    }
    println!("{:?}", l.to_vec().expect("read the list"));
    m.shutdown().expect("stop the manager");
}

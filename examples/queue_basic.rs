//! Python's `Queue` hello world: a child process puts a tuple `(42, None, "hello")` on
//! a queue; the parent takes it and prints it.
//! expect: ^\(42, None, "hello"\)$
//! expect: ^in place: 42 "hello"$
use mproc::channel::Queue;
use mproc::spawn::Process;

type Msg = (u32, Option<String>, String);

fn child(q: Queue<Msg>) {
    q.put((42, None, "hello".to_string())).expect("put");
    q.put((42, None, "hello".to_string())).expect("put");
}

fn main() {
    let q: Queue<Msg> = Queue::new().expect("create the queue");
    let mut p = Process::new(child, q.clone());
    p.start().expect("start the child");
    // Deserialised into an owned tuple, as Python's `q.get()` would give.
    println!("{:?}", q.get().expect("get"));
    // Or read where it lies in shared memory, without a copy.
    let msg = q.get_ref().expect("get_ref");
    println!("in place: {} {:?}", msg.0, msg.2.as_str());
    drop(msg);
    p.join().expect("join the child");
}

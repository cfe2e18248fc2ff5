//! `Pipe()`: a child process sends `hello` over its end of a pipe and the parent prints
//! it, as in Python's `parent_conn, child_conn = Pipe(); Process(target=f,
//! args=(child_conn,)).start(); print(parent_conn.recv())`.
//! expect: ^hello$
//! expect: ^child said hello in place$
use mproc::channel::{Connection, Pipe};
use mproc::spawn::Process;

fn child(conn: Connection) {
    conn.send(&String::from("hello")).expect("send hello");
    conn.send(&String::from("hello in place"))
        .expect("send again");
}

fn main() {
    let (parent_conn, child_conn) = Pipe(true).expect("create the pipe");
    let mut p = Process::new(child, child_conn);
    p.start().expect("start the child");
    let msg: String = parent_conn.recv().expect("receive");
    println!("{msg}");
    // Or read the next message where it lies, validated but not deserialised:
    let view = parent_conn.recv_view::<String>().expect("receive in place");
    println!("child said {}", view.as_str());
    drop(view);
    p.join().expect("join the child");
}

//! A child gets its own copy of a global list. Under fork the copy starts as the
//! parent's list at the moment of the fork; under spawn (and forkserver) the child is a
//! fresh run of the program, so the list starts as the program initialises it. Either
//! way the child's change never reaches the parent.
//! expect: ^fork: child sees \[1, 2, 3\], makes it \[1, 2, 3, 99\]$
//! expect: ^fork: parent still has \[1, 2, 3\]$
//! expect: ^spawn: child sees \[\], makes it \[99\]$
//! expect: ^spawn: parent still has \[1, 2, 3\]$
//! expect: ^forkserver: child sees \[\], makes it \[99\]$
//! expect: ^forkserver: parent still has \[1, 2, 3\]$
use mproc::spawn::{Process, StartMethod};
use std::sync::Mutex;

static LIST: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn change_my_copy(method: String) {
    let mut list = LIST.lock().unwrap();
    let before = format!("{:?}", *list);
    list.push(99);
    println!("{method}: child sees {before}, makes it {:?}", *list);
}

fn main() {
    LIST.lock().unwrap().extend([1, 2, 3]);
    for method in StartMethod::ALL {
        let mut p = Process::new(change_my_copy, method.to_string()).start_method(method);
        p.start().expect("start");
        p.join().expect("join");
        println!("{method}: parent still has {:?}", *LIST.lock().unwrap());
    }
}

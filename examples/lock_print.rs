//! Ten processes print `hello world i` through one shared `Lock`.
//!
//! Each child writes its line in three separate pieces, flushing after each one: without
//! the lock, the pieces of different children would interleave on the shared stdout.
//! Python: `multiprocessing.Lock` with `with lock: print('hello world', i)`.
//!
//! expect: ^hello world [0-9]$
//! expect: ^hello world [0-9]$
//! expect: ^hello world [0-9]$
//! expect: ^hello world [0-9]$
//! expect: ^hello world [0-9]$
//! expect: ^hello world [0-9]$
//! expect: ^hello world [0-9]$
//! expect: ^hello world [0-9]$
//! expect: ^hello world [0-9]$
//! expect: ^hello world [0-9]$
//! expect: ^10 processes printed 10 whole lines$
use mproc::spawn::Process;
use mproc::sync::{Lock, Mutex};
use std::io::Write;

fn greet((lock, lines, i): (Lock, Mutex<u32>, u32)) -> bool {
    let _guard = lock.lock().expect("lock");
    let mut out = std::io::stdout().lock();
    for piece in ["hello ", "world ", &format!("{i}\n")] {
        if out
            .write_all(piece.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return false;
        }
        std::thread::yield_now();
    }
    *lines.lock().expect("counter") += 1;
    true
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lock = Lock::new()?;
    let lines = Mutex::new(0u32)?;
    let mut children = Vec::new();
    for i in 0..10 {
        let mut p = Process::new(greet, (lock.clone(), lines.clone(), i));
        p.start()?;
        children.push(p);
    }
    let mut ok = 0;
    for p in &mut children {
        if p.join()? {
            ok += 1;
        }
    }
    let printed = *lines.lock().map_err(|e| e.to_string())?;
    println!("{ok} processes printed {printed} whole lines");
    Ok(())
}

//! Four worker processes wait on one `Event`; the parent fires the start gun by setting
//! it, and every worker starts at once. Python: `multiprocessing.Event`.
//!
//! expect: ^4 workers waiting$
//! expect: ^go!$
//! expect: ^worker [0-3]: off$
//! expect: ^worker [0-3]: off$
//! expect: ^worker [0-3]: off$
//! expect: ^worker [0-3]: off$
//! expect: ^4 workers started, none before the gun$
use mproc::spawn::Process;
use mproc::sync::{Event, Semaphore};
use std::io::Write;
use std::time::Duration;

/// Signals that it is ready, waits for the gun; returns whether it heard it.
fn runner((gun, ready, me): (Event, Semaphore, u32)) -> bool {
    if ready.release().is_err() {
        return false;
    }
    let heard = gun.wait_timeout(Duration::from_secs(60));
    if heard {
        println!("worker {me}: off");
        let _ = std::io::stdout().flush();
    }
    heard
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gun = Event::new()?;
    let ready = Semaphore::new(0)?;
    let mut workers = Vec::new();
    for me in 0..4 {
        let mut p = Process::new(runner, (gun.clone(), ready.clone(), me));
        p.start()?;
        workers.push(p);
    }
    for _ in 0..4 {
        if !ready.acquire_timeout(Duration::from_secs(60)) {
            return Err("a worker never became ready".into());
        }
    }
    println!("4 workers waiting");
    std::thread::sleep(Duration::from_millis(100));
    println!("go!");
    std::io::stdout().flush()?;
    gun.set();
    let mut started = 0;
    for p in &mut workers {
        if p.join()? {
            started += 1;
        }
    }
    println!("{started} workers started, none before the gun");
    Ok(())
}

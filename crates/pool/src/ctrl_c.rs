//! Opt-in Ctrl-C handling ([`PoolBuilder::terminate_on_ctrl_c`](crate::PoolBuilder)).
//!
//! Without it, SIGINT keeps its default action: the parent dies at once and its workers
//! die with it (they are started with a parent-death signal), so none is left behind.
//! With it, for a program whose other parts handle SIGINT too: the first SIGINT
//! terminates every enrolled pool (workers killed and reaped), then the default action
//! runs, so the program still ends as a Ctrl-C'd program does (status: killed by SIGINT).
//!
//! One process-wide signal-hook action writes to a self-pipe; a watcher thread does the
//! work outside the signal handler. The action stays registered for the life of the
//! process and always ends in the default action, so enrolling never leaves SIGINT
//! swallowed.
use crate::dispatch::Shared;
use std::io;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

type Enrolled = Mutex<Vec<Weak<Shared>>>;

static WATCH: OnceLock<Result<Enrolled, String>> = OnceLock::new();

fn start() -> Result<Enrolled, String> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("pipe: {e}"))?;
    std::thread::Builder::new()
        .name("mproc-pool-ctrl-c".into())
        .spawn(move || {
            let mut b = [0u8; 16];
            loop {
                match rustix::io::read(&r, &mut b) {
                    Ok(0) => return,
                    Ok(_) => on_sigint(),
                    Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => {}
                    Err(_) => return,
                }
            }
        })
        .map_err(|e| format!("thread: {e}"))?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, w)
        .map_err(|e| format!("signal handler: {e}"))?;
    Ok(Mutex::new(Vec::new()))
}

/// Enrolls a pool: SIGINT terminates it before the process ends.
pub(crate) fn enroll(shared: &Arc<Shared>) -> io::Result<()> {
    match WATCH.get_or_init(start) {
        Ok(list) => {
            let mut l = list.lock().unwrap_or_else(|e| e.into_inner());
            l.retain(|w| w.strong_count() > 0);
            l.push(Arc::downgrade(shared));
            Ok(())
        }
        Err(e) => Err(io::Error::other(e.clone())),
    }
}

fn on_sigint() {
    let pools: Vec<Arc<Shared>> = match WATCH.get() {
        Some(Ok(list)) => list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect(),
        _ => Vec::new(),
    };
    for s in &pools {
        s.lock().interrupted = true;
        s.wake();
    }
    // Killing and reaping takes milliseconds; never wait long on a stuck pool.
    let deadline = Instant::now() + Duration::from_secs(5);
    for s in &pools {
        while !s.lock().finished && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let _ = signal_hook::low_level::emulate_default_handler(signal_hook::consts::SIGINT);
    // SIGINT's default action ends the process; should it have been ignored, say so.
    std::process::exit(130);
}

//! Python's behaviour at exit: wait for the non-daemon children
//! ([`set_join_at_exit`]).
use crate::current;
use crate::process::ChildState;
use crate::sys::{self, ForkLocal};
use mproc_core::Deadline;
use mproc_core::logger::Level;
use mproc_core::mp_log;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

static JOIN_AT_EXIT: AtomicBool = AtomicBool::new(false);
/// Children whose `Process` was dropped while they ran, kept for the exit hook.
static KEPT: ForkLocal<Mutex<Vec<ChildState>>> = ForkLocal::new(|| Mutex::new(Vec::new()));
static HOOK: Once = Once::new();

/// Chooses what happens to non-daemon children when this program ends normally
/// (Python's `multiprocessing` joins them; mproc's default kills them).
///
/// - `false` (the default): dropping a running [`Process`](crate::Process) kills and
///   reaps it, and every child still running when the program exits is killed
///   (PDEATHSIG). Nothing outlives its handle, as with other Rust resources.
/// - `true`: Python's behaviour. Dropping a running non-daemon `Process` leaves the
///   child running, and when the program ends normally (returning from `main`, or
///   `std::process::exit`; for a child process, when its target returns) it first
///   waits for every non-daemon child it started, as Python's exit handler joins
///   them. Daemon children are still killed when the program exits. A killed parent
///   still takes every child with it.
///
/// Set it once, early in `main`. Children started afterwards inherit the setting.
///
/// ```
/// fn work(ms: u64) -> u64 { std::thread::sleep(std::time::Duration::from_millis(ms)); ms }
/// mproc_spawn::set_join_at_exit(true);
/// let mut p = mproc_spawn::Process::new(work, 10);
/// p.start().unwrap();
/// drop(p); // keeps running; the program waits for it at exit
/// # mproc_spawn::set_join_at_exit(false);
/// ```
pub fn set_join_at_exit(on: bool) {
    JOIN_AT_EXIT.store(on, Ordering::Relaxed);
    if on {
        arm();
    }
}

/// Registers the exit hook (once): Python's exit handler, which says "process shutting
/// down" through mproc's logger and joins the non-daemon children if
/// [`set_join_at_exit`] is on.
pub(crate) fn arm() {
    HOOK.call_once(|| sys::at_exit(exit_hook));
}

/// Whether [`set_join_at_exit`] is on.
pub(crate) fn join_at_exit() -> bool {
    JOIN_AT_EXIT.load(Ordering::Relaxed)
}

/// Keeps a running non-daemon child whose `Process` was dropped, for the exit hook.
/// Children kept earlier that have ended are reaped now.
pub(crate) fn keep_until_exit(c: ChildState) {
    let mut kept = KEPT.get().lock().unwrap_or_else(|e| e.into_inner());
    kept.retain(|k| k.running());
    kept.push(c);
}

extern "C" fn exit_hook() {
    // Nothing may unwind out of an `atexit` handler.
    let _ = std::panic::catch_unwind(|| {
        mp_log!(Level::INFO, "process shutting down");
        join_children();
    });
}

/// Waits for every non-daemon child (the exit hook; also called by a child process
/// before it exits, since it ends with `_exit`).
pub(crate) fn join_children() {
    if !join_at_exit() {
        return;
    }
    let kept = std::mem::take(&mut *KEPT.get().lock().unwrap_or_else(|e| e.into_inner()));
    for c in kept {
        if let Some(name) = current::name_of(c.reg) {
            mp_log!(Level::INFO, "calling join() for process {name}");
        }
        c.wait_until(Deadline::never());
        current::unregister(c.reg);
    }
    // Children whose handles still exist somewhere (leaked, in a static, on another
    // thread's stack): wait for them to end, without reaping (their owner does).
    for (name, pidfd) in current::running_non_daemon() {
        mp_log!(Level::INFO, "calling join() for process {name}");
        let _ = pidfd.wait_exit(None);
    }
}

/// In a new child: the parent's kept children are not its own.
pub(crate) fn reset_after_fork() {
    KEPT.reset();
}

/// In a new child: the parent's setting.
pub(crate) fn inherit(on: bool) {
    set_join_at_exit(on);
}

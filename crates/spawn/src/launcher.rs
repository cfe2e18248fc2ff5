//! A long-lived helper thread that starts children on behalf of short-lived threads.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that created the child ends, not the
//! process. A child started from a thread that then exits would be killed at once. So
//! a start requested from any thread other than the main thread runs on this helper
//! thread, which lives as long as the process (it is idle, blocked on a channel, the
//! rest of the time). Starts from the main thread run directly.
use crate::sys::{self, ForkLocal};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;

type Task = Box<dyn FnOnce() + Send>;

static LAUNCHER: ForkLocal<Mutex<Option<mpsc::Sender<Task>>>> = ForkLocal::new(|| Mutex::new(None));
/// The helper's thread id (0: none yet).
static LAUNCHER_TID: AtomicI32 = AtomicI32::new(0);

/// Runs `f` on a thread that outlives any child it starts: the calling thread if it is
/// the main thread (or the helper itself), the helper thread otherwise.
pub(crate) fn run_long_lived<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    if sys::is_main_thread() || is_launcher_thread() {
        return f();
    }
    let (tx, rx) = mpsc::sync_channel::<std::thread::Result<T>>(1);
    let task: Task = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    let mut slot = LAUNCHER.get().lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        let (ttx, trx) = mpsc::channel::<Task>();
        let spawned = std::thread::Builder::new()
            .name("mproc-launcher".into())
            .spawn(move || {
                LAUNCHER_TID.store(
                    rustix::thread::gettid().as_raw_nonzero().get(),
                    Ordering::Release,
                );
                while let Ok(task) = trx.recv() {
                    task();
                }
            });
        if spawned.is_ok() {
            *slot = Some(ttx);
        }
    }
    let task = match slot.as_ref() {
        Some(tx) => match tx.send(task) {
            Ok(()) => None,
            Err(mpsc::SendError(t)) => Some(t),
        },
        None => Some(task),
    };
    drop(slot);
    if let Some(task) = task {
        // No helper thread could be made: start from here (PDEATHSIG then follows this
        // thread, as documented).
        task();
    }
    match rx.recv() {
        Ok(Ok(v)) => v,
        // The task panicked: re-raise it in the caller.
        Ok(Err(payload)) => std::panic::resume_unwind(payload),
        // Unreachable: the task always replies before its sender is dropped.
        Err(_) => std::panic::resume_unwind(Box::new("mproc launcher thread vanished")),
    }
}

/// Whether the calling thread is the helper.
pub(crate) fn is_launcher_thread() -> bool {
    let t = LAUNCHER_TID.load(Ordering::Acquire);
    t != 0 && t == rustix::thread::gettid().as_raw_nonzero().get()
}

/// In a fork child: the parent's helper thread does not exist here.
pub(crate) fn reset_after_fork() {
    LAUNCHER.reset();
    LAUNCHER_TID.store(0, Ordering::Release);
}

//! The child's side: run the target, report its outcome, exit.
use crate::current::{self, ChildInfo};
use crate::{sys, wire};
use mproc_core::Message;
use mproc_core::codec::{self, Encoded};
use mproc_core::logger::Level;
use mproc_core::mp_log;
use mproc_core::rkyv::util::AlignedVec;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Exit code of a child that refused its bootstrap data (BSD's `EX_SOFTWARE`).
pub(crate) const BOOTSTRAP_EXIT: i32 = 70;

/// How the target ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// It returned; the encoded result.
    Value(Encoded),
    /// It panicked; the panic message.
    Panicked(String),
    /// It could not be run or its result could not be reported.
    Failed(String),
    /// The bootstrap was refused before anything ran (authentication, build identity,
    /// code range or type fingerprint).
    Refused(String),
}

impl Outcome {
    /// Python's convention: 0 after a return, 1 after an exception.
    fn exit_code(&self) -> i32 {
        match self {
            Outcome::Value(_) => 0,
            Outcome::Panicked(_) | Outcome::Failed(_) => 1,
            Outcome::Refused(_) => BOOTSTRAP_EXIT,
        }
    }
}

/// Decodes the arguments and runs `f` on them.
pub(crate) fn run_target<A: Message, R: Message>(
    f: fn(A) -> R,
    args: &[u8],
    fds: Vec<OwnedFd>,
) -> Outcome {
    let mut aligned = AlignedVec::<16>::with_capacity(args.len());
    aligned.extend_from_slice(args);
    let a = match codec::decode::<A>(&aligned, fds) {
        Ok(a) => a,
        Err(e) => return Outcome::Failed(format!("the arguments did not decode: {e}")),
    };
    drop(aligned);
    run_closure(move || f(a))
}

/// Runs `f`, catching a panic, and encodes its result.
pub(crate) fn run_closure<R: Message>(f: impl FnOnce() -> R) -> Outcome {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => match codec::encode(&r) {
            Ok(enc) => Outcome::Value(enc),
            Err(e) => Outcome::Failed(format!("the result did not serialise: {e}")),
        },
        Err(payload) => {
            let msg = if let Some(s) = payload.downcast_ref::<&str>() {
                (*s).to_owned()
            } else if let Some(s) = payload.downcast_ref::<String>() {
                s.clone()
            } else {
                "Box<dyn Any> (a panic payload that is not a string)".to_owned()
            };
            // A payload whose destructor panics must not unwind out of the child.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            Outcome::Panicked(msg)
        }
    }
}

/// Everything a fresh child does before the target runs, whatever the start method:
/// die with the parent, learn its identity.
///
/// `parent_pid` is the pid `getppid()` must return (the real parent: the starter under
/// fork and spawn, the server under forkserver); if the parent is already gone the
/// child exits at once.
pub(crate) fn prepare(info: &ChildInfo, real_parent: i32) {
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(real_parent) {
        // The parent died before PDEATHSIG was armed: nobody wants this child.
        sys::exit_now(1);
    }
    current::become_child(info);
    crate::launcher::reset_after_fork();
    crate::forkserver::reset_after_fork();
}

/// Says (through mproc's logger) that the target is about to run: called by every
/// start method right before it runs the target.
pub(crate) fn about_to_run() {
    mp_log!(Level::INFO, "child process calling self.run()");
}

/// Sends the outcome, flushes stdio and exits with Python's exit code.
pub(crate) fn finish(result: &OwnedFd, outcome: Outcome) -> ! {
    let code = outcome.exit_code();
    if let Outcome::Refused(msg) = &outcome {
        let _ = catch_unwind(AssertUnwindSafe(|| writeln!(std::io::stderr(), "{msg}")));
    } else {
        // Python's `_exit_function`, which a child runs after its target.
        mp_log!(Level::INFO, "process shutting down");
    }
    crate::exit::join_children();
    mp_log!(Level::INFO, "process exiting with exitcode {code}");
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let _ = wire::write_outcome(result.as_fd(), outcome);
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
    }));
    sys::exit_now(code)
}

/// The text of a bootstrap refusal (on stderr and to the parent).
pub(crate) fn refusal_text(why: &str) -> String {
    format!("mproc: corrupt bootstrap data, refusing to run the target: {why}")
}

/// Reports a bootstrap failure: on stderr, and to the parent if the result channel is
/// known; then exits with [`BOOTSTRAP_EXIT`] without running anything.
pub(crate) fn refuse(result: Option<&OwnedFd>, why: &str) -> ! {
    let msg = refusal_text(why);
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let _ = writeln!(std::io::stderr(), "{msg}");
        if let Some(fd) = result {
            let _ = wire::write_outcome(fd.as_fd(), Outcome::Refused(msg.clone()));
        }
    }));
    sys::exit_now(BOOTSTRAP_EXIT)
}

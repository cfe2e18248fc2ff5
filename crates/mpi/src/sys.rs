//! Every `unsafe` operation of the crate: calling a task function received as an offset,
//! non-blocking sends whose buffers outlive the call, raw MPI calls rsmpi does not wrap,
//! and the hook that turns a spawned process into a worker before `main`.
//!
//! # Safety
//!
//! - MPI is initialised once per process (by [`crate::env`]) at a threading level of at
//!   least `MPI_THREAD_SERIALIZED`, and every MPI call after initialisation is made with
//!   [`crate::env::MPI_LOCK`] held, so moving a communicator to another thread is sound.
//! - A function offset is only ever turned into a call after [`mproc_core::code::code_addr`]
//!   has confirmed it lies in this executable's code, and only offsets of the trampolines
//!   below are sent, each with the fingerprint of its function's type
//!   ([`mproc_core::code::FnSig`]); a trampoline compares that fingerprint with the one of
//!   the type it was made for before it turns the function's address into a typed
//!   pointer, and refuses the chunk otherwise. Peers are ranks of the same MPI job running
//!   the same build (checked by a layout fingerprint in the hello message). That is the
//!   trust model of mproc-pool.
use mpi::request::{Request, StaticScope};
use mpi::traits::*;
use mproc_core::code::FnSig;
use mproc_core::{Decode, Encode, codec};
use rkyv::util::AlignedVec;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What a worker gives back for a chunk: the encoded `(Vec<R>, Vec<(u32, String)>)`
/// (results of the items that succeeded, in order; position and panic message of the
/// others), or a message saying why the chunk could not run at all.
pub(crate) type ChunkOutcome = Result<AlignedVec, String>;

/// A typed trampoline: checks the function's type fingerprint (the `u64`), decodes a
/// chunk's arguments, runs the function on each, encodes the results.
///
/// Calling one is `unsafe`: the `usize` must be the address of a function whose type has
/// that fingerprint (the trampoline refuses any fingerprint but its own type's).
pub(crate) type Trampoline = unsafe fn(usize, u64, &[u8]) -> ChunkOutcome;

/// The fingerprint of a `fn(A) -> R` task.
pub(crate) fn sig_plain<A: Decode, R: Encode>() -> FnSig {
    FnSig::of::<fn(A) -> R, A, R>()
}

/// The fingerprint of a `fn(A, B) -> R` task over `(A, B)` items.
pub(crate) fn sig_star2<A, B, R>() -> FnSig
where
    (A, B): Decode,
    R: Encode,
{
    FnSig::of::<fn(A, B) -> R, (A, B), R>()
}

/// Checks a received fingerprint against the one a trampoline was made for (the error
/// text names the expected type and never shows an address).
fn check_sig(expected: FnSig, found: u64) -> Result<(), String> {
    expected.check(found, None).map_err(|e| e.to_string())
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

fn run_chunk<A: Decode, R: Encode>(input: &[u8], mut call: impl FnMut(A) -> R) -> ChunkOutcome {
    let items: Vec<A> = codec::decode(input, Vec::new())
        .map_err(|e| format!("the task's arguments could not be decoded: {e}"))?;
    let mut ok = Vec::with_capacity(items.len());
    let mut failed: Vec<(u32, String)> = Vec::new();
    for (i, a) in items.into_iter().enumerate() {
        match catch_unwind(AssertUnwindSafe(|| call(a))) {
            Ok(r) => ok.push(r),
            Err(p) => failed.push((i as u32, panic_text(&*p))),
        }
    }
    let enc = codec::encode(&(ok, failed))
        .map_err(|e| format!("the task's result could not be encoded: {e}"))?;
    if !enc.fds.is_empty() {
        return Err("the task's result holds handles (fds), which cannot cross MPI".into());
    }
    Ok(enc.bytes)
}

/// The trampoline of a `fn(A) -> R`.
///
/// # Safety
///
/// `func` must be the address of a function whose type has the fingerprint `sig`.
pub(crate) unsafe fn tramp_plain<A: Decode, R: Encode>(
    func: usize,
    sig: u64,
    input: &[u8],
) -> ChunkOutcome {
    check_sig(sig_plain::<A, R>(), sig)?;
    // SAFETY: `func`'s type has the fingerprint `sig` (the caller's contract), which is
    // `fn(A) -> R`'s (checked above).
    let f: fn(A) -> R = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    run_chunk(input, f)
}

/// The trampoline of a `fn(A, B) -> R` over `(A, B)` items.
///
/// # Safety
///
/// As [`tramp_plain`].
pub(crate) unsafe fn tramp_star2<A, B, R>(func: usize, sig: u64, input: &[u8]) -> ChunkOutcome
where
    (A, B): Decode,
    R: Encode,
{
    check_sig(sig_star2::<A, B, R>(), sig)?;
    // SAFETY: `func`'s type has the fingerprint `sig` (the caller's contract), which is
    // `fn(A, B) -> R`'s (checked above).
    let f: fn(A, B) -> R = unsafe { std::mem::transmute::<usize, fn(A, B) -> R>(func) };
    run_chunk(input, |(a, b): (A, B)| f(a, b))
}

/// Runs the trampoline at code offset `tramp` on the function at code offset `func`,
/// whose type the sender fingerprinted as `sig`.
pub(crate) fn call(tramp: u64, func: u64, sig: u64, input: &[u8]) -> ChunkOutcome {
    let (Some(t), Some(f)) = (
        mproc_core::code::code_addr(tramp),
        mproc_core::code::code_addr(func),
    ) else {
        return Err("the task names a function outside this program's code".into());
    };
    // SAFETY: `t` lies in this program's code and is the address of a `Trampoline`: the
    // peer (same build, checked at hello) sent the offset of `tramp_plain`/`tramp_star2`.
    let t: Trampoline = unsafe { std::mem::transmute::<usize, Trampoline>(t) };
    // SAFETY: the sender paired `f` with `t` and with the fingerprint `sig` of `f`'s type
    // (`FnRef`); the trampoline refuses a fingerprint other than its own type's.
    unsafe { t(f, sig, input) }
}

/// A non-blocking send whose buffer lives until MPI is done with it.
pub(crate) struct Isend {
    req: Option<Request<'static, [u8], StaticScope>>,
    buf: *mut [u8],
}

// SAFETY: the request and the buffer are only touched with `MPI_LOCK` held (module
// docs); the raw pointer is an owned leaked box.
unsafe impl std::marker::Send for Isend {}

impl Isend {
    /// Starts sending `data` to `dest` with `tag`.
    pub(crate) fn start(dest: &impl Destination, tag: i32, data: Vec<u8>) -> Isend {
        let buf: &'static mut [u8] = Box::leak(data.into_boxed_slice());
        let ptr: *mut [u8] = buf;
        // SAFETY: `ptr` comes from the leaked box just above; MPI only reads it, and the
        // box is rebuilt (freed) only once the request completed (`poll`).
        let shared: &'static [u8] = unsafe { &*ptr };
        let req = dest.immediate_send_with_tag(StaticScope, shared, tag);
        Isend {
            req: Some(req),
            buf: ptr,
        }
    }

    /// Whether the send completed (its buffer is then freed).
    pub(crate) fn poll(&mut self) -> bool {
        let Some(req) = self.req.take() else {
            return true;
        };
        match req.test() {
            Ok(_) => {
                // SAFETY: the request completed, so MPI no longer reads the buffer, and
                // no other reference to it remains.
                drop(unsafe { Box::from_raw(self.buf) });
                true
            }
            Err(req) => {
                self.req = Some(req);
                false
            }
        }
    }

    /// Gives up on a send to a peer that died: the request and its buffer are leaked
    /// (MPI may still hold both), never freed under it.
    pub(crate) fn abandon(mut self) {
        if let Some(req) = self.req.take() {
            // SAFETY: `into_raw` only disarms the request's drop check; the buffer stays
            // leaked, so nothing MPI may still read is freed.
            let _ = unsafe { req.into_raw() };
        }
    }
}

impl Drop for Isend {
    fn drop(&mut self) {
        // A send that never completed is abandoned, not waited for (a dead peer would
        // block for ever) and not freed (MPI may still read it).
        if let Some(req) = self.req.take() {
            // SAFETY: as in `abandon`.
            let _ = unsafe { req.into_raw() };
        }
    }
}

/// Makes MPI errors on `comm` return instead of aborting the process (a spawner must
/// outlive a lost worker).
pub(crate) fn errors_return(comm: &impl AsRaw<Raw = mpi::ffi::MPI_Comm>) {
    // SAFETY: `comm` is a live communicator; `RSMPI_ERRORS_RETURN` is a predefined handler.
    unsafe {
        mpi::ffi::MPI_Comm_set_errhandler(comm.as_raw(), mpi::ffi::RSMPI_ERRORS_RETURN);
    }
}

/// A communicator that may move to the thread that does a pool's communication.
pub(crate) struct SendComm<C>(pub(crate) C);

// SAFETY: MPI runs at `MPI_THREAD_SERIALIZED` or more and every call is made under
// `MPI_LOCK` (module docs), so a communicator handle may be used from any one thread.
unsafe impl<C> std::marker::Send for SendComm<C> {}

/// `MPI_Finalize`, once, if MPI was initialised and is not finalised yet.
pub(crate) fn finalize() {
    if mpi::environment::is_initialized() && !mpi::environment::is_finalized() {
        // SAFETY: MPI is initialised and not finalised; the caller holds `MPI_LOCK`, so
        // no other thread of ours is inside MPI.
        unsafe {
            mpi::ffi::MPI_Finalize();
        }
    }
}

extern "C" fn at_exit() {
    crate::env::finalize_at_exit();
}

/// Registers the exit hook that finalises MPI when the program ends.
pub(crate) fn register_at_exit() {
    // SAFETY: `at_exit` is an `extern "C" fn()` that never unwinds (it catches panics).
    unsafe {
        libc::atexit(at_exit);
    }
}

/// Ends the process at once with `code`, without running exit hooks again.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// The hook that makes a process started by `MpiPool::spawn` a worker before `main`.
#[ctor::ctor(unsafe)]
fn spawned_worker_hook() {
    if crate::env::started_as_spawned_worker() {
        let code = match catch_unwind(crate::worker::serve_spawned) {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                eprintln!("mproc-mpi: spawned worker failed: {e}");
                1
            }
            Err(_) => 101,
        };
        exit_now(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    static CALLS: AtomicU32 = AtomicU32::new(0);

    fn double(x: u64) -> u64 {
        CALLS.fetch_add(1, Ordering::SeqCst);
        x * 2
    }

    fn add(a: u64, b: u64) -> u64 {
        CALLS.fetch_add(1, Ordering::SeqCst);
        a + b
    }

    fn offsets(tramp: Trampoline, func: usize) -> (u64, u64) {
        (
            mproc_core::code::offset_of(tramp as usize),
            mproc_core::code::offset_of(func),
        )
    }

    fn results(out: ChunkOutcome) -> Vec<u64> {
        let (ok, failed): (Vec<u64>, Vec<(u32, String)>) =
            codec::decode(&out.unwrap(), Vec::new()).unwrap();
        assert!(failed.is_empty(), "{failed:?}");
        ok
    }

    #[test]
    fn a_mismatched_signature_is_refused_and_nothing_runs() {
        let input = codec::encode(&vec![1u64, 2, 3]).unwrap().bytes;
        let (tramp, func) = offsets(tramp_plain::<u64, u64>, double as fn(u64) -> u64 as usize);
        let good = sig_plain::<u64, u64>().hash;
        assert_eq!(results(call(tramp, func, good, &input)), [2, 4, 6]);
        let before = CALLS.load(Ordering::SeqCst);
        // The fingerprint of another type, with this function and trampoline.
        for forged in [
            sig_plain::<String, u64>().hash,
            sig_star2::<u64, u64, u64>().hash,
            0,
        ] {
            let e = call(tramp, func, forged, &input).unwrap_err();
            assert!(
                e.contains("type mismatch") && e.contains("fn(u64) -> u64"),
                "{e}"
            );
            assert!(!e.contains("0x"), "{e}");
        }
        // The same for the two-argument trampoline.
        let pairs = codec::encode(&vec![(1u64, 2u64)]).unwrap().bytes;
        let (t2, f2) = offsets(
            tramp_star2::<u64, u64, u64>,
            add as fn(u64, u64) -> u64 as usize,
        );
        let e = call(t2, f2, good, &pairs).unwrap_err();
        assert!(e.contains("fn(u64, u64) -> u64"), "{e}");
        // An offset outside the program's code.
        assert!(call(tramp, u64::MAX / 2, good, &input).is_err());
        assert_eq!(CALLS.load(Ordering::SeqCst), before, "nothing ran");
        let star2 = sig_star2::<u64, u64, u64>().hash;
        assert_eq!(results(call(t2, f2, star2, &pairs)), [3]);
    }
}

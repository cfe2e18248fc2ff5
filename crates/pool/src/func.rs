//! Task functions: a plain `fn` is sent to a worker as two offsets from an anchor in the
//! binary (the function itself and a typed trampoline that decodes its arguments and
//! encodes its result), the same way mproc-spawn identifies process targets, with the
//! fingerprint of the function's type (`mproc_core::code::FnSig`).
//!
//! The worker calls a trampoline only after the checks in [`FnRef::call`]: both offsets
//! land in this program's code; the trampoline then compares the fingerprint with that
//! of the type it was made for before it turns the function's address into a typed
//! pointer. (Workers are this process's own children, started by mproc-spawn, which
//! checked their build identity; the offsets travel on the pool's private socketpair.)
use crate::sys;
use mproc_core::code::FnSig;
use mproc_core::{Decode, Encode, codec::Encoded};
use rkyv::util::AlignedVec;
use std::any::Any;
use std::os::fd::OwnedFd;

/// What a trampoline works on in the worker.
pub(crate) struct CallCtx<'a> {
    /// Address of the user function in this process.
    pub(crate) func: usize,
    /// The fingerprint of the user function's type, as the parent sent it.
    pub(crate) sig: u64,
    /// The encoded arguments (16-byte aligned).
    pub(crate) input: &'a [u8],
    /// The fds of handles inside the arguments.
    pub(crate) fds: Vec<OwnedFd>,
    /// The shared state of a `map_with` call, if any.
    pub(crate) state: Option<&'a mut StateSlot>,
    /// The encoded result, set by the trampoline.
    pub(crate) out: Option<Encoded>,
}

/// What a packed trampoline works on: a whole chunk encoded as one `Vec<A>`.
pub(crate) struct PackedCtx<'a> {
    pub(crate) func: usize,
    /// The fingerprint of the user function's type, as the parent sent it.
    pub(crate) sig: u64,
    pub(crate) input: &'a [u8],
    pub(crate) fds: Vec<OwnedFd>,
    /// Positions not to run (already done before a re-queue), sorted.
    pub(crate) skip: &'a [u32],
    /// Where the worker publishes the item it runs (marked before each item).
    pub(crate) progress: &'a crate::worker::Progress<'a>,
    /// Record each item's start time too (a time limit is set).
    pub(crate) timed: bool,
    /// How many items ran.
    pub(crate) ran: u64,
    /// Items that panicked: position and message.
    pub(crate) failures: Vec<(u32, String)>,
    /// The encoded `Vec<R>` of the items that succeeded, in position order.
    pub(crate) out: Option<Encoded>,
}

/// The text of a panic payload.
pub(crate) fn panic_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

/// The `map_with` state as it sits in a worker: its bytes until first use, then the
/// decoded value for every later call.
pub(crate) struct StateSlot {
    bytes: AlignedVec,
    fds: Vec<OwnedFd>,
    decoded: Option<Box<dyn Any + Send>>,
}

impl StateSlot {
    pub(crate) fn new(bytes: AlignedVec, fds: Vec<OwnedFd>) -> Self {
        StateSlot {
            bytes,
            fds,
            decoded: None,
        }
    }

    pub(crate) fn get<S: Decode + Send + 'static>(&mut self) -> Result<&S, String> {
        if self.decoded.is_none() {
            let s: S = mproc_core::codec::decode(&self.bytes, std::mem::take(&mut self.fds))
                .map_err(|e| format!("shared state could not be decoded: {e}"))?;
            self.decoded = Some(Box::new(s));
            self.bytes = AlignedVec::new();
        }
        self.decoded
            .as_ref()
            .and_then(|b| b.downcast_ref::<S>())
            .ok_or_else(|| "shared state has another type than the function expects".into())
    }
}

/// A function as it travels to a worker: the trampoline's offset and the function's,
/// and the fingerprint of the function's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FnRef {
    pub(crate) tramp: u64,
    pub(crate) func: u64,
    /// The packed trampoline (a whole chunk as one `Vec<A>`), if there is one.
    pub(crate) packed: Option<u64>,
    /// `FnSig::hash` of the function's type.
    pub(crate) sig: u64,
}

fn off(tramp: sys::Trampoline, func: usize, sig: FnSig) -> FnRef {
    FnRef {
        tramp: sys::offset_of(tramp as usize),
        func: sys::offset_of(func),
        packed: None,
        sig: sig.hash,
    }
}

impl FnRef {
    pub(crate) fn plain<A: Decode, R: Encode>(f: fn(A) -> R) -> Self {
        let mut r = off(
            sys::tramp_plain::<A, R>,
            f as usize,
            sys::sig_plain::<A, R>(),
        );
        r.packed = Some(sys::offset_of(
            sys::tramp_packed::<A, R> as sys::PackedTrampoline as usize,
        ));
        r
    }

    pub(crate) fn with_state<S, A, R>(f: fn(&S, A) -> R) -> Self
    where
        S: Decode + Send + 'static,
        A: Decode,
        R: Encode,
    {
        off(
            sys::tramp_with::<S, A, R>,
            f as usize,
            sys::sig_with::<S, A, R>(),
        )
    }

    pub(crate) fn init<I: Decode>(f: fn(I)) -> Self {
        off(sys::tramp_init::<I>, f as usize, sys::sig_init::<I>())
    }

    /// Runs a packed chunk (the worker side); `tramp` is the packed trampoline.
    pub(crate) fn call_packed(&self, ctx: &mut PackedCtx<'_>) -> Result<(), String> {
        let (tramp, func) = sys::code_addrs(self.tramp, self.func)?;
        ctx.func = func;
        ctx.sig = self.sig;
        sys::call_packed_checked(tramp, ctx)
    }

    /// Runs the function on `ctx` in this process (the worker side).
    pub(crate) fn call(&self, ctx: &mut CallCtx<'_>) -> Result<(), String> {
        let (tramp, func) = sys::code_addrs(self.tramp, self.func)?;
        ctx.func = func;
        ctx.sig = self.sig;
        sys::call_checked(tramp, ctx)
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

    fn ctx(input: &[u8]) -> CallCtx<'_> {
        CallCtx {
            func: 0,
            sig: 0,
            input,
            fds: Vec::new(),
            state: None,
            out: None,
        }
    }

    #[test]
    fn a_mismatched_signature_is_refused_and_nothing_runs() {
        let enc = mproc_core::codec::encode(&21u64).unwrap();
        let good = FnRef::plain(double);
        let mut c = ctx(&enc.bytes);
        good.call(&mut c).unwrap();
        let out = c.out.take().unwrap();
        assert_eq!(
            mproc_core::codec::decode::<u64>(&out.bytes, out.fds).unwrap(),
            42
        );
        let before = CALLS.load(Ordering::SeqCst);
        // The fingerprint of another type, with this function and trampoline.
        let forged = FnRef {
            sig: FnRef::plain(|s: String| s.len() as u64).sig,
            ..good
        };
        let e = forged.call(&mut ctx(&enc.bytes)).unwrap_err();
        assert!(
            e.contains("type mismatch") && e.contains("fn(u64) -> u64"),
            "{e}"
        );
        assert!(!e.contains("0x"), "{e}");
        // An offset outside the program's code.
        let outside = FnRef {
            func: u64::MAX / 2,
            ..good
        };
        assert_eq!(
            outside.call(&mut ctx(&enc.bytes)).unwrap_err(),
            sys::OUTSIDE
        );
        assert_eq!(CALLS.load(Ordering::SeqCst), before, "nothing ran");
    }
}

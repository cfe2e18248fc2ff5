//! Task functions: a plain `fn` is sent to a worker as two offsets from an anchor in the
//! binary (the function itself and a typed trampoline that decodes its arguments and
//! encodes its result), the same way mproc-spawn identifies process targets.
use crate::sys;
use mproc_core::{Decode, Encode, codec::Encoded};
use rkyv::util::AlignedVec;
use std::any::Any;
use std::os::fd::OwnedFd;

/// What a trampoline works on in the worker.
pub(crate) struct CallCtx<'a> {
    /// Address of the user function in this process.
    pub(crate) func: usize,
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

/// A function as it travels to a worker: the trampoline's offset and the function's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FnRef {
    pub(crate) tramp: u64,
    pub(crate) func: u64,
    /// The packed trampoline (a whole chunk as one `Vec<A>`), if there is one.
    pub(crate) packed: Option<u64>,
}

fn off(tramp: sys::Trampoline, func: usize) -> FnRef {
    FnRef {
        tramp: sys::offset_of(tramp as usize),
        func: sys::offset_of(func),
        packed: None,
    }
}

impl FnRef {
    pub(crate) fn plain<A: Decode, R: Encode>(f: fn(A) -> R) -> Self {
        let mut r = off(sys::tramp_plain::<A, R>, f as usize);
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
        off(sys::tramp_with::<S, A, R>, f as usize)
    }

    pub(crate) fn init<I: Decode>(f: fn(I)) -> Self {
        off(sys::tramp_init::<I>, f as usize)
    }

    /// Runs a packed chunk (the worker side); `tramp` is the packed trampoline.
    pub(crate) fn call_packed(&self, ctx: &mut PackedCtx<'_>) -> Result<(), String> {
        ctx.func = mproc_core::code::code_addr(self.func).unwrap_or(0);
        sys::call_packed_trampoline(self.tramp, ctx)
    }

    /// Runs the function on `ctx` in this process (the worker side).
    pub(crate) fn call(&self, ctx: &mut CallCtx<'_>) -> Result<(), String> {
        ctx.func = mproc_core::code::code_addr(self.func).unwrap_or(0);
        sys::call_trampoline(self.tramp, ctx)
    }
}

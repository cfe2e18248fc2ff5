//! The one place where this crate needs `unsafe`: running a typed function in the
//! server, named by its offset from mproc-core's code anchor (as mproc-spawn names a
//! process target and mproc-pool a task).
//!
//! # Safety
//!
//! Client and server run the same executable (the server checks each connection's build
//! fingerprint, [`mproc_core::code::layout`] and [`mproc_core::code::exe_identity`], in
//! its hello, and refuses these calls from any other build). A client computes a pair of
//! offsets only from a typed trampoline and a function of exactly the type that
//! trampoline expects (the generic functions below build both from one set of type
//! parameters); the server checks that both land in this program's code before the call.
//! An authenticated peer is trusted not to forge a pair, as Python trusts an
//! authenticated peer with pickles: the auth key is what guards the server.
use crate::client::enc;
use crate::wire::Val;
use mproc_core::code::{code_addr, offset_of};
use mproc_core::{Decode, Encode, codec};
use rkyv::util::AlignedVec;
use std::any::Any;

const OUTSIDE: &str = "function offset does not point into this program's code";

/// Builds a custom object from encoded constructor arguments.
pub(crate) type CtorTramp = fn(usize, &Val) -> Result<Box<dyn Any + Send>, String>;
/// Calls a method on a custom object with encoded arguments, returning the encoded result.
pub(crate) type MethodTramp = fn(usize, &mut (dyn Any + Send), &Val) -> Result<Val, String>;
/// Sorts encoded items.
pub(crate) type SortTramp = fn(&mut Vec<Val>) -> Result<(), String>;

fn aligned(b: &[u8]) -> AlignedVec<16> {
    let mut a = AlignedVec::<16>::with_capacity(b.len());
    a.extend_from_slice(b);
    a
}

fn decode<A: Decode>(v: &Val) -> Result<A, String> {
    if v.ty != crate::client::type_tag::<A>() {
        return Err(format!("a value is not a {}", std::any::type_name::<A>()));
    }
    codec::decode::<A>(&aligned(&v.bytes), Vec::new()).map_err(|e| format!("arguments: {e}"))
}

/// Turns a function address back into a typed function pointer.
///
/// # Safety
/// `addr` must be the address of a function of type `F` (a `fn` pointer type) in this
/// process.
unsafe fn fn_from_addr<F: Copy>(addr: usize) -> F {
    const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<usize>()) };
    // SAFETY: the caller guarantees `addr` is a function of type `F` (a fn pointer of
    // the size of `usize`, asserted above).
    unsafe { std::mem::transmute_copy::<usize, F>(&addr) }
}

fn tramp_ctor<A: Decode, T: Send + 'static>(
    func: usize,
    args: &Val,
) -> Result<Box<dyn Any + Send>, String> {
    // SAFETY: `ctor_refs::<A, T>` pairs this trampoline only with a `fn(A) -> T`.
    let f: fn(A) -> T = unsafe { fn_from_addr(func) };
    Ok(Box::new(f(decode::<A>(args)?)))
}

fn tramp_method<T: 'static, A: Decode, R: Encode>(
    func: usize,
    obj: &mut (dyn Any + Send),
    args: &Val,
) -> Result<Val, String> {
    // SAFETY: `method_refs::<T, A, R>` pairs this trampoline only with a
    // `fn(&mut T, A) -> R`.
    let f: fn(&mut T, A) -> R = unsafe { fn_from_addr(func) };
    let obj = obj
        .downcast_mut::<T>()
        .ok_or_else(|| format!("the object is not a {}", std::any::type_name::<T>()))?;
    let r = f(obj, decode::<A>(args)?);
    enc(&r).map_err(|e| e.to_string())
}

fn tramp_sort<T: Decode + Ord>(items: &mut Vec<Val>) -> Result<(), String> {
    let mut keyed = std::mem::take(items)
        .into_iter()
        .map(|v| decode::<T>(&v).map(|t| (t, v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("an item is not a {}: {e}", std::any::type_name::<T>()))?;
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    *items = keyed.into_iter().map(|(_, v)| v).collect();
    Ok(())
}

/// The offsets naming `ctor` and its trampoline.
pub(crate) fn ctor_refs<A: Decode, T: Send + 'static>(ctor: fn(A) -> T) -> (u64, u64) {
    (
        offset_of(tramp_ctor::<A, T> as CtorTramp as usize),
        offset_of(ctor as usize),
    )
}

/// The offsets naming `method` and its trampoline.
pub(crate) fn method_refs<T: 'static, A: Decode, R: Encode>(
    method: fn(&mut T, A) -> R,
) -> (u64, u64) {
    (
        offset_of(tramp_method::<T, A, R> as MethodTramp as usize),
        offset_of(method as usize),
    )
}

/// The offset of the sorting trampoline for `T`.
pub(crate) fn sort_tramp<T: Decode + Ord>() -> u64 {
    offset_of(tramp_sort::<T> as SortTramp as usize)
}

fn checked(tramp: u64, func: Option<u64>) -> Result<(usize, usize), String> {
    let t = code_addr(tramp).ok_or(OUTSIDE)?;
    let f = match func {
        Some(f) => code_addr(f).ok_or(OUTSIDE)?,
        None => 0,
    };
    Ok((t, f))
}

/// Runs a constructor named by a client (see the module's safety contract).
pub(crate) fn run_ctor(tramp: u64, func: u64, args: &Val) -> Result<Box<dyn Any + Send>, String> {
    let (t, f) = checked(tramp, Some(func))?;
    // SAFETY: per the module contract, `t` is a `CtorTramp` of this image paired with `f`.
    let t: CtorTramp = unsafe { fn_from_addr(t) };
    t(f, args)
}

/// Runs a method named by a client (see the module's safety contract).
pub(crate) fn run_method(
    tramp: u64,
    func: u64,
    obj: &mut (dyn Any + Send),
    args: &Val,
) -> Result<Val, String> {
    let (t, f) = checked(tramp, Some(func))?;
    // SAFETY: per the module contract, `t` is a `MethodTramp` of this image paired with `f`.
    let t: MethodTramp = unsafe { fn_from_addr(t) };
    t(f, obj, args)
}

/// Runs a sort named by a client (see the module's safety contract).
pub(crate) fn run_sort(tramp: u64, items: &mut Vec<Val>) -> Result<(), String> {
    let (t, _) = checked(tramp, None)?;
    // SAFETY: per the module contract, `t` is a `SortTramp` of this image.
    let t: SortTramp = unsafe { fn_from_addr(t) };
    t(items)
}

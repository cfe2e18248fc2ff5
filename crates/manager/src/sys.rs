//! The one place where this crate needs `unsafe`: running a typed function in the
//! server, named by its offset from mproc-core's code anchor (as mproc-spawn names a
//! process target and mproc-pool a task).
//!
//! # Safety
//!
//! Client and server run the same executable (the server checks each connection's build
//! fingerprint, [`mproc_core::code::layout`] and [`mproc_core::code::exe_identity`], in
//! its hello, refuses these calls from any other build, and resolves every offset only
//! through [`mproc_core::code::checked_addr`] against that identity). A client computes a
//! pair of offsets only from a typed trampoline and a function of exactly the type that
//! trampoline expects (the generic functions below build both from one set of type
//! parameters), and sends the fingerprint of that type ([`FnSig`]) with them. The server
//! checks that both offsets land in this program's code; each trampoline compares the
//! fingerprint with that of the type it was made for before it turns the function's
//! address into a typed pointer, so a pair whose types disagree is refused
//! ([`FaultKind::Signature`]) and nothing runs. An authenticated peer is trusted not to
//! forge a fingerprint, as Python trusts an authenticated peer with pickles: the auth key
//! is what guards the server.
use crate::client::enc;
use crate::pooled::{Batches, MakeIMap, Submitted};
use crate::wire::{FaultKind, PoolWhat, Sig, Val};
use mproc_core::Message;
use mproc_core::code::{CodeError, FnSig, checked_addr, offset_of};
use mproc_core::{Decode, Encode, codec};
use mproc_pool::{Pool, PoolBuilder, StarFn};
use rkyv::util::AlignedVec;
use std::any::Any;
use std::sync::Arc;

/// Why a function named by a client was not run: the fault kind and its text.
pub(crate) type Refusal = (FaultKind, String);

/// Builds a custom object from encoded constructor arguments.
///
/// Calling one is `unsafe`: the `usize` must be the address of a function whose type has
/// the fingerprint in the [`Sig`] (the trampoline refuses any other fingerprint).
pub(crate) type CtorTramp = unsafe fn(usize, &Sig, &Val) -> Result<Box<dyn Any + Send>, Refusal>;
/// Calls a method on a custom object with encoded arguments, returning the encoded
/// result. `unsafe` on the terms of [`CtorTramp`].
pub(crate) type MethodTramp =
    unsafe fn(usize, &Sig, &mut (dyn Any + Send), &Val) -> Result<Val, Refusal>;
/// Sorts encoded items. `unsafe` to call for symmetry with the others: it checks the
/// fingerprint of the item type the client sent before it decodes anything.
pub(crate) type SortTramp = unsafe fn(&Sig, &mut Vec<Val>) -> Result<(), Refusal>;

/// The fault a refused function offset gets: a signature mismatch is
/// [`FaultKind::Signature`], another build [`FaultKind::Unsupported`], anything else a
/// bad request. The text never shows an address.
fn code_fault(e: CodeError) -> Refusal {
    let kind = match e {
        CodeError::Signature { .. } => FaultKind::Signature,
        CodeError::ForeignBuild { .. } => FaultKind::Unsupported,
        _ => FaultKind::BadRequest,
    };
    (kind, e.to_string())
}

/// Checks a received fingerprint against the one a trampoline was made for.
fn check_sig(expected: FnSig, sig: &Sig) -> Result<(), Refusal> {
    expected
        .check(sig.hash, Some(&sig.name))
        .map_err(code_fault)
}

/// Submits work to a pool: the function (named by its address), what to do with it,
/// the encoded arguments and the chunk size (0: the pool's default). `unsafe` on the
/// terms of [`CtorTramp`].
pub(crate) type PoolTramp =
    unsafe fn(usize, &Sig, &Arc<Pool>, PoolWhat, &Val, usize, bool) -> Result<Submitted, Refusal>;

/// Gives a pool builder its initializer (a function named by its address, with encoded
/// arguments). `unsafe` on the terms of [`CtorTramp`].
pub(crate) type InitTramp =
    unsafe fn(usize, &Sig, PoolBuilder, &Val) -> Result<PoolBuilder, Refusal>;

/// The fingerprint of a constructor `fn(A) -> T` (the object type `T` is in its name).
pub(crate) fn sig_ctor<A: Decode, T: Send + 'static>() -> FnSig {
    FnSig::of::<fn(A) -> T, A, ()>()
}

/// The fingerprint of a method `fn(&mut T, A) -> R`.
pub(crate) fn sig_method<T: 'static, A: Decode, R: Encode>() -> FnSig {
    FnSig::of::<fn(&mut T, A) -> R, A, R>()
}

/// The fingerprint of sorting items of type `T`.
pub(crate) fn sig_sort<T: Decode + Ord>() -> FnSig {
    FnSig::of::<fn(&mut [T]), T, ()>()
}

/// The fingerprint of a pool task `fn(A) -> R` (as mproc-pool fingerprints it).
pub(crate) fn sig_task<A: Decode, R: Encode + Decode>() -> FnSig {
    FnSig::of::<fn(A) -> R, A, R>()
}

/// The fingerprint of a starmap function `F` over tuples `Args` (its type name is the
/// `fn` item's path).
pub(crate) fn sig_star<F: StarFn<Args>, Args: Decode>() -> FnSig
where
    F::Output: Encode + Decode,
{
    FnSig::of::<F, Args, F::Output>()
}

/// The fingerprint of a pool initializer `fn(I)`.
pub(crate) fn sig_init<I: Decode>() -> FnSig {
    FnSig::of::<fn(I), I, ()>()
}

fn aligned(b: &[u8]) -> AlignedVec<16> {
    let mut a = AlignedVec::<16>::with_capacity(b.len());
    a.extend_from_slice(b);
    a
}

pub(crate) fn decode<A: Decode>(v: &Val) -> Result<A, String> {
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

/// Trampoline for a constructor `fn(A) -> T`.
///
/// # Safety
///
/// `func` must be the address of a function whose type has the fingerprint `sig`.
unsafe fn tramp_ctor<A: Decode, T: Send + 'static>(
    func: usize,
    sig: &Sig,
    args: &Val,
) -> Result<Box<dyn Any + Send>, Refusal> {
    check_sig(sig_ctor::<A, T>(), sig)?;
    // SAFETY: `func`'s type has the fingerprint `sig` (the caller's contract), which is
    // `fn(A) -> T`'s (checked above).
    let f: fn(A) -> T = unsafe { fn_from_addr(func) };
    let a = decode::<A>(args).map_err(|m| (FaultKind::BadRequest, m))?;
    Ok(Box::new(f(a)))
}

/// Trampoline for a method `fn(&mut T, A) -> R`.
///
/// # Safety
///
/// As [`tramp_ctor`].
unsafe fn tramp_method<T: 'static, A: Decode, R: Encode>(
    func: usize,
    sig: &Sig,
    obj: &mut (dyn Any + Send),
    args: &Val,
) -> Result<Val, Refusal> {
    check_sig(sig_method::<T, A, R>(), sig)?;
    // SAFETY: `func`'s type has the fingerprint `sig` (the caller's contract), which is
    // `fn(&mut T, A) -> R`'s (checked above).
    let f: fn(&mut T, A) -> R = unsafe { fn_from_addr(func) };
    let obj = obj.downcast_mut::<T>().ok_or_else(|| {
        (
            FaultKind::BadRequest,
            format!("the object is not a {}", std::any::type_name::<T>()),
        )
    })?;
    let a = decode::<A>(args).map_err(|m| (FaultKind::BadRequest, m))?;
    let r = f(obj, a);
    enc(&r).map_err(|e| (FaultKind::BadRequest, e.to_string()))
}

/// Trampoline sorting items of type `T`.
///
/// # Safety
///
/// None beyond the type's: it calls no function by address (it checks `sig` all the
/// same, so a client sorting with another item type than it claims is refused).
unsafe fn tramp_sort<T: Decode + Ord>(sig: &Sig, items: &mut Vec<Val>) -> Result<(), Refusal> {
    check_sig(sig_sort::<T>(), sig)?;
    let mut keyed = std::mem::take(items)
        .into_iter()
        .map(|v| decode::<T>(&v).map(|t| (t, v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            (
                FaultKind::Panicked,
                format!("an item is not a {}: {e}", std::any::type_name::<T>()),
            )
        })?;
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    *items = keyed.into_iter().map(|(_, v)| v).collect();
    Ok(())
}

fn bad(m: String) -> Refusal {
    (FaultKind::BadRequest, m)
}

/// Trampoline submitting a pool task `fn(A) -> R` (`apply`, `map`, `imap`,
/// `imap_unordered`).
///
/// # Safety
///
/// As [`tramp_ctor`].
unsafe fn tramp_pool<A, R>(
    func: usize,
    sig: &Sig,
    pool: &Arc<Pool>,
    what: PoolWhat,
    args: &Val,
    chunksize: usize,
    last: bool,
) -> Result<Submitted, Refusal>
where
    A: Message + Send + 'static,
    R: Message + Send + 'static,
{
    check_sig(sig_task::<A, R>(), sig)?;
    // SAFETY: `func`'s type has the fingerprint `sig` (the caller's contract), which is
    // `fn(A) -> R`'s (checked above).
    let f: fn(A) -> R = unsafe { fn_from_addr(func) };
    let chunk = (chunksize > 0).then_some(chunksize);
    Ok(match what {
        PoolWhat::Apply => {
            let a = decode::<A>(args).map_err(bad)?;
            Submitted::Job(Arc::new(pool.apply_async(f, a)))
        }
        PoolWhat::Map => {
            let items = decode::<Vec<A>>(args).map_err(bad)?;
            Submitted::Job(Arc::new(pool.map_async_chunked(f, items, chunk)))
        }
        PoolWhat::Imap | PoolWhat::ImapUnordered => {
            let first = decode::<Vec<A>>(args).map_err(bad)?;
            let chunk = chunksize.max(1);
            let ordered = what == PoolWhat::Imap;
            let make: MakeIMap<A, R> = Box::new(move |p, v| {
                if ordered {
                    p.imap_chunked(f, v, chunk)
                } else {
                    p.imap_unordered_chunked(f, v, chunk)
                }
            });
            Submitted::Iter(Box::new(Batches::new(pool, make, ordered, first, last)))
        }
        PoolWhat::Starmap | PoolWhat::Istarmap => {
            return Err(bad("a starmap needs its own trampoline".into()));
        }
    })
}

/// Trampoline giving a pool builder the initializer `fn(I)` and its arguments.
///
/// # Safety
///
/// As [`tramp_ctor`].
unsafe fn tramp_init<I: Message + Send + 'static>(
    func: usize,
    sig: &Sig,
    builder: PoolBuilder,
    args: &Val,
) -> Result<PoolBuilder, Refusal> {
    check_sig(sig_init::<I>(), sig)?;
    // SAFETY: `func`'s type has the fingerprint `sig` (the caller's contract), which is
    // `fn(I)`'s (checked above).
    let f: fn(I) = unsafe { fn_from_addr(func) };
    let a = decode::<I>(args).map_err(bad)?;
    Ok(builder.initializer(f, a))
}

/// Trampoline submitting a starmap of the `fn` item type `F` over tuples `Args`. The
/// function's address is not used: a `fn` item's type names it.
///
/// # Safety
///
/// None beyond the type's: it calls nothing by address (it checks `sig` all the same,
/// so a client that claims another function type is refused).
unsafe fn tramp_star<F, Args>(
    _func: usize,
    sig: &Sig,
    pool: &Arc<Pool>,
    what: PoolWhat,
    args: &Val,
    chunksize: usize,
    last: bool,
) -> Result<Submitted, Refusal>
where
    F: StarFn<Args>,
    Args: Message + Send + 'static,
    F::Output: Message + Send + 'static,
{
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "starmap takes a fn item, not a fn pointer or a closure"
        )
    };
    check_sig(sig_star::<F, Args>(), sig)?;
    if !matches!(what, PoolWhat::Starmap | PoolWhat::Istarmap) {
        return Err(bad("this trampoline only runs starmaps".into()));
    }
    if std::any::type_name::<F>().contains("{{closure}}") {
        return Err(bad(format!(
            "starmap takes a `fn` item, not a closure: {}",
            std::any::type_name::<F>()
        )));
    }
    let items = decode::<Vec<Args>>(args).map_err(bad)?;
    // SAFETY: `F` is zero-sized (checked at compile time above) and, `StarFn` being
    // sealed (mproc-pool implements it only for `Fn` types, which stable Rust lets no
    // other type implement), a `fn` item or a closure type; not a closure (checked
    // above). A `fn` item holds no bytes and no state, so one made from nothing is the
    // function itself; the client held a value of `F`, so `F` is inhabited. This is
    // mproc-pool's own argument for its starmap shim, which does the same in workers.
    let f: F = unsafe { std::mem::zeroed() };
    if what == PoolWhat::Istarmap {
        let chunk = chunksize.max(1);
        let make: MakeIMap<Args, F::Output> = Box::new(move |p, v| p.istarmap(f, v, chunk));
        return Ok(Submitted::Iter(Box::new(Batches::new(
            pool, make, true, items, last,
        ))));
    }
    let chunk = (chunksize > 0).then_some(chunksize);
    Ok(Submitted::Job(Arc::new(
        pool.starmap_async_chunked(f, items, chunk),
    )))
}

/// The offsets naming the pool task `f` and its trampoline, and its fingerprint.
pub(crate) fn task_refs<A, R>(f: fn(A) -> R) -> (u64, u64, Sig)
where
    A: Message + Send + 'static,
    R: Message + Send + 'static,
{
    (
        offset_of(tramp_pool::<A, R> as PoolTramp as usize),
        offset_of(f as usize),
        sig_task::<A, R>().into(),
    )
}

/// The offset of the starmap trampoline for `F` (twice: the function slot names the
/// trampoline too, a `fn` item having no address of its own to send), and its
/// fingerprint.
pub(crate) fn star_refs<F, Args>(_f: F) -> (u64, u64, Sig)
where
    F: StarFn<Args>,
    Args: Message + Send + 'static,
    F::Output: Message + Send + 'static,
{
    let t = offset_of(tramp_star::<F, Args> as PoolTramp as usize);
    (t, t, sig_star::<F, Args>().into())
}

/// The offsets naming the pool initializer `f` and its trampoline, and its fingerprint.
pub(crate) fn init_refs<I: Message + Send + 'static>(f: fn(I)) -> (u64, u64, Sig) {
    (
        offset_of(tramp_init::<I> as InitTramp as usize),
        offset_of(f as usize),
        sig_init::<I>().into(),
    )
}

/// The offsets naming `ctor` and its trampoline, and the fingerprint of its type.
pub(crate) fn ctor_refs<A: Decode, T: Send + 'static>(ctor: fn(A) -> T) -> (u64, u64, Sig) {
    (
        offset_of(tramp_ctor::<A, T> as CtorTramp as usize),
        offset_of(ctor as usize),
        sig_ctor::<A, T>().into(),
    )
}

/// The offsets naming `method` and its trampoline, and the fingerprint of its type.
pub(crate) fn method_refs<T: 'static, A: Decode, R: Encode>(
    method: fn(&mut T, A) -> R,
) -> (u64, u64, Sig) {
    (
        offset_of(tramp_method::<T, A, R> as MethodTramp as usize),
        offset_of(method as usize),
        sig_method::<T, A, R>().into(),
    )
}

/// The offset of the sorting trampoline for `T`, and the fingerprint of its item type.
pub(crate) fn sort_tramp<T: Decode + Ord>() -> (u64, Sig) {
    (
        offset_of(tramp_sort::<T> as SortTramp as usize),
        sig_sort::<T>().into(),
    )
}

/// The address of `offset`, checked against `build` (the client's build identity from
/// its hello) by [`checked_addr`].
fn addr(build: u64, offset: u64) -> Result<usize, Refusal> {
    checked_addr(build, offset).map_err(code_fault)
}

/// Runs a constructor named by a client of build `build` (see the module's safety
/// contract).
pub(crate) fn run_ctor(
    build: u64,
    tramp: u64,
    func: u64,
    sig: &Sig,
    args: &Val,
) -> Result<Box<dyn Any + Send>, Refusal> {
    let (t, f) = (addr(build, tramp)?, addr(build, func)?);
    // SAFETY: per the module contract, `t` (in this build's code, `checked_addr`) is a
    // `CtorTramp` of this image paired with `f`.
    let t: CtorTramp = unsafe { fn_from_addr(t) };
    // SAFETY: the trampoline checks that `sig` is the fingerprint of the type it was
    // made for, the type of `f` by the module contract.
    unsafe { t(f, sig, args) }
}

/// Runs a method named by a client of build `build` (see the module's safety contract).
pub(crate) fn run_method(
    build: u64,
    tramp: u64,
    func: u64,
    sig: &Sig,
    obj: &mut (dyn Any + Send),
    args: &Val,
) -> Result<Val, Refusal> {
    let (t, f) = (addr(build, tramp)?, addr(build, func)?);
    // SAFETY: per the module contract, `t` (in this build's code, `checked_addr`) is a
    // `MethodTramp` of this image paired with `f`.
    let t: MethodTramp = unsafe { fn_from_addr(t) };
    // SAFETY: as in `run_ctor`.
    unsafe { t(f, sig, obj, args) }
}

/// Runs a sort named by a client of build `build` (see the module's safety contract).
pub(crate) fn run_sort(
    build: u64,
    tramp: u64,
    sig: &Sig,
    items: &mut Vec<Val>,
) -> Result<(), Refusal> {
    let t = addr(build, tramp)?;
    // SAFETY: per the module contract, `t` (in this build's code, `checked_addr`) is a
    // `SortTramp` of this image.
    let t: SortTramp = unsafe { fn_from_addr(t) };
    // SAFETY: the trampoline checks `sig` and calls nothing by address.
    unsafe { t(sig, items) }
}

/// Submits pool work named by a client of build `build` (see the module's safety
/// contract).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_pool(
    build: u64,
    tramp: u64,
    func: u64,
    sig: &Sig,
    pool: &Arc<Pool>,
    what: PoolWhat,
    args: &Val,
    chunksize: usize,
    last: bool,
) -> Result<Submitted, Refusal> {
    let (t, f) = (addr(build, tramp)?, addr(build, func)?);
    // SAFETY: per the module contract, `t` (in this build's code, `checked_addr`) is a
    // `PoolTramp` of this image paired with `f`.
    let t: PoolTramp = unsafe { fn_from_addr(t) };
    // SAFETY: the trampoline checks that `sig` is the fingerprint of the type it was
    // made for, the type of `f` by the module contract.
    unsafe { t(f, sig, pool, what, args, chunksize, last) }
}

/// Gives `builder` the initializer named by a client of build `build` (see the module's
/// safety contract).
pub(crate) fn run_init(
    build: u64,
    tramp: u64,
    func: u64,
    sig: &Sig,
    builder: PoolBuilder,
    args: &Val,
) -> Result<PoolBuilder, Refusal> {
    let (t, f) = (addr(build, tramp)?, addr(build, func)?);
    // SAFETY: per the module contract, `t` (in this build's code, `checked_addr`) is an
    // `InitTramp` of this image paired with `f`.
    let t: InitTramp = unsafe { fn_from_addr(t) };
    // SAFETY: the trampoline checks that `sig` is the fingerprint of the type it was
    // made for, the type of `f` by the module contract.
    unsafe { t(f, sig, builder, args) }
}

//! The one place where this crate needs `unsafe`: turning a function's offset (relative
//! to an anchor in the same binary) back into a callable function pointer.
//!
//! # Safety
//!
//! Parent and worker run the same executable image (the worker's spawn bootstrap
//! checked the build identity); a function's address minus the anchor's address is the
//! same in both, whatever ASLR did (the whole image moves together). The parent only
//! ever sends offsets it computed from real `fn` pointers, each with the fingerprint of
//! its type and paired with the trampoline of exactly that type (see `func.rs`), over a
//! socket private to the pool. The worker checks that both addresses lie inside its own
//! code before calling a trampoline, and each trampoline checks the fingerprint before
//! it turns the function's address into a typed pointer.
use crate::func::{CallCtx, PackedCtx, panic_text};
use mproc_core::code::FnSig;

/// The offset of `addr` (a function address) from mproc-core's code anchor.
pub(crate) fn offset_of(addr: usize) -> u64 {
    mproc_core::code::offset_of(addr)
}

pub(crate) const OUTSIDE: &str = "task function offset does not point into this program's code";

/// The addresses of a trampoline and a function given by their offsets, if both land in
/// this program's code.
pub(crate) fn code_addrs(tramp: u64, func: u64) -> Result<(usize, usize), String> {
    match (
        mproc_core::code::code_addr(tramp),
        mproc_core::code::code_addr(func),
    ) {
        (Some(t), Some(f)) => Ok((t, f)),
        _ => Err(OUTSIDE.into()),
    }
}

/// Calls the trampoline at `tramp` (from [`code_addrs`]) on `ctx`, whose `func` (from
/// [`code_addrs`]) and `sig` come from one `func::FnRef` that the parent sent.
pub(crate) fn call_checked(tramp: usize, ctx: &mut CallCtx<'_>) -> Result<(), String> {
    // SAFETY: both addresses lie in this program's code (`code_addrs`); the parent
    // computed them from a trampoline and a function whose fingerprint is `ctx.sig`,
    // paired by a `FnRef` constructor, in a process of this build, and sent them on the
    // pool's private socket (module invariants). The trampoline checks the fingerprint.
    unsafe { call_trampoline(tramp, ctx) }
}

/// As [`call_checked`], for a packed trampoline.
pub(crate) fn call_packed_checked(tramp: usize, ctx: &mut PackedCtx<'_>) -> Result<(), String> {
    // SAFETY: as in `call_checked`, with the packed trampoline `FnRef::plain` pairs.
    unsafe { call_packed_trampoline(tramp, ctx) }
}

/// A trampoline: checks the type fingerprint in `ctx`, decodes the arguments, calls the
/// user function, encodes the result. All trampolines share this signature whatever
/// their type parameters.
///
/// Calling one is `unsafe`: `ctx.func` must be the address of a function whose type has
/// the fingerprint `ctx.sig`.
pub(crate) type Trampoline = unsafe fn(&mut CallCtx<'_>) -> Result<(), String>;

/// Calls the trampoline at address `tramp` on `ctx`.
///
/// # Safety
///
/// `tramp` must be the address of a [`Trampoline`] of this program, and `ctx.func` the
/// address of a function whose type has the fingerprint `ctx.sig` (the trampoline
/// refuses a fingerprint other than that of the type it was made for).
pub(crate) unsafe fn call_trampoline(tramp: usize, ctx: &mut CallCtx<'_>) -> Result<(), String> {
    // SAFETY: the caller guarantees `tramp` is a `Trampoline`; fn pointers have the size
    // and representation of `usize`.
    let f: Trampoline = unsafe { std::mem::transmute::<usize, Trampoline>(tramp) };
    // SAFETY: the caller guarantees the pairing of `ctx.func` and `ctx.sig`.
    unsafe { f(ctx) }
}

/// A packed trampoline: runs a whole chunk encoded as one `Vec<A>`. Calling one is
/// `unsafe` on the terms of [`Trampoline`].
pub(crate) type PackedTrampoline = unsafe fn(&mut PackedCtx<'_>) -> Result<(), String>;

/// As [`call_trampoline`], for a packed trampoline (`func::FnRef::plain` pairs it).
///
/// # Safety
///
/// As [`call_trampoline`], with `tramp` a [`PackedTrampoline`].
pub(crate) unsafe fn call_packed_trampoline(
    tramp: usize,
    ctx: &mut PackedCtx<'_>,
) -> Result<(), String> {
    // SAFETY: the caller guarantees `tramp` is a `PackedTrampoline`.
    let f: PackedTrampoline = unsafe { std::mem::transmute::<usize, PackedTrampoline>(tramp) };
    // SAFETY: the caller guarantees the pairing of `ctx.func` and `ctx.sig`.
    unsafe { f(ctx) }
}

/// The fingerprint of a `fn(A) -> R` task.
pub(crate) fn sig_plain<A: mproc_core::Decode, R: mproc_core::Encode>() -> FnSig {
    FnSig::of::<fn(A) -> R, A, R>()
}

/// The fingerprint of a `fn(&S, A) -> R` task.
pub(crate) fn sig_with<S, A, R>() -> FnSig
where
    S: mproc_core::Decode,
    A: mproc_core::Decode,
    R: mproc_core::Encode,
{
    FnSig::of::<fn(&S, A) -> R, (S, A), R>()
}

/// The fingerprint of an initializer `fn(I)`.
pub(crate) fn sig_init<I: mproc_core::Decode>() -> FnSig {
    FnSig::of::<fn(I), I, ()>()
}

/// Checks a received fingerprint against `expected` (a typed error's text naming the
/// expected type and the received fingerprint).
fn check_sig(expected: FnSig, found: u64) -> Result<(), String> {
    expected.check(found, None).map_err(|e| e.to_string())
}

/// Turns a function address back into a typed function pointer.
///
/// # Safety
///
/// `addr` must be the address of a function of type `F` (a `fn` pointer type) in this
/// process.
pub(crate) unsafe fn fn_from_addr<F: Copy>(addr: usize) -> F {
    debug_assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<usize>());
    // SAFETY: the caller guarantees `addr` is a function of type `F`; `F` is a fn pointer
    // of the same size as `usize` (asserted above in debug builds).
    unsafe { std::mem::transmute_copy::<usize, F>(&addr) }
}

/// Takes the fds out of `ctx` (each decode consumes them).
fn take_fds(ctx: &mut CallCtx<'_>) -> Vec<std::os::fd::OwnedFd> {
    std::mem::take(&mut ctx.fds)
}

fn encode_into<R: mproc_core::Encode>(ctx: &mut CallCtx<'_>, r: &R) -> Result<(), String> {
    let enc =
        mproc_core::codec::encode(r).map_err(|e| format!("result could not be encoded: {e}"))?;
    ctx.out = Some(enc);
    Ok(())
}

fn decode_args<A: mproc_core::Decode>(ctx: &mut CallCtx<'_>) -> Result<A, String> {
    let fds = take_fds(ctx);
    mproc_core::codec::decode::<A>(ctx.input, fds)
        .map_err(|e| format!("arguments could not be decoded: {e}"))
}

/// Trampoline for `fn(A) -> R`.
///
/// # Safety
///
/// `ctx.func` must be the address of a function whose type has the fingerprint `ctx.sig`.
pub(crate) unsafe fn tramp_plain<A: mproc_core::Decode, R: mproc_core::Encode>(
    ctx: &mut CallCtx<'_>,
) -> Result<(), String> {
    check_sig(sig_plain::<A, R>(), ctx.sig)?;
    // SAFETY: `ctx.func`'s type has the fingerprint `ctx.sig` (the caller's contract),
    // which is `fn(A) -> R`'s (checked above).
    let f: fn(A) -> R = unsafe { fn_from_addr(ctx.func) };
    let a = decode_args::<A>(ctx)?;
    let r = f(a);
    encode_into(ctx, &r)
}

/// Trampoline for `fn(&S, A) -> R`, the state decoded once per worker and cached.
///
/// # Safety
///
/// As [`tramp_plain`].
pub(crate) unsafe fn tramp_with<S, A, R>(ctx: &mut CallCtx<'_>) -> Result<(), String>
where
    S: mproc_core::Decode + Send + 'static,
    A: mproc_core::Decode,
    R: mproc_core::Encode,
{
    check_sig(sig_with::<S, A, R>(), ctx.sig)?;
    // SAFETY: as in `tramp_plain`, for `fn(&S, A) -> R`.
    let f: fn(&S, A) -> R = unsafe { fn_from_addr(ctx.func) };
    let a = decode_args::<A>(ctx)?;
    let slot = ctx
        .state
        .as_deref_mut()
        .ok_or("the shared state for this call did not arrive")?;
    let s: &S = slot.get::<S>()?;
    let r = f(s, a);
    encode_into(ctx, &r)
}

/// Trampoline for an initializer `fn(I)`.
///
/// # Safety
///
/// As [`tramp_plain`].
pub(crate) unsafe fn tramp_init<I: mproc_core::Decode>(
    ctx: &mut CallCtx<'_>,
) -> Result<(), String> {
    check_sig(sig_init::<I>(), ctx.sig)?;
    // SAFETY: as in `tramp_plain`, for `fn(I)`.
    let f: fn(I) = unsafe { fn_from_addr(ctx.func) };
    let a = decode_args::<I>(ctx)?;
    f(a);
    Ok(())
}

/// Packed trampoline for `fn(A) -> R`: decodes the chunk's `Vec<A>` once, runs every
/// item (a panic fails only its item), encodes the successes as one `Vec<R>`.
///
/// # Safety
///
/// `ctx.func` must be the address of a function whose type has the fingerprint `ctx.sig`.
pub(crate) unsafe fn tramp_packed<A: mproc_core::Decode, R: mproc_core::Encode>(
    ctx: &mut PackedCtx<'_>,
) -> Result<(), String> {
    check_sig(sig_plain::<A, R>(), ctx.sig)?;
    // SAFETY: as in `tramp_plain`.
    let f: fn(A) -> R = unsafe { fn_from_addr(ctx.func) };
    let fds = std::mem::take(&mut ctx.fds);
    let items: Vec<A> = mproc_core::codec::decode(ctx.input, fds)
        .map_err(|e| format!("arguments could not be decoded: {e}"))?;
    let mut out: Vec<R> = Vec::with_capacity(items.len());
    let mut skip = ctx.skip.iter().copied().peekable();
    let mut items = items.into_iter().enumerate();
    let mut running = 0u32;
    let (progress, timed) = (ctx.progress, ctx.timed);
    // One unwind guard around the loop, not one per item: a panic fails its item, and
    // the loop resumes with the next one.
    loop {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for (pos, a) in items.by_ref() {
                let pos = pos as u32;
                if skip.peek() == Some(&pos) {
                    skip.next();
                    continue;
                }
                running = pos;
                progress.item(pos, timed);
                out.push(f(a));
            }
        }));
        match r {
            Ok(()) => break,
            Err(p) => ctx.failures.push((running, panic_text(&*p))),
        }
    }
    ctx.ran = (out.len() + ctx.failures.len()) as u64;
    let buf = crate::bufs::take(std::mem::size_of_val(out.as_slice()) + 64);
    let enc = mproc_core::codec::encode_into(&out, buf)
        .map_err(|e| format!("results could not be encoded: {e}"))?;
    ctx.out = Some(enc);
    Ok(())
}

/// Tells the C allocator of a worker process to keep its heap: a worker serves buffers
/// of the same large sizes chunk after chunk, and glibc would otherwise hand them back
/// to the kernel (mmap'd blocks over 128 KiB, a heap top over its trim threshold) and
/// fault them in again for the next chunk, which here costs more than the work.
pub(crate) fn keep_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `mallopt` only changes allocator tunables; it is called once, at the
    // start of a worker, before the worker allocates for its tasks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Hands the C allocator's free memory back to the kernel. Called when the last pool of
/// the process is gone: a large map leaves tens of MB of freed small blocks behind, and
/// every later `fork` of this process copies the page tables of all of it.
pub(crate) fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `malloc_trim` only releases free memory; it takes the allocator's own locks
    // and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

//! The one place where this crate needs `unsafe`: turning a function's offset (relative
//! to an anchor in the same binary) back into a callable function pointer.
//!
//! # Safety
//!
//! Parent and worker run the same executable image; a function's address minus the
//! anchor's address is the same in both, whatever ASLR did (the whole image moves
//! together). The parent only ever sends offsets it computed from real `fn` pointers of
//! the exact type the matching trampoline expects (see `func.rs`), over a socket private
//! to the pool; the worker additionally checks that the address lies inside an executable
//! mapping of its own image before calling it.
use crate::func::{CallCtx, PackedCtx, panic_text};
use mproc_core::code::{code_addr, is_code};

const OUTSIDE: &str = "task function offset does not point into this program's code";

/// The offset of `addr` (a function address) from mproc-core's code anchor.
pub(crate) fn offset_of(addr: usize) -> u64 {
    mproc_core::code::offset_of(addr)
}

/// A trampoline: decodes the arguments in `ctx`, calls the user function, encodes the
/// result. All trampolines share this signature whatever their type parameters.
pub(crate) type Trampoline = fn(&mut CallCtx<'_>) -> Result<(), String>;

/// Calls the trampoline at `tramp_offset` on `ctx` (whose `func` is the paired
/// function's address).
///
/// Offsets reach this call only from `func::FnRef`, whose constructors pair a typed
/// trampoline with a function of exactly the type it expects, in the parent (same
/// executable), over the pool's private socket; both addresses are checked to lie in
/// this program's code before the call.
pub(crate) fn call_trampoline(tramp_offset: u64, ctx: &mut CallCtx<'_>) -> Result<(), String> {
    let (Some(addr), true) = (code_addr(tramp_offset), is_code(ctx.func)) else {
        return Err(OUTSIDE.into());
    };
    // SAFETY: the offset names a `Trampoline` of this image (see above: it was computed
    // by `offset_of` from one, in a process running this executable, and checked to lie
    // in its code); fn pointers have the size and representation of `usize`.
    let f: Trampoline = unsafe { std::mem::transmute::<usize, Trampoline>(addr) };
    f(ctx)
}

/// A packed trampoline: runs a whole chunk encoded as one `Vec<A>`.
pub(crate) type PackedTrampoline = fn(&mut PackedCtx<'_>) -> Result<(), String>;

/// As [`call_trampoline`], for a packed trampoline (`func::FnRef::plain` pairs it).
pub(crate) fn call_packed_trampoline(
    tramp_offset: u64,
    ctx: &mut PackedCtx<'_>,
) -> Result<(), String> {
    let (Some(addr), true) = (code_addr(tramp_offset), is_code(ctx.func)) else {
        return Err(OUTSIDE.into());
    };
    // SAFETY: as in `call_trampoline`: the offset names a `PackedTrampoline` of this
    // image, paired with `ctx.func` by `FnRef::plain`, and checked to lie in its code.
    let f: PackedTrampoline = unsafe { std::mem::transmute::<usize, PackedTrampoline>(addr) };
    f(ctx)
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
pub(crate) fn tramp_plain<A: mproc_core::Decode, R: mproc_core::Encode>(
    ctx: &mut CallCtx<'_>,
) -> Result<(), String> {
    // SAFETY: `FnRef::plain::<A, R>` pairs this trampoline only with a `fn(A) -> R`.
    let f: fn(A) -> R = unsafe { fn_from_addr(ctx.func) };
    let a = decode_args::<A>(ctx)?;
    let r = f(a);
    encode_into(ctx, &r)
}

/// Trampoline for `fn(&S, A) -> R`, the state decoded once per worker and cached.
pub(crate) fn tramp_with<S, A, R>(ctx: &mut CallCtx<'_>) -> Result<(), String>
where
    S: mproc_core::Decode + Send + 'static,
    A: mproc_core::Decode,
    R: mproc_core::Encode,
{
    // SAFETY: `FnRef::with_state::<S, A, R>` pairs this trampoline only with a
    // `fn(&S, A) -> R`.
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
pub(crate) fn tramp_init<I: mproc_core::Decode>(ctx: &mut CallCtx<'_>) -> Result<(), String> {
    // SAFETY: `FnRef::init::<I>` pairs this trampoline only with a `fn(I)`.
    let f: fn(I) = unsafe { fn_from_addr(ctx.func) };
    let a = decode_args::<I>(ctx)?;
    f(a);
    Ok(())
}

/// Packed trampoline for `fn(A) -> R`: decodes the chunk's `Vec<A>` once, runs every
/// item (a panic fails only its item), encodes the successes as one `Vec<R>`.
pub(crate) fn tramp_packed<A: mproc_core::Decode, R: mproc_core::Encode>(
    ctx: &mut PackedCtx<'_>,
) -> Result<(), String> {
    // SAFETY: `FnRef::plain::<A, R>` pairs this trampoline only with a `fn(A) -> R`.
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

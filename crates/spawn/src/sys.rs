//! The few operations of this crate that need `unsafe`.
//!
//! # Safety
//!
//! Invariants shared by the functions below:
//! - [`fork`] is called only by this crate's start path, whose child branch runs the
//!   child routine of [`crate::child`] and ends with [`exit_now`]; it never returns into
//!   the caller's stack frames beyond that routine.
//! - Code addresses ([`call_trampoline`]) are either taken in this very process, or come
//!   from a bootstrap message that [`crate::bootstrap`] validated (MAC under the start's
//!   key, nonce, build identity, both addresses inside this executable's code mapping,
//!   the target's type fingerprint checked by its trampoline).
//! - Raw fds adopted by [`adopt_fd`] are handed to this process by the bootstrap
//!   protocol (inherited on purpose, with their numbers in the bootstrap message).
use crate::child::Outcome;
use mproc_core::{Message, code};
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The generic entry every target is reached through: checks the target's type
/// fingerprint, decodes `A` from the argument bytes and fds, calls the `fn(A) -> R` at
/// `target`, and encodes the outcome.
pub(crate) type Trampoline = unsafe fn(usize, (u64, &str), &[u8], Vec<OwnedFd>) -> Outcome;

/// Monomorphised entry for a `fn(A) -> R` target. Refuses (without calling anything) a
/// `sig` other than the fingerprint of `fn(A) -> R`.
///
/// # Safety
///
/// `target` must be the address of a function whose type has the fingerprint `sig.0`
/// (`FnSig::hash`): then, if that is `fn(A) -> R`'s, it is a `fn(A) -> R` of exactly
/// these `A` and `R`.
unsafe fn trampoline<A: Message, R: Message>(
    target: usize,
    sig: (u64, &str),
    args: &[u8],
    fds: Vec<OwnedFd>,
) -> Outcome {
    if let Err(e) = code::FnSig::of::<fn(A) -> R, A, R>().check(sig.0, Some(sig.1)) {
        return Outcome::Refused(crate::child::refusal_text(&e.to_string()));
    }
    // SAFETY: the caller guarantees `target` has the type fingerprinted by `sig`, which
    // is `fn(A) -> R`'s (checked above); fn pointers and usize have the same size.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(target) };
    crate::child::run_target(f, args, fds)
}

/// A target's trampoline and the fingerprint of the `fn(A) -> R` it runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TargetEntry {
    /// The address of `trampoline::<A, R>`.
    pub(crate) tramp: usize,
    /// `FnSig::of::<fn(A) -> R, A, R>()`.
    pub(crate) sig: code::FnSig,
}

/// The trampoline of a `fn(A) -> R` target, with its fingerprint.
pub(crate) fn trampoline_addr<A: Message, R: Message>() -> TargetEntry {
    TargetEntry {
        tramp: trampoline::<A, R> as Trampoline as usize,
        sig: code::FnSig::of::<fn(A) -> R, A, R>(),
    }
}

/// The address of a target fn.
pub(crate) fn fn_addr<A, R>(f: fn(A) -> R) -> usize {
    f as usize
}

/// A trampoline and target taken from a bootstrap message and checked: the only way to
/// jump to code addresses that came from outside this process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ValidatedEntry {
    tramp: usize,
    target: usize,
    sig: u64,
}

impl ValidatedEntry {
    /// Checks the build identity and that both code addresses lie in this executable's
    /// code mapping. (The message itself was checked by the caller: MAC under the
    /// start's key, nonce, validated archive.)
    pub(crate) fn check(boot: &crate::wire::Boot) -> Result<Self, String> {
        let at = |what: &str, off: i64| {
            code::checked_addr(boot.layout as u64, off as u64).map_err(|e| format!("{what}: {e}"))
        };
        let tramp = at("trampoline", boot.trampoline)?;
        let target = at("target", boot.target)?;
        Ok(ValidatedEntry {
            tramp,
            target,
            sig: boot.sig,
        })
    }

    /// Runs the target through its trampoline (which checks the type fingerprint first).
    pub(crate) fn run(self, sig_name: &str, args: &[u8], fds: Vec<OwnedFd>) -> Outcome {
        // SAFETY: both addresses lie in this executable's code and come from this build
        // (checked), at the offsets the parent computed from a `trampoline::<A, R>` and
        // a `fn(A) -> R` whose fingerprint is `sig`, in a message the parent wrote (MAC
        // under the start's key, nonce, validated archive): see the module invariants.
        let t = unsafe { std::mem::transmute::<usize, Trampoline>(self.tramp) };
        // SAFETY: as above; `target` has the type fingerprinted by `sig` (the contract of
        // `trampoline`, which refuses any other fingerprint than its own).
        unsafe { t(self.target, (self.sig, sig_name), args, fds) }
    }
}

/// A preload function (`fn()`) given by its code offset (`mproc_core::code`), checked like a
/// [`ValidatedEntry`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ValidatedFn(usize);

impl ValidatedFn {
    /// The fingerprint of a preload function's type.
    pub(crate) fn sig() -> code::FnSig {
        code::FnSig::of::<fn(), (), ()>()
    }

    /// Checks the build identity, the type fingerprint and that the address lies in
    /// this executable's code.
    pub(crate) fn check(layout: u64, offset: u64, sig: u64) -> Result<Self, String> {
        Self::sig().check(sig, None).map_err(|e| e.to_string())?;
        let addr = code::checked_addr(layout, offset).map_err(|e| format!("preload: {e}"))?;
        Ok(ValidatedFn(addr))
    }

    /// Calls it.
    pub(crate) fn run(self) {
        // SAFETY: the address lies in this executable's code and comes from this build,
        // at the offset the parent computed from a `fn()` (fingerprint checked), in the
        // server's hello message authenticated with the session key.
        let f = unsafe { std::mem::transmute::<usize, fn()>(self.0) };
        f()
    }
}

/// What [`fork`] returned in this process.
#[derive(Debug)]
pub(crate) enum Forked {
    /// This is the new child.
    Child,
    /// This is the parent; the child's pid.
    Parent(i32),
}

/// `fork()` through glibc (so its atfork handlers, malloc's included, run).
///
/// Callers in this crate run only the child routine in the child and end it with
/// [`exit_now`] (module invariant).
pub(crate) fn fork() -> io::Result<Forked> {
    // SAFETY: fork is always safe to call; what the child may do afterwards is the
    // module invariant above (it runs our child routine and `_exit`s).
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// While it lives, a child of this process that exits is not reaped automatically:
/// if SIGCHLD is ignored (`SIG_IGN`) or has `SA_NOCLDWAIT`, the disposition is switched
/// to one that keeps zombies (`SIG_DFL`, or the same handler without `SA_NOCLDWAIT`) and
/// restored on drop. Held around a fork and the `pidfd_open` that follows it, so that the
/// new child's pid cannot be reaped and reused in between (the only way to lose it
/// behind our back besides another thread's `waitpid(-1)`).
///
/// The switch is process-wide; mproc's own starts take turns (a spin lock keyed by
/// the pid, so a fork child never waits for its parent's threads). A child of another
/// thread that exits during the window (microseconds) stays a zombie until reaped.
/// When SIGCHLD keeps zombies already (the usual case) this costs one `sigaction` query.
#[derive(Debug)]
pub(crate) struct NoAutoReap {
    saved: Option<libc::sigaction>,
}

/// The pid of the process one of whose threads holds the SIGCHLD switch, or 0.
static REAP_SWITCH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn sigchld_auto_reaps(act: &libc::sigaction) -> bool {
    act.sa_sigaction == libc::SIG_IGN || act.sa_flags & libc::SA_NOCLDWAIT != 0
}

fn sigchld_disposition() -> libc::sigaction {
    // SAFETY: a zeroed sigaction is a valid out-buffer; a null new action only queries.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old);
        old
    }
}

impl NoAutoReap {
    /// Switches auto-reaping off (if it is on) until the guard is dropped.
    pub(crate) fn new() -> Self {
        if !sigchld_auto_reaps(&sigchld_disposition()) {
            return NoAutoReap { saved: None };
        }
        let me = rustix::process::getpid().as_raw_nonzero().get() as u32;
        loop {
            let cur = REAP_SWITCH.load(Ordering::Acquire);
            // A value of another process is a parent's, inherited through fork: free.
            if cur != me
                && REAP_SWITCH
                    .compare_exchange(cur, me, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                break;
            }
            std::thread::yield_now();
        }
        let old = sigchld_disposition();
        if !sigchld_auto_reaps(&old) {
            REAP_SWITCH.store(0, Ordering::Release);
            return NoAutoReap { saved: None };
        }
        let mut new = old;
        if new.sa_sigaction == libc::SIG_IGN {
            new.sa_sigaction = libc::SIG_DFL;
        }
        new.sa_flags &= !libc::SA_NOCLDWAIT;
        // SAFETY: `new` is the current disposition with auto-reaping removed (a handler
        // the program installed stays the same handler).
        unsafe {
            libc::sigaction(libc::SIGCHLD, &new, std::ptr::null_mut());
        }
        NoAutoReap { saved: Some(old) }
    }
}

impl Drop for NoAutoReap {
    fn drop(&mut self) {
        if let Some(old) = self.saved.take() {
            // SAFETY: restoring the disposition saved in `new`.
            unsafe {
                libc::sigaction(libc::SIGCHLD, &old, std::ptr::null_mut());
            }
            REAP_SWITCH.store(0, Ordering::Release);
        }
    }
}

/// Whether `pid` is a child of this process that nobody has reaped yet (`waitid` with
/// `WNOWAIT` leaves it as it is). Only then may it be signalled by pid.
pub(crate) fn is_unreaped_child(pid: i32) -> bool {
    // SAFETY: a zeroed siginfo is a valid out-buffer; WNOWAIT reaps nothing.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        ) == 0
    }
}

/// `_exit(code)`: ends the process without running atexit handlers or destructors.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is always safe; it never returns.
    unsafe { libc::_exit(code) }
}

/// Resets the disposition of the standard signals (1–31) to the default and unblocks
/// every signal, as a freshly executed Rust program has them (SIGPIPE ignored, as
/// Rust's runtime sets it). Used in fork children, which inherit the parent's handlers
/// and mask. Real-time signals are left alone: resetting all 64 costs a sixth of a
/// fork, and handlers for them are rare.
pub(crate) fn reset_signals() {
    for sig in 1..32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let disp = if sig == libc::SIGPIPE {
            libc::SIG_IGN
        } else {
            libc::SIG_DFL
        };
        // SAFETY: installing SIG_DFL/SIG_IGN runs no code; a number the kernel refuses
        // fails with EINVAL, which is ignored.
        unsafe {
            libc::signal(sig, disp);
        }
    }
    // SAFETY: an empty set initialised by sigemptyset; sigprocmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Ignores SIGPIPE (what Rust's runtime does before `main`; the spawn bootstrap runs
/// before it).
pub(crate) fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN runs no code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Sets SIGCHLD to its default disposition (a fork server, which reaps its children
/// itself).
pub(crate) fn default_sigchld() {
    // SAFETY: installing SIG_DFL runs no code.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
}

/// Removes an environment variable. Only called from the bootstrap constructor, which
/// runs before `main`, while the process has one thread.
pub(crate) fn remove_env_before_main(key: &str) {
    // SAFETY: called before main, single-threaded: nothing reads the environment
    // concurrently.
    unsafe { std::env::remove_var(key) }
}

/// Adopts a raw fd that the bootstrap protocol passed to this process, if it is open.
/// It is made close-on-exec again, so the user's own children do not inherit it.
pub(crate) fn adopt_fd(raw: RawFd) -> Option<OwnedFd> {
    if raw < 0 {
        return None;
    }
    // SAFETY: a borrow for the duration of the fcntl call only; fcntl on a closed fd
    // fails with EBADF, which is how an fd that is not open is detected.
    let b = unsafe { BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_setfd(b, rustix::io::FdFlags::CLOEXEC).ok()?;
    // SAFETY: the fd is open and was passed to this process for it to own (module
    // invariant); nothing else in the process refers to it.
    Some(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Arranges for the re-executed child to inherit exactly `fds` (their close-on-exec
/// flag is cleared in the child only, between fork and exec; every other fd above 2 is
/// made close-on-exec there, so an fd the program left inheritable does not reach it)
/// and to receive SIGKILL when the thread that spawns it ends.
pub(crate) fn prepare_exec(cmd: &mut Command, fds: Vec<RawFd>) {
    let mut keep: Vec<u32> = fds.iter().filter_map(|&f| u32::try_from(f).ok()).collect();
    keep.extend([0, 1, 2]);
    keep.sort_unstable();
    keep.dedup();
    let pre = move || -> io::Result<()> {
        for &fd in &fds {
            // SAFETY: the fds are open in the parent for the whole spawn call (it owns
            // them), hence in the forked child; borrowed only for this call.
            let b = unsafe { BorrowedFd::borrow_raw(fd) };
            rustix::io::fcntl_setfd(b, rustix::io::FdFlags::empty())?;
        }
        close_ranges_except(&keep, CLOSE_RANGE_CLOEXEC);
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
        Ok(())
    };
    // SAFETY: the closure makes only async-signal-safe raw syscalls (fcntl, close_range,
    // prctl) and does not allocate (the Vecs were built before the fork).
    unsafe {
        cmd.pre_exec(pre);
    }
}

/// A child started by [`spawn_self`]: its pid, and its pidfd when the kernel returned
/// one with the child (`clone3(CLONE_PIDFD)`; `None` after the `posix_spawn` fallback,
/// whose caller opens it).
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: i32,
    pub(crate) pidfd: Option<OwnedFd>,
    /// After the fallback: keeps SIGCHLD from reaping the child until the caller has
    /// opened its pidfd (drop it then).
    pub(crate) no_reap: Option<NoAutoReap>,
}

/// Starts `exe` (normally `/proc/self/exe`) with `clone3(CLONE_PIDFD | CLONE_VM |
/// CLONE_VFORK)` (what glibc's `posix_spawn` does with `clone`, so the parent's page
/// tables are not copied as a fork would, plus a pidfd returned atomically with the
/// child; `posix_spawn` where `clone3` is unavailable), argv `[arg0]`, the current environment plus `env`, an empty signal mask, and
/// exactly `fds` inherited, renumbered: `fds[i]` becomes fd `3 + i` in the child and
/// every other fd above 2 is closed there, close-on-exec or not (as CPython's spawn
/// passes only the fds it means to). A closed 0, 1 or 2 in the parent is opened on
/// `/dev/null` in the child, so none of the child's own fds can land there. Returns the
/// child's pid.
///
/// PDEATHSIG cannot be armed between fork and exec here: the child arms it first thing
/// in the bootstrap constructor and then checks that its parent is still the one that
/// spawned it (the creating thread is its PDEATHSIG parent either way).
///
/// A failed `execve` (e.g. no such executable) is returned as its error, the child
/// having been reaped.
pub(crate) fn spawn_self(
    exe: &std::ffi::OsStr,
    arg0: &std::ffi::OsStr,
    env: (&str, &str),
    fds: &[RawFd],
) -> io::Result<Spawned> {
    spawn_with(exe, arg0, env, fds, true)
}

/// [`spawn_self`], trying `clone3` first only if `try_clone3` (the fallback is tested
/// on its own).
fn spawn_with(
    exe: &std::ffi::OsStr,
    arg0: &std::ffi::OsStr,
    env: (&str, &str),
    fds: &[RawFd],
    try_clone3: bool,
) -> io::Result<Spawned> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let nul = |b: &[u8]| CString::new(b).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let path = nul(exe.as_bytes())?;
    let arg0 = nul(arg0.as_bytes())?;
    let argv = [arg0.as_ptr(), std::ptr::null()];
    let mut vars: Vec<CString> = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k.as_bytes() == env.0.as_bytes() {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        if let Ok(c) = CString::new(kv) {
            vars.push(c);
        }
    }
    vars.push(nul(format!("{}={}", env.0, env.1).as_bytes())?);
    let mut envp: Vec<*const libc::c_char> = vars.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    // Copies first go above every fd involved, then down to 3.., so that no copy
    // overwrites a source that is still needed.
    let k = fds.len() as RawFd;
    let high = fds.iter().copied().max().unwrap_or(0).max(2 + k) + 1;
    let closed_stdio: Vec<RawFd> = (0..3).filter(|&fd| !fd_is_open(fd)).collect();

    #[cfg(target_arch = "x86_64")]
    if try_clone3 {
        let ctx = clone3::ChildCtx {
            path: path.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            fds: fds.as_ptr(),
            nfds: fds.len(),
            high,
            devnull: [0, 1, 2].map(|fd| closed_stdio.contains(&fd)),
            err: std::sync::atomic::AtomicI32::new(0),
        };
        match clone3::spawn(&ctx) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS | libc::EPERM | libc::EINVAL)
                ) => {}
            r => return r,
        }
    }

    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(r))
        }
    };
    // SAFETY: the file actions and attributes are initialised before use and destroyed
    // on every path; every pointer handed to posix_spawn (path, argv, envp and the
    // strings they point to) outlives the call; `pid` is a valid out-pointer.
    unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut fa))?;
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        if let Err(e) = check(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut fa);
            return Err(e);
        }
        let mut r = Ok(());
        for (i, &fd) in fds.iter().enumerate() {
            if r.is_ok() {
                r = check(libc::posix_spawn_file_actions_adddup2(
                    &mut fa,
                    fd,
                    high + i as RawFd,
                ));
            }
        }
        for i in 0..k {
            if r.is_ok() {
                r = check(libc::posix_spawn_file_actions_adddup2(
                    &mut fa,
                    high + i,
                    3 + i,
                ));
            }
        }
        if r.is_ok() {
            r = check(libc::posix_spawn_file_actions_addclosefrom_np(
                &mut fa,
                3 + k,
            ));
        }
        for &fd in &closed_stdio {
            if r.is_ok() {
                r = check(libc::posix_spawn_file_actions_addopen(
                    &mut fa,
                    fd,
                    c"/dev/null".as_ptr(),
                    libc::O_RDWR,
                    0,
                ));
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if r.is_ok() {
            r = check(libc::posix_spawnattr_setsigmask(&mut attr, &empty));
        }
        if r.is_ok() {
            r = check(libc::posix_spawnattr_setflags(
                &mut attr,
                libc::POSIX_SPAWN_SETSIGMASK as libc::c_short,
            ));
        }
        let mut pid: libc::pid_t = 0;
        // The pidfd is opened after the child exists: SIGCHLD must not reap it first.
        let no_reap = NoAutoReap::new();
        if r.is_ok() {
            r = check(libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                &fa,
                &attr,
                argv.as_ptr() as *const *mut libc::c_char,
                envp.as_ptr() as *const *mut libc::c_char,
            ));
        }
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut fa);
        r.map(|()| Spawned {
            pid,
            pidfd: None,
            no_reap: Some(no_reap),
        })
    }
}

/// `clone3(CLONE_PIDFD | CLONE_VM | CLONE_VFORK)` + `execve`, on a stack of its own.
///
/// The child shares the parent's memory (the parent thread is suspended until the
/// child has exec'd or exited), so it runs only raw, async-signal-safe calls on data
/// the parent prepared: no allocation, no lock, no Rust panic path.
#[cfg(target_arch = "x86_64")]
mod clone3 {
    use super::Spawned;
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    use std::sync::atomic::{AtomicI32, Ordering};

    const CLONE_VM: u64 = 0x100;
    const CLONE_PIDFD: u64 = 0x1000;
    const CLONE_VFORK: u64 = 0x4000;
    const SYS_CLONE3: i64 = 435;
    /// The child's stack: it runs a few libc calls (sigaction, dup2, open, execve).
    const STACK_WORDS: usize = 64 * 1024 / 16;

    /// `struct clone_args` (Linux 5.5 layout).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }

    /// What the child needs, prepared by the parent (see `spawn_self`).
    #[repr(C)]
    pub(super) struct ChildCtx {
        pub(super) path: *const libc::c_char,
        pub(super) argv: *const *const libc::c_char,
        pub(super) envp: *const *const libc::c_char,
        pub(super) fds: *const RawFd,
        pub(super) nfds: usize,
        pub(super) high: RawFd,
        /// Which of 0, 1, 2 are closed in the parent (opened on /dev/null in the child).
        pub(super) devnull: [bool; 3],
        /// The errno of the step that failed in the child (0: it exec'd).
        pub(super) err: AtomicI32,
    }

    /// Creates the child and returns it with its pidfd, or the error of the clone (no
    /// child then) or of the child's exec (the child then reaped).
    pub(super) fn spawn(ctx: &ChildCtx) -> io::Result<Spawned> {
        // Uninitialised: only the child writes it, through the raw pointer.
        let mut stack: Vec<u128> = Vec::with_capacity(STACK_WORDS);
        let mut pidfd: RawFd = -1;
        let args = CloneArgs {
            flags: CLONE_PIDFD | CLONE_VM | CLONE_VFORK,
            pidfd: &mut pidfd as *mut RawFd as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.as_mut_ptr() as u64,
            stack_size: (STACK_WORDS * 16) as u64,
            ..CloneArgs::default()
        };
        // Every signal blocked around the clone: no handler of the parent may run in the
        // child, on memory it shares with the parent. The child resets the handlers
        // before it unblocks (see `child_main`).
        let mut old: libc::sigset_t;
        // SAFETY: sets initialised by sigfillset / filled by pthread_sigmask.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            old = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        }
        let ret: i64;
        // SAFETY: clone3 with CLONE_VM|CLONE_VFORK: the parent is suspended until the
        // child execs or exits, so the child may use `stack` (its own, 16-byte aligned,
        // alive until after the parent resumes) and read `ctx` (alive for this call).
        // The child starts on its new stack right after `syscall` with rax = 0 and
        // calls `child_main`, which never returns (execve or _exit); r12/r13 survive
        // the syscall. The parent gets the pid or -errno in rax; syscall clobbers rcx
        // and r11 only.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r12",
                "call r13",
                "ud2",
                "2:",
                inlateout("rax") SYS_CLONE3 => ret,
                in("rdi") &args as *const CloneArgs,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") ctx as *const ChildCtx,
                in("r13") child_main as extern "C" fn(*const ChildCtx) -> ! as usize,
                lateout("rcx") _,
                lateout("r11") _,
            );
        }
        // SAFETY: restoring the mask saved above.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
        drop(stack);
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret as i32));
        }
        let pid = ret as i32;
        // SAFETY: CLONE_PIDFD stored a new pidfd that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        let err = ctx.err.load(Ordering::Acquire);
        if err != 0 {
            // The child failed before or at exec and has _exit'ed: reap it.
            let _ = rustix::process::waitid(
                rustix::process::WaitId::PidFd(std::os::fd::AsFd::as_fd(&pidfd)),
                rustix::process::WaitIdOptions::EXITED,
            );
            return Err(io::Error::from_raw_os_error(err));
        }
        Ok(Spawned {
            pid,
            pidfd: Some(pidfd),
            no_reap: None,
        })
    }

    /// The last errno of this thread (the child shares the parent thread's TLS; the
    /// parent is suspended meanwhile).
    fn errno() -> i32 {
        // SAFETY: __errno_location returns this thread's errno slot.
        unsafe { *libc::__errno_location() }
    }

    fn fail(ctx: &ChildCtx) -> ! {
        fail_with(ctx, errno())
    }

    /// A `dup2` failed: its source fds are open (the parent owns them), so EBADF means
    /// the target number is beyond RLIMIT_NOFILE: the fd table is full.
    fn fail_dup(ctx: &ChildCtx) -> ! {
        match errno() {
            libc::EBADF => fail_with(ctx, libc::EMFILE),
            e => fail_with(ctx, e),
        }
    }

    fn fail_with(ctx: &ChildCtx, e: i32) -> ! {
        ctx.err
            .store(if e == 0 { libc::EIO } else { e }, Ordering::Release);
        // SAFETY: _exit ends the child; nothing of the parent is touched.
        unsafe { libc::_exit(127) }
    }

    /// The child: runs on its own stack in the parent's memory, all signals blocked.
    extern "C" fn child_main(ctx: *const ChildCtx) -> ! {
        // SAFETY: `ctx` is the parent's `ChildCtx`, alive while the parent is suspended.
        let ctx = unsafe { &*ctx };
        // SAFETY: only async-signal-safe calls on integers and on memory the parent
        // prepared (strings, arrays of pointers and fds) that lives until exec.
        unsafe {
            // A handler installed in the parent must not run here (this is the
            // parent's memory): back to the default for every handled signal.
            for sig in 1..65 {
                if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                    continue;
                }
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                    && old.sa_sigaction != libc::SIG_IGN
                    && old.sa_sigaction != libc::SIG_DFL
                {
                    let mut dfl: libc::sigaction = std::mem::zeroed();
                    dfl.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(sig, &dfl, std::ptr::null_mut());
                }
            }
            // The fds: first above every fd involved, then down to 3.. (see spawn_self).
            for i in 0..ctx.nfds {
                if libc::dup2(*ctx.fds.add(i), ctx.high + i as RawFd) < 0 {
                    fail_dup(ctx);
                }
            }
            for i in 0..ctx.nfds {
                if libc::dup2(ctx.high + i as RawFd, 3 + i as RawFd) < 0 {
                    fail_dup(ctx);
                }
            }
            let first = 3 + ctx.nfds as libc::c_uint;
            if libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) != 0 {
                // close_range is missing (kernel < 5.9, which has no clone3 either).
                fail(ctx);
            }
            for fd in 0..3 {
                if ctx.devnull[fd as usize] {
                    let n = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                    if n < 0 {
                        fail(ctx);
                    }
                    if n != fd {
                        libc::dup2(n, fd);
                        libc::close(n);
                    }
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::execve(ctx.path, ctx.argv, ctx.envp);
        }
        fail(ctx)
    }
}

/// Whether `fd` is open in this process.
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: a borrow for the duration of the fcntl call only; on a closed fd fcntl
    // fails with EBADF and touches nothing.
    rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(fd) }).is_ok()
}

/// Moves an fd of mproc's own above 2 (keeping close-on-exec): if the program closed
/// its stdin, stdout or stderr, a new fd would take that number, and a `println!` in
/// this process or in a fork child would then write into mproc's channel.
pub(crate) fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?)
}

/// Opens a pidfd for `pid`, above 2 (see [`above_stdio`]).
pub(crate) fn open_pidfd(pid: i32) -> io::Result<mproc_core::Pidfd> {
    let p = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())?;
    Ok(mproc_core::Pidfd::from_owned(above_stdio(fd)?, pid))
}

/// Opens `/dev/null` on each of 0, 1 and 2 that is closed (in a new child, so that
/// what it opens later cannot land on them).
pub(crate) fn stdio_devnull() {
    for fd in 0..3 {
        if fd_is_open(fd) {
            continue;
        }
        // SAFETY: open/dup2/close on plain integers; the new fd is this function's own
        // until it is moved to `fd` (a closed number nobody owns).
        unsafe {
            let n = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if n >= 0 && n != fd {
                libc::dup2(n, fd);
                libc::close(n);
            }
        }
    }
}

/// `fcntl`'s `F_SETSIG` (Linux; missing from the libc crate).
const F_SETSIG: libc::c_int = 10;

/// Turns the read end of a pipe whose only writer is the logical parent into a
/// "lifeline": when the parent dies its end closes and the kernel sends this process
/// SIGKILL (`O_ASYNC` with `F_SETSIG` = SIGKILL, owner = this process). Used by fork
/// server children, whose real parent is the server, so that they die with the
/// process that asked for them and not with the server. Returns `false` if the
/// parent is already gone.
pub(crate) fn arm_lifeline(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    let me = rustix::process::getpid().as_raw_nonzero().get();
    // SAFETY: fcntl on an fd this process owns, with integer arguments only.
    let ok = unsafe {
        libc::fcntl(raw, libc::F_SETOWN, me) == 0
            && libc::fcntl(raw, F_SETSIG, libc::SIGKILL) == 0
            && libc::fcntl(raw, libc::F_SETFL, libc::O_ASYNC | libc::O_NONBLOCK) == 0
    };
    if !ok {
        return false;
    }
    // The parent may have died before the owner was set: then no signal comes.
    let mut pfd = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    matches!(
        rustix::event::poll(&mut pfd, Some(&rustix::event::Timespec::default())),
        Ok(0)
    )
}

/// Blocks (`true`) or unblocks one signal for the calling thread. A blocked signal
/// stays pending; unblocking it delivers it.
pub(crate) fn block_signal(sig: i32, block: bool) {
    // SAFETY: a set initialised by sigemptyset/sigaddset; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        let how = if block {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Replaces the whole environment with `vars`. Only called in a fork server's child,
/// which is single-threaded (forked from the single-threaded server) until its target
/// runs.
pub(crate) fn replace_env_single_threaded(vars: &[(std::ffi::OsString, std::ffi::OsString)]) {
    let old: Vec<std::ffi::OsString> = std::env::vars_os().map(|(k, _)| k).collect();
    for k in old {
        // SAFETY: single-threaded (see above): nothing reads the environment meanwhile.
        unsafe { std::env::remove_var(k) }
    }
    for (k, v) in vars {
        if k.is_empty() {
            continue;
        }
        // SAFETY: as above.
        unsafe { std::env::set_var(k, v) }
    }
}

/// Registers `f` to run at normal exit of the program (`atexit`).
pub(crate) fn at_exit(f: extern "C" fn()) {
    // SAFETY: `f` is a plain `extern "C" fn()` that lives for the whole program.
    unsafe {
        libc::atexit(f);
    }
}

/// A process-global value that a fork child can discard: the value lives in a leaked
/// box behind an atomic pointer, so a child can start afresh with [`ForkLocal::reset`]
/// even if another thread of the parent held a lock inside it at fork time.
pub(crate) struct ForkLocal<T> {
    ptr: AtomicPtr<T>,
    init: fn() -> T,
    // Shares `&T` between threads: Sync only when T is.
    _marker: std::marker::PhantomData<T>,
}

impl<T> std::fmt::Debug for ForkLocal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForkLocal")
    }
}

impl<T> ForkLocal<T> {
    /// A value built by `init` on first use.
    pub(crate) const fn new(init: fn() -> T) -> Self {
        ForkLocal {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
            init,
            _marker: std::marker::PhantomData,
        }
    }

    /// The value, built on first use.
    pub(crate) fn get(&self) -> &T {
        let p = self.ptr.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: non-null pointers stored here come from Box::into_raw and are
            // never freed (a reset leaks them), so they stay valid for 'static.
            return unsafe { &*p };
        }
        let fresh = Box::into_raw(Box::new((self.init)()));
        match self.ptr.compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY: `fresh` was just leaked from a Box and is now published.
            Ok(_) => unsafe { &*fresh },
            Err(cur) => {
                // SAFETY: `fresh` was never published; we own it.
                drop(unsafe { Box::from_raw(fresh) });
                // SAFETY: as above, `cur` is a leaked, never-freed Box.
                unsafe { &*cur }
            }
        }
    }

    /// Forgets the current value (leaking it: references handed out stay valid). Used
    /// in a fork child, where the parent's value must not be used.
    pub(crate) fn reset(&self) {
        self.ptr.store(std::ptr::null_mut(), Ordering::Release);
    }
}

/// `close_range`'s flag: mark close-on-exec instead of closing.
const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

/// Closes every fd except stdin, stdout, stderr and `keep` (used in a fork child, which
/// otherwise inherits every fd of its parent, close-on-exec or not).
pub(crate) fn close_fds_except(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep.iter().filter_map(|&f| u32::try_from(f).ok()).collect();
    keep.extend([0, 1, 2]);
    keep.sort_unstable();
    keep.dedup();
    close_ranges_except(&keep, 0);
}

/// `close_range(…, flags)` over every fd not in `keep` (sorted, deduplicated). Does not
/// allocate unless `close_range` is missing and `flags` is 0.
fn close_ranges_except(keep: &[u32], flags: u32) {
    let mut lo: u32 = 0;
    for &k in keep.iter().chain(std::iter::once(&u32::MAX)) {
        if k > lo {
            let hi = if k == u32::MAX { u32::MAX } else { k - 1 };
            // SAFETY: close_range takes plain integers; closing (or marking) fds this
            // process owns is what the new child wants (nothing else in it uses them).
            let r = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, flags) };
            if r != 0 && flags == 0 {
                close_slowly(lo, hi);
            }
        }
        lo = k.saturating_add(1);
    }
}

/// `close_range` is missing (kernel < 5.9): close what `/proc/self/fd` lists.
fn close_slowly(lo: u32, hi: u32) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&f| f >= lo && f <= hi)
        .collect();
    for fd in fds {
        // SAFETY: see close_fds_except; the directory's own fd may be in the list and
        // is already closed, which close reports as EBADF and is ignored.
        unsafe {
            libc::close(fd as i32);
        }
    }
}

/// Whether the calling thread is the process's main thread.
pub(crate) fn is_main_thread() -> bool {
    rustix::thread::gettid() == rustix::process::getpid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Reaps `pid` through a pidfd; its exit code.
    fn reap(pidfd: &OwnedFd) -> i32 {
        let st = rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        )
        .unwrap()
        .unwrap();
        st.exit_status().unwrap()
    }

    fn run(try_clone3: bool) {
        let fds: Vec<RawFd> = Vec::new();
        let t = spawn_with(
            "/bin/true".as_ref(),
            "true".as_ref(),
            ("X", "1"),
            &fds,
            try_clone3,
        )
        .unwrap();
        let pidfd = match t.pidfd {
            Some(fd) => {
                assert!(try_clone3, "only clone3 returns the pidfd");
                fd
            }
            None => {
                assert!(t.no_reap.is_some());
                let p = rustix::process::Pid::from_raw(t.pid).unwrap();
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).unwrap()
            }
        };
        assert_eq!(reap(&pidfd), 0);
        let f = spawn_with(
            "/bin/false".as_ref(),
            "false".as_ref(),
            ("X", "1"),
            &fds,
            try_clone3,
        )
        .unwrap();
        let pidfd = f.pidfd.unwrap_or_else(|| {
            let p = rustix::process::Pid::from_raw(f.pid).unwrap();
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).unwrap()
        });
        assert_eq!(reap(&pidfd), 1);
        // A failed exec is the start's error (and leaves no child: posix_spawn and the
        // clone3 path both reap it).
        let e = spawn_with(
            "/nonexistent/x".as_ref(),
            "x".as_ref(),
            ("X", "1"),
            &fds,
            try_clone3,
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn clone3_spawn_returns_the_pidfd_and_reports_exec_errors() {
        run(true);
    }

    #[test]
    fn posix_spawn_fallback_still_works() {
        run(false);
    }
}

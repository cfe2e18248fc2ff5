//! The child's entry under spawn (and the fork server's): a constructor that runs
//! before `main` in every binary linking this crate.
//!
//! A re-executed child finds the marker variable [`BOOT_ENV`] =
//! `v1:<nonce>:<parent pid>:<bootstrap fd>:<result fd>` in its environment. It removes
//! it (so its own children do not dispatch again), arms PDEATHSIG, reads the bootstrap
//! frame from the bootstrap fd and checks it before jumping anywhere:
//! - the frame's magic, length and checksum (FNV-1a seeded with the nonce);
//! - rkyv's validation of the payload;
//! - the nonce inside the payload equals the one in the environment (the variable alone
//!   cannot make the binary jump: it must come with a matching message on an fd);
//! - the layout probe: the distance between two fixed functions equals the parent's;
//! - the trampoline and target addresses lie inside this executable's code mapping.
//!
//! Anything wrong: a message on stderr (and to the parent through the result fd), exit
//! code [`BOOTSTRAP_EXIT`](crate::child::BOOTSTRAP_EXIT), nothing run.
use crate::child;
use crate::current::ChildInfo;
use crate::{sys, wire};
use std::io::Read;
use std::os::fd::OwnedFd;

/// Marker variable of a spawned child.
pub(crate) const BOOT_ENV: &str = "MPROC_BOOTSTRAP";
/// Marker variable of a fork server.
pub(crate) const SERVER_ENV: &str = "MPROC_FORKSERVER";

/// Runs before `main` in every binary that links mproc-spawn.
#[ctor::ctor(unsafe)]
fn mproc_spawn_dispatch() {
    dispatch();
}

/// What `Process::start` references so that the linker keeps this object file (and
/// with it the constructor) in every binary that starts processes.
pub(crate) fn link_hook() -> usize {
    mproc_spawn_dispatch as fn() as usize
}

fn dispatch() {
    if let Some(spec) = std::env::var_os(BOOT_ENV) {
        sys::remove_env_before_main(BOOT_ENV);
        spawned_child(&spec.to_string_lossy());
    }
    if let Some(spec) = std::env::var_os(SERVER_ENV) {
        sys::remove_env_before_main(SERVER_ENV);
        crate::forkserver::server_main(&spec.to_string_lossy());
    }
}

/// The spawn marker's fields.
struct Spec {
    nonce: u64,
    parent: i32,
    boot_fd: i32,
    result_fd: i32,
}

fn parse_spec(spec: &str) -> Option<Spec> {
    let mut it = spec.split(':');
    if it.next()? != "v1" {
        return None;
    }
    let s = Spec {
        nonce: u64::from_str_radix(it.next()?, 16).ok()?,
        parent: it.next()?.parse().ok()?,
        boot_fd: it.next()?.parse().ok()?,
        result_fd: it.next()?.parse().ok()?,
    };
    it.next().is_none().then_some(s)
}

/// The marker value for a spawned child.
pub(crate) fn spec_string(nonce: u64, parent: i32, boot_fd: i32, result_fd: i32) -> String {
    format!("v1:{nonce:x}:{parent}:{boot_fd}:{result_fd}")
}

fn spawned_child(spec: &str) -> ! {
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let Some(spec) = parse_spec(spec) else {
        child::refuse(None, &format!("malformed {BOOT_ENV} value {spec:?}"))
    };
    // PDEATHSIG is armed (above); if the parent died before that, nobody wants us.
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(spec.parent) {
        sys::exit_now(1);
    }
    let result = sys::adopt_fd(spec.result_fd);
    let Some(boot_fd) = sys::adopt_fd(spec.boot_fd) else {
        child::refuse(result.as_ref(), "the bootstrap fd is not open")
    };
    let Some(result) = result else {
        child::refuse(None, "the result fd is not open")
    };
    let boot = match read_boot(boot_fd, spec.nonce) {
        Ok(b) => b,
        Err(why) => child::refuse(Some(&result), &why),
    };
    if boot.parent_pid != spec.parent {
        child::refuse(Some(&result), "parent pid mismatch");
    }
    let entry = match sys::ValidatedEntry::check(&boot) {
        Ok(t) => t,
        Err(why) => child::refuse(Some(&result), &why),
    };
    // Every argument fd must be open and ours before anything runs.
    let mut fds = Vec::with_capacity(boot.fds.len());
    for &raw in &boot.fds {
        match sys::adopt_fd(raw) {
            Some(fd) => fds.push(fd),
            None => child::refuse(Some(&result), &format!("argument fd {raw} is not open")),
        }
    }
    sys::ignore_sigpipe();
    child::prepare(&boot.info, spec.parent);
    let outcome = entry.run(&boot.args, fds);
    child::finish(&result, outcome)
}

fn read_boot(fd: OwnedFd, nonce: u64) -> Result<wire::Boot, String> {
    let mut f = std::fs::File::from(fd);
    let mut head = [0u8; wire::BOOT_HEADER];
    f.read_exact(&mut head)
        .map_err(|e| format!("short bootstrap header: {e}"))?;
    let (len, sum) = wire::parse_boot_header(&head)?;
    let mut payload = Vec::new();
    (&mut f)
        .take(len)
        .read_to_end(&mut payload)
        .map_err(|e| format!("reading the bootstrap payload: {e}"))?;
    if payload.len() as u64 != len {
        return Err(format!(
            "truncated bootstrap payload ({} of {len} bytes)",
            payload.len()
        ));
    }
    wire::decode_boot(nonce, sum, &payload)
}

/// Builds the bootstrap message for a target.
pub(crate) fn make_boot(
    nonce: u64,
    tramp: usize,
    target: usize,
    info: ChildInfo,
    args: Vec<u8>,
    fds: Vec<i32>,
) -> wire::Boot {
    use mproc_core::code;
    wire::Boot {
        nonce,
        parent_pid: rustix::process::getpid().as_raw_nonzero().get(),
        layout: code::layout() as i64,
        trampoline: code::offset_of(tramp) as i64,
        target: code::offset_of(target) as i64,
        info,
        args,
        fds,
    }
}

/// A fresh nonce (not secret: it ties a message to one start).
pub(crate) fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

//! The child's entry under spawn (and the fork server's): a constructor that runs
//! before `main` in every binary linking this crate.
//!
//! In a program the kernel runs in secure mode (`getauxval(AT_SECURE)`: set-user-ID,
//! set-group-ID, file capabilities), the constructor never dispatches: if a marker
//! variable is set it says so on stderr and exits with [`SECURE_EXIT`], whatever the
//! environment holds.
//!
//! A re-executed child finds the marker variable [`BOOT_ENV`] =
//! `v2:<nonce>:<start key>:<parent pid>:<bootstrap fd>:<result fd>` in its environment.
//! It removes it (so its own children do not dispatch again), arms PDEATHSIG, and
//! dispatches only after a valid handshake over the bootstrap fd:
//! - the fd is a Unix socket whose peer is the parent named in the marker, which is the
//!   process's real parent (the kernel's `SO_PEERCRED` and `getppid`);
//! - the frame's magic, lengths and HMAC-SHA256 under the start key over the control
//!   message, everything that decides what runs (the key is derived by the parent from
//!   its random family secret and the nonce, and reaches the child only through the
//!   marker: bytes written by anyone else fail); the encoded arguments follow it and
//!   are validated by the codec like any message;
//! - rkyv's validation of the payload;
//! - the nonce inside the payload equals the one in the environment;
//! - the build identity ([`mproc_core::code::layout`]) equals the parent's;
//! - the trampoline and target addresses lie inside this executable's code mapping;
//! - the trampoline checks the target's type fingerprint before it calls it.
//!
//! The child then echoes a proof with its outcome (a MAC under the start key naming the
//! start and its pid, [`wire::child_proof`]); the parent accepts a value, a panic or a
//! failure only with it.
//!
//! Anything wrong: a message on stderr (and to the parent through the result fd), exit
//! code [`BOOTSTRAP_EXIT`](crate::child::BOOTSTRAP_EXIT), nothing run.
use crate::child;
use crate::current::ChildInfo;
use crate::{sys, wire};
use mproc_core::code;
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
/// with it the constructor) in every binary that starts processes. It also fixes this
/// process's family secret before the first child starts, so that every child (fork
/// children included) shares it.
pub(crate) fn link_hook() -> usize {
    let _ = code::family_secret_for_child();
    mproc_spawn_dispatch as fn() as usize
}

/// Exit code of a secure-mode program started with an mproc marker variable (BSD's
/// `EX_NOPERM`).
pub(crate) const SECURE_EXIT: i32 = 77;

/// What the constructor does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dispatch {
    /// No marker: the program runs normally.
    Nothing,
    /// Become a spawned child.
    Child,
    /// Become a fork server.
    Server,
    /// A marker in a secure-mode program: refuse, run nothing.
    RefuseSecure,
}

/// The constructor's decision: in secure mode (`AT_SECURE`) never dispatch.
pub(crate) fn decide(secure: bool, boot_marker: bool, server_marker: bool) -> Dispatch {
    match (secure, boot_marker, server_marker) {
        (_, false, false) => Dispatch::Nothing,
        (true, _, _) => Dispatch::RefuseSecure,
        (false, true, _) => Dispatch::Child,
        (false, false, true) => Dispatch::Server,
    }
}

fn dispatch() {
    let boot = std::env::var_os(BOOT_ENV);
    let server = std::env::var_os(SERVER_ENV);
    let decision = decide(code::secure_mode(), boot.is_some(), server.is_some());
    if decision != Dispatch::Nothing {
        sys::remove_env_before_main(BOOT_ENV);
        sys::remove_env_before_main(SERVER_ENV);
    }
    match decision {
        // The program runs normally: Python's exit handler is registered at start-up,
        // as CPython's `multiprocessing.util` registers `_exit_function` on import.
        Dispatch::Nothing => crate::exit::arm(),
        Dispatch::RefuseSecure => {
            let _ = std::panic::catch_unwind(|| {
                eprintln!(
                    "mproc: refusing to start as a child process: this program runs in \
                     secure mode (set-user-ID, set-group-ID or file capabilities; \
                     AT_SECURE), where mproc never dispatches from its environment"
                )
            });
            sys::exit_now(SECURE_EXIT)
        }
        Dispatch::Child => spawned_child(&boot.unwrap_or_default().to_string_lossy()),
        Dispatch::Server => {
            crate::forkserver::server_main(&server.unwrap_or_default().to_string_lossy())
        }
    }
}

/// The spawn marker's fields.
struct Spec {
    nonce: u64,
    key: [u8; 32],
    parent: i32,
    boot_fd: i32,
    result_fd: i32,
}

fn parse_spec(spec: &str) -> Option<Spec> {
    let mut it = spec.split(':');
    if it.next()? != "v2" {
        return None;
    }
    let s = Spec {
        nonce: u64::from_str_radix(it.next()?, 16).ok()?,
        key: parse_key(it.next()?)?,
        parent: it.next()?.parse().ok()?,
        boot_fd: it.next()?.parse().ok()?,
        result_fd: it.next()?.parse().ok()?,
    };
    it.next().is_none().then_some(s)
}

/// A 32-byte key as 64 hex digits.
pub(crate) fn key_hex(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key written by [`key_hex`].
pub(crate) fn parse_key(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(k)
}

/// The marker value for a spawned child.
pub(crate) fn spec_string(
    nonce: u64,
    key: &[u8; 32],
    parent: i32,
    boot_fd: i32,
    result_fd: i32,
) -> String {
    format!(
        "v2:{nonce:x}:{}:{parent}:{boot_fd}:{result_fd}",
        key_hex(key)
    )
}

/// Whether the peer of socket `fd` is the process `pid` (the kernel's `SO_PEERCRED`:
/// the process that created a socketpair).
pub(crate) fn peer_is(fd: &OwnedFd, pid: i32) -> Result<(), String> {
    match rustix::net::sockopt::socket_peercred(fd) {
        Ok(c) if c.pid.as_raw_nonzero().get() == pid => Ok(()),
        Ok(_) => Err("the bootstrap socket's peer is not the parent".into()),
        Err(e) => Err(format!("the bootstrap fd is not the parent's socket: {e}")),
    }
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
    if let Err(why) = peer_is(&boot_fd, spec.parent) {
        child::refuse(Some(&result), &why)
    }
    let (boot, args) = match read_boot(boot_fd, &spec.key, spec.nonce) {
        Ok(b) => b,
        Err(why) => child::refuse(Some(&result), &why),
    };
    if boot.parent_pid != spec.parent {
        child::refuse(Some(&result), "parent pid mismatch");
    }
    if let Err(e) = code::adopt_family_secret(boot.family) {
        child::refuse(Some(&result), e);
    }
    wire::set_proof(&spec.key, spec.nonce);
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
    child::about_to_run();
    let outcome = entry.run(&boot.sig_name, &args, fds);
    child::finish(&result, outcome)
}

/// Reads and authenticates the bootstrap message; the message and the arguments.
fn read_boot(fd: OwnedFd, key: &[u8; 32], nonce: u64) -> Result<(wire::Boot, Vec<u8>), String> {
    let mut f = std::fs::File::from(fd);
    let mut head = [0u8; wire::BOOT_HEADER];
    f.read_exact(&mut head)
        .map_err(|e| format!("short bootstrap header: {e}"))?;
    let h = wire::parse_boot_header(&head, &wire::BOOT_MAGIC)?;
    let mut read = |len: u64, what: &str| -> Result<Vec<u8>, String> {
        let mut buf = Vec::new();
        (&mut f)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| format!("reading the bootstrap {what}: {e}"))?;
        if buf.len() as u64 != len {
            return Err(format!(
                "truncated bootstrap {what} ({} of {len} bytes)",
                buf.len()
            ));
        }
        Ok(buf)
    };
    let ctrl = read(h.ctrl_len, "message")?;
    // Authenticate before reading further.
    let boot = wire::decode_boot(key, nonce, &h, &ctrl)?;
    let args = read(h.trailer_len, "arguments")?;
    Ok((boot, args))
}

/// Builds the bootstrap message for a target.
pub(crate) fn make_boot(
    nonce: u64,
    entry: sys::TargetEntry,
    target: usize,
    info: ChildInfo,
    fds: Vec<i32>,
) -> wire::Boot {
    wire::Boot {
        nonce,
        parent_pid: rustix::process::getpid().as_raw_nonzero().get(),
        layout: code::layout() as i64,
        trampoline: code::offset_of(entry.tramp) as i64,
        target: code::offset_of(target) as i64,
        sig: entry.sig.hash,
        sig_name: entry.sig.name.to_owned(),
        family: code::family_secret_for_child(),
        info,
        fds,
    }
}

/// A fresh nonce (not secret: it names one start; the start's key is derived from it
/// and the family secret).
pub(crate) fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_mode_never_dispatches() {
        for boot in [false, true] {
            for server in [false, true] {
                let d = decide(true, boot, server);
                if boot || server {
                    assert_eq!(d, Dispatch::RefuseSecure);
                } else {
                    assert_eq!(d, Dispatch::Nothing);
                }
            }
        }
        assert_eq!(decide(false, true, true), Dispatch::Child);
        assert_eq!(decide(false, false, true), Dispatch::Server);
        assert_eq!(decide(false, false, false), Dispatch::Nothing);
    }

    #[test]
    fn markers_round_trip() {
        let key = code::start_key(5);
        let s = spec_string(0xab, &key, 12, 3, 4);
        let p = parse_spec(&s).unwrap();
        assert_eq!(
            (p.nonce, p.key, p.parent, p.boot_fd, p.result_fd),
            (0xab, key, 12, 3, 4)
        );
        assert!(parse_spec(&s.replacen("v2", "v1", 1)).is_none());
        assert!(parse_key("zz").is_none());
    }
}

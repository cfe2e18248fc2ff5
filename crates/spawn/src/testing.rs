//! Hooks for mproc's own tests: not part of the API (hidden from the docs, may change).
use crate::current::ChildInfo;
use crate::{bootstrap, sys, wire};
use mproc_core::Message;
use mproc_core::codec;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Output, Stdio};

/// How to damage a spawned child's bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// Random-looking bytes instead of the frame.
    Garbage,
    /// The frame's magic is wrong.
    BadMagic,
    /// One payload byte is flipped (the checksum no longer matches).
    FlipPayloadByte(usize),
    /// The frame is cut after this many bytes.
    Truncate(usize),
    /// The message was made for another start (different nonce, valid checksum).
    WrongNonce,
    /// The target offset points outside the executable's code (checksum recomputed).
    TargetOutsideCode,
    /// The trampoline offset points outside the executable's code (checksum recomputed).
    TrampolineOutsideCode,
    /// The marker variable is malformed.
    BadEnv,
    /// The marker names a bootstrap fd that is not open in the child.
    ClosedBootFd,
}

/// Whether this process printed the "fork with other threads" warning.
pub fn fork_warned() -> bool {
    crate::process::fork_warned()
}

/// Spawns `target(args)` like `StartMethod::Spawn` does, with its bootstrap damaged as
/// `c` says; returns the child's exit status and captured output.
pub fn spawn_corrupt<A, R>(target: fn(A) -> R, args: A, c: Corruption) -> io::Result<Output>
where
    A: Message + Send + 'static,
    R: Message + 'static,
{
    let enc = codec::encode(&args).map_err(io::Error::other)?;
    let (boot_mine, boot_theirs) = crate::process::pair()?;
    let (res_mine, res_theirs) = crate::process::pair()?;
    let nonce = bootstrap::nonce();
    let parent = rustix::process::getpid().as_raw_nonzero().get();
    let info = ChildInfo {
        name: "corrupt".into(),
        daemon: false,
        identity: vec![0],
        parent_pid: parent,
        parent_name: "MainProcess".into(),
        method: crate::StartMethod::Spawn.code(),
        join_at_exit: false,
    };
    let arg_fds: Vec<i32> = enc.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut boot = bootstrap::make_boot(
        nonce,
        sys::trampoline_addr::<A, R>(),
        sys::fn_addr(target),
        info,
        enc.bytes.to_vec(),
        arg_fds.clone(),
    );
    let far = i64::MAX / 4;
    match c {
        Corruption::WrongNonce => boot.nonce = nonce ^ 1,
        Corruption::TargetOutsideCode => boot.target = far,
        Corruption::TrampolineOutsideCode => boot.trampoline = -far,
        _ => {}
    }
    let mut frame = wire::encode_boot(&boot).map_err(io::Error::other)?;
    if c == Corruption::WrongNonce {
        // Recompute the checksum with the wrong nonce, so only the nonce check fails.
        let sum = wire::checksum(boot.nonce, &frame[wire::BOOT_HEADER..]);
        frame[16..24].copy_from_slice(&sum.to_le_bytes());
    }
    match c {
        Corruption::Garbage => {
            frame = (0..frame.len())
                .map(|i| (i as u8).wrapping_mul(73).wrapping_add(11))
                .collect()
        }
        Corruption::BadMagic => frame[0] ^= 0xff,
        Corruption::FlipPayloadByte(i) => {
            let n = frame.len() - wire::BOOT_HEADER;
            frame[wire::BOOT_HEADER + i % n] ^= 0x5a;
        }
        Corruption::Truncate(n) => frame.truncate(n.min(frame.len())),
        _ => {}
    }
    let boot_fd = if c == Corruption::ClosedBootFd {
        1000
    } else {
        boot_theirs.as_raw_fd()
    };
    let spec = if c == Corruption::BadEnv {
        "v1:not-hex".to_owned()
    } else {
        bootstrap::spec_string(nonce, parent, boot_fd, res_theirs.as_raw_fd())
    };
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.env(bootstrap::BOOT_ENV, spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut inherit = arg_fds;
    inherit.push(boot_theirs.as_raw_fd());
    inherit.push(res_theirs.as_raw_fd());
    sys::prepare_exec(&mut cmd, inherit);
    let child = cmd.spawn()?;
    drop(boot_theirs);
    drop(res_theirs);
    drop(enc);
    let _ = crate::process::send_all(boot_mine.as_fd(), &frame);
    drop(boot_mine);
    let out = child.wait_with_output();
    drop(res_mine);
    out
}

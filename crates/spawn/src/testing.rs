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
    /// One byte of the authenticated message is flipped (the MAC no longer matches).
    FlipPayloadByte(usize),
    /// The frame is cut after this many bytes.
    Truncate(usize),
    /// The message was made for another start (different nonce, valid MAC).
    WrongNonce,
    /// The frame is authenticated with another key than the start's (a forger who does
    /// not hold the parent's secret).
    WrongMac,
    /// The target offset is moved to another function of the program, keeping the
    /// frame's MAC (a forged offset).
    ForgedTarget,
    /// The message claims another build identity (valid MAC).
    ForeignBuild,
    /// The target's type fingerprint is that of `fn(u64) -> u64` (valid MAC), not of the
    /// target's type.
    WrongSignature,
    /// The target offset points outside the executable's code (MAC recomputed).
    TargetOutsideCode,
    /// The trampoline offset points outside the executable's code (MAC recomputed).
    TrampolineOutsideCode,
    /// Fork server only: the request's context section (directory and environment) is
    /// authenticated with another key than the session's.
    ForgedContext,
    /// Fork server only: the context section is validly authenticated but bound to
    /// another request's bootstrap frame.
    MovedContext,
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
        log: None,
    };
    let arg_fds: Vec<i32> = enc.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let boot = bootstrap::make_boot(
        nonce,
        sys::trampoline_addr::<A, R>(),
        sys::fn_addr(target),
        info,
        arg_fds.clone(),
    );
    let key = mproc_core::code::start_key(nonce);
    let frame = damaged_frame(boot, &key, &enc.bytes, c)?;
    let boot_fd = if c == Corruption::ClosedBootFd {
        1000
    } else {
        boot_theirs.as_raw_fd()
    };
    let spec = if c == Corruption::BadEnv {
        "v1:not-hex".to_owned()
    } else {
        bootstrap::spec_string(nonce, &key, parent, boot_fd, res_theirs.as_raw_fd())
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

/// The bootstrap frame of `boot` under `key`, damaged as `c` says.
fn damaged_frame(
    mut boot: wire::Boot,
    key: &[u8; 32],
    args: &[u8],
    c: Corruption,
) -> io::Result<Vec<u8>> {
    let far = i64::MAX / 4;
    match c {
        Corruption::WrongNonce => boot.nonce ^= 1,
        Corruption::TargetOutsideCode => boot.target = far,
        Corruption::TrampolineOutsideCode => boot.trampoline = -far,
        Corruption::ForeignBuild => boot.layout ^= 2,
        Corruption::WrongSignature => {
            let other = mproc_core::code::FnSig::of::<fn(u64) -> u64, u64, u64>();
            boot.sig = other.hash;
            boot.sig_name = other.name.to_owned();
        }
        _ => {}
    }
    let mut frame = match c {
        Corruption::WrongMac => {
            wire::encode_boot(&mproc_core::code::start_key(!boot.nonce), &boot, args)
        }
        _ => wire::encode_boot(key, &boot, args),
    }
    .map_err(io::Error::other)?;
    if c == Corruption::ForgedTarget {
        // Re-encode with another target offset but keep the original MAC.
        let mac: [u8; wire::BOOT_HEADER] = frame[..wire::BOOT_HEADER].try_into().expect("header");
        boot.target = mproc_core::code::offset_of(sys::exit_now as fn(i32) -> ! as usize) as i64;
        frame = wire::encode_boot(key, &boot, args).map_err(io::Error::other)?;
        frame[..wire::BOOT_HEADER].copy_from_slice(&mac);
    }
    match c {
        Corruption::Garbage => {
            frame = (0..frame.len())
                .map(|i| (i as u8).wrapping_mul(73).wrapping_add(11))
                .collect()
        }
        Corruption::BadMagic => frame[0] ^= 0xff,
        Corruption::FlipPayloadByte(i) => {
            let n = frame.len() - wire::BOOT_HEADER - args.len();
            frame[wire::BOOT_HEADER + i % n] ^= 0x5a;
        }
        Corruption::Truncate(n) => frame.truncate(n.min(frame.len())),
        _ => {}
    }
    Ok(frame)
}

/// Starts `target(args)` through the fork server with its request damaged as `c` says
/// (the corruptions of the marker variable and fds do not apply); waits for the child
/// and returns its exit code and, if it reported one, its refusal or failure text.
pub fn forkserver_corrupt<A, R>(
    target: fn(A) -> R,
    args: A,
    c: Corruption,
) -> io::Result<(i32, Option<String>)>
where
    A: Message + Send + 'static,
    R: Message + 'static,
{
    let enc = codec::encode(&args).map_err(io::Error::other)?;
    let prepared = crate::process::Prepared::Target {
        tramp: sys::trampoline_addr::<A, R>(),
        target: sys::fn_addr(target),
        enc,
        local: Box::new(|_, _| crate::child::Outcome::Failed("not local".into())),
    };
    let parent = rustix::process::getpid().as_raw_nonzero().get();
    let info = ChildInfo {
        name: "corrupt".into(),
        daemon: false,
        identity: vec![0],
        parent_pid: parent,
        parent_name: "MainProcess".into(),
        method: crate::StartMethod::ForkServer.code(),
        join_at_exit: false,
        log: None,
    };
    let tamper = move |boot: wire::Boot, key: &[u8; 32], args: &[u8]| {
        let other_key = mproc_core::code::start_key(!boot.nonce);
        let mut frame = damaged_frame(boot, key, args, c)?;
        match c {
            Corruption::ForgedContext => {
                let mac = wire::frame_mac_field(&frame).unwrap_or_default();
                crate::forkserver::encode_context_for(&other_key, mac, &mut frame)
            }
            Corruption::MovedContext => {
                crate::forkserver::encode_context_for(key, [0x17; 32], &mut frame)
            }
            _ => crate::forkserver::encode_context(key, &mut frame),
        }
        Ok(frame)
    };
    let mut started = crate::launcher::run_long_lived(move || {
        crate::forkserver::start_tampered(prepared, info, Some(&tamper))
    })?;
    let status = started
        .status
        .take()
        .ok_or_else(|| io::Error::other("no status pipe"))?;
    // `None`: the server vanished without reporting (dropping `started` closes the
    // lifeline, which kills the child).
    let code = crate::forkserver::read_status(status.as_fd())?
        .ok_or_else(|| io::Error::other("the fork server vanished without reporting"))?;
    started.reader.pump()?;
    let text = match started.reader.take() {
        Some(wire::Received::Refused(m) | wire::Received::Failed(m)) => Some(m),
        Some(wire::Received::Panicked(m)) => Some(format!("panicked: {m}")),
        Some(wire::Received::Value(..)) => Some("returned a value".into()),
        None => None,
    };
    Ok((code, text))
}

//! Issue #2's "bad input and failure" list, under the default start method
//! (`cargo xtask test-all` runs this file under fork, spawn and forkserver through
//! `MPROC_START_METHOD`), plus the spawn-only corrupt-bootstrap case.
mod support;

use mproc_core::transfer::{Exporter, Importer};
use mproc_core::{Handle, Transfer, TransferError, impl_handle_archive};
use mproc_spawn::testing::{Corruption, spawn_corrupt};
use mproc_spawn::{Process, ProcessError};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};
use support::*;

fn panics(n: u32) -> u32 {
    if n > 0 {
        panic!("target failed on {n}");
    }
    n
}

fn exits(code: i32) -> u32 {
    std::process::exit(code)
}

fn sleeper(ms: u64) -> u64 {
    sleep_ms(ms)
}

#[test]
fn panic_reaches_join_with_its_message_and_exit_code_1() {
    let mut p = Process::new(panics, 5);
    p.start().unwrap();
    match p.join() {
        Err(ProcessError::Panicked(m)) => assert_eq!(m, "target failed on 5"),
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_eq!(p.exitcode(), Some(1));
    assert!(!p.is_alive());
}

#[test]
fn exit_code_3() {
    let mut p = Process::new(exits, 3);
    p.start().unwrap();
    assert!(matches!(p.join(), Err(ProcessError::Exited(3))));
    assert_eq!(p.exitcode(), Some(3));
}

#[test]
fn sigkill_and_sigterm_give_minus_signal() {
    for (sig, code) in [(libc::SIGKILL, -9), (libc::SIGTERM, -15)] {
        let mut p = Process::new(sleeper, 30_000);
        p.start().unwrap();
        if sig == libc::SIGKILL {
            p.kill().unwrap();
        } else {
            p.terminate().unwrap();
        }
        match p.join() {
            Err(ProcessError::Signaled(s)) => assert_eq!(s, -code),
            other => panic!("expected signal {sig}, got {other:?}"),
        }
        assert_eq!(p.exitcode(), Some(code));
        // Signalling an ended process is harmless.
        p.terminate().unwrap();
    }
}

#[test]
fn join_timeout_on_a_sleeping_child() {
    let mut p = Process::new(sleeper, 30_000);
    p.start().unwrap();
    let t = Instant::now();
    let r = p.join_timeout(Duration::from_millis(300)).unwrap();
    let took = t.elapsed();
    assert!(r.is_none());
    assert!(
        took >= Duration::from_millis(300),
        "returned early: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "returned late: {took:?}");
    assert!(p.is_alive());
    assert_eq!(p.exitcode(), None);
    p.terminate().unwrap();
    assert!(matches!(p.join(), Err(ProcessError::Signaled(15))));
}

#[test]
fn hundred_children_terminated_right_after_start_report_minus_15() {
    let mut done = 0;
    while done < 100 {
        let batch: Vec<Process<u64>> = (0..20)
            .map(|_| {
                let mut p = Process::new(sleeper, 30_000);
                p.start().unwrap();
                p
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1));
        for p in &batch {
            p.terminate().unwrap();
        }
        for mut p in batch {
            assert!(matches!(p.join(), Err(ProcessError::Signaled(15))));
            assert_eq!(p.exitcode(), Some(-15));
            done += 1;
        }
    }
}

#[test]
fn second_start_is_an_error() {
    let mut p = Process::new(sleeper, 1);
    p.start().unwrap();
    assert!(matches!(p.start(), Err(ProcessError::AlreadyStarted)));
    assert_eq!(p.join().unwrap(), 1);
    assert!(matches!(p.start(), Err(ProcessError::AlreadyStarted)));
    assert!(matches!(p.join(), Err(ProcessError::AlreadyJoined)));
}

/// A handle whose export always fails: arguments containing it cannot be serialised.
#[derive(Debug)]
struct Unsendable;

impl Transfer for Unsendable {
    const KIND: &'static str = "mproc_spawn::tests::Unsendable";
    fn export(&self, _: &mut Exporter<'_>) -> Result<(), TransferError> {
        Err(TransferError::Malformed(
            "this handle cannot cross processes",
        ))
    }
    fn import(_: &mut Importer<'_>) -> Result<Self, TransferError> {
        Ok(Unsendable)
    }
}
impl_handle_archive!(Unsendable);

fn touches((path, _): (String, Unsendable)) -> u32 {
    std::fs::write(path, b"ran").unwrap();
    1
}

#[test]
fn arguments_that_fail_to_serialise_fail_before_any_process_starts() {
    let path = unique_path("unsendable");
    let mut p = Process::new(touches, (path.display().to_string(), Unsendable));
    match p.start() {
        Err(ProcessError::Args(e)) => assert!(e.to_string().contains("cannot cross")),
        other => panic!("expected an argument error, got {other:?}"),
    }
    assert_eq!(p.pid(), None);
    assert!(!p.is_alive());
    // Still not started: the same error again, not "already started".
    assert!(matches!(p.start(), Err(ProcessError::Args(_))));
    assert!(matches!(p.join(), Err(ProcessError::NotStarted)));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!path.exists(), "the target must never run");
}

fn creates_file(path: String) -> u32 {
    std::fs::write(path, b"ran").unwrap();
    7
}

#[test]
fn corrupt_bootstrap_data_is_refused_and_nothing_runs() {
    let kinds = [
        Corruption::Garbage,
        Corruption::BadMagic,
        Corruption::FlipPayloadByte(0),
        Corruption::FlipPayloadByte(37),
        Corruption::FlipPayloadByte(1_000_003),
        Corruption::Truncate(0),
        Corruption::Truncate(10),
        Corruption::Truncate(40),
        Corruption::WrongNonce,
        Corruption::WrongMac,
        Corruption::ForgedTarget,
        Corruption::ForeignBuild,
        Corruption::WrongSignature,
        Corruption::TargetOutsideCode,
        Corruption::TrampolineOutsideCode,
        Corruption::BadEnv,
        Corruption::ClosedBootFd,
    ];
    for c in kinds {
        let path = unique_path("corrupt");
        let out = spawn_corrupt(creates_file, path.display().to_string(), c).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(70), "{c:?}: {:?} {err}", out.status);
        assert!(
            err.contains("mproc: corrupt bootstrap data, refusing to run the target"),
            "{c:?}: stderr was {err:?}"
        );
        assert!(out.stdout.is_empty(), "{c:?}: the harness must not run");
        assert!(!path.exists(), "{c:?}: the target must never run");
    }
}

#[test]
fn forged_bootstraps_are_refused_with_the_reason() {
    for (c, needles) in [
        (Corruption::WrongMac, &["MAC mismatch"][..]),
        (Corruption::ForgedTarget, &["MAC mismatch"][..]),
        (Corruption::ForeignBuild, &["another build"][..]),
        (
            Corruption::WrongSignature,
            &[
                "type mismatch",
                "fn(alloc::string::String) -> u32",
                "fn(u64) -> u64",
            ][..],
        ),
    ] {
        let path = unique_path("forged");
        let out = spawn_corrupt(creates_file, path.display().to_string(), c).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(70), "{c:?}: {:?} {err}", out.status);
        for n in needles {
            assert!(err.contains(n), "{c:?}: {n:?} not in {err:?}");
        }
        assert!(!err.contains("0x"), "{c:?}: no address in {err:?}");
        assert!(!path.exists(), "{c:?}: the target must never run");
    }
}

#[test]
fn forged_forkserver_requests_are_refused_and_the_server_goes_on() {
    for (c, needle) in [
        (Corruption::WrongMac, "MAC mismatch"),
        (Corruption::ForgedTarget, "MAC mismatch"),
        (Corruption::WrongNonce, "nonce mismatch"),
        (Corruption::ForeignBuild, "another build"),
        (Corruption::WrongSignature, "fn(u64) -> u64"),
        (Corruption::TargetOutsideCode, "does not point into"),
        (Corruption::FlipPayloadByte(5), "MAC mismatch"),
        (Corruption::ForgedContext, "context section: MAC mismatch"),
        (Corruption::MovedContext, "belongs to another request"),
    ] {
        let path = unique_path("forged-fs");
        let (code, text) =
            mproc_spawn::testing::forkserver_corrupt(creates_file, path.display().to_string(), c)
                .unwrap();
        let text = text.unwrap_or_default();
        assert_eq!(code, 70, "{c:?}: {text}");
        assert!(text.contains("refusing to run the target"), "{c:?}: {text}");
        assert!(text.contains(needle), "{c:?}: {needle:?} not in {text}");
        assert!(!text.contains("0x"), "{c:?}: {text}");
        assert!(!path.exists(), "{c:?}: the target must never run");
    }
    // The server still serves honest requests.
    let path = unique_path("honest-fs");
    let mut p = Process::new(creates_file, path.display().to_string())
        .start_method(mproc_spawn::StartMethod::ForkServer);
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), 7);
    assert!(path.exists());
    let _ = std::fs::remove_file(path);
}

/// Removes a directory tree when dropped (even if the test fails).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_set_user_id_program_never_dispatches() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    let dir = TempDir(unique_path("setuid"));
    std::fs::create_dir(&dir.0).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.0.join("copy");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    // A marker that parses and names this process as the parent.
    let marker = format!("v2:1:{}:{}:1000:1001", "ab".repeat(32), std::process::id());
    let run = |cmd: &mut Command| {
        let out = cmd
            .arg("--list")
            .env("MPROC_BOOTSTRAP", &marker)
            .env("MPROC_FORKSERVER", "v2:1")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Run normally, the copy dispatches and refuses the (fd-less) bootstrap: exit 70.
    let (code, err) = run(&mut Command::new(&exe));
    assert_eq!(code, Some(70), "{err}");
    assert!(err.contains("corrupt bootstrap data"), "{err}");
    // Set-user-ID root, run by another user, the kernel sets AT_SECURE: the constructor
    // refuses before looking at the marker (making that copy needs root).
    if rustix::process::geteuid().is_root() {
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let (code, err) = run(Command::new("setpriv").args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            exe.to_str().unwrap(),
        ]));
        assert_eq!(code, Some(77), "{err}");
        assert!(
            err.contains("secure mode") && err.contains("AT_SECURE"),
            "{err}"
        );
        assert!(!err.contains("corrupt bootstrap data"), "{err}");
    }
}

fn middle((wr, method): (Handle<OwnedFd>, u8)) -> u32 {
    let _ = method;
    let mut g = Process::new(sleeper, 60_000);
    g.start().unwrap();
    let mut w = std::fs::File::from(wr.0);
    writeln!(w, "{}", g.pid().unwrap()).unwrap();
    drop(w);
    std::thread::sleep(Duration::from_secs(60));
    // Not reached: the test kills this process.
    std::mem::forget(g);
    0
}

#[test]
fn sigkilled_parent_leaves_no_child_alive() {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let mut p = Process::new(middle, (Handle(w), 0));
    p.start().unwrap();
    let mut line = String::new();
    std::fs::File::from(r).read_to_string(&mut line).unwrap();
    let grandchild: i32 = line.trim().parse().expect("the middle reports its child");
    assert!(mproc_core::process_alive(grandchild));
    p.kill().unwrap();
    assert!(matches!(p.join(), Err(ProcessError::Signaled(9))));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        eventually(Duration::from_secs(5), || !mproc_core::process_alive(
            grandchild
        )),
        "grandchild {grandchild} outlived its killed parent"
    );
}

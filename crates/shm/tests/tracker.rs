//! The resource tracker across real processes: the test binary re-runs itself as a
//! child (role in an environment variable), the child creates or opens a segment and
//! then exits, panics or is killed; the parent checks what is left in `/dev/shm`.
//! This exercises a freshly exec'd creator; `cross_process.rs` does the same through
//! `mproc_spawn::Process` under the configured start method.
mod common;

use common::{Cleanup, exists, gone_within};
use mproc_shm::SharedMemory;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ROLE: &str = "MPROC_SHM_TEST_ROLE";

/// Kills and reaps the child when dropped, so a failing test leaves no process.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// If this process is a child started by `start`, plays its role and exits.
fn child_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let (what, name) = role.split_once(':').expect("role:name");
    if what == "restart" {
        // A first segment starts the tracker; the tracker is killed; the next creation
        // must start a new one, which also knows the first name.
        let first = SharedMemory::create_named(&format!("{name}_a"), 64).unwrap();
        let tracker = mproc_shm::tracker_pid().expect("a tracker runs");
        // SAFETY: sending SIGKILL to a pid; the tracker does not reap-race us (it is
        // nobody's child here), and it is alive until this signal.
        assert_eq!(unsafe { libc::kill(tracker, libc::SIGKILL) }, 0);
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while mproc_core::process_alive(tracker) {
            assert!(
                std::time::Instant::now() < end,
                "the tracker survived SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let second = SharedMemory::create_named(&format!("{name}_b"), 64).unwrap();
        let again = mproc_shm::tracker_pid().expect("a tracker runs again");
        assert_ne!(again, tracker);
        println!("READY");
        let _keep = (first, second);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    if what == "many" {
        // A first segment unlinked twice (the second call must not cancel the slot it
        // had, which the next segment takes), then 100 more left for the tracker.
        let first = SharedMemory::create_named(&format!("{name}_first"), 64).unwrap();
        first.unlink().unwrap();
        assert!(first.unlink().is_err());
        let kept: Vec<_> = (0..100)
            .map(|i| SharedMemory::create_named(&format!("{name}_{i}"), 64).unwrap())
            .collect();
        assert!(first.unlink().is_err());
        println!("READY");
        drop(kept);
        std::process::exit(0);
    }
    let keep = match what {
        "create" | "create-exit" | "create-panic" | "create-unlink" | "create-close-stdout" => {
            SharedMemory::create_named(name, 4096).expect("child create")
        }
        "open" | "open-exit" => SharedMemory::open(name).expect("child open"),
        other => panic!("unknown role {other}"),
    };
    keep.write(0, b"child").unwrap();
    println!("READY");
    match what {
        "create-exit" | "open-exit" => std::process::exit(0),
        "create-unlink" => {
            keep.unlink().unwrap();
            std::process::exit(0)
        }
        "create-panic" => panic!("the creator panics on purpose"),
        "create-close-stdout" => {
            // Let go of the pipe to the parent while staying alive: only a tracker
            // that kept a copy of it could now hold the parent's read back.
            use std::io::Write;
            std::io::stdout().flush().unwrap();
            // SAFETY: fd 1 is this process's stdout, flushed above and not used again.
            unsafe { libc::close(1) };
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        _ => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
    }
}

/// Re-runs this test binary, filtered to `test`, as a child playing `role` on `name`;
/// returns once it printed READY.
fn start(test: &str, role: &str, name: &str) -> Reap {
    let mut child = Reap(
        Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, format!("{role}:{name}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = child.0.stdout.take().unwrap();
    let ready = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("READY"));
    assert!(ready, "child {role} never got ready");
    child
}

#[test]
fn creator_sigkilled_segment_is_unlinked() {
    child_role();
    let mut c = Cleanup::default();
    let name = c.name("sigkill");
    let mut child = start("creator_sigkilled_segment_is_unlinked", "create", &name);
    assert!(exists(&name));
    child.0.kill().unwrap();
    let _ = child.0.wait();
    assert!(
        gone_within(&name, Duration::from_secs(2)),
        "the tracker left {name} behind"
    );
}

#[test]
fn creator_exiting_without_unlink_is_cleaned_up() {
    child_role();
    let mut c = Cleanup::default();
    let name = c.name("exit");
    let mut child = start(
        "creator_exiting_without_unlink_is_cleaned_up",
        "create-exit",
        &name,
    );
    assert!(child.0.wait().unwrap().success());
    assert!(gone_within(&name, Duration::from_secs(2)));
}

#[test]
fn creator_panicking_is_cleaned_up() {
    child_role();
    let mut c = Cleanup::default();
    let name = c.name("panic");
    let mut child = start("creator_panicking_is_cleaned_up", "create-panic", &name);
    assert!(!child.0.wait().unwrap().success());
    assert!(gone_within(&name, Duration::from_secs(2)));
}

#[test]
fn creator_unlinking_then_exiting_leaves_a_new_segment_alone() {
    child_role();
    let mut c = Cleanup::default();
    let name = c.name("reuse");
    let mut child = start(
        "creator_unlinking_then_exiting_leaves_a_new_segment_alone",
        "create-unlink",
        &name,
    );
    // The child unlinked the name (and told its tracker) before exiting. Once it is
    // gone, a new segment of the same name, made here, must survive the child's
    // tracker.
    assert!(gone_within(&name, Duration::from_secs(2)));
    let mine = SharedMemory::create_named(&name, 64).unwrap();
    assert!(child.0.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        exists(&name),
        "the child's tracker removed a segment it did not own"
    );
    mine.unlink().unwrap();
}

#[test]
fn opener_never_unlinks() {
    child_role();
    let mut c = Cleanup::default();
    let name = c.name("opener");
    let mine = SharedMemory::create_named(&name, 4096).unwrap();
    // An opener that exits normally …
    let mut child = start("opener_never_unlinks", "open-exit", &name);
    assert!(child.0.wait().unwrap().success());
    // … and one that is killed.
    let mut child = start("opener_never_unlinks", "open", &name);
    child.0.kill().unwrap();
    let _ = child.0.wait();
    std::thread::sleep(Duration::from_millis(300));
    assert!(exists(&name), "an opener removed the segment");
    let mut buf = [0u8; 5];
    mine.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"child");
    mine.unlink().unwrap();
}

#[test]
fn tracker_survives_process_group_signals() {
    child_role();
    // The tracker runs in a session of its own: a SIGTERM to this process group (as a
    // shell's Ctrl-C or a supervisor would send) must not reach it. Here the creator
    // is a child in a new process group; the whole group gets SIGTERM; the segment must
    // still be cleaned up, which only a surviving tracker can do.
    let mut c = Cleanup::default();
    let name = c.name("pgrp");
    use std::os::unix::process::CommandExt;
    let mut child = Reap(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "tracker_survives_process_group_signals",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, format!("create:{name}"))
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = child.0.stdout.take().unwrap();
    assert!(
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("READY"))
    );
    let pgid = rustix::process::Pid::from_raw(child.0.id() as i32).unwrap();
    rustix::process::kill_process_group(pgid, rustix::process::Signal::TERM).unwrap();
    let _ = child.0.wait();
    assert!(gone_within(&name, Duration::from_secs(2)));
}

#[test]
fn many_segments_and_double_unlink() {
    child_role();
    let mut c = Cleanup::default();
    let base = c.name("many");
    for i in 0..100 {
        c.add(&format!("{base}_{i}"));
    }
    c.add(&format!("{base}_first"));
    let mut child = start("many_segments_and_double_unlink", "many", &base);
    assert!(child.0.wait().unwrap().success());
    for i in 0..100 {
        let n = format!("{base}_{i}");
        assert!(
            gone_within(&n, Duration::from_secs(2)),
            "{n} was left behind"
        );
    }
}

#[test]
fn tracker_keeps_none_of_the_creators_fds() {
    child_role();
    let mut c = Cleanup::default();
    let name = c.name("fds");
    let mut child = Reap(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "tracker_keeps_none_of_the_creators_fds",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, format!("create-close-stdout:{name}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(out), &mut all);
        let _ = tx.send(all);
    });
    // EOF arrives while the child (and its tracker) still run: nobody else holds the
    // write end of the pipe.
    let all = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the tracker kept the creator's stdout open");
    assert!(all.contains("READY"));
    assert!(exists(&name));
    child.0.kill().unwrap();
    let _ = child.0.wait();
    assert!(gone_within(&name, Duration::from_secs(2)));
}

#[test]
fn a_killed_tracker_is_restarted_and_still_cleans_up() {
    child_role();
    let mut c = Cleanup::default();
    let name = c.name("restart");
    let (a, b) = (format!("{name}_a"), format!("{name}_b"));
    c.add(&a);
    c.add(&b);
    let mut child = start(
        "a_killed_tracker_is_restarted_and_still_cleans_up",
        "restart",
        &name,
    );
    assert!(exists(&a) && exists(&b));
    child.0.kill().unwrap();
    let _ = child.0.wait();
    assert!(
        gone_within(&a, Duration::from_secs(2)),
        "a segment made before the tracker was killed leaked"
    );
    assert!(
        gone_within(&b, Duration::from_secs(2)),
        "a segment made after the tracker was killed leaked"
    );
}

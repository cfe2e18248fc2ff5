//! Shared-memory handles never cross pid namespaces (issue #11, item 2): a queue's ring
//! records its slot holders by pid, a locked `Value` its lock's holder, and a pid from
//! another namespace would make a live holder look dead. Each is refused on arrival in a
//! process of another pid namespace with `TransferError::ForeignPidNamespace`.
//!
//! The receiver runs in a new user + pid namespace through `unshare -Urp --fork` (this
//! test binary again, entering `helper_in_other_namespace`). If unprivileged user
//! namespaces are not available, the test says so and checks nothing else.
use mproc::channel::Queue;
use mproc::shm::Value;
use std::io::{IoSlice, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

const CHILD_ENV: &str = "MPROC_TEST_NS_KIND";

fn unshare_works() -> bool {
    Command::new("unshare")
        .args(["-Urp", "--fork", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sends `value` to a helper in a new pid namespace; returns what the helper printed.
fn send_to_other_namespace<T: mproc::core::Encode>(kind: &str, value: &T) -> String {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut child = Command::new("unshare")
        .args(["-Urp", "--fork"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_in_other_namespace",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, kind)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let enc = mproc::core::codec::encode(value).unwrap();
    let mut msg = (enc.bytes.len() as u64).to_le_bytes().to_vec();
    msg.extend_from_slice(&enc.bytes);
    let fds = mproc::core::scm::borrow_all(&enc.fds);
    let mut sent =
        mproc::core::scm::send_with_fds(ours.as_fd(), &[IoSlice::new(&msg)], &fds).unwrap();
    while sent < msg.len() {
        sent += mproc::core::scm::send_with_fds(ours.as_fd(), &[IoSlice::new(&msg[sent..])], &[])
            .unwrap();
    }
    let mut out = String::new();
    let read = child.stdout.take().unwrap().read_to_string(&mut out);
    let status = child.wait().unwrap();
    read.unwrap();
    assert!(status.success(), "helper failed: {status:?}\n{out}");
    out
}

#[test]
fn queues_and_values_sent_into_another_pid_namespace_are_refused() {
    if !unshare_works() {
        eprintln!("unprivileged user+pid namespaces unavailable: nothing to check here");
        return;
    }
    let q: Queue<u64> = Queue::new().unwrap();
    q.put(5).unwrap();
    let out = send_to_other_namespace("queue", &q);
    assert!(
        out.contains("REFUSED") && out.contains("pid namespace"),
        "a queue must be refused in another pid namespace; the helper said:\n{out}"
    );
    assert_eq!(q.get().unwrap(), 5, "the queue is untouched");

    let v: Value<u64> = Value::new(9).unwrap();
    let out = send_to_other_namespace("value", &v);
    assert!(
        out.contains("REFUSED") && out.contains("pid namespace"),
        "a Value must be refused in another pid namespace; the helper said:\n{out}"
    );
    assert_eq!(v.get().unwrap(), 9);
}

const FORK_ENV: &str = "MPROC_TEST_NS_FORK";

/// In the fork child: its owner tag, and whether it would call a pid that exists in no
/// namespace dead.
fn report_tag(_: u32) -> (u32, bool) {
    (
        mproc::core::pid::owner_tag(),
        mproc::core::pid::holder_dead(4_000_000),
    )
}

#[test]
fn a_process_forked_into_a_new_pid_namespace_neither_judges_nor_is_judged() {
    if !unshare_works() {
        eprintln!("unprivileged user+pid namespaces unavailable: nothing to check here");
        return;
    }
    // The helper runs in a new user namespace (root there), makes a new pid namespace
    // for its children, and forks one with the fork start method.
    let out = Command::new("unshare")
        .arg("-Ur")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_forks_into_a_new_pid_namespace",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FORK_ENV, "1")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helper failed: {:?}\n{text}",
        out.status
    );
    let line = text
        .lines()
        .find_map(|l| l.split_once("TAG ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no report from the helper:\n{text}"));
    let mut it = line.split_whitespace();
    let tag: u32 = it.next().unwrap().parse().unwrap();
    let judged_dead: bool = it.next().unwrap().parse().unwrap();
    assert_ne!(
        tag & mproc::core::pid::FOREIGN_TAG,
        0,
        "the child's locks must be tagged foreign, its pid means nothing outside"
    );
    assert!(
        !judged_dead,
        "a foreign process must never call anyone dead"
    );
}

/// Runs only under `unshare -Ur` (a plain no-op otherwise).
#[test]
fn helper_forks_into_a_new_pid_namespace() {
    if std::env::var_os(FORK_ENV).is_none() {
        return;
    }
    let before = mproc::core::pid::owner_tag();
    assert_eq!(before & mproc::core::pid::FOREIGN_TAG, 0);
    assert!(mproc::core::pid::holder_dead(4_000_000));
    // SAFETY: only a new pid namespace for later children; no fd table is unshared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWPID) }
        .expect("unshare(CLONE_NEWPID) as root of a user namespace");
    // A raw fork: mproc's own fork start checks that its parent is still its parent,
    // which a child in a new pid namespace cannot see (getppid() is 0 there).
    let (mut rx, mut tx) = std::io::pipe().unwrap();
    use std::io::Write;
    // SAFETY: the child only computes its tag (two raw system calls and a stat), writes
    // to a pipe and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let (tag, dead) = report_tag(0);
        let ok = tx.write_all(format!("{tag} {dead}").as_bytes()).is_ok();
        // SAFETY: ends the fork child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    drop(tx);
    let mut text = String::new();
    use std::io::Read;
    rx.read_to_string(&mut text).unwrap();
    let mut status = 0;
    // SAFETY: reaps the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert_eq!(status, 0, "the fork child failed");
    let mut it = text.split_whitespace();
    let (tag, dead): (u32, bool) = (
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().parse().unwrap(),
    );
    println!("TAG {tag} {dead}");
}

/// Runs only inside the namespace child (a plain no-op otherwise).
#[test]
fn helper_in_other_namespace() {
    let Some(kind) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let sock = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned().unwrap());
    let mut buf = vec![0u8; 1 << 16];
    let (mut n, fds) = mproc::core::scm::recv_with_fds(sock.as_fd(), &mut buf, 16).unwrap();
    while n < 8 || n < 8 + u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize {
        let (k, _) = mproc::core::scm::recv_with_fds(sock.as_fd(), &mut buf[n..], 0).unwrap();
        assert!(k > 0, "message cut short");
        n += k;
    }
    let mut bytes = mproc::core::rkyv::util::AlignedVec::<16>::new();
    bytes.extend_from_slice(&buf[8..n]);
    let outcome = match kind.to_str() {
        Some("queue") => mproc::core::codec::decode::<Queue<u64>>(&bytes, fds).map(|_| ()),
        Some("value") => mproc::core::codec::decode::<Value<u64>>(&bytes, fds).map(|_| ()),
        other => panic!("unknown kind {other:?}"),
    };
    match outcome {
        Err(e) => println!("REFUSED: {e}"),
        Ok(()) => println!("ACCEPTED"),
    }
}

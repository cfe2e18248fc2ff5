//! Locks never cross pid namespaces: a lock word records its holder by pid, and a pid
//! from another namespace would make a live holder look dead (two owners). A handle
//! sent to a process in another pid namespace is refused on import.
//!
//! The child runs in a new user + pid namespace through `unshare -Urp --fork` (this
//! test binary again, entering `helper_in_other_namespace`). If unprivileged user
//! namespaces are not available, the test says so and checks nothing else.
use mproc_sync::Lock;
use std::io::{IoSlice, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD_ENV: &str = "MPROC_TEST_NS_CHILD";

fn unshare_works() -> bool {
    Command::new("unshare")
        .args(["-Urp", "--fork", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_lock_sent_into_another_pid_namespace_is_refused() {
    if !unshare_works() {
        eprintln!("unprivileged user+pid namespaces unavailable: nothing to check here");
        return;
    }
    let lock = Lock::new().unwrap();
    lock.acquire().unwrap(); // held by this (live) process
    let (ours, theirs) = UnixStream::pair().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("unshare")
        .args(["-Urp", "--fork"])
        .arg(&exe)
        .args([
            "--exact",
            "helper_in_other_namespace",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let enc = mproc_core::codec::encode(&lock).unwrap();
    let len = (enc.bytes.len() as u64).to_le_bytes();
    let fds = mproc_core::scm::borrow_all(&enc.fds);
    let mut sent = mproc_core::scm::send_with_fds(
        ours.as_fd(),
        &[IoSlice::new(&len), IoSlice::new(&enc.bytes)],
        &fds,
    )
    .unwrap();
    let total = 8 + enc.bytes.len();
    while sent < total {
        let rest: Vec<u8> = len
            .iter()
            .chain(enc.bytes.iter())
            .skip(sent)
            .copied()
            .collect();
        sent += mproc_core::scm::send_with_fds(ours.as_fd(), &[IoSlice::new(&rest)], &[]).unwrap();
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "helper failed: {status:?}\n{out}");
    assert!(
        out.contains("REFUSED") && out.contains("pid namespace"),
        "the handle must be refused in another pid namespace; the helper said:\n{out}"
    );
    // Still ours, untouched.
    assert!(lock.locked());
    lock.release().unwrap();
}

/// Runs only inside the namespace child (a plain no-op otherwise).
#[test]
fn helper_in_other_namespace() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let sock = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned().unwrap());
    let mut buf = vec![0u8; 1 << 16];
    let (mut n, fds) = mproc_core::scm::recv_with_fds(sock.as_fd(), &mut buf, 16).unwrap();
    while n < 8 || n < 8 + u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize {
        let (k, _) = mproc_core::scm::recv_with_fds(sock.as_fd(), &mut buf[n..], 0).unwrap();
        assert!(k > 0, "message cut short");
        n += k;
    }
    let mut bytes = mproc_core::rkyv::util::AlignedVec::<16>::new();
    bytes.extend_from_slice(&buf[8..n]);
    match mproc_core::codec::decode::<Lock>(&bytes, fds) {
        Err(e) => println!("REFUSED: {e}"),
        Ok(lock) => {
            // What the refusal prevents: the holder's pid means nothing here, so the
            // live holder looks dead and the lock is taken a second time.
            match lock.acquire_timeout(Duration::from_millis(300)) {
                Err(e) => println!("ACCEPTED, then took it over from a live holder: {e}"),
                Ok(got) => println!("ACCEPTED, acquired: {got}"),
            }
        }
    }
}

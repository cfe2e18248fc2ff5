//! mproc-core across a real process boundary (plain `fork`, since spawn sits above core),
//! and its failure paths: corrupt messages, wrong handle kinds, missing fds, timeouts.
use mproc_core::codec::{self, FrameError, FrameHeader, HEADER_LEN};
use mproc_core::futex::{self, Spinner, WaitOutcome};
use mproc_core::{Deadline, Handle, Pidfd, Region, Transfer, TransferError};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Forks; the child runs `f` and `_exit`s with its return value (101 on panic).
fn fork_run(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the test process may have other threads (the harness); the child only
    // touches atomics in shared memory and calls `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    pid
}

fn wait_code(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: reaps our own child by pid.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    }
}

#[test]
fn region_and_futex_cross_fork() {
    let region = Region::new(4096).unwrap();
    let word = region.atomic_u32(0).unwrap();
    let pid = fork_run(|| {
        let w = region.atomic_u32(0).unwrap();
        // Wait for the parent's go, then answer.
        let ok = futex::wait_until(w, None, Deadline::after(Duration::from_secs(10)), |v| {
            v == 1
        });
        w.store(2, Ordering::Release);
        futex::wake_all(w);
        if ok { 0 } else { 1 }
    });
    std::thread::sleep(Duration::from_millis(20));
    word.store(1, Ordering::Release);
    futex::wake_all(word);
    let spinner = Spinner::new();
    assert!(futex::wait_until(
        word,
        Some(&spinner),
        Deadline::after(Duration::from_secs(10)),
        |v| v == 2
    ));
    assert_eq!(wait_code(pid), 0);
}

#[test]
fn futex_wait_times_out_after_the_deadline() {
    let region = Region::new(4096).unwrap();
    let w = region.atomic_u32(8).unwrap();
    let t = Instant::now();
    assert_eq!(
        futex::wait(w, 0, Deadline::after(Duration::from_millis(100))),
        WaitOutcome::TimedOut
    );
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(!futex::wait_until(
        w,
        None,
        Deadline::after(Duration::from_millis(50)),
        |v| v == 9
    ));
}

#[test]
fn region_bounds_are_checked() {
    let r = Region::new(100).unwrap();
    assert!(r.atomic_u32(98).is_none());
    assert!(r.atomic_u32(2).is_none(), "misaligned");
    assert!(r.atomic_u64(96).is_none());
    assert!(r.write_bytes(99, &[1, 2]).is_err());
    r.write_bytes(98, &[1, 2]).unwrap();
    let mut b = [0u8; 2];
    r.read_bytes(98, &mut b).unwrap();
    assert_eq!(b, [1, 2]);
    assert!(Region::new(0).is_err());
}

#[test]
fn region_travels_through_codec_and_shares_memory() {
    let r = Region::new(8192).unwrap();
    let enc = codec::encode(&(7u64, r.try_clone().unwrap(), vec![1u8, 2, 3])).unwrap();
    assert_eq!(enc.fds.len(), 1);
    let (n, r2, v): (u64, Region, Vec<u8>) = codec::decode(&enc.bytes, enc.fds).unwrap();
    assert_eq!((n, v), (7, vec![1, 2, 3]));
    assert_eq!(r2.len(), 8192);
    r2.atomic_u64(8).unwrap().store(42, Ordering::Relaxed);
    assert_eq!(r.atomic_u64(8).unwrap().load(Ordering::Relaxed), 42);
}

#[test]
fn handles_need_their_fds() {
    let r = Region::new(4096).unwrap();
    let enc = codec::encode(&r).unwrap();
    let err = codec::decode::<Region>(&enc.bytes, Vec::new()).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn a_handle_is_never_imported_as_another_kind() {
    let (rd, _wr) = rustix::pipe::pipe().unwrap();
    let enc = codec::encode(&Handle(rd)).unwrap();
    let err = codec::decode::<Region>(&enc.bytes, enc.fds).unwrap_err();
    assert!(
        err.to_string()
            .contains("expected a mproc_core::Region handle"),
        "{err}"
    );
}

#[test]
fn handles_outside_the_codec_are_an_error_not_a_panic() {
    let r = Region::new(4096).unwrap();
    let e = rkyv::to_bytes::<rkyv::rancor::BoxedError>(&r).unwrap_err();
    assert!(e.to_string().contains("codec"), "{e}");
}

#[test]
fn corrupt_and_truncated_messages_are_errors() {
    let msg = (42u32, String::from("hello, world"), vec![1u64, 2, 3]);
    let enc = codec::encode(&msg).unwrap();
    let good: (u32, String, Vec<u64>) = codec::decode(&enc.bytes, vec![]).unwrap();
    assert_eq!(good, msg);
    // Every truncation is an error.
    for cut in 0..enc.bytes.len() {
        let mut buf = rkyv::util::AlignedVec::<16>::new();
        buf.extend_from_slice(&enc.bytes[..cut]);
        assert!(
            codec::decode::<(u32, String, Vec<u64>)>(&buf, vec![]).is_err(),
            "cut at {cut}"
        );
    }
    // Flipping any byte never panics (it may still decode if the byte was payload).
    for i in 0..enc.bytes.len() {
        for v in [0u8, 0x7f, 0x80, 0xff] {
            let mut buf = rkyv::util::AlignedVec::<16>::new();
            buf.extend_from_slice(&enc.bytes);
            buf[i] = v;
            let _ = codec::decode::<(u32, String, Vec<u64>)>(&buf, vec![]);
            let _ = codec::access::<(u32, String, Vec<u64>)>(&buf);
        }
    }
}

#[test]
fn frame_headers_are_checked() {
    let h = FrameHeader { nfds: 2, len: 33 };
    let b = h.to_bytes();
    assert_eq!(b.len(), HEADER_LEN);
    assert_eq!(FrameHeader::parse(&b, 1 << 20), Ok(h));
    assert_eq!(h.padded_len(), 48);
    assert_eq!(
        FrameHeader::parse(&b, 10),
        Err(FrameError::TooLarge { len: 33, max: 10 })
    );
    let mut bad = b;
    bad[0] = b'X';
    assert_eq!(FrameHeader::parse(&bad, 1 << 20), Err(FrameError::BadMagic));
    let many = FrameHeader {
        nfds: 10_000,
        len: 1,
    }
    .to_bytes();
    assert!(matches!(
        FrameHeader::parse(&many, 1 << 20),
        Err(FrameError::TooManyFds(10_000))
    ));
}

#[test]
fn pidfd_reports_exit_and_timeout() {
    let pid = fork_run(|| {
        std::thread::sleep(Duration::from_millis(200));
        3
    });
    let p = Pidfd::open(pid).unwrap();
    let t = Instant::now();
    assert!(!p.wait_exit(Some(Duration::from_millis(50))).unwrap());
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert!(p.is_alive());
    assert!(p.wait_exit(Some(Duration::from_secs(10))).unwrap());
    assert!(!p.is_alive(), "a zombie counts as gone");
    assert!(!mproc_core::process_alive(pid));
    assert_eq!(wait_code(pid), 3);
    // Signalling a reaped process's pidfd is harmless.
    p.send_signal(libc::SIGTERM).unwrap();
}

#[test]
fn fds_travel_over_scm_rights() {
    use std::io::IoSlice;
    use std::os::fd::AsFd;
    let (a, b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let r = Region::new(4096).unwrap();
    r.atomic_u32(0).unwrap().store(77, Ordering::Relaxed);
    let n = mproc_core::scm::send_with_fds(a.as_fd(), &[IoSlice::new(b"x")], &[r.fd()]).unwrap();
    assert_eq!(n, 1);
    let mut buf = [0u8; 4];
    let (n, mut fds) = mproc_core::scm::recv_with_fds(b.as_fd(), &mut buf, 4).unwrap();
    assert_eq!((n, fds.len()), (1, 1));
    let r2 = Region::from_fd(fds.pop().unwrap()).unwrap();
    assert_eq!(r2.atomic_u32(0).unwrap().load(Ordering::Relaxed), 77);
}

#[test]
fn owned_fd_transfer_kind_is_stable() {
    assert_eq!(<OwnedFd as Transfer>::KIND, "std::os::fd::OwnedFd");
    let e = TransferError::MissingFd(3);
    assert!(e.to_string().contains("#3"));
}

#[test]
fn a_watched_holder_wakes_the_word_when_it_exits_and_never_before() {
    use mproc_core::futex::{self, HolderWait, WaitOutcome};
    use mproc_core::watch::{Watch, watch_holder};
    use std::sync::atomic::AtomicU32;
    let word = AtomicU32::new(1);
    let pid = fork_run(|| {
        std::thread::sleep(Duration::from_millis(300));
        0
    });
    // Alive: armed, not fired, and a wait on the word runs to its deadline.
    let w = match watch_holder(&word, pid as u32) {
        Watch::Armed(w) => w,
        other => panic!("{other:?}"),
    };
    assert!(!w.holder_died());
    let r = futex::wait(
        &word,
        1,
        mproc_core::Deadline::after(Duration::from_millis(50)),
    );
    assert_eq!(r, WaitOutcome::TimedOut);
    assert!(!w.holder_died());
    // It exits (a zombie, not yet reaped): the watcher wakes the word.
    let t = Instant::now();
    loop {
        if w.holder_died() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never woken");
        futex::wait(
            &word,
            1,
            mproc_core::Deadline::after(Duration::from_secs(10)),
        );
    }
    drop(w);
    // The same through the one-call form, for the zombie and then for the reaped pid.
    let r = futex::wait_on_holder(&word, 1, pid as u32, mproc_core::Deadline::never());
    assert_eq!(r, HolderWait::HolderDied);
    assert_eq!(wait_code(pid), 0);
    assert!(matches!(watch_holder(&word, pid as u32), Watch::HolderGone));
    // Tags that are never judged.
    assert!(matches!(watch_holder(&word, 0), Watch::Unjudged));
    let foreign = mproc_core::pid::FOREIGN_TAG | 1;
    assert!(matches!(watch_holder(&word, foreign), Watch::Unjudged));
    let r = futex::wait_on_holder(
        &word,
        1,
        foreign,
        mproc_core::Deadline::after(Duration::from_millis(20)),
    );
    assert_eq!(r, HolderWait::TimedOut);
}

#[test]
fn a_fork_child_starts_its_own_watcher() {
    use mproc_core::futex::{self, HolderWait};
    use std::sync::atomic::AtomicU32;
    // This process's watcher, started by a wait behind a live holder (this process).
    let word = AtomicU32::new(1);
    let me = mproc_core::pid::owner_tag();
    let r = futex::wait_on_holder(
        &word,
        1,
        me,
        mproc_core::Deadline::after(Duration::from_millis(20)),
    );
    assert_eq!(r, HolderWait::TimedOut);
    let sleeper = fork_run(|| {
        std::thread::sleep(Duration::from_millis(200));
        0
    });
    // A fork child waits behind the sleeper; only its own watcher can tell it.
    let waiter = fork_run(move || {
        let word = AtomicU32::new(1);
        match futex::wait_on_holder(&word, 1, sleeper as u32, mproc_core::Deadline::never()) {
            HolderWait::HolderDied => 0,
            _ => 1,
        }
    });
    // The sleeper is this process's child: the waiter is told at its exit (a zombie
    // until reaped here).
    let p = Pidfd::open(waiter).unwrap();
    let exited = p.wait_exit(Some(Duration::from_secs(30))).unwrap();
    if !exited {
        p.send_signal(libc::SIGKILL).unwrap();
    }
    let code = wait_code(waiter);
    assert_eq!(wait_code(sleeper), 0);
    assert!(exited, "the waiter hangs");
    assert_eq!(code, 0);
}

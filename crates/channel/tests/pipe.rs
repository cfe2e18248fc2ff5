//! Pipe / Connection behaviours within one process (threads stand in for the peer).
//!
//! Ported in part from CPython's `Lib/test/_test_multiprocessing.py` (`_TestConnection`:
//! `test_connection`, `test_duplex_false`, `test_spawn_close`, `test_sendbytes`), with
//! checks of our own for frame validation.
use mproc_channel::{Connection, Pipe, RecvError, SendError, Waitable, wait};
use mproc_core::Region;
use mproc_core::codec::{FrameError, FrameHeader, TypeTag};
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

/// A connection whose peer is a raw socket we can write anything into.
fn raw_pair() -> (Connection, OwnedFd) {
    let (a, b) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    (Connection::from_fd(a).unwrap(), b)
}

/// A typed frame (as `send::<T>` writes one) whose archive is `archive`, any bytes.
fn typed_frame<T: rkyv::Archive>(archive: &[u8]) -> Vec<u8> {
    TypeTag::of::<T>().typed_frame(archive, 0)
}

fn write_raw(fd: &OwnedFd, bytes: &[u8]) {
    let mut off = 0;
    while off < bytes.len() {
        off += rustix::io::write(fd, &bytes[off..]).unwrap();
    }
}

#[test]
fn typed_round_trip_both_ways() {
    let (a, b) = Pipe(true).unwrap();
    a.send(&(42u32, Option::<u8>::None, String::from("hello")))
        .unwrap();
    let v: (u32, Option<u8>, String) = b.recv().unwrap();
    assert_eq!(v, (42, None, "hello".to_string()));
    b.send(&vec![1u64, 2, 3]).unwrap();
    assert_eq!(a.recv::<Vec<u64>>().unwrap(), vec![1, 2, 3]);
}

#[test]
fn message_boundaries_hold_and_empty_messages_survive() {
    let (a, b) = Pipe(true).unwrap();
    for m in [
        &b"a"[..],
        b"b",
        b"cd",
        b"",
        b"",
        b"efghijklmnopqrstuvwxyz0123456789",
    ] {
        a.send_bytes(m).unwrap();
    }
    assert_eq!(b.recv_bytes().unwrap(), b"a");
    assert_eq!(b.recv_bytes().unwrap(), b"b");
    assert_eq!(b.recv_bytes().unwrap(), b"cd");
    assert_eq!(b.recv_bytes().unwrap(), b"");
    assert_eq!(b.recv_bytes().unwrap(), b"");
    assert_eq!(b.recv_bytes().unwrap(), b"efghijklmnopqrstuvwxyz0123456789");
    assert!(!b.poll(Duration::ZERO).unwrap());
}

#[test]
fn sixteen_mib_message_arrives_intact() {
    let (a, b) = Pipe(true).unwrap();
    let big: Vec<u8> = (0..16usize << 20)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let expect = big.clone();
    let t = thread::spawn(move || {
        a.send(&big).unwrap();
        a.send_bytes(&big).unwrap();
        a
    });
    let got: Vec<u8> = b.recv().unwrap();
    assert!(got == expect, "typed 16 MiB message differs");
    let raw = b.recv_bytes_view().unwrap();
    assert_eq!(raw.len(), expect.len());
    assert!(*raw == expect[..], "raw 16 MiB message differs");
    drop(raw);
    drop(t.join().unwrap());
}

#[test]
fn in_place_view_is_validated() {
    let (a, b) = Pipe(true).unwrap();
    a.send(&(7u32, String::from("in place"))).unwrap();
    {
        let v = b.recv_view::<(u32, String)>().unwrap();
        assert_eq!(v.0.to_native(), 7);
        assert_eq!(v.1.as_str(), "in place");
    }
    // Raw bytes are no typed message.
    a.send_bytes(&[1, 2, 3]).unwrap();
    assert!(matches!(
        b.recv_view::<(u32, String)>(),
        Err(RecvError::TypeMismatch(_))
    ));
    // Typed frames whose bytes are not a (u32, String) archive (too short; then an
    // out-of-line string pointing far outside the message): typed error, frame consumed,
    // and no raw address in the message.
    let (c, raw) = raw_pair();
    write_raw(&raw, &typed_frame::<(u32, String)>(&[1, 2, 3]));
    assert!(matches!(
        c.recv_view::<(u32, String)>(),
        Err(RecvError::Decode(_))
    ));
    let mut bad = [0u8; 12];
    bad[4] = 0x80 | 100; // out-of-line string of 100 bytes …
    bad[8..12].copy_from_slice(&0x4000_0000u32.to_le_bytes()); // … far away
    write_raw(&raw, &typed_frame::<(u32, String)>(&bad));
    match c.recv_view::<(u32, String)>() {
        Err(e @ RecvError::Decode(_)) => {
            let text = e.to_string();
            assert!(!text.contains("0x7f") && !text.contains("0x5"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    a.send(&vec![9u8; 100]).unwrap();
    let v = b.recv_view::<Vec<u8>>().unwrap();
    assert_eq!(&v[..], &[9u8; 100][..]);
}

#[test]
fn unchecked_paths_read_trusted_messages() {
    let (a, b) = Pipe(true).unwrap();
    a.send(&String::from("trusted")).unwrap();
    a.send(&vec![5u16; 10]).unwrap();
    // SAFETY: the peer above sent exactly these types.
    let s: String = unsafe { b.recv_unchecked() }.unwrap();
    assert_eq!(s, "trusted");
    // SAFETY: as above.
    let v = unsafe { b.recv_view_unchecked::<Vec<u16>>() }.unwrap();
    assert_eq!(v.len(), 10);
}

#[test]
fn decode_error_leaves_connection_usable() {
    let (a, b) = Pipe(true).unwrap();
    a.send_bytes(b"not an archive at all").unwrap();
    a.send(&String::from("after")).unwrap();
    assert!(matches!(
        b.recv::<String>(),
        Err(RecvError::TypeMismatch(_))
    ));
    assert_eq!(b.recv::<String>().unwrap(), "after");
    let (c, raw) = raw_pair();
    write_raw(&raw, &typed_frame::<String>(b"not an archive at all"));
    write_raw(&raw, &typed_frame::<u8>(&[0; 1]));
    assert!(matches!(c.recv::<String>(), Err(RecvError::Decode(_))));
    assert_eq!(c.recv::<u8>().unwrap(), 0);
}

#[test]
fn poll_never_consumes_and_times_out() {
    let (a, b) = Pipe(true).unwrap();
    assert!(!b.poll(Duration::ZERO).unwrap());
    let t0 = Instant::now();
    assert!(!b.poll(Duration::from_millis(100)).unwrap());
    assert!(t0.elapsed() >= Duration::from_millis(100));
    a.send_bytes(b"x").unwrap();
    assert!(b.poll(Duration::ZERO).unwrap());
    assert!(b.poll(None).unwrap());
    assert!(b.poll(Duration::from_secs(1)).unwrap());
    assert_eq!(b.recv_bytes().unwrap(), b"x");
    assert!(!b.poll(Duration::ZERO).unwrap());
}

#[test]
fn recv_timeout_waits_at_least_the_timeout() {
    let (_a, b) = Pipe(true).unwrap();
    let t0 = Instant::now();
    assert!(matches!(
        b.recv_timeout::<u32>(Duration::from_millis(100)),
        Err(RecvError::Timeout)
    ));
    assert!(t0.elapsed() >= Duration::from_millis(100));
    assert!(matches!(
        b.recv_bytes_timeout(Duration::ZERO),
        Err(RecvError::Timeout)
    ));
}

#[test]
fn timed_receive_resumes_a_half_read_frame() {
    let (c, raw) = raw_pair();
    let frame = FrameHeader { nfds: 0, len: 5 }.to_bytes();
    write_raw(&raw, &frame[..10]);
    assert!(matches!(
        c.recv_bytes_timeout(Duration::from_millis(20)),
        Err(RecvError::Timeout)
    ));
    write_raw(&raw, &frame[10..]);
    write_raw(&raw, b"hel");
    assert!(matches!(
        c.recv_bytes_timeout(Duration::from_millis(20)),
        Err(RecvError::Timeout)
    ));
    write_raw(
        &raw,
        &[b'l', b'o', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    assert_eq!(
        c.recv_bytes_timeout(Duration::from_secs(5)).unwrap(),
        b"hello"
    );
}

#[test]
fn eof_is_disconnected_after_queued_messages() {
    let (a, b) = Pipe(true).unwrap();
    a.send(&1u32).unwrap();
    a.send(&2u32).unwrap();
    drop(a);
    assert_eq!(b.recv::<u32>().unwrap(), 1);
    assert!(b.poll(Duration::ZERO).unwrap());
    assert_eq!(b.recv::<u32>().unwrap(), 2);
    assert!(b.poll(Duration::ZERO).unwrap(), "EOF counts as ready");
    assert!(matches!(b.recv::<u32>(), Err(RecvError::Disconnected)));
    assert!(matches!(b.recv_bytes(), Err(RecvError::Disconnected)));
    assert!(matches!(b.send(&3u32), Err(SendError::Disconnected)));
}

#[test]
fn explicit_close() {
    let (mut a, b) = Pipe(true).unwrap();
    assert!(!a.closed());
    a.close();
    assert!(a.closed());
    assert!(matches!(a.send(&1u8), Err(SendError::Closed)));
    assert!(matches!(a.recv::<u8>(), Err(RecvError::Closed)));
    assert!(matches!(a.poll(Duration::ZERO), Err(RecvError::Closed)));
    assert!(matches!(b.recv::<u8>(), Err(RecvError::Disconnected)));
}

#[test]
fn duplex_false_is_one_way() {
    let (r, w) = Pipe(false).unwrap();
    assert!(r.readable() && !r.writable());
    assert!(!w.readable() && w.writable());
    assert!(matches!(r.send_bytes(b"x"), Err(SendError::NotWritable)));
    assert!(matches!(w.recv_bytes(), Err(RecvError::NotReadable)));
    w.send(&String::from("one way")).unwrap();
    assert_eq!(r.recv::<String>().unwrap(), "one way");
}

#[test]
fn recv_bytes_into_keeps_a_message_too_long_for_the_buffer() {
    let (a, b) = Pipe(true).unwrap();
    a.send_bytes(b"0123456789").unwrap();
    let mut small = [0u8; 4];
    assert!(matches!(
        b.recv_bytes_into(&mut small),
        Err(RecvError::BufferTooSmall { needed: 10 })
    ));
    assert!(b.poll(Duration::ZERO).unwrap());
    let mut buf = [0u8; 32];
    assert_eq!(b.recv_bytes_into(&mut buf).unwrap(), 10);
    assert_eq!(&buf[..10], b"0123456789");
}

#[test]
fn max_message_size_is_enforced_both_ways() {
    let (a, b) = Pipe(true).unwrap();
    let a = a.with_max_message_size(100);
    assert!(matches!(
        a.send_bytes(&[0u8; 101]),
        Err(SendError::TooLarge { len: 101, max: 100 })
    ));
    a.send_bytes(&[1u8; 100]).unwrap(); // still usable
    assert_eq!(b.recv_bytes().unwrap().len(), 100);
    b.send_bytes(&[2u8; 500]).unwrap();
    assert!(matches!(
        a.recv_bytes(),
        Err(RecvError::Corrupt(FrameError::TooLarge {
            len: 500,
            max: 100
        }))
    ));
    assert!(matches!(a.recv_bytes(), Err(RecvError::Broken)));
    assert_eq!(a.max_message_size(), 100);
}

#[test]
fn corrupt_bytes_are_a_typed_error_not_a_crash() {
    let (c, raw) = raw_pair();
    write_raw(&raw, b"this is not a frame header at all");
    assert!(matches!(
        c.recv_bytes(),
        Err(RecvError::Corrupt(FrameError::BadMagic))
    ));
    assert!(matches!(c.recv::<u32>(), Err(RecvError::Broken)));
    assert!(matches!(c.poll(Duration::ZERO), Err(RecvError::Broken)));
}

#[test]
fn huge_announced_length_neither_allocates_nor_hangs() {
    let (c, raw) = raw_pair();
    let c = c.with_max_message_size(usize::MAX);
    write_raw(
        &raw,
        &FrameHeader {
            nfds: 0,
            len: u64::MAX / 2,
        }
        .to_bytes(),
    );
    write_raw(&raw, &[7u8; 1000]);
    drop(raw);
    assert!(matches!(c.recv_bytes(), Err(RecvError::Truncated)));
    assert!(matches!(c.recv_bytes(), Err(RecvError::Disconnected)));
}

#[test]
fn peer_gone_mid_frame_is_truncated() {
    let (c, raw) = raw_pair();
    write_raw(&raw, &FrameHeader { nfds: 0, len: 100 }.to_bytes());
    write_raw(&raw, &[1u8; 40]);
    drop(raw);
    assert!(matches!(c.recv::<Vec<u8>>(), Err(RecvError::Truncated)));
    let (c, raw) = raw_pair();
    write_raw(&raw, &FrameHeader { nfds: 0, len: 100 }.to_bytes()[..7]);
    drop(raw);
    assert!(matches!(c.recv_bytes(), Err(RecvError::Truncated)));
}

#[test]
fn announced_fds_that_never_came_are_reported_and_stream_stays_in_step() {
    let (c, raw) = raw_pair();
    write_raw(&raw, &FrameHeader { nfds: 2, len: 3 }.to_bytes());
    write_raw(&raw, b"abc\0\0\0\0\0\0\0\0\0\0\0\0\0");
    write_raw(&raw, &FrameHeader { nfds: 0, len: 2 }.to_bytes());
    write_raw(&raw, b"ok\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    assert!(matches!(
        c.recv_bytes(),
        Err(RecvError::FdMismatch {
            announced: 2,
            received: 0
        })
    ));
    assert_eq!(c.recv_bytes().unwrap(), b"ok");
}

#[test]
fn handles_travel_inside_messages() {
    let (a, b) = Pipe(true).unwrap();
    let region = Region::new(4096).unwrap();
    region.atomic_u32(0).unwrap().store(11, Ordering::SeqCst);
    let (x, y) = Pipe(true).unwrap();
    a.send(&(String::from("handles"), region.try_clone().unwrap(), x))
        .unwrap();
    let (s, r2, x2): (String, Region, Connection) = b.recv().unwrap();
    assert_eq!(s, "handles");
    r2.atomic_u32(0).unwrap().store(12, Ordering::SeqCst);
    assert_eq!(region.atomic_u32(0).unwrap().load(Ordering::SeqCst), 12);
    x2.send(&99u64).unwrap();
    assert_eq!(y.recv::<u64>().unwrap(), 99);
}

#[test]
fn handles_are_refused_over_a_connection_closed_here() {
    let (a, _b) = Pipe(true).unwrap();
    let (mut x, _y) = Pipe(true).unwrap();
    x.close();
    assert!(matches!(a.send(&x), Err(SendError::Encode(_))));
}

#[test]
fn send_from_one_thread_receive_in_another() {
    let (a, b) = Pipe(true).unwrap();
    // One end shared by a sending thread and a receiving thread; the other end echoes.
    let a = std::sync::Arc::new(a);
    let a2 = a.clone();
    let sender = thread::spawn(move || {
        for i in 0..1000u32 {
            a2.send(&i).unwrap();
        }
    });
    let receiver = thread::spawn(move || {
        for i in 0..1000u32 {
            assert_eq!(a.recv::<u32>().unwrap(), i);
        }
    });
    for i in 0..1000u32 {
        assert_eq!(b.recv::<u32>().unwrap(), i);
        b.send(&i).unwrap();
    }
    sender.join().unwrap();
    receiver.join().unwrap();
}

#[test]
fn wait_over_connections_and_a_process_sentinel() {
    let (a, b) = Pipe(true).unwrap();
    let (c, d) = Pipe(true).unwrap();
    let t0 = Instant::now();
    assert!(
        wait(&[&a as &dyn Waitable, &c], Duration::from_millis(50))
            .unwrap()
            .is_empty()
    );
    assert!(t0.elapsed() >= Duration::from_millis(50));
    d.send_bytes(b"1").unwrap();
    assert_eq!(wait(&[&a as &dyn Waitable, &c], None).unwrap(), vec![1]);
    b.send_bytes(b"2").unwrap();
    assert_eq!(
        wait(&[&a as &dyn Waitable, &c], Duration::ZERO).unwrap(),
        vec![0, 1]
    );
    // wait never consumes.
    assert_eq!(c.recv_bytes().unwrap(), b"1");
    assert_eq!(a.recv_bytes().unwrap(), b"2");

    // A process sentinel: a pidfd becomes readable when the process exits.
    let mut child = std::process::Command::new("sleep")
        .arg("0.2")
        .spawn()
        .unwrap();
    let pidfd = mproc_core::Pidfd::open(child.id() as i32).unwrap();
    let ready = wait(&[&a as &dyn Waitable, &pidfd], Duration::from_secs(30)).unwrap();
    child.wait().unwrap();
    assert_eq!(ready, vec![1]);

    let (mut e, _f) = Pipe(true).unwrap();
    e.close();
    assert!(wait(&[&e as &dyn Waitable], Duration::ZERO).is_err());
}

#[test]
fn pipes_close_on_exec() {
    let (a, _b) = Pipe(true).unwrap();
    let fd = a.fileno().unwrap();
    let flags = rustix::io::fcntl_getfd(fd).unwrap();
    assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
}

#[test]
fn a_connection_with_read_ahead_bytes_is_not_sent_away() {
    let (a, b) = Pipe(true).unwrap();
    let (carrier, dest) = Pipe(true).unwrap();
    a.send(&1u32).unwrap();
    a.send(&2u32).unwrap();
    assert!(b.poll(Duration::from_secs(5)).unwrap());
    // Give both frames time to land so the first receive reads the second one ahead.
    thread::sleep(Duration::from_millis(20));
    assert_eq!(b.recv::<u32>().unwrap(), 1);
    assert!(
        b.poll(Duration::ZERO).unwrap(),
        "the read-ahead frame is ready"
    );
    assert!(
        wait(&[&b as &dyn Waitable], Duration::ZERO).unwrap() == vec![0],
        "wait sees read-ahead frames"
    );
    assert!(matches!(carrier.send(&b), Err(SendError::Encode(_))));
    assert_eq!(b.recv::<u32>().unwrap(), 2);
    carrier.send(&b).unwrap();
    let b2: Connection = dest.recv().unwrap();
    a.send(&3u32).unwrap();
    assert_eq!(b2.recv::<u32>().unwrap(), 3);
}

#[test]
fn many_small_frames_with_fds_interleaved() {
    let (a, b) = Pipe(true).unwrap();
    let t = thread::spawn(move || {
        for i in 0..300u32 {
            if i % 3 == 0 {
                let r = Region::new(4096).unwrap();
                r.atomic_u32(0).unwrap().store(i, Ordering::SeqCst);
                a.send(&(i, Some(r))).unwrap();
            } else {
                a.send(&(i, Option::<Region>::None)).unwrap();
            }
        }
        a
    });
    for i in 0..300u32 {
        let (j, r): (u32, Option<Region>) = b.recv().unwrap();
        assert_eq!(j, i);
        assert_eq!(r.is_some(), i % 3 == 0);
        if let Some(r) = r {
            assert_eq!(r.atomic_u32(0).unwrap().load(Ordering::SeqCst), i);
        }
    }
    drop(t.join().unwrap());
}

fn pattern(n: usize, salt: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 4096 + salt) as u8).collect()
}

#[test]
fn large_bytes_messages_are_handed_over_whole_and_the_end_goes_on() {
    let (a, b) = Pipe(true).unwrap();
    let big = pattern(16 << 20, 1);
    let expect = big.clone();
    let t = thread::spawn(move || {
        a.send_bytes(&big).unwrap();
        a.send_bytes(b"small").unwrap();
        a.send_bytes(&big[..(5 << 20) + 3]).unwrap();
        a.send(&42u64).unwrap();
        a
    });
    assert!(
        b.recv_bytes().unwrap() == expect,
        "16 MiB bytes message differs"
    );
    assert_eq!(b.recv_bytes().unwrap(), b"small");
    let odd = b.recv_bytes().unwrap();
    assert!(
        odd[..] == expect[..(5 << 20) + 3],
        "5 MiB + 3 message differs"
    );
    assert_eq!(b.recv::<u64>().unwrap(), 42);
    drop(t.join().unwrap());
}

#[test]
fn a_large_frame_recv_bytes_left_half_read_is_finished_by_any_receive() {
    let (c, raw) = raw_pair();
    let n = 6 << 20;
    let body = pattern(n, 3);
    let frame = |body: &[u8]| {
        let h = FrameHeader {
            nfds: 0,
            len: body.len() as u64,
        };
        let mut f = h.to_bytes().to_vec();
        f.extend_from_slice(body);
        f.resize(16 + h.padded_len() as usize, 0);
        f
    };
    let f = frame(&body);
    // recv_bytes starts the frame (into its own Vec), times out, recv_bytes_into ends it.
    // Less than a socket holds, so this thread can write it before anyone reads.
    write_raw(&raw, &f[..100_000]);
    assert!(matches!(
        c.recv_bytes_timeout(Duration::from_millis(20)),
        Err(RecvError::Timeout)
    ));
    let rest = f[100_000..].to_vec();
    let w = thread::spawn(move || {
        write_raw(&raw, &rest);
        raw
    });
    let mut buf = vec![0u8; n];
    assert_eq!(c.recv_bytes_into(&mut buf).unwrap(), n);
    assert!(buf == body, "finished by recv_bytes_into: differs");
    let raw = w.join().unwrap();
    // recv_bytes starts it, times out, and resumes it.
    write_raw(&raw, &f[..150_005]);
    assert!(matches!(
        c.recv_bytes_timeout(Duration::from_millis(20)),
        Err(RecvError::Timeout)
    ));
    let rest = f[150_005..].to_vec();
    let w = thread::spawn(move || {
        write_raw(&raw, &rest);
        raw
    });
    assert!(
        c.recv_bytes().unwrap() == body,
        "resumed by recv_bytes: differs"
    );
    drop(w.join().unwrap());
}

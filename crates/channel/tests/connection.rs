//! Connections across processes, under the default start method (`cargo xtask test-all`
//! runs this under fork, spawn and forkserver). Ported in part from CPython's
//! `_TestConnection` (`Lib/test/_test_multiprocessing.py`): a child talks over a pipe
//! end passed in its arguments; plus mproc's own checks (a 16 MiB message, corrupt
//! bytes, a peer killed mid-send, handles sent to a running child).
use mproc_channel::{Connection, Pipe, RecvError};
use mproc_core::{Handle, Region};
use mproc_spawn::Process;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

fn checksum(b: &[u8]) -> u64 {
    b.iter().enumerate().fold(0u64, |h, (i, &x)| {
        h.wrapping_mul(31).wrapping_add(x as u64 ^ i as u64)
    })
}

fn big_message() -> Vec<u8> {
    (0..16usize << 20)
        .map(|i| (i * 13 + i / 999) as u8)
        .collect()
}

fn send_hello(c: Connection) {
    c.send(&String::from("hello")).unwrap();
}

#[test]
fn child_sends_hello() {
    let (parent, child) = Pipe(true).unwrap();
    let mut p = Process::new(send_hello, child);
    p.start().unwrap();
    assert_eq!(parent.recv_timeout::<String>(LONG).unwrap(), "hello");
    p.join().unwrap();
    // Every copy of the child's end is gone: end of stream.
    assert!(matches!(
        parent.recv_timeout::<String>(LONG),
        Err(RecvError::Disconnected)
    ));
}

fn echo_big(c: Connection) -> u64 {
    let got: Vec<u8> = c.recv().unwrap();
    let sum = checksum(&got);
    c.send(&got).unwrap();
    sum
}

#[test]
fn sixteen_mib_message_both_ways_intact() {
    let (parent, child) = Pipe(true).unwrap();
    let mut p = Process::new(echo_big, child);
    p.start().unwrap();
    let msg = big_message();
    parent.send(&msg).unwrap();
    let back = parent.recv_timeout::<Vec<u8>>(LONG).unwrap();
    assert_eq!(p.join().unwrap(), checksum(&msg));
    assert!(back == msg, "16 MiB message came back altered");
}

fn write_garbage(Handle(fd): Handle<OwnedFd>) {
    let junk = b"GARBAGE! this is not an mproc frame header \xff\xfe";
    rustix::io::write(&fd, junk).unwrap();
}

#[test]
fn corrupt_bytes_from_a_child_are_an_error_not_a_crash() {
    let (mine, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let conn = Connection::from_fd(mine).unwrap();
    let mut p = Process::new(write_garbage, Handle(theirs));
    p.start().unwrap();
    p.join().unwrap();
    assert!(matches!(
        conn.recv_timeout::<String>(LONG),
        Err(RecvError::Corrupt(_))
    ));
    assert!(matches!(conn.recv_bytes(), Err(RecvError::Broken)));
}

fn send_forever(c: Connection) {
    // Far more than a socket buffer: blocks until the parent reads or kills us.
    let huge = vec![1u8; 100 << 20];
    let _ = c.send_bytes(&huge);
}

#[test]
fn peer_killed_mid_send_is_truncated() {
    let (parent, child) = Pipe(true).unwrap();
    let mut p = Process::new(send_forever, child);
    p.start().unwrap();
    assert!(parent.poll(LONG).unwrap(), "the child started sending");
    // Let the child fill the socket buffer, then kill it mid-frame.
    std::thread::sleep(Duration::from_millis(100));
    p.kill().unwrap();
    let _ = p.join();
    let r = parent.recv_bytes_timeout(LONG);
    assert!(matches!(r, Err(RecvError::Truncated)), "{r:?}");
}

fn send_later(c: Connection) {
    std::thread::sleep(Duration::from_millis(300));
    c.send(&5u32).unwrap();
}

#[test]
fn poll_and_timeouts_across_processes() {
    let (parent, child) = Pipe(true).unwrap();
    let mut p = Process::new(send_later, child);
    p.start().unwrap();
    assert!(!parent.poll(Duration::ZERO).unwrap());
    let t0 = Instant::now();
    assert!(matches!(
        parent.recv_timeout::<u32>(Duration::from_millis(50)),
        Err(RecvError::Timeout)
    ));
    assert!(t0.elapsed() >= Duration::from_millis(50));
    assert!(parent.poll(LONG).unwrap());
    assert!(parent.poll(Duration::ZERO).unwrap(), "poll did not consume");
    assert_eq!(parent.recv::<u32>().unwrap(), 5);
    p.join().unwrap();
}

fn use_received_handles(c: Connection) -> u32 {
    let (region, back): (Region, Connection) = c.recv().unwrap();
    region
        .atomic_u32(0)
        .unwrap()
        .store(0xfeed, Ordering::SeqCst);
    back.send(&String::from("through the sent connection"))
        .unwrap();
    region.atomic_u32(0).unwrap().load(Ordering::SeqCst)
}

#[test]
fn handles_sent_to_a_running_child() {
    let (parent, child) = Pipe(true).unwrap();
    let mut p = Process::new(use_received_handles, child);
    p.start().unwrap();
    // The child is already running; now give it a region and a new connection.
    let region = Region::new(4096).unwrap();
    let (x, y) = Pipe(true).unwrap();
    parent.send(&(region.try_clone().unwrap(), y)).unwrap();
    assert_eq!(
        x.recv_timeout::<String>(LONG).unwrap(),
        "through the sent connection"
    );
    assert_eq!(p.join().unwrap(), 0xfeed);
    assert_eq!(region.atomic_u32(0).unwrap().load(Ordering::SeqCst), 0xfeed);
}

fn wait_then_exit(_: ()) {
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn wait_sees_a_process_sentinel() {
    let (a, _b) = Pipe(true).unwrap();
    let mut p = Process::new(wait_then_exit, ());
    p.start().unwrap();
    let ready = {
        let sentinel = p.sentinel().unwrap();
        mproc_channel::wait(&[&a as &dyn mproc_channel::Waitable, &sentinel], LONG).unwrap()
    };
    assert_eq!(ready, vec![1]);
    p.join().unwrap();
}

fn send_my_pid(c: Connection) {
    c.send(&std::process::id()).unwrap();
    // Wait for the parent's word, then leave (closing this copy).
    let _: u8 = c.recv().unwrap();
}

/// Python hands one connection end to several children: `try_clone` gives each its own
/// copy; the peer sees end of stream only when every copy is gone.
#[test]
fn one_end_cloned_into_two_children() {
    let (ours, theirs) = Pipe(true).unwrap();
    let t2 = theirs.try_clone().unwrap();
    let mut p1 = Process::new(send_my_pid, theirs);
    let mut p2 = Process::new(send_my_pid, t2);
    p1.start().unwrap();
    p2.start().unwrap();
    let mut pids = vec![
        ours.recv_timeout::<u32>(LONG).unwrap(),
        ours.recv_timeout::<u32>(LONG).unwrap(),
    ];
    pids.sort();
    let mut want = vec![p1.pid().unwrap() as u32, p2.pid().unwrap() as u32];
    want.sort();
    assert_eq!(pids, want);
    // One child leaves: the stream is still open through the other's copy.
    ours.send(&0u8).unwrap();
    let t = Instant::now();
    while p1.is_alive() && p2.is_alive() {
        assert!(t.elapsed() < LONG, "no child left");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!ours.poll(Duration::from_millis(50)).unwrap());
    ours.send(&0u8).unwrap();
    p1.join().unwrap();
    p2.join().unwrap();
    drop((p1, p2));
    assert!(matches!(
        ours.recv_timeout::<u32>(LONG),
        Err(RecvError::Disconnected)
    ));
}

#[test]
fn clones_share_read_ahead_and_close_apart() {
    let (a, b) = Pipe(true).unwrap();
    // Several messages arrive in one read: whichever clone receives gets them in order.
    for i in 0..5u32 {
        a.send(&i).unwrap();
    }
    let b2 = b.try_clone().unwrap();
    assert_eq!(b.recv::<u32>().unwrap(), 0);
    assert_eq!(b2.recv::<u32>().unwrap(), 1);
    assert_eq!(b.recv::<u32>().unwrap(), 2);
    assert_eq!(b2.recv::<u32>().unwrap(), 3);
    assert_eq!(b2.recv::<u32>().unwrap(), 4);
    let mut b = b;
    b.close();
    assert_eq!(
        b.try_clone().unwrap_err().kind(),
        std::io::ErrorKind::NotConnected
    );
    assert!(b2.poll(Duration::ZERO).is_ok());
    b2.send(&9u32).unwrap();
    assert_eq!(a.recv::<u32>().unwrap(), 9);
    drop(b2);
    assert!(matches!(a.recv::<u32>(), Err(RecvError::Disconnected)));
}

/// Echoes `u64`s; every tenth reply comes late (a slow peer), so the receiver's spin
/// fails some of the time and is switched off and on again. The zero ends the child.
fn echo_sometimes_late(c: Connection) -> u64 {
    let mut n = 0;
    while let Ok(v) = c.recv::<u64>() {
        if v == 0 {
            break;
        }
        if v % 10 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        c.send(&v).unwrap();
        n += 1;
    }
    n
}

#[test]
fn a_waiting_receive_meets_fast_and_late_replies_and_the_end_of_stream() {
    let (parent, child) = Pipe(true).unwrap();
    let mut p = Process::new(echo_sometimes_late, child);
    p.start().unwrap();
    // Fast replies (met while spinning) and late ones (met after the spin gave up and
    // slept), in order, none lost or duplicated.
    for i in 1..=300u64 {
        parent.send(&i).unwrap();
        assert_eq!(parent.recv_timeout::<u64>(LONG).unwrap(), i);
    }
    // A timed receive that nothing answers still times out after its timeout, spin or
    // not, and an immediate one does not wait.
    let t0 = Instant::now();
    assert!(matches!(
        parent.recv_timeout::<u64>(Duration::from_millis(30)),
        Err(RecvError::Timeout)
    ));
    assert!(t0.elapsed() >= Duration::from_millis(30));
    assert!(matches!(
        parent.recv_timeout::<u64>(Duration::ZERO),
        Err(RecvError::Timeout)
    ));
    parent.send(&0u64).unwrap();
    assert_eq!(p.join().unwrap(), 300);
    // The child's end is gone: a receive that waits sees the end of the stream.
    assert!(matches!(parent.recv::<u64>(), Err(RecvError::Disconnected)));
}

//! Messages received as the wrong type (issue 11, item 9): every typed frame and every
//! transferred queue carries its type's fingerprint, and a mismatch is a typed error
//! naming both types, across processes under every start method.
use mproc_channel::{Connection, Pipe, Queue, RecvError};
use mproc_core::codec::{self, TypeTag};
use mproc_spawn::Process;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct Named {
    name: String,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct Point {
    x: f64,
    y: f64,
}

fn send_string_then_number(c: Connection) {
    c.send(&String::from("hello")).unwrap();
    c.send(&7u64).unwrap();
}

#[test]
fn a_string_received_as_u64_is_a_type_mismatch() {
    let (ours, theirs) = Pipe(true).unwrap();
    let mut p = Process::new(send_string_then_number, theirs);
    p.start().unwrap();
    match ours.recv_timeout::<u64>(LONG) {
        Err(RecvError::TypeMismatch(e)) => {
            assert_eq!(e.expected, "u64");
            assert_eq!(e.found, "alloc::string::String");
            assert_eq!(
                RecvError::TypeMismatch(e).to_string(),
                "message type mismatch: expected `u64`, found `alloc::string::String`"
            );
        }
        other => panic!("{other:?}"),
    }
    // The frame was consumed: the stream is still in step.
    assert_eq!(ours.recv_timeout::<u64>(LONG).unwrap(), 7);
    p.join().unwrap();
}

fn fingerprints(_: ()) -> (u64, u64, u64, u64) {
    (
        TypeTag::of::<Named>().hash(),
        TypeTag::of::<(u32, String)>().hash(),
        TypeTag::of::<Vec<Point>>().hash(),
        <Queue<Named> as mproc_core::Transfer>::type_tag().hash(),
    )
}

/// Parent and child (fork, spawn, forkserver) compute the same fingerprints.
#[test]
fn fingerprints_agree_between_parent_and_child() {
    let mut p = Process::new(fingerprints, ());
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), fingerprints(()));
    let (a, b, c, d) = fingerprints(());
    let all = [a, b, c, d, TypeTag::of::<Point>().hash()];
    for (i, x) in all.iter().enumerate() {
        for y in &all[i + 1..] {
            assert_ne!(x, y);
        }
    }
}

/// The fingerprint is a pure function of the type's name and archived layout: the same
/// in every build of the same code (pinned here for a few std types, so a change of the
/// hash, which would break two builds talking over a Listener, fails this test).
#[test]
fn fingerprints_are_stable_across_builds() {
    assert_eq!(TypeTag::of::<u64>().name(), "u64");
    assert_eq!(TypeTag::of::<u64>().hash(), U64_TAG);
    assert_eq!(TypeTag::of::<String>().hash(), STRING_TAG);
    assert_eq!(TypeTag::of::<Vec<u8>>().hash(), VEC_U8_TAG);
}

const U64_TAG: u64 = 15404890746762491692;
const STRING_TAG: u64 = 5730738588603123926;
const VEC_U8_TAG: u64 = 13707009868754224456;

fn recv_point_queue(c: Connection) -> String {
    match c.recv::<Queue<Point>>() {
        Ok(_) => "accepted".into(),
        Err(e) => e.to_string(),
    }
}

/// A `Queue<Named>` sent to a child that expects a `Queue<Point>`.
#[test]
fn a_queue_received_as_another_type_is_refused() {
    let (ours, theirs) = Pipe(true).unwrap();
    let mut p = Process::new(recv_point_queue, theirs);
    p.start().unwrap();
    let q: Queue<Named> = Queue::new().unwrap();
    ours.send(&q).unwrap();
    let text = p.join().unwrap();
    assert!(text.contains("mismatch"), "{text}");
    assert!(text.contains("Queue<types::Named>"), "{text}");
    assert!(text.contains("Queue<types::Point>"), "{text}");
}

/// Below the frames, the handle's own fingerprint refuses the same thing (a message
/// decoded without the frame check, as a queue travels inside a process's arguments).
#[test]
fn a_queue_handle_decoded_as_another_type_is_refused() {
    let q: Queue<Named> = Queue::new().unwrap();
    let enc = codec::encode(&(1u8, q.clone())).unwrap();
    let e = codec::decode::<(u8, Queue<Point>)>(&enc.bytes, enc.fds).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("Queue<types::Named>"), "{text}");
    assert!(text.contains("Queue<types::Point>"), "{text}");
    // The right type still works, and the queue is the same queue.
    let enc = codec::encode(&q).unwrap();
    let q2: Queue<Named> = codec::decode(&enc.bytes, enc.fds).unwrap();
    q2.put(Named { name: "n".into() }).unwrap();
    assert_eq!(q.get_timeout(LONG).unwrap().name, "n");
}

/// A typed message can still be read as raw bytes: its archive, without the type block.
#[test]
fn typed_messages_read_as_bytes_are_their_archive() {
    let (a, b) = Pipe(true).unwrap();
    a.send(&Point { x: 1.5, y: -2.0 }).unwrap();
    let bytes = b.recv_bytes().unwrap();
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&bytes);
    let p: Point = codec::decode(&aligned, vec![]).unwrap();
    assert_eq!(p, Point { x: 1.5, y: -2.0 });
    // Into a buffer, and too small a buffer leaves the message queued.
    a.send(&Named {
        name: "x".repeat(100),
    })
    .unwrap();
    let mut small = [0u8; 8];
    let needed = match b.recv_bytes_into(&mut small) {
        Err(RecvError::BufferTooSmall { needed }) => needed,
        other => panic!("{other:?}"),
    };
    let mut big = vec![0u8; needed];
    assert_eq!(b.recv_bytes_into(&mut big).unwrap(), needed);
    // A message in place, and a view of the wrong type.
    a.send(&Named { name: "v".into() }).unwrap();
    assert!(matches!(
        b.recv_view::<Point>(),
        Err(RecvError::TypeMismatch(_))
    ));
    a.send(&Named { name: "v".into() }).unwrap();
    assert_eq!(b.recv_view::<Named>().unwrap().name.as_str(), "v");
}

fn client_sends(name: String) {
    let addr = mproc_channel::Address::abstract_name(name);
    let c = mproc_channel::Client(&addr, Some(b"types-key")).unwrap();
    c.send(&Named {
        name: "from a client".into(),
    })
    .unwrap();
    c.send(&Point { x: 3.0, y: 4.0 }).unwrap();
    // Wait for the server's word before leaving.
    let _: u8 = c.recv().unwrap();
}

/// Over a Listener (a process that was not started with the connection, as another
/// build of the same code would be): the fingerprints agree, and a mismatch is named.
#[test]
fn fingerprints_over_a_listener() {
    let name = format!("mproc-test-types-{}", std::process::id());
    let l = mproc_channel::Listener::bind(
        mproc_channel::Address::abstract_name(name.clone()),
        Some(b"types-key"),
    )
    .unwrap();
    let mut p = Process::new(client_sends, name);
    p.start().unwrap();
    let c = l.accept().unwrap();
    assert_eq!(
        c.recv_timeout::<Named>(LONG).unwrap(),
        Named {
            name: "from a client".into()
        }
    );
    match c.recv_timeout::<Named>(LONG) {
        Err(RecvError::TypeMismatch(e)) => {
            assert_eq!(e.expected, "types::Named");
            assert_eq!(e.found, "types::Point");
        }
        other => panic!("{other:?}"),
    }
    c.send(&0u8).unwrap();
    p.join().unwrap();
}

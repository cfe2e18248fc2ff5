//! Feeds arbitrary bytes through a Connection's receive path (frame header parsing,
//! body reading, fd-count checks, rkyv validation and decoding) and through the codec
//! directly. Any panic, hang or crash is a bug: bad input must be a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mproc_channel::{Connection, RecvError};
use mproc_core::codec::{self, TypeTag};
use rkyv::util::AlignedVec;
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
use std::time::Duration;

/// Types whose decoders the fuzzer exercises (strings, vectors, options, handles).
type Msg = (u32, Option<String>, Vec<u64>);

/// A typed frame of `Msg` around `archive`, as `send::<Msg>` writes one, so that the
/// archive's validation is reached without guessing the type's fingerprint.
fn typed_frame(archive: &[u8]) -> Vec<u8> {
    TypeTag::of::<Msg>().typed_frame(archive, 0)
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(32 << 10)];
    receive_all(data);
    // The input as the archive of a well-typed frame: rkyv validation and decoding.
    receive_all(&typed_frame(data));
    // The codec on its own, from an aligned copy.
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(data);
    let _ = codec::decode::<Msg>(&aligned, Vec::new());
    let _ = codec::access::<Msg>(&aligned);
});

/// Writes `data` into a socket and receives from it until the stream ends or breaks.
fn receive_all(data: &[u8]) {
    // The whole input fits in the socket buffer, so writing it and then reading never
    // blocks; the peer is closed so a short frame ends in EOF, not a wait.
    let (a, b) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let mut off = 0;
    while off < data.len() {
        match rustix::io::write(&b, &data[off..]) {
            Ok(n) => off += n,
            Err(_) => break,
        }
    }
    drop(b);
    let conn = Connection::from_fd(a)
        .unwrap()
        .with_max_message_size(1 << 20);
    // Alternate between the receive paths until the stream ends or breaks.
    for i in 0.. {
        let r = match i % 5 {
            0 => conn.recv::<Msg>().map(drop),
            1 => conn.recv_view::<Msg>().map(drop),
            2 => conn.recv_bytes().map(drop),
            3 => conn.recv::<mproc_core::Region>().map(drop),
            _ => conn.recv_timeout::<String>(Duration::from_millis(50)).map(drop),
        };
        match r {
            Ok(())
            | Err(RecvError::Decode(_))
            | Err(RecvError::TypeMismatch(_))
            | Err(RecvError::FdMismatch { .. }) => {}
            Err(_) => break,
        }
    }
}

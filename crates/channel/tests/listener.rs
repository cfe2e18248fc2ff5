//! Listener / Client: Unix paths, abstract names and TCP on loopback, with the HMAC
//! challenge in both directions. Ported from CPython's `_TestListenerClient` and
//! `_TestAuthentication` (`Lib/test/_test_multiprocessing.py`).
use mproc_channel::{Address, Client, ConnectError, Listener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "mproc-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn round_trip(address: Address, key: Option<&'static [u8]>) {
    let l = Listener::bind(address, key).unwrap();
    let addr = l.address().clone();
    let t = thread::spawn(move || {
        let c = Client(&addr, key).unwrap();
        c.send(&String::from("ping")).unwrap();
        assert_eq!(c.recv::<u64>().unwrap(), 7);
    });
    let conn = l.accept().unwrap();
    assert_eq!(conn.recv::<String>().unwrap(), "ping");
    conn.send(&7u64).unwrap();
    t.join().unwrap();
}

#[test]
fn unix_path_with_key() {
    let path = std::env::temp_dir().join(unique("sock"));
    round_trip(Address::unix(&path), Some(b"key"));
    assert!(!path.exists(), "the listener removes its socket file");
}

#[test]
fn abstract_name_with_key() {
    round_trip(Address::abstract_name(unique("abs")), Some(b"abstract key"));
}

#[test]
fn tcp_loopback_with_and_without_key() {
    round_trip(
        Address::tcp("127.0.0.1:0".parse().unwrap()),
        Some(b"tcp key"),
    );
    round_trip(Address::tcp("127.0.0.1:0".parse().unwrap()), None);
}

#[test]
fn handles_can_cross_a_unix_listener_connection_but_not_tcp() {
    let l = Listener::bind(Address::abstract_name(unique("fd")), None).unwrap();
    let addr = l.address().clone();
    let t = thread::spawn(move || Client(&addr, None).unwrap());
    let server = l.accept().unwrap();
    let client = t.join().unwrap();
    let region = mproc_core::Region::new(4096).unwrap();
    client.send(&region).unwrap();
    let _r: mproc_core::Region = server.recv().unwrap();

    let l = Listener::bind(Address::tcp("127.0.0.1:0".parse().unwrap()), None).unwrap();
    let addr = l.address().clone();
    let t = thread::spawn(move || Client(&addr, None).unwrap());
    let _server = l.accept().unwrap();
    let client = t.join().unwrap();
    assert!(matches!(
        client.send(&region),
        Err(mproc_channel::SendError::FdsNotSupported)
    ));
}

#[test]
fn wrong_key_is_refused_on_both_sides_before_any_message() {
    for address in [
        Address::abstract_name(unique("wrong")),
        Address::tcp("127.0.0.1:0".parse().unwrap()),
    ] {
        let l = Listener::bind(address, Some(b"right")).unwrap();
        let addr = l.address().clone();
        let t = thread::spawn(move || Client(&addr, Some(b"wrong")));
        let server = l.accept();
        assert!(
            matches!(server, Err(ConnectError::Authentication(_))),
            "listener: {server:?}"
        );
        let client = t.join().unwrap();
        assert!(
            matches!(client, Err(ConnectError::Authentication(_))),
            "client: {client:?}"
        );
        // The listener survives a failed client and accepts the next one.
        let addr = l.address().clone();
        let t = thread::spawn(move || {
            let c = Client(&addr, Some(b"right")).unwrap();
            c.send(&1u8).unwrap();
        });
        assert_eq!(l.accept().unwrap().recv::<u8>().unwrap(), 1);
        t.join().unwrap();
    }
}

#[test]
fn client_without_key_is_refused_by_a_listener_with_one() {
    let l = Listener::bind(Address::abstract_name(unique("nokey")), Some(b"k")).unwrap();
    let addr = l.address().clone();
    let t = thread::spawn(move || {
        // A client that skips the handshake and sends a message straight away.
        let c = Client(&addr, None).unwrap();
        let _ = c.send(&String::from("let me in"));
        c
    });
    assert!(l.accept().is_err());
    drop(t.join().unwrap());
}

/// CPython 3.12's handshake, run by the local python3 over its own Connection framing
/// (3.11's Connection frames bytes the same way; only its default digest differs).
const PY_HANDSHAKE: &str = r#"
import hmac, os, sys
from multiprocessing.connection import Client
C, W, F = b'#CHALLENGE#', b'#WELCOME#', b'#FAILURE#'
def deliver(c, key):
    m = b'{sha256}' + os.urandom(40)
    c.send_bytes(C + m)
    r = c.recv_bytes(256)
    assert r.startswith(b'{sha256}')
    ok = hmac.compare_digest(hmac.new(key, m, 'sha256').digest(), r[8:])
    c.send_bytes(W if ok else F)
    if not ok: raise SystemExit('bad digest')
def answer(c, key):
    m = c.recv_bytes(256)
    assert m.startswith(C)
    m = m[len(C):]
    c.send_bytes(b'{sha256}' + hmac.new(key, m, 'sha256').digest())
    if c.recv_bytes(256) != W: raise SystemExit('rejected')
c = Client(sys.argv[1], family='AF_UNIX', authkey=None)
key = sys.argv[2].encode()
answer(c, key); deliver(c, key)
print('authenticated')
"#;

#[test]
fn python_312_style_client_authenticates() {
    let Ok(out) = std::process::Command::new("python3").arg("-V").output() else {
        eprintln!("python3 not found: interop test not run");
        return;
    };
    assert!(out.status.success());
    let path = std::env::temp_dir().join(unique("py"));
    let l = Listener::bind(Address::unix(&path), Some(b"pykey")).unwrap();
    let good = std::process::Command::new("python3")
        .args(["-c", PY_HANDSHAKE, path.to_str().unwrap(), "pykey"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    l.accept().unwrap();
    let o = good.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "authenticated");

    let bad = std::process::Command::new("python3")
        .args(["-c", PY_HANDSHAKE, path.to_str().unwrap(), "nope"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(matches!(l.accept(), Err(ConnectError::Authentication(_))));
    let o = bad.wait_with_output().unwrap();
    assert!(!o.status.success());
}

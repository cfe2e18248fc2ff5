//! Issue #11, item 1: a Barrier's action (a function sent by offset) is callable only
//! in the process tree that sealed it. Sent between a parent and its own children it
//! works under every start method; sent by a foreign peer (another run of this very
//! program, connecting to a `Listener`) it is refused on receipt, never called.
use mproc::channel::{Address, Client, Listener, Pipe};
use mproc::spawn::Process;
use mproc::sync::Barrier;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};

const ROLE: &str = "MPROC_TEST_FOREIGN_PEER";
const KEY: &[u8] = b"barrier-action-peers";

static RAN: AtomicU32 = AtomicU32::new(0);

fn action() {
    RAN.fetch_add(1, Ordering::SeqCst);
}

/// Kills and reaps the foreign peer even if the test fails.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The foreign peer's side: a fresh run of this test binary (its own process tree, so
/// its own family secret), which connects and sends two barriers.
fn foreign_peer(addr: &str) {
    let conn = Client(&Address::abstract_name(addr.as_bytes()), Some(KEY)).unwrap();
    let with_action = Barrier::builder(1).action(action).build().unwrap();
    let without = Barrier::new(1).unwrap();
    conn.send(&with_action).unwrap();
    conn.send(&without).unwrap();
    // Wait for the other side to finish with them.
    let _: u8 = conn.recv().unwrap();
}

#[test]
fn barrier_action_from_a_foreign_peer_is_refused() {
    if let Ok(addr) = std::env::var(ROLE) {
        foreign_peer(&addr);
        std::process::exit(0);
    }
    let addr = format!("mproc-test-foreign-{}", std::process::id());
    let listener = Listener::bind(Address::abstract_name(addr.as_bytes()), Some(KEY)).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "barrier_action_from_a_foreign_peer_is_refused",
            "--exact",
            "--nocapture",
        ])
        .env(ROLE, &addr)
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let conn = listener.accept().unwrap();
    let err = conn.recv::<Barrier>().unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("not sealed by this process family"),
        "a foreign action must be refused as such: {text}"
    );
    assert!(!text.contains("0x"), "no address in the error: {text}");
    // The stream stays usable, and a barrier without an action is accepted.
    let plain: Barrier = conn.recv().unwrap();
    assert_eq!(plain.wait(), Ok(0));
    assert_eq!(RAN.load(Ordering::SeqCst), 0, "nothing foreign ran");
    conn.send(&1u8).unwrap();
    assert!(child.0.wait().unwrap().success());
}

fn child_sends_barrier(conn: mproc::channel::Connection) -> u32 {
    let b = Barrier::builder(1).action(action).build().unwrap();
    conn.send(&b).unwrap();
    // The parent's barrier arrived here too (see the test): run it once.
    let theirs: Barrier = conn.recv().unwrap();
    theirs.wait().unwrap();
    RAN.load(Ordering::SeqCst)
}

#[test]
fn barrier_action_travels_between_parent_and_own_children() {
    let (mine, theirs) = Pipe(true).unwrap();
    let mut p = Process::new(child_sends_barrier, theirs);
    p.start().unwrap();
    // From the child (a process of this tree, whatever the start method): accepted, and
    // its action runs here.
    let b: Barrier = mine.recv().unwrap();
    let before = RAN.load(Ordering::SeqCst);
    assert_eq!(b.wait(), Ok(0));
    assert_eq!(RAN.load(Ordering::SeqCst), before + 1);
    // To the child: accepted there, and the action runs in the child.
    mine.send(&Barrier::builder(1).action(action).build().unwrap())
        .unwrap();
    assert_eq!(p.join().unwrap(), 1);
}

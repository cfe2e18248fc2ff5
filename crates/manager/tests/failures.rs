//! Failure paths across processes: a wrong auth key, a server that dies or is shut down
//! (a typed error within a second, never a hang), a server that dies with its owner,
//! remote managers over TCP and servers run in this process.
use mproc_channel::{Address, ConnectError};
use mproc_manager::{Manager, ManagerError, QueueProxy};
use mproc_spawn::Process;
use std::time::{Duration, Instant};

fn start<A: mproc_core::Message + Send + 'static, R: mproc_core::Message + 'static>(
    f: fn(A) -> R,
    args: A,
) -> Process<R> {
    let mut p = Process::new(f, args);
    p.start().expect("start child");
    p
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    #[allow(unsafe_code)]
    let r = unsafe { libc::kill(pid, 0) };
    r == 0
}

fn wait_dead(pid: i32, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn a_wrong_authkey_is_refused() {
    let m = Manager::builder()
        .authkey(b"right key".to_vec())
        .start()
        .unwrap();
    match Manager::connect(m.address(), b"wrong key") {
        Err(ManagerError::Connect(ConnectError::Authentication(_))) => {}
        other => panic!("expected an authentication error, got {other:?}"),
    }
    // The server is unharmed.
    let again = Manager::connect(m.address(), b"right key").unwrap();
    let l = again.list::<u8>().unwrap();
    l.push(&1).unwrap();
    assert_eq!(l.len().unwrap(), 1);
}

fn kill_server(pid: i32) {
    // SAFETY: sending SIGKILL to a pid this test started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGKILL)
    };
}

#[test]
fn a_killed_server_is_a_typed_error_within_a_second() {
    let m = Manager::start().unwrap();
    let l = m.list::<u8>().unwrap();
    let q = m.queue::<u8>(0).unwrap();
    l.push(&1).unwrap();
    // A call blocked in the server when it dies.
    let blocked = std::thread::spawn(move || {
        let r = q.get();
        (r, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(100));
    let pid = m.pid().unwrap();
    kill_server(pid);
    let killed = Instant::now();
    let (r, at) = blocked.join().unwrap();
    assert!(matches!(r, Err(ManagerError::ServerGone)), "{r:?}");
    assert!(at.duration_since(killed) < Duration::from_secs(1));
    let t = Instant::now();
    let r = l.push(&2);
    assert!(matches!(r, Err(ManagerError::ServerGone)), "{r:?}");
    assert!(matches!(l.len(), Err(ManagerError::ServerGone)));
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(matches!(
        m.list::<u8>(),
        Err(ManagerError::ServerGone | ManagerError::Connect(_))
    ));
    // Dropping the proxies and the manager of a dead server does not hang.
    drop(l);
    drop(m);
}

#[test]
fn shutdown_stops_the_server_and_later_calls_fail() {
    let m = Manager::start().unwrap();
    let pid = m.pid().unwrap();
    let l = m.list::<u8>().unwrap();
    m.shutdown().unwrap();
    assert!(wait_dead(pid, Duration::from_secs(10)));
    assert!(matches!(
        l.push(&1),
        Err(ManagerError::ServerGone | ManagerError::Connect(_))
    ));
}

fn own_a_manager(report: QueueProxy<i32>) {
    let m = Manager::start().unwrap();
    report.put(&m.pid().unwrap()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn the_server_dies_with_its_owner() {
    let outer = Manager::start().unwrap();
    let report = outer.queue::<i32>(0).unwrap();
    let mut owner = start(own_a_manager, report.clone());
    let server = report.get_timeout(Some(Duration::from_secs(30))).unwrap();
    assert!(alive(server));
    owner.kill().unwrap();
    let _ = owner.join();
    assert!(
        wait_dead(server, Duration::from_secs(10)),
        "server outlived its owner"
    );
}

fn tcp_client((addr, key, q): (String, Vec<u8>, QueueProxy<u32>)) -> Result<u32, String> {
    let addr = Address::tcp(addr.parse().map_err(|e| format!("{e}"))?);
    let m = Manager::connect(&addr, &key).map_err(|e| e.to_string())?;
    let l = m.list::<u32>().map_err(|e| e.to_string())?;
    l.extend(&[1, 2, 3]).map_err(|e| e.to_string())?;
    for x in l.iter().map_err(|e| e.to_string())? {
        q.put(&x).map_err(|e| e.to_string())?;
    }
    Ok(l.len().map_err(|e| e.to_string())? as u32)
}

#[test]
fn a_remote_manager_over_tcp() {
    let m = Manager::builder()
        .address(Address::tcp("127.0.0.1:0".parse().unwrap()))
        .authkey(b"tcp secret".to_vec())
        .start()
        .unwrap();
    let Address::Tcp(sa) = m.address().clone() else {
        panic!("not a TCP address")
    };
    assert_ne!(sa.port(), 0);
    let q = m.queue::<u32>(0).unwrap();
    let mut p = start(
        tcp_client,
        (sa.to_string(), b"tcp secret".to_vec(), q.clone()),
    );
    assert_eq!(p.join().unwrap(), Ok(3));
    let got: Vec<u32> = (0..3)
        .map(|_| q.get_timeout(Some(Duration::from_secs(10))).unwrap())
        .collect();
    assert_eq!(got, [1, 2, 3]);
    // A wrong key over TCP is refused too.
    let mut bad = start(tcp_client, (sa.to_string(), b"nope".to_vec(), q.clone()));
    let r = bad.join().unwrap();
    assert!(
        r.as_ref().is_err_and(|e| e.contains("authentication")),
        "{r:?}"
    );
}

#[test]
fn a_server_in_this_process_over_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("mproc-mgr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("manager.sock");
    let _ = std::fs::remove_file(&path);
    let server = Manager::get_server(Address::unix(&path), b"k").unwrap();
    let addr = server.address().clone();
    let t = std::thread::spawn(move || server.serve_forever());
    let m = Manager::connect(&addr, b"k").unwrap();
    let d = m.dict::<String, i32>().unwrap();
    d.insert(&"a".into(), &1).unwrap();
    assert_eq!(d.get(&"a".into()).unwrap(), Some(1));
    m.shutdown_server().unwrap();
    t.join().unwrap().unwrap();
    assert!(!path.exists(), "the socket file is removed");
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn an_address_in_use_is_a_start_error() {
    let first = Manager::builder()
        .address(Address::tcp("127.0.0.1:0".parse().unwrap()))
        .start()
        .unwrap();
    let taken = first.address().clone();
    match Manager::builder().address(taken).start() {
        Err(ManagerError::Start(msg)) => assert!(msg.contains("in use"), "{msg}"),
        other => panic!("expected a start error, got {other:?}"),
    }
    // The first server is unharmed.
    assert_eq!(first.number_of_objects().unwrap(), 0);
}

#[test]
fn every_start_method_starts_a_server() {
    use mproc_spawn::StartMethod;
    for method in [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::ForkServer,
    ] {
        let m = Manager::builder().start_method(method).start().unwrap();
        let v = m.value(&format!("{method:?}")).unwrap();
        assert_eq!(v.get().unwrap(), format!("{method:?}"));
        let pid = m.pid().unwrap();
        m.shutdown().unwrap();
        assert!(wait_dead(pid, Duration::from_secs(10)), "{method:?}");
    }
}

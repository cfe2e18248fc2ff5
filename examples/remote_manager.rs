//! A manager reached by address and key (Python: `BaseManager(address=('127.0.0.1',
//! 50000), authkey=b'abracadabra')` with a registered `get_queue`): a server process
//! listens on 127.0.0.1 and publishes a queue; a client process that knows only the
//! address and the key connects, looks the queue up and puts jobs on it; this process
//! reads them back. A client with the wrong key is refused.
//! expect: ^server listening on 127\.0\.0\.1:\d+$
//! expect: ^client put 3 jobs$
//! expect: ^got \["job 0", "job 1", "job 2"\]$
//! expect: ^wrong key refused: authentication failed
use mproc::channel::Address;
use mproc::manager::{Manager, ManagerError, QueueProxy};
use mproc::spawn::Process;
use std::time::Duration;

const KEY: &[u8] = b"abracadabra";

/// The client: knows only the address and the key.
fn client(addr: String) -> usize {
    let addr = Address::tcp(addr.parse().expect("an address"));
    let m = Manager::connect(&addr, KEY).expect("connect");
    let jobs: QueueProxy<String> = m.lookup("jobs").expect("the published queue");
    for i in 0..3 {
        jobs.put(&format!("job {i}")).expect("put");
    }
    3
}

fn main() {
    let m = Manager::builder()
        .address(Address::tcp("127.0.0.1:0".parse().unwrap()))
        .authkey(KEY)
        .start()
        .expect("start the server");
    let Address::Tcp(sa) = m.address().clone() else {
        unreachable!("a TCP address was asked for")
    };
    println!("server listening on {sa}");
    let jobs = m.queue::<String>(0).expect("a queue held by the server");
    m.publish("jobs", &jobs).expect("publish the queue");

    let mut c = Process::new(client, sa.to_string());
    c.start().expect("start the client");
    println!("client put {} jobs", c.join().expect("join the client"));
    let got: Vec<String> = (0..3)
        .map(|_| {
            jobs.get_timeout(Some(Duration::from_secs(10)))
                .expect("a job")
        })
        .collect();
    println!("got {got:?}");
    match Manager::connect(&Address::Tcp(sa), b"wrong key") {
        Err(ManagerError::Connect(e)) => println!("wrong key refused: {e}"),
        other => println!("unexpected: {other:?}"),
    }
}

//! Log forwarding across real processes, under the start method of
//! `MPROC_START_METHOD` (the suite runs each test under fork, spawn and forkserver).
use mproc_spawn::Process;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The parent's logger in these tests: keeps every line it is given.
struct Capture;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        let line = format!("{} {} {}", r.level(), r.target(), r.args());
        LINES.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

/// Tests share the process-wide logger: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static S: Mutex<()> = Mutex::new(());
    let g = S.lock().unwrap_or_else(|e| e.into_inner());
    LINES.lock().unwrap().clear();
    g
}

fn start() -> mproc_log::Forwarder {
    mproc_log::Forwarding::new()
        .logger(Capture)
        .max_level(log::LevelFilter::Debug)
        .start()
        .expect("forwarding starts")
}

fn take_lines() -> Vec<String> {
    std::mem::take(&mut *LINES.lock().unwrap())
}

fn three_records(n: u32) -> u32 {
    log::info!(target: "worker", "Worker started {n}");
    log::debug!(target: "worker", "Worker busy {n}");
    log::trace!(target: "worker", "filtered out {n}");
    log::warn!(target: "worker", "Worker done {n}");
    std::process::id()
}

#[test]
fn records_of_children_reach_the_parent_logger_tagged_and_in_order() {
    let _g = serial();
    let fwd = start();
    let mut procs: Vec<Process<u32>> = (0..3).map(|i| Process::new(three_records, i)).collect();
    for p in &mut procs {
        p.start().unwrap();
    }
    let mut pids = Vec::new();
    for p in &mut procs {
        pids.push(p.join().unwrap());
    }
    log::info!(target: "parent", "the parent's own record");
    drop(fwd);
    let lines = take_lines();
    for (i, pid) in pids.iter().enumerate() {
        let tag = format!("[Process-{} {pid}]", i + 1);
        let mine: Vec<&String> = lines.iter().filter(|l| l.contains(&tag)).collect();
        assert_eq!(
            mine,
            [
                &format!("INFO worker {tag} Worker started {i}"),
                &format!("DEBUG worker {tag} Worker busy {i}"),
                &format!("WARN worker {tag} Worker done {i}"),
            ],
            "all lines: {lines:#?}"
        );
    }
    assert!(lines.contains(&"INFO parent the parent's own record".to_string()));
    assert!(!lines.iter().any(|l| l.contains("filtered out")));
}

fn log_and_return(x: u64) -> u64 {
    log::info!(target: "task", "task {x}");
    x + 1
}

#[test]
fn pool_workers_forward_their_records() {
    let _g = serial();
    let fwd = start();
    let pool = mproc_pool::Pool::new(2).unwrap();
    let out = pool.map(log_and_return, 0..20u64).unwrap();
    assert_eq!(out, (1..21).collect::<Vec<_>>());
    pool.close();
    pool.join();
    drop(pool);
    drop(fwd);
    let lines = take_lines();
    for x in 0..20 {
        let hit = lines
            .iter()
            .find(|l| l.ends_with(&format!("] task {x}")))
            .unwrap_or_else(|| panic!("task {x} missing: {lines:#?}"));
        assert!(hit.contains("[PoolWorker-"), "{hit}");
    }
}

fn log_forever(_: ()) {
    let pad = "x".repeat(3000);
    for i in 0u64.. {
        log::info!(target: "spam", "record {i} {pad} end");
    }
}

#[test]
fn a_child_killed_mid_record_leaves_only_whole_records_and_no_hang() {
    let _g = serial();
    let fwd = start();
    let mut p = Process::new(log_forever, ());
    p.start().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    p.kill().unwrap();
    let _ = p.join_timeout(Duration::from_secs(20));
    assert_eq!(p.exitcode(), Some(-9));
    let t = Instant::now();
    drop(fwd);
    assert!(t.elapsed() < Duration::from_secs(20), "stopping hung");
    let lines = take_lines();
    assert!(
        !lines.is_empty(),
        "the child sent nothing before it was killed"
    );
    for (n, l) in lines.iter().enumerate() {
        assert!(l.ends_with(" end"), "torn record: {l:.80}");
        assert!(
            l.contains(&format!("record {n} ")),
            "out of order at {n}: {l:.80}"
        );
    }
}

#[test]
fn a_second_forwarder_is_refused_and_a_new_one_works_after_drop() {
    let _g = serial();
    let fwd = start();
    assert!(matches!(
        mproc_log::forward(),
        Err(mproc_log::ForwardError::AlreadyForwarding)
    ));
    drop(fwd);
    let fwd = start();
    let mut p = Process::new(three_records, 7);
    p.start().unwrap();
    p.join().unwrap();
    drop(fwd);
    assert_eq!(take_lines().len(), 3);
}

#[test]
fn garbage_on_the_socket_is_dropped_and_others_still_forward() {
    use std::os::fd::AsFd;
    let _g = serial();
    let fwd = start();
    let s = rustix::net::socket(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        None,
    )
    .unwrap();
    let addr = rustix::net::SocketAddrUnix::new_abstract_name(
        format!("mproc-log.{}", std::process::id()).as_bytes(),
    )
    .unwrap();
    rustix::net::connect(&s, &addr).unwrap();
    for junk in [
        &[9u8, 1, 2][..],
        &[1, 3, 0, 0, 0, 0, 255, 255, 255, 255],
        &[],
    ] {
        let _ = rustix::net::send(s.as_fd(), junk, rustix::net::SendFlags::NOSIGNAL);
    }
    let mut p = Process::new(three_records, 1);
    p.start().unwrap();
    p.join().unwrap();
    drop(fwd);
    let lines = take_lines();
    assert_eq!(lines.len(), 3, "{lines:#?}");
}

/// `tracing`: events with their span path, through the parent's subscriber.
mod tracing_events {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    struct Keep;
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Keep {
        fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            struct V(String);
            impl tracing::field::Visit for V {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    self.0.push_str(&format!("{}={v:?};", f.name()));
                }
            }
            let mut v = V(format!(
                "{} {} ",
                e.metadata().level(),
                e.metadata().target()
            ));
            e.record(&mut v);
            EVENTS.lock().unwrap().push(v.0);
        }
    }

    fn traced(n: u32) -> u32 {
        let span = tracing::info_span!("job", n);
        let _e = span.enter();
        tracing::warn!(answer = 42, "inside the span");
        n
    }

    #[test]
    fn events_arrive_with_their_spans() {
        let _g = serial();
        static SUB: OnceLock<()> = OnceLock::new();
        SUB.get_or_init(|| {
            tracing::subscriber::set_global_default(
                tracing_subscriber::registry()
                    .with(Keep)
                    .with(mproc_log::ForwardLayer),
            )
            .unwrap();
        });
        EVENTS.lock().unwrap().clear();
        let fwd = start();
        let mut p = Process::new(traced, 5);
        p.start().unwrap();
        p.join().unwrap();
        let pid = p.pid().unwrap();
        drop(fwd);
        let events = std::mem::take(&mut *EVENTS.lock().unwrap());
        let want = format!(
            "WARN mproc::child message=[Process-1 {pid}] job{{n=5}}: inside the span answer=42;process=\"Process-1\";pid={pid};origin=\"forward::tracing_events\";"
        );
        assert!(events.contains(&want), "want {want}\n got {events:#?}");
    }
}

fn log_many(n: u32) -> u32 {
    let pad = "y".repeat(1000);
    for i in 0..n {
        log::warn!(target: "many", "{i} {pad}");
    }
    n
}

#[test]
fn children_never_block_on_a_parent_that_stopped_forwarding() {
    let _g = serial();
    let fwd = start();
    // Far more than a socket buffer holds: a child that waited for a reader would hang.
    let mut p = Process::new(log_many, 20_000);
    p.start().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(fwd);
    let t = Instant::now();
    let r = p.join_timeout(Duration::from_secs(60));
    if !matches!(r, Ok(Some(20_000))) {
        let _ = p.kill();
        let _ = p.join();
        panic!("the child did not finish: {r:?}");
    }
    assert!(t.elapsed() < Duration::from_secs(60));
    // What arrived before the stop is whole and in order.
    for (n, l) in take_lines().iter().enumerate() {
        assert!(l.starts_with("WARN many [Process-1 "), "{l:.60}");
        assert!(
            l.contains(&format!("] {n} y")),
            "out of order at {n}: {l:.60}"
        );
    }
}

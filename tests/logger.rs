//! mproc's own logger (Python's `multiprocessing.get_logger()` / `log_to_stderr()`)
//! across real processes, under the start method of `MPROC_START_METHOD` (the suite
//! runs each test under fork, spawn and forkserver).
//!
//! Ported from CPython's `Lib/test/_test_multiprocessing.py` (`_TestLogging`:
//! `test_enable_logging`, `test_level`). Rust has no root logger with a level of any
//! number: its analogue is the `log` facade's maximum level, a `log::LevelFilter`, so
//! the second half of `test_level` sets it to `Error` and expects 40 where CPython sets
//! the root logger to 37 and expects 37.
//!
//! The stderr tests run this test binary again as a subprocess (a role named in the
//! environment) and read what the subprocess and its children wrote to stderr.
use mproc::channel::{Connection, Pipe};
use mproc::spawn::Process;
use mproc::{LogLevel, get_logger, log_to_stderr};
use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

/// Tests share the process-wide logger and `log` level: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static S: Mutex<()> = Mutex::new(());
    S.lock().unwrap_or_else(|e| e.into_inner())
}

/// This binary's `log` logger: keeps mproc's records.
struct Capture;

static RECORDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.target() == "mproc" {
            let line = format!("{} {}", r.level(), r.args());
            RECORDS.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

fn capture() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| log::set_logger(&Capture).expect("no other logger in this binary"));
    RECORDS.lock().unwrap().clear();
}

#[test]
fn enable_logging() {
    let _g = serial();
    capture();
    let logger = get_logger();
    logger.set_level(LogLevel::SUBWARNING);
    assert_eq!(logger.level(), Some(LogLevel::SUBWARNING));
    logger.debug("this will not be printed");
    logger.info("nor will this");
    assert!(!logger.is_enabled_for(LogLevel::INFO));
    assert!(logger.is_enabled_for(LogLevel::WARNING));
    // What the level lets through reaches the `log` facade, target "mproc".
    logger.sub_warning("this one is kept");
    logger.set_level(LogLevel::DEBUG);
    logger.debug("and this one");
    logger.set_level(LogLevel::NOTSET);
    assert_eq!(logger.level(), None);
    assert_eq!(
        *RECORDS.lock().unwrap(),
        ["INFO this one is kept", "DEBUG and this one"]
    );
}

fn report_level(w: Connection) {
    w.send(&get_logger().effective_level().get()).unwrap();
}

/// Starts `report_level` in a child; what the child's logger says its level is.
fn childs_level() -> u32 {
    let (reader, writer) = Pipe(false).unwrap();
    let mut p = Process::new(report_level, writer);
    p.start().unwrap();
    let level: u32 = reader.recv_timeout(LONG).unwrap();
    p.join_timeout(LONG).unwrap().expect("the child ends");
    level
}

#[test]
fn level() {
    let _g = serial();
    let logger = get_logger();
    let root_level = log::max_level();

    logger.set_level(LogLevel::new(32));
    assert_eq!(childs_level(), 32);

    logger.set_level(LogLevel::NOTSET);
    log::set_max_level(log::LevelFilter::Error);
    assert_eq!(logger.effective_level(), LogLevel::ERROR);
    assert_eq!(childs_level(), 40);

    log::set_max_level(log::LevelFilter::Debug);
    assert_eq!(childs_level(), 10);

    log::set_max_level(root_level);
}

fn say_seven(_: ()) -> u32 {
    7
}

fn fail(_: ()) {
    panic!("the target fails");
}

fn nap(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// The subprocess's side of the stderr tests: start a child, join it, exit.
fn role(name: &str) {
    match name {
        "stderr" => {
            log_to_stderr(Some(LogLevel::INFO));
        }
        "debug" => {
            log_to_stderr(Some(LogLevel::SUBDEBUG));
            let pool = mproc::pool::Pool::new(1).unwrap();
            assert_eq!(pool.map(say_seven, [(), ()]).unwrap(), [7, 7]);
            pool.close();
            pool.join();
        }
        "off" => {}
        "bare" => {
            log_to_stderr(Some(LogLevel::INFO));
            return;
        }
        "panic" => {
            log_to_stderr(Some(LogLevel::INFO));
            let mut p = Process::new(fail, ());
            p.start().unwrap();
            assert!(p.join_timeout(LONG).is_err());
            return;
        }
        "join" => {
            log_to_stderr(Some(LogLevel::INFO));
            mproc::spawn::set_join_at_exit(true);
            let mut p = Process::new(nap, 200);
            p.start().unwrap();
            // Kept running; the exit handler joins it.
            drop(p);
            return;
        }
        other => panic!("unknown role {other}"),
    }
    let mut p = Process::new(say_seven, ());
    p.start().unwrap();
    assert_eq!(p.join_timeout(LONG).unwrap(), Some(7));
    if name == "debug" {
        let m = mproc::manager::Manager::start().unwrap();
        m.shutdown().unwrap();
    }
}

const ROLE: &str = "MPROC_LOGGER_TEST_ROLE";

/// Runs `test` of this binary as a subprocess in role `role`; its exit status and
/// stderr. The subprocess is killed and reaped if it outlives [`LONG`].
fn run_role(test: &str, role: &str) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let text = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&text);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > LONG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the subprocess hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // A fork server the subprocess started may hold the pipe a moment longer.
    let wait_eof = Instant::now();
    while !reader.is_finished() && wait_eof.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = String::from_utf8_lossy(&text.lock().unwrap()).into_owned();
    (status, text)
}

#[test]
fn log_to_stderr_reaches_the_childs_stderr_in_pythons_format() {
    if let Ok(r) = std::env::var(ROLE) {
        return role(&r);
    }
    let (status, err) = run_role(
        "log_to_stderr_reaches_the_childs_stderr_in_pythons_format",
        "stderr",
    );
    assert!(status.success(), "{status}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with('[')).collect();
    let expected = [
        "[INFO/Process-1] child process calling self.run()",
        "[INFO/Process-1] process shutting down",
        "[INFO/Process-1] process exiting with exitcode 0",
        "[INFO/MainProcess] process shutting down",
    ];
    assert_eq!(lines, expected, "stderr: {err}");
}

#[test]
fn a_level_below_info_shows_the_debug_records_too() {
    if let Ok(r) = std::env::var(ROLE) {
        return role(&r);
    }
    let (status, err) = run_role("a_level_below_info_shows_the_debug_records_too", "debug");
    assert!(status.success(), "{status}: {err}");
    for line in [
        "[DEBUG/MainProcess] added worker",
        "[INFO/PoolWorker-1] child process calling self.run()",
        "[DEBUG/MainProcess] closing pool",
        "[DEBUG/MainProcess] joining pool",
        "[DEBUG/PoolWorker-1] worker got sentinel -- exiting",
        "[DEBUG/PoolWorker-1] worker exiting after 2 tasks",
        "[INFO/PoolWorker-1] process exiting with exitcode 0",
        "[INFO/Process-2] process exiting with exitcode 0",
        "[DEBUG/MainProcess] sending shutdown message to manager",
        "[DEBUG/mproc-manager] manager received shutdown message",
        "[INFO/MainProcess] process shutting down",
    ] {
        assert!(err.lines().any(|l| l == line), "{line:?} missing: {err}");
    }
    assert!(
        err.lines()
            .any(|l| l.starts_with("[INFO/mproc-manager] manager serving at '\\x00mproc-manager-")),
        "{err}"
    );
}

#[test]
fn nothing_is_logged_by_default() {
    if let Ok(r) = std::env::var(ROLE) {
        return role(&r);
    }
    let (status, err) = run_role("nothing_is_logged_by_default", "off");
    assert!(status.success(), "{status}: {err}");
    assert!(!err.contains("[INFO/"), "stderr: {err}");
    assert!(!err.contains("self.run()"), "stderr: {err}");
}

#[test]
fn a_failing_child_logs_its_exit_code() {
    if let Ok(r) = std::env::var(ROLE) {
        return role(&r);
    }
    let (status, err) = run_role("a_failing_child_logs_its_exit_code", "panic");
    assert!(status.success(), "{status}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with('[')).collect();
    let expected = [
        "[INFO/Process-1] child process calling self.run()",
        "[INFO/Process-1] process shutting down",
        "[INFO/Process-1] process exiting with exitcode 1",
        "[INFO/MainProcess] process shutting down",
    ];
    assert_eq!(lines, expected, "stderr: {err}");
}

#[test]
fn the_exit_handler_says_which_children_it_joins() {
    if let Ok(r) = std::env::var(ROLE) {
        return role(&r);
    }
    let (status, err) = run_role("the_exit_handler_says_which_children_it_joins", "join");
    assert!(status.success(), "{status}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with('[')).collect();
    // The child's lines and the parent's exit run concurrently: compare each
    // process's own lines, in order.
    let of = |who: &str| -> Vec<&str> {
        lines
            .iter()
            .copied()
            .filter(|l| l.contains(&format!("/{who}]")))
            .collect()
    };
    assert_eq!(
        of("MainProcess"),
        [
            "[INFO/MainProcess] process shutting down",
            "[INFO/MainProcess] calling join() for process Process-1",
        ],
        "stderr: {err}"
    );
    assert_eq!(
        of("Process-1"),
        [
            "[INFO/Process-1] child process calling self.run()",
            "[INFO/Process-1] process shutting down",
            "[INFO/Process-1] process exiting with exitcode 0",
        ],
        "stderr: {err}"
    );
}

#[test]
fn a_process_that_starts_no_child_still_says_it_shuts_down() {
    if let Ok(r) = std::env::var(ROLE) {
        return role(&r);
    }
    let (status, err) = run_role(
        "a_process_that_starts_no_child_still_says_it_shuts_down",
        "bare",
    );
    assert!(status.success(), "{status}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(
        lines,
        ["[INFO/MainProcess] process shutting down"],
        "stderr: {err}"
    );
}

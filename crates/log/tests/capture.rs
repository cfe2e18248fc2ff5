//! `Forwarding::capture_output`: children's stdout and stderr lines come out of the
//! parent's, tagged. The test re-runs its own binary and reads the copy's output.
mod common;
use std::time::Duration;

const ROLE: &str = "MPROC_LOG_TEST_CAPTURE";

fn talk(_: ()) -> u32 {
    println!("line A");
    print!("line ");
    println!("B");
    eprintln!("err line");
    std::process::id()
}

fn late_writer(_: ()) {
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20_000 {
        println!("late line {i}");
    }
}

fn partial_then_hang(_: ()) {
    use std::io::Write;
    print!("partial");
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn children_output_lines_reach_the_parent_tagged() {
    if std::env::var_os(ROLE).is_some() {
        let fwd = mproc_log::Forwarding::new()
            .capture_output(true)
            .start()
            .unwrap();
        let mut a = mproc_spawn::Process::new(talk, ());
        a.start().unwrap();
        let pid_a = a.join().unwrap();
        let mut b = mproc_spawn::Process::new(partial_then_hang, ());
        b.start().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        b.kill().unwrap();
        let _ = b.join();
        // A child still writing when forwarding stops: it neither dies of SIGPIPE nor
        // blocks (far more than a socket buffer holds).
        let mut c = mproc_spawn::Process::new(late_writer, ());
        c.start().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(fwd);
        let r = c.join_timeout(Duration::from_secs(60));
        if r.is_err() || c.exitcode() != Some(0) {
            let _ = c.kill();
            panic!("the late writer ended {r:?}, exit code {:?}", c.exitcode());
        }
        println!("pids {pid_a} {}", b.pid().unwrap());
        return;
    }
    let (stdout, stderr) = common::rerun_as(ROLE, "children_output_lines_reach_the_parent_tagged");
    let pids: Vec<&str> = stdout
        .lines()
        .find_map(|l| l.split("pids ").nth(1))
        .unwrap_or_else(|| panic!("no pids in:\n{stdout}\n{stderr}"))
        .split_whitespace()
        .collect();
    let (a, b) = (pids[0], pids[1]);
    // (libtest's own "test … " may begin the first captured line.)
    let lines: Vec<&str> = stdout.lines().collect();
    let want_a = [
        format!("[Process-1 {a}] line A"),
        format!("[Process-1 {a}] line B"),
    ];
    let at: Vec<usize> = want_a
        .iter()
        .map(|w| {
            lines
                .iter()
                .position(|l| l.ends_with(w.as_str()))
                .unwrap_or_else(|| panic!("want {w:?} in:\n{stdout}"))
        })
        .collect();
    assert!(at[0] < at[1], "out of order:\n{stdout}");
    let want_err = format!("[Process-1 {a}] err line");
    assert!(
        stderr.lines().any(|l| l.ends_with(&want_err)),
        "want {want_err:?} in:\n{stderr}"
    );
    let want_b = format!("[Process-2 {b}] partial [no newline at end]");
    assert!(
        lines.iter().any(|l| l.ends_with(&want_b)),
        "want {want_b:?} in:\n{stdout}"
    );
}

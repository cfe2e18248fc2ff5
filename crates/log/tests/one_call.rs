//! `mproc_log::forward()` alone, in a program that installed no logger: children's
//! records print on the parent's stderr through mproc's default logger, tagged. The test
//! re-runs its own binary (a fresh process with no global logger) and reads its stderr.
mod common;

const ROLE: &str = "MPROC_LOG_TEST_ONE_CALL";

fn child(n: u32) -> u32 {
    log::info!(target: "job", "hello from job {n}");
    log::debug!(target: "job", "below the default level");
    n
}

#[test]
fn forward_alone_prints_children_records_on_stderr() {
    if std::env::var_os(ROLE).is_some() {
        let fwd = mproc_log::forward().unwrap();
        let mut p = mproc_spawn::Process::new(child, 3);
        p.start().unwrap();
        assert_eq!(p.join().unwrap(), 3);
        println!("child pid {}", p.pid().unwrap());
        drop(fwd);
        return;
    }
    let (stdout, stderr) =
        common::rerun_as(ROLE, "forward_alone_prints_children_records_on_stderr");
    let pid = stdout
        .lines()
        .find_map(|l| l.split("child pid ").nth(1))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no child pid in:\n{stdout}\n{stderr}"));
    let want = format!("INFO  job: [Process-1 {pid}] hello from job 3");
    assert!(
        stderr.lines().any(|l| l == want),
        "want {want:?} in:\n{stderr}"
    );
    assert!(!stderr.contains("below the default level"), "{stderr}");
}

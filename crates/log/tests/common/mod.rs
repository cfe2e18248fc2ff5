//! Shared by the log tests that re-run their own binary: a fresh process, with no global
//! logger installed yet, plays the role the test names.
use std::process::Command;

/// Runs `test` alone in a fresh copy of this test binary with `role` set, asserts that it
/// succeeded, and returns what it printed on stdout and stderr.
pub(crate) fn rerun_as(role: &str, test: &str) -> (String, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(role, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

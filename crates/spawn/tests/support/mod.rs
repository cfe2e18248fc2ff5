//! Helpers shared by this crate's integration tests (included with `mod support;`).
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Sleeps `ms` milliseconds, then returns `ms`.
pub(crate) fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Waits until `cond` holds or `limit` passes; whether it held.
pub(crate) fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A unique path in the temp dir for this test run.
pub(crate) fn unique_path(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "mproc-spawn-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// This process's direct children (running or zombie), from every thread's `children`
/// file.
pub(crate) fn children() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|s| {
            s.split_ascii_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Children that should not be there: every zombie, and every running child except,
/// under the forkserver start method, the one fork server (the server's own children
/// are not ours).
pub(crate) fn stray_children() -> Vec<i32> {
    let zombie = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    };
    let server_allowed =
        std::env::var("MPROC_START_METHOD").is_ok_and(|m| m == "forkserver") as usize;
    let kids = children();
    let (zombies, running): (Vec<i32>, Vec<i32>) = kids.into_iter().partition(|&p| zombie(p));
    let mut stray = zombies;
    stray.extend(running.into_iter().skip(server_allowed));
    stray
}

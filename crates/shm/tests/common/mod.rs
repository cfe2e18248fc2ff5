//! Helpers shared by the integration tests: unique names and a guard that removes
//! every name a test used, even when the test fails.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A name no other test (in this or another process) uses.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "mproc_test_{}_{}_{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Unlinks its names when dropped (ignoring names already gone).
#[derive(Debug, Default)]
pub struct Cleanup(pub Vec<String>);

impl Cleanup {
    pub fn name(&mut self, tag: &str) -> String {
        let n = unique(tag);
        self.0.push(n.clone());
        n
    }

    pub fn add(&mut self, name: &str) {
        self.0.push(name.to_owned());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = std::fs::remove_file(format!("/dev/shm/{n}"));
        }
    }
}

/// Whether `/dev/shm/NAME` exists.
pub fn exists(name: &str) -> bool {
    std::path::Path::new(&format!("/dev/shm/{name}")).exists()
}

/// Waits up to `timeout` for `/dev/shm/NAME` to disappear.
pub fn gone_within(name: &str, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if !exists(name) {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

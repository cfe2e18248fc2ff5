//! `cargo xtask soak [--seconds N] [--only NAME[,NAME..]] [--seed S]`: builds
//! `mproc-soak` in release and runs every fault-injection scenario (or those named by
//! `--only`, with `--seed` for a repeatable run) within `N` seconds (default 180). Fails when any invariant
//! was violated, or when the run outlives its bound. Runs of 60 s or more then run the
//! loom models (`xtask/soak/tests/loom_*.rs`) in release with 3 preemptions; shorter
//! runs leave them to the test suite, which runs them in debug with 2.
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) fn run(args: &[String]) -> bool {
    let secs: u64 = crate::flag_value(args, "--seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let built = crate::cargo()
        .args(["build", "--release", "-p", "mproc-soak"])
        .status()
        .is_ok_and(|s| s.success());
    if !built {
        eprintln!("xtask soak: mproc-soak did not build");
        return false;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target"));
    let exe = target.join("release").join("mproc-soak");
    let mut cmd = Command::new(&exe);
    cmd.args(["--seconds", &secs.to_string()]);
    for flag in ["--only", "--seed"] {
        if let Some(v) = crate::flag_value(args, flag) {
            cmd.args([flag, v.as_str()]);
        }
    }
    let mut child = match cmd.current_dir(crate::root()).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xtask soak: cannot run {}: {e}", exe.display());
            return false;
        }
    };
    // The binary bounds itself; this is the outer guard should it not.
    let limit = Duration::from_secs(secs * 4 + 180);
    let started = Instant::now();
    let soaked = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.success(),
            Ok(None) if started.elapsed() > limit => {
                eprintln!(
                    "xtask soak: still running after {} s: killed",
                    limit.as_secs()
                );
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(_) => return false,
        }
    };
    if secs < 60 {
        return soaked;
    }
    println!(
        "\nxtask soak: loom models of the queue ring, its arena and the lock word (release, 3 preemptions)"
    );
    let modelled = crate::cargo()
        .args([
            "test",
            "--release",
            "-p",
            "mproc-soak",
            "--test",
            "loom_ring",
            "--test",
            "loom_lock",
            "--test",
            "loom_arena",
        ])
        .status()
        .is_ok_and(|s| s.success());
    soaked && modelled
}

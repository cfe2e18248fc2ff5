//! Project automation for the mproc workspace.
//!
//! - `cargo xtask test-all`: formatting, clippy, every crate's tests under each start
//!   method, doc tests, examples with their output checked, and a `/dev/shm` leak check.
//!   With Open MPI installed, also mproc-mpi (feature `mpi`) under `mpirun`.
//!   Ends with one line `N passed, N failed` and exits non-zero on any failure.
//! - `cargo xtask bench [--quick] [--json FILE] [--filter S]`: mproc beside CPython and
//!   the raw OS floor, in one run, with ratios.
//! - `cargo xtask fuzz [--seconds N]`: the frame-decoder fuzz target for a bounded time.
//! - `cargo xtask soak [--seconds N] [--only A,B] [--seed S]`: fault injection and soak (default 180 s), one
//!   table of what was tried and what was seen; non-zero on any violated invariant.

mod bench;
mod examples;
mod mpi;
mod soak;
mod test_all;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("help", &[][..]),
    };
    let ok = match cmd {
        "test-all" => test_all::run(rest),
        "bench" => bench::run(rest),
        "fuzz" => fuzz(rest),
        "soak" => soak::run(rest),
        // The examples step of test-all, run alone (test-all runs it in a copy of itself
        // so that the examples' output goes to its log).
        "examples" => {
            let mut t = test_all::Tally::default();
            examples::run_all(&mut t);
            t.failed == 0
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  test-all [--quick]                    everything CI checks\n  bench [--quick] [--json F] [--filter S]  benchmarks beside CPython and the raw floor\n  fuzz [--seconds N]                     run the frame-decoder fuzz target\n  soak [--seconds N] [--only A,B] [--seed S]  fault injection: killed workers, holders, parents; bad frames"
            );
            cmd == "help"
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The workspace root (the parent of this crate's folder).
pub(crate) fn root() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    dir.parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cargo that runs us (as the cargo-xtask convention asks).
pub(crate) fn cargo() -> std::process::Command {
    let mut c =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// The value after `--name` in `args`, if any.
pub(crate) fn flag_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn fuzz(args: &[String]) -> bool {
    let secs = flag_value(args, "--seconds").unwrap_or_else(|| "60".into());
    let dir = root().join("fuzz");
    if !dir.join("Cargo.toml").exists() {
        eprintln!("xtask fuzz: no fuzz/ crate in this checkout");
        return false;
    }
    let have = std::process::Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("xtask fuzz: installing cargo-fuzz");
        let st = std::process::Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .status();
        if !st.is_ok_and(|s| s.success()) {
            return false;
        }
    }
    let targets = std::process::Command::new("cargo")
        .args(["+nightly", "fuzz", "list"])
        .current_dir(&dir)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut ok = !targets.is_empty();
    for t in targets {
        println!("xtask fuzz: {t} for {secs} s (AddressSanitizer)");
        let st = std::process::Command::new("cargo")
            .args([
                "+nightly",
                "fuzz",
                "run",
                &t,
                "--sanitizer",
                "address",
                "--",
                &format!("-max_total_time={secs}"),
            ])
            .current_dir(&dir)
            .status();
        ok &= st.is_ok_and(|s| s.success());
    }
    ok
}

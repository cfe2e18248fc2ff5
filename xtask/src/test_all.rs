//! `cargo xtask test-all`: everything CI checks, ending with `N passed, N failed`.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Pass/fail tallies across all steps.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) passed: u64,
    pub(crate) failed: u64,
    pub(crate) failures: Vec<String>,
}

impl Tally {
    pub(crate) fn step(&mut self, name: &str, ok: bool) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            self.failures.push(name.to_owned());
        }
    }
}

const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];

pub(crate) fn run(args: &[String]) -> bool {
    let quick = args.iter().any(|a| a == "--quick");
    let started = Instant::now();
    let mut t = Tally::default();
    let shm_before = shm_entries();

    banner("cargo fmt --check");
    t.step(
        "fmt",
        status(crate::cargo().args(["fmt", "--all", "--check"])),
    );

    banner("cargo clippy -D warnings");
    t.step(
        "clippy",
        status(crate::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])),
    );

    let nextest = crate::cargo()
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // Build every test once, so the per-method runs below only run.
    banner("build tests");
    let built = if nextest {
        status(crate::cargo().args(["nextest", "run", "--workspace", "--no-run"]))
    } else {
        status(crate::cargo().args(["test", "--workspace", "--no-run"]))
    };
    t.step("build tests", built);
    if built {
        let methods: &[&str] = if quick { &METHODS[2..] } else { &METHODS };
        for m in methods {
            banner(&format!("tests, MPROC_START_METHOD={m}"));
            let mut cmd = crate::cargo();
            cmd.env("MPROC_START_METHOD", m);
            if nextest {
                cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
            } else {
                cmd.args([
                    "test",
                    "--workspace",
                    "--no-fail-fast",
                    "--",
                    "--test-threads=2",
                ]);
            }
            let (ok, out) = capture(&mut cmd);
            let (p, f) = if nextest {
                nextest_counts(&out)
            } else {
                libtest_counts(&out)
            };
            t.passed += p;
            t.failed += f;
            if !ok {
                if f == 0 {
                    t.failed += 1; // a crash or build failure that reported no test
                }
                t.failures.push(format!("tests under {m}"));
            }
        }
    }

    banner("doc tests");
    let (ok, out) = capture(crate::cargo().args(["test", "--workspace", "--doc"]));
    let (p, f) = libtest_counts(&out);
    t.passed += p;
    t.failed += f;
    if !ok {
        if f == 0 {
            t.failed += 1;
        }
        t.failures.push("doc tests".into());
    }

    banner("examples");
    crate::examples::run_all(&mut t);

    banner("MPI (mproc-mpi, feature `mpi`; needs Open MPI)");
    crate::mpi::test_step(&mut t, nextest);

    banner("soak (short): cargo xtask soak --seconds 20");
    t.step(
        "soak (short)",
        crate::soak::run(&["--seconds".into(), "20".into()]),
    );

    banner("/dev/shm leak check");
    let after = shm_entries();
    let leaked: Vec<_> = after
        .iter()
        .filter(|e| !shm_before.contains(e))
        .cloned()
        .collect();
    if !leaked.is_empty() {
        eprintln!("segments left in /dev/shm by the suite: {leaked:?}");
    }
    t.step(
        "/dev/shm holds no more after the suite than before",
        leaked.is_empty(),
    );

    println!();
    if !t.failures.is_empty() {
        println!("failed: {}", t.failures.join("; "));
    }
    println!("test-all took {:.0} s", started.elapsed().as_secs_f64());
    println!("{} passed, {} failed", t.passed, t.failed);
    t.failed == 0
}

fn banner(s: &str) {
    println!("\n==> {s}");
}

fn status(cmd: &mut Command) -> bool {
    cmd.status().is_ok_and(|s| s.success())
}

/// Runs `cmd`, echoing its stdout and stderr while keeping both for parsing.
pub(crate) fn capture(cmd: &mut Command) -> (bool, String) {
    let Ok(mut child) = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() else {
        return (false, String::new());
    };
    let err = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        let mut kept = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("{line}");
            kept.push_str(&line);
            kept.push('\n');
        }
        kept
    });
    let mut kept = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        println!("{line}");
        kept.push_str(&line);
        kept.push('\n');
    }
    kept.push_str(&err_thread.join().unwrap_or_default());
    let ok = child.wait().is_ok_and(|s| s.success());
    (ok, kept)
}

/// From nextest's `Summary [..] N tests run: P passed, F failed, T timed out, S skipped`.
pub(crate) fn nextest_counts(out: &str) -> (u64, u64) {
    let Some(line) = out
        .lines()
        .rev()
        .find(|l| l.contains("tests run:") || l.contains("test run:"))
    else {
        return (0, 0);
    };
    let tail = line.split(':').next_back().unwrap_or("");
    let (mut p, mut f) = (0, 0);
    for part in tail.split(',') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(word)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match word {
            "passed" => p += n,
            "failed" | "timed" => f += n,
            _ => {}
        }
    }
    (p, f)
}

/// Sums libtest's `test result: ok. P passed; F failed; …` lines.
pub(crate) fn libtest_counts(out: &str) -> (u64, u64) {
    let (mut p, mut f) = (0, 0);
    for line in out.lines().filter(|l| l.starts_with("test result:")) {
        for part in line.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            for w in words.windows(2) {
                if let Ok(n) = w[0].parse::<u64>() {
                    match w[1] {
                        "passed" => p += n,
                        "failed" => f += n,
                        _ => {}
                    }
                }
            }
        }
    }
    (p, f)
}

fn shm_entries() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nextest_summary() {
        let out =
            "     Summary [  1.2s] 12 tests run: 10 passed, 1 failed, 1 timed out, 0 skipped\n";
        assert_eq!(nextest_counts(out), (10, 2));
        assert_eq!(
            nextest_counts("Summary [0.1s] 3 tests run: 3 passed, 0 skipped"),
            (3, 0)
        );
    }

    #[test]
    fn parses_libtest_results() {
        let out = "test result: ok. 8 passed; 0 failed; 0 ignored\ntest result: FAILED. 1 passed; 2 failed; 0 ignored";
        assert_eq!(libtest_counts(out), (9, 2));
    }
}

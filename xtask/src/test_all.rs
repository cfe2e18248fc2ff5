//! `cargo xtask test-all`: everything CI checks, ending with `N passed, N failed`.
//!
//! The terminal gets one line per step, the details of what failed, and the summary.
//! Everything the steps printed goes to `target/test-all.log`: passing tests that crash
//! workers on purpose (OOM kills, "worker died", panics in children) print a great deal
//! that is expected and reads like failure, so it stays out of the way there.
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
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
    let log = Log::create();

    banner("cargo fmt --check");
    let (ok, _) = log.run("fmt", crate::cargo().args(["fmt", "--all", "--check"]));
    t.step("fmt", report("fmt", ok));

    banner("cargo clippy -D warnings");
    let (ok, _) = log.run(
        "clippy",
        crate::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    );
    t.step("clippy", report("clippy", ok));

    // The API docs as docs.rs renders them: a broken or private intra-doc link fails.
    banner("cargo doc -D warnings");
    let (ok, _) = log.run(
        "doc",
        crate::cargo()
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    );
    t.step("doc", report("doc", ok));

    let nextest = crate::cargo()
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // Build every test once, so the per-method runs below only run.
    banner("build tests");
    let built = if nextest {
        log.run(
            "build tests",
            crate::cargo().args(["nextest", "run", "--workspace", "--no-run"]),
        )
        .0
    } else {
        log.run(
            "build tests",
            crate::cargo().args(["test", "--workspace", "--no-run"]),
        )
        .0
    };
    t.step("build tests", report("build tests", built));
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
            let (ok, out) = log.run(&format!("tests under {m}"), &mut cmd);
            let (p, f) = if nextest {
                nextest_counts(&out)
            } else {
                libtest_counts(&out)
            };
            println!("{p} passed, {f} failed");
            if !ok {
                print_failures(&out);
            }
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
    let (ok, out) = log.run(
        "doc tests",
        crate::cargo().args(["test", "--workspace", "--doc"]),
    );
    let (p, f) = libtest_counts(&out);
    println!("{p} passed, {f} failed");
    if !ok {
        print_failures(&out);
    }
    t.passed += p;
    t.failed += f;
    if !ok {
        if f == 0 {
            t.failed += 1;
        }
        t.failures.push("doc tests".into());
    }

    // Examples and the soak run in a copy of this program, so that what they and their
    // children print (crashed workers included) lands in the log.
    banner("examples");
    let (ok, out) = log.run("examples", self_command().arg("examples"));
    let mut seen = 0;
    for line in out.lines().filter(|l| l.starts_with("example ")) {
        println!("{line}");
        if let Some(name) = line
            .strip_suffix("FAILED")
            .or_else(|| line.split_once(" FAILED (").map(|(n, _)| n))
        {
            t.step(name.trim(), false);
        } else if line.contains(" ok (") {
            t.step(line.split(" ok (").next().unwrap_or(line).trim(), true);
        } else {
            continue;
        }
        seen += 1;
    }
    if !ok && seen == 0 {
        print_failures(&out);
        t.step("examples", false);
    }

    banner("MPI (mproc-mpi, feature `mpi`; needs Open MPI)");
    crate::mpi::test_step(&mut t, nextest, &log);

    banner("soak (short): cargo xtask soak --seconds 20");
    let (ok, out) = log.run(
        "soak (short)",
        self_command().args(["soak", "--seconds", "20"]),
    );
    if !ok {
        print_failures(&out);
    }
    t.step("soak (short)", report("soak (short)", ok));

    banner("/dev/shm leak check");
    let leaked = leaked(&shm_before, &shm_entries());
    if leaked.is_empty() {
        println!("no mproc segment left in /dev/shm");
    } else {
        println!("leaked: {}", leaked.join(", "));
    }
    t.step("/dev/shm: no mproc segment leaked", leaked.is_empty());

    println!();
    if !t.failures.is_empty() {
        println!("failed: {}", t.failures.join("; "));
    }
    println!(
        "full output of every step: {}",
        log.path
            .as_ref()
            .map_or("(no log file)".into(), |p| p.display().to_string())
    );
    println!("test-all took {:.0} s", started.elapsed().as_secs_f64());
    println!("{} passed, {} failed", t.passed, t.failed);
    t.failed == 0
}

fn banner(s: &str) {
    println!("\n==> {s}");
}

/// Prints a step's one-line outcome; returns `ok`.
fn report(step: &str, ok: bool) -> bool {
    println!("{step}: {}", if ok { "ok" } else { "FAILED" });
    ok
}

/// This program again (`cargo xtask …` without cargo).
fn self_command() -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap_or_else(|_| "xtask".into()));
    c.current_dir(crate::root());
    c
}

/// The log file that takes every step's output.
pub(crate) struct Log {
    file: Option<Mutex<std::fs::File>>,
    path: Option<std::path::PathBuf>,
}

impl Log {
    fn create() -> Log {
        let path = crate::root().join("target").join("test-all.log");
        let _ = std::fs::create_dir_all(crate::root().join("target"));
        match std::fs::File::create(&path) {
            Ok(f) => Log {
                file: Some(Mutex::new(f)),
                path: Some(path),
            },
            Err(e) => {
                eprintln!("test-all: no log file ({e}); step output is dropped");
                Log {
                    file: None,
                    path: None,
                }
            }
        }
    }

    fn write(&self, line: &str) {
        if let Some(f) = &self.file {
            let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(f, "{line}");
        }
    }

    /// Runs `cmd` with both streams into the log (under a header naming the step) and
    /// returns whether it succeeded and what it printed.
    pub(crate) fn run(&self, step: &str, cmd: &mut Command) -> (bool, String) {
        self.write(&format!(
            "\n==> {step}\n(this step's own output; a passing step may show panics, killed \
             workers and backtraces that its tests provoke on purpose)"
        ));
        let (ok, out) = capture(cmd, |l| self.write(l));
        self.write(&format!("<== {step}: {}", if ok { "ok" } else { "FAILED" }));
        if !ok && !out.contains("test result:") && !out.contains("tests run:") {
            // Not a test run (a build, clippy, fmt): its output is the diagnosis.
            for line in out
                .lines()
                .rev()
                .take(200)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                eprintln!("{line}");
            }
        }
        (ok, out)
    }
}

/// Prints what a failed test run says about its failures (nextest's FAIL/TIMEOUT blocks
/// and summary lines, libtest's failures section), not the whole run.
fn print_failures(out: &str) {
    let mut printing = false;
    for line in out.lines() {
        let l = line.trim_start();
        let starts = [
            "FAIL",
            "TIMEOUT",
            "SIGSEGV",
            "SIGABRT",
            "SIGKILL",
            "LEAK",
            "failures:",
            "---- ",
        ]
        .iter()
        .any(|p| l.starts_with(p));
        if starts {
            printing = true;
        } else if l.starts_with("PASS") || l.starts_with("START") || l.starts_with("SLOW") {
            printing = false;
        }
        if printing || l.starts_with("Summary") || l.starts_with("example ") && l.contains("FAILED")
        {
            println!("{line}");
        }
    }
}

/// Runs `cmd`, handing each line of its stdout and stderr to `sink` as it comes, and
/// keeps both for parsing.
fn capture(cmd: &mut Command, sink: impl Fn(&str) + Sync) -> (bool, String) {
    let Ok(mut child) = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return (false, String::new());
    };
    let err = child.stderr.take().expect("piped");
    let out = child.stdout.take().expect("piped");
    let kept = Arc::new(Mutex::new(String::new()));
    std::thread::scope(|s| {
        let read = |stream: Box<dyn std::io::Read + Send>| {
            let kept = Arc::clone(&kept);
            let sink = &sink;
            move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink(&line);
                    let mut k = kept.lock().unwrap_or_else(|e| e.into_inner());
                    k.push_str(&line);
                    k.push('\n');
                }
            }
        };
        s.spawn(read(Box::new(err)));
        s.spawn(read(Box::new(out)));
    });
    let ok = child.wait().is_ok_and(|s| s.success());
    let kept = std::mem::take(&mut *kept.lock().unwrap_or_else(|e| e.into_inner()));
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

/// Whether a `/dev/shm` name is one that mproc makes: generated names (`mproc_…`) and
/// the test suites' own (`mproc_test_…`). Other programs' files are not ours to count.
fn is_mproc_name(name: &str) -> bool {
    name.starts_with("mproc_") || name.starts_with("mproc-")
}

/// mproc's names in `after` that were not in `before`, sorted.
fn leaked(before: &[String], after: &[String]) -> Vec<String> {
    let mut l: Vec<String> = after
        .iter()
        .filter(|e| is_mproc_name(e) && !before.contains(e))
        .cloned()
        .collect();
    l.sort();
    l
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
    fn counts_only_mproc_names_as_leaks() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let before = v(&["mproc_old", "pulse-shm-1"]);
        let after = v(&[
            "mproc_old",
            "pulse-shm-1",
            "pulse-shm-2",
            "sem.other",
            "mproc_test_12_0_x",
            "mproc_00ff",
        ]);
        assert_eq!(
            leaked(&before, &after),
            v(&["mproc_00ff", "mproc_test_12_0_x"])
        );
        assert!(leaked(&after, &after).is_empty());
    }

    #[test]
    fn captures_both_streams_and_the_status() {
        let lines = Mutex::new(Vec::new());
        let (ok, out) = capture(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            |l| lines.lock().unwrap().push(l.to_owned()),
        );
        assert!(!ok);
        assert!(out.contains("out\n") && out.contains("err\n"), "{out}");
        assert_eq!(lines.lock().unwrap().len(), 2);
    }

    #[test]
    fn parses_libtest_results() {
        let out = "test result: ok. 8 passed; 0 failed; 0 ignored\ntest result: FAILED. 1 passed; 2 failed; 0 ignored";
        assert_eq!(libtest_counts(out), (9, 2));
    }
}

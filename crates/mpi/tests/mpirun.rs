//! The MPI pool across real MPI processes: each test runs the `mproc-mpi-selftest`
//! program under `mpirun` (SPMD) or alone (spawn mode), always under a timeout, and
//! checks its output and exit status. Needs Open MPI (`mpirun`) and the `mpi` feature.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SELFTEST: &str = env!("CARGO_BIN_EXE_mproc-mpi-selftest");

/// Open MPI's settings for tests: root allowed (CI containers), more ranks than cores,
/// loopback only.
fn ompi_env(cmd: &mut Command) -> &mut Command {
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("OMPI_MCA_oob_tcp_if_include", "lo")
        .env("OMPI_MCA_btl_tcp_if_include", "lo")
        .env("RUST_BACKTRACE", "0")
}

/// Runs `cmd` under coreutils' `timeout` (which kills the whole run, mpirun's daemons
/// and ranks included, when it overruns), returning its output and how long it took.
fn run(cmd: Command, limit: Duration) -> (Output, Duration) {
    let mut t = Command::new("timeout");
    t.arg("--kill-after=5")
        .arg(format!("{}", limit.as_secs()))
        .arg(cmd.get_program());
    t.args(cmd.get_args());
    ompi_env(&mut t);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    t.stdin(Stdio::null());
    let start = Instant::now();
    let out = t.output().expect("could not run timeout/mpirun");
    (out, start.elapsed())
}

fn mpirun(n: u32, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.arg("-n").arg(n.to_string()).arg(SELFTEST).args(args);
    c
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_all_ok(o: &Output, lines: &[&str]) {
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", text(o));
    assert!(!out.contains("FAILED"), "{}", text(o));
    for l in lines {
        assert!(
            out.lines().any(|x| x == format!("ok {l}")),
            "missing `ok {l}`\n{}",
            text(o)
        );
    }
}

const EXERCISED: &[&str] = &[
    "map",
    "map_chunked",
    "map_async",
    "imap",
    "imap_unordered",
    "starmap",
    "apply_async",
    "apply",
    "map panic is typed",
    "imap panic fails one item",
    "as_completed",
    "future result",
    "get_timeout",
    "handles are refused",
    "large messages",
    "large results",
];

#[test]
fn spmd_pool_runs_every_call_under_mpirun_n3() {
    let (o, _) = run(mpirun(3, &["spmd"]), Duration::from_secs(90));
    assert_all_ok(&o, EXERCISED);
    assert_all_ok(
        &o,
        &[
            "workers",
            "closed pool refuses",
            "second pool",
            "terminate fails the queued tasks",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    for r in 0..3 {
        assert!(out.contains(&format!("done rank {r}")), "{}", text(&o));
    }
}

#[test]
fn a_killed_rank_ends_the_spmd_run_nonzero_within_5s() {
    let (o, took) = run(mpirun(3, &["kill"]), Duration::from_secs(30));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ok started"),
        "{}",
        text(&o)
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert_ne!(o.status.code(), Some(124), "timed out\n{}", text(&o));
    // From the moment the rank kills itself to the end of mpirun.
    let ended = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let out = String::from_utf8_lossy(&o.stdout);
    let killed: u128 = out
        .lines()
        .find_map(|l| l.strip_prefix("killing at "))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no kill time\n{}", text(&o)));
    let abort = Duration::from_millis((ended - killed) as u64);
    assert!(
        abort < Duration::from_secs(5),
        "abort took {abort:?}\n{}",
        text(&o)
    );
    assert!(
        took < Duration::from_secs(30),
        "took {took:?}\n{}",
        text(&o)
    );
}

fn fake_nodes_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("mproc-mpi-nodes-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn two_fake_nodes_on_loopback_each_run_items() {
    let dir = fake_nodes_dir();
    let hostfile = dir.join("hostfile");
    std::fs::write(&hostfile, "localhost slots=2\n127.0.0.2 slots=2\n").unwrap();
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_node_agent.sh");
    let mut c = Command::new("mpirun");
    c.arg("--hostfile")
        .arg(&hostfile)
        .args(["--mca", "plm_rsh_agent"])
        .arg(&agent)
        .args(["--mca", "btl", "self,vader,tcp"])
        .args(["-n", "4", SELFTEST, "nodes"])
        .env("MPROC_MPI_FAKE_NODES_DIR", &dir);
    let (o, _) = run(c, Duration::from_secs(90));
    let _ = std::fs::remove_dir_all(&dir);
    assert_all_ok(&o, &["two nodes"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("node-127.0.0.2|"), "{}", text(&o));
}

#[test]
fn spawn_mode_runs_every_call_from_a_singleton() {
    let (o, _) = run(
        Command::new(SELFTEST).tap_arg("spawn"),
        Duration::from_secs(90),
    );
    assert_all_ok(&o, EXERCISED);
    assert_all_ok(&o, &["spawned workers", "spawned are other processes"]);
}

#[test]
fn spawn_mode_turns_a_lost_worker_into_a_typed_error() {
    let (o, took) = run(
        Command::new(SELFTEST).tap_arg("spawn_kill"),
        Duration::from_secs(60),
    );
    assert_all_ok(
        &o,
        &[
            "spawn_kill started",
            "lost worker is typed",
            "then broken",
            "dropped",
        ],
    );
    assert!(
        took < Duration::from_secs(30),
        "took {took:?}\n{}",
        text(&o)
    );
}

#[test]
fn a_failed_spawn_is_a_typed_error_not_an_abort() {
    // Without oversubscription there are not enough slots for 8 workers.
    let mut c = Command::new(SELFTEST);
    c.arg("spawn_too_many")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "0");
    let (o, _) = run(c, Duration::from_secs(60));
    assert_all_ok(&o, &["failed spawn is typed"]);
}

#[test]
fn spawn_mode_refuses_zero_workers() {
    let (o, _) = run(
        Command::new(SELFTEST).tap_arg("spawn_zero"),
        Duration::from_secs(30),
    );
    assert_all_ok(&o, &["zero workers refused"]);
}

trait TapArg {
    fn tap_arg(self, a: &str) -> Command;
}

impl TapArg for Command {
    fn tap_arg(mut self, a: &str) -> Command {
        self.arg(a);
        self
    }
}

//! The MPI parts of `cargo xtask test-all` and `cargo xtask bench` (crate mproc-mpi,
//! feature `mpi`). Both run only where Open MPI is installed (`.ci/run` installs it)
//! and say "skipped" plainly otherwise. Every `mpirun` runs under coreutils' `timeout`,
//! with at most 4 ranks.
use crate::test_all::{Log, Tally};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Instant;

/// What the project needs of Open MPI: `mpirun`, and the development files `pkg-config`
/// finds (rsmpi builds against them).
pub(crate) fn open_mpi_present() -> bool {
    let quiet = |c: &mut Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    quiet(Command::new("mpirun").arg("--version"))
        && quiet(Command::new("pkg-config").args(["--exists", "ompi"]))
}

/// Open MPI's settings wherever we call mpirun: root allowed (CI containers), more
/// ranks than cores, loopback only.
fn ompi_env(c: &mut Command) -> &mut Command {
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("OMPI_MCA_oob_tcp_if_include", "lo")
        .env("OMPI_MCA_btl_tcp_if_include", "lo")
}

/// `timeout SECS mpirun -n N PROGRAM ARGS...`
fn mpirun(secs: u32, n: u32, program: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new("timeout");
    c.args([
        "--kill-after=5",
        &secs.to_string(),
        "mpirun",
        "-n",
        &n.to_string(),
    ])
    .arg(program)
    .args(args)
    .current_dir(crate::root())
    .stdin(Stdio::null());
    ompi_env(&mut c);
    c
}

/// The test-all step: clippy on mproc-mpi with the feature, its tests (SPMD, spawn,
/// two fake nodes, faults), and the `mpi_map` example under `mpirun -n 3`.
pub(crate) fn test_step(t: &mut Tally, nextest: bool, log: &Log) {
    if !open_mpi_present() {
        println!(
            "MPI step skipped: Open MPI not found (mpirun and `pkg-config ompi`; \
             Debian: libopenmpi-dev openmpi-bin libclang-dev pkg-config)"
        );
        return;
    }
    let started = Instant::now();
    let (ok, _) = log.run(
        "clippy mproc-mpi --features mpi",
        crate::cargo().args([
            "clippy",
            "--package",
            "mproc-mpi",
            "--features",
            "mpi",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    );
    t.step("clippy mproc-mpi --features mpi", ok);
    let mut cmd = crate::cargo();
    ompi_env(&mut cmd);
    if nextest {
        cmd.args([
            "nextest",
            "run",
            "--package",
            "mproc-mpi",
            "--features",
            "mpi",
            "--no-fail-fast",
        ]);
    } else {
        cmd.args([
            "test",
            "--package",
            "mproc-mpi",
            "--features",
            "mpi",
            "--no-fail-fast",
        ]);
    }
    let (ok, out) = log.run("mproc-mpi tests", &mut cmd);
    let (p, f) = if nextest {
        crate::test_all::nextest_counts(&out)
    } else {
        crate::test_all::libtest_counts(&out)
    };
    println!("mproc-mpi tests: {p} passed, {f} failed");
    t.passed += p;
    t.failed += f;
    if !ok {
        if f == 0 {
            t.failed += 1;
        }
        t.failures.push("mproc-mpi tests".into());
    }

    let (built, _) = log.run(
        "build example mpi_map",
        crate::cargo().args([
            "build",
            "--package",
            "mproc-workspace",
            "--features",
            "mpi",
            "--example",
            "mpi_map",
        ]),
    );
    let ok = built && {
        let bin = crate::bench::target_dir().join("debug/examples/mpi_map");
        match mpirun(60, 3, &bin, &[]).output() {
            Ok(o) => {
                let out = String::from_utf8_lossy(&o.stdout);
                let ok = o.status.success()
                    && out.lines().filter(|l| *l == "[0, 1, 4, 9, 16, 25]").count() == 1;
                if !ok {
                    eprintln!(
                        "example mpi_map under mpirun -n 3: {}\n{out}\n{}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
                ok
            }
            Err(e) => {
                eprintln!("example mpi_map: cannot run mpirun: {e}");
                false
            }
        }
    };
    println!(
        "example mpi_map (mpirun -n 3) {}",
        if ok { "ok" } else { "FAILED" }
    );
    t.step("example mpi_map under mpirun -n 3", ok);
    println!("MPI step took {:.0} s", started.elapsed().as_secs_f64());
}

/// The `mpi.` bench rows: mproc-mpi under `mpirun -n 3` (2 workers), mproc-pool's
/// `Pool(2)` alone, and mpi4py.futures' `MPICommExecutor` under `mpirun -n 3` (installed
/// with pip when missing, if the Python package registry is reachable).
pub(crate) fn bench_records(quick: bool, filter: Option<&str>) -> Vec<Value> {
    let rows = ["mpi.map_trivial_c1000", "mpi.apply_rtt"];
    if filter.is_some_and(|f| !rows.iter().any(|r| r.contains(f))) {
        return Vec::new();
    }
    if !open_mpi_present() {
        eprintln!("==> mpi: skipped (Open MPI not found)");
        return Vec::new();
    }
    eprintln!("==> mpi: mproc-mpi and mproc-pool");
    let built = crate::cargo()
        .args([
            "build",
            "--release",
            "--package",
            "mproc-mpi",
            "--features",
            "mpi",
            "--bin",
            "mproc-mpi-bench",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !built {
        return Vec::new();
    }
    let mut args: Vec<&str> = Vec::new();
    if quick {
        args.push("--quick");
    }
    if let Some(f) = filter {
        args.extend(["--filter", f]);
    }
    let bin = crate::bench::target_dir().join("release/mproc-mpi-bench");
    let mut records = crate::bench::collect(Command::new(&bin).args(&args));
    records.extend(crate::bench::collect(&mut mpirun(300, 3, &bin, &args)));

    let have_mpi4py = |py: &mut Command| {
        py.args(["-c", "import mpi4py.futures"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !have_mpi4py(&mut Command::new("python3")) {
        eprintln!("==> mpi: installing mpi4py (pip)");
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "mpi4py"])
            .status();
    }
    if have_mpi4py(&mut Command::new("python3")) {
        eprintln!("==> mpi: mpi4py.futures");
        let script = crate::root().join("xtask/bench/python/mpi_futures.py");
        let py = std::path::Path::new("python3");
        let mut py_args: Vec<&str> = vec![script.to_str().unwrap_or_default()];
        py_args.extend(&args);
        let mut c = mpirun(300, 3, py, &py_args);
        c.current_dir(crate::root().join("xtask/bench/python"));
        records.extend(crate::bench::collect(&mut c));
    } else {
        eprintln!("==> mpi: mpi4py unavailable; no mpi4py rows");
    }
    records
}

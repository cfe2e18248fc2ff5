//! `cargo xtask bench`: every workload for mproc, the raw OS floor, Rust peers and
//! CPython's multiprocessing, in one run, printed side by side as ratios.
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};

pub(crate) fn run(args: &[String]) -> bool {
    let quick = args.iter().any(|a| a == "--quick");
    let filter = crate::flag_value(args, "--filter");
    let json_out = crate::flag_value(args, "--json");

    let mut bench_args: Vec<String> = Vec::new();
    if quick {
        bench_args.push("--quick".into());
    }
    if let Some(f) = &filter {
        bench_args.extend(["--filter".into(), f.clone()]);
    }

    eprintln!("==> building the Rust workloads (release)");
    let built = crate::cargo()
        .args(["build", "--release", "--package", "mproc-bench"])
        .status()
        .is_ok_and(|s| s.success());
    if !built {
        return false;
    }
    let mut records = Vec::new();
    let bin = target_dir().join("release/mproc-bench");
    eprintln!("==> mproc, raw floor and Rust peers");
    records.extend(collect(Command::new(&bin).args(&bench_args)));

    let py_dir = crate::root().join("xtask/bench/python");
    let mut scripts: Vec<_> = std::fs::read_dir(&py_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("bench_") && n.ends_with(".py"))
                })
                .collect()
        })
        .unwrap_or_default();
    scripts.sort();
    for s in scripts {
        let area = s
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .trim_start_matches("bench_")
            .to_owned();
        // A filter that names an area ("pool." or "pool.map") needs only that script;
        // names with no script of their own ("lock.", "value.") run every script.
        if let Some(f) = &filter
            && let Some((want, _)) = f.split_once('.')
            && want != area
            && py_dir.join(format!("bench_{want}.py")).exists()
        {
            continue;
        }
        eprintln!("==> CPython: {area}");
        let mut cmd = Command::new("python3");
        cmd.arg(&s).current_dir(&py_dir);
        if quick {
            cmd.arg("--quick");
        }
        if let Some(f) = &filter {
            cmd.args(["--filter", f]);
        }
        records.extend(collect(&mut cmd));
    }
    records.extend(crate::mpi::bench_records(quick, filter.as_deref()));
    if let Some(f) = &filter {
        records.retain(|r| {
            r["workload"]
                .as_str()
                .is_some_and(|w| w.contains(f.as_str()))
        });
    }

    print_table(&records);
    if let Some(path) = json_out {
        let text = serde_json::to_string_pretty(&Value::Array(records)).expect("json");
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("xtask bench: cannot write {path}: {e}");
            return false;
        }
        eprintln!("wrote {path}");
    }
    true
}

pub(crate) fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                crate::root().join(p)
            }
        })
        .unwrap_or_else(|| crate::root().join("target"))
}

/// Runs a workload program and keeps every stdout line that is a JSON record.
pub(crate) fn collect(cmd: &mut Command) -> Vec<Value> {
    let out = match cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xtask bench: cannot run {cmd:?}: {e}");
            return Vec::new();
        }
    };
    if !out.status.success() {
        eprintln!("xtask bench: {cmd:?} exited with {}", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(|v| v.get("workload").is_some() && v.get("impl").is_some())
        .collect()
}

/// Units where a smaller figure is better (times); all others are rates.
fn lower_is_better(unit: &str) -> bool {
    matches!(unit, "ns" | "us" | "µs" | "ms" | "s")
}

fn print_table(records: &[Value]) {
    let mut by_workload: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in records {
        by_workload
            .entry(r["workload"].as_str().unwrap_or("?").to_owned())
            .or_default()
            .push(r);
    }
    println!(
        "\n{:<30} {:<10} {:>14} {:>14} {:>14}   ratios (>1 = mproc better)",
        "workload", "unit", "mproc", "cpython", "raw"
    );
    for (w, rs) in &by_workload {
        let unit = rs.first().and_then(|r| r["unit"].as_str()).unwrap_or("");
        let get = |imp: &str| {
            rs.iter()
                .find(|r| r["impl"] == imp)
                .and_then(|r| r["median"].as_f64())
        };
        let (m, c, raw) = (get("mproc"), get("cpython"), get("raw"));
        let fmt = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{v:.4}"));
        let mut ratios = Vec::new();
        for r in rs.iter().filter(|r| r["impl"] != "mproc") {
            let (Some(mv), Some(ov)) = (m, r["median"].as_f64()) else {
                continue;
            };
            if mv <= 0.0 || ov <= 0.0 {
                continue;
            }
            let ratio = if lower_is_better(unit) {
                ov / mv
            } else {
                mv / ov
            };
            ratios.push(format!(
                "vs {} {:.2}x",
                r["impl"].as_str().unwrap_or("?"),
                ratio
            ));
        }
        println!(
            "{w:<30} {unit:<10} {:>14} {:>14} {:>14}   {}",
            fmt(m),
            fmt(c),
            fmt(raw),
            ratios.join(", ")
        );
        for r in rs
            .iter()
            .filter(|r| !matches!(r["impl"].as_str(), Some("mproc" | "cpython" | "raw")))
        {
            println!(
                "{:<30} {:<10} {:>14}   ({})",
                "",
                "",
                fmt(r["median"].as_f64()),
                r["impl"].as_str().unwrap_or("?")
            );
        }
    }
}

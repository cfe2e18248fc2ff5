//! Measurement helpers and the JSON record every workload emits.
use std::time::{Duration, Instant};

/// Options shared by all workloads.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Fewer samples and smaller sizes (for smoke runs and CI).
    pub quick: bool,
    /// Only workloads whose name contains this.
    pub filter: Option<String>,
}

impl Opts {
    /// Whether a workload of this name should run.
    pub fn wants(&self, workload: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| workload.contains(f))
    }

    /// `full` normally, `quick` with `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// One line of the benchmark's output: `{"workload","impl","unit","median","min","max"}`.
#[derive(Clone, Debug)]
pub struct Record {
    pub workload: String,
    pub imp: String,
    pub unit: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Record {
    /// A record from samples (each one a figure in `unit`).
    pub fn from_samples(workload: &str, imp: &str, unit: &str, samples: &[f64]) -> Record {
        let mut s: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        s.sort_by(|a, b| a.total_cmp(b));
        let (median, min, max) = if s.is_empty() {
            (f64::NAN, f64::NAN, f64::NAN)
        } else {
            (s[s.len() / 2], s[0], s[s.len() - 1])
        };
        Record {
            workload: workload.into(),
            imp: imp.into(),
            unit: unit.into(),
            median,
            min,
            max,
        }
    }

    /// The record as one JSON object.
    pub fn to_json(&self) -> String {
        fn num(x: f64) -> String {
            if x.is_finite() {
                format!("{x}")
            } else {
                "null".into()
            }
        }
        format!(
            r#"{{"workload": "{}", "impl": "{}", "unit": "{}", "median": {}, "min": {}, "max": {}}}"#,
            self.workload,
            self.imp,
            self.unit,
            num(self.median),
            num(self.min),
            num(self.max)
        )
    }
}

/// Runs `f` (which performs `iters` operations) `samples` times after one warm-up and
/// returns the time per operation of each sample, in `per` units (e.g. 1e-6 for µs).
pub fn time_per_op(samples: usize, iters: u64, per: f64, mut f: impl FnMut(u64)) -> Vec<f64> {
    f(iters.div_ceil(10).max(1));
    (0..samples)
        .map(|_| {
            let t = Instant::now();
            f(iters);
            t.elapsed().as_secs_f64() / iters as f64 / per
        })
        .collect()
}

/// Runs `f` (which performs `ops` operations) `samples` times after one warm-up and
/// returns operations per second of each sample.
pub fn rate(samples: usize, ops: u64, mut f: impl FnMut(u64)) -> Vec<f64> {
    f(ops.div_ceil(10).max(1));
    (0..samples)
        .map(|_| {
            let t = Instant::now();
            f(ops);
            ops as f64 / t.elapsed().as_secs_f64().max(1e-9)
        })
        .collect()
}

/// Seconds of `d` as f64 (convenience for workloads that time themselves).
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A forked child, killed and reaped on drop.
pub struct Child(libc::pid_t);

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

/// Runs `f` in a forked child (the benchmark is single-threaded while it forks).
pub fn fork(f: impl FnOnce()) -> Child {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: single-threaded parent; the child runs `f` and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: sets this child's parent-death signal: a benchmark killed midway leaves
        // no child behind.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        // SAFETY: leave the child without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    Child(pid)
}

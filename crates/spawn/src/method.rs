//! Start methods and the process-wide default.
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// How a child process is created (Python's start methods).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StartMethod {
    /// `fork()` the calling process: fastest, the child starts with a copy of the
    /// parent's memory, and it alone can run a capturing closure
    /// ([`Process::fork_closure`](crate::Process::fork_closure)).
    ///
    /// Danger: only the forking thread exists in the child. A lock another thread held
    /// at that moment (stdout's, a `Mutex` of yours, an allocator's that does not
    /// repair itself) stays locked in the child for ever. mproc detects other threads
    /// (it counts `/proc/self/task`'s entries through `/proc/self/stat`) and prints one
    /// warning per process on stderr; it does not refuse, because nearly every real
    /// program (and every `cargo test` binary) has other threads that hold no lock the
    /// child needs, and refusing would make fork unusable there. Prefer `ForkServer`
    /// or `Spawn` in multi-threaded programs.
    ///
    /// Fds: a `fn` target's child closes every fd except stdio, the result channel and
    /// the fds of handles passed in its arguments, as under the other methods (so a
    /// pipe's reader sees end-of-file once the writers it knows of are gone). A
    /// [`fork_closure`](crate::Process::fork_closure) child keeps every fd, since its
    /// captures may use any of them.
    Fork,
    /// Re-execute this program (`/proc/self/exe`); the child runs the target before
    /// `main` and never reaches it. Slowest, shares nothing by accident.
    Spawn,
    /// Ask a fork server (a clean, single-threaded copy of this program started on first
    /// use) to fork the child. Fast, and safe in a multi-threaded parent.
    ForkServer,
}

impl StartMethod {
    /// Every start method, all supported on Linux (Python's `get_all_start_methods()`).
    #[doc(alias = "get_all_start_methods")]
    pub const ALL: [StartMethod; 3] = [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::ForkServer,
    ];

    /// Python's name: `"fork"`, `"spawn"` or `"forkserver"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::Spawn => "spawn",
            StartMethod::ForkServer => "forkserver",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            StartMethod::Fork => 1,
            StartMethod::Spawn => 2,
            StartMethod::ForkServer => 3,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<StartMethod> {
        match c {
            1 => Some(StartMethod::Fork),
            2 => Some(StartMethod::Spawn),
            3 => Some(StartMethod::ForkServer),
            _ => None,
        }
    }
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A start method name that is not `fork`, `spawn` or `forkserver`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownStartMethod(pub String);

impl fmt::Display for UnknownStartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown start method {:?} (expected fork, spawn or forkserver)",
            self.0
        )
    }
}

impl std::error::Error for UnknownStartMethod {}

impl FromStr for StartMethod {
    type Err = UnknownStartMethod;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "fork" => Ok(StartMethod::Fork),
            "spawn" => Ok(StartMethod::Spawn),
            "forkserver" => Ok(StartMethod::ForkServer),
            other => Err(UnknownStartMethod(other.to_owned())),
        }
    }
}

/// 0: not decided yet; otherwise a `StartMethod::code`.
static DEFAULT: AtomicU8 = AtomicU8::new(0);

/// The environment variable that chooses the default start method.
pub const START_METHOD_ENV: &str = "MPROC_START_METHOD";

/// The process-wide default start method (Python's `get_start_method()`).
///
/// Unless [`set_start_method`] chose one, it is the value of the environment variable
/// `MPROC_START_METHOD` (`fork`, `spawn` or `forkserver`) if set and not empty, else
/// [`StartMethod::ForkServer`] (CPython 3.14's default on Linux: fast, and safe in a
/// multi-threaded parent). An unknown value in the variable is reported once on
/// stderr and ignored.
pub fn get_start_method() -> StartMethod {
    if let Some(m) = StartMethod::from_code(DEFAULT.load(Ordering::Relaxed)) {
        return m;
    }
    let m = from_env(std::env::var(START_METHOD_ENV).ok().as_deref()).unwrap_or_else(
        |e: UnknownStartMethod| {
            eprintln!("mproc: {START_METHOD_ENV}: {e}; using forkserver");
            StartMethod::ForkServer
        },
    );
    let _ = DEFAULT.compare_exchange(0, m.code(), Ordering::Relaxed, Ordering::Relaxed);
    StartMethod::from_code(DEFAULT.load(Ordering::Relaxed)).unwrap_or(m)
}

/// The start method a value of `MPROC_START_METHOD` names: unset or empty (as
/// `MPROC_START_METHOD= cmd` leaves it) means the default, forkserver.
fn from_env(v: Option<&str>) -> Result<StartMethod, UnknownStartMethod> {
    match v.map(str::trim) {
        None | Some("") => Ok(StartMethod::ForkServer),
        Some(v) => v.parse(),
    }
}

/// Sets the process-wide default start method (Python's `set_start_method`). Unlike
/// Python it may be called again; processes already started keep their method.
pub fn set_start_method(method: StartMethod) {
    DEFAULT.store(method.code(), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_value_names_the_method_and_empty_means_default() {
        assert_eq!(from_env(None).unwrap(), StartMethod::ForkServer);
        assert_eq!(from_env(Some("")).unwrap(), StartMethod::ForkServer);
        assert_eq!(from_env(Some("  ")).unwrap(), StartMethod::ForkServer);
        assert_eq!(from_env(Some("fork")).unwrap(), StartMethod::Fork);
        assert_eq!(from_env(Some("spawn")).unwrap(), StartMethod::Spawn);
        assert!(from_env(Some("threads")).is_err());
    }
}

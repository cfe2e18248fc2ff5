//! `Context`: a start method chosen once, used for many processes (Python's
//! `multiprocessing.get_context`).
use crate::{Process, ProcessError, StartMethod};
use mproc_core::Message;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// The program spawn children run, if [`set_executable`] chose one.
static EXECUTABLE: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Sets the program that [`StartMethod::Spawn`] children run, for every process
/// started afterwards without an executable of its own (Python's
/// `multiprocessing.set_executable`). It must be this program or another build of it
/// with the same code (a copy, a hard link): another binary refuses the bootstrap
/// message and the child fails with a [`ProcessError`] at `join`.
///
/// ```
/// mproc_spawn::set_executable("/proc/self/exe");
/// assert_eq!(mproc_spawn::get_executable(), std::path::Path::new("/proc/self/exe"));
/// ```
pub fn set_executable(path: impl Into<PathBuf>) {
    *EXECUTABLE.write().unwrap_or_else(|e| e.into_inner()) = Some(path.into());
}

/// The program spawn children run (Python's `get_executable`): the one chosen with
/// [`set_executable`], else `/proc/self/exe` (this very program, even if its file was
/// replaced since it started).
pub fn get_executable() -> PathBuf {
    EXECUTABLE
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// A start method to create processes with (Python's context objects). Pass it to code
/// that starts processes so that the caller chooses how.
///
/// ```
/// use mproc_spawn::{StartMethod, get_context};
/// fn add((a, b): (u32, u32)) -> u32 { a + b }
///
/// let ctx = get_context(StartMethod::Spawn);
/// let mut p = ctx.process(add, (2, 3));
/// p.start().unwrap();
/// assert_eq!(p.join().unwrap(), 5);
/// assert_eq!(ctx.start_method(), StartMethod::Spawn);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Context {
    method: Option<StartMethod>,
    /// The spawn executable of this context (leaked, so that `Context` stays `Copy`).
    executable: Option<&'static Path>,
}

/// A context for `method` (Python's `get_context("spawn")`; parse a name with
/// `"spawn".parse::<StartMethod>()`).
pub fn get_context(method: StartMethod) -> Context {
    Context {
        method: Some(method),
        executable: None,
    }
}

impl Context {
    /// The default context: it follows the process-wide default
    /// ([`get_start_method`](crate::get_start_method)) at each start (Python's
    /// `get_context()`).
    pub fn default_context() -> Context {
        Context {
            method: None,
            executable: None,
        }
    }

    /// Sets the program this context's [`StartMethod::Spawn`] children run (Python's
    /// `ctx.set_executable`), instead of [`get_executable`]. The path is kept for the
    /// life of the program (a context is a small `Copy` value).
    pub fn set_executable(&mut self, path: impl Into<PathBuf>) {
        let path: &'static Path = Box::leak(path.into().into_boxed_path());
        self.executable = Some(path);
    }

    /// This context's spawn executable: its own, or [`get_executable`].
    pub fn executable(&self) -> PathBuf {
        self.executable
            .map(Path::to_path_buf)
            .unwrap_or_else(get_executable)
    }

    /// The start method this context uses now.
    pub fn start_method(&self) -> StartMethod {
        self.method.unwrap_or_else(crate::get_start_method)
    }

    /// A process of this context (Python's `ctx.Process(target=…, args=…)`).
    pub fn process<A, R>(&self, target: fn(A) -> R, args: A) -> Process<R>
    where
        A: Message + Send + 'static,
        R: Message + 'static,
    {
        let mut p = Process::new(target, args);
        if let Some(exe) = self.executable {
            p = p.executable(exe);
        }
        match self.method {
            Some(m) => p.start_method(m),
            None => p,
        }
    }

    /// A process of this context, started.
    pub fn spawn<A, R>(&self, target: fn(A) -> R, args: A) -> Result<Process<R>, ProcessError>
    where
        A: Message + Send + 'static,
        R: Message + 'static,
    {
        let mut p = self.process(target, args);
        p.start()?;
        Ok(p)
    }
}

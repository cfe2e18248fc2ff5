//! Processes for mproc: Python's `multiprocessing.Process`, with the start methods
//! fork, spawn and forkserver.
//!
//! ```
//! use mproc_spawn::Process;
//!
//! fn greet(name: String) -> String {
//!     format!("hello, {name}, from process {}", std::process::id())
//! }
//!
//! let mut p = Process::new(greet, "world".to_string());
//! p.start().unwrap();
//! let answer = p.join().unwrap();
//! assert!(answer.starts_with("hello, world"));
//! ```
//!
//! - [`Process`]: start, join (with the target's result), `join_timeout`, `is_alive`,
//!   `exitcode` (Python's convention), `terminate`, `kill`, `sentinel`.
//! - [`StartMethod`]: fork, spawn, forkserver; [`get_start_method`] /
//!   [`set_start_method`] and the `MPROC_START_METHOD` environment variable.
//! - [`Context`] / [`get_context`]: a start method chosen once for many processes.
//! - [`current_process`], [`parent_process`], [`active_children`], [`cpu_count`],
//!   [`usable_cpu_count`].
//! - [`set_forkserver_preload`], [`stop_forkserver`], [`set_executable`].
//! - [`set_join_at_exit`]: Python's "join non-daemon children at exit".
//!
//! Spawned children re-execute the program; a constructor in this crate runs before
//! `main` and turns the copy into the child, so no `if __name__ == "__main__"` guard
//! and no init call are needed, in binaries, examples and tests alike.
#![deny(unsafe_code)]

mod bootstrap;
mod child;
mod context;
mod cpu;
mod current;
mod error;
mod exit;
mod forkserver;
mod launcher;
mod method;
mod process;
#[allow(unsafe_code)]
mod sys;
#[doc(hidden)]
pub mod testing;
mod wire;

pub use context::{Context, get_context, get_executable, set_executable};
pub use cpu::{cpu_count, usable_cpu_count};
pub use current::{
    ChildSummary, CurrentProcess, ParentProcess, active_children, at_child_start, current_process,
    parent_process,
};
pub use error::ProcessError;
pub use exit::set_join_at_exit;
pub use forkserver::{set_forkserver_preload, stop_forkserver};
pub use method::{
    START_METHOD_ENV, StartMethod, UnknownStartMethod, get_start_method, set_start_method,
};
pub use process::{Process, spawn};

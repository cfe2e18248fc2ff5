//! The fork server (not yet implemented: ForkServer starts fall back to Spawn).
use crate::current::ChildInfo;
use crate::process::{Prepared, Started};
use mproc_core::Pidfd;
use std::io;
use std::os::fd::BorrowedFd;

/// Starts a child through the fork server.
pub(crate) fn start(prepared: Prepared, info: ChildInfo) -> io::Result<Started> {
    crate::process::start_spawn(prepared, info)
}

/// Reads the exit code the server reported.
pub(crate) fn read_status(_fd: BorrowedFd<'_>, _pidfd: &Pidfd) -> io::Result<i32> {
    Err(io::Error::other("no fork server"))
}

/// Entry of the server process.
pub(crate) fn server_main(_spec: &str) -> ! {
    crate::sys::exit_now(1)
}

/// In a fork child: forget the parent's server.
pub(crate) fn reset_after_fork() {}

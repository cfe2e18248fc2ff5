//! mproc-sync (under construction).

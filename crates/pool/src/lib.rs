//! mproc-pool (under construction).

//! mproc-channel (under construction).

//! mproc-spawn (under construction).

//! mproc-shm (under construction).

//! mproc-channel (under construction): `Pipe`/`Connection`, `Listener`/`Client`, `Queue`,
//! `SimpleQueue`, `JoinableQueue`.
#![deny(unsafe_code)]

// Connections, pipes, wait() and Listener/Client: the connection work owns these.
// Queues: the queue work owns these.

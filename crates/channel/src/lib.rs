//! mproc-channel (under construction): `Pipe`/`Connection`, `Listener`/`Client`, `Queue`,
//! `SimpleQueue`, `JoinableQueue`.
#![deny(unsafe_code)]

// Connections, pipes, wait() and Listener/Client: the connection work owns these.
mod conn;
pub use conn::{
    Address, AuthenticationError, BytesView, Client, ConnectError, Connection,
    DEFAULT_MAX_MESSAGE_SIZE, Listener, Pipe, Received, RecvError, SendError, Waitable, wait,
};
// Queues: the queue work owns these.
mod queue;
pub use queue::{
    CorruptMessage, DEFAULT_CAPACITY, DEFAULT_SLOT_SIZE, GetError, InPlace, JoinableQueue,
    MessageRef, PutError, Queue, QueueBuilder, QueueCreateError, SimpleQueue, TaskDoneError,
};

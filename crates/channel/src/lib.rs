//! Messaging between processes for mproc: Python's `Pipe`/`Connection`,
//! `Listener`/`Client`, `Queue`, `SimpleQueue` and `JoinableQueue`.
//!
//! - [`Pipe`] gives two [`Connection`]s over a Unix socketpair: framed rkyv messages
//!   (handles included), raw bytes, `poll`, and [`wait`] on many at once.
//! - [`Queue`] is a bounded multi-producer multi-consumer ring in shared memory;
//!   [`SimpleQueue`] and [`JoinableQueue`] as in Python. Messages larger than a slot
//!   travel beside the ring; [`Queue::get_ref`] reads a message in place.
//! - [`Listener`] / [`Client`]: named Unix or TCP endpoints with Python's HMAC
//!   challenge on an auth key.
//!
//! Every message is checked on receipt: corrupt bytes are a typed error, never UB.
//!
//! ```
//! use mproc_channel::Queue;
//! use mproc_spawn::Process;
//!
//! fn producer(q: Queue<(u32, String)>) {
//!     for i in 0..3 {
//!         q.put((i, format!("item {i}"))).unwrap();
//!     }
//! }
//!
//! let q = Queue::new().unwrap();
//! let mut p = Process::new(producer, q.clone());
//! p.start().unwrap();
//! let got: Vec<(u32, String)> = (0..3).map(|_| q.get().unwrap()).collect();
//! p.join().unwrap();
//! assert_eq!(got[2], (2, "item 2".to_string()));
//! ```
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
    CorruptMessage, DEFAULT_ARENA_CHUNKS, DEFAULT_CAPACITY, DEFAULT_CHUNK_SIZE, DEFAULT_SLOT_SIZE,
    GetError, InPlace, JoinableQueue, MessageRef, PutError, Queue, QueueBuilder, QueueCreateError,
    SimpleQueue, TaskDoneError,
};

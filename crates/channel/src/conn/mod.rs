//! Connections: Python's `multiprocessing.Pipe`, `Connection`,
//! `multiprocessing.connection.wait`, and `Listener` / `Client`.
//!
//! ```
//! use mproc_channel::Pipe;
//! let (parent, child) = Pipe(true).unwrap();
//! child.send(&String::from("hello")).unwrap();
//! // Read in place, validated, without deserialising:
//! let msg = parent.recv_view::<String>().unwrap();
//! assert_eq!(msg.as_str(), "hello");
//! ```
mod connection;
mod error;
mod listener;
#[allow(unsafe_code)]
mod sys;
mod wait;

pub use connection::{BytesView, Connection, DEFAULT_MAX_MESSAGE_SIZE, Pipe, Received};
pub use error::{RecvError, SendError};
pub use listener::{Address, AuthenticationError, Client, ConnectError, Listener};
pub use wait::{Waitable, wait};

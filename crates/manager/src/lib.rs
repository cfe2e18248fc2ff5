//! mproc-manager: Python's `multiprocessing.managers` for Rust. A manager is a server
//! process that holds shared objects; other processes reach them through typed proxies,
//! on this machine (Unix sockets) or another (TCP), authenticated with an HMAC key.
//!
//! ```
//! use mproc_manager::Manager;
//! let m = Manager::start().unwrap();
//! let d = m.dict::<u32, u64>().unwrap();
//! d.insert(&2, &4).unwrap();
//! assert_eq!(d.get(&2).unwrap(), Some(4));
//! ```
//!
//! - [`Manager`]: [`start`](Manager::start) a server process (any start method; it dies
//!   with this process), [`connect`](Manager::connect) to one by address and key, or
//!   [`serve`](Manager::serve) in this process.
//! - Proxies: [`ListProxy`], [`ArrayProxy`], [`DictProxy`], [`ValueProxy`],
//!   [`NamespaceProxy`], [`QueueProxy`], [`LockProxy`], [`RLockProxy`],
//!   [`SemaphoreProxy`], [`EventProxy`], [`ConditionProxy`], [`BarrierProxy`],
//!   [`PoolProxy`] (a process pool in the server, with [`AsyncResultProxy`] and
//!   [`IMapProxy`]), and [`Proxy`] for custom objects. Every proxy but `IMapProxy` is a
//!   handle (`mproc_core::Transfer`): pass it to a `Process`, a pool task, through a
//!   queue or into another manager object (nested proxies); it reconnects where it
//!   lands.
//! - Reference counting as in CPython: an object lives while a proxy to it lives in any
//!   process or inside another manager object; a client that dies releases its
//!   references, and the locks it held.
//! - [`SharedMemoryManager`]: segments made by the server, unlinked at its shutdown or
//!   when its owner dies.
//! - Errors are [`ManagerError`]s: a dead server is `ServerGone` at once, never a hang.
//! - Calls on this machine (Unix-socket and abstract addresses, always for
//!   [`Manager::start`]) travel through a shared-memory region per connection with a
//!   futex doorbell, about 1–2 µs a call against ~16 µs for a socket round trip; TCP
//!   clients, and messages over 60 KiB, use the socket.
//!
//! Trust: an authenticated client may make the server run functions of this program
//! (custom objects, `sort`, pool tasks), as Python's manager unpickles what an
//! authenticated peer sends. Keep the auth key secret. Clients that run another build
//! are refused those calls; the plain containers work with any build.
#![deny(unsafe_code)]

mod bell;
mod client;
mod error;
mod manager;
mod pool_proxy;
mod pooled;
mod proxy;
mod server;
mod shm;
#[allow(unsafe_code)]
mod sys;
mod wire;

pub use error::{ManagerError, Result};
pub use manager::{Manager, ManagerBuilder, PoolProxyBuilder};
pub use pool_proxy::IMapProxy;
pub use proxy::{
    ArrayProxy, AsyncResultProxy, BarrierProxy, ConditionProxy, DictProxy, EventProxy, ListProxy,
    LockProxy, NamespaceProxy, PoolProxy, Proxy, QueueProxy, RLockProxy, SemaphoreProxy,
    ValueProxy,
};
pub use server::Server;
#[doc(hidden)]
pub use server::fuzz_request;
pub use shm::SharedMemoryManager;

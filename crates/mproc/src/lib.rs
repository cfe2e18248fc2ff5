//! mproc: Python's `multiprocessing`, done right in Rust.
//!
//! This umbrella crate re-exports the mproc crates; each can also be used alone.
//!
//! | Python | mproc crate |
//! |---|---|
//! | `Process`, `get_context`, `current_process` | [`spawn`] (`mproc-spawn`) |
//! | `Lock`, `RLock`, `Semaphore`, `Condition`, `Event`, `Barrier` | [`sync`] (`mproc-sync`) |
//! | `shared_memory.SharedMemory`, `Value`, `Array` | [`shm`] (`mproc-shm`) |
//! | `Pipe`, `Queue`, `SimpleQueue`, `JoinableQueue`, `connection` | [`channel`] (`mproc-channel`) |
//! | `Pool`, `concurrent.futures.ProcessPoolExecutor` | [`pool`] (`mproc-pool`) |
//! | `Manager`, `managers.BaseManager`, `SyncManager` | [`manager`] (`mproc-manager`) |
//!
//! See `docs/guide.md` for the full Python-to-Rust map.

#[doc(inline)]
pub use mproc_channel as channel;
#[doc(inline)]
pub use mproc_core as core;
#[doc(inline)]
pub use mproc_manager as manager;
#[doc(inline)]
pub use mproc_pool as pool;
#[doc(inline)]
pub use mproc_shm as shm;
#[doc(inline)]
pub use mproc_spawn as spawn;
#[doc(inline)]
pub use mproc_sync as sync;

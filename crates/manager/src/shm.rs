//! `SharedMemoryManager`: Python's `multiprocessing.managers.SharedMemoryManager`.
use crate::client::unexpected;
use crate::error::{ManagerError, Result};
use crate::manager::{Manager, ManagerBuilder};
use crate::wire::{Op, Reply, WireItem};
use mproc_shm::{Item, ShareableList, SharedMemory};

/// A manager whose server creates shared memory segments and unlinks every one of them
/// when it shuts down, or when its owner dies (even by `SIGKILL`: the server dies with
/// its owner, and the server's resource tracker unlinks what the server created).
///
/// ```
/// use mproc_manager::SharedMemoryManager;
/// let smm = SharedMemoryManager::start().unwrap();
/// let shm = smm.shared_memory(64).unwrap();
/// shm.write(0, b"hi").unwrap();
/// let sl = smm.shareable_list(&[1i64.into(), "two".into()]).unwrap();
/// assert_eq!(sl.len(), 2);
/// smm.shutdown().unwrap(); // both segments are unlinked
/// ```
///
/// Segments are opened by name in this process, so their users never unlink them;
/// they stay usable (mapped) after the shutdown, as in Python, until dropped.
#[derive(Debug)]
pub struct SharedMemoryManager {
    m: Manager,
}

impl SharedMemoryManager {
    /// Starts the server process (Python's `SharedMemoryManager()` + `start()`).
    ///
    /// # Errors
    /// As [`Manager::start`].
    pub fn start() -> Result<Self> {
        Ok(SharedMemoryManager {
            m: Manager::start()?,
        })
    }

    /// Starts a server built by `b` (address, key, start method).
    ///
    /// # Errors
    /// As [`ManagerBuilder::start`].
    pub fn start_with(b: ManagerBuilder) -> Result<Self> {
        Ok(SharedMemoryManager { m: b.start()? })
    }

    /// The underlying manager (for lists, dicts and the rest on the same server).
    pub fn manager(&self) -> &Manager {
        &self.m
    }

    fn name(r: Reply) -> Result<String> {
        match r {
            Reply::Names(mut n) if n.len() == 1 => Ok(n.remove(0)),
            other => Err(unexpected(&other)),
        }
    }

    /// A new segment of `size` bytes (Python's `smm.SharedMemory(size)`).
    ///
    /// # Errors
    /// `Unsupported` if the server could not create it (out of space, size 0);
    /// transport errors; `Io` if it could not be opened here.
    pub fn shared_memory(&self, size: usize) -> Result<SharedMemory> {
        let name = Self::name(
            self.m
                .session()
                .call(0, Op::ShmCreate { size: size as u64 })?,
        )?;
        SharedMemory::open(&name).map_err(|e| ManagerError::Io(std::io::Error::other(e)))
    }

    /// A new `ShareableList` holding `items` (Python's `smm.ShareableList(items)`).
    ///
    /// # Errors
    /// As [`shared_memory`](Self::shared_memory).
    pub fn shareable_list(&self, items: &[Item]) -> Result<ShareableList> {
        let items = items.iter().map(WireItem::from).collect();
        let name = Self::name(self.m.session().call(0, Op::ShmList { items })?)?;
        ShareableList::open(&name).map_err(|e| ManagerError::Io(std::io::Error::other(e)))
    }

    /// The names of the segments the server made and will unlink.
    ///
    /// # Errors
    /// Transport errors.
    pub fn segment_names(&self) -> Result<Vec<String>> {
        match self.m.session().call(0, Op::ShmNames)? {
            Reply::Names(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }

    /// The server's pid.
    pub fn pid(&self) -> Option<i32> {
        self.m.pid()
    }

    /// Stops the server, which unlinks every segment it made.
    ///
    /// # Errors
    /// As [`Manager::shutdown`].
    pub fn shutdown(self) -> Result<()> {
        self.m.shutdown()
    }
}

//! [`SegmentScope`]: an owner scope that unlinks every segment it created when
//! it ends (the cleanup of Python's `multiprocessing.managers.SharedMemoryManager`,
//! without its server process; `mproc::manager::SharedMemoryManager` is the one with a server).
use crate::error::CreateError;
use crate::list::{Item, ShareableList};
use crate::segment::SharedMemory;
use std::fmt;
use std::sync::Mutex;

/// What the manager keeps of each segment: the creating handle, which alone may tell
/// the tracker the name is gone.
enum Owned {
    Segment(SharedMemory),
    List(ShareableList),
}

impl Owned {
    fn name(&self) -> &str {
        match self {
            Owned::Segment(s) => s.name(),
            Owned::List(l) => l.name(),
        }
    }

    fn unlink(&self) {
        // Already gone (someone unlinked it by name) is fine.
        let _ = match self {
            Owned::Segment(s) => s.unlink(),
            Owned::List(l) => l.unlink(),
        };
    }
}

/// Creates segments and lists and unlinks all of them when it is shut down or dropped
/// (the cleanup of Python's `SharedMemoryManager`: `with SharedMemoryManager() as smm:` … the block's
/// end unlinks everything `smm.SharedMemory(...)` / `smm.ShareableList(...)` made).
///
/// Unlike Python's, it runs no server process: the scope lives in the process that
/// made it, and its tracker still unlinks the segments if that process is killed. The
/// handles it returns stay usable after the shutdown (the memory lives while mapped);
/// only the names go, so nobody can attach any more.
///
/// ```
/// use mproc_shm::{SharedMemory, SegmentScope};
/// let name;
/// {
///     let smm = SegmentScope::new();
///     let shm = smm.shared_memory(128)?;
///     name = shm.name().to_owned();
///     assert!(SharedMemory::open(&name).is_ok()); // another process could attach
/// } // the manager ends: every name it created is unlinked
/// assert!(SharedMemory::open(&name).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[doc(alias = "SharedMemoryManager")]
#[derive(Default)]
pub struct SegmentScope {
    owned: Mutex<Vec<Owned>>,
}

impl fmt::Debug for SegmentScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentScope")
            .field("names", &self.names())
            .finish()
    }
}

impl SegmentScope {
    /// A manager that owns nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn keep(&self, o: Owned) {
        self.owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(o);
    }

    /// A new segment of `size` bytes with a fresh name (Python:
    /// `smm.SharedMemory(size)`), unlinked when the manager ends.
    ///
    /// # Errors
    /// As [`SharedMemory::create`].
    pub fn shared_memory(&self, size: usize) -> Result<SharedMemory, CreateError> {
        let created = SharedMemory::create(size)?;
        let handle = created.try_clone().map_err(CreateError::Io);
        self.keep(Owned::Segment(created));
        handle
    }

    /// A new [`ShareableList`] holding `items` (Python: `smm.ShareableList(items)`),
    /// unlinked when the manager ends.
    ///
    /// # Errors
    /// As [`ShareableList::new`].
    pub fn shareable_list(&self, items: &[Item]) -> Result<ShareableList, CreateError> {
        let created = ShareableList::new(items)?;
        let handle = ShareableList::open(created.name())
            .map_err(|e| CreateError::Io(std::io::Error::other(e.to_string())));
        self.keep(Owned::List(created));
        handle
    }

    /// The names of the segments it owns and has not unlinked yet.
    pub fn names(&self) -> Vec<String> {
        self.owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|o| o.name().to_owned())
            .collect()
    }

    /// Unlinks every segment it created (Python: `shutdown()`); dropping the manager
    /// does the same. Calling it again does nothing.
    pub fn shutdown(&self) {
        let owned = std::mem::take(
            &mut *self
                .owned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for o in &owned {
            o.unlink();
        }
    }
}

impl Drop for SegmentScope {
    fn drop(&mut self) {
        self.shutdown();
    }
}

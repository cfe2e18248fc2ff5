//! Named POSIX shared memory segments: Python's `multiprocessing.shared_memory.SharedMemory`.
use crate::error::{
    AccessError, CreateError, CreateOrOpenError, IndexError, NameError, OpenError, UnlinkError,
};
use crate::name;
use crate::sys::{Shared, ShmAtomic};
use crate::tracker::{self, Registration};
use bytemuck::Pod;
use memmap2::{Advice, MmapOptions, MmapRaw};
use mproc_core::transfer::{Exporter, Importer, Transfer, TransferError};
use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::shm;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// A named block of shared memory (`/dev/shm/NAME`), Python's `SharedMemory`.
///
/// - [`SharedMemory::create`] makes a new segment with a fresh name,
///   [`SharedMemory::create_named`] with a name of yours, and [`SharedMemory::open`]
///   attaches to an existing one by name. Another process reaches it by name, or by
///   receiving the handle itself (it implements [`Transfer`], so it can be a process
///   argument or part of a message under every start method).
/// - Dropping a handle closes it (unmaps); it never unlinks. [`SharedMemory::unlink`]
///   removes the name. If the creating process ends without unlinking (normal exit,
///   panic, `SIGKILL`), its resource tracker unlinks every segment it created. A
///   process that only opened a segment never unlinks it behind anyone's back.
/// - All access is sound while other processes write: copies in and out
///   ([`read`](Self::read), [`write`](Self::write), [`read_at`](Self::read_at),
///   [`view`](Self::view)), atomics ([`atomic`](Self::atomic)), and `unsafe` slices
///   whose contract the caller keeps ([`as_slice`](Self::as_slice)).
///
/// A process that shrinks a segment others have mapped (`ftruncate`) makes their
/// accesses beyond the new end fail with `SIGBUS`; mproc never resizes a segment.
///
/// ```
/// use mproc_shm::SharedMemory;
/// let shm = SharedMemory::create(4096)?;
/// shm.write(0, b"hello")?;
/// let other = SharedMemory::open(shm.name())?; // what another process would do
/// let mut buf = [0u8; 5];
/// other.read(0, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// shm.unlink()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SharedMemory {
    name: String,
    size: usize,
    map: MmapRaw,
    fd: OwnedFd,
    /// The tracker registration made when this handle created the segment; `None`
    /// for a handle that opened it, was received, or was created untracked.
    creator: Option<Registration>,
    /// Set once the registration has been cancelled (so a second `unlink` never frees
    /// a slot that another segment has taken since).
    unregistered: AtomicBool,
    populate: bool,
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("creator", &self.creator.is_some())
            .finish()
    }
}

/// Options for creating or opening a [`SharedMemory`] (see [`SharedMemory::builder`]).
#[derive(Debug, Clone)]
pub struct SharedMemoryBuilder {
    name: Option<String>,
    size: Option<usize>,
    track: bool,
    populate: bool,
    huge_pages: bool,
    mode: u32,
}

impl SharedMemoryBuilder {
    /// The segment's name (`"block"` or `"/block"`); a fresh one if not given.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Size in bytes: required by [`create`](Self::create); for
    /// [`open`](Self::open), the size the segment must have.
    pub fn size(mut self, size: usize) -> Self {
        self.size = Some(size);
        self
    }

    /// Whether the resource tracker unlinks the segment when the creating process ends
    /// without unlinking it (default `true`; Python 3.13's `track=`). With `false` the
    /// segment outlives its creator until someone calls [`unlink`](crate::unlink).
    pub fn track(mut self, track: bool) -> Self {
        self.track = track;
        self
    }

    /// Pre-fault the whole mapping when it is made (`MAP_POPULATE`): one system call
    /// allocates and maps every page instead of one page fault per page on first touch.
    /// Worth it when the whole segment will be used; costs time and memory up front.
    /// Travels with the handle: a process that receives it maps it the same way.
    pub fn populate(mut self, populate: bool) -> Self {
        self.populate = populate;
        self
    }

    /// Ask for transparent huge pages (`MADV_HUGEPAGE`). Takes effect only where the
    /// system allows huge pages for shared memory
    /// (`/sys/kernel/mm/transparent_hugepage/shmem_enabled`); harmless elsewhere.
    pub fn huge_pages(mut self, huge: bool) -> Self {
        self.huge_pages = huge;
        self
    }

    /// Permission bits of a new segment (default `0o600`: this user only).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Creates the segment; fails if the name exists.
    ///
    /// # Errors
    /// [`CreateError`]: a bad name, a zero or missing size, an existing name, or a
    /// system failure.
    pub fn create(self) -> Result<SharedMemory, CreateError> {
        let size = self.size.unwrap_or(0);
        if size == 0 {
            return Err(CreateError::ZeroSize);
        }
        match &self.name {
            Some(n) => {
                let bare = name::check(n)?.to_owned();
                self.create_as(bare, size)
            }
            None => {
                // A fresh name collides only by astronomically bad luck; try a few.
                let mut last = None;
                for _ in 0..8 {
                    match self.create_as(name::generate(), size) {
                        Err(CreateError::AlreadyExists { name }) => {
                            last = Some(name);
                        }
                        r => return r,
                    }
                }
                Err(CreateError::AlreadyExists {
                    name: last.unwrap_or_default(),
                })
            }
        }
    }

    fn create_as(&self, bare: String, size: usize) -> Result<SharedMemory, CreateError> {
        let path = slash(&bare);
        let fd = match shm::open(
            path.as_str(),
            shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR,
            Mode::from_raw_mode(self.mode),
        ) {
            Ok(fd) => fd,
            Err(Errno::EXIST) => return Err(CreateError::AlreadyExists { name: bare }),
            Err(e) => return Err(CreateError::Io(e.into())),
        };
        let undo = |e: CreateError| {
            let _ = shm::unlink(path.as_str());
            e
        };
        if let Err(e) = rustix::fs::ftruncate(&fd, size as u64) {
            return Err(undo(CreateError::Io(e.into())));
        }
        let map = match map(&fd, size, self.populate, self.huge_pages) {
            Ok(m) => m,
            Err(e) => return Err(undo(CreateError::Io(e))),
        };
        let creator = if self.track {
            match tracker::register(&bare) {
                Ok(reg) => Some(reg),
                Err(e) => return Err(undo(CreateError::Tracker(e))),
            }
        } else {
            None
        };
        Ok(SharedMemory {
            name: bare,
            size,
            map,
            fd,
            creator,
            unregistered: AtomicBool::new(false),
            populate: self.populate,
        })
    }

    /// Opens an existing segment (never creates, never unlinks).
    ///
    /// # Errors
    /// [`OpenError`]: a bad name, no such segment, a size other than the one given to
    /// [`size`](Self::size), a segment with no size yet, or a system failure.
    pub fn open(self) -> Result<SharedMemory, OpenError> {
        let given = self.name.as_deref().ok_or(NameError::Empty)?;
        let bare = name::check(given)?.to_owned();
        let fd = match shm::open(slash(&bare).as_str(), shm::OFlags::RDWR, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(OpenError::NotFound { name: bare }),
            Err(Errno::ACCESS) | Err(Errno::PERM) => {
                return Err(OpenError::PermissionDenied { name: bare });
            }
            Err(e) => return Err(OpenError::Io(e.into())),
        };
        let actual = file_size(&fd).map_err(OpenError::Io)?;
        if let Some(expected) = self.size
            && expected != actual
        {
            return Err(OpenError::SizeMismatch { expected, actual });
        }
        if actual == 0 {
            return Err(OpenError::Empty { name: bare });
        }
        let map = map(&fd, actual, self.populate, self.huge_pages).map_err(OpenError::Io)?;
        Ok(SharedMemory {
            name: bare,
            size: actual,
            map,
            fd,
            creator: None,
            unregistered: AtomicBool::new(false),
            populate: self.populate,
        })
    }
}

impl SharedMemoryBuilder {
    /// Creates the named segment, or opens it if it exists already: one call for
    /// "whoever comes first makes it" (Python: try `create=True`, fall back to
    /// attaching). [`SharedMemory::is_creator`] tells which happened; only the creator's
    /// tracker unlinks it. An existing segment must have the given size.
    ///
    /// # Errors
    /// [`CreateOrOpenError::Create`]: no name, a bad name, a zero size, or a system
    /// failure; [`CreateOrOpenError::Open`]: the existing segment has another size, or
    /// belongs to another user, or its creator never sized it (after about a second).
    pub fn create_or_open(self) -> Result<SharedMemory, CreateOrOpenError> {
        if self.name.is_none() {
            return Err(CreateOrOpenError::Create(CreateError::InvalidName(
                NameError::Empty,
            )));
        }
        let size = self.size.unwrap_or(0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            match self.clone().create() {
                Ok(shm) => return Ok(shm),
                Err(CreateError::AlreadyExists { .. }) => {}
                Err(e) => return Err(CreateOrOpenError::Create(e)),
            }
            match self.clone().size(size).open() {
                Ok(shm) => return Ok(shm),
                // Unlinked between our two calls: create it ourselves.
                Err(OpenError::NotFound { .. }) => continue,
                // Its creator is between `shm_open` and `ftruncate`: wait for the size.
                Err(OpenError::Empty { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => return Err(CreateOrOpenError::Open(e)),
            }
        }
    }
}

fn slash(bare: &str) -> String {
    let mut s = String::with_capacity(bare.len() + 1);
    s.push('/');
    s.push_str(bare);
    s
}

fn file_size(fd: &OwnedFd) -> io::Result<usize> {
    let st = rustix::fs::fstat(fd)?;
    usize::try_from(st.st_size).map_err(|_| io::Error::other("segment size out of range"))
}

fn map(fd: &OwnedFd, size: usize, populate: bool, huge: bool) -> io::Result<MmapRaw> {
    let mut opts = MmapOptions::new();
    opts.len(size);
    if populate {
        opts.populate();
    }
    let map = opts.map_raw(fd)?;
    if huge {
        // Advisory: refused where shared huge pages are off, which is not an error.
        let _ = map.advise(Advice::HugePage);
    }
    Ok(map)
}

impl SharedMemory {
    /// A builder for the less common options (name, tracking, pre-faulting, mode).
    pub fn builder() -> SharedMemoryBuilder {
        SharedMemoryBuilder {
            name: None,
            size: None,
            track: true,
            populate: false,
            huge_pages: false,
            mode: 0o600,
        }
    }

    /// Creates a segment of `size` bytes with a fresh name (Python's
    /// `SharedMemory(create=True, size=size)`). The memory starts zeroed.
    ///
    /// # Errors
    /// [`CreateError::ZeroSize`] for `size == 0`, or a system failure.
    pub fn create(size: usize) -> Result<Self, CreateError> {
        Self::builder().size(size).create()
    }

    /// Creates a segment named `name` (`"block"` or `"/block"`) of `size` bytes
    /// (Python's `SharedMemory(name, create=True, size=size)`).
    ///
    /// # Errors
    /// [`CreateError`]: a bad name, a zero size, an existing name, a system failure.
    pub fn create_named(name: &str, size: usize) -> Result<Self, CreateError> {
        Self::builder().name(name).size(size).create()
    }

    /// Opens the existing segment `name` (Python's `SharedMemory(name)`). Its size is
    /// whatever the creator gave it.
    ///
    /// # Errors
    /// [`OpenError`]: a bad name, no such segment, a segment with no size yet.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::builder().name(name).open()
    }

    /// Creates the segment `name` of `size` bytes, or opens it (with that size) if it
    /// exists: see [`SharedMemoryBuilder::create_or_open`].
    ///
    /// ```
    /// use mproc_shm::SharedMemory;
    /// let name = format!("doc_create_or_open_{}", std::process::id());
    /// let first = SharedMemory::create_or_open(&name, 64)?;   // creates
    /// let second = SharedMemory::create_or_open(&name, 64)?;  // attaches
    /// assert!(first.is_creator() && !second.is_creator());
    /// first.unlink()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`SharedMemoryBuilder::create_or_open`].
    pub fn create_or_open(name: &str, size: usize) -> Result<Self, CreateOrOpenError> {
        Self::builder().name(name).size(size).create_or_open()
    }

    /// Opens the existing segment `name`, which must have exactly `size` bytes.
    ///
    /// # Errors
    /// As [`open`](Self::open), plus [`OpenError::SizeMismatch`].
    pub fn open_sized(name: &str, size: usize) -> Result<Self, OpenError> {
        Self::builder().name(name).size(size).open()
    }

    /// The name, without a leading `/` (as Python shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Size in bytes (same as [`size`](Self::size)).
    pub fn len(&self) -> usize {
        self.size
    }

    /// Always false: segments are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether this handle created the segment in this process (and so its tracker
    /// will unlink it if the process ends first).
    pub fn is_creator(&self) -> bool {
        self.creator.is_some_and(|r| r.is_ours())
    }

    /// The fd of the segment.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Start of the mapping (page-aligned), valid for [`size`](Self::size) bytes while
    /// `self` lives. Other processes may write through it at any time.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    pub(crate) fn shared(&self) -> Shared<'_> {
        Shared::of_mmap(&self.map)
    }

    fn range(&self, offset: usize, len: usize) -> AccessError {
        AccessError::OutOfRange {
            offset,
            len,
            size: self.size,
        }
    }

    /// Copies `dst.len()` bytes starting at `offset` into `dst`.
    ///
    /// # Errors
    /// [`AccessError::OutOfRange`] if the range leaves the segment.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), AccessError> {
        self.shared()
            .read(offset, dst)
            .ok_or_else(|| self.range(offset, dst.len()))
    }

    /// Copies `src` into the segment at `offset`.
    ///
    /// # Errors
    /// [`AccessError::OutOfRange`] if the range leaves the segment.
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), AccessError> {
        self.shared()
            .write(offset, src)
            .ok_or_else(|| self.range(offset, src.len()))
    }

    /// Sets `len` bytes at `offset` to `byte`.
    ///
    /// # Errors
    /// [`AccessError::OutOfRange`] if the range leaves the segment.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), AccessError> {
        self.shared()
            .fill(offset, len, byte)
            .ok_or_else(|| self.range(offset, len))
    }

    /// A copy of the whole segment.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.size];
        self.shared()
            .read(0, &mut v)
            .expect("the whole segment is in range");
        v
    }

    /// Reads a `T` at byte `offset` (any alignment). A concurrent writer can tear it,
    /// which leaves a valid `T` all the same (`Pod`).
    ///
    /// # Errors
    /// [`AccessError::OutOfRange`] if it does not fit.
    pub fn read_at<T: Pod>(&self, offset: usize) -> Result<T, AccessError> {
        self.shared()
            .read_pod(offset)
            .ok_or_else(|| self.range(offset, size_of::<T>()))
    }

    /// Writes `value` at byte `offset` (any alignment).
    ///
    /// # Errors
    /// [`AccessError::OutOfRange`] if it does not fit.
    pub fn write_at<T: Pod>(&self, offset: usize, value: T) -> Result<(), AccessError> {
        self.shared()
            .write_pod(offset, value)
            .ok_or_else(|| self.range(offset, size_of::<T>()))
    }

    fn check_aligned(&self, offset: usize, len: usize, align: usize) -> Result<(), AccessError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(self.range(offset, len));
        }
        if !offset.is_multiple_of(align) {
            return Err(AccessError::Misaligned { offset, align });
        }
        Ok(())
    }

    /// The atomic integer at byte `offset` (`AtomicU32`, `AtomicI64` …), shared with
    /// every process that maps the segment.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// let shm = mproc_shm::SharedMemory::create(64)?;
    /// let counter = shm.atomic::<AtomicU64>(8)?;
    /// counter.fetch_add(5, Ordering::SeqCst);
    /// assert_eq!(shm.read_at::<u64>(8)?, 5);
    /// # shm.unlink()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`AccessError`]: out of range, or `offset` not aligned for `A`.
    pub fn atomic<A: ShmAtomic>(&self, offset: usize) -> Result<&A, AccessError> {
        self.check_aligned(offset, size_of::<A>(), align_of::<A>())?;
        Ok(self.shared().atomic(offset).expect("checked"))
    }

    /// `count` consecutive atomics starting at byte `offset`.
    ///
    /// # Errors
    /// [`AccessError`]: out of range, or `offset` not aligned for `A`.
    pub fn atomics<A: ShmAtomic>(&self, offset: usize, count: usize) -> Result<&[A], AccessError> {
        let len = count
            .checked_mul(size_of::<A>())
            .ok_or_else(|| self.range(offset, usize::MAX))?;
        self.check_aligned(offset, len, align_of::<A>())?;
        Ok(self.shared().atomics(offset, count).expect("checked"))
    }

    /// A typed view of `count` elements of `T` starting at byte `offset` (which must be
    /// aligned for `T`): copying element access, safe while other processes write.
    ///
    /// ```
    /// let shm = mproc_shm::SharedMemory::create(8 * 10)?;
    /// let v = shm.view::<i64>(0, 10)?;
    /// v.write_from(0, &[1, 2, 3])?;
    /// assert_eq!(v.get(2)?, 3);
    /// assert_eq!(v.iter().sum::<i64>(), 6);
    /// # shm.unlink()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`AccessError`]: out of range, or `offset` not aligned for `T`.
    pub fn view<T: Pod>(&self, offset: usize, count: usize) -> Result<View<'_, T>, AccessError> {
        let len = count
            .checked_mul(size_of::<T>())
            .ok_or_else(|| self.range(offset, usize::MAX))?;
        self.check_aligned(offset, len, align_of::<T>())?;
        // The window starts at `offset`, so element 0 is there.
        let base = self.shared();
        Ok(View {
            base,
            offset,
            len: count,
            _t: PhantomData,
        })
    }

    /// As many whole `T`s as fit, from byte 0.
    pub fn view_all<T: Pod>(&self) -> View<'_, T> {
        let count = if size_of::<T>() == 0 {
            0
        } else {
            self.size / size_of::<T>()
        };
        self.view(0, count).expect("page-aligned and in range")
    }

    /// Pre-faults every page for writing now (`MADV_POPULATE_WRITE`), so later accesses
    /// take no page faults. Useful in a process that opened a big segment it will fill.
    pub fn prefault(&self) -> io::Result<()> {
        self.map.advise(Advice::PopulateWrite)
    }

    /// Pre-faults the pages covering `offset..offset + len` for writing
    /// (`MADV_POPULATE_WRITE`). Page faults cost microseconds each on fresh memory; a
    /// process that knows another will soon fill part of a new segment can fault in
    /// that part meanwhile, on another core (`shm.bw` in the benchmarks does this).
    ///
    /// Advisory: where the kernel cannot (before Linux 5.14, or out of memory), the
    /// pages simply fault in on first touch, as they would have anyway.
    ///
    /// # Errors
    /// [`AccessError::OutOfRange`] if the range leaves the segment.
    pub fn prefault_range(&self, offset: usize, len: usize) -> Result<(), AccessError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(self.range(offset, len));
        }
        if len == 0 {
            return Ok(());
        }
        let page = rustix::param::page_size();
        let start = offset - offset % page;
        let end = (offset + len).div_ceil(page) * page;
        let end = end.min(self.map.len().div_ceil(page) * page);
        let _ = self
            .map
            .advise_range(Advice::PopulateWrite, start, end - start);
        Ok(())
    }

    /// Removes the name (Python's `unlink()`): new [`open`](Self::open)s fail, while
    /// every process that has it mapped keeps using it; the memory is freed when the
    /// last one closes it. Any process may call it, explicitly; only the creator's call
    /// also tells its tracker the name is gone.
    ///
    /// # Errors
    /// [`UnlinkError::NotFound`] if the name is already gone.
    pub fn unlink(&self) -> Result<(), UnlinkError> {
        let r = unlink(&self.name);
        if let Some(reg) = self.creator
            && reg.is_ours()
            && !matches!(r, Err(UnlinkError::Io(_)))
            && !self.unregistered.swap(true, Ordering::AcqRel)
        {
            tracker::unregister(reg);
        }
        r
    }

    /// A second handle on the same segment (its own fd and mapping). It is not the
    /// creator: it never tells the tracker anything.
    pub fn try_clone(&self) -> io::Result<Self> {
        let fd = self.fd.try_clone()?;
        let map = map(&fd, self.size, self.populate, false)?;
        Ok(SharedMemory {
            name: self.name.clone(),
            size: self.size,
            map,
            fd,
            creator: None,
            unregistered: AtomicBool::new(false),
            populate: self.populate,
        })
    }
}

/// Removes the segment `name` (`"block"` or `"/block"`) from `/dev/shm`
/// (`shm_unlink`). Processes that have it mapped keep it until they close it.
///
/// # Errors
/// [`UnlinkError`]: a bad name, no such segment, or a system failure.
pub fn unlink(name: &str) -> Result<(), UnlinkError> {
    let bare = name::check(name).map_err(UnlinkError::InvalidName)?;
    match shm::unlink(slash(bare).as_str()) {
        Ok(()) => Ok(()),
        Err(Errno::NOENT) => Err(UnlinkError::NotFound {
            name: bare.to_owned(),
        }),
        Err(e) => Err(UnlinkError::Io(e.into())),
    }
}

impl Transfer for SharedMemory {
    const KIND: &'static str = "mproc_shm::SharedMemory";

    /// Crosses as its name, size and fd. The receiver maps the fd, so the segment
    /// arrives even if its name was unlinked meanwhile; it is never the creator.
    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        out.put_bytes(self.name.as_bytes());
        out.put_u64(self.size as u64);
        out.put_u64(u64::from(self.populate));
        out.put_fd(self.fd.as_fd())
    }

    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        let name = std::str::from_utf8(input.get_bytes()?)
            .map_err(|_| TransferError::Malformed("segment name"))?
            .to_owned();
        name::check(&name).map_err(|_| TransferError::Malformed("segment name"))?;
        let size = usize::try_from(input.get_u64()?)
            .map_err(|_| TransferError::Malformed("segment size"))?;
        let populate = input.get_u64()? != 0;
        let fd = input.take_fd()?;
        let actual = file_size(&fd)?;
        if size == 0 || actual < size {
            return Err(TransferError::Malformed("segment smaller than announced"));
        }
        let map = map(&fd, size, populate, false)?;
        Ok(SharedMemory {
            name,
            size,
            map,
            fd,
            creator: None,
            unregistered: AtomicBool::new(false),
            populate,
        })
    }
}

mproc_core::impl_handle_archive!(SharedMemory);

/// A typed window on part of a [`SharedMemory`]: `len` elements of `T`, reached by
/// copying (safe while other processes write), or as a slice under an `unsafe`
/// contract.
#[derive(Clone, Copy)]
pub struct View<'a, T> {
    base: Shared<'a>,
    offset: usize,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> fmt::Debug for View<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("View")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<'a, T: Pod> View<'a, T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, start: usize, n: usize) -> Result<(), IndexError> {
        match start.checked_add(n) {
            Some(end) if end <= self.len => Ok(()),
            Some(end) => Err(IndexError {
                index: end.max(start),
                len: self.len,
            }),
            None => Err(IndexError {
                index: usize::MAX,
                len: self.len,
            }),
        }
    }

    /// The window, the byte offset of element 0 and the element count.
    pub(crate) fn parts(&self) -> (Shared<'a>, usize, usize) {
        (self.base, self.offset, self.len)
    }

    fn byte(&self, index: usize) -> usize {
        self.offset + index * size_of::<T>()
    }

    /// A copy of element `index`.
    ///
    /// # Errors
    /// [`IndexError`] past the end.
    pub fn get(&self, index: usize) -> Result<T, IndexError> {
        if index >= self.len {
            return Err(IndexError {
                index,
                len: self.len,
            });
        }
        Ok(self.base.read_pod(self.byte(index)).expect("checked"))
    }

    /// Sets element `index`.
    ///
    /// # Errors
    /// [`IndexError`] past the end.
    pub fn set(&self, index: usize, value: T) -> Result<(), IndexError> {
        if index >= self.len {
            return Err(IndexError {
                index,
                len: self.len,
            });
        }
        self.base
            .write_pod(self.byte(index), value)
            .expect("checked");
        Ok(())
    }

    /// Copies elements `start..start + dst.len()` into `dst`.
    ///
    /// # Errors
    /// [`IndexError`] if the range passes the end.
    pub fn read_into(&self, start: usize, dst: &mut [T]) -> Result<(), IndexError> {
        self.check(start, dst.len())?;
        self.base
            .read(self.byte(start), bytemuck::cast_slice_mut(dst))
            .expect("checked");
        Ok(())
    }

    /// Copies `src` into elements `start..start + src.len()`.
    ///
    /// # Errors
    /// [`IndexError`] if the range passes the end.
    pub fn write_from(&self, start: usize, src: &[T]) -> Result<(), IndexError> {
        self.check(start, src.len())?;
        self.base
            .write(self.byte(start), bytemuck::cast_slice(src))
            .expect("checked");
        Ok(())
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Vec<T> {
        let mut v = vec![T::zeroed(); self.len];
        self.read_into(0, &mut v).expect("whole view");
        v
    }

    /// Iterates over copies of the elements (each read when reached).
    pub fn iter(&self) -> impl Iterator<Item = T> + 'a {
        let this = *self;
        (0..self.len).map(move |i| this.base.read_pod(this.byte(i)).expect("in range"))
    }
}

//! `ShareableList`: a fixed-length list of small values in a named segment (Python's
//! `multiprocessing.shared_memory.ShareableList`).
use crate::error::{CreateError, IndexError, OpenError, UnlinkError};
use crate::segment::SharedMemory;
use mproc_core::transfer::{Exporter, Importer, Transfer, TransferError};
use std::fmt;

/// One item of a [`ShareableList`]: the types Python's `ShareableList` holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Python's `None`.
    None,
    /// A `bool`.
    Bool(bool),
    /// An `int` (64-bit).
    Int(i64),
    /// A `float`.
    Float(f64),
    /// A `str`; at most the bytes its slot was made with.
    Str(String),
    /// A `bytes`; at most the bytes its slot was made with.
    Bytes(Vec<u8>),
}

impl Item {
    fn tag(&self) -> u8 {
        match self {
            Item::None => 0,
            Item::Bool(_) => 1,
            Item::Int(_) => 2,
            Item::Float(_) => 3,
            Item::Str(_) => 4,
            Item::Bytes(_) => 5,
        }
    }

    /// Bytes the payload needs.
    fn payload(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Item::None => (&[][..]).into(),
            Item::Bool(b) => vec![u8::from(*b)].into(),
            Item::Int(i) => i.to_le_bytes().to_vec().into(),
            Item::Float(f) => f.to_le_bytes().to_vec().into(),
            Item::Str(s) => s.as_bytes().into(),
            Item::Bytes(b) => b.as_slice().into(),
        }
    }
}

impl From<i64> for Item {
    fn from(v: i64) -> Self {
        Item::Int(v)
    }
}
impl From<f64> for Item {
    fn from(v: f64) -> Self {
        Item::Float(v)
    }
}
impl From<bool> for Item {
    fn from(v: bool) -> Self {
        Item::Bool(v)
    }
}
impl From<&str> for Item {
    fn from(v: &str) -> Self {
        Item::Str(v.to_owned())
    }
}
impl From<String> for Item {
    fn from(v: String) -> Self {
        Item::Str(v)
    }
}
impl From<Vec<u8>> for Item {
    fn from(v: Vec<u8>) -> Self {
        Item::Bytes(v)
    }
}

/// Why a [`ShareableList`] access failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListError {
    /// The index is past the end.
    Index(IndexError),
    /// The new item needs more bytes than its slot has (a slot keeps the size it was
    /// created with, at least 8 bytes, as in Python).
    TooLarge {
        /// The item's index.
        index: usize,
        /// The slot's capacity in bytes.
        capacity: usize,
        /// The bytes the new item needs.
        needed: usize,
    },
    /// The slot holds something no writer of this type produces (a write in progress
    /// in another process, or a segment that is not a list).
    Corrupt {
        /// The item's index.
        index: usize,
    },
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListError::Index(e) => e.fmt(f),
            ListError::TooLarge {
                index,
                capacity,
                needed,
            } => write!(
                f,
                "item {index} needs {needed} bytes, its slot holds {capacity}"
            ),
            ListError::Corrupt { index } => write!(f, "item {index} holds no valid value"),
        }
    }
}

impl std::error::Error for ListError {}

/// Why [`ShareableList::open`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ListOpenError {
    /// The segment could not be opened.
    Open(OpenError),
    /// The segment is not a `ShareableList` made by mproc.
    NotAList,
}

impl fmt::Display for ListOpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListOpenError::Open(e) => e.fmt(f),
            ListOpenError::NotAList => f.write_str("the segment is not an mproc ShareableList"),
        }
    }
}

impl std::error::Error for ListOpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ListOpenError::Open(e) => Some(e),
            ListOpenError::NotAList => None,
        }
    }
}

impl From<OpenError> for ListOpenError {
    fn from(e: OpenError) -> Self {
        ListOpenError::Open(e)
    }
}

const MAGIC: u64 = u64::from_le_bytes(*b"MPRCSL01");
/// Header: magic, item count.
const HEADER: usize = 16;
/// Per item in the table: offset and capacity of its slot.
const ENTRY: usize = 16;
/// In each slot: tag (padded to 8) and payload length, then the payload.
const SLOT_HEAD: usize = 16;

/// A fixed-length list of `None`/`bool`/`int`/`float`/`str`/`bytes` in a named segment
/// (Python's `ShareableList`). Other processes attach by name ([`ShareableList::open`])
/// or receive it as a handle. Each item may be replaced by any item that fits its slot
/// (a slot has the size of the item it was created with, at least 8 bytes).
///
/// Like Python's, it has no lock: an item read while another process rewrites it may be
/// torn, which shows as [`ListError::Corrupt`] or a mixed value, never as undefined
/// behaviour. Guard it with a `Lock` when several processes write.
///
/// ```
/// use mproc_shm::{Item, ShareableList};
/// let l = ShareableList::new(&["howdy".into(), Item::Int(42), Item::None, 1.5.into()])?;
/// l.set(1, Item::Int(-7))?;
/// l.set(0, "hi".into())?;
/// let other = ShareableList::open(l.name())?; // what another process does
/// assert_eq!(other.get(0)?, Item::Str("hi".into()));
/// assert_eq!(other.get(1)?, Item::Int(-7));
/// assert!(l.set(0, "far too long for the slot".into()).is_err());
/// l.unlink()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ShareableList {
    shm: SharedMemory,
    /// (offset, capacity) of each item's slot, read once and checked.
    slots: Vec<(usize, usize)>,
}

impl fmt::Debug for ShareableList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareableList")
            .field("name", &self.shm.name())
            .field("len", &self.slots.len())
            .finish()
    }
}

impl ShareableList {
    /// A new list holding `items`, in a segment with a fresh name.
    ///
    /// # Errors
    /// [`CreateError`] from creating the segment.
    pub fn new(items: &[Item]) -> Result<Self, CreateError> {
        Self::create(None, items)
    }

    /// A new list holding `items`, in the segment `name`.
    ///
    /// # Errors
    /// [`CreateError`] from creating the segment.
    pub fn create_named(name: &str, items: &[Item]) -> Result<Self, CreateError> {
        Self::create(Some(name), items)
    }

    fn create(name: Option<&str>, items: &[Item]) -> Result<Self, CreateError> {
        let mut slots = Vec::with_capacity(items.len());
        let mut off = HEADER + ENTRY * items.len();
        for it in items {
            let cap = it.payload().len().div_ceil(8).max(1) * 8;
            slots.push((off, cap));
            off += SLOT_HEAD + cap;
        }
        let mut b = SharedMemory::builder().size(off);
        if let Some(n) = name {
            b = b.name(n);
        }
        let shm = b.create()?;
        let put = |o: usize, v: u64| shm.write_at(o, v).expect("inside the new segment");
        put(0, MAGIC);
        put(8, items.len() as u64);
        for (i, &(o, cap)) in slots.iter().enumerate() {
            put(HEADER + ENTRY * i, o as u64);
            put(HEADER + ENTRY * i + 8, cap as u64);
        }
        let list = ShareableList { shm, slots };
        for (i, it) in items.iter().enumerate() {
            list.set(i, it.clone())
                .expect("each slot fits its first item");
        }
        Ok(list)
    }

    /// Attaches to the list in segment `name` (Python's `ShareableList(name=...)`).
    ///
    /// # Errors
    /// [`ListOpenError`]: the segment cannot be opened, or is not a list.
    pub fn open(name: &str) -> Result<Self, ListOpenError> {
        Self::from_segment(SharedMemory::open(name)?)
    }

    /// Reads and checks the layout of a list in `shm`.
    fn from_segment(shm: SharedMemory) -> Result<Self, ListOpenError> {
        let bad = |_| ListOpenError::NotAList;
        if shm.read_at::<u64>(0).map_err(bad)? != MAGIC {
            return Err(ListOpenError::NotAList);
        }
        let count = usize::try_from(shm.read_at::<u64>(8).map_err(bad)?)
            .map_err(|_| ListOpenError::NotAList)?;
        let table_end = count
            .checked_mul(ENTRY)
            .and_then(|t| t.checked_add(HEADER))
            .filter(|&e| e <= shm.size())
            .ok_or(ListOpenError::NotAList)?;
        let mut slots = Vec::with_capacity(count);
        for i in 0..count {
            let off = shm.read_at::<u64>(HEADER + ENTRY * i).map_err(bad)? as usize;
            let cap = shm.read_at::<u64>(HEADER + ENTRY * i + 8).map_err(bad)? as usize;
            let fits = off >= table_end
                && off
                    .checked_add(SLOT_HEAD)
                    .and_then(|x| x.checked_add(cap))
                    .is_some_and(|end| end <= shm.size());
            if !fits {
                return Err(ListOpenError::NotAList);
            }
            slots.push((off, cap));
        }
        Ok(ShareableList { shm, slots })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the list has no items.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        self.shm.name()
    }

    /// The segment behind the list.
    pub fn shm(&self) -> &SharedMemory {
        &self.shm
    }

    fn slot(&self, index: usize) -> Result<(usize, usize), ListError> {
        self.slots
            .get(index)
            .copied()
            .ok_or(ListError::Index(IndexError {
                index,
                len: self.slots.len(),
            }))
    }

    /// A copy of item `index`.
    ///
    /// # Errors
    /// [`ListError::Index`] past the end; [`ListError::Corrupt`] if the slot holds no
    /// valid item (for instance, read in the middle of another process's write).
    pub fn get(&self, index: usize) -> Result<Item, ListError> {
        let (off, cap) = self.slot(index)?;
        let corrupt = ListError::Corrupt { index };
        let tag = self.shm.read_at::<u8>(off).map_err(|_| corrupt.clone())?;
        let len = self
            .shm
            .read_at::<u64>(off + 8)
            .map_err(|_| corrupt.clone())? as usize;
        if len > cap {
            return Err(corrupt);
        }
        let mut payload = vec![0u8; len];
        self.shm
            .read(off + SLOT_HEAD, &mut payload)
            .map_err(|_| corrupt.clone())?;
        let word = |p: &[u8]| -> Result<[u8; 8], ListError> {
            p.try_into().map_err(|_| ListError::Corrupt { index })
        };
        Ok(match tag {
            0 if len == 0 => Item::None,
            1 if len == 1 => Item::Bool(payload[0] != 0),
            2 => Item::Int(i64::from_le_bytes(word(&payload)?)),
            3 => Item::Float(f64::from_le_bytes(word(&payload)?)),
            4 => Item::Str(String::from_utf8(payload).map_err(|_| corrupt)?),
            5 => Item::Bytes(payload),
            _ => return Err(corrupt),
        })
    }

    /// Replaces item `index` with `item` (of any type that fits the slot).
    ///
    /// # Errors
    /// [`ListError::Index`] past the end; [`ListError::TooLarge`] if `item` needs more
    /// bytes than the slot has.
    pub fn set(&self, index: usize, item: Item) -> Result<(), ListError> {
        let (off, cap) = self.slot(index)?;
        let payload = item.payload();
        if payload.len() > cap {
            return Err(ListError::TooLarge {
                index,
                capacity: cap,
                needed: payload.len(),
            });
        }
        let inside = "slot checked when the list was made or opened";
        self.shm.write(off + SLOT_HEAD, &payload).expect(inside);
        self.shm
            .write_at(off + 8, payload.len() as u64)
            .expect(inside);
        self.shm.write_at(off, item.tag()).expect(inside);
        Ok(())
    }

    /// A copy of every item.
    ///
    /// # Errors
    /// [`ListError::Corrupt`] for an item that holds no valid value.
    pub fn to_vec(&self) -> Result<Vec<Item>, ListError> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }

    /// How many items equal `item` (Python's `count`).
    pub fn count(&self, item: &Item) -> usize {
        (0..self.len())
            .filter(|&i| self.get(i).is_ok_and(|x| &x == item))
            .count()
    }

    /// The first index holding `item` (Python's `index`), if any.
    pub fn index(&self, item: &Item) -> Option<usize> {
        (0..self.len()).find(|&i| self.get(i).is_ok_and(|x| &x == item))
    }

    /// Removes the segment's name (see [`SharedMemory::unlink`]).
    ///
    /// # Errors
    /// As [`SharedMemory::unlink`].
    pub fn unlink(&self) -> Result<(), UnlinkError> {
        self.shm.unlink()
    }
}

impl Transfer for ShareableList {
    const KIND: &'static str = "mproc_shm::ShareableList";

    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        self.shm.export(out)
    }

    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        let shm = SharedMemory::import(input)?;
        ShareableList::from_segment(shm).map_err(|_| TransferError::Malformed("not a list"))
    }
}

mproc_core::impl_handle_archive!(ShareableList);

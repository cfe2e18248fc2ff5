//! One small error type per operation.
use std::fmt;
use std::io;

/// Why a segment name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty (or only `/`).
    Empty,
    /// Longer than the 255 bytes a file name in `/dev/shm` may have.
    TooLong {
        /// Its length in bytes (without a leading `/`).
        len: usize,
    },
    /// A character that is not printable ASCII, or a `/` after the first character.
    BadCharacter {
        /// The offending character.
        ch: char,
        /// Its byte position in the name as given.
        at: usize,
    },
    /// `.` or `..`, which name directories.
    Reserved,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("a shared memory name cannot be empty"),
            NameError::TooLong { len } => {
                write!(
                    f,
                    "a shared memory name has at most 255 bytes, this one has {len}"
                )
            }
            NameError::BadCharacter { ch, at } => write!(
                f,
                "character {ch:?} at byte {at} is not allowed in a shared memory name \
                 (printable ASCII, no '/' except a leading one)"
            ),
            NameError::Reserved => f.write_str("'.' and '..' are not shared memory names"),
        }
    }
}

impl std::error::Error for NameError {}

/// Why [`SharedMemory::create`](crate::SharedMemory::create) (or a builder's `create`)
/// failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum CreateError {
    /// The name was refused.
    InvalidName(NameError),
    /// A size of zero bytes (a segment needs at least one).
    ZeroSize,
    /// A segment of this name already exists.
    AlreadyExists {
        /// The name (without a leading `/`).
        name: String,
    },
    /// The resource tracker could not be started or reached, so the segment could not
    /// be made leak-proof; it was removed again.
    Tracker(io::Error),
    /// Any other failure of the system (out of memory, permissions …).
    Io(io::Error),
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateError::InvalidName(e) => e.fmt(f),
            CreateError::ZeroSize => f.write_str("a shared memory segment needs a size above zero"),
            CreateError::AlreadyExists { name } => {
                write!(f, "a shared memory segment named {name:?} already exists")
            }
            CreateError::Tracker(e) => write!(f, "the shared memory tracker failed: {e}"),
            CreateError::Io(e) => write!(f, "creating a shared memory segment failed: {e}"),
        }
    }
}

impl std::error::Error for CreateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CreateError::InvalidName(e) => Some(e),
            CreateError::Tracker(e) | CreateError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<NameError> for CreateError {
    fn from(e: NameError) -> Self {
        CreateError::InvalidName(e)
    }
}

/// Why [`SharedMemory::open`](crate::SharedMemory::open) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// The name was refused.
    InvalidName(NameError),
    /// No segment has this name.
    NotFound {
        /// The name (without a leading `/`).
        name: String,
    },
    /// The segment's size is not the size the caller expects.
    SizeMismatch {
        /// The size asked for.
        expected: usize,
        /// The segment's actual size.
        actual: usize,
    },
    /// The segment exists but has no size yet (its creator has not sized it, or it was
    /// made by another tool). Retrying shortly may succeed.
    Empty {
        /// The name (without a leading `/`).
        name: String,
    },
    /// The segment belongs to another user.
    PermissionDenied {
        /// The name (without a leading `/`).
        name: String,
    },
    /// Any other failure of the system.
    Io(io::Error),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::InvalidName(e) => e.fmt(f),
            OpenError::NotFound { name } => {
                write!(f, "no shared memory segment named {name:?}")
            }
            OpenError::SizeMismatch { expected, actual } => write!(
                f,
                "shared memory segment has {actual} bytes, {expected} were expected"
            ),
            OpenError::Empty { name } => {
                write!(f, "shared memory segment {name:?} has no size yet")
            }
            OpenError::PermissionDenied { name } => {
                write!(f, "permission denied for shared memory segment {name:?}")
            }
            OpenError::Io(e) => write!(f, "opening a shared memory segment failed: {e}"),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::InvalidName(e) => Some(e),
            OpenError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<NameError> for OpenError {
    fn from(e: NameError) -> Self {
        OpenError::InvalidName(e)
    }
}

/// Why [`SharedMemory::unlink`](crate::SharedMemory::unlink) or
/// [`unlink`](crate::unlink) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum UnlinkError {
    /// The name was refused.
    InvalidName(NameError),
    /// No segment has this name (already unlinked).
    NotFound {
        /// The name (without a leading `/`).
        name: String,
    },
    /// Any other failure of the system (e.g. the segment belongs to another user).
    Io(io::Error),
}

impl fmt::Display for UnlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnlinkError::InvalidName(e) => e.fmt(f),
            UnlinkError::NotFound { name } => {
                write!(f, "no shared memory segment named {name:?} to unlink")
            }
            UnlinkError::Io(e) => write!(f, "unlinking a shared memory segment failed: {e}"),
        }
    }
}

impl std::error::Error for UnlinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UnlinkError::InvalidName(e) => Some(e),
            UnlinkError::Io(e) => Some(e),
            UnlinkError::NotFound { .. } => None,
        }
    }
}

/// An access outside a segment, or an atomic at a misaligned offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccessError {
    /// `offset..offset + len` is not inside the segment's `size` bytes.
    OutOfRange {
        /// Start of the access, in bytes.
        offset: usize,
        /// Length of the access, in bytes.
        len: usize,
        /// The segment's size.
        size: usize,
    },
    /// The offset is not a multiple of the type's alignment.
    Misaligned {
        /// The offset asked for.
        offset: usize,
        /// The alignment the type needs.
        align: usize,
    },
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessError::OutOfRange { offset, len, size } => write!(
                f,
                "access to {len} bytes at offset {offset} is outside the {size} bytes of the segment"
            ),
            AccessError::Misaligned { offset, align } => {
                write!(
                    f,
                    "offset {offset} is not a multiple of the alignment {align}"
                )
            }
        }
    }
}

impl std::error::Error for AccessError {}

/// An array index (or a slice of indices) past the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexError {
    /// The first index that does not exist (for a slice: its end).
    pub index: usize,
    /// The array's length.
    pub len: usize,
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "index {} out of range for an array of length {}",
            self.index, self.len
        )
    }
}

impl std::error::Error for IndexError {}

/// Why a [`Value`](crate::Value), [`Array`](crate::Array) or their raw forms could not
/// be made.
#[derive(Debug)]
#[non_exhaustive]
pub enum AllocError {
    /// The array would need more bytes than the address space has.
    TooLarge {
        /// The number of elements asked for.
        len: usize,
    },
    /// Creating the shared memory (or the lock) failed.
    Io(io::Error),
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::TooLarge { len } => {
                write!(f, "an array of {len} elements does not fit in memory")
            }
            AllocError::Io(e) => write!(f, "allocating shared memory failed: {e}"),
        }
    }
}

impl std::error::Error for AllocError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AllocError::Io(e) => Some(e),
            AllocError::TooLarge { .. } => None,
        }
    }
}

impl From<io::Error> for AllocError {
    fn from(e: io::Error) -> Self {
        AllocError::Io(e)
    }
}

/// Why [`SharedMemory::create_or_open`](crate::SharedMemory::create_or_open) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum CreateOrOpenError {
    /// Creating the segment failed (for another reason than an existing name).
    Create(CreateError),
    /// The segment existed, and opening it failed (e.g. it has another size).
    Open(OpenError),
}

impl fmt::Display for CreateOrOpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateOrOpenError::Create(e) => e.fmt(f),
            CreateOrOpenError::Open(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CreateOrOpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CreateOrOpenError::Create(e) => Some(e),
            CreateOrOpenError::Open(e) => Some(e),
        }
    }
}

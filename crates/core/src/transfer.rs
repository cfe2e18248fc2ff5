//! How a handle (an fd, a region, a lock, a queue end …) crosses into another process.
//!
//! A handle is a few bytes plus the file descriptors it needs. [`Transfer`] says how to
//! write those bytes and fds ([`Exporter`]) and how to rebuild the handle on the other
//! side ([`Importer`]). The fds travel out of band: inherited across `fork`, passed on
//! dedicated fds across `exec`, or sent with `SCM_RIGHTS` to a fork server or over a
//! `Connection`. The bytes travel inside an ordinary rkyv message, so a handle can sit
//! anywhere in a process's arguments or a message: `(lock, queue, 42)`.
//!
//! To make a type embeddable in rkyv messages, implement [`Transfer`] and call
//! [`impl_handle_archive!`](crate::impl_handle_archive); for a foreign type, wrap it in
//! [`Handle`]. Encoding and decoding with handles is done by [`crate::codec`].
//!
//! ```
//! use mproc_core::{codec, Handle, Region};
//! let region = Region::new(4096).unwrap();
//! region.atomic_u32(0).unwrap().store(5, std::sync::atomic::Ordering::Relaxed);
//! let msg = (String::from("hello"), region);
//! let enc = codec::encode(&msg).unwrap();
//! assert_eq!(enc.fds.len(), 1); // the memfd travels beside the bytes
//! let (text, region2): (String, Region) = codec::decode(&enc.bytes, enc.fds).unwrap();
//! assert_eq!(text, "hello");
//! assert_eq!(region2.atomic_u32(0).unwrap().load(std::sync::atomic::Ordering::Relaxed), 5);
//! ```
use crate::codec::{TypeMismatch, TypeTag};
use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Allocator, Writer};
use rkyv::{Archive, Deserialize, Place, Serialize};
use std::cell::RefCell;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// A handle that can be carried into another process.
///
/// `export` writes what `import` needs: plain bytes (through the `put_*` calls) and fds
/// (through [`Exporter::put_fd`], which duplicates them, so the original stays valid).
/// `import` must read them back in the same order. `KIND` names the type and is checked
/// on import, so bytes exported by one handle type are never imported as another.
pub trait Transfer: Sized {
    /// A unique, stable name for this handle type (e.g. `"mproc_sync::Lock"`).
    const KIND: &'static str;
    /// The fingerprint carried beside the handle's bytes and checked on import, so a
    /// handle is never imported at another type (a `Value<f64>` as a `Value<u64>`).
    /// By default the type's full name, generic parameters included; a handle that
    /// carries messages (a queue) adds the message type's archived layout with
    /// [`TypeTag::of_carrier`].
    fn type_tag() -> TypeTag {
        TypeTag::of_name::<Self>()
    }
    /// Writes the handle's bytes and fds.
    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError>;
    /// Rebuilds the handle from what `export` wrote.
    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError>;
}

/// Why a handle could not be exported or imported.
#[derive(Debug)]
#[non_exhaustive]
pub enum TransferError {
    /// A handle was serialised or deserialised outside [`crate::codec`], which supplies
    /// the out-of-band fd table.
    NoContext,
    /// The bytes were written by another handle type.
    KindMismatch {
        /// The type being imported.
        expected: &'static str,
        /// The type named in the message.
        found: String,
    },
    /// The handle was sent at another type (a `Queue<Named>` received as a
    /// `Queue<Point>`): both types are named.
    TypeMismatch(TypeMismatch),
    /// The message refers to an fd that did not arrive or was already taken.
    MissingFd(u32),
    /// The handle's bytes ended early or held an impossible value.
    Malformed(&'static str),
    /// Duplicating or mapping a descriptor failed.
    Io(io::Error),
    /// A function inside the handle was refused (another build, a foreign peer's
    /// bytes, another type): see [`crate::code`].
    Code(crate::code::CodeError),
    /// The handle comes from a process in another pid namespace. Locks and queues
    /// record their holders by pid, which means nothing across namespaces, so shared
    /// memory never crosses between them.
    ForeignPidNamespace,
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::NoContext => f.write_str(
                "a handle can only be (de)serialised by mproc's codec, which carries its fds",
            ),
            TransferError::KindMismatch { expected, found } => {
                write!(f, "expected a {expected} handle, found a {found} handle")
            }
            TransferError::TypeMismatch(e) => write!(f, "handle {e}"),
            TransferError::MissingFd(i) => {
                write!(f, "file descriptor #{i} missing from the message")
            }
            TransferError::Malformed(what) => write!(f, "malformed handle data: {what}"),
            TransferError::Io(e) => write!(f, "handle transfer failed: {e}"),
            TransferError::Code(e) => write!(f, "handle refused: {e}"),
            TransferError::ForeignPidNamespace => f.write_str(
                "the handle comes from a process in another pid namespace (shared memory \
                 is not shared across pid namespaces)",
            ),
        }
    }
}

impl std::error::Error for TransferError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransferError::Io(e) => Some(e),
            TransferError::Code(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for TransferError {
    fn from(e: io::Error) -> Self {
        TransferError::Io(e)
    }
}

/// Where [`Transfer::export`] writes a handle's bytes and fds.
#[derive(Debug)]
pub struct Exporter<'a> {
    bytes: Vec<u8>,
    fd_indices: Vec<u32>,
    fds: &'a mut Vec<OwnedFd>,
}

impl Exporter<'_> {
    /// Writes a `u64`.
    pub fn put_u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes a length-prefixed byte string.
    pub fn put_bytes(&mut self, b: &[u8]) {
        self.put_u64(b.len() as u64);
        self.bytes.extend_from_slice(b);
    }

    /// Adds a duplicate of `fd` (close-on-exec) to the message.
    pub fn put_fd(&mut self, fd: BorrowedFd<'_>) -> Result<(), TransferError> {
        let dup = fd.try_clone_to_owned()?;
        self.put_owned_fd(dup);
        Ok(())
    }

    /// Adds `fd` itself to the message.
    pub fn put_owned_fd(&mut self, fd: OwnedFd) {
        self.fd_indices.push(self.fds.len() as u32);
        self.fds.push(fd);
    }
}

/// Where [`Transfer::import`] reads a handle's bytes and fds.
#[derive(Debug)]
pub struct Importer<'a> {
    bytes: &'a [u8],
    fd_indices: Vec<u32>,
    next_fd: usize,
    fds: &'a mut Vec<Option<OwnedFd>>,
}

impl Importer<'_> {
    /// Reads a `u64`.
    pub fn get_u64(&mut self) -> Result<u64, TransferError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// Reads a byte string written by [`Exporter::put_bytes`].
    pub fn get_bytes(&mut self) -> Result<&[u8], TransferError> {
        let n = usize::try_from(self.get_u64()?).map_err(|_| TransferError::Malformed("length"))?;
        self.take(n)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], TransferError> {
        if self.bytes.len() < n {
            return Err(TransferError::Malformed("handle bytes end early"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    /// Takes the next fd, in the order `export` put them.
    pub fn take_fd(&mut self) -> Result<OwnedFd, TransferError> {
        let idx = *self
            .fd_indices
            .get(self.next_fd)
            .ok_or(TransferError::Malformed("fewer fds than the handle needs"))?;
        self.next_fd += 1;
        self.fds
            .get_mut(idx as usize)
            .and_then(Option::take)
            .ok_or(TransferError::MissingFd(idx))
    }
}

thread_local! {
    static EXPORT: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static IMPORT: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Runs `f` with an fd table that handles serialised inside it export into.
/// Returns `f`'s result and the fds, indexed as the message refers to them.
pub(crate) fn with_export<R>(f: impl FnOnce() -> R) -> (R, Vec<OwnedFd>) {
    let saved = EXPORT.with(|c| c.replace(Some(Vec::new())));
    let r = f();
    let fds = EXPORT.with(|c| c.replace(saved)).unwrap_or_default();
    (r, fds)
}

/// Runs `f` with `fds` available to handles deserialised inside it. Fds no handle took
/// are closed when this returns.
pub(crate) fn with_import<R>(fds: Vec<OwnedFd>, f: impl FnOnce() -> R) -> R {
    let table = fds.into_iter().map(Some).collect();
    let saved = IMPORT.with(|c| c.replace(Some(table)));
    let r = f();
    IMPORT.with(|c| c.replace(saved));
    r
}

/// The archived form of every handle: its kind, its bytes and the indices of its fds
/// in the message's fd table.
#[derive(Archive, Serialize, Deserialize, Debug)]
#[rkyv(derive(Debug))]
pub struct HandleRepr {
    kind: String,
    /// [`Transfer::type_tag`] of the sender's type: its hash and name.
    tag: u64,
    tag_name: String,
    bytes: Vec<u8>,
    fds: Vec<u32>,
}

/// The archived form of a handle inside an rkyv message.
pub type ArchivedHandle = ArchivedHandleRepr;

fn export_repr<T: Transfer>(value: &T) -> Result<HandleRepr, TransferError> {
    EXPORT.with(|c| {
        let mut table = c.borrow_mut().take().ok_or(TransferError::NoContext)?;
        let mut ex = Exporter {
            bytes: Vec::new(),
            fd_indices: Vec::new(),
            fds: &mut table,
        };
        let r = value.export(&mut ex);
        let (bytes, fds) = (ex.bytes, ex.fd_indices);
        *c.borrow_mut() = Some(table);
        let tag = T::type_tag();
        r.map(|()| HandleRepr {
            kind: T::KIND.to_owned(),
            tag: tag.hash(),
            tag_name: tag.name().to_owned(),
            bytes,
            fds,
        })
    })
}

impl ArchivedHandleRepr {
    /// Rebuilds the handle (used by the `Deserialize` impls that
    /// [`impl_handle_archive!`](crate::impl_handle_archive) writes).
    pub fn import<T: Transfer, E: Source>(&self) -> Result<T, E> {
        self.import_inner::<T>().map_err(E::new)
    }

    fn import_inner<T: Transfer>(&self) -> Result<T, TransferError> {
        if self.kind.as_str() != T::KIND {
            return Err(TransferError::KindMismatch {
                expected: T::KIND,
                found: self.kind.as_str().to_owned(),
            });
        }
        T::type_tag()
            .check(self.tag.to_native(), self.tag_name.as_str())
            .map_err(TransferError::TypeMismatch)?;
        IMPORT.with(|c| {
            let mut table = c.borrow_mut().take().ok_or(TransferError::NoContext)?;
            let mut im = Importer {
                bytes: self.bytes.as_slice(),
                fd_indices: self.fds.iter().map(|i| i.to_native()).collect(),
                next_fd: 0,
                fds: &mut table,
            };
            let r = T::import(&mut im);
            *c.borrow_mut() = Some(table);
            r
        })
    }
}

/// The resolver of a handle (used by the impls that
/// [`impl_handle_archive!`](crate::impl_handle_archive) writes).
#[derive(Debug)]
pub struct HandleResolver {
    repr: HandleRepr,
    inner: HandleReprResolver,
}

impl fmt::Debug for HandleReprResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandleReprResolver")
    }
}

impl HandleResolver {
    /// Exports `value` into the current fd table and serialises its bytes.
    pub fn serialize<T, S>(value: &T, s: &mut S) -> Result<Self, S::Error>
    where
        T: Transfer,
        S: Fallible + Writer + Allocator + ?Sized,
        S::Error: Source,
    {
        let repr = export_repr(value).map_err(S::Error::new)?;
        let inner = repr.serialize(s)?;
        Ok(HandleResolver { repr, inner })
    }

    /// Writes the archived handle.
    pub fn resolve(self, out: Place<ArchivedHandle>) {
        self.repr.resolve(self.inner, out)
    }
}

/// Implements rkyv's `Archive`, `Serialize` and `Deserialize` for a [`Transfer`] type,
/// so that it can sit anywhere inside a message or a process's arguments.
///
/// `impl_handle_archive!(MyHandle);` or, with generics (note the trailing comma),
/// `impl_handle_archive!([T: Send,] MyQueue<T>);`.
#[macro_export]
macro_rules! impl_handle_archive {
    ([$($g:tt)*] $ty:ty) => {
        impl<$($g)*> $crate::rkyv::Archive for $ty {
            type Archived = $crate::transfer::ArchivedHandle;
            type Resolver = $crate::transfer::HandleResolver;
            fn resolve(&self, resolver: Self::Resolver, out: $crate::rkyv::Place<Self::Archived>) {
                resolver.resolve(out)
            }
        }
        impl<$($g)* __S> $crate::rkyv::Serialize<__S> for $ty
        where
            __S: $crate::rkyv::rancor::Fallible
                + $crate::rkyv::ser::Writer
                + $crate::rkyv::ser::Allocator
                + ?Sized,
            <__S as $crate::rkyv::rancor::Fallible>::Error: $crate::rkyv::rancor::Source,
        {
            fn serialize(&self, s: &mut __S) -> ::core::result::Result<Self::Resolver, <__S as $crate::rkyv::rancor::Fallible>::Error> {
                $crate::transfer::HandleResolver::serialize(self, s)
            }
        }
        impl<$($g)* __D> $crate::rkyv::Deserialize<$ty, __D> for $crate::transfer::ArchivedHandle
        where
            __D: $crate::rkyv::rancor::Fallible + ?Sized,
            <__D as $crate::rkyv::rancor::Fallible>::Error: $crate::rkyv::rancor::Source,
        {
            fn deserialize(&self, _: &mut __D) -> ::core::result::Result<$ty, <__D as $crate::rkyv::rancor::Fallible>::Error> {
                self.import::<$ty, <__D as $crate::rkyv::rancor::Fallible>::Error>()
            }
        }
    };
    ($ty:ty) => {
        $crate::impl_handle_archive!([] $ty);
    };
}

/// Wraps any [`Transfer`] type so it can sit inside an rkyv message, for types whose
/// crate cannot implement rkyv's traits (such as `OwnedFd`).
///
/// ```
/// use mproc_core::{codec, Handle};
/// use std::os::fd::OwnedFd;
/// let (r, _w) = rustix::pipe::pipe().unwrap();
/// let enc = codec::encode(&Handle(r)).unwrap();
/// let Handle(fd): Handle<OwnedFd> = codec::decode(&enc.bytes, enc.fds).unwrap();
/// # drop(fd);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Handle<T>(pub T);

impl<T: Transfer> Transfer for Handle<T> {
    const KIND: &'static str = T::KIND;
    fn type_tag() -> TypeTag {
        T::type_tag()
    }
    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        self.0.export(out)
    }
    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        T::import(input).map(Handle)
    }
}

crate::impl_handle_archive!([T: Transfer,] Handle<T>);

impl<T> AsFd for Handle<T>
where
    T: AsFd,
{
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

//! rkyv messages with out-of-band handles, and the frame header that delimits them.
//!
//! [`encode`] serialises a value and collects the fds of every handle inside it;
//! [`decode`] validates the bytes (bytecheck) and rebuilds the value, handing the fds
//! to the handles. [`access`] gives a validated in-place view without deserialising.
//!
//! ```
//! use mproc_core::codec;
//! let enc = codec::encode(&(42u32, Option::<u8>::None, String::from("hello"))).unwrap();
//! let v: (u32, Option<u8>, String) = codec::decode(&enc.bytes, enc.fds).unwrap();
//! assert_eq!(v, (42, None, "hello".to_string()));
//! // Bad bytes are an error, never a crash.
//! assert!(codec::decode::<(u32, Option<u8>, String)>(&[0xff; 7], vec![]).is_err());
//! ```
use crate::transfer::{with_export, with_import};
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::BoxedError;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};
use std::fmt;
use std::os::fd::OwnedFd;

/// A type that [`encode`] can serialise (any `#[derive(rkyv::Serialize)]` type, handles
/// included).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an mproc message: it cannot be sent",
    label = "not an mproc message",
    note = "derive rkyv's `Archive`, `Serialize` and `Deserialize` (`#[derive(mproc::Archive, mproc::Serialize, mproc::Deserialize)]` with `#[rkyv(crate = mproc::rkyv)]`), or wrap a serde type in `mproc::Serde` (feature `serde`)"
)]
pub trait Encode:
    for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, BoxedError>>
{
}
impl<T> Encode for T where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, BoxedError>>
{
}

/// A type that [`decode`] can validate and rebuild (any `#[derive(rkyv::Deserialize)]`
/// type whose archive is checkable; the derive provides both by default).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an mproc message: it cannot be received",
    label = "not an mproc message",
    note = "derive rkyv's `Archive`, `Serialize` and `Deserialize` (`#[derive(mproc::Archive, mproc::Serialize, mproc::Deserialize)]` with `#[rkyv(crate = mproc::rkyv)]`), or wrap a serde type in `mproc::Serde` (feature `serde`)"
)]
pub trait Decode:
    Archive<
        Archived: for<'a> CheckBytes<HighValidator<'a, BoxedError>>
                      + Deserialize<Self, HighDeserializer<BoxedError>>,
    > + Sized
{
}
impl<T> Decode for T
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, BoxedError>>
        + Deserialize<T, HighDeserializer<BoxedError>>,
{
}

/// A type that can travel between processes both ways: [`Encode`] + [`Decode`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an mproc message: it cannot be sent between processes",
    label = "not an mproc message",
    note = "derive rkyv's `Archive`, `Serialize` and `Deserialize` (`#[derive(mproc::Archive, mproc::Serialize, mproc::Deserialize)]` with `#[rkyv(crate = mproc::rkyv)]`), or wrap a serde type in `mproc::Serde` (feature `serde`)"
)]
pub trait Message: Encode + Decode {}
impl<T: Encode + Decode> Message for T {}

/// An encoded message: 16-byte-aligned rkyv bytes and the fds its handles need.
#[derive(Debug)]
pub struct Encoded {
    /// The archive (root at the end, as rkyv lays it out).
    pub bytes: AlignedVec,
    /// The handles' fds, in the order the archive refers to them.
    pub fds: Vec<OwnedFd>,
}

/// Why a message could not be encoded or decoded.
#[derive(Debug)]
pub struct CodecError(BoxedError);

impl CodecError {
    /// An error with a message of its own.
    pub fn msg(text: impl Into<String>) -> Self {
        #[derive(Debug)]
        struct Text(String);
        impl fmt::Display for Text {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::error::Error for Text {}
        CodecError(<BoxedError as rkyv::rancor::Source>::new(Text(text.into())))
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid message: {}", self.0)
    }
}

impl std::error::Error for CodecError {}

/// Serialises `value`, collecting the fds of the handles inside it.
pub fn encode<T: Encode>(value: &T) -> Result<Encoded, CodecError> {
    let (r, fds) = with_export(|| rkyv::to_bytes::<BoxedError>(value));
    Ok(Encoded {
        bytes: r.map_err(CodecError)?,
        fds,
    })
}

/// As [`encode`], into `buf`'s memory (its contents are dropped first): a caller that
/// keeps buffers, or sizes one for the message, saves the allocations and copies of a
/// growing buffer.
///
/// ```
/// use mproc_core::codec;
/// let mut buf = rkyv::util::AlignedVec::with_capacity(64);
/// buf.extend_from_slice(b"old");
/// let e = codec::encode_into(&7u32, buf).unwrap();
/// assert_eq!(codec::decode::<u32>(&e.bytes, e.fds).unwrap(), 7);
/// ```
pub fn encode_into<T: Encode>(value: &T, mut buf: AlignedVec) -> Result<Encoded, CodecError> {
    buf.clear();
    let (r, fds) = with_export(|| rkyv::api::high::to_bytes_in::<_, BoxedError>(value, buf));
    Ok(Encoded {
        bytes: r.map_err(CodecError)?,
        fds,
    })
}

/// Validates `bytes` and rebuilds the value, giving `fds` to its handles. Fds no handle
/// takes are closed. `bytes` must start at a 16-byte-aligned address (as
/// [`Encoded::bytes`] and frame payloads do); a misaligned slice is an error.
pub fn decode<T: Decode>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T, CodecError> {
    with_import(fds, || rkyv::from_bytes::<T, BoxedError>(bytes)).map_err(CodecError)
}

/// A validated in-place view of a message. Handles inside it can be read but not
/// rebuilt (that needs [`decode`] and the fds).
pub fn access<T: Decode>(bytes: &[u8]) -> Result<&T::Archived, CodecError> {
    rkyv::access::<T::Archived, BoxedError>(bytes).map_err(CodecError)
}

/// The header in front of every frame on a stream: magic, fd count, payload length.
///
/// Layout (16 bytes, little-endian): `b"MPRC"`, `u32` number of fds sent with the frame,
/// `u64` payload length. Payloads are padded by the writer to a multiple of 16 bytes so
/// consecutive frames stay aligned; `len` is the unpadded length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Number of fds that travel with this frame.
    pub nfds: u32,
    /// Payload length in bytes (unpadded).
    pub len: u64,
}

/// Size of an encoded [`FrameHeader`].
pub const HEADER_LEN: usize = 16;
const MAGIC: [u8; 4] = *b"MPRC";

/// Why a frame header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The first four bytes are not the frame magic: the stream is corrupt or out of step.
    BadMagic,
    /// The frame announces more bytes than the receiver accepts.
    TooLarge {
        /// The announced payload length.
        len: u64,
        /// The receiver's limit.
        max: u64,
    },
    /// The frame announces more fds than a frame may carry.
    TooManyFds(u32),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadMagic => f.write_str("corrupt frame: bad magic"),
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            FrameError::TooManyFds(n) => write!(f, "frame announces {n} fds (limit {MAX_FDS})"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Most fds one frame may carry.
pub const MAX_FDS: u32 = 253;

impl FrameHeader {
    /// The 16 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&self.nfds.to_le_bytes());
        b[8..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parses and checks a header; `max_len` bounds the payload the receiver accepts.
    pub fn parse(b: &[u8; HEADER_LEN], max_len: u64) -> Result<Self, FrameError> {
        if b[..4] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        let nfds = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
        let len = u64::from_le_bytes(b[8..].try_into().expect("8 bytes"));
        if nfds > MAX_FDS {
            return Err(FrameError::TooManyFds(nfds));
        }
        if len > max_len {
            return Err(FrameError::TooLarge { len, max: max_len });
        }
        Ok(FrameHeader { nfds, len })
    }

    /// Payload length rounded up to the 16-byte alignment frames keep on the stream.
    pub fn padded_len(&self) -> u64 {
        self.len.div_ceil(16) * 16
    }
}

//! rkyv messages with out-of-band handles, and the frame header that delimits them.
//!
//! [`encode`] serialises a value and collects the fds of every handle inside it;
//! [`decode`] validates the bytes (bytecheck) and rebuilds the value, handing the fds
//! to the handles. [`access`] gives a validated in-place view without deserialising.
//!
//! [`TypeTag`] fingerprints a message type (its name and its archived layout), so a
//! receiver that expects another type gets a [`TypeMismatch`] naming both types instead
//! of bytes reinterpreted; connections put one in every typed frame, queues in their
//! header, handles beside their bytes.
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
        write!(
            f,
            "invalid message: {}",
            without_addresses(&self.0.to_string())
        )
    }
}

/// `text` with every raw address (`0x` and 8 or more hex digits, as rkyv's validation
/// errors print them) replaced by `<address>`: an error message must not reveal where
/// a process's memory lies.
fn without_addresses(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i + 1 < b.len() {
        if b[i] == b'0' && (b[i + 1] == b'x' || b[i + 1] == b'X') {
            let digits = b[i + 2..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit())
                .count();
            if digits >= 8 {
                out.push_str(&text[copied..i]);
                out.push_str("<address>");
                i += 2 + digits;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
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
const TYPED_MAGIC: [u8; 4] = *b"MPRT";

/// What a frame's payload is, told by its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Raw bytes (`b"MPRC"`): `send_bytes`, or a protocol's own encoding.
    Bytes,
    /// A typed message (`b"MPRT"`): a type block (see [`TypeTag::block_len`]: the
    /// sender's fingerprint and type name), then the rkyv archive. The header's `len`
    /// counts both.
    Typed,
}

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

    /// The 16 header bytes of a frame of `kind`.
    pub fn to_bytes_kind(&self, kind: FrameKind) -> [u8; HEADER_LEN] {
        let mut b = self.to_bytes();
        if kind == FrameKind::Typed {
            b[..4].copy_from_slice(&TYPED_MAGIC);
        }
        b
    }

    /// Parses and checks a header of either kind.
    ///
    /// # Errors
    /// As [`FrameHeader::parse`].
    pub fn parse_kind(b: &[u8; HEADER_LEN], max_len: u64) -> Result<(Self, FrameKind), FrameError> {
        if b[..4] == TYPED_MAGIC {
            let mut plain = *b;
            plain[..4].copy_from_slice(&MAGIC);
            return Self::parse(&plain, max_len).map(|h| (h, FrameKind::Typed));
        }
        Self::parse(b, max_len).map(|h| (h, FrameKind::Bytes))
    }

    /// Parses and checks a header of a [`FrameKind::Bytes`] frame; `max_len` bounds the
    /// payload the receiver accepts.
    ///
    /// # Errors
    /// A bad magic, too many fds, or a payload over `max_len`.
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

/// A message type's fingerprint: a stable 64-bit hash of its name and of its archived
/// layout (the name, size and alignment of `T::Archived`), and the name itself.
///
/// It is the same in every process running the same program (parent, spawn and
/// forkserver children) and for the same type in two builds of the same code (no
/// addresses, no `TypeId`); a type that is renamed, moved or changes its archived
/// layout gets another. It is cheap (a word-at-a-time hash of the names, a few
/// nanoseconds); queues compute it once, when they are made or received.
///
/// It guards against a mistake, not an attacker: a peer can send any fingerprint, and
/// the bytes are still validated (bytecheck) against the receiving type.
///
/// ```
/// use mproc_core::codec::TypeTag;
/// assert_eq!(TypeTag::of::<u64>(), TypeTag::of::<u64>());
/// assert_ne!(TypeTag::of::<u64>().hash(), TypeTag::of::<String>().hash());
/// let e = TypeTag::of::<u64>().check(TypeTag::of::<String>().hash(), "alloc::string::String");
/// assert_eq!(e.unwrap_err().to_string(),
///            "message type mismatch: expected `u64`, found `alloc::string::String`");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TypeTag {
    hash: u64,
    name: &'static str,
}

/// The word-at-a-time hash behind [`TypeTag`] (stable: never change it without
/// changing the frame and queue versions).
fn hash_bytes(mut h: u64, b: &[u8]) -> u64 {
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        h = mix(h, u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    mix(h, u64::from_le_bytes(last) ^ ((b.len() as u64) << 56))
}

const fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

const fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h
}

/// Entries of the per-thread [`TypeTag::of`] cache (direct-mapped).
const TAG_CACHE: usize = 32;

type TagEntry = std::cell::Cell<([usize; 6], u64)>;

thread_local! {
    static TAGS: [TagEntry; TAG_CACHE] =
        const { [const { std::cell::Cell::new(([0; 6], 0)) }; TAG_CACHE] };
}

impl TypeTag {
    /// The fingerprint of message type `T`: hashed on first use in a thread, then
    /// found in a small per-thread cache (a few nanoseconds).
    #[inline]
    pub fn of<T: Archive>() -> TypeTag {
        let name = std::any::type_name::<T>();
        let archived = std::any::type_name::<T::Archived>();
        let size = std::mem::size_of::<T::Archived>();
        let align = std::mem::align_of::<T::Archived>();
        // The key is everything the hash depends on: two equal keys name equal strings
        // (the same `&'static str`) and equal layouts, so a hit is always right.
        let key = [
            name.as_ptr() as usize,
            name.len(),
            archived.as_ptr() as usize,
            archived.len(),
            size,
            align,
        ];
        let slot = (key[0] >> 3 ^ key[2] >> 5) % TAG_CACHE;
        let cached = TAGS.with(|c| {
            let e = c[slot].get();
            (e.0 == key).then_some(e.1)
        });
        let hash = match cached {
            Some(h) => h,
            None => {
                let mut h = hash_bytes(0x6D70_726F_635F_7431, name.as_bytes()); // "mproc_t1"
                h = hash_bytes(h, archived.as_bytes());
                h = mix(h, size as u64);
                h = finish(mix(h, align as u64));
                TAGS.with(|c| c[slot].set((key, h)));
                h
            }
        };
        TypeTag { hash, name }
    }

    /// The fingerprint of a handle type by its name alone (`std::any::type_name`, so
    /// generic parameters count: `Value<f64>` is not `Value<u64>`).
    #[inline]
    pub fn of_name<T: ?Sized>() -> TypeTag {
        let name = std::any::type_name::<T>();
        TypeTag {
            hash: finish(hash_bytes(0x6D70_726F_635F_6831, name.as_bytes())), // "mproc_h1"
            name,
        }
    }

    /// The fingerprint of handle type `H` that carries messages of type `T` (a queue):
    /// `H`'s name and `T`'s fingerprint.
    #[inline]
    pub fn of_carrier<H: ?Sized, T: Archive>() -> TypeTag {
        let name = std::any::type_name::<H>();
        let inner = TypeTag::of::<T>().hash;
        let h = hash_bytes(0x6D70_726F_635F_6331, name.as_bytes()); // "mproc_c1"
        TypeTag {
            hash: finish(mix(h, inner)),
            name,
        }
    }

    /// The 64-bit fingerprint.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The type's name (`std::any::type_name`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `Ok` if `found` (a fingerprint from a peer, which names its type `found_name`) is
    /// this type's.
    ///
    /// # Errors
    /// [`TypeMismatch`] naming both types.
    pub fn check(&self, found: u64, found_name: &str) -> Result<(), TypeMismatch> {
        if found == self.hash {
            Ok(())
        } else {
            Err(TypeMismatch::new(self.name, found_name))
        }
    }

    /// The fixed part of a typed frame's type block (see [`TypeTag::block_len`]): the
    /// fingerprint and the length of the name that follows it.
    pub fn block_head(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.hash.to_le_bytes());
        b[8..10].copy_from_slice(&(self.wire_name().len() as u16).to_le_bytes());
        b
    }

    /// The name as a typed frame carries it (at most [`MAX_TYPE_NAME`] bytes).
    pub fn wire_name(&self) -> &'static [u8] {
        let b = self.name.as_bytes();
        &b[..b.len().min(MAX_TYPE_NAME)]
    }

    /// Bytes of the type block in front of a typed frame's archive: 16 bytes of head,
    /// then the name, padded to a multiple of 16 (so the archive stays aligned).
    pub fn block_len(&self) -> usize {
        16 + self.wire_name().len().next_multiple_of(16)
    }

    /// A whole typed frame as a sender of this type writes one (header announcing `nfds`
    /// fds, type block, `archive`, padding) around any archive bytes: for tests, fuzzers
    /// and tools that craft frames, valid or not, without a `Connection`.
    ///
    /// ```
    /// use mproc_core::codec::{FrameHeader, FrameKind, TypeTag};
    /// let f = TypeTag::of::<u64>().typed_frame(&7u64.to_le_bytes(), 0);
    /// let (head, kind) = FrameHeader::parse_kind(&f[..16].try_into().unwrap(), u64::MAX).unwrap();
    /// assert_eq!(kind, FrameKind::Typed);
    /// assert_eq!(f.len(), 16 + head.padded_len() as usize);
    /// ```
    pub fn typed_frame(&self, archive: &[u8], nfds: u32) -> Vec<u8> {
        let mut payload = self.block_head().to_vec();
        payload.extend_from_slice(self.wire_name());
        payload.resize(self.block_len(), 0);
        payload.extend_from_slice(archive);
        let head = FrameHeader {
            nfds,
            len: payload.len() as u64,
        };
        let mut f = head.to_bytes_kind(FrameKind::Typed).to_vec();
        f.extend_from_slice(&payload);
        f.resize(HEADER_LEN + head.padded_len() as usize, 0);
        f
    }
}

/// Longest type name a typed frame carries (longer ones are cut; the fingerprint covers
/// the whole name).
pub const MAX_TYPE_NAME: usize = 512;

/// Reads the type block at the front of a typed frame's payload: the sender's
/// fingerprint, its type name and the offset of the archive.
///
/// # Errors
/// The payload is shorter than its block announces.
pub fn read_type_block(
    payload: &[u8],
) -> Result<(u64, std::borrow::Cow<'_, str>, usize), CodecError> {
    let short = || CodecError::msg("typed frame shorter than its type block");
    let head = payload.get(..16).ok_or_else(short)?;
    let hash = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    let n = u16::from_le_bytes(head[8..10].try_into().expect("2 bytes")) as usize;
    if n > MAX_TYPE_NAME {
        return Err(CodecError::msg(
            "typed frame announces an overlong type name",
        ));
    }
    let off = 16 + n.next_multiple_of(16);
    let name = payload.get(16..16 + n).ok_or_else(short)?;
    if payload.len() < off {
        return Err(short());
    }
    Ok((hash, String::from_utf8_lossy(name), off))
}

/// A message arrived as another type than the receiver asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeMismatch {
    /// The type the receiver asked for.
    pub expected: &'static str,
    /// The type the sender named (printable characters only, at most
    /// [`MAX_TYPE_NAME`] bytes).
    pub found: String,
}

impl TypeMismatch {
    /// A mismatch between `expected` and the peer's `found` (sanitised for printing).
    pub fn new(expected: &'static str, found: &str) -> Self {
        let found: String = found
            .chars()
            .take(MAX_TYPE_NAME)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        TypeMismatch { expected, found }
    }
}

impl fmt::Display for TypeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message type mismatch: expected `{}`, found `{}`",
            self.expected, self.found
        )
    }
}

impl std::error::Error for TypeMismatch {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_hide_addresses() {
        assert_eq!(
            without_addresses("pointer 0x7ffd1234abcd out of range 0x55aa00000000..0x55aa00000010"),
            "pointer <address> out of range <address>..<address>"
        );
        // Short hex numbers (lengths, tags) stay.
        assert_eq!(without_addresses("tag 0x1f at 0x10"), "tag 0x1f at 0x10");
        assert_eq!(without_addresses("ends with 0x"), "ends with 0x");
        // A real validation error of a forged message.
        let mut bad = rkyv::util::AlignedVec::<16>::new();
        bad.extend_from_slice(&[0u8; 12]);
        bad[4] = 0x80 | 100;
        bad[8..12].copy_from_slice(&0x4000_0000u32.to_le_bytes());
        let e = decode::<(u32, String)>(&bad, vec![])
            .unwrap_err()
            .to_string();
        assert!(!e.contains("0x7f") && !e.contains("0x5"), "{e}");
    }

    #[test]
    fn type_blocks_round_trip() {
        let t = TypeTag::of::<(u8, String)>();
        let mut block = t.block_head().to_vec();
        block.extend_from_slice(t.wire_name());
        block.resize(t.block_len(), 0);
        block.extend_from_slice(b"archive");
        let (hash, name, off) = read_type_block(&block).unwrap();
        assert_eq!(
            (hash, name.as_ref(), off),
            (t.hash(), t.name(), t.block_len())
        );
        assert_eq!(off % 16, 0);
        assert!(read_type_block(&block[..10]).is_err());
        assert!(read_type_block(&block[..20]).is_err());
        // The cache returns what a fresh hash gives, type after type.
        for _ in 0..3 {
            assert_eq!(TypeTag::of::<(u8, String)>(), t);
            assert_ne!(TypeTag::of::<(u8, u16)>().hash(), t.hash());
        }
    }
}

//! `Serde<T>`: serde types as mproc messages (feature `serde`); see [`Serde`].
use bincode::Options;
use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Allocator, Writer, WriterExt};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Deserialize, Place, Serialize};
use std::fmt;
use std::ops::{Deref, DerefMut};

/// A serde value travelling as an mproc message.
///
/// serde types as messages: [`Serde<T>`] carries any `T: Serialize + DeserializeOwned`
/// as a `Process` argument or result, a `Pool` task or result, and a `Queue` or `Pipe`
/// message (feature `serde`).
///
/// Inside the rkyv archive the value is a byte vector in bincode's format (fixed-width
/// integers, little-endian): rkyv checks the vector's bounds, then bincode decodes it,
/// refusing bytes that are cut short, have bytes left over, or claim more than they hold;
/// a bad message is a [`CodecError`](crate::codec::CodecError), never a panic.
///
/// ```
/// use mproc_core::{codec, Serde};
/// use std::collections::HashMap;
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Order { id: u64, items: HashMap<String, u32> }
///
/// let order = Order { id: 7, items: HashMap::from([("tea".into(), 2)]) };
/// let enc = codec::encode(&Serde(order)).unwrap();
/// let back: Serde<Order> = codec::decode(&enc.bytes, enc.fds).unwrap();
/// assert_eq!(back.id, 7);
/// assert_eq!(back.into_inner().items["tea"], 2);
/// ```
///
/// Handles (locks, queues, regions) do not travel inside a `Serde`: carry them beside it
/// in a tuple or an rkyv struct.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serde<T>(pub T);

impl<T> Serde<T> {
    /// The value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Serde<T> {
    fn from(v: T) -> Self {
        Serde(v)
    }
}

impl<T> Deref for Serde<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Serde<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for Serde<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Serde").field(&self.0).finish()
    }
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
}

/// Where the encoded bytes start, and how many there are.
pub struct SerdeResolver {
    vec: VecResolver,
    len: usize,
}

impl fmt::Debug for SerdeResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerdeResolver")
            .field("len", &self.len)
            .finish()
    }
}

impl<T> Archive for Serde<T> {
    type Archived = ArchivedVec<u8>;
    type Resolver = SerdeResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::<u8>::resolve_from_len(resolver.len, resolver.vec, out);
    }
}

/// Lets bincode write straight into the archive (no intermediate buffer).
struct Out<'s, S: Fallible + ?Sized> {
    s: &'s mut S,
    err: Option<S::Error>,
}

impl<S: Writer + Fallible + ?Sized> std::io::Write for Out<'_, S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.s.write(buf).map(|()| buf.len()).map_err(|e| {
            self.err = Some(e);
            std::io::Error::other("the archive writer failed")
        })
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct SerdeError(String);
impl fmt::Display for SerdeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "serde value: {}", self.0)
    }
}
impl std::error::Error for SerdeError {}

impl<T, S> Serialize<S> for Serde<T>
where
    T: serde::Serialize,
    S: Fallible + Allocator + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, s: &mut S) -> Result<Self::Resolver, S::Error> {
        s.align_for::<u8>()?;
        let pos = s.pos();
        let mut out = Out { s, err: None };
        if let Err(e) = options().serialize_into(&mut out, &self.0) {
            return Err(out
                .err
                .unwrap_or_else(|| S::Error::new(SerdeError(e.to_string()))));
        }
        let len = s.pos() - pos;
        Ok(SerdeResolver {
            vec: VecResolver::from_pos(pos),
            len,
        })
    }
}

impl<T, D> Deserialize<Serde<T>, D> for ArchivedVec<u8>
where
    T: serde::de::DeserializeOwned,
    D: Fallible + ?Sized,
    D::Error: Source,
{
    fn deserialize(&self, _: &mut D) -> Result<Serde<T>, D::Error> {
        let bytes = self.as_slice();
        options()
            // No length inside may claim more than the message holds.
            .with_limit(bytes.len() as u64)
            .deserialize(bytes)
            .map(Serde)
            .map_err(|e| D::Error::new(SerdeError(e.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
    enum Shape {
        Circle { r: f64 },
        Poly(Vec<(i32, i32)>),
        Named(String, Option<Box<Shape>>),
    }

    #[test]
    fn round_trips_nested_values() {
        let v = vec![
            Shape::Circle { r: 1.5 },
            Shape::Poly(vec![(1, 2), (-3, 4)]),
            Shape::Named("é".into(), Some(Box::new(Shape::Circle { r: 0.0 }))),
        ];
        let enc = codec::encode(&Serde(v.clone())).unwrap();
        let back: Serde<Vec<Shape>> = codec::decode(&enc.bytes, enc.fds).unwrap();
        assert_eq!(back.0, v);
        // Beside rkyv fields in one message.
        let enc = codec::encode(&(7u32, Serde(v.clone()), String::from("x"))).unwrap();
        let (a, b, c): (u32, Serde<Vec<Shape>>, String) =
            codec::decode(&enc.bytes, enc.fds).unwrap();
        assert_eq!((a, b.0, c.as_str()), (7, v, "x"));
    }

    #[test]
    fn corrupt_bytes_are_errors_not_panics() {
        let v = Serde(vec![String::from("hello"); 4]);
        let enc = codec::encode(&v).unwrap();
        let mut bad = enc.bytes.clone();
        let mut errors = 0;
        for i in 0..bad.len() {
            for x in [0u8, 0x7f, 0xff] {
                let old = bad[i];
                bad[i] = x;
                if codec::decode::<Serde<Vec<String>>>(&bad, vec![]).is_err() {
                    errors += 1;
                }
                bad[i] = old;
            }
        }
        assert!(errors > 0);
        // A different type's bytes: refused (trailing bytes / bad lengths).
        assert!(codec::decode::<Serde<Vec<u64>>>(&enc.bytes, vec![]).is_err());
        // A length that claims far more than the message holds: refused, no huge
        // allocation.
        let huge = codec::encode(&Serde(u64::MAX)).unwrap();
        assert!(codec::decode::<Serde<Vec<u8>>>(&huge.bytes, vec![]).is_err());
    }
}

//! The connection module's only unsafe code: viewing archive bytes in place once they
//! are known to be valid, and the receive paths whose caller vouches for the peer.
//!
//! # Safety
//! A [`Received`] is constructed only (a) by [`Connection::recv_view`] after
//! `codec::access` validated exactly the bytes it lends, or (b) by
//! [`Connection::recv_view_unchecked`], whose caller promises the bytes are a valid
//! archive of `T`. The bytes sit in the connection's 16-byte-aligned receive buffer and
//! cannot change while the guard holds the receive lock.
use super::connection::{Connection, Received};
use super::error::RecvError;
use mproc_core::Decode;
use rkyv::rancor::BoxedError;
use std::marker::PhantomData;
use std::ops::Deref;

impl<T: Decode> Deref for Received<'_, T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        // SAFETY: see the module's `# Safety`: the bytes were validated as a `T` archive
        // (or vouched for by an `unsafe` caller), are aligned, and are immutable for the
        // guard's lifetime.
        unsafe { rkyv::access_unchecked::<T::Archived>(self.as_bytes()) }
    }
}

impl Connection {
    /// As [`recv_view`](Self::recv_view) without validating the message: for a trusted
    /// peer, when validation costs too much (it is O(1) for `Vec<u8>` but about 26 µs per
    /// MiB of `String`). Framing is still checked.
    ///
    /// # Safety
    /// The next message on this connection must be a valid rkyv archive of `T` (as sent
    /// by [`send`](Self::send)`::<T>` from a peer you trust). Otherwise reading through
    /// the guard is undefined behaviour. (A message sent as another type is still
    /// refused with [`RecvError::TypeMismatch`]; the fingerprint is no proof of validity.)
    ///
    /// # Errors
    /// As [`recv`](Self::recv), without `Decode`.
    pub unsafe fn recv_view_unchecked<T: Decode>(&self) -> Result<Received<'_, T>, RecvError> {
        let (mut rx, head) = self.recv_frame_unvalidated()?;
        rx.fds_clear();
        // The type is checked even here: only the archive's validation is skipped.
        let (start, len) = Connection::typed_frame::<T>(&mut rx, &head)?;
        Ok(Received {
            rx,
            start,
            len,
            _t: PhantomData,
        })
    }

    /// As [`recv`](Self::recv) without validating the message (framing is still
    /// checked). Handles inside the message cannot be rebuilt on this path: a message
    /// holding one yields [`RecvError::Decode`]; use [`recv`](Self::recv) for those.
    ///
    /// # Safety
    /// As [`recv_view_unchecked`](Self::recv_view_unchecked): the next message must be a
    /// valid archive of `T`.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub unsafe fn recv_unchecked<T: Decode>(&self) -> Result<T, RecvError> {
        // SAFETY: the caller promises the next message is a valid archive of `T`.
        let view = unsafe { self.recv_view_unchecked::<T>() }?;
        rkyv::api::high::deserialize::<T, BoxedError>(&*view)
            .map_err(|e| RecvError::Decode(mproc_core::codec::CodecError::msg(e.to_string())))
    }
}

//! The pool's wire protocol between the parent and one worker, over a private Unix stream
//! socketpair.
//!
//! Every frame is mproc-core's 16-byte [`FrameHeader`] followed by a body whose first 16
//! bytes are `[kind u32][count u32][arg u64]`, then records. Every record and payload is
//! padded to 16 bytes so that payloads stay 16-byte aligned in the receive buffer and are
//! decoded in place. The fds of handles inside payloads travel with `SCM_RIGHTS`, in
//! order, and each frame header says how many belong to it.
//!
//! The parent's side is non-blocking (the dispatcher never blocks on a slow or dead
//! worker); the worker's side blocks.
//!
//! Parent → worker:
//! - `RUN` (count = items, arg = chunk id), then `[tramp u64][func u64]`,
//!   `[state id u64][flags u64]`, `[fn type fingerprint u64][0 u64]`, then per item `[pos u32][nfds u32][len u64]` +
//!   payload; or, packed, one such record holding the whole chunk as a `Vec<A>`, then
//!   `[nskip u32][0 u32][0 u64]` and `nskip` positions (u32) not to run.
//! - `STATE` (arg = state id), one item record: the `map_with` state.
//! - `DROP_STATE` (arg = state id).
//! - `EXIT`: finish and exit.
//!
//! Worker → parent:
//! - `RESULTS` (count = records), per record
//!   `[chunk u64][pos u32][status u32][len u64][elapsed_us u32][nfds u32]` + payload
//!   (`status` 0: the encoded result; 1: a panic message; 2: another error's text;
//!   3: a packed chunk's `Vec<R>` of the items that did not fail, `pos` = `u32::MAX`;
//!   4: a packed chunk that could not run, with the reason).
//! - `INIT_FAILED`, one such record: the initializer failed; the worker exits.
use crate::job::Payload;
use mproc_core::codec::{FrameHeader, HEADER_LEN, MAX_FDS};
use mproc_core::scm;
use rkyv::util::AlignedVec;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

pub(crate) const K_RUN: u32 = 1;
pub(crate) const K_STATE: u32 = 2;
pub(crate) const K_DROP_STATE: u32 = 3;
pub(crate) const K_EXIT: u32 = 4;
pub(crate) const K_RESULTS: u32 = 1;
pub(crate) const K_INIT_FAILED: u32 = 2;

pub(crate) const ST_OK: u32 = 0;
pub(crate) const ST_PANIC: u32 = 1;
pub(crate) const ST_ERROR: u32 = 2;
/// A packed chunk's results: the `Vec<R>` of every item that did not fail.
pub(crate) const ST_PACKED: u32 = 3;
/// A packed chunk could not run at all (its arguments or results did not encode).
pub(crate) const ST_PACKED_ERR: u32 = 4;

/// `RUN` flags: the chunk is packed (one `Vec<A>` payload, then a skip list).
pub(crate) const F_PACKED: u64 = 1;
/// `RUN` flags: record each item's start time (a time limit is set).
pub(crate) const F_TIMED: u64 = 2;

const MAX_FRAME: u64 = 1 << 40;

fn pad16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

/// A piece of outgoing bytes: owned, or an encoded chunk shared with the dispatcher
/// (which keeps it to send again if the worker dies), so it is never copied.
pub(crate) enum Seg {
    Own(AlignedVec),
    Shared(Arc<Payload>),
}

impl Seg {
    fn bytes(&self) -> &[u8] {
        match self {
            Seg::Own(v) => v,
            Seg::Shared(p) => &p.bytes,
        }
    }
}

/// Builds frames into one buffer (several frames may share it), with shared payloads
/// as pieces of their own.
#[derive(Default)]
pub(crate) struct FrameBuf {
    pub(crate) bytes: AlignedVec,
    pub(crate) fds: Vec<OwnedFd>,
    /// Pieces that come before `bytes`.
    segs: Vec<Seg>,
    /// Where the open frame's header is: piece index (`segs.len()`: in `bytes`), offset.
    frame_seg: usize,
    frame_start: usize,
    frame_fds: usize,
}

impl FrameBuf {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.segs.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len() + self.segs.iter().map(|s| s.bytes().len()).sum::<usize>()
    }

    /// Starts a frame with its body head.
    pub(crate) fn begin(&mut self, kind: u32, count: u32, arg: u64) {
        self.frame_seg = self.segs.len();
        self.frame_start = self.bytes.len();
        self.frame_fds = self.fds.len();
        self.bytes.extend_from_slice(&[0u8; HEADER_LEN]);
        self.put_u32(kind);
        self.put_u32(count);
        self.put_u64(arg);
    }

    pub(crate) fn put_u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn put_u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    /// Appends payload bytes, padded to 16.
    pub(crate) fn put_payload(&mut self, b: &[u8]) {
        self.bytes.extend_from_slice(b);
        let pad = pad16(b.len()) - b.len();
        self.bytes.extend_from_slice(&[0u8; 16][..pad]);
    }

    /// Appends a shared payload, padded to 16, without copying it.
    pub(crate) fn put_shared(&mut self, p: Arc<Payload>) {
        self.put_piece(Seg::Shared(p));
    }

    /// Appends an owned payload, padded to 16, without copying it.
    pub(crate) fn put_owned(&mut self, v: AlignedVec) {
        self.put_piece(Seg::Own(v));
    }

    fn put_piece(&mut self, piece: Seg) {
        let len = piece.bytes().len();
        let head = std::mem::take(&mut self.bytes);
        if !head.is_empty() || self.frame_seg == self.segs.len() {
            self.segs.push(Seg::Own(head));
        }
        self.segs.push(piece);
        self.bytes.extend_from_slice(&[0u8; 16][..pad16(len) - len]);
    }

    /// The bytes that hold the open frame's header.
    fn header_piece(&mut self) -> &mut [u8] {
        match self.segs.get_mut(self.frame_seg) {
            Some(Seg::Own(v)) => v.as_mut_slice(),
            // A frame starts in owned bytes (`begin` writes its header there).
            _ => self.bytes.as_mut_slice(),
        }
    }

    pub(crate) fn put_fds(&mut self, fds: impl IntoIterator<Item = OwnedFd>) {
        self.fds.extend(fds);
    }

    /// Sets the record count of the open frame.
    pub(crate) fn set_count(&mut self, n: u32) {
        let at = self.frame_start + HEADER_LEN + 4;
        self.header_piece()[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }

    /// Closes the frame: writes its header.
    pub(crate) fn end(&mut self) {
        let total: usize = self
            .segs
            .iter()
            .skip(self.frame_seg)
            .map(|s| s.bytes().len())
            .sum::<usize>()
            + self.bytes.len();
        let h = FrameHeader {
            nfds: (self.fds.len() - self.frame_fds) as u32,
            len: (total - self.frame_start - HEADER_LEN) as u64,
        };
        let at = self.frame_start;
        self.header_piece()[at..at + HEADER_LEN].copy_from_slice(&h.to_bytes());
    }
}

/// Bytes and fds waiting to be written to a non-blocking socket.
#[derive(Default)]
pub(crate) struct OutQueue {
    bufs: VecDeque<(Seg, usize)>,
    fds: VecDeque<OwnedFd>,
}

/// Pieces written by one `sendmsg` at most.
const MAX_IOV: usize = 16;

impl OutQueue {
    pub(crate) fn push(&mut self, f: FrameBuf) {
        for s in f.segs {
            if !s.bytes().is_empty() {
                self.bufs.push_back((s, 0));
            }
        }
        if !f.bytes.is_empty() {
            self.bufs.push_back((Seg::Own(f.bytes), 0));
        }
        self.fds.extend(f.fds);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    /// Writes as much as the socket takes. `Ok(true)` when everything went out,
    /// `Ok(false)` when the socket is full, `Err` when the peer is gone.
    pub(crate) fn flush(&mut self, sock: BorrowedFd<'_>) -> io::Result<bool> {
        while !self.bufs.is_empty() {
            let nfds = self.fds.len().min(MAX_FDS as usize);
            let iov: Vec<io::IoSlice<'_>> = if self.fds.len() > nfds {
                // With more fds pending than one message may carry, send them one byte
                // at a time so that no frame's bytes outrun its fds.
                let (s, off) = &self.bufs[0];
                vec![io::IoSlice::new(&s.bytes()[*off..*off + 1])]
            } else {
                self.bufs
                    .iter()
                    .take(MAX_IOV)
                    .map(|(s, off)| io::IoSlice::new(&s.bytes()[*off..]))
                    .collect()
            };
            let fds: Vec<BorrowedFd<'_>> = self.fds.iter().take(nfds).map(|f| f.as_fd()).collect();
            let sent = scm::send_with_fds(sock, &iov, &fds);
            drop((iov, fds));
            match sent {
                Ok(mut n) => {
                    self.fds.drain(..nfds);
                    while n > 0
                        && let Some((s, off)) = self.bufs.front_mut()
                    {
                        let rest = s.bytes().len() - *off;
                        if n < rest {
                            *off += n;
                            break;
                        }
                        n -= rest;
                        if let Some((Seg::Own(b), _)) = self.bufs.pop_front() {
                            crate::bufs::give(b);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Writes a whole frame buffer to a blocking socket.
///
/// `full` runs each time the socket has no room left, before waiting for some: the
/// reader must be told that data is there, or a frame bigger than the socket's buffer
/// waits for a reader that waits for the frame's end.
pub(crate) fn write_all(
    sock: BorrowedFd<'_>,
    f: FrameBuf,
    full: &mut dyn FnMut(),
) -> io::Result<()> {
    let mut q = OutQueue::default();
    q.push(f);
    loop {
        if q.flush(sock)? {
            return Ok(());
        }
        full();
        // A blocking socket only returns WouldBlock if someone made it non-blocking:
        // wait for room rather than spin.
        let mut p = [rustix::event::PollFd::new(
            &sock,
            rustix::event::PollFlags::OUT,
        )];
        let _ = rustix::event::poll(&mut p, None);
    }
}

/// Sleeps until `sock` is readable (or hung up).
pub(crate) fn wait_readable(sock: BorrowedFd<'_>) {
    let mut p = [rustix::event::PollFd::new(
        &sock,
        rustix::event::PollFlags::IN,
    )];
    let _ = rustix::event::poll(&mut p, None);
}

/// A received frame: where its body sits in the buffer, and its fds.
pub(crate) struct Frame {
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) fds: VecDeque<OwnedFd>,
}

/// A receive buffer that yields whole frames, 16-byte aligned.
pub(crate) struct InBuf {
    buf: AlignedVec,
    start: usize,
    end: usize,
    /// The last read filled all the room there was: the socket may hold more.
    full: bool,
    fds: VecDeque<OwnedFd>,
}

impl InBuf {
    pub(crate) fn new() -> Self {
        let mut buf = AlignedVec::new();
        buf.resize(64 * 1024, 0);
        InBuf {
            buf,
            start: 0,
            end: 0,
            full: false,
            fds: VecDeque::new(),
        }
    }

    /// Reads what the socket has. `Ok(0)` means end of stream; `WouldBlock` errors pass
    /// through for non-blocking sockets.
    pub(crate) fn fill(&mut self, sock: BorrowedFd<'_>) -> io::Result<usize> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                // `start` is always at a frame boundary, a multiple of 16: alignment holds.
                self.buf.as_mut_slice().copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
        }
        let room = self.buf.len() - self.end;
        let (n, fds) = scm::recv_with_fds(
            sock,
            &mut self.buf.as_mut_slice()[self.end..],
            MAX_FDS as usize,
        )?;
        self.full = n == room;
        self.end += n;
        self.fds.extend(fds);
        Ok(n)
    }

    /// Whether the last read filled all the room there was (the socket may hold more).
    pub(crate) fn filled_up(&self) -> bool {
        self.full
    }

    /// The next complete frame, if one has arrived. Call [`InBuf::consume`] when done.
    pub(crate) fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.end - self.start < HEADER_LEN {
            self.make_room(HEADER_LEN);
            return Ok(None);
        }
        let hb: [u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN]
            .try_into()
            .expect("16 bytes");
        let h = FrameHeader::parse(&hb, MAX_FRAME)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let total = HEADER_LEN + h.padded_len() as usize;
        if self.end - self.start < total || self.fds.len() < h.nfds as usize {
            self.make_room(total);
            return Ok(None);
        }
        let fds = self.fds.drain(..h.nfds as usize).collect();
        Ok(Some(Frame {
            start: self.start + HEADER_LEN,
            len: h.len as usize,
            fds,
        }))
    }

    /// Makes sure a frame of `total` bytes fits once it has arrived.
    fn make_room(&mut self, total: usize) {
        if self.buf.len() - self.start < total {
            self.buf.as_mut_slice().copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < total {
                self.buf.resize(total.next_power_of_two(), 0);
            }
        }
    }

    pub(crate) fn body(&self, f: &Frame) -> &[u8] {
        &self.buf[f.start..f.start + f.len]
    }

    /// Drops the frame's bytes from the buffer.
    pub(crate) fn consume(&mut self, f: &Frame) {
        self.start = f.start + pad16(f.len);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

/// Reads fields from a frame body.
pub(crate) struct Cursor<'a> {
    pub(crate) b: &'a [u8],
    pub(crate) at: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Cursor { b, at: 0 }
    }

    fn bad() -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, "pool frame ends early")
    }

    pub(crate) fn u32(&mut self) -> io::Result<u32> {
        let s = self.b.get(self.at..self.at + 4).ok_or_else(Self::bad)?;
        self.at += 4;
        Ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))
    }

    pub(crate) fn u64(&mut self) -> io::Result<u64> {
        let s = self.b.get(self.at..self.at + 8).ok_or_else(Self::bad)?;
        self.at += 8;
        Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
    }

    /// A payload of `len` bytes (padded to 16 in the frame).
    pub(crate) fn payload(&mut self, len: usize) -> io::Result<&'a [u8]> {
        let s = self.b.get(self.at..self.at + len).ok_or_else(Self::bad)?;
        self.at += pad16(len);
        Ok(s)
    }
}

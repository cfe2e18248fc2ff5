//! `Connection`: framed rkyv messages and raw byte messages over a stream socket, with
//! the fds of handles inside messages passed alongside (`SCM_RIGHTS`).
//!
//! Wire format: every message is one frame, a 16-byte [`FrameHeader`] (magic, fd count,
//! payload length) followed by the payload padded with zeros to a multiple of 16 bytes.
//! A typed message ([`FrameKind::Typed`]) starts its payload with a type block: the
//! sender's [`TypeTag`] fingerprint and type name, checked against the receiving type
//! before a byte of the archive is read; raw bytes ([`FrameKind::Bytes`]) have none.
//! The fds of a frame are attached to its first bytes. The receiver reads headers and
//! small frames through a 1 KiB read-ahead buffer (one `recvmsg` per small message) and
//! the rest of a large frame straight into its aligned body buffer. Sending a connection
//! to another process while it holds read-ahead bytes is refused with a typed error
//! rather than stranding them.
use super::error::{RecvError, SendError};
use crate::queue::spin::Spin;
use mproc_core::codec::{
    self, FrameHeader, FrameKind, HEADER_LEN, MAX_FDS, TypeMismatch, TypeTag, read_type_block,
};
use mproc_core::transfer::{Exporter, Importer, Transfer, TransferError};
use mproc_core::{Deadline, Decode, Encode, scm};
use rkyv::Archive;
use rkyv::util::AlignedVec;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendFlags, Shutdown, SocketFlags, SocketType, recv, recvmsg, sendmsg, shutdown, socketpair,
};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The default [`Connection::max_message_size`]: 256 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 256 << 20;

/// A receive buffer larger than this is released once its message is consumed.
const RETAIN: usize = 4 << 20;
/// The first allocation for a frame body; it doubles as bytes arrive, so a header that
/// announces a huge frame costs nothing until the bytes really come.
const FIRST_CHUNK: usize = 64 << 10;
static ZEROS: [u8; 16] = [0; 16];

/// Creates a pair of connected [`Connection`]s, like Python's
/// `multiprocessing.Pipe(duplex)`.
///
/// With `duplex = true` both ends send and receive. With `duplex = false` the first end
/// only receives and the second only sends (Python: `r, w = Pipe(False)`).
///
/// Both ends are close-on-exec Unix stream sockets; hand one to a child process in its
/// arguments (a `Connection` is a handle) or send it over another connection.
///
/// ```
/// use mproc_channel::Pipe;
/// let (a, b) = Pipe(true).unwrap();
/// a.send(&(1u32, String::from("hi"))).unwrap();
/// let (n, s): (u32, String) = b.recv().unwrap();
/// assert_eq!((n, s.as_str()), (1, "hi"));
/// b.send_bytes(b"pong").unwrap();
/// assert_eq!(a.recv_bytes().unwrap(), b"pong");
/// ```
///
/// # Errors
/// `socketpair(2)` failed (out of fds).
#[allow(non_snake_case)]
#[doc(alias = "pipe")]
#[doc(alias = "socketpair")]
pub fn Pipe(duplex: bool) -> io::Result<(Connection, Connection)> {
    let (a, b) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    if duplex {
        Ok((
            Connection::with_mode(a, true, true, true),
            Connection::with_mode(b, true, true, true),
        ))
    } else {
        shutdown(&a, Shutdown::Write)?;
        shutdown(&b, Shutdown::Read)?;
        Ok((
            Connection::with_mode(a, true, false, true),
            Connection::with_mode(b, false, true, true),
        ))
    }
}

/// One end of a message stream: Python's `multiprocessing.connection.Connection`.
///
/// - [`send`](Self::send) / [`recv`](Self::recv) carry any [`mproc_core::Message`]
///   (rkyv) type, handles included: the fds of a `Region`, a lock or another
///   `Connection` inside the message travel with it, so they reach a process that is
///   already running.
/// - [`recv_view`](Self::recv_view) validates a message and lends it in place, without
///   deserialising; [`recv_view_unchecked`](Self::recv_view_unchecked) and
///   [`recv_unchecked`](Self::recv_unchecked) skip the validation for trusted peers.
/// - [`send_bytes`](Self::send_bytes) / [`recv_bytes`](Self::recv_bytes) /
///   [`recv_bytes_into`](Self::recv_bytes_into) / [`recv_bytes_view`](Self::recv_bytes_view)
///   carry raw bytes.
/// - [`poll`](Self::poll) tells whether a message is waiting without consuming it.
///
/// Message boundaries always hold (an empty message is a message). Every received frame is
/// checked: a corrupt, oversized or truncated frame is a typed [`RecvError`], never a
/// panic or a hang. Methods take `&self`: sends are serialised by one lock and receives
/// by another, so one thread may send while another receives. Dropping closes the socket.
///
/// ```
/// use mproc_channel::{Connection, Pipe};
/// use mproc_spawn::Process;
///
/// // The child's end travels as the argument; the child echoes until the pipe closes.
/// fn echo(conn: Connection) {
///     while let Ok(words) = conn.recv::<Vec<String>>() {
///         conn.send(&words.join(" ")).unwrap();
///     }
/// }
///
/// let (parent, child) = Pipe(true).unwrap();
/// let mut p = Process::new(echo, child);
/// p.start().unwrap();
/// parent.send(&vec!["hello".to_string(), "pipe".into()]).unwrap();
/// assert_eq!(parent.recv::<String>().unwrap(), "hello pipe");
/// // Raw bytes, and a timeout-bounded poll.
/// assert!(!parent.poll(Some(std::time::Duration::from_millis(10))).unwrap());
/// drop(parent); // the child's recv fails: it returns
/// p.join().unwrap();
/// ```
pub struct Connection {
    pub(super) fd: Option<OwnedFd>,
    readable: bool,
    writable: bool,
    unix: bool,
    max_len: u64,
    /// Shared with this end's clones ([`Connection::try_clone`]): one stream, one
    /// receive state, one send lock, so clones in one process never interleave frames.
    pub(super) rx: Arc<Mutex<Rx>>,
    tx: Arc<Mutex<()>>,
}

/// Receive state: a frame may be read in several steps (a timed receive can stop
/// mid-frame and the next receive resumes it).
///
/// Headers and small frames are read through `ahead`, a small read-ahead buffer, so a
/// small message costs one `recvmsg`; the rest of a large frame is read straight into
/// `body`. Fds arrive with the first bytes of their frame and wait in `fd_queue` until
/// their frame is complete.
pub(super) struct Rx {
    ahead: Box<[u8; AHEAD]>,
    start: usize,
    end: usize,
    head: Option<FrameHeader>,
    /// The kind of the frame in `head`.
    kind: FrameKind,
    fd_queue: VecDeque<OwnedFd>,
    frame_fds: Vec<OwnedFd>,
    pub(super) body: AlignedVec,
    /// The body of a large bytes frame that `recv_bytes` hands over whole (no copy out
    /// of `body`); `None` for every other frame.
    big: Option<Vec<u8>>,
    /// Set while `recv_bytes` receives: a large bytes frame may go into `big`.
    vec_ok: bool,
    body_got: usize,
    broken: bool,
    eof: bool,
    cmsg: Vec<MaybeUninit<u8>>,
    /// How long a receive waiting for the next frame spins before it sleeps.
    spin: RecvSpin,
}

/// The spin of a receive that waits for a frame, and when to skip it: spins that keep
/// failing (a slow peer, or a busy machine where our spin only keeps the peer from a
/// CPU) switch spinning off for exponentially more receives (16 up to 1,024), after which
/// one receive probes again. Only a peer that answers within the budget keeps it on.
#[derive(Debug)]
struct RecvSpin {
    spin: Spin,
    fails: u32,
    skip: u32,
}

impl RecvSpin {
    fn new() -> Self {
        RecvSpin {
            spin: Spin::new(),
            fails: 0,
            skip: 0,
        }
    }

    /// Whether this receive spins (data already there counts as met at once).
    fn take(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        Spin::useful()
    }

    /// Records whether the spin met the frame.
    fn outcome(&mut self, met: bool) {
        if met {
            self.fails = 0;
        } else {
            self.fails = self.fails.saturating_add(1);
            if self.fails >= 4 {
                self.skip = 16 << (self.fails - 4).min(6);
            }
        }
    }
}

/// Size of the read-ahead buffer.
const AHEAD: usize = 1024;

impl Rx {
    fn new() -> Self {
        Rx {
            ahead: Box::new([0; AHEAD]),
            start: 0,
            end: 0,
            head: None,
            kind: FrameKind::Bytes,
            fd_queue: VecDeque::new(),
            frame_fds: Vec::new(),
            body: AlignedVec::new(),
            big: None,
            vec_ok: false,
            body_got: 0,
            broken: false,
            eof: false,
            cmsg: Vec::new(),
            spin: RecvSpin::new(),
        }
    }

    /// The buffer the current frame's body goes into.
    fn body_mut(&mut self) -> &mut [u8] {
        match &mut self.big {
            Some(v) => v,
            None => &mut self.body,
        }
    }

    fn body_len(&self) -> usize {
        self.big.as_ref().map_or(self.body.len(), Vec::len)
    }

    fn grow_body(&mut self, n: usize) {
        match &mut self.big {
            Some(v) => v.resize(n, 0),
            None => self.body.resize(n, 0),
        }
    }

    /// Moves `take` read-ahead bytes into the body at `got`.
    fn body_from_ahead(&mut self, got: usize, take: usize) {
        let Rx {
            ahead,
            start,
            body,
            big,
            ..
        } = self;
        let dst: &mut [u8] = match big {
            Some(v) => v,
            None => body,
        };
        dst[got..got + take].copy_from_slice(&ahead[*start..*start + take]);
        *start += take;
        self.body_got += take;
    }

    /// Closes the fds that came with the current frame.
    pub(super) fn fds_clear(&mut self) {
        self.frame_fds.clear();
    }

    /// Bytes read from the socket but not yet given to a frame.
    pub(super) fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Whether a receive would return at once without reading the socket.
    pub(super) fn ready_now(&self) -> bool {
        if self.eof || self.broken || self.head.is_some() {
            return true;
        }
        if self.buffered() < HEADER_LEN {
            return false;
        }
        let hdr: &[u8; HEADER_LEN] = self.ahead[self.start..self.start + HEADER_LEN]
            .try_into()
            .expect("16 bytes");
        match FrameHeader::parse_kind(hdr, u64::MAX) {
            Ok((h, _)) => h.padded_len() <= (self.buffered() - HEADER_LEN) as u64,
            Err(_) => true,
        }
    }

    /// Drops everything buffered (the stream ended or went out of step).
    fn discard(&mut self) {
        self.start = 0;
        self.end = 0;
        self.fd_queue.clear();
        self.finish();
    }

    /// Forgets the current (complete or abandoned) frame.
    pub(super) fn finish(&mut self) {
        self.head = None;
        self.body_got = 0;
        self.big = None;
        self.frame_fds.clear();
        if self.body.len() > RETAIN {
            self.body = AlignedVec::new();
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.fd.as_ref().map(AsRawFd::as_raw_fd))
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .field("unix", &self.unix)
            .field("max_message_size", &self.max_len)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits until `fd` is readable (or hung up) or the deadline passes.
pub(super) fn wait_readable(fd: BorrowedFd<'_>, deadline: Deadline) -> Result<(), RecvError> {
    let mut pfd = [PollFd::new(&fd, PollFlags::IN)];
    match deadline.poll(&mut pfd) {
        Ok(0) => Err(RecvError::Timeout),
        Ok(_) => Ok(()),
        Err(e) => Err(RecvError::Io(e)),
    }
}

/// Reads some bytes into `buf`; `Ok(0)` is end of stream. With `fds`, also collects fds
/// that arrive (close-on-exec). With a deadline, never blocks past it.
///
/// With `spin`, a read that finds nothing first retries without blocking for the spin's
/// adaptive budget (a few µs, up to 40) before it sleeps: a peer that answers at once
/// (a request/reply exchange) is then met without the two sleeping hand-overs, which
/// cost far more than the answer itself on a virtual machine whose idle CPUs halt.
fn read_some(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: Option<(&mut Vec<MaybeUninit<u8>>, &mut VecDeque<OwnedFd>)>,
    deadline: Option<Deadline>,
    spin: Option<&mut RecvSpin>,
) -> Result<usize, RecvError> {
    let mut fds = fds;
    let mut attempt = |flags: RecvFlags| match fds.as_mut() {
        Some((space, out)) => {
            if space.is_empty() {
                space.resize(
                    rustix::cmsg_space!(ScmRights(MAX_FDS as usize)),
                    MaybeUninit::uninit(),
                );
            }
            let mut cmsg = RecvAncillaryBuffer::new(space);
            let r = recvmsg(
                fd,
                &mut [IoSliceMut::new(&mut *buf)],
                &mut cmsg,
                flags | RecvFlags::CMSG_CLOEXEC,
            );
            for m in cmsg.drain() {
                if let RecvAncillaryMessage::ScmRights(it) = m {
                    out.extend(it);
                }
            }
            r.map(|m| m.bytes)
        }
        None => recv(fd, &mut *buf, flags).map(|(n, _)| n),
    };
    if let Some(rs) = spin
        && rs.take()
    {
        let spun = rs.spin.spin_costly(|| match attempt(RecvFlags::DONTWAIT) {
            Err(Errno::AGAIN) if !deadline.is_some_and(|d| d.is_expired()) => None,
            other => Some(other),
        });
        rs.outcome(spun.is_some());
        match spun {
            Some(Ok(n)) => return Ok(n),
            Some(Err(Errno::CONNRESET)) => return Ok(0),
            Some(Err(Errno::AGAIN)) => return Err(RecvError::Timeout),
            Some(Err(Errno::INTR)) | None => {}
            Some(Err(e)) => return Err(RecvError::Io(e.into())),
        }
        // Nothing within the budget: sleep, and tell the budget how long it took.
        let slept = std::time::Instant::now();
        let r = read_blocking(fd, &mut attempt, deadline);
        rs.spin.slept(slept.elapsed());
        return r;
    }
    read_blocking(fd, &mut attempt, deadline)
}

/// The sleeping part of [`read_some`]: `attempt` is one `recv` with the given flags.
fn read_blocking(
    fd: BorrowedFd<'_>,
    attempt: &mut impl FnMut(RecvFlags) -> rustix::io::Result<usize>,
    deadline: Option<Deadline>,
) -> Result<usize, RecvError> {
    let mut flags = RecvFlags::empty();
    if let Some(d) = deadline {
        wait_readable(fd, d)?;
        flags |= RecvFlags::DONTWAIT;
    }
    loop {
        let r = attempt(flags);
        match r {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            // The peer closed with data of ours unread: for us, the stream has ended.
            Err(Errno::CONNRESET) => return Ok(0),
            Err(Errno::AGAIN) => match deadline {
                Some(d) => wait_readable(fd, d)?,
                None => wait_readable(fd, Deadline::never())?,
            },
            Err(e) => return Err(RecvError::Io(e.into())),
        }
    }
}

impl Connection {
    fn with_mode(fd: OwnedFd, readable: bool, writable: bool, unix: bool) -> Self {
        Connection {
            fd: Some(fd),
            readable,
            writable,
            unix,
            max_len: DEFAULT_MAX_MESSAGE_SIZE as u64,
            rx: Arc::new(Mutex::new(Rx::new())),
            tx: Arc::new(Mutex::new(())),
        }
    }

    /// Wraps a connected stream socket (Unix or TCP) that speaks this framing, such as
    /// one end of a `socketpair` or an accepted socket.
    ///
    /// # Errors
    /// `fd` is not a socket.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let st = rustix::fs::fstat(&fd)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a Connection needs a socket",
            ));
        }
        let unix = rustix::net::getsockname(&fd)?.address_family() == AddressFamily::UNIX;
        Ok(Self::with_mode(fd, true, true, unix))
    }

    /// The largest message (payload bytes) this end sends or accepts. Larger incoming
    /// frames are refused as [`RecvError::Corrupt`]; larger outgoing ones as
    /// [`SendError::TooLarge`] before anything is written.
    pub fn max_message_size(&self) -> usize {
        self.max_len as usize
    }

    /// Sets [`max_message_size`](Self::max_message_size).
    pub fn set_max_message_size(&mut self, max: usize) {
        self.max_len = max as u64;
    }

    /// Builder form of [`set_max_message_size`](Self::set_max_message_size).
    pub fn with_max_message_size(mut self, max: usize) -> Self {
        self.set_max_message_size(max);
        self
    }

    /// Whether this end can receive (`False` for the writing end of `Pipe(false)`).
    pub fn readable(&self) -> bool {
        self.readable
    }

    /// Whether this end can send (`False` for the reading end of `Pipe(false)`).
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Whether [`close`](Self::close) was called.
    pub fn closed(&self) -> bool {
        self.fd.is_none()
    }

    /// The socket, while open (Python's `fileno()`).
    pub fn fileno(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    /// Closes this end now (dropping does the same). Later operations fail with
    /// `Closed`; the peer sees end of stream once every copy of this end is closed.
    pub fn close(&mut self) {
        self.fd = None;
    }

    /// Another handle to this end of the stream, on a duplicate of its socket (as
    /// `socket.dup()`; Python hands one connection end to several children).
    ///
    /// In this process the clone shares this end's receive state and send lock:
    /// messages never interleave and bytes read ahead by one are received by either.
    /// Closing one leaves the other open; the peer sees end of stream once every copy
    /// is closed. Each copy can be sent to another process (in a child's arguments or
    /// inside a message). Processes that write to one stream at the same time must
    /// agree on who writes when, as in Python: their frames are not serialised across
    /// processes.
    ///
    /// ```
    /// use mproc_channel::Pipe;
    /// let (a, b) = Pipe(true).unwrap();
    /// let a2 = a.try_clone().unwrap();
    /// a2.send(&1u32).unwrap();
    /// a.send(&2u32).unwrap();
    /// assert_eq!((b.recv::<u32>().unwrap(), b.recv::<u32>().unwrap()), (1, 2));
    /// drop(a);
    /// a2.send(&3u32).unwrap(); // still open
    /// assert_eq!(b.recv::<u32>().unwrap(), 3);
    /// ```
    ///
    /// # Errors
    /// `NotConnected` if this end is closed; `dup(2)` failed (out of fds).
    #[doc(alias = "dup")]
    pub fn try_clone(&self) -> io::Result<Connection> {
        let fd = self
            .fd
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection is closed"))?
            .try_clone()?;
        Ok(Connection {
            fd: Some(fd),
            readable: self.readable,
            writable: self.writable,
            unix: self.unix,
            max_len: self.max_len,
            rx: Arc::clone(&self.rx),
            tx: Arc::clone(&self.tx),
        })
    }

    // ---------------------------------------------------------------- sending

    /// Sends a message; handles inside it travel with their fds (Unix sockets only).
    ///
    /// # Errors
    /// See [`SendError`]; everything but `Io` and `Disconnected` is reported before a
    /// byte is written.
    ///
    /// The frame carries `T`'s [`TypeTag`]: a peer that receives it as another type
    /// gets [`RecvError::TypeMismatch`] naming both.
    pub fn send<T: Encode + Archive>(&self, value: &T) -> Result<(), SendError> {
        let enc = codec::encode(value).map_err(SendError::Encode)?;
        self.send_frame(Some(&TypeTag::of::<T>()), &enc.bytes, &enc.fds)
    }

    /// Sends `buf` as one message (Python's `send_bytes`).
    ///
    /// # Errors
    /// See [`SendError`].
    pub fn send_bytes(&self, buf: &[u8]) -> Result<(), SendError> {
        self.send_frame(None, buf, &[])
    }

    /// Sends one frame: typed (`tag`: a type block, then `payload`) or raw bytes.
    fn send_frame(
        &self,
        tag: Option<&TypeTag>,
        payload: &[u8],
        fds: &[OwnedFd],
    ) -> Result<(), SendError> {
        let fd = self.fd.as_ref().ok_or(SendError::Closed)?.as_fd();
        if !self.writable {
            return Err(SendError::NotWritable);
        }
        let block_head = tag.map(TypeTag::block_head);
        let (kind, block_len, name): (_, usize, &[u8]) = match tag {
            Some(t) => (FrameKind::Typed, t.block_len(), t.wire_name()),
            None => (FrameKind::Bytes, 0, &[]),
        };
        let len = (block_len + payload.len()) as u64;
        if len > self.max_len {
            return Err(SendError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        if !fds.is_empty() && !self.unix {
            return Err(SendError::FdsNotSupported);
        }
        if fds.len() > MAX_FDS as usize {
            return Err(SendError::TooManyFds(fds.len()));
        }
        let head = FrameHeader {
            nfds: fds.len() as u32,
            len,
        };
        let hdr = head.to_bytes_kind(kind);
        let pad = (head.padded_len() - len) as usize;
        let block: &[u8] = match &block_head {
            Some(b) => b,
            None => &[],
        };
        let name_pad = block_len.saturating_sub(16 + name.len());
        let parts: [&[u8]; 6] = [
            &hdr,
            block,
            name,
            &ZEROS[..name_pad],
            payload,
            &ZEROS[..pad],
        ];
        let total = HEADER_LEN + len as usize + pad;
        let borrowed = scm::borrow_all(fds);
        let _g = lock(&self.tx);
        let mut sent = 0;
        while sent < total {
            let mut iov = [IoSlice::new(&[]); 6];
            let mut n_iov = 0;
            let mut skip = sent;
            for p in parts {
                if skip >= p.len() {
                    skip -= p.len();
                    continue;
                }
                if p.is_empty() {
                    continue;
                }
                iov[n_iov] = IoSlice::new(&p[skip..]);
                skip = 0;
                n_iov += 1;
            }
            let r = if sent == 0 && !borrowed.is_empty() {
                scm::send_with_fds(fd, &iov[..n_iov], &borrowed)
            } else {
                sendmsg(
                    fd,
                    &iov[..n_iov],
                    &mut SendAncillaryBuffer::default(),
                    SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from)
            };
            match r {
                Ok(n) => sent += n,
                Err(e) => match e.raw_os_error() {
                    Some(libc_errno) if libc_errno == Errno::INTR.raw_os_error() => {}
                    Some(libc_errno)
                        if libc_errno == Errno::PIPE.raw_os_error()
                            || libc_errno == Errno::CONNRESET.raw_os_error() =>
                    {
                        return Err(SendError::Disconnected);
                    }
                    Some(libc_errno) if libc_errno == Errno::AGAIN.raw_os_error() => {
                        // Someone made the socket non-blocking: wait for room.
                        let mut pfd = [PollFd::new(&fd, PollFlags::OUT)];
                        match poll(&mut pfd, None) {
                            Ok(_) | Err(Errno::INTR) => {}
                            Err(e) => return Err(SendError::Io(e.into())),
                        }
                    }
                    _ => return Err(SendError::Io(e)),
                },
            }
        }
        Ok(())
    }

    // -------------------------------------------------------------- receiving

    fn rx_fd(&self) -> Result<BorrowedFd<'_>, RecvError> {
        let fd = self.fd.as_ref().ok_or(RecvError::Closed)?.as_fd();
        if !self.readable {
            return Err(RecvError::NotReadable);
        }
        Ok(fd)
    }

    /// Reads until one whole frame is in `rx.body`, returning its header (the fds are in
    /// `rx.frame_fds`). `room`: refuse (leaving the frame queued) if the payload is longer.
    fn next_frame(
        &self,
        rx: &mut Rx,
        deadline: Option<Deadline>,
        room: Option<usize>,
    ) -> Result<FrameHeader, RecvError> {
        let fd = self.rx_fd()?;
        if rx.broken {
            return Err(RecvError::Broken);
        }
        if rx.eof {
            return Err(RecvError::Disconnected);
        }
        let head = match rx.head {
            Some(h) => h,
            None => {
                while rx.buffered() < HEADER_LEN {
                    if rx.start > 0 {
                        let (start, end) = (rx.start, rx.end);
                        rx.ahead.copy_within(start..end, 0);
                        rx.end -= start;
                        rx.start = 0;
                    }
                    let Rx {
                        ahead,
                        end,
                        fd_queue,
                        cmsg,
                        spin,
                        ..
                    } = rx;
                    let n = read_some(
                        fd,
                        &mut ahead[*end..],
                        Some((cmsg, fd_queue)),
                        deadline,
                        Some(spin),
                    )?;
                    if n == 0 {
                        rx.eof = true;
                        let mid_frame = rx.buffered() > 0 || !rx.fd_queue.is_empty();
                        rx.discard();
                        return Err(if mid_frame {
                            RecvError::Truncated
                        } else {
                            RecvError::Disconnected
                        });
                    }
                    rx.end += n;
                }
                let hdr: [u8; HEADER_LEN] = rx.ahead[rx.start..rx.start + HEADER_LEN]
                    .try_into()
                    .expect("16 bytes");
                match FrameHeader::parse_kind(&hdr, self.max_len) {
                    Ok((h, kind)) => {
                        rx.start += HEADER_LEN;
                        rx.head = Some(h);
                        rx.kind = kind;
                        // Larger than a body this end keeps: read straight into the
                        // Vec that `recv_bytes` returns.
                        if rx.vec_ok && kind == FrameKind::Bytes && h.padded_len() > RETAIN as u64 {
                            rx.big = Some(Vec::new());
                        }
                        h
                    }
                    Err(e) => {
                        rx.broken = true;
                        rx.discard();
                        return Err(RecvError::Corrupt(e));
                    }
                }
            }
        };
        let len = head.len as usize;
        if let Some(room) = room
            && len > room
        {
            return Err(RecvError::BufferTooSmall { needed: len });
        }
        let padded = head.padded_len() as usize;
        while rx.body_got < padded {
            if rx.body_len() < padded {
                let want = padded.min(FIRST_CHUNK.max(rx.body_len() * 2));
                if want > rx.body_len() {
                    rx.grow_body(want);
                }
            }
            let end = rx.body_len().min(padded);
            let got = rx.body_got;
            if rx.buffered() > 0 {
                let take = rx.buffered().min(end - got);
                rx.body_from_ahead(got, take);
                continue;
            }
            // Exactly up to this frame's end: never into the next frame, whose fds
            // must come through the read-ahead path.
            let n = read_some(fd, &mut rx.body_mut()[got..end], None, deadline, None)?;
            if n == 0 {
                rx.eof = true;
                rx.discard();
                return Err(RecvError::Truncated);
            }
            rx.body_got += n;
        }
        if !rx.vec_ok
            && let Some(v) = rx.big.take()
        {
            // `recv_bytes` started this frame and timed out; another receive finishes it:
            // its body belongs in `body`, like any other.
            rx.body.clear();
            rx.body.extend_from_slice(&v);
        }
        let nfds = head.nfds as usize;
        if rx.fd_queue.len() < nfds {
            let received = rx.fd_queue.len();
            rx.fd_queue.clear();
            rx.finish();
            return Err(RecvError::FdMismatch {
                announced: head.nfds,
                received,
            });
        }
        let fds: Vec<OwnedFd> = rx.fd_queue.drain(..nfds).collect();
        rx.frame_fds = fds;
        Ok(head)
    }

    fn recv_inner<T: Decode>(&self, deadline: Option<Deadline>) -> Result<T, RecvError> {
        let mut rx = lock(&self.rx);
        let head = self.next_frame(&mut rx, deadline, None)?;
        let r = match typed_archive::<T>(&rx, &head) {
            Ok(off) => {
                let fds = std::mem::take(&mut rx.frame_fds);
                codec::decode::<T>(&rx.body[off..head.len as usize], fds).map_err(RecvError::Decode)
            }
            Err(e) => Err(e),
        };
        rx.finish();
        r
    }

    /// The current frame's archive `(start, len)` in `rx.body` if it is a typed message
    /// of type `T` (else the frame is consumed and the error returned).
    pub(super) fn typed_frame<T: Archive>(
        rx: &mut Rx,
        head: &FrameHeader,
    ) -> Result<(usize, usize), RecvError> {
        match typed_archive::<T>(rx, head) {
            Ok(off) => Ok((off, head.len as usize - off)),
            Err(e) => {
                rx.finish();
                Err(e)
            }
        }
    }

    /// Receives a message, validating it (bytecheck) and rebuilding its value and
    /// handles. Blocks until a message arrives.
    ///
    /// # Errors
    /// [`RecvError::Disconnected`] at end of stream (Python's `EOFError`); see
    /// [`RecvError`] for the rest.
    pub fn recv<T: Decode>(&self) -> Result<T, RecvError> {
        self.recv_inner(None)
    }

    /// As [`recv`](Self::recv), giving up with [`RecvError::Timeout`] after `timeout`.
    /// A message half-read when the time runs out stays half-read; the next receive
    /// resumes it.
    ///
    /// # Errors
    /// As [`recv`](Self::recv), plus `Timeout`.
    pub fn recv_timeout<T: Decode>(&self, timeout: Duration) -> Result<T, RecvError> {
        self.recv_inner(Some(Deadline::after(timeout)))
    }

    /// Receives a message and lends it in place, validated: the guard derefs to
    /// `T::Archived` (for `Vec<u8>`, an `ArchivedVec<u8>` that derefs to `[u8]`). The
    /// message is consumed when the guard drops; until then this end cannot receive.
    /// Handles inside can be read but not rebuilt (their fds are closed): use
    /// [`recv`](Self::recv) for those.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub fn recv_view<T: Decode>(&self) -> Result<Received<'_, T>, RecvError> {
        let mut rx = lock(&self.rx);
        let head = self.next_frame(&mut rx, None, None)?;
        rx.frame_fds.clear();
        let (start, len) = Self::typed_frame::<T>(&mut rx, &head)?;
        if let Err(e) = codec::access::<T>(&rx.body[start..start + len]) {
            rx.finish();
            return Err(RecvError::Decode(e));
        }
        Ok(Received {
            rx,
            start,
            len,
            _t: PhantomData,
        })
    }

    /// Receives a message whose frame is read but not validated; see the `unsafe`
    /// callers in this module.
    pub(super) fn recv_frame_unvalidated(
        &self,
    ) -> Result<(MutexGuard<'_, Rx>, FrameHeader), RecvError> {
        let mut rx = lock(&self.rx);
        let head = self.next_frame(&mut rx, None, None)?;
        Ok((rx, head))
    }

    /// Receives one message's bytes (Python's `recv_bytes`). Any fds that came with it
    /// are closed.
    ///
    /// # Errors
    /// As [`recv`](Self::recv), except that the bytes are not validated.
    pub fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        self.recv_bytes_inner(None)
    }

    /// As [`recv_bytes`](Self::recv_bytes), giving up after `timeout`.
    ///
    /// # Errors
    /// As [`recv_bytes`](Self::recv_bytes), plus `Timeout`.
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>, RecvError> {
        self.recv_bytes_inner(Some(Deadline::after(timeout)))
    }

    fn recv_bytes_inner(&self, deadline: Option<Deadline>) -> Result<Vec<u8>, RecvError> {
        let mut rx = lock(&self.rx);
        rx.vec_ok = true;
        let head = self.next_frame(&mut rx, deadline, None);
        rx.vec_ok = false;
        let head = head?;
        let r = match rx.big.take() {
            // A large bytes frame, read straight into its own Vec: handed over whole.
            Some(mut v) => {
                v.truncate(head.len as usize);
                Ok(v)
            }
            None => bytes_of(&rx, &head).map(|(start, len)| rx.body[start..start + len].to_vec()),
        };
        rx.finish();
        r
    }

    /// Receives one message into `buf`, returning its length (Python's
    /// `recv_bytes_into`). If `buf` is too short the message stays queued and
    /// [`RecvError::BufferTooSmall`] says how long it is.
    ///
    /// # Errors
    /// As [`recv_bytes`](Self::recv_bytes), plus `BufferTooSmall`.
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvError> {
        let mut rx = lock(&self.rx);
        let head = self.next_frame(&mut rx, None, None)?;
        let (start, len) = match bytes_of(&rx, &head) {
            Ok(r) => r,
            Err(e) => {
                rx.finish();
                return Err(e);
            }
        };
        if len > buf.len() {
            // The frame stays queued (read, not consumed).
            return Err(RecvError::BufferTooSmall { needed: len });
        }
        buf[..len].copy_from_slice(&rx.body[start..start + len]);
        rx.finish();
        Ok(len)
    }

    /// Receives one message's bytes and lends them in place (no copy); the message is
    /// consumed when the guard drops.
    ///
    /// # Errors
    /// As [`recv_bytes`](Self::recv_bytes).
    pub fn recv_bytes_view(&self) -> Result<BytesView<'_>, RecvError> {
        let mut rx = lock(&self.rx);
        let head = self.next_frame(&mut rx, None, None)?;
        rx.frame_fds.clear();
        match bytes_of(&rx, &head) {
            Ok((start, len)) => Ok(BytesView { rx, start, len }),
            Err(e) => {
                rx.finish();
                Err(e)
            }
        }
    }

    /// Whether a message (or end of stream) is waiting, without consuming anything.
    /// `timeout` is a `Duration` (`Duration::ZERO` only looks), or `None` to wait for
    /// ever, as in Python's `poll(timeout)`.
    ///
    /// # Errors
    /// `Closed`, `NotReadable`, `Broken`, or `Io` if `poll(2)` fails.
    pub fn poll(&self, timeout: impl Into<Deadline>) -> Result<bool, RecvError> {
        let fd = self.rx_fd()?;
        if let Ok(rx) = self.rx.try_lock() {
            if rx.broken {
                return Err(RecvError::Broken);
            }
            if rx.ready_now() {
                return Ok(true);
            }
        }
        match wait_readable(fd, timeout.into()) {
            Ok(()) => Ok(true),
            Err(RecvError::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A validated message lent in place by [`Connection::recv_view`]: derefs to
/// `T::Archived`. Consumed when dropped.
pub struct Received<'a, T: Decode> {
    pub(super) rx: MutexGuard<'a, Rx>,
    pub(super) start: usize,
    pub(super) len: usize,
    pub(super) _t: PhantomData<fn() -> T>,
}

impl<T: Decode> Received<'_, T> {
    /// The message's archive bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.rx.body[self.start..self.start + self.len]
    }
}

impl<T: Decode> Drop for Received<'_, T> {
    fn drop(&mut self) {
        self.rx.finish();
    }
}

impl<T: Decode> fmt::Debug for Received<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Received")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len)
            .finish()
    }
}

/// A message's bytes lent in place by [`Connection::recv_bytes_view`]: derefs to `[u8]`
/// (16-byte aligned). Consumed when dropped.
pub struct BytesView<'a> {
    rx: MutexGuard<'a, Rx>,
    start: usize,
    len: usize,
}

impl std::ops::Deref for BytesView<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.rx.body[self.start..self.start + self.len]
    }
}

impl Drop for BytesView<'_> {
    fn drop(&mut self) {
        self.rx.finish();
    }
}

impl fmt::Debug for BytesView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BytesView").field("len", &self.len).finish()
    }
}

const FLAG_READ: u64 = 1;
const FLAG_WRITE: u64 = 2;
const FLAG_UNIX: u64 = 4;

/// A connection crosses into another process as a duplicate of its socket: the original
/// stays usable here. Hand it over between messages: while this end holds bytes of
/// messages it has read ahead but not yet received (the peer sent several at once), or a
/// half-read message, exporting it fails with a typed error instead of losing them.
impl Transfer for Connection {
    const KIND: &'static str = "mproc_channel::Connection";

    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        let fd = self.fd.as_ref().ok_or_else(|| {
            TransferError::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "cannot send a closed Connection",
            ))
        })?;
        if let Ok(rx) = self.rx.try_lock()
            && (rx.buffered() > 0 || rx.head.is_some())
        {
            return Err(TransferError::Io(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "this Connection has read {} bytes of messages not yet received; \
                     receive them before sending the connection",
                    rx.buffered()
                ),
            )));
        }
        let mut flags = 0;
        for (on, bit) in [
            (self.readable, FLAG_READ),
            (self.writable, FLAG_WRITE),
            (self.unix, FLAG_UNIX),
        ] {
            if on {
                flags |= bit;
            }
        }
        out.put_u64(flags);
        out.put_u64(self.max_len);
        out.put_fd(fd.as_fd())
    }

    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        let flags = input.get_u64()?;
        if flags & !(FLAG_READ | FLAG_WRITE | FLAG_UNIX) != 0 {
            return Err(TransferError::Malformed("connection flags"));
        }
        let max_len = input.get_u64()?;
        let fd = input.take_fd()?;
        let st = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
            return Err(TransferError::Malformed("connection fd is not a socket"));
        }
        let mut c = Connection::with_mode(
            fd,
            flags & FLAG_READ != 0,
            flags & FLAG_WRITE != 0,
            flags & FLAG_UNIX != 0,
        );
        c.max_len = max_len;
        Ok(c)
    }
}

mproc_core::impl_handle_archive!(Connection);

/// The offset of the archive in the current frame if it is a typed message of type `T`.
fn typed_archive<T: Archive>(rx: &Rx, head: &FrameHeader) -> Result<usize, RecvError> {
    let payload = &rx.body[..head.len as usize];
    match rx.kind {
        FrameKind::Bytes => Err(RecvError::TypeMismatch(TypeMismatch::new(
            std::any::type_name::<T>(),
            "raw bytes (sent with send_bytes)",
        ))),
        FrameKind::Typed => {
            let (hash, name, off) = read_type_block(payload).map_err(RecvError::Decode)?;
            TypeTag::of::<T>()
                .check(hash, &name)
                .map_err(RecvError::TypeMismatch)?;
            Ok(off)
        }
    }
}

/// The `(start, len)` of the current frame's bytes: all of a raw frame, the archive of
/// a typed one.
fn bytes_of(rx: &Rx, head: &FrameHeader) -> Result<(usize, usize), RecvError> {
    let len = head.len as usize;
    match rx.kind {
        FrameKind::Bytes => Ok((0, len)),
        FrameKind::Typed => {
            let (_, _, off) = read_type_block(&rx.body[..len]).map_err(RecvError::Decode)?;
            Ok((off, len - off))
        }
    }
}

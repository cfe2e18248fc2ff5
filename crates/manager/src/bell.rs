//! The shared-memory fast path for calls on a local connection (a "doorbell").
//!
//! A proxy call over a Unix socket costs two sleeping hand-overs (about 16 µs here):
//! the client sleeps in `recv` while the server works, the server sleeps in `recv`
//! until the next request. On a local connection the server also hands the client a
//! sealed memfd ([`LEN`] bytes, laid out below) right after the hello. From then on a
//! call is:
//!
//! 1. the client writes the encoded request into the request buffer, its length into
//!    `req_len`, bumps `req_seq`; if the server said it sleeps (`srv_wait`), the client
//!    sends it a one-frame nudge on the socket;
//! 2. the server, which spins on `req_seq` for a while after each reply (an adaptive
//!    [`Spinner`]: only while requests keep coming quickly, never on a machine with one
//!    CPU), copies the request out, validates and decodes it exactly as a socket frame,
//!    runs it, writes the reply, bumps `rep_seq` and wakes the client's futex if it
//!    sleeps (`cli_wait`);
//! 3. the client spins on `rep_seq` for a while, then sleeps on it in slices of
//!    [`SLICE`], checking the socket between slices: a server that died closed it, so
//!    the call ends with `ServerGone` within a slice, never a hang.
//!
//! The server sleeps in a plain blocking `recv` on the socket, so it notices a client
//! that dies (end of stream) at once and releases its references as before.
//!
//! A request or reply that does not fit in its buffer (or carries fds) travels on the
//! socket: the length word says [`ON_SOCKET`] and the frame follows there.
//!
//! Both sides treat the other's bytes as hostile: every length is bounds-checked, the
//! bytes are copied out (with atomic copies, so a peer scribbling on them concurrently
//! is no data race) and validated by rkyv's checks before anything is decoded. The
//! client maps the region only when it is sealed against shrinking, so the server
//! cannot make it fault with `SIGBUS` (the server creates and seals it itself).
use crate::error::{ManagerError, Result};
use crate::wire::{Op, Reply, Request};
use mproc_channel::{Connection, RecvError};
use mproc_core::futex::{self, Spinner, WaitOutcome};
use mproc_core::{Deadline, Region, codec};
use rkyv::util::AlignedVec;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Bytes of each message buffer.
pub(crate) const CAP: usize = 60 * 1024;
const REQ_SEQ: usize = 0;
const REQ_LEN: usize = 4;
const SRV_WAIT: usize = 8;
const REP_SEQ: usize = 64;
const REP_LEN: usize = 68;
const CLI_WAIT: usize = 72;
pub(crate) const REQ_BUF: usize = 128;
pub(crate) const REP_BUF: usize = REQ_BUF + CAP;
/// The size of a doorbell region.
pub(crate) const LEN: usize = REP_BUF + CAP;
/// A length word saying "this message travels on the socket".
const ON_SOCKET: u32 = u32::MAX;
/// How long a client sleeps on the reply word before it checks the socket.
pub(crate) const SLICE: Duration = Duration::from_millis(100);

/// Whether spinning can pay off: never on a machine with one CPU, where the partner
/// cannot run while we spin.
fn may_spin() -> bool {
    static MULTI: OnceLock<bool> = OnceLock::new();
    *MULTI.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// The nudge a client sends a sleeping server.
pub(crate) fn nudge() -> Request {
    Request {
        obj: 0,
        op: Op::Nudge,
    }
}

/// One side's view of a connection's doorbell region.
pub(crate) struct Bell {
    region: Region,
    /// The last request number sent (client) or taken (server).
    seq: u32,
    spin: Spinner,
}

impl std::fmt::Debug for Bell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bell").field("seq", &self.seq).finish()
    }
}

/// What a server finds when it waits for the next request.
pub(crate) enum Next {
    /// A request announced on the doorbell: its reply goes through [`Bell::reply`].
    Rung(Request),
    /// A doorbell request that does not decode: answer it with a fault through
    /// [`Bell::reply`].
    RungBad(String),
    /// A request sent on the socket alone (a client that does not use the doorbell):
    /// its reply goes on the socket.
    Plain(Request),
    /// A socket frame that is not a request: answer on the socket.
    PlainBad(RecvError),
    /// The client closed the connection (or it broke).
    Gone,
}

fn io_bad(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned())
}

impl Bell {
    /// The server's side: a new, sealed region to send to the client.
    pub(crate) fn create() -> std::io::Result<(Bell, Region)> {
        let region = Region::named_memfd("mproc-manager-bell", LEN)?;
        let copy = region.try_clone()?;
        Ok((Bell::wrap(region), copy))
    }

    /// The client's side: maps the region the server sent, after checking that it is
    /// sealed against shrinking (so it can never fault) and large enough.
    pub(crate) fn attach(region: Region) -> std::io::Result<Bell> {
        use rustix::fs::{SealFlags, fcntl_get_seals};
        let seals = fcntl_get_seals(region.fd())?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(io_bad(
                "the doorbell region is not sealed against shrinking",
            ));
        }
        if region.len() < LEN {
            return Err(io_bad("the doorbell region is too small"));
        }
        let mut b = Bell::wrap(region);
        b.seq = b.word(REQ_SEQ).load(Ordering::Acquire);
        Ok(b)
    }

    fn wrap(region: Region) -> Bell {
        Bell {
            region,
            seq: 0,
            spin: Spinner::new(),
        }
    }

    /// The shared region (tests scribble on it as a hostile peer would).
    #[cfg(test)]
    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        // Every offset used is a multiple of 4 below `LEN`, and the region holds at least
        // `LEN` bytes (checked when it was made or attached).
        self.region
            .atomic_u32(offset)
            .expect("doorbell words lie inside the checked region")
    }

    /// Copies `len` bytes out of the buffer at `at` (after checking `len`).
    fn copy_out(&self, at: usize, len: u32) -> std::result::Result<AlignedVec<16>, String> {
        let len = len as usize;
        if len > CAP {
            return Err(format!("a message of {len} bytes overruns its buffer"));
        }
        let mut buf = AlignedVec::<16>::with_capacity(len);
        buf.resize(len, 0);
        self.region
            .read_bytes(at, &mut buf)
            .map_err(|e| e.to_string())?;
        Ok(buf)
    }

    // ------------------------------------------------------------------ client

    /// Sends `req` and waits for the reply (faults included, as replies).
    pub(crate) fn call(&mut self, conn: &Connection, req: &Request) -> Result<Reply> {
        let enc = codec::encode(req).map_err(|e| ManagerError::Codec(e.to_string()))?;
        if !enc.fds.is_empty() || enc.bytes.len() > CAP {
            self.ring(conn, None, ON_SOCKET, Some(req))
        } else {
            self.ring(conn, Some(&enc.bytes), enc.bytes.len() as u32, None)
        }
    }

    /// Writes `bytes` (if any) to the request buffer and `len` to its length word,
    /// rings, sends `socket_req` on the socket (if any) and waits for the reply. The
    /// tests call it with lengths and bytes no honest client writes.
    pub(crate) fn ring(
        &mut self,
        conn: &Connection,
        bytes: Option<&[u8]>,
        len: u32,
        socket_req: Option<&Request>,
    ) -> Result<Reply> {
        if let Some(b) = bytes {
            self.region
                .write_bytes(REQ_BUF, b)
                .map_err(|e| ManagerError::Codec(e.to_string()))?;
        }
        self.word(REQ_LEN).store(len, Ordering::Relaxed);
        let seq = self.seq.wrapping_add(1);
        self.seq = seq;
        self.word(REQ_SEQ).store(seq, Ordering::SeqCst);
        if self.word(SRV_WAIT).swap(0, Ordering::SeqCst) != 0 {
            crate::client::send(conn, &nudge())?;
        }
        if let Some(req) = socket_req {
            crate::client::send(conn, req)?;
        }
        self.wait_reply(conn, seq)?;
        match self.word(REP_LEN).load(Ordering::Acquire) {
            ON_SOCKET => crate::client::recv(conn),
            len => {
                let bytes = self
                    .copy_out(REP_BUF, len)
                    .map_err(ManagerError::Protocol)?;
                codec::decode::<Reply>(&bytes, Vec::new())
                    .map_err(|e| ManagerError::Protocol(e.to_string()))
            }
        }
    }

    fn wait_reply(&self, conn: &Connection, seq: u32) -> Result<()> {
        let rep = self.word(REP_SEQ);
        if may_spin() && self.spin.spin(|| rep.load(Ordering::Acquire) == seq) {
            return Ok(());
        }
        let wait = self.word(CLI_WAIT);
        let r = loop {
            wait.store(1, Ordering::SeqCst);
            let v = rep.load(Ordering::SeqCst);
            if v == seq {
                break Ok(());
            }
            let t = Instant::now();
            let out = futex::wait(rep, v, Deadline::after(SLICE));
            let ready = rep.load(Ordering::Acquire) == seq;
            self.spin.after_sleep(t.elapsed(), ready);
            if ready {
                break Ok(());
            }
            // The server writes on the socket only after it rang: anything readable
            // now is the end of the stream.
            if out == WaitOutcome::TimedOut && conn.poll(Duration::ZERO).unwrap_or(true) {
                if rep.load(Ordering::Acquire) == seq {
                    break Ok(());
                }
                break Err(ManagerError::ServerGone);
            }
        };
        wait.store(0, Ordering::Relaxed);
        r
    }

    // ------------------------------------------------------------------ server

    /// Waits for the next request: spins on the doorbell for a while, then sleeps in a
    /// `recv` on the socket until a nudge (or a plain request, or the end) arrives.
    pub(crate) fn next(&mut self, conn: &Connection) -> Next {
        let req = self.word(REQ_SEQ);
        let last = self.seq;
        let rung = may_spin() && self.spin.spin(|| req.load(Ordering::Acquire) != last);
        if !rung {
            let wait = self.word(SRV_WAIT);
            loop {
                wait.store(1, Ordering::SeqCst);
                if req.load(Ordering::SeqCst) != last {
                    if wait.swap(0, Ordering::SeqCst) == 0 {
                        // The client saw us asleep and sent a nudge: take it off the
                        // socket so that it is not mistaken for a request later.
                        match conn.recv::<Request>() {
                            Ok(Request { op: Op::Nudge, .. }) => {}
                            Ok(r) => return Next::Plain(r),
                            Err(e @ (RecvError::Decode(_) | RecvError::TypeMismatch(_))) => {
                                return Next::PlainBad(e);
                            }
                            Err(_) => return Next::Gone,
                        }
                    }
                    break;
                }
                let t = Instant::now();
                match conn.recv::<Request>() {
                    // The client cleared `srv_wait` before it sent this: look again.
                    Ok(Request { op: Op::Nudge, .. }) => {
                        self.spin.after_sleep(t.elapsed(), true);
                    }
                    Ok(r) => {
                        wait.store(0, Ordering::SeqCst);
                        return Next::Plain(r);
                    }
                    Err(e @ (RecvError::Decode(_) | RecvError::TypeMismatch(_))) => {
                        wait.store(0, Ordering::SeqCst);
                        return Next::PlainBad(e);
                    }
                    Err(_) => return Next::Gone,
                }
            }
        }
        self.seq = req.load(Ordering::Acquire);
        match self.word(REQ_LEN).load(Ordering::Acquire) {
            ON_SOCKET => match conn.recv::<Request>() {
                Ok(r) => Next::Rung(r),
                Err(e @ (RecvError::Decode(_) | RecvError::TypeMismatch(_))) => {
                    Next::RungBad(e.to_string())
                }
                Err(_) => Next::Gone,
            },
            len => match self.copy_out(REQ_BUF, len) {
                Ok(bytes) => match codec::decode::<Request>(&bytes, Vec::new()) {
                    Ok(r) => Next::Rung(r),
                    Err(e) => Next::RungBad(e.to_string()),
                },
                Err(m) => Next::RungBad(m),
            },
        }
    }

    /// Answers the request [`next`](Self::next) returned as [`Next::Rung`] or
    /// [`Next::RungBad`]. Returns `false` when the socket failed (the client is gone).
    pub(crate) fn reply(&mut self, conn: &Connection, reply: &Reply) -> bool {
        let enc = codec::encode(reply).ok();
        let fits = enc
            .as_ref()
            .filter(|e| e.fds.is_empty() && e.bytes.len() <= CAP)
            .and_then(|e| self.region.write_bytes(REP_BUF, &e.bytes).ok().map(|()| e));
        let len = fits.map_or(ON_SOCKET, |e| e.bytes.len() as u32);
        self.word(REP_LEN).store(len, Ordering::Relaxed);
        let rep = self.word(REP_SEQ);
        rep.store(self.seq, Ordering::SeqCst);
        if self.word(CLI_WAIT).swap(0, Ordering::SeqCst) != 0 {
            futex::wake(rep, 1);
        }
        len != ON_SOCKET || conn.send(reply).is_ok()
    }
}

//! What travels between a parent and its child: the bootstrap message (spawn and
//! forkserver) and the outcome frame (every start method).
use crate::child::Outcome;
use crate::current::ChildInfo;
use mproc_core::codec::{self, CodecError, FrameHeader, HEADER_LEN};
use mproc_core::rkyv::util::AlignedVec;
use mproc_core::scm;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The bootstrap message a re-executed child (or a fork server's child) reads before
/// running anything. It travels in a frame authenticated with the start's key
/// ([`seal_frame`]).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
pub(crate) struct Boot {
    /// Must equal the nonce in the marker environment variable (spawn) or the server's
    /// session nonce (forkserver): ties the message to this very start.
    pub(crate) nonce: u64,
    /// The logical parent (the process that called `start`).
    pub(crate) parent_pid: i32,
    /// `mproc_core::code::layout()` (the build identity) in the parent: the child
    /// checks its own.
    pub(crate) layout: i64,
    /// Offset of the monomorphised trampoline (`mproc_core::code::offset_of`).
    pub(crate) trampoline: i64,
    /// Offset of the target fn (`mproc_core::code::offset_of`).
    pub(crate) target: i64,
    /// `FnSig::hash` of the target's type; the trampoline checks it is its own.
    pub(crate) sig: u64,
    /// The target type's name, for the error if it is not.
    pub(crate) sig_name: String,
    /// The parent's family secret, which the child adopts (`mproc_core::code`).
    pub(crate) family: [u8; 32],
    /// Name, daemon flag and identity of the child.
    pub(crate) info: ChildInfo,
    /// The encoded arguments.
    pub(crate) args: Vec<u8>,
    /// Spawn: the raw numbers of the inherited argument fds, in codec order.
    /// Forkserver: empty (the fds arrive with `SCM_RIGHTS`).
    pub(crate) fds: Vec<i32>,
}

/// Magic of a bootstrap frame.
pub(crate) const BOOT_MAGIC: [u8; 8] = *b"MPROCBT2";
/// Magic of a fork server's hello frame (family secret and preload functions).
pub(crate) const HELLO_MAGIC: [u8; 8] = *b"MPROCFS2";
/// Authenticated frame header: magic, payload length (u64 LE), HMAC-SHA256 of the
/// magic, the length and the payload under the start's key.
pub(crate) const BOOT_HEADER: usize = 48;
/// Largest bootstrap payload accepted (arguments included).
pub(crate) const BOOT_MAX: u64 = 1 << 32;

fn frame_mac(key: &[u8; 32], magic: &[u8; 8], payload: &[u8]) -> [u8; 32] {
    mproc_core::code::mac(
        key,
        &[magic, &(payload.len() as u64).to_le_bytes(), payload],
    )
}

/// An authenticated frame: header (magic, length, MAC under `key`) + `payload`.
pub(crate) fn seal_frame(key: &[u8; 32], magic: &[u8; 8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BOOT_HEADER + payload.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&frame_mac(key, magic, payload));
    out.extend_from_slice(payload);
    out
}

/// The bootstrap frame: header + rkyv payload, authenticated with `key`.
pub(crate) fn encode_boot(key: &[u8; 32], boot: &Boot) -> Result<Vec<u8>, CodecError> {
    let enc = codec::encode(boot)?;
    Ok(seal_frame(key, &BOOT_MAGIC, &enc.bytes))
}

/// Parses an authenticated frame's header (`magic` expected); returns (payload length,
/// MAC).
pub(crate) fn parse_boot_header(
    h: &[u8; BOOT_HEADER],
    magic: &[u8; 8],
) -> Result<(u64, [u8; 32]), String> {
    if h[..8] != magic[..] {
        return Err("bad magic (not an mproc bootstrap message)".into());
    }
    let len = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let mac: [u8; 32] = h[16..48].try_into().expect("32 bytes");
    if len == 0 || len > BOOT_MAX {
        return Err(format!("impossible payload length {len}"));
    }
    Ok((len, mac))
}

/// Checks a frame's MAC: the payload was written by whoever holds `key`.
pub(crate) fn check_mac(
    key: &[u8; 32],
    magic: &[u8; 8],
    mac: &[u8; 32],
    payload: &[u8],
) -> Result<(), String> {
    if mproc_core::code::mac_eq(&frame_mac(key, magic, payload), mac) {
        Ok(())
    } else {
        Err("MAC mismatch (not written by the parent: forged, corrupt or foreign data)".into())
    }
}

/// Authenticates and decodes a bootstrap payload.
pub(crate) fn decode_boot(
    key: &[u8; 32],
    nonce: u64,
    mac: &[u8; 32],
    payload: &[u8],
) -> Result<Boot, String> {
    check_mac(key, &BOOT_MAGIC, mac, payload)?;
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    let boot: Boot = codec::decode(&aligned, Vec::new()).map_err(|e| e.to_string())?;
    if boot.nonce != nonce {
        return Err("nonce mismatch (message belongs to another start)".into());
    }
    Ok(boot)
}

/// Outcome tags on the result channel.
const TAG_VALUE: u8 = 0;
const TAG_PANIC: u8 = 1;
const TAG_FAILED: u8 = 2;
const TAG_REFUSED: u8 = 3;
/// Payload prefix before the data (keeps the data 16-byte aligned in the receiver).
const PREFIX: usize = 16;

/// Writes the outcome frame on the (blocking) result socket.
pub(crate) fn write_outcome(sock: BorrowedFd<'_>, outcome: Outcome) -> io::Result<()> {
    let (tag, data, fds): (u8, Vec<u8>, Vec<OwnedFd>) = match outcome {
        Outcome::Value(enc) => (TAG_VALUE, enc.bytes.to_vec(), enc.fds),
        Outcome::Panicked(m) => (TAG_PANIC, m.into_bytes(), Vec::new()),
        Outcome::Failed(m) => (TAG_FAILED, m.into_bytes(), Vec::new()),
        Outcome::Refused(m) => (TAG_REFUSED, m.into_bytes(), Vec::new()),
    };
    let head = FrameHeader {
        nfds: fds.len() as u32,
        len: (PREFIX + data.len()) as u64,
    };
    let mut frame = Vec::with_capacity(HEADER_LEN + PREFIX + data.len());
    frame.extend_from_slice(&head.to_bytes());
    frame.push(tag);
    frame.extend_from_slice(&[0u8; PREFIX - 1]);
    frame.extend_from_slice(&data);
    let mut sent = scm::send_with_fds(sock, &[IoSlice::new(&frame)], &scm::borrow_all(&fds))?;
    while sent < frame.len() {
        match rustix::io::write(sock, &frame[sent..]) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// What the parent received from its child.
#[derive(Debug)]
pub(crate) enum Received<'a> {
    /// The encoded result and its fds.
    Value(&'a [u8], Vec<OwnedFd>),
    /// The panic message.
    Panicked(String),
    /// Why the child could not run or report the target.
    Failed(String),
    /// Why the child refused its bootstrap (nothing ran).
    Refused(String),
}

/// The parent's end of the result channel (non-blocking), with what arrived so far.
#[derive(Debug)]
pub(crate) struct ResultReader {
    sock: OwnedFd,
    buf: AlignedVec<16>,
    fds: Vec<OwnedFd>,
    eof: bool,
}

impl ResultReader {
    /// Wraps the parent's end; makes it non-blocking.
    pub(crate) fn new(sock: OwnedFd) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&sock, true)?;
        Ok(ResultReader {
            sock,
            buf: AlignedVec::new(),
            fds: Vec::new(),
            eof: false,
        })
    }

    /// The socket, for polling.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// The announced frame length, once the header arrived (None if absent or corrupt).
    fn frame_len(&self) -> Option<usize> {
        let h: &[u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        let head = FrameHeader::parse(h, BOOT_MAX).ok()?;
        Some(HEADER_LEN + head.len as usize)
    }

    /// Whether nothing more is worth reading (complete frame, end of stream, or a
    /// corrupt header).
    pub(crate) fn done(&self) -> bool {
        if self.eof {
            return true;
        }
        if self.buf.len() < HEADER_LEN {
            return false;
        }
        match self.frame_len() {
            Some(n) => self.buf.len() >= n,
            None => true,
        }
    }

    /// Reads whatever is available without blocking.
    pub(crate) fn pump(&mut self) -> io::Result<()> {
        // Small reads go through a small stack buffer: right after a fork every page the
        // parent writes is copied (copy-on-write), so a large zeroed buffer per read
        // would cost more than the whole start.
        let mut small = [0u8; 512];
        let mut large: Vec<u8> = Vec::new();
        while !self.done() {
            let missing = self
                .frame_len()
                .map_or(HEADER_LEN, |n| n.saturating_sub(self.buf.len()));
            let chunk: &mut [u8] = if missing <= small.len() {
                &mut small
            } else {
                if large.is_empty() {
                    large = vec![0u8; 1 << 20];
                }
                let n = missing.min(large.len());
                &mut large[..n]
            };
            match scm::recv_with_fds(self.sock.as_fd(), chunk, codec::MAX_FDS as usize) {
                Ok((0, _)) => self.eof = true,
                Ok((n, fds)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.fds.extend(fds);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The outcome, if a complete frame arrived.
    pub(crate) fn take(&mut self) -> Option<Received<'_>> {
        let n = self.frame_len()?;
        if self.buf.len() < n || n < HEADER_LEN + PREFIX {
            return None;
        }
        let tag = self.buf[HEADER_LEN];
        let data = &self.buf[HEADER_LEN + PREFIX..n];
        Some(match tag {
            TAG_VALUE => Received::Value(data, std::mem::take(&mut self.fds)),
            TAG_PANIC => Received::Panicked(String::from_utf8_lossy(data).into_owned()),
            TAG_FAILED => Received::Failed(String::from_utf8_lossy(data).into_owned()),
            TAG_REFUSED => Received::Refused(String::from_utf8_lossy(data).into_owned()),
            t => Received::Failed(format!("corrupt result frame (tag {t})")),
        })
    }
}

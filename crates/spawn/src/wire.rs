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
/// running anything: everything that decides what runs. It travels in a frame
/// authenticated with the start's key ([`seal_frame`]), followed by the encoded
/// arguments, which the MAC does not cover (hashing megabytes of arguments would cost
/// more than the start; they are validated by the codec like any message, and cannot
/// choose what runs).
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
    /// Spawn: the raw numbers of the inherited argument fds, in codec order.
    /// Forkserver: empty (the fds arrive with `SCM_RIGHTS`).
    pub(crate) fds: Vec<i32>,
}

/// Magic of a bootstrap frame.
pub(crate) const BOOT_MAGIC: [u8; 8] = *b"MPROCBT2";
/// Magic of a fork server's hello frame (family secret and preload functions).
pub(crate) const HELLO_MAGIC: [u8; 8] = *b"MPROCFS2";
/// Authenticated frame header: magic, control length (u64 LE), trailer length (u64 LE),
/// HMAC-SHA256 of the magic, both lengths and the control bytes under the start's key.
/// The control bytes follow, then the trailer (the arguments).
pub(crate) const BOOT_HEADER: usize = 56;
/// Largest bootstrap payload accepted (arguments included).
pub(crate) const BOOT_MAX: u64 = 1 << 32;

fn frame_mac(key: &[u8; 32], magic: &[u8; 8], ctrl: &[u8], trailer_len: u64) -> [u8; 32] {
    mproc_core::code::mac(
        key,
        &[
            magic,
            &(ctrl.len() as u64).to_le_bytes(),
            &trailer_len.to_le_bytes(),
            ctrl,
        ],
    )
}

/// An authenticated frame: header (magic, lengths, MAC under `key`), `ctrl`, `trailer`.
pub(crate) fn seal_frame(key: &[u8; 32], magic: &[u8; 8], ctrl: &[u8], trailer: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BOOT_HEADER + ctrl.len() + trailer.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&(ctrl.len() as u64).to_le_bytes());
    out.extend_from_slice(&(trailer.len() as u64).to_le_bytes());
    out.extend_from_slice(&frame_mac(key, magic, ctrl, trailer.len() as u64));
    out.extend_from_slice(ctrl);
    out.extend_from_slice(trailer);
    out
}

/// The bootstrap frame: header, the rkyv `Boot` (authenticated with `key`), the
/// encoded arguments.
pub(crate) fn encode_boot(key: &[u8; 32], boot: &Boot, args: &[u8]) -> Result<Vec<u8>, CodecError> {
    let enc = codec::encode(boot)?;
    Ok(seal_frame(key, &BOOT_MAGIC, &enc.bytes, args))
}

/// The MAC field of the authenticated frame at the start of `frame`, if it is long
/// enough to hold a header.
pub(crate) fn frame_mac_field(frame: &[u8]) -> Option<[u8; 32]> {
    frame.get(24..BOOT_HEADER)?.try_into().ok()
}

/// A parsed authenticated frame header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SealedHeader {
    pub(crate) ctrl_len: u64,
    pub(crate) trailer_len: u64,
    pub(crate) mac: [u8; 32],
}

/// Parses an authenticated frame's header (`magic` expected).
pub(crate) fn parse_boot_header(
    h: &[u8; BOOT_HEADER],
    magic: &[u8; 8],
) -> Result<SealedHeader, String> {
    if h[..8] != magic[..] {
        return Err("bad magic (not an mproc bootstrap message)".into());
    }
    let word = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    let (ctrl_len, trailer_len) = (word(8), word(16));
    let mac: [u8; 32] = h[24..56].try_into().expect("32 bytes");
    if ctrl_len == 0 || ctrl_len > BOOT_MAX || trailer_len > BOOT_MAX - ctrl_len {
        return Err(format!(
            "impossible payload lengths {ctrl_len}, {trailer_len}"
        ));
    }
    Ok(SealedHeader {
        ctrl_len,
        trailer_len,
        mac,
    })
}

/// Checks a frame's MAC: the control bytes (and the trailer's length) were written by
/// whoever holds `key`.
pub(crate) fn check_mac(
    key: &[u8; 32],
    magic: &[u8; 8],
    h: &SealedHeader,
    ctrl: &[u8],
) -> Result<(), String> {
    if mproc_core::code::mac_eq(&frame_mac(key, magic, ctrl, h.trailer_len), &h.mac) {
        Ok(())
    } else {
        Err("MAC mismatch (not written by the parent: forged, corrupt or foreign data)".into())
    }
}

/// Authenticates and decodes a bootstrap message's control bytes.
pub(crate) fn decode_boot(
    key: &[u8; 32],
    nonce: u64,
    h: &SealedHeader,
    ctrl: &[u8],
) -> Result<Boot, String> {
    check_mac(key, &BOOT_MAGIC, h, ctrl)?;
    let mut aligned = AlignedVec::<16>::with_capacity(ctrl.len());
    aligned.extend_from_slice(ctrl);
    let boot: Boot = codec::decode(&aligned, Vec::new()).map_err(|e| e.to_string())?;
    if boot.nonce != nonce {
        return Err("nonce mismatch (message belongs to another start)".into());
    }
    Ok(boot)
}

/// Splits a whole authenticated frame (as the fork server receives it) into its
/// checked header, control bytes and trailer.
pub(crate) fn split_frame<'a>(
    frame: &'a [u8],
    magic: &[u8; 8],
) -> Result<(SealedHeader, &'a [u8], &'a [u8]), String> {
    let (h, ctrl, trailer, rest) = split_frame_prefix(frame, magic)?;
    if !rest.is_empty() {
        return Err("trailing bytes after the request".into());
    }
    Ok((h, ctrl, trailer))
}

/// An authenticated frame's checked header, control bytes and trailer, and the bytes
/// after the frame.
pub(crate) type FramePrefix<'a> = (SealedHeader, &'a [u8], &'a [u8], &'a [u8]);

/// Splits an authenticated frame at the start of `bytes` into its checked header,
/// control bytes and trailer; the bytes after it.
pub(crate) fn split_frame_prefix<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
) -> Result<FramePrefix<'a>, String> {
    let head: &[u8; BOOT_HEADER] = bytes
        .get(..BOOT_HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or("short request")?;
    let h = parse_boot_header(head, magic)?;
    let rest = &bytes[BOOT_HEADER..];
    // Both lengths are at most BOOT_MAX (checked by the header's parser): no overflow.
    let len = usize::try_from(h.ctrl_len + h.trailer_len).map_err(|_| "truncated request")?;
    if rest.len() < len {
        return Err("truncated request".into());
    }
    let (frame, after) = rest.split_at(len);
    let (ctrl, trailer) = frame.split_at(h.ctrl_len as usize);
    Ok((h, ctrl, trailer, after))
}

/// Outcome tags on the result channel.
pub(crate) const TAG_VALUE: u8 = 0;
const TAG_PANIC: u8 = 1;
const TAG_FAILED: u8 = 2;
pub(crate) const TAG_REFUSED: u8 = 3;
/// Payload prefix before the data (keeps the data 16-byte aligned in the receiver).
const PREFIX: usize = 16;

/// Length of a child's proof in an outcome frame's prefix.
pub(crate) const PROOF_LEN: usize = PREFIX - 1;

/// The proof a child authenticated by the start key `key` echoes with its outcome: a
/// MAC that names the start (`nonce`) and the child (`pid`). The parent accepts a
/// returned value, panic or failure only with it.
pub(crate) fn child_proof(key: &[u8; 32], nonce: u64, pid: i32) -> [u8; PROOF_LEN] {
    let m = mproc_core::code::mac(
        key,
        &[
            b"mproc child proof",
            &nonce.to_le_bytes(),
            &pid.to_le_bytes(),
        ],
    );
    m[..PROOF_LEN].try_into().expect("proof length")
}

/// This child's proof (spawn and forkserver children set it once their bootstrap is
/// authenticated; fork children need none).
static PROOF: std::sync::OnceLock<[u8; PROOF_LEN]> = std::sync::OnceLock::new();

/// Sets this child's proof (see [`child_proof`]).
pub(crate) fn set_proof(key: &[u8; 32], nonce: u64) {
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    let _ = PROOF.set(child_proof(key, nonce, pid));
}

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
    frame.extend_from_slice(PROOF.get().unwrap_or(&[0u8; PROOF_LEN]));
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
    /// The proof the child must echo (spawn and forkserver), if any.
    proof: Option<[u8; PROOF_LEN]>,
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
            proof: None,
            buf: AlignedVec::new(),
            fds: Vec::new(),
            eof: false,
        })
    }

    /// Requires the child to echo `proof` (see [`child_proof`]) with any outcome but a
    /// bootstrap refusal.
    pub(crate) fn with_proof(mut self, proof: [u8; PROOF_LEN]) -> Self {
        self.proof = Some(proof);
        self
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

    /// The tag of a complete outcome frame, without taking it.
    pub(crate) fn outcome_tag(&self) -> Option<u8> {
        let n = self.frame_len()?;
        (self.buf.len() >= n && n >= HEADER_LEN + PREFIX).then(|| self.buf[HEADER_LEN])
    }

    /// The outcome, if a complete frame arrived.
    pub(crate) fn take(&mut self) -> Option<Received<'_>> {
        let n = self.frame_len()?;
        if self.buf.len() < n || n < HEADER_LEN + PREFIX {
            return None;
        }
        let tag = self.buf[HEADER_LEN];
        let data = &self.buf[HEADER_LEN + PREFIX..n];
        let echoed = &self.buf[HEADER_LEN + 1..HEADER_LEN + PREFIX];
        if tag != TAG_REFUSED
            && self
                .proof
                .is_some_and(|p| !mproc_core::code::mac_eq(&p, echoed))
        {
            return Some(Received::Refused(
                "the outcome did not come from the authenticated child (wrong proof)".into(),
            ));
        }
        Some(match tag {
            TAG_VALUE => Received::Value(data, std::mem::take(&mut self.fds)),
            TAG_PANIC => Received::Panicked(String::from_utf8_lossy(data).into_owned()),
            TAG_FAILED => Received::Failed(String::from_utf8_lossy(data).into_owned()),
            TAG_REFUSED => Received::Refused(String::from_utf8_lossy(data).into_owned()),
            t => Received::Failed(format!("corrupt result frame (tag {t})")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome_through(proof: Option<[u8; PROOF_LEN]>, outcome: Outcome) -> String {
        let (a, b) = crate::process::pair().unwrap();
        write_outcome(a.as_fd(), outcome).unwrap();
        drop(a);
        let mut r = ResultReader::new(b).unwrap();
        if let Some(p) = proof {
            r = r.with_proof(p);
        }
        while !r.done() {
            r.pump().unwrap();
        }
        format!("{:?}", r.take().unwrap())
    }

    #[test]
    fn an_outcome_without_the_childs_proof_is_refused() {
        // This test process never authenticated a bootstrap: it echoes no proof.
        let key = mproc_core::code::start_key(3);
        let proof = child_proof(&key, 3, 1234);
        let value = || Outcome::Value(codec::encode(&5u32).unwrap());
        let got = outcome_through(Some(proof), value());
        assert!(
            got.contains("Refused") && got.contains("wrong proof"),
            "{got}"
        );
        let got = outcome_through(Some(proof), Outcome::Panicked("boom".into()));
        assert!(got.contains("wrong proof"), "{got}");
        // A bootstrap refusal is reported whatever the proof.
        let got = outcome_through(Some(proof), Outcome::Refused("bad MAC".into()));
        assert!(got.contains("bad MAC"), "{got}");
        // Without a proof required (fork), or with the echoed one, the value arrives.
        assert!(outcome_through(None, value()).starts_with("Value"));
        assert!(outcome_through(Some([0; PROOF_LEN]), value()).starts_with("Value"));
        assert_ne!(proof, child_proof(&key, 3, 1235));
        assert_ne!(proof, child_proof(&key, 4, 1234));
    }
}

//! Scenario 6: corrupt, truncated and oversized frames fed into Connections and Queue
//! slots. Every receive must end in a value or a typed error, promptly (no hang), with
//! no panic; a connection or queue that reported a decode error stays usable.
//!
//! Inputs are random, plus every file of the frame-decoder fuzz corpus (`fuzz/corpus`)
//! when the checkout has one.
use crate::util::Rng;
use crate::{Budget, Outcome};
use mproc_channel::{Connection, GetError, Pipe, Queue, RecvError};
use mproc_core::codec::{FrameHeader, TypeTag, encode};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

type T = (u64, String, Vec<u32>);

const PATIENCE: Duration = Duration::from_secs(3);

fn valid(rng: &mut Rng) -> T {
    let n = rng.below(40) as usize;
    (rng.next_u64(), "x".repeat(n), (0..n as u32).collect())
}

#[derive(Default)]
struct Seen {
    cases: u64,
    kinds: BTreeMap<String, u64>,
}

impl Seen {
    fn saw(&mut self, k: impl Into<String>) {
        self.cases += 1;
        *self.kinds.entry(k.into()).or_default() += 1;
    }
}

fn kind(e: &RecvError) -> String {
    let s = format!("{e:?}");
    s.split(['(', ' ', '{']).next().unwrap_or("?").to_owned()
}

pub(crate) fn run(b: Budget) -> Outcome {
    let mut out = Outcome {
        nothing_lost: true,
        ..Outcome::default()
    };
    let mut rng = Rng::new(b.seed);
    let mut conn = Seen::default();
    let mut queue = Seen::default();
    let corpus = load_corpus();
    let t0 = Instant::now();
    let conn_time = b.time.mul_f64(0.6);
    let mut i = 0usize;
    while t0.elapsed() < conn_time || i < corpus.len() {
        let r = catch_unwind(AssertUnwindSafe(|| {
            conn_case(&mut rng, i, corpus.get(i).map(Vec::as_slice))
        }));
        match r {
            Ok(Ok(k)) => conn.saw(k),
            Ok(Err(v)) => out.violate(format!("connection case {i}: {v}")),
            Err(_) => out.violate(format!("connection case {i}: panicked")),
        }
        i += 1;
        if out.violations.len() > 10 {
            break;
        }
    }
    match catch_unwind(AssertUnwindSafe(|| {
        queue_cases(&mut rng, b.time - conn_time, &mut queue)
    })) {
        Ok(Ok(())) => {}
        Ok(Err(v)) => out.violate(format!("queue: {v}")),
        Err(_) => out.violate("queue: panicked"),
    }
    let show = |s: &Seen| {
        s.kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.load = format!(
        "{} connection frames ({} from a fuzz corpus), {} queue slots",
        conn.cases,
        corpus.len(),
        queue.cases
    );
    out.faults = "random payloads, random headers, truncated frames, oversized lengths, fd-count lies, mistyped and oversized queue messages, queue slots stamped with another type".into();
    out.seen = format!(
        "connection: {}; queue: {}; no panic, no hang",
        show(&conn),
        show(&queue)
    );
    out
}

fn load_corpus() -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut v = Vec::new();
    let Ok(targets) = std::fs::read_dir(&root) else {
        return v;
    };
    for t in targets.flatten() {
        if let Ok(files) = std::fs::read_dir(t.path()) {
            for f in files.flatten() {
                if let Ok(bytes) = std::fs::read(f.path()) {
                    v.push(bytes);
                }
            }
        }
    }
    v
}

fn raw_pair() -> Result<(UnixStream, Connection), String> {
    let (w, r) = UnixStream::pair().map_err(|e| e.to_string())?;
    let c = Connection::from_fd(OwnedFd::from(r)).map_err(|e| e.to_string())?;
    Ok((w, c))
}

/// A typed frame for `T` (as `send::<T>` writes one) whose archive is `archive`, any
/// bytes: so a damaged archive reaches the decoder instead of the type check.
fn typed_frame(archive: &[u8]) -> Vec<u8> {
    typed_frame_fds(archive, 0)
}

/// As [`typed_frame`], with a header that announces `nfds` fds.
fn typed_frame_fds(archive: &[u8], nfds: u32) -> Vec<u8> {
    TypeTag::of::<T>().typed_frame(archive, nfds)
}

/// After a bad frame on `w`, a good one must still come through `c`.
fn still_usable(rng: &mut Rng, w: &mut UnixStream, c: &Connection, k: &str) -> Result<(), String> {
    let v = valid(rng);
    let good = encode(&v).map_err(|e| e.to_string())?;
    w.write_all(&typed_frame(&good.bytes))
        .map_err(|e| e.to_string())?;
    match recv_bounded(c)? {
        Ok(got) if got == v => Ok(()),
        other => Err(format!("after a bad frame ({k}) a good one gave {other:?}")),
    }
}

/// Receives with a bound; a receive that outlives it is a hang.
fn recv_bounded(c: &Connection) -> Result<Result<T, RecvError>, String> {
    let t = Instant::now();
    let r = c.recv_timeout::<T>(PATIENCE);
    if t.elapsed() >= PATIENCE {
        return Err(format!("receive hung ({r:?})"));
    }
    Ok(r)
}

fn conn_case(rng: &mut Rng, i: usize, corpus: Option<&[u8]>) -> Result<String, String> {
    if let Some(bytes) = corpus {
        // A corpus input is a raw stream: header and payload as the fuzzer made them.
        let (mut w, c) = raw_pair()?;
        let _ = w.write_all(bytes);
        drop(w);
        let r = recv_bounded(&c)?;
        return Ok(format!(
            "corpus:{}",
            r.as_ref().map_or_else(kind, |_| "Ok".into())
        ));
    }
    match i % 6 {
        0 => {
            // A typed frame whose archive is random bytes: a decode error, and the
            // connection goes on. Every other time, the same bytes as an untyped
            // message, which a typed receive refuses before decoding.
            let junk = rng.bytes(0, 300);
            if i.is_multiple_of(12) {
                let (a, bconn) = Pipe(true).map_err(|e| e.to_string())?;
                a.send_bytes(&junk).map_err(|e| e.to_string())?;
                let r = recv_bounded(&bconn)?;
                let k = r.as_ref().map_or_else(kind, |_| "Ok".into());
                let v = valid(rng);
                a.send(&v).map_err(|e| e.to_string())?;
                return match recv_bounded(&bconn)? {
                    Ok(got) if got == v => Ok(format!("untyped:{k}")),
                    other => Err(format!(
                        "after an untyped payload ({k}) a good one gave {other:?}"
                    )),
                };
            }
            let (mut w, c) = raw_pair()?;
            let _ = w.write_all(&typed_frame(&junk));
            let r = recv_bounded(&c)?;
            let k = r.as_ref().map_or_else(kind, |_| "Ok".into());
            still_usable(rng, &mut w, &c, &k)?;
            Ok(format!("payload:{k}"))
        }
        1 => {
            // Random bytes where a header should be, then EOF.
            let (mut w, c) = raw_pair()?;
            let _ = w.write_all(&rng.bytes(1, 64));
            drop(w);
            let r = recv_bounded(&c)?;
            Ok(format!(
                "header:{}",
                r.as_ref().map_or_else(kind, |_| "Ok".into())
            ))
        }
        2 => {
            // A valid header, then part of the payload, then the writer dies.
            let (mut w, c) = raw_pair()?;
            let len = 32 + rng.below(4000);
            let h = FrameHeader { nfds: 0, len }.to_bytes();
            let _ = w.write_all(&h);
            let _ = w.write_all(&rng.bytes(0, len));
            drop(w);
            match recv_bounded(&c)? {
                Err(e) => Ok(format!("truncated:{}", kind(&e))),
                Ok(v) => Err(format!("a truncated frame decoded as {v:?}")),
            }
        }
        3 => {
            // An oversized length, with the writer still connected.
            let (mut w, c) = raw_pair()?;
            let len = c.max_message_size() as u64 + 1 + rng.below(u64::MAX / 2);
            let _ = w.write_all(&FrameHeader { nfds: 0, len }.to_bytes());
            let r = recv_bounded(&c)?;
            drop(w);
            match r {
                Err(e) => Ok(format!("oversized:{}", kind(&e))),
                Ok(v) => Err(format!("an oversized frame decoded as {v:?}")),
            }
        }
        4 => {
            // A header announcing fds that never come.
            let (mut w, c) = raw_pair()?;
            let payload = encode(&valid(rng)).map_err(|e| e.to_string())?;
            let nfds = 1 + rng.below(300) as u32;
            let _ = w.write_all(&typed_frame_fds(&payload.bytes, nfds));
            let r = recv_bounded(&c)?;
            drop(w);
            Ok(format!(
                "fd-lie:{}",
                r.as_ref().map_or_else(kind, |_| "Ok".into())
            ))
        }
        _ => {
            // A valid encoding with bytes flipped, in a correctly typed frame: the
            // archive's validation must catch it (or it decodes to some valid value).
            let (mut w, c) = raw_pair()?;
            let mut bytes = encode(&valid(rng))
                .map_err(|e| e.to_string())?
                .bytes
                .to_vec();
            for _ in 0..1 + rng.below(4) {
                if !bytes.is_empty() {
                    let at = rng.below(bytes.len() as u64) as usize;
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            let _ = w.write_all(&typed_frame(&bytes));
            let r = recv_bounded(&c)?;
            let k = r.as_ref().map_or_else(kind, |_| "Ok".into());
            still_usable(rng, &mut w, &c, &k)?;
            Ok(format!("bitflip:{k}"))
        }
    }
}

/// Ring layout (crates/channel/src/queue/ring.rs), to damage slots in place: the
/// queue checks its message type on import, so a differently typed view of the same
/// ring is refused and the damage has to be done to the shared bytes themselves.
const RING_HEADER: usize = 384;
const SLOT_HEADER: usize = 32;
const SLOT_KIND: usize = 8;
const SLOT_LEN: usize = 16;
const SLOT_TYPE: usize = 24;
const KIND_INLINE: u32 = 1;

/// Valid messages put into a `Queue<T>`, then damaged in their slot before the get:
/// random payload bytes, a shortened length, a length past the slot, a random kind word,
/// a random type fingerprint (then `TypeMismatch`).
/// Each get ends in a value or `Corrupt`, promptly, and the queue goes on.
fn queue_cases(rng: &mut Rng, time: Duration, seen: &mut Seen) -> Result<(), String> {
    let typed: Queue<T> = Queue::with_maxsize(16).map_err(|e| e.to_string())?;
    let stride = (SLOT_HEADER + typed.slot_size()).next_multiple_of(64);
    let cap = typed.maxsize() as u64;
    let e = encode(&typed).map_err(|e| e.to_string())?;
    let fd = e
        .fds
        .into_iter()
        .next()
        .ok_or("a queue without its region")?;
    let ring = mproc_core::Region::from_fd(fd).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut pos = 0u64;
    let mut i = 0u64;
    while t0.elapsed() < time || i < 20 {
        i += 1;
        let slot = RING_HEADER + (pos % cap) as usize * stride;
        pos += 1;
        typed.put(valid(rng)).map_err(|e| format!("put: {e}"))?;
        let mut word = [0u8; 8];
        ring.read_bytes(slot + SLOT_KIND, &mut word[..4])
            .map_err(|e| e.to_string())?;
        let inline = u32::from_le_bytes([word[0], word[1], word[2], word[3]]) == KIND_INLINE;
        ring.read_bytes(slot + SLOT_LEN, &mut word)
            .map_err(|e| e.to_string())?;
        let len = u64::from_le_bytes(word);
        let label = if !inline || len == 0 {
            "untouched"
        } else {
            match i % 5 {
                4 => {
                    let t = rng.next_u64();
                    ring.write_bytes(slot + SLOT_TYPE, &t.to_le_bytes())
                        .map_err(|e| e.to_string())?;
                    "type"
                }
                0 => {
                    let huge = typed.slot_size() as u64 + 1 + rng.below(u64::MAX / 2);
                    ring.write_bytes(slot + SLOT_LEN, &huge.to_le_bytes())
                        .map_err(|e| e.to_string())?;
                    "oversized"
                }
                1 => {
                    let short = rng.below(len);
                    ring.write_bytes(slot + SLOT_LEN, &short.to_le_bytes())
                        .map_err(|e| e.to_string())?;
                    "truncated"
                }
                2 => {
                    let k = rng.next_u64() as u32;
                    ring.write_bytes(slot + SLOT_KIND, &k.to_le_bytes())
                        .map_err(|e| e.to_string())?;
                    "kind"
                }
                _ => {
                    let junk = rng.bytes(len as usize, 1);
                    ring.write_bytes(slot + SLOT_HEADER, &junk[..len as usize])
                        .map_err(|e| e.to_string())?;
                    "random"
                }
            }
        };
        let t = Instant::now();
        let r = typed.get_timeout(PATIENCE);
        if t.elapsed() >= PATIENCE {
            return Err(format!("get hung on a {label} slot ({r:?})"));
        }
        match r {
            Ok(_) => seen.saw(format!("{label}:Ok")),
            Err(GetError::Corrupt(_)) => seen.saw(format!("{label}:Corrupt")),
            Err(GetError::TypeMismatch(_)) if label == "type" => {
                seen.saw(format!("{label}:TypeMismatch"))
            }
            Err(e) => return Err(format!("a {label} slot gave {e} (message lost)")),
        }
        if i.is_multiple_of(16) {
            let v = valid(rng);
            pos += 1;
            typed.put(v.clone()).map_err(|e| format!("put: {e}"))?;
            match typed.get_timeout(PATIENCE) {
                Ok(got) if got == v => {}
                other => return Err(format!("after corrupt slots a good message gave {other:?}")),
            }
        }
    }
    Ok(())
}

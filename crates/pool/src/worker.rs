//! The worker process: runs the initializer once, then the chunks its parent sends,
//! reporting every item's outcome. It publishes which item it is running in a small
//! shared region, so that the parent knows exactly which task a dead or overdue worker
//! was running.
use crate::func::{CallCtx, FnRef, PackedCtx, StateSlot, panic_text};
use crate::wire::{self, Cursor, FrameBuf, InBuf};
use mproc_core::futex::Spinner;
use mproc_core::logger::Level;
use mproc_core::mp_log;
use mproc_core::{Handle, Region};
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a worker process is started with.
#[derive(Archive, Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    pub(crate) sock: Handle<OwnedFd>,
    pub(crate) progress: Region,
    /// The initializer: trampoline and function offsets, encoded arguments.
    pub(crate) init: Option<InitArgs>,
    /// Items after which the worker retires (0: never).
    pub(crate) max_tasks: u64,
    /// The pool's `wake` eventfd: rung after sending results while nobody drives.
    pub(crate) wake: Handle<OwnedFd>,
    /// The pool's bell region (word 0: a thread drives the dispatcher).
    pub(crate) bells: Region,
}

/// How a worker announces the results it sent.
struct Announce<'a> {
    progress: &'a Progress<'a>,
    driving: &'a AtomicU64,
    wake: std::os::fd::BorrowedFd<'a>,
}

impl Announce<'_> {
    fn sent(&self) {
        // Paired with the driver's SeqCst clearing of `driving`: either it still
        // drives and reads this worker's doorbell, or this ring wakes the pool's thread.
        self.progress.from_worker.fetch_add(1, Ordering::SeqCst);
        if self.driving.load(Ordering::SeqCst) == 0 {
            let _ = rustix::io::write(self.wake, &1u64.to_ne_bytes());
        }
    }
}

/// An initializer and its encoded arguments.
#[derive(Archive, Serialize, Deserialize)]
pub(crate) struct InitArgs {
    pub(crate) tramp: u64,
    pub(crate) func: u64,
    /// The fingerprint of the initializer's type.
    pub(crate) sig: u64,
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<Handle<OwnedFd>>,
}

impl std::fmt::Debug for WorkerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerArgs").finish_non_exhaustive()
    }
}

/// The shared progress record of one worker (a seqlock: `seq` is odd while an item runs).
pub(crate) struct Progress<'a> {
    seq: &'a AtomicU64,
    chunk: &'a AtomicU64,
    pos: &'a AtomicU64,
    start_ns: &'a AtomicU64,
    /// Bumped by the parent after each write to the worker: a doorbell the worker spins
    /// on before it sleeps in `recv` (a hint only; the socket carries the data).
    pub(crate) to_worker: &'a AtomicU64,
    /// Bumped by the worker after each write to the parent: the dispatcher's doorbell.
    pub(crate) from_worker: &'a AtomicU64,
}

/// What a worker was doing, read from its progress record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Running {
    pub(crate) chunk: u64,
    pub(crate) pos: u32,
    pub(crate) start_ns: u64,
}

pub(crate) const PROGRESS_LEN: usize = 64;
/// Offsets of the doorbells in the progress region (see [`Progress`]).
pub(crate) const TO_WORKER: usize = 32;
pub(crate) const FROM_WORKER: usize = 40;

impl<'a> Progress<'a> {
    pub(crate) fn new(r: &'a Region) -> Option<Self> {
        Some(Progress {
            seq: r.atomic_u64(0)?,
            chunk: r.atomic_u64(8)?,
            pos: r.atomic_u64(16)?,
            start_ns: r.atomic_u64(24)?,
            to_worker: r.atomic_u64(TO_WORKER)?,
            from_worker: r.atomic_u64(FROM_WORKER)?,
        })
    }

    fn begin(&self, chunk: u64, pos: u32, timed: bool) {
        self.chunk.store(chunk, Ordering::Relaxed);
        self.pos.store(pos as u64, Ordering::Relaxed);
        if timed {
            self.start_ns.store(now_ns(), Ordering::Relaxed);
        }
        self.seq.fetch_add(1, Ordering::Release);
    }

    /// Moves to the next item of a packed chunk (the seqlock stays odd: readers that
    /// race with this see either item, both of which are this chunk's).
    #[inline]
    pub(crate) fn item(&self, pos: u32, timed: bool) {
        if timed {
            self.start_ns.store(now_ns(), Ordering::Relaxed);
        }
        self.pos.store(pos as u64, Ordering::Release);
    }

    fn end(&self) {
        self.seq.fetch_add(1, Ordering::Release);
    }

    /// The item running now, if any.
    pub(crate) fn running(&self) -> Option<Running> {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1.is_multiple_of(2) {
                return None;
            }
            // `item` stores the start time before the position (Release): a position
            // read here (Acquire) comes with its own start time or a later one, so a
            // time limit is never enforced early.
            let chunk = self.chunk.load(Ordering::Relaxed);
            let pos = self.pos.load(Ordering::Acquire) as u32;
            let r = Running {
                chunk,
                pos,
                start_ns: self.start_ns.load(Ordering::Relaxed),
            };
            std::sync::atomic::fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return Some(r);
            }
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the same clock in every process).
pub(crate) fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Results waiting to be sent, as one open `RESULTS` frame.
struct Outbox {
    frame: FrameBuf,
    count: u32,
    first: Option<Instant>,
}

impl Outbox {
    fn new() -> Self {
        Outbox {
            frame: FrameBuf::new(),
            count: 0,
            first: None,
        }
    }

    fn record(&mut self, chunk: u64, pos: u32, status: u32, payload: &[u8], elapsed: Duration) {
        self.record_fds(chunk, pos, status, payload, Vec::new(), elapsed)
    }

    fn record_fds(
        &mut self,
        chunk: u64,
        pos: u32,
        status: u32,
        payload: &[u8],
        fds: Vec<OwnedFd>,
        elapsed: Duration,
    ) {
        if self.count == 0 {
            self.frame.begin(wire::K_RESULTS, 0, 0);
            self.first = Some(Instant::now());
        }
        self.count += 1;
        let f = &mut self.frame;
        f.bytes.reserve(payload.len() + 48);
        f.put_u64(chunk);
        f.put_u32(pos);
        f.put_u32(status);
        f.put_u64(payload.len() as u64);
        f.put_u32(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
        f.put_u32(fds.len() as u32);
        f.put_payload(payload);
        f.put_fds(fds);
    }

    /// As [`Outbox::record_fds`], for a large payload the frame takes over as it is.
    fn record_owned(
        &mut self,
        chunk: u64,
        status: u32,
        payload: AlignedVec,
        fds: Vec<OwnedFd>,
        elapsed: Duration,
    ) {
        self.record_fds(chunk, u32::MAX, status, &[], fds, elapsed);
        // The record just written (32 bytes, length at 16) says length 0: set it, then
        // append the payload.
        let f = &mut self.frame;
        let at = f.bytes.len() - 16;
        f.bytes.as_mut_slice()[at..at + 8].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        f.put_owned(payload);
    }

    fn should_flush(&self) -> bool {
        self.count > 0
            && (self.frame.len() >= 256 * 1024
                || self
                    .first
                    .is_some_and(|t| t.elapsed() >= Duration::from_micros(500)))
    }

    fn flush(&mut self, sock: std::os::fd::BorrowedFd<'_>, a: &Announce<'_>) -> io::Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        self.frame.end();
        self.frame.set_count(self.count);
        let f = std::mem::take(&mut self.frame);
        self.count = 0;
        self.first = None;
        // A frame the socket cannot take whole (large results) rings the doorbell each
        // time the socket is full, so the parent drains it meanwhile.
        wire::write_all(sock, f, &mut || a.sent())?;
        a.sent();
        Ok(())
    }
}

/// How long a worker spins for its next frame before it sleeps (learns per process).
static SPIN: Spinner = Spinner::new();

/// The worker process's entry point.
pub(crate) fn worker_main(args: WorkerArgs) {
    // The panic message travels to the parent; do not also print it here.
    std::panic::set_hook(Box::new(|_| {}));
    crate::sys::keep_heap();
    let _ = run(args);
}

fn run(args: WorkerArgs) -> io::Result<()> {
    let Handle(sock) = args.sock;
    let sock = sock.as_fd();
    let progress = Progress::new(&args.progress)
        .ok_or_else(|| io::Error::other("progress region too small"))?;
    let Handle(wake) = args.wake;
    let announce = Announce {
        progress: &progress,
        driving: args
            .bells
            .atomic_u64(0)
            .ok_or_else(|| io::Error::other("bell region too small"))?,
        wake: wake.as_fd(),
    };
    let mut out = Outbox::new();
    if let Some(init) = args.init {
        let f = FnRef {
            tramp: init.tramp,
            func: init.func,
            packed: None,
            sig: init.sig,
        };
        let mut bytes = AlignedVec::<16>::new();
        bytes.extend_from_slice(&init.bytes);
        let mut ctx = CallCtx {
            func: 0,
            sig: 0,
            input: &bytes,
            fds: init.fds.into_iter().map(|h| h.0).collect(),
            state: None,
            out: None,
        };
        let r = catch_unwind(AssertUnwindSafe(|| f.call(&mut ctx)));
        let failure = match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some((wire::ST_ERROR, e)),
            Err(p) => Some((wire::ST_PANIC, panic_text(&*p))),
        };
        if let Some((status, text)) = failure {
            let mut fb = FrameBuf::new();
            fb.begin(wire::K_INIT_FAILED, 1, 0);
            fb.put_u64(0);
            fb.put_u32(0);
            fb.put_u32(status);
            fb.put_u64(text.len() as u64);
            fb.put_u32(0);
            fb.put_u32(0);
            fb.put_payload(text.as_bytes());
            fb.end();
            // Small, and the parent reads it while it waits for the workers to start.
            return wire::write_all(sock, fb, &mut || ());
        }
    }
    // Non-blocking: the worker spins on its doorbell and polls when it sleeps.
    rustix::fs::fcntl_setfl(sock, rustix::fs::OFlags::NONBLOCK)?;
    let mut inbuf = InBuf::new();
    let mut states: HashMap<u64, StateSlot> = HashMap::new();
    let mut done: u64 = 0;
    let mut seen = progress.to_worker.load(Ordering::Acquire);
    loop {
        while let Some(mut frame) = inbuf.next_frame()? {
            let body = inbuf.body(&frame);
            let mut c = Cursor::new(body);
            let kind = c.u32()?;
            let count = c.u32()?;
            let arg = c.u64()?;
            match kind {
                wire::K_RUN => {
                    let tramp = c.u64()?;
                    let func = c.u64()?;
                    let state_id = c.u64()?;
                    let flags = c.u64()?;
                    let sig = c.u64()?;
                    let _ = c.u64()?;
                    let f = FnRef {
                        tramp,
                        func,
                        packed: None,
                        sig,
                    };
                    let timed = flags & wire::F_TIMED != 0;
                    if flags & wire::F_PACKED != 0 {
                        let _pos = c.u32()?;
                        let nfds = c.u32()? as usize;
                        let len = c.u64()? as usize;
                        let input = c.payload(len)?;
                        let nskip = c.u32()? as usize;
                        let _ = c.u32()?;
                        let _ = c.u64()?;
                        let raw = c.payload(nskip * 4)?;
                        let skip: Vec<u32> = raw
                            .chunks_exact(4)
                            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                            .collect();
                        let fds: Vec<OwnedFd> =
                            frame.fds.drain(..nfds.min(frame.fds.len())).collect();
                        let t0 = Instant::now();
                        progress.begin(arg, 0, timed);
                        let mut ctx = PackedCtx {
                            func: 0,
                            sig: 0,
                            input,
                            fds,
                            skip: &skip,
                            progress: &progress,
                            timed,
                            ran: 0,
                            failures: Vec::new(),
                            out: None,
                        };
                        let r = catch_unwind(AssertUnwindSafe(|| f.call_packed(&mut ctx)));
                        progress.end();
                        let el = t0.elapsed() / (count.max(1));
                        for (pos, msg) in std::mem::take(&mut ctx.failures) {
                            out.record(arg, pos, wire::ST_PANIC, msg.as_bytes(), el);
                        }
                        match r {
                            Ok(Ok(())) => {
                                let enc = ctx.out.take().expect("a trampoline sets its output");
                                out.record_owned(arg, wire::ST_PACKED, enc.bytes, enc.fds, el);
                            }
                            Ok(Err(e)) => {
                                out.record(arg, u32::MAX, wire::ST_PACKED_ERR, e.as_bytes(), el)
                            }
                            Err(p) => out.record(
                                arg,
                                u32::MAX,
                                wire::ST_PACKED_ERR,
                                panic_text(&*p).as_bytes(),
                                el,
                            ),
                        }
                        done += ctx.ran;
                        drop(ctx);
                        // Results of chunks already received go out together, unless
                        // this one took long or the batch is large.
                        if t0.elapsed() >= Duration::from_millis(1) || out.should_flush() {
                            out.flush(sock, &announce)?;
                        }
                    } else {
                        for _ in 0..count {
                            let pos = c.u32()?;
                            let nfds = c.u32()? as usize;
                            let len = c.u64()? as usize;
                            let input = c.payload(len)?;
                            let fds: Vec<OwnedFd> =
                                frame.fds.drain(..nfds.min(frame.fds.len())).collect();
                            let mut ctx = CallCtx {
                                func: 0,
                                sig: 0,
                                input,
                                fds,
                                state: if state_id == 0 {
                                    None
                                } else {
                                    states.get_mut(&state_id)
                                },
                                out: None,
                            };
                            let t0 = Instant::now();
                            progress.begin(arg, pos, timed);
                            let r = catch_unwind(AssertUnwindSafe(|| f.call(&mut ctx)));
                            progress.end();
                            let el = t0.elapsed();
                            match r {
                                Ok(Ok(())) => {
                                    let enc = ctx.out.take().expect("a trampoline sets its output");
                                    out.record_fds(arg, pos, wire::ST_OK, &enc.bytes, enc.fds, el);
                                }
                                Ok(Err(e)) => {
                                    out.record(arg, pos, wire::ST_ERROR, e.as_bytes(), el)
                                }
                                Err(p) => out.record(
                                    arg,
                                    pos,
                                    wire::ST_PANIC,
                                    panic_text(&*p).as_bytes(),
                                    el,
                                ),
                            }
                            done += 1;
                            if el >= Duration::from_millis(1) || out.should_flush() {
                                out.flush(sock, &announce)?;
                            }
                        }
                    }
                }
                wire::K_STATE => {
                    let _pos = c.u32()?;
                    let nfds = c.u32()? as usize;
                    let len = c.u64()? as usize;
                    let mut bytes = AlignedVec::<16>::new();
                    bytes.extend_from_slice(c.payload(len)?);
                    let fds = frame.fds.drain(..nfds.min(frame.fds.len())).collect();
                    states.insert(arg, StateSlot::new(bytes, fds));
                }
                wire::K_DROP_STATE => {
                    states.remove(&arg);
                }
                wire::K_EXIT => {
                    mp_log!(Level::DEBUG, "worker got sentinel -- exiting");
                    mp_log!(Level::DEBUG, "worker exiting after {done} tasks");
                    out.flush(sock, &announce)?;
                    return Ok(());
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unknown pool frame",
                    ));
                }
            }
            inbuf.consume(&frame);
            if args.max_tasks != 0 && done >= args.max_tasks {
                mp_log!(Level::DEBUG, "worker exiting after {done} tasks");
                out.flush(sock, &announce)?;
                return Ok(());
            }
        }
        out.flush(sock, &announce)?;
        // Before sleeping, spin briefly on the parent's doorbell: a caller waiting on
        // the result just sent often submits the next task at once, and a sleeping
        // hand-over costs far more than the spin. The bell is read before each read of
        // the socket, so a ring that announced bytes already read only costs one read
        // that finds nothing.
        let bell = || progress.to_worker.load(Ordering::Acquire);
        let mut try_now = inbuf.filled_up();
        let n = loop {
            if !try_now {
                if !SPIN.spin(|| bell() != seen) {
                    let t = Instant::now();
                    wire::wait_readable(sock);
                    SPIN.after_sleep(t.elapsed(), true);
                }
                seen = bell();
            }
            match inbuf.fill(sock) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => try_now = false,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            out.flush(sock, &announce)?;
            return Ok(());
        }
    }
}

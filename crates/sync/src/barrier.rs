//! [`Barrier`]: Python's `multiprocessing.Barrier`.
//!
//! One shared word holds the round's arrival count (16 bits), the round number
//! (15 bits) and a "broken" bit. An arrival claims its index by compare-and-swap; the
//! last one runs the action, then opens the next round (count 0, round + 1) and wakes
//! the others. `reset` advances the round by two, so that waiters of the round it
//! interrupts can tell it from a normal release and report [`BrokenBarrier`].
use crate::error::CreateError;
use crate::sys::{Shared, SharedState, action_from_sealed, seal_action};
use mproc_core::futex;
use mproc_core::futex::Spinner;
use mproc_core::transfer::{Exporter, Importer, TransferError};
use mproc_core::{Deadline, Region, Transfer};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const COUNT_MASK: u32 = 0xffff;
const GEN_SHIFT: u32 = 16;
const GEN_MASK: u32 = 0x7fff;
const BROKEN: u32 = 1 << 31;
/// Most parties a barrier can have.
pub const MAX_PARTIES: u32 = COUNT_MASK;

fn gen_of(w: u32) -> u32 {
    (w >> GEN_SHIFT) & GEN_MASK
}

fn with_gen(g: u32) -> u32 {
    (g & GEN_MASK) << GEN_SHIFT
}

/// The barrier is broken: aborted, reset while waiting, timed out, or its action
/// panicked. Python: `threading.BrokenBarrierError`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokenBarrier;

impl fmt::Display for BrokenBarrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the barrier is broken (aborted, reset, timed out, or its action failed)")
    }
}

impl std::error::Error for BrokenBarrier {}

/// The shared state of a [`Barrier`] (in-place form: see [`SharedState`]).
#[repr(C)]
#[derive(Debug, Default)]
pub struct RawBarrier {
    word: AtomicU32,
    sleepers: AtomicU32,
    parties: AtomicU32,
    spin: Spinner,
}

// SAFETY: #[repr(C)], atomics only. Zero is a barrier of 0 parties, which every wait
// reports as broken until `init` sets the parties.
#[allow(unsafe_code)]
unsafe impl SharedState for RawBarrier {}

impl RawBarrier {
    /// Sets the number of parties and empties the barrier. Call before sharing.
    pub fn init(&self, parties: u32) {
        self.parties.store(parties, Ordering::Release);
        self.word.store(0, Ordering::Release);
    }

    fn wake(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            futex::wake_all(&self.word);
        }
    }

    /// Waits for the other parties; returns this arrival's index.
    pub fn wait(&self, action: Option<fn()>, deadline: Deadline) -> Result<usize, BrokenBarrier> {
        let parties = self.parties.load(Ordering::Acquire);
        if parties == 0 || parties > MAX_PARTIES {
            return Err(BrokenBarrier);
        }
        let (index, round) = loop {
            let w = self.word.load(Ordering::Acquire);
            if w & BROKEN != 0 {
                return Err(BrokenBarrier);
            }
            let count = w & COUNT_MASK;
            if count >= parties {
                // More processes than parties, and this round is being released:
                // wait for the next round to open.
                if !self.sleep_while(w, deadline) {
                    return Err(self.time_out(gen_of(w)));
                }
                continue;
            }
            if self
                .word
                .compare_exchange(w, w + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                break (count, gen_of(w));
            }
        };
        if index + 1 == parties {
            if let Some(f) = action
                && let Err(panic) = std::panic::catch_unwind(f)
            {
                self.abort();
                std::panic::resume_unwind(panic);
            }
            let mut w = self.word.load(Ordering::Acquire);
            loop {
                if w & BROKEN != 0 || gen_of(w) != round {
                    self.wake();
                    return Err(BrokenBarrier);
                }
                match self.word.compare_exchange(
                    w,
                    with_gen(round + 1),
                    Ordering::SeqCst,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(now) => w = now,
                }
            }
            self.wake();
            return Ok(index as usize);
        }
        let mut spun = false;
        loop {
            let w = self.word.load(Ordering::Acquire);
            let g = gen_of(w);
            if g == (round + 1) & GEN_MASK {
                return Ok(index as usize); // released (even if broken since)
            }
            if g != round || w & BROKEN != 0 {
                return Err(BrokenBarrier); // reset or broken during our round
            }
            if !spun {
                spun = true;
                if self.spin.spin(|| self.word.load(Ordering::Acquire) != w) {
                    continue;
                }
            }
            if !self.sleep_while(w, deadline) {
                // Timed out: break the barrier for everyone of this round.
                let w = self.word.load(Ordering::Acquire);
                if gen_of(w) == (round + 1) & GEN_MASK {
                    return Ok(index as usize);
                }
                return Err(self.time_out(round));
            }
        }
    }

    /// Sleeps while the word equals `w`; `false` once the deadline passed.
    fn sleep_while(&self, w: u32, deadline: Deadline) -> bool {
        if deadline.is_expired() {
            return false;
        }
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let t = std::time::Instant::now();
        futex::wait(&self.word, w, deadline);
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        self.spin
            .after_sleep(t.elapsed(), self.word.load(Ordering::Acquire) != w);
        true
    }

    /// Breaks the barrier if it is still in round `round`.
    fn time_out(&self, round: u32) -> BrokenBarrier {
        let mut w = self.word.load(Ordering::Acquire);
        while gen_of(w) == round && w & BROKEN == 0 {
            match self
                .word
                .compare_exchange(w, w | BROKEN, Ordering::SeqCst, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        self.wake();
        BrokenBarrier
    }

    /// Breaks the barrier: current and future waiters get [`BrokenBarrier`].
    pub fn abort(&self) {
        self.word.fetch_or(BROKEN, Ordering::SeqCst);
        self.wake();
    }

    /// Empties the barrier; current waiters get [`BrokenBarrier`].
    pub fn reset(&self) {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let new = with_gen(gen_of(w) + 2);
            match self
                .word
                .compare_exchange(w, new, Ordering::SeqCst, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        self.wake();
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        self.word.load(Ordering::Acquire) & BROKEN != 0
    }

    /// Parties waiting in the current round (0 when broken).
    pub fn n_waiting(&self) -> u32 {
        let w = self.word.load(Ordering::Acquire);
        if w & BROKEN != 0 {
            0
        } else {
            (w & COUNT_MASK).min(self.parties())
        }
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.parties.load(Ordering::Relaxed)
    }
}

/// A process-shared barrier: Python's `multiprocessing.Barrier(parties, action, timeout)`.
///
/// `wait` returns an index unique among the parties of one round (`0..parties`); the
/// optional action (a plain `fn()`) runs exactly once per round, in the last process
/// to arrive, before anyone is released.
///
/// A handle with an action carries that function as an offset in the program's code,
/// sealed with the process tree's secret (see `mproc_core::code`): it can be sent only
/// to processes of the same tree (children started by any start method, their
/// children, and back), which run the same build. A handle with an action that
/// arrives from anywhere else (a `Listener`'s peer, another program, another run of
/// this one) is refused on import with `TransferError::Code`, so bytes a foreign peer
/// chose never become a callable function. A handle without an action travels
/// anywhere.
///
/// ```
/// use mproc_sync::Barrier;
/// let b = Barrier::new(2).unwrap();
/// let b2 = b.clone();
/// let t = std::thread::spawn(move || b2.wait().unwrap());
/// let mine = b.wait().unwrap();
/// let theirs = t.join().unwrap();
/// assert_eq!(mine + theirs, 1); // indices 0 and 1
/// ```
pub struct Barrier {
    state: Shared<RawBarrier>,
    action: Option<fn()>,
    timeout: Option<Duration>,
}

/// Options for a [`Barrier`]: `Barrier::builder(n).action(f).timeout(t).build()`.
#[derive(Debug, Clone)]
pub struct BarrierBuilder {
    parties: u32,
    action: Option<fn()>,
    timeout: Option<Duration>,
}

impl BarrierBuilder {
    /// A function run once per round by the last party to arrive (Python: `action`).
    pub fn action(mut self, f: fn()) -> Self {
        self.action = Some(f);
        self
    }

    /// The default timeout of [`Barrier::wait`] (Python: `timeout`).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Creates the barrier in a shared region of its own.
    ///
    /// # Errors
    /// `parties` is 0 or above [`MAX_PARTIES`], or the region could not be allocated.
    pub fn build(self) -> Result<Barrier, CreateError> {
        check_parties(self.parties)?;
        let state: Shared<RawBarrier> = Shared::alloc("Barrier")?;
        state.get().init(self.parties);
        Ok(Barrier {
            state,
            action: self.action,
            timeout: self.timeout,
        })
    }

    /// Creates the barrier at `offset` of `region` (initialising it now: do this once,
    /// before other processes use it).
    ///
    /// # Errors
    /// Bad `parties`, or `offset` out of bounds or misaligned.
    pub fn build_in_region(
        self,
        region: Arc<Region>,
        offset: usize,
    ) -> Result<Barrier, CreateError> {
        check_parties(self.parties)?;
        let state: Shared<RawBarrier> = Shared::at(region, offset).ok_or(
            CreateError::InvalidArgument("offset outside the region or misaligned"),
        )?;
        state.get().init(self.parties);
        Ok(Barrier {
            state,
            action: self.action,
            timeout: self.timeout,
        })
    }
}

fn check_parties(parties: u32) -> Result<(), CreateError> {
    if parties == 0 || parties > MAX_PARTIES {
        return Err(CreateError::InvalidArgument(
            "a barrier needs between 1 and 65535 parties",
        ));
    }
    Ok(())
}

impl Barrier {
    /// A barrier for `parties` parties, without action or default timeout.
    ///
    /// # Errors
    /// As [`BarrierBuilder::build`].
    pub fn new(parties: u32) -> Result<Self, CreateError> {
        Self::builder(parties).build()
    }

    /// Options: action and default timeout.
    pub fn builder(parties: u32) -> BarrierBuilder {
        BarrierBuilder {
            parties,
            action: None,
            timeout: None,
        }
    }

    /// Waits until all parties have arrived (or the default timeout passes, which
    /// breaks the barrier). Returns an index in `0..parties`, unique in this round.
    /// Python: `wait()`.
    ///
    /// # Errors
    /// [`BrokenBarrier`] if the barrier is or becomes broken while waiting.
    pub fn wait(&self) -> Result<usize, BrokenBarrier> {
        self.state
            .get()
            .wait(self.action, Deadline::from_timeout(self.timeout))
    }

    /// As [`Barrier::wait`] with this `timeout` instead of the default one.
    /// Python: `wait(timeout)`.
    ///
    /// # Errors
    /// [`BrokenBarrier`], also when the timeout passes (which breaks the barrier).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, BrokenBarrier> {
        self.state.get().wait(self.action, Deadline::after(timeout))
    }

    /// Breaks the barrier. Python: `abort()`.
    pub fn abort(&self) {
        self.state.get().abort()
    }

    /// Returns the barrier to its empty state; parties waiting get [`BrokenBarrier`].
    /// Python: `reset()`.
    pub fn reset(&self) {
        self.state.get().reset()
    }

    /// Whether the barrier is broken. Python: `broken`.
    pub fn broken(&self) -> bool {
        self.state.get().broken()
    }

    /// The number of parties. Python: `parties`.
    pub fn parties(&self) -> u32 {
        self.state.get().parties()
    }

    /// Parties waiting now. Python: `n_waiting`.
    pub fn n_waiting(&self) -> u32 {
        self.state.get().n_waiting()
    }
}

impl Clone for Barrier {
    /// Another handle on the same barrier (with the same action and timeout).
    fn clone(&self) -> Self {
        Barrier {
            state: self.state.clone(),
            action: self.action,
            timeout: self.timeout,
        }
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("n_waiting", &self.n_waiting())
            .field("broken", &self.broken())
            .field("action", &self.action.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Transfer for Barrier {
    const KIND: &'static str = "mproc_sync::Barrier";
    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        self.state.export(out)?;
        match self.action {
            Some(f) => {
                let sealed = seal_action(f);
                out.put_u64(1);
                out.put_u64(sealed.offset);
                out.put_u64(sealed.sig);
                out.put_bytes(&sealed.tag);
            }
            None => out.put_u64(0),
        }
        out.put_u64(self.timeout.map_or(u64::MAX, |t| {
            u64::try_from(t.as_nanos()).unwrap_or(u64::MAX - 1)
        }));
        Ok(())
    }
    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        let state = Shared::import(input)?;
        let action = match input.get_u64()? {
            0 => None,
            1 => {
                let offset = input.get_u64()?;
                let sig = input.get_u64()?;
                let tag: [u8; 16] = input
                    .get_bytes()?
                    .try_into()
                    .map_err(|_| TransferError::Malformed("barrier action seal"))?;
                let sealed = mproc_core::code::SealedFn { offset, sig, tag };
                Some(action_from_sealed(&sealed).map_err(TransferError::Code)?)
            }
            _ => return Err(TransferError::Malformed("barrier action flag")),
        };
        let timeout = match input.get_u64()? {
            u64::MAX => None,
            ns => Some(Duration::from_nanos(ns)),
        };
        Ok(Barrier {
            state,
            action,
            timeout,
        })
    }
}

mproc_core::impl_handle_archive!(Barrier);

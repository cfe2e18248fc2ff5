//! Logging across processes: records that child processes and pool workers write through
//! the [`log`] and [`tracing`] facades reach the parent and go through the parent's own
//! logger and subscriber, tagged with the child's process name and pid — what Python
//! users build from `QueueHandler`, `QueueListener` and `%(processName)s`.
//!
//! ```
//! fn work(n: u32) -> u32 {
//!     log::info!("working on {n}");
//!     n * 2
//! }
//!
//! // Once, early in the parent (before it starts processes):
//! let fwd = mproc_log::forward().unwrap();
//! let mut p = mproc_spawn::Process::new(work, 21);
//! p.start().unwrap();
//! assert_eq!(p.join().unwrap(), 42);
//! // Stops forwarding after replaying what the children sent; the parent's logger
//! // printed "[Process-1 <pid>] working on 21".
//! drop(fwd);
//! ```
//!
//! How it works, and what it costs:
//! - The parent listens on an abstract `SOCK_SEQPACKET` socket named after its pid (no
//!   file, nothing to clean up) and a thread replays what arrives. The pid in the tag is
//!   the kernel's word for the sender (`SO_PEERCRED`); the name is what the child says.
//! - A child sends each record as one message on its own connection: one `send` per
//!   record, and records of one process arrive in order. A child killed while writing
//!   leaves a whole record or none; a parent that stops listening makes the children drop
//!   their records, never block for ever.
//! - Children learn the parent's maximum level when they connect, so a filtered-out
//!   record costs them nothing.
//! - Spawned children and fork-server children install the forwarding logger and
//!   subscriber before their target runs (a constructor of this crate runs before
//!   mproc-spawn's start-up). Fork children inherit the parent's: give your logger to
//!   [`Forwarding::logger`] so that it sits behind mproc's, and add [`ForwardLayer`] to
//!   your `tracing` subscriber (it does nothing in the parent itself), with your printing
//!   layers filtered by [`parent_only`].
//!
//! [`Forwarding::capture_output`] also brings children's stdout and stderr lines to the
//! parent's, tagged the same way.
//!
//! Limits: call [`forward`] before the first process is started (a fork server started
//! earlier does not forward); grandchildren forward when their parent was started by
//! `fork`, not when it is a spawned child.
#![deny(unsafe_code)]

mod child;
mod parent;
#[allow(unsafe_code)]
mod sys;
mod wire;

pub use child::ForwardLayer;

use mproc_core::pid;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

/// Turns forwarding on with the defaults of [`Forwarding`]: children's records go
/// through this process's `log` logger (installed by you, or else mproc's stderr logger)
/// and its `tracing` subscriber. Keep the returned [`Forwarder`] alive while children run.
///
/// # Errors
///
/// See [`Forwarding::start`].
pub fn forward() -> Result<Forwarder, ForwardError> {
    Forwarding::new().start()
}

/// Options of log forwarding (a builder; [`forward`] is `Forwarding::new().start()`).
pub struct Forwarding {
    logger: Option<Box<dyn log::Log>>,
    max_level: log::LevelFilter,
    capture: bool,
}

impl fmt::Debug for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarding")
            .field("logger", &self.logger.is_some())
            .field("max_level", &self.max_level)
            .field("capture_output", &self.capture)
            .finish()
    }
}

impl Default for Forwarding {
    fn default() -> Self {
        Self::new()
    }
}

impl Forwarding {
    /// The defaults: no logger of yours, level `Info`.
    pub fn new() -> Self {
        Forwarding {
            logger: None,
            max_level: log::LevelFilter::Info,
            capture: false,
        }
    }

    /// Also capture what children write to their stdout and stderr: each line comes out
    /// of the parent's own stdout or stderr as `[name pid] line`, whole lines only (a
    /// child killed mid-line gives its partial line, marked). Off by default; applies to
    /// children started after `start`.
    pub fn capture_output(mut self, on: bool) -> Self {
        self.capture = on;
        self
    }

    /// This process's own `log` logger (say, an `env_logger::Logger`). mproc installs it
    /// behind its own global logger, so that children started by `fork`, which inherit
    /// the global logger, forward their records too. Without it, `start` installs a
    /// plain stderr logger if none is installed, and otherwise replays through yours
    /// (fork children then log straight through it, untagged).
    pub fn logger(mut self, logger: impl log::Log + 'static) -> Self {
        self.logger = Some(Box::new(logger));
        self
    }

    /// The most verbose `log` level kept (default `Info`); set when mproc installs the
    /// global logger. Children learn the parent's level and skip the rest.
    pub fn max_level(mut self, level: log::LevelFilter) -> Self {
        self.max_level = level;
        self
    }

    /// Turns forwarding on.
    ///
    /// # Errors
    ///
    /// [`ForwardError::AlreadyForwarding`] if a [`Forwarder`] of this process is alive;
    /// [`ForwardError::LoggerAlreadySet`] if a logger was given but another global `log`
    /// logger is installed; [`ForwardError::Io`] if the socket cannot be made.
    pub fn start(self) -> Result<Forwarder, ForwardError> {
        std::hint::black_box(child::link_hook());
        let me = pid::current();
        if child::ROOT
            .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(ForwardError::AlreadyForwarding);
        }
        let undo = |e| {
            child::ROOT.store(0, Ordering::Release);
            Err(e)
        };
        let installed = INSTALLED.load(Ordering::Acquire)
            || (log::set_logger(&DISPATCH).is_ok() && {
                INSTALLED.store(true, Ordering::Release);
                true
            });
        match (installed, self.logger) {
            (true, l) => {
                let l = l.unwrap_or_else(|| Box::new(StderrLogger));
                *DISPATCH.inner.write().unwrap_or_else(|e| e.into_inner()) = Some(l);
                log::set_max_level(self.max_level);
            }
            (false, Some(_)) => return undo(ForwardError::LoggerAlreadySet),
            (false, None) => {}
        }
        let listener = match sys::listen(me) {
            Ok(l) => l,
            Err(e) => return undo(ForwardError::Io(e)),
        };
        let output = match self.capture.then(|| sys::listen_output(me)).transpose() {
            Ok(o) => o,
            Err(e) => return undo(ForwardError::Io(e)),
        };
        // Children (under every start method) learn of the parent's output sink when
        // they start.
        mproc_spawn::at_child_start(child::on_child_start);
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("mproc-log".into())
            .spawn(move || parent::run(listener, output, s));
        match thread {
            Ok(t) => Ok(Forwarder {
                stop,
                thread: Some(t),
            }),
            Err(e) => undo(ForwardError::Io(e)),
        }
    }
}

/// Forwarding while alive. Dropping it replays what children already sent, then stops:
/// children started afterwards log nowhere.
#[derive(Debug)]
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        child::ROOT.store(0, Ordering::Release);
    }
}

/// Why forwarding could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum ForwardError {
    /// A [`Forwarder`] of this process is alive.
    AlreadyForwarding,
    /// [`Forwarding::logger`] was given, but another global `log` logger is installed.
    LoggerAlreadySet,
    /// The socket or the thread could not be made.
    Io(io::Error),
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardError::AlreadyForwarding => f.write_str("this process already forwards logs"),
            ForwardError::LoggerAlreadySet => {
                f.write_str("a global `log` logger is already installed")
            }
            ForwardError::Io(e) => write!(f, "log forwarding: {e}"),
        }
    }
}

impl std::error::Error for ForwardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ForwardError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Whether this process is a child whose records are forwarded (false in the process
/// that called [`forward`], and when nobody forwards). Handy as a filter that keeps a
/// parent's printing layer quiet in its fork children.
pub fn in_forwarding_child() -> bool {
    child::forwarding()
}

/// A `tracing` filter that passes everything in the forwarding parent and nothing in its
/// forwarding children: put it on the parent's printing layers, so that fork children
/// (which inherit the parent's subscriber) forward through [`ForwardLayer`] instead of
/// printing themselves.
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
/// use tracing_subscriber::Layer;
///
/// # struct Print;
/// # impl<S: tracing::Subscriber> Layer<S> for Print {}
/// let subscriber = tracing_subscriber::registry()
///     .with(Print.with_filter(mproc_log::parent_only()))
///     .with(mproc_log::ForwardLayer);
/// # drop(subscriber);
/// ```
pub fn parent_only() -> tracing_subscriber::filter::FilterFn<fn(&tracing::Metadata<'_>) -> bool> {
    tracing_subscriber::filter::FilterFn::new(|_| !child::forwarding())
}

static INSTALLED: AtomicBool = AtomicBool::new(false);
static DISPATCH: Dispatch = Dispatch {
    inner: RwLock::new(None),
};

/// mproc's global logger in the parent: the parent's own records (and the replayed
/// ones) go to the user's logger; in a fork child, to the parent.
struct Dispatch {
    inner: RwLock<Option<Box<dyn log::Log>>>,
}

impl log::Log for Dispatch {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        if child::forwarding() {
            return m.level() <= log::max_level();
        }
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.as_ref().is_some_and(|l| l.enabled(m))
    }

    fn log(&self, r: &log::Record<'_>) {
        if child::forwarding() {
            if r.level() <= log::max_level() {
                child::send_log(r);
            }
            return;
        }
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = inner.as_ref() {
            l.log(r);
        }
    }

    fn flush(&self) {
        if let Some(l) = self
            .inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            l.flush();
        }
    }
}

/// The parent's logger when the user installed none: `LEVEL target: message` on stderr.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr().lock(),
                "{:<5} {}: {}",
                r.level(),
                r.target(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

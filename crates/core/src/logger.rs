//! mproc's own logger: Python's `multiprocessing.get_logger()` and
//! `multiprocessing.log_to_stderr()`.
//!
//! mproc reports its own lifecycle (a child "calling self.run()", a process "shutting
//! down", a pool "terminating", a manager "serving at …") at Python's levels, but only
//! once this process asked for the logger: until [`get_logger`] or [`log_to_stderr`] is
//! called, nothing is logged, and a record costs one relaxed atomic load.
//!
//! Records go through the [`log`] facade with target `"mproc"` (so a user's logger,
//! and `mproc-log`'s forwarding from children, see them), or, after [`log_to_stderr`],
//! straight to stderr in Python's format `[LEVEL/ProcessName] message` instead.
//!
//! ```
//! use mproc_core::logger::{self, Level};
//!
//! let log = logger::get_logger();
//! assert_eq!(log.level(), None); // NOTSET
//! log.set_level(Level::new(32));
//! assert_eq!(log.effective_level(), Level::new(32));
//! log.set_level(Level::NOTSET);
//! // NOTSET falls back to the `log` facade's maximum level (Rust's "root logger").
//! assert_eq!(log.effective_level(), Level::from(log::max_level()));
//! ```
//!
//! Children see this process's level: under fork by inheritance, under spawn and
//! forkserver because the parent sends its logger's effective level (and whether it
//! logs to stderr) with each start, as CPython does.
use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The target of mproc's records in the `log` facade (filter on it, e.g.
/// `RUST_LOG=mproc=debug` with `env_logger`).
pub const TARGET: &str = "mproc";

/// A logging level as Python numbers it: higher is more severe. The constants are
/// Python's (`logging` and `multiprocessing.util`); any other number is a level too
/// (`Level::new(32)`), as in Python.
///
/// Conversions to and from `log`'s levels round to the nearest `log` level at or below
/// (`SUBWARNING` is a `log::Level::Info` record); `log::LevelFilter::Off` becomes
/// [`Level::OFF`], which no record reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Level(u32);

impl Level {
    /// Python's `logging.NOTSET` (0): "no level of its own".
    pub const NOTSET: Level = Level(0);
    /// `multiprocessing.util.SUBDEBUG` (5).
    pub const SUBDEBUG: Level = Level(5);
    /// `logging.DEBUG` (10).
    pub const DEBUG: Level = Level(10);
    /// `logging.INFO` (20).
    pub const INFO: Level = Level(20);
    /// `multiprocessing.util.SUBWARNING` (25).
    pub const SUBWARNING: Level = Level(25);
    /// `logging.WARNING` (30).
    pub const WARNING: Level = Level(30);
    /// `logging.ERROR` (40).
    pub const ERROR: Level = Level(40);
    /// `logging.CRITICAL` (50).
    pub const CRITICAL: Level = Level(50);
    /// Above every record: what `log::LevelFilter::Off` becomes (Python has no name
    /// for it).
    pub const OFF: Level = Level(u32::MAX);

    /// The level numbered `n`.
    pub const fn new(n: u32) -> Level {
        Level(n)
    }

    /// Its number (`logging.getLevelName`'s inverse).
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Python's `logging.getLevelName(level)`: `"INFO"`, `"SUBDEBUG"`, `"Level 32"`.
    #[doc(alias = "getLevelName")]
    pub fn name(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Level::NOTSET => "NOTSET",
            Level::SUBDEBUG => "SUBDEBUG",
            Level::DEBUG => "DEBUG",
            Level::INFO => "INFO",
            Level::SUBWARNING => "SUBWARNING",
            Level::WARNING => "WARNING",
            Level::ERROR => "ERROR",
            Level::CRITICAL => "CRITICAL",
            Level::OFF => "OFF",
            Level(n) => return Cow::Owned(format!("Level {n}")),
        })
    }

    /// The `log` level of a record at this level: the nearest at or below it
    /// (below `DEBUG` is `Trace`, `ERROR` and above are `Error`).
    pub const fn to_log_level(self) -> log::Level {
        match self.0 {
            0..10 => log::Level::Trace,
            10..20 => log::Level::Debug,
            20..30 => log::Level::Info,
            30..40 => log::Level::Warn,
            _ => log::Level::Error,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl From<u32> for Level {
    fn from(n: u32) -> Level {
        Level(n)
    }
}

impl From<Level> for u32 {
    fn from(l: Level) -> u32 {
        l.0
    }
}

impl From<log::Level> for Level {
    /// `Error` → `ERROR`, `Warn` → `WARNING`, `Info` → `INFO`, `Debug` → `DEBUG`,
    /// `Trace` → `SUBDEBUG`.
    fn from(l: log::Level) -> Level {
        match l {
            log::Level::Error => Level::ERROR,
            log::Level::Warn => Level::WARNING,
            log::Level::Info => Level::INFO,
            log::Level::Debug => Level::DEBUG,
            log::Level::Trace => Level::SUBDEBUG,
        }
    }
}

impl From<log::LevelFilter> for Level {
    /// As `From<log::Level>`; `Off` → [`Level::OFF`].
    fn from(l: log::LevelFilter) -> Level {
        l.to_level().map_or(Level::OFF, Level::from)
    }
}

impl From<Level> for log::LevelFilter {
    /// The `log` filter that keeps the records at this level and above
    /// (`NOTSET` keeps everything, [`Level::OFF`] nothing).
    fn from(l: Level) -> log::LevelFilter {
        if l == Level::OFF {
            log::LevelFilter::Off
        } else {
            l.to_log_level().to_level_filter()
        }
    }
}

/// The logger's whole state in one word, so that the check of a disabled record is one
/// relaxed load: bits 0–31 the level (0 = NOTSET), bit 32 "the logger exists", bit 33
/// "records go to stderr". Zero until [`get_logger`] is called: mproc logs nothing.
static STATE: AtomicU64 = AtomicU64::new(0);
const ACTIVE: u64 = 1 << 32;
const STDERR: u64 = 1 << 33;
const LEVEL_MASK: u64 = 0xffff_ffff;

/// Where the process name in stderr records comes from (mproc-spawn's
/// `current_process().name()`; "MainProcess" until it registers).
static NAME: OnceLock<fn() -> String> = OnceLock::new();

/// Python's `multiprocessing.get_logger()`: mproc's own logger, created on the first
/// call; from then on mproc logs its lifecycle through it. Its level starts NOTSET.
///
/// ```
/// let log = mproc_core::logger::get_logger();
/// log.info("goes to the `log` facade with target \"mproc\"");
/// ```
#[doc(alias = "getLogger")]
pub fn get_logger() -> Logger {
    STATE.fetch_or(ACTIVE, Ordering::Relaxed);
    Logger { _private: () }
}

/// Python's `multiprocessing.log_to_stderr(level=None)`: from now on mproc's records go
/// to stderr as `[INFO/Process-1] message` (Python's `[%(levelname)s/%(processName)s]
/// %(message)s`), and no longer to the `log` facade (Python stops their propagation to
/// the root logger). Sets the level if one is given. Children started afterwards
/// under every start method log to their stderr too.
///
/// ```
/// use mproc_core::logger::{self, Level};
/// let log = logger::log_to_stderr(Some(Level::WARNING));
/// log.warning("printed as [WARNING/MainProcess] …");
/// # log.set_to_stderr(false);
/// ```
pub fn log_to_stderr(level: Option<Level>) -> Logger {
    let log = get_logger();
    STATE.fetch_or(STDERR, Ordering::Relaxed);
    if let Some(l) = level {
        log.set_level(l);
    }
    log
}

/// A handle to mproc's logger (Python's `logging.Logger` named `multiprocessing`). Every
/// handle is the same logger: copies are free.
#[derive(Debug, Clone, Copy)]
pub struct Logger {
    _private: (),
}

impl Logger {
    /// The target of its records in the `log` facade: `"mproc"` (Python's logger is
    /// named `"multiprocessing"`).
    pub fn name(&self) -> &'static str {
        TARGET
    }

    /// Python's `setLevel(level)`: records below `level` are dropped;
    /// [`Level::NOTSET`] falls back to the `log` facade's maximum level.
    #[doc(alias = "setLevel")]
    pub fn set_level(&self, level: Level) {
        let mut cur = STATE.load(Ordering::Relaxed);
        loop {
            let new = (cur & !LEVEL_MASK) | u64::from(level.0) | ACTIVE;
            match STATE.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// Python's `logger.level`: `None` while NOTSET.
    pub fn level(&self) -> Option<Level> {
        match STATE.load(Ordering::Relaxed) & LEVEL_MASK {
            0 => None,
            n => Some(Level(n as u32)),
        }
    }

    /// Python's `getEffectiveLevel()`: the level, or while NOTSET the `log` facade's
    /// maximum level (`log::max_level()`, Rust's analogue of the root logger's).
    #[doc(alias = "getEffectiveLevel")]
    pub fn effective_level(&self) -> Level {
        effective(STATE.load(Ordering::Relaxed))
    }

    /// Python's `isEnabledFor(level)`: whether a record at `level` is kept.
    #[doc(alias = "isEnabledFor")]
    pub fn is_enabled_for(&self, level: Level) -> bool {
        enabled(level)
    }

    /// Whether records go to stderr ([`log_to_stderr`]) rather than the `log` facade.
    pub fn to_stderr(&self) -> bool {
        STATE.load(Ordering::Relaxed) & STDERR != 0
    }

    /// Sends records to stderr (`true`, as [`log_to_stderr`] does) or back to the
    /// `log` facade (`false`).
    pub fn set_to_stderr(&self, on: bool) {
        if on {
            STATE.fetch_or(STDERR, Ordering::Relaxed);
        } else {
            STATE.fetch_and(!STDERR, Ordering::Relaxed);
        }
    }

    /// Python's `logger.log(level, msg)`.
    pub fn log(&self, level: Level, msg: impl fmt::Display) {
        if enabled(level) {
            emit(level, format_args!("{msg}"));
        }
    }

    /// A record at [`Level::SUBDEBUG`] (Python's `multiprocessing.util.sub_debug`).
    pub fn sub_debug(&self, msg: impl fmt::Display) {
        self.log(Level::SUBDEBUG, msg);
    }
    /// A record at [`Level::DEBUG`].
    pub fn debug(&self, msg: impl fmt::Display) {
        self.log(Level::DEBUG, msg);
    }
    /// A record at [`Level::INFO`].
    pub fn info(&self, msg: impl fmt::Display) {
        self.log(Level::INFO, msg);
    }
    /// A record at [`Level::SUBWARNING`] (Python's `multiprocessing.util.sub_warning`).
    pub fn sub_warning(&self, msg: impl fmt::Display) {
        self.log(Level::SUBWARNING, msg);
    }
    /// A record at [`Level::WARNING`].
    pub fn warning(&self, msg: impl fmt::Display) {
        self.log(Level::WARNING, msg);
    }
    /// A record at [`Level::ERROR`].
    pub fn error(&self, msg: impl fmt::Display) {
        self.log(Level::ERROR, msg);
    }
    /// A record at [`Level::CRITICAL`].
    pub fn critical(&self, msg: impl fmt::Display) {
        self.log(Level::CRITICAL, msg);
    }
}

fn effective(state: u64) -> Level {
    match state & LEVEL_MASK {
        0 => Level::from(log::max_level()),
        n => Level(n as u32),
    }
}

/// Whether a record at `level` is kept. While nobody asked for the logger this is one
/// relaxed load.
#[inline]
pub fn enabled(level: Level) -> bool {
    let s = STATE.load(Ordering::Relaxed);
    s != 0 && enabled_slow(s, level)
}

#[cold]
fn enabled_slow(s: u64, level: Level) -> bool {
    s & ACTIVE != 0 && level != Level::NOTSET && level >= effective(s)
}

/// Writes a record that [`enabled`] kept (what mproc's logging macros call).
#[doc(hidden)]
#[cold]
pub fn emit(level: Level, args: fmt::Arguments<'_>) {
    // A user's logger that panics must not unwind through mproc's lifecycle paths (a
    // child's exit, an `atexit` handler).
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write_record(level, args)));
}

fn write_record(level: Level, args: fmt::Arguments<'_>) {
    if STATE.load(Ordering::Relaxed) & STDERR != 0 {
        let name = NAME.get().map_or_else(|| "MainProcess".to_owned(), |f| f());
        // One write per line, so that lines of several processes do not interleave.
        let line = format!("[{}/{name}] {args}\n", level.name());
        let _ = std::io::stderr().write_all(line.as_bytes());
        return;
    }
    let log_level = level.to_log_level();
    let logger = log::logger();
    let meta = log::Metadata::builder()
        .level(log_level)
        .target(TARGET)
        .build();
    if logger.enabled(&meta) {
        logger.log(
            &log::Record::builder()
                .metadata(meta)
                .args(args)
                .module_path_static(Some(module_path!()))
                .build(),
        );
    }
}

/// Logs through mproc's logger when it keeps records at `$level` (a [`Level`]); the
/// message is formatted only then.
#[doc(hidden)]
#[macro_export]
macro_rules! mp_log {
    ($level:expr, $($arg:tt)+) => {{
        let level: $crate::logger::Level = $level;
        if $crate::logger::enabled(level) {
            $crate::logger::emit(level, ::core::format_args!($($arg)+));
        }
    }};
}

/// Registers where stderr records find the process's name (mproc-spawn's
/// `current_process().name()`); the first registration wins.
#[doc(hidden)]
pub fn set_process_name_source(f: fn() -> String) {
    let _ = NAME.set(f);
}

/// What a parent sends a child it starts by spawn or forkserver (CPython's preparation
/// data): `None` if this process never asked for the logger, else its effective level
/// and whether it logs to stderr.
#[doc(hidden)]
pub fn settings_for_child() -> Option<(u32, bool)> {
    let s = STATE.load(Ordering::Relaxed);
    (s & ACTIVE != 0).then(|| (effective(s).0, s & STDERR != 0))
}

/// Adopts what [`settings_for_child`] gave the parent (in a spawned or fork-server
/// child, before its target runs): the logger exists with the parent's effective level
/// and stderr setting, or (`None`) does not exist.
#[doc(hidden)]
pub fn adopt_child_settings(settings: Option<(u32, bool)>) {
    let s = match settings {
        None => 0,
        Some((level, stderr)) => ACTIVE | u64::from(level) | if stderr { STDERR } else { 0 },
    };
    STATE.store(s, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_convert_like_python_names_them() {
        assert_eq!(Level::new(32).name(), "Level 32");
        assert_eq!(Level::SUBWARNING.name(), "SUBWARNING");
        assert_eq!(Level::SUBWARNING.to_log_level(), log::Level::Info);
        assert_eq!(Level::new(32).to_log_level(), log::Level::Warn);
        assert_eq!(Level::SUBDEBUG.to_log_level(), log::Level::Trace);
        assert_eq!(Level::CRITICAL.to_log_level(), log::Level::Error);
        for f in log::LevelFilter::iter() {
            assert_eq!(log::LevelFilter::from(Level::from(f)), f);
        }
        assert_eq!(
            log::LevelFilter::from(Level::NOTSET),
            log::LevelFilter::Trace
        );
        assert_eq!(
            log::LevelFilter::from(Level::new(37)),
            log::LevelFilter::Warn
        );
    }

    #[test]
    fn the_state_word_packs_level_and_flags() {
        // One test touches the global state (tests of one binary share it).
        adopt_child_settings(None);
        assert!(!enabled(Level::CRITICAL));
        assert_eq!(settings_for_child(), None);
        let log = get_logger();
        assert_eq!(log.level(), None);
        log.set_level(Level::new(32));
        assert!(log.is_enabled_for(Level::new(32)) && !log.is_enabled_for(Level::new(31)));
        assert_eq!(settings_for_child(), Some((32, false)));
        log.set_to_stderr(true);
        assert_eq!(settings_for_child(), Some((32, true)));
        log.set_to_stderr(false);
        log.set_level(Level::NOTSET);
        assert_eq!(log.level(), None);
        assert_eq!(log.effective_level(), Level::from(log::max_level()));
        adopt_child_settings(Some((37, true)));
        assert_eq!(log.level(), Some(Level::new(37)));
        assert!(log.to_stderr());
        adopt_child_settings(None);
        assert!(!enabled(Level::CRITICAL));
    }
}

//! The child's side: send each record as one message to the sink of the process that
//! turned forwarding on.
use crate::sys::{self, conn::Conn};
use crate::wire::{self, Kind};
use mproc_core::pid;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use tracing::field::{Field, Visit};
use tracing::span;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The pid of the process whose sink records go to; 0 while forwarding is off. Set by
/// `forward()` in the parent (fork children inherit it) and by the start-up hook in
/// spawned children and fork servers.
pub(crate) static ROOT: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Whether this process forwards its records (it is a descendant of a forwarding root).
pub(crate) fn forwarding() -> bool {
    let root = ROOT.load(Ordering::Relaxed);
    root != 0 && root != pid::current()
}

/// Connects this process to the sink and introduces it; `None` if the sink is gone.
fn connect(me: u32) -> Option<std::os::fd::BorrowedFd<'static>> {
    let root = ROOT.load(Ordering::Relaxed);
    let fd = (root != 0).then(|| sys::connect(root).ok()).flatten();
    let fd = fd.and_then(|fd| {
        let name = mproc_spawn::current_process().name().to_owned();
        let mut hello = Vec::new();
        wire::encode(Kind::Hello, 0, 0, &[&name], &mut hello);
        use std::os::fd::AsFd;
        sys::send(fd.as_fd(), &hello).ok()?;
        // The parent answers with its maximum `log` level, so that filtered records
        // cost the child nothing.
        let mut reply = [0u8; 1];
        if sys::recv_reply(fd.as_fd(), &mut reply).ok()? == 1 {
            log::set_max_level(level_filter(reply[0]));
        }
        Some(fd)
    });
    match sys::conn::set(me, fd) {
        Conn::Fd(fd) => Some(fd),
        _ => None,
    }
}

fn level_filter(b: u8) -> log::LevelFilter {
    log::LevelFilter::iter()
        .nth(usize::from(b))
        .unwrap_or(log::LevelFilter::Trace)
}

/// Sends one record: one `send` on this process's connection.
pub(crate) fn send(kind: Kind, level: u8, line: u32, fields: &[&str]) {
    let me = pid::current();
    let fd = match sys::conn::get(me) {
        Conn::Fd(fd) => fd,
        Conn::GaveUp => return,
        Conn::None => match connect(me) {
            Some(fd) => fd,
            None => return,
        },
    };
    let _ = BUF.try_with(|b| {
        let mut b = b.borrow_mut();
        wire::encode(kind, level, line, fields, &mut b);
        if sys::send(fd, &b).is_err() {
            // The parent stopped forwarding; later records are dropped at no cost.
            sys::conn::set(me, None);
        }
    });
}

/// Sends a `log` record.
pub(crate) fn send_log(r: &log::Record<'_>) {
    let msg = r.args().to_string();
    send(
        Kind::Log,
        r.level() as u8,
        r.line().unwrap_or(0),
        &[
            r.target(),
            r.module_path().unwrap_or(""),
            r.file().unwrap_or(""),
            &msg,
        ],
    );
}

/// The `log` logger of a spawned child: every record goes to the parent.
pub(crate) struct ChildLogger;

impl log::Log for ChildLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) && forwarding() {
            send_log(r);
        }
    }
    fn flush(&self) {}
}

/// A `tracing` layer that sends each event, with its span path, to the parent. It does
/// nothing in the forwarding process itself, so it can also sit in the parent's own
/// subscriber (where fork children inherit it).
#[derive(Debug, Default, Clone, Copy)]
pub struct ForwardLayer;

/// A span's fields, formatted once when it is created.
struct SpanFields(String);

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, f: &Field, v: &str) {
        if f.name() == "message" {
            self.message.push_str(v);
        } else {
            let _ = write!(self.rest, " {}={v:?}", f.name());
        }
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            let _ = write!(self.message, "{v:?}");
        } else {
            let _ = write!(self.rest, " {}={v:?}", f.name());
        }
    }
}

fn level_u8(l: &tracing::Level) -> u8 {
    match *l {
        tracing::Level::ERROR => 1,
        tracing::Level::WARN => 2,
        tracing::Level::INFO => 3,
        tracing::Level::DEBUG => 4,
        tracing::Level::TRACE => 5,
    }
}

impl<S> tracing_subscriber::Layer<S> for ForwardLayer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        let mut s = f.message;
        s.push_str(&f.rest);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut()
                .insert(SpanFields(s.trim_start().to_owned()));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if !forwarding() {
            return;
        }
        let mut spans = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                spans.push_str(span.name());
                if let Some(SpanFields(f)) = span.extensions().get::<SpanFields>() {
                    if !f.is_empty() {
                        let _ = write!(spans, "{{{f}}}");
                    }
                }
                spans.push(':');
            }
        }
        let mut f = Fields::default();
        event.record(&mut f);
        f.message.push_str(&f.rest);
        let m = event.metadata();
        send(
            Kind::Tracing,
            level_u8(m.level()),
            m.line().unwrap_or(0),
            &[
                m.target(),
                m.module_path().unwrap_or(""),
                m.file().unwrap_or(""),
                &spans,
                &f.message,
            ],
        );
    }
}

/// Runs before `main` in every binary that links this crate, ahead of mproc-spawn's own
/// start-up (`priority = early`), so that a spawned child or fork server whose parent
/// forwards installs the forwarding logger and subscriber before any target runs.
#[ctor::ctor(unsafe, priority = early)]
fn mproc_log_child_start() {
    child_start();
}

/// What `forward()` references so that the linker keeps the constructor.
pub(crate) fn link_hook() -> usize {
    mproc_log_child_start as fn() as usize
}

fn child_start() {
    // Only mproc's own children: mproc-spawn marks a spawned child and a fork server in
    // the environment (it removes the marker in its own constructor, after this one).
    let marked = std::env::var_os("MPROC_BOOTSTRAP").is_some()
        || std::env::var_os("MPROC_FORKSERVER").is_some();
    if !marked {
        return;
    }
    let Some(parent) = rustix::process::getppid() else {
        return;
    };
    let parent = parent.as_raw_nonzero().get() as u32;
    // A probe: is the parent forwarding? (Cheap: an abstract name that does not exist
    // fails at once.) The real connection is made by the first record.
    if sys::connect(parent).is_err() {
        return;
    }
    ROOT.store(parent, Ordering::Relaxed);
    mproc_spawn::at_child_start(on_child_start);
    if log::set_logger(&ChildLogger).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    use tracing_subscriber::layer::SubscriberExt;
    let _ =
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(ForwardLayer));
}

/// Runs in every new child of a forwarding process once it knows its name (mproc-spawn's
/// child start-up hook): if the parent captures output, this child's stdout and stderr
/// become byte streams to it. Only fds 1 and 2 are kept, which a fork child keeps.
pub(crate) fn on_child_start() {
    if !forwarding() {
        return;
    }
    let root = ROOT.load(Ordering::Relaxed);
    let name = mproc_spawn::current_process().name().to_owned();
    for stream in [1u8, 2] {
        use std::io::Write;
        // Nothing buffered may follow the redirection to the wrong place.
        let _ = std::io::stdout().flush();
        let header = format!("{stream}\t{name}\n");
        if sys::redirect_output(root, stream, header.as_bytes()).is_err() {
            // The parent does not capture output (or is gone): stdio stays as it is.
            return;
        }
    }
}

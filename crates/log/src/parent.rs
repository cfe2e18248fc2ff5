//! The parent's side: a thread that accepts children's connections and replays their
//! records through this process's own `log` logger and `tracing` subscriber.
use crate::sys::{self, Recv};
use crate::wire::{self, Kind, Record};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

struct Peer {
    fd: OwnedFd,
    pid: i32,
    name: String,
}

/// A child's stdout or stderr, as a byte stream.
struct OutPeer {
    fd: OwnedFd,
    pid: i32,
    /// 1 stdout, 2 stderr; 0 until the header line arrived.
    stream: u8,
    name: String,
    pending: Vec<u8>,
}

/// A line longer than this is passed on in pieces.
const MAX_LINE: usize = 64 * 1024;

/// Runs until `stop` is set, then drains what is already queued and returns.
pub(crate) fn run(listener: OwnedFd, output: Option<OwnedFd>, stop: Arc<AtomicBool>) {
    let mut peers: Vec<Peer> = Vec::new();
    let mut outs: Vec<OutPeer> = Vec::new();
    let mut buf = vec![0u8; wire::MAX_RECORD + 1];
    loop {
        let stopping = stop.load(Ordering::Acquire);
        if !stopping {
            let mut fds = vec![listener.as_fd()];
            fds.extend(output.as_ref().map(|o| o.as_fd()));
            fds.extend(peers.iter().map(|p| p.fd.as_fd()));
            fds.extend(outs.iter().map(|p| p.fd.as_fd()));
            let _ = sys::poll(&fds, Duration::from_millis(50));
        }
        while let Ok(Some((fd, pid))) = sys::accept(&listener) {
            if pid > 0 {
                peers.push(Peer {
                    fd,
                    pid,
                    name: String::new(),
                });
            }
        }
        if let Some(o) = &output {
            while let Ok(Some((fd, pid))) = sys::accept(o) {
                if pid > 0 {
                    outs.push(OutPeer {
                        fd,
                        pid,
                        stream: 0,
                        name: String::new(),
                        pending: Vec::new(),
                    });
                }
            }
        }
        peers.retain_mut(|p| drain(p, &mut buf));
        outs.retain_mut(|p| drain_output(p, &mut buf));
        if stopping {
            if !outs.is_empty() {
                // Children already running keep their redirected stdout and stderr: keep
                // relaying until they close them (they exit), so that a late write
                // neither fails (EPIPE) nor blocks on a full socket.
                let _ = std::thread::Builder::new()
                    .name("mproc-log-output".into())
                    .spawn(move || relay_until_closed(outs));
            }
            return;
        }
    }
}

fn relay_until_closed(mut outs: Vec<OutPeer>) {
    let mut buf = vec![0u8; MAX_LINE];
    while !outs.is_empty() {
        let fds: Vec<_> = outs.iter().map(|p| p.fd.as_fd()).collect();
        let _ = sys::poll(&fds, Duration::from_millis(500));
        outs.retain_mut(|p| drain_output(p, &mut buf));
    }
}

/// Passes on the whole lines `p` sent; `false` once it is closed (its last partial line
/// is passed on, marked).
fn drain_output(p: &mut OutPeer, buf: &mut [u8]) -> bool {
    loop {
        match sys::read_stream(&p.fd, buf) {
            Ok(0) => {
                if !p.pending.is_empty() {
                    let rest = std::mem::take(&mut p.pending);
                    emit_line(p, &rest, " [no newline at end]");
                }
                return false;
            }
            Ok(n) => {
                p.pending.extend_from_slice(&buf[..n]);
                while let Some(i) = p.pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = p.pending.drain(..=i).collect();
                    let line = &line[..line.len() - 1];
                    if p.stream == 0 {
                        // The header: `stream \t name`.
                        let h = String::from_utf8_lossy(line);
                        let (s, name) = h.split_once('\t').unwrap_or(("1", ""));
                        p.stream = if s == "2" { 2 } else { 1 };
                        p.name = name.to_owned();
                    } else {
                        emit_line(p, line, "");
                    }
                }
                if p.pending.len() > MAX_LINE {
                    let piece = std::mem::take(&mut p.pending);
                    emit_line(p, &piece, "");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

fn emit_line(p: &OutPeer, line: &[u8], mark: &str) {
    use std::io::Write;
    let text = String::from_utf8_lossy(line);
    let line = format!("[{} {}] {text}{mark}\n", p.name, p.pid);
    // One write of the whole line, so that lines of the parent's own threads and of
    // different children never interleave within a line.
    let _ = if p.stream == 2 {
        std::io::stderr().lock().write_all(line.as_bytes())
    } else {
        std::io::stdout().lock().write_all(line.as_bytes())
    };
}

/// Replays what `p` has queued; `false` once it is closed or sent garbage.
fn drain(p: &mut Peer, buf: &mut [u8]) -> bool {
    loop {
        match sys::recv(&p.fd, buf) {
            Recv::Empty => return true,
            Recv::Closed => return false,
            Recv::Msg(n) if n > wire::MAX_RECORD => return false,
            Recv::Msg(n) => match wire::decode(&buf[..n]) {
                Some(r) => replay(p, r),
                None => return false,
            },
        }
    }
}

fn replay(p: &mut Peer, r: Record) {
    match r.kind {
        Kind::Hello => {
            p.name = r.fields.into_iter().next().unwrap_or_default();
            let _ = sys::send(p.fd.as_fd(), &[log::max_level() as u8]);
        }
        Kind::Log => replay_log(p, &r),
        Kind::Tracing => replay_tracing(p, &r),
        Kind::Output => {}
    }
}

fn log_level(b: u8) -> log::Level {
    log::Level::iter()
        .nth(usize::from(b.clamp(1, 5)) - 1)
        .unwrap_or(log::Level::Error)
}

fn replay_log(p: &Peer, r: &Record) {
    let [target, module, file, msg] = &r.fields[..] else {
        return;
    };
    let level = log_level(r.level);
    let logger = log::logger();
    let line = (r.line != 0).then_some(r.line);
    logger.log(
        &log::Record::builder()
            .level(level)
            .target(target)
            .module_path(Some(module).filter(|m| !m.is_empty()).map(|m| m.as_str()))
            .file(Some(file).filter(|f| !f.is_empty()).map(|f| f.as_str()))
            .line(line)
            .args(format_args!("[{} {}] {msg}", p.name, p.pid))
            .build(),
    );
}

fn replay_tracing(p: &Peer, r: &Record) {
    let [target, _module, _file, spans, msg] = &r.fields[..] else {
        return;
    };
    let (name, pid) = (p.name.as_str(), p.pid);
    // A callsite's level and target are static in tracing: the child's target travels
    // as a field, the level picks one of five callsites.
    macro_rules! ev {
        ($lvl:expr) => {
            tracing::event!(target: "mproc::child", $lvl, process = name, pid, origin = target.as_str(),
                "[{name} {pid}] {spans}{}{msg}", if spans.is_empty() { "" } else { " " })
        };
    }
    match r.level {
        1 => ev!(tracing::Level::ERROR),
        2 => ev!(tracing::Level::WARN),
        3 => ev!(tracing::Level::INFO),
        4 => ev!(tracing::Level::DEBUG),
        _ => ev!(tracing::Level::TRACE),
    }
}

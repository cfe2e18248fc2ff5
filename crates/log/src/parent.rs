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

/// Runs until `stop` is set, then drains what is already queued and returns.
pub(crate) fn run(listener: OwnedFd, stop: Arc<AtomicBool>) {
    let mut peers: Vec<Peer> = Vec::new();
    let mut buf = vec![0u8; wire::MAX_RECORD + 1];
    loop {
        let stopping = stop.load(Ordering::Acquire);
        if !stopping {
            let mut fds = vec![listener.as_fd()];
            fds.extend(peers.iter().map(|p| p.fd.as_fd()));
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
        peers.retain_mut(|p| drain(p, &mut buf));
        if stopping {
            return;
        }
    }
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

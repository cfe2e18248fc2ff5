//! The fork server: a clean, single-threaded copy of this program that forks children
//! on request.
//!
//! - Started on first use by re-executing `/proc/self/exe` with the marker variable
//!   [`SERVER_ENV`](crate::bootstrap::SERVER_ENV) = `v2:<nonce>:<session key>:<parent
//!   pid>:<socket fd>`. The bootstrap constructor turns the copy into the server before
//!   `main` runs, so it is single-threaded and holds no lock even when the parent is
//!   multi-threaded. It checks that the socket's peer is its parent (`SO_PEERCRED`),
//!   reads the parent's hello frame (the family secret and the preload functions, with
//!   their build identity and type fingerprints, authenticated with the session key),
//!   runs the preload functions ([`set_forkserver_preload`]) once, then serves.
//! - A request is one frame on a Unix stream socket: a bootstrap message (as for spawn),
//!   then a context section, plus, with `SCM_RIGHTS`, four fixed fds (the write end of a
//!   status pipe, the child's end of the result socket, the read end of the lifeline
//!   pipe, a pidfd of the parent), then the argument fds. The server forks; the child checks the message
//!   exactly as a spawned child does (MAC under the session key, nonce, build identity,
//!   code range, type fingerprint), runs the target and reports on the result socket
//!   itself. The server answers with the child's pid and a pidfd opened right after the
//!   fork (race-free: only the server reaps its children, by pid).
//! - The parent cannot `waitpid` a grandchild, so the server reaps each child when its
//!   pidfd becomes readable and writes the exit code (Python's convention, `i32` LE) on
//!   that child's status pipe. The parent polls the status pipe; the pidfd serves for
//!   signals and as the sentinel.
//! - Each request also carries the parent's current directory and environment at the
//!   time of `start()` (after the bootstrap frame, in a section of its own, authenticated
//!   under the session key and bound to its bootstrap frame), which the child adopts
//!   before running the target, as CPython's forkserver does.
//! - The server receives SIGKILL when its parent dies (PDEATHSIG, armed from a thread
//!   that lives as long as the parent), blocks SIGINT (a Ctrl-C in the terminal is
//!   for the parent and its children, not for the server), and exits when the parent
//!   closes the socket.
//! - Its children do not die with the server: each holds the read end of a "lifeline"
//!   pipe whose only writer is the parent, armed so that the kernel sends the child
//!   SIGKILL when the parent's end closes (`sys::arm_lifeline`). So a child dies with
//!   the process that asked for it, and outlives a server that was killed. The
//!   request also carries a pidfd of the parent, for `parent_process()`.
use crate::bootstrap::{self, SERVER_ENV};
use crate::child::{self, BOOTSTRAP_EXIT};
use crate::current::ChildInfo;
use crate::process::{Prepared, Started, pair, send_all};
use crate::sys::{self, ForkLocal};
use crate::wire::{self, ResultReader};
use mproc_core::Pidfd;
use mproc_core::codec::{FrameHeader, HEADER_LEN, MAX_FDS};
use mproc_core::scm;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

/// The parent's connection to its server.
#[derive(Debug)]
struct Server {
    sock: OwnedFd,
    nonce: u64,
    key: [u8; 32],
    pidfd: Pidfd,
}

static SERVER: ForkLocal<Mutex<Option<Server>>> = ForkLocal::new(|| Mutex::new(None));
/// The raw fd of the server socket, so that a fork child can close its copy without
/// touching the (possibly locked) mutex.
static SERVER_FD: AtomicI32 = AtomicI32::new(-1);
static PRELOAD: Mutex<Vec<fn()>> = Mutex::new(Vec::new());
/// Servers that were stopped or replaced and may not have exited yet: reaped (without
/// waiting) whenever a server is launched, so that none stays a zombie.
static RETIRED: ForkLocal<Mutex<Vec<Pidfd>>> = ForkLocal::new(|| Mutex::new(Vec::new()));

/// Keeps `pidfd` (a server's, whose socket is closed) until its process can be reaped,
/// after waiting up to `grace` for it to exit (a server exits at once when it has no
/// running child).
fn retire(pidfd: Pidfd, grace: std::time::Duration) {
    let _ = pidfd.wait_exit(Some(grace));
    RETIRED
        .get()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(pidfd);
    reap_retired();
}

/// Reaps the retired servers that have exited.
fn reap_retired() {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    RETIRED
        .get()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| {
            !matches!(
                waitid(
                    WaitId::PidFd(p.as_fd()),
                    WaitIdOptions::EXITED | WaitIdOptions::NOHANG
                ),
                Ok(Some(_)) | Err(_)
            )
        });
}

/// Sets the functions the fork server runs once when it starts, before forking any
/// child (Python's `set_forkserver_preload`, which names modules to import). Use it to
/// build expensive read-only state once; every child then starts with a copy.
///
/// Takes effect for a server started afterwards: call it before the first ForkServer
/// start (or after [`stop_forkserver`]). A preload function that panics is reported on
/// stderr and skipped. It must not start threads (the server must stay
/// single-threaded to fork safely).
pub fn set_forkserver_preload(fns: &[fn()]) {
    *PRELOAD.lock().unwrap_or_else(|e| e.into_inner()) = fns.to_vec();
}

/// Stops this process's fork server, if one runs. Children it started keep running and
/// are still reaped and reported (the old server exits after the last of them); the
/// next ForkServer start starts a new server.
pub fn stop_forkserver() {
    let old = SERVER
        .get()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(s) = old {
        SERVER_FD.store(-1, Ordering::Release);
        drop(s.sock);
        retire(s.pidfd, std::time::Duration::ZERO);
    }
}

/// In a fork child: the parent's server connection must not be used (the server would
/// take the child's requests for the parent's). Closes the inherited socket.
pub(crate) fn reset_after_fork() {
    let fd = SERVER_FD.swap(-1, Ordering::AcqRel);
    SERVER.reset();
    RETIRED.reset();
    if fd >= 0 {
        drop(sys::adopt_fd(fd));
    }
}

/// Builds a whole request (bootstrap frame and context section) from a bootstrap
/// message and the session key (mproc's own tests use it to send damaged requests).
pub(crate) type Tamper<'a> = &'a dyn Fn(wire::Boot, &[u8; 32], &[u8]) -> io::Result<Vec<u8>>;

/// Starts a child through the fork server (starting the server if needed).
pub(crate) fn start(prepared: Prepared, info: ChildInfo) -> io::Result<Started> {
    start_tampered(prepared, info, None)
}

/// As [`start`], the request frame built by `tamper` if given.
pub(crate) fn start_tampered(
    prepared: Prepared,
    info: ChildInfo,
    tamper: Option<Tamper<'_>>,
) -> io::Result<Started> {
    let Prepared::Target {
        tramp, target, enc, ..
    } = prepared
    else {
        return Err(io::Error::other(
            "a closure cannot be sent to the fork server",
        ));
    };
    reap_retired();
    let mut guard = SERVER.get().lock().unwrap_or_else(|e| e.into_inner());
    // One retry with a fresh server if the current one died.
    for attempt in 0..2 {
        if guard.as_ref().is_none_or(|s| !s.pidfd.is_alive()) {
            if let Some(dead) = guard.take() {
                retire(dead.pidfd, std::time::Duration::ZERO);
            }
            *guard = Some(launch()?);
        }
        let server = guard.as_ref().expect("just set");
        SERVER_FD.store(server.sock.as_raw_fd(), Ordering::Release);
        let boot = bootstrap::make_boot(server.nonce, tramp, target, info.clone(), Vec::new());
        let frame = match tamper {
            Some(t) => t(boot, &server.key, &enc.bytes)?,
            None => {
                let mut frame =
                    wire::encode_boot(&server.key, &boot, &enc.bytes).map_err(io::Error::other)?;
                encode_context(&server.key, &mut frame);
                frame
            }
        };
        let (status_r, status_w) = cloexec_pipe()?;
        let (life_r, life_w) = cloexec_pipe()?;
        let me = sys::open_pidfd(rustix::process::getpid().as_raw_nonzero().get())?;
        let (res_mine, res_theirs) = pair()?;
        let mut fds: Vec<BorrowedFd<'_>> = vec![
            status_w.as_fd(),
            res_theirs.as_fd(),
            life_r.as_fd(),
            me.as_fd(),
        ];
        fds.extend(enc.fds.iter().map(AsFd::as_fd));
        match request(server.sock.as_fd(), &frame, &fds) {
            Ok((pid, pidfd)) => {
                return Ok(Started {
                    pid,
                    pidfd,
                    reader: ResultReader::new(res_mine)?.with_proof(wire::child_proof(
                        &server.key,
                        server.nonce,
                        pid,
                    )),
                    status: Some(status_r),
                    lifeline: Some(life_w),
                });
            }
            Err(e) if attempt == 0 => {
                // The server is gone (or confused): forget it and start another.
                let _ = e;
                SERVER_FD.store(-1, Ordering::Release);
                if let Some(old) = guard.take() {
                    drop(old.sock);
                    retire(old.pidfd, std::time::Duration::from_millis(200));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("the fork server failed twice"))
}

/// A pipe, both ends close-on-exec and above 2.
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    Ok((sys::above_stdio(r)?, sys::above_stdio(w)?))
}

/// Largest context section accepted (the environment can be large).
const CTX_MAX: u64 = 1 << 26;

/// Magic of the context section that follows the bootstrap frame in a request.
const CTX_MAGIC: [u8; 8] = *b"MPROCCX2";

/// Appends the context section to the request `frame` (a bootstrap frame): an
/// authenticated frame under the session `key` whose control bytes are the MAC of the
/// bootstrap frame before it (so that a section cannot be moved to another request),
/// then the current directory and the environment, as length-prefixed byte strings
/// (`u32` LE): cwd, count, then `KEY=VALUE` each. An unreadable current directory
/// (deleted) is sent empty: the child keeps the server's.
pub(crate) fn encode_context(key: &[u8; 32], frame: &mut Vec<u8>) {
    let boot_mac = wire::frame_mac_field(frame).unwrap_or_default();
    encode_context_for(key, boot_mac, frame)
}

/// As [`encode_context`], bound to the bootstrap frame whose MAC is `boot_mac`.
pub(crate) fn encode_context_for(key: &[u8; 32], boot_mac: [u8; 32], frame: &mut Vec<u8>) {
    use std::os::unix::ffi::OsStrExt;
    let put = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    let mut ctx = Vec::new();
    ctx.extend_from_slice(&boot_mac);
    let cwd = std::env::current_dir().unwrap_or_default();
    put(&mut ctx, cwd.as_os_str().as_bytes());
    let vars: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os().collect();
    ctx.extend_from_slice(&(vars.len() as u32).to_le_bytes());
    for (k, v) in vars {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        put(&mut ctx, &kv);
    }
    frame.extend_from_slice(&wire::seal_frame(key, &CTX_MAGIC, &ctx, &[]));
}

/// The parent's directory and environment at `start()`.
type Context = (
    std::path::PathBuf,
    Vec<(std::ffi::OsString, std::ffi::OsString)>,
);

/// Authenticates and parses the context section `b` (see [`encode_context`]) that
/// follows the bootstrap frame whose header is `boot`.
fn decode_context(key: &[u8; 32], boot: &wire::SealedHeader, b: &[u8]) -> Result<Context, String> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let (h, ctrl, trailer) =
        wire::split_frame(b, &CTX_MAGIC).map_err(|e| format!("context section: {e}"))?;
    if !trailer.is_empty() {
        return Err("malformed context section".into());
    }
    wire::check_mac(key, &CTX_MAGIC, &h, ctrl).map_err(|e| format!("context section: {e}"))?;
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= ctrl.len())
            .ok_or("malformed context section")?;
        let piece = &ctrl[at..end];
        at = end;
        Ok(piece)
    };
    if !mproc_core::code::mac_eq(take(32)?, &boot.mac) {
        return Err("the context section belongs to another request".into());
    }
    let len = |h: &[u8]| u32::from_le_bytes(h.try_into().expect("4 bytes")) as usize;
    let n = len(take(4)?);
    let cwd = std::path::PathBuf::from(OsStr::from_bytes(take(n)?));
    let count = len(take(4)?);
    let mut vars = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let n = len(take(4)?);
        let kv = take(n)?;
        let i = kv
            .iter()
            .position(|&c| c == b'=')
            .ok_or("malformed context section")?;
        vars.push((
            OsStr::from_bytes(&kv[..i]).to_owned(),
            OsStr::from_bytes(&kv[i + 1..]).to_owned(),
        ));
    }
    Ok((cwd, vars))
}

/// Sends one request and reads the reply: (pid, pidfd).
fn request(sock: BorrowedFd<'_>, frame: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<(i32, Pidfd)> {
    let head = FrameHeader {
        nfds: fds.len() as u32,
        len: frame.len() as u64,
    };
    let hb = head.to_bytes();
    let sent = scm::send_with_fds(sock, &[IoSlice::new(&hb), IoSlice::new(frame)], fds)?;
    let total = hb.len() + frame.len();
    if sent < total {
        let mut all = Vec::with_capacity(total);
        all.extend_from_slice(&hb);
        all.extend_from_slice(frame);
        send_all(sock, &all[sent..])?;
    }
    // Reply: i32 pid (LE) or -errno, padded to 8 bytes, with the pidfd.
    let mut reply = [0u8; 8];
    let mut got = 0;
    let mut rfds = Vec::new();
    while got < reply.len() {
        let (n, f) = scm::recv_with_fds(sock, &mut reply[got..], 1)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the fork server closed the connection",
            ));
        }
        got += n;
        rfds.extend(f);
    }
    let pid = i32::from_le_bytes(reply[..4].try_into().expect("4 bytes"));
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(-pid));
    }
    let fd = rfds
        .pop()
        .ok_or_else(|| io::Error::other("the fork server sent no pidfd"))?;
    Ok((pid, Pidfd::from_owned(sys::above_stdio(fd)?, pid)))
}

/// Starts a server. Runs on a long-lived thread (the caller is inside
/// `launcher::run_long_lived`), so the server's PDEATHSIG does not fire early.
fn launch() -> io::Result<Server> {
    let (mine, theirs) = pair()?;
    let nonce = bootstrap::nonce();
    let key = mproc_core::code::start_key(nonce);
    let parent = rustix::process::getpid().as_raw_nonzero().get();
    // The hello: family secret, build identity, then (offset, fingerprint) per preload.
    let mut hello = Vec::new();
    hello.extend_from_slice(&mproc_core::code::family_secret_for_child());
    hello.extend_from_slice(&mproc_core::code::layout().to_le_bytes());
    for f in PRELOAD.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        hello.extend_from_slice(&mproc_core::code::offset_of(*f as usize).to_le_bytes());
        hello.extend_from_slice(&sys::ValidatedFn::sig().hash.to_le_bytes());
    }
    let hello = wire::seal_frame(&key, &wire::HELLO_MAGIC, &hello, &[]);
    let spec = format!(
        "v2:{nonce:x}:{}:{parent}:{}",
        bootstrap::key_hex(&key),
        theirs.as_raw_fd(),
    );
    let mut cmd = std::process::Command::new("/proc/self/exe");
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    cmd.env(SERVER_ENV, spec);
    sys::prepare_exec(&mut cmd, vec![theirs.as_raw_fd()]);
    // SIGCHLD must not reap the server before its pidfd is open (see `NoAutoReap`).
    let reap = sys::NoAutoReap::new();
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    drop(theirs);
    let pidfd = sys::open_pidfd(pid);
    if pidfd.is_err() && sys::is_unreaped_child(pid) {
        // No fd for its pidfd: it cannot be tracked. Still our unreaped child (SIGCHLD
        // cannot reap it meanwhile), so its pid is safe to kill and reap.
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(reap);
    let pidfd = pidfd?;
    let head = FrameHeader {
        nfds: 0,
        len: hello.len() as u64,
    };
    let mut framed = head.to_bytes().to_vec();
    framed.extend_from_slice(&hello);
    // A server that died at once makes this fail; the first request then reports it.
    let _ = send_all(mine.as_fd(), &framed);
    Ok(Server {
        sock: mine,
        nonce,
        key,
        pidfd,
    })
}

/// Reads the exit code the server wrote on a child's status pipe (readable). `None`
/// if the server vanished without reporting (the child then lives on without it).
pub(crate) fn read_status(fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    let mut b = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match rustix::io::read(fd, &mut b[got..]) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(i32::from_le_bytes(b)))
}

// ---------------------------------------------------------------------------------
// The server side.

/// A child the server forked and has not reaped yet.
struct Kid {
    pid: i32,
    pidfd: OwnedFd,
    status: OwnedFd,
}

fn server_fail(msg: &str) -> ! {
    eprintln!("mproc: fork server: {msg}");
    sys::exit_now(BOOTSTRAP_EXIT)
}

/// Entry of the server process (from the bootstrap constructor, before `main`).
pub(crate) fn server_main(spec: &str) -> ! {
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let mut it = spec.split(':');
    let parsed = (|| {
        if it.next()? != "v2" {
            return None;
        }
        let nonce = u64::from_str_radix(it.next()?, 16).ok()?;
        let key = bootstrap::parse_key(it.next()?)?;
        let parent: i32 = it.next()?.parse().ok()?;
        let fd: i32 = it.next()?.parse().ok()?;
        it.next().is_none().then_some((nonce, key, parent, fd))
    })();
    let Some((nonce, key, parent, fd)) = parsed else {
        server_fail(&format!("malformed {SERVER_ENV} value"))
    };
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
        sys::exit_now(1);
    }
    let Some(sock) = sys::adopt_fd(fd) else {
        server_fail("the socket fd is not open")
    };
    if let Err(why) = bootstrap::peer_is(&sock, parent) {
        server_fail(&why)
    }
    // The handshake: nothing runs before the parent's authenticated hello arrived.
    let hello = match read_request(&sock) {
        Ok(Some((payload, _))) => payload,
        _ => server_fail("no hello from the parent"),
    };
    let preload = match open_hello(&key, &hello) {
        Ok(p) => p,
        Err(why) => server_fail(&why),
    };
    sys::ignore_sigpipe();
    // The server reaps its children itself, through their pidfds: a SIGCHLD ignored
    // in the parent (inherited through exec) would reap them behind its back.
    sys::default_sigchld();
    // A Ctrl-C reaches the whole foreground process group: it is for the parent (and
    // its children), not for the server. Blocked rather than ignored: a child inherits
    // the mask, so a SIGINT sent to it before it unblocks stays pending and is then
    // delivered, where an inherited SIG_IGN would drop it.
    sys::block_signal(libc::SIGINT, true);
    sys::stdio_devnull();
    mproc_core::code::warm();
    for (layout, off, sig) in preload {
        match sys::ValidatedFn::check(layout, off, sig) {
            Ok(f) => {
                if std::panic::catch_unwind(|| f.run()).is_err() {
                    eprintln!("mproc: fork server: a preload function panicked");
                }
            }
            Err(why) => server_fail(&why),
        }
    }
    serve(sock, nonce, key)
}

/// Authenticates the parent's hello, adopts its family secret; the preload functions as
/// (build identity, offset, fingerprint).
fn open_hello(key: &[u8; 32], frame: &[u8]) -> Result<Vec<(u64, u64, u64)>, String> {
    let (h, payload, trailer) = wire::split_frame(frame, &wire::HELLO_MAGIC)?;
    let len = payload.len();
    if !trailer.is_empty() || len < 40 || (len - 40) % 16 != 0 {
        return Err("malformed hello".into());
    }
    wire::check_mac(key, &wire::HELLO_MAGIC, &h, payload)?;
    let word = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
    let family: [u8; 32] = payload[..32].try_into().expect("32 bytes");
    mproc_core::code::adopt_family_secret(family)?;
    let layout = word(32);
    Ok((40..len)
        .step_by(16)
        .map(|i| (layout, word(i), word(i + 8)))
        .collect())
}

fn serve(sock: OwnedFd, nonce: u64, key: [u8; 32]) -> ! {
    let mut kids: Vec<Kid> = Vec::new();
    // After the parent closed the connection, keep reaping until the last child ended.
    let mut closing = false;
    loop {
        if closing && kids.is_empty() {
            sys::exit_now(0);
        }
        let (sock_ready, ready_kids) = {
            let mut fds = Vec::with_capacity(1 + kids.len());
            let first = usize::from(!closing);
            if !closing {
                fds.push(PollFd::new(&sock, PollFlags::IN));
            }
            for k in &kids {
                fds.push(PollFd::new(&k.pidfd, PollFlags::IN));
            }
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(_) => sys::exit_now(1),
            }
            let ready: Vec<usize> = (0..kids.len())
                .filter(|&i| !fds[i + first].revents().is_empty())
                .collect();
            (!closing && !fds[0].revents().is_empty(), ready)
        };
        // Reap in reverse so indices stay valid.
        for &i in ready_kids.iter().rev() {
            if let Some(code) = reap(kids[i].pid) {
                let k = kids.swap_remove(i);
                let _ = rustix::io::write(&k.status, &code.to_le_bytes());
            }
        }
        if sock_ready {
            match read_request(&sock) {
                Ok(Some((payload, fds))) => match handle(&sock, &mut kids, payload, fds) {
                    Ok(None) => {}
                    Ok(Some(job)) => {
                        // In the new child. It must not hold the server's socket (close-
                        // on-exec, but fork keeps it) nor its siblings' fds.
                        drop(sock);
                        drop(kids);
                        child_of_server(job, nonce, &key)
                    }
                    Err(_) => closing = true,
                },
                // The parent closed the connection (or it broke): serve no more.
                Ok(None) | Err(_) => closing = true,
            }
        }
    }
}

/// Reaps a child whose pidfd is readable; its exit code in Python's convention.
fn reap(pid: i32) -> Option<i32> {
    let p = rustix::process::Pid::from_raw(pid)?;
    match rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG) {
        Ok(Some((_, st))) => Some(match st.terminating_signal() {
            Some(sig) => -sig,
            None => st.exit_status().unwrap_or(255),
        }),
        Ok(None) => None,
        Err(_) => Some(255),
    }
}

/// Reads one request frame: payload and fds. `None` at end of stream.
fn read_request(sock: &OwnedFd) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut fds = Vec::new();
    let mut head = [0u8; HEADER_LEN];
    if !read_exact_fds(sock, &mut head, &mut fds)? {
        return Ok(None);
    }
    let h = FrameHeader::parse(
        &head,
        wire::BOOT_MAX + 2 * wire::BOOT_HEADER as u64 + CTX_MAX,
    )
    .map_err(io::Error::other)?;
    // Exactly the announced size (a large zeroed scratch buffer per request would cost
    // a page fault per page).
    let mut payload = vec![0u8; h.len as usize];
    if !read_exact_fds(sock, &mut payload, &mut fds)? {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    Ok(Some((payload, fds)))
}

/// Fills `buf`, collecting fds; `false` at end of stream before the first byte.
fn read_exact_fds(sock: &OwnedFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let (n, f) = scm::recv_with_fds(sock.as_fd(), &mut buf[got..], MAX_FDS as usize)?;
        fds.extend(f);
        if n == 0 {
            return if got == 0 {
                Ok(false)
            } else {
                Err(io::Error::from(io::ErrorKind::UnexpectedEof))
            };
        }
        got += n;
    }
    Ok(true)
}

/// What a child of the server runs.
struct Job {
    payload: Vec<u8>,
    arg_fds: Vec<OwnedFd>,
    result: OwnedFd,
    lifeline: OwnedFd,
    parent: OwnedFd,
}

/// Forks the child for one request and replies with its pid and pidfd (or -errno).
/// Returns `Some(job)` in the new child.
fn handle(
    sock: &OwnedFd,
    kids: &mut Vec<Kid>,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
) -> io::Result<Option<Job>> {
    let mut fds = fds.into_iter();
    let (Some(status), Some(result), Some(lifeline), Some(parent)) =
        (fds.next(), fds.next(), fds.next(), fds.next())
    else {
        reply_err(sock, libc::EINVAL)?;
        return Ok(None);
    };
    let arg_fds: Vec<OwnedFd> = fds.collect();
    match sys::fork() {
        Err(e) => {
            reply_err(sock, e.raw_os_error().unwrap_or(libc::EAGAIN))?;
            Ok(None)
        }
        Ok(sys::Forked::Child) => {
            drop(status);
            Ok(Some(Job {
                payload,
                arg_fds,
                result,
                lifeline,
                parent,
            }))
        }
        Ok(sys::Forked::Parent(pid)) => {
            drop(result);
            drop(arg_fds);
            drop(lifeline);
            drop(parent);
            let pidfd = match rustix::process::Pid::from_raw(pid)
                .map(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()))
            {
                Some(Ok(fd)) => fd,
                _ => {
                    // Cannot track it: kill and reap it, report the failure. (SIGCHLD
                    // keeps zombies in the server and only the server reaps: the pid is
                    // still its child's, which `is_unreaped_child` confirms.)
                    if let Some(p) = rustix::process::Pid::from_raw(pid)
                        && sys::is_unreaped_child(pid)
                    {
                        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                        let _ = rustix::process::waitpid(
                            Some(p),
                            rustix::process::WaitOptions::empty(),
                        );
                    }
                    reply_err(sock, libc::EMFILE)?;
                    return Ok(None);
                }
            };
            let mut reply = [0u8; 8];
            reply[..4].copy_from_slice(&pid.to_le_bytes());
            scm::send_with_fds(sock.as_fd(), &[IoSlice::new(&reply)], &[pidfd.as_fd()])?;
            kids.push(Kid { pid, pidfd, status });
            Ok(None)
        }
    }
}

fn reply_err(sock: &OwnedFd, errno: i32) -> io::Result<()> {
    let mut reply = [0u8; 8];
    reply[..4].copy_from_slice(&(-errno).to_le_bytes());
    send_all(sock.as_fd(), &reply)
}

/// In the server's child: check the request like a spawned child checks its bootstrap,
/// then run it.
fn child_of_server(job: Job, nonce: u64, key: &[u8; 32]) -> ! {
    let Job {
        payload,
        arg_fds,
        result,
        lifeline,
        parent,
    } = job;
    // Die with the parent (not with the server): first, before anything can fail.
    if !sys::arm_lifeline(&lifeline) {
        sys::exit_now(1);
    }
    // The lifeline stays open (and armed) for the life of this process.
    std::mem::forget(lifeline);
    sys::block_signal(libc::SIGINT, false);
    // The authenticated bootstrap frame, then the (authenticated) context section.
    let (head, boot, args, rest) = match wire::split_frame_prefix(&payload, &wire::BOOT_MAGIC)
        .and_then(|(h, ctrl, args, rest)| {
            Ok((h, wire::decode_boot(key, nonce, &h, ctrl)?, args, rest))
        }) {
        Ok(b) => b,
        Err(why) => child::refuse(Some(&result), &why),
    };
    let (cwd, vars) = match decode_context(key, &head, rest) {
        Ok(c) => c,
        Err(why) => child::refuse(Some(&result), &why),
    };
    let entry = match sys::ValidatedEntry::check(&boot) {
        Ok(e) => e,
        Err(why) => child::refuse(Some(&result), &why),
    };
    if let Err(e) = mproc_core::code::adopt_family_secret(boot.family) {
        child::refuse(Some(&result), e);
    }
    wire::set_proof(key, nonce);
    // What `child::prepare` does, minus PDEATHSIG (the lifeline replaces it: the real
    // parent is the server, whose death must not take this child with it).
    crate::current::become_child(&boot.info);
    crate::current::set_parent_pidfd(Pidfd::from_owned(parent, boot.info.parent_pid));
    crate::launcher::reset_after_fork();
    reset_after_fork();
    sys::replace_env_single_threaded(&vars);
    if !cwd.as_os_str().is_empty()
        && let Err(e) = std::env::set_current_dir(&cwd)
    {
        child::finish(
            &result,
            child::Outcome::Failed(format!(
                "cannot enter the parent's current directory {}: {e}",
                cwd.display()
            )),
        )
    }
    child::about_to_run();
    let outcome = entry.run(&boot.sig_name, args, arg_fds);
    child::finish(&result, outcome)
}

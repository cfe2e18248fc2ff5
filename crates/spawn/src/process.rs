//! `Process`: start a target in another process, wait for it, get its result.
use crate::child::{self, Outcome};
use crate::current::{self, ChildInfo, ChildSummary};
use crate::wire::{self, Received, ResultReader};
use crate::{ProcessError, StartMethod, bootstrap, launcher, sys};
use mproc_core::Pidfd;
use mproc_core::codec::{self, CodecError, Encoded};
use mproc_core::{Deadline, Message};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

type EncodeFn = Box<dyn Fn() -> Result<Encoded, CodecError> + Send>;
type LocalFn = Box<dyn FnOnce(&[u8], Vec<OwnedFd>) -> Outcome + Send>;

/// What the child will run.
enum Job {
    /// A `fn(A) -> R` and its arguments.
    Target {
        /// Address of `trampoline::<A, R>` (for spawn and forkserver).
        tramp: sys::TargetEntry,
        /// Address of the target fn.
        target: usize,
        /// Encodes the arguments (kept, so a failed start can be retried).
        encode: EncodeFn,
        /// Runs the target in a fork child (no code addresses involved).
        local: LocalFn,
    },
    /// A capturing closure (fork only).
    Closure(Box<dyn FnOnce() -> Outcome + Send>),
}

/// A job whose arguments are encoded, ready to cross into the child.
pub(crate) enum Prepared {
    Target {
        tramp: sys::TargetEntry,
        target: usize,
        enc: Encoded,
        local: LocalFn,
    },
    Closure(Box<dyn FnOnce() -> Outcome + Send>),
}

/// A child that was created: what the parent keeps of it.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) pid: i32,
    pub(crate) pidfd: Pidfd,
    pub(crate) reader: ResultReader,
    /// Forkserver only: where the server writes the exit code after reaping.
    pub(crate) status: Option<OwnedFd>,
}

/// A process running (or about to run) a target: Python's `multiprocessing.Process`.
///
/// The target is a plain `fn(A) -> R` (no captures; a non-capturing closure coerces to
/// one); `A` and `R` are rkyv messages ([`Message`]), and may contain handles (locks,
/// queues, regions, fds …) that implement `Transfer`. [`join`](Process::join) returns
/// the target's value, or a [`ProcessError`] saying how it ended instead.
///
/// ```
/// use mproc_spawn::{Process, StartMethod};
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let mut p = Process::new(square, 7u64).name("squarer");
/// p.start().unwrap();
/// assert_eq!(p.join().unwrap(), 49);
/// assert_eq!(p.exitcode(), Some(0));
///
/// // Every start method runs the same target.
/// for method in StartMethod::ALL {
///     let mut p = Process::new(square, 3u64).start_method(method);
///     p.start().unwrap();
///     assert_eq!(p.join().unwrap(), 9);
/// }
/// ```
///
/// # Drop
///
/// Dropping a started process that was not joined kills it (SIGKILL) and reaps it:
/// mproc never leaves a zombie or an orphan behind. Join (or wait with
/// [`join_timeout`](Process::join_timeout)) before dropping what should finish.
///
/// # Children die with their parent
///
/// Every child receives SIGKILL when its parent exits, whatever the start method and
/// whatever the `daemon` flag (Python kills daemonic children at exit and joins the
/// others; mproc never waits implicitly). This uses `PR_SET_PDEATHSIG`, which follows
/// the *thread* that created the child: mproc creates children from the main thread
/// when `start` is called there, and otherwise from a helper thread that lives as long
/// as the process, so a child outlives the thread that asked for it.
pub struct Process<R> {
    job: Option<Job>,
    name: Option<String>,
    daemon: bool,
    method: Option<StartMethod>,
    identity: Vec<u32>,
    default_name: String,
    child: Option<ChildState>,
    joined: bool,
    _result: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.process_name())
            .field("daemon", &self.daemon)
            .field("method", &self.method)
            .field("pid", &self.pid())
            .field("exitcode", &self.child.as_ref().and_then(|c| c.exitcode))
            .finish()
    }
}

impl<R: Message + 'static> Process<R> {
    /// A process that will run `target(args)` once started (Python's
    /// `Process(target=f, args=(…))`). Nothing happens until [`start`](Process::start).
    pub fn new<A: Message + Send + 'static>(target: fn(A) -> R, args: A) -> Self {
        let job = Job::Target {
            tramp: sys::trampoline_addr::<A, R>(),
            target: sys::fn_addr(target),
            encode: Box::new(move || codec::encode(&args)),
            local: Box::new(move |bytes, fds| child::run_target(target, bytes, fds)),
        };
        Self::with_job(job)
    }

    /// A process that runs a capturing closure; only [`StartMethod::Fork`] can do this
    /// (the child is a copy of this process, so the closure's captures are simply
    /// there). The start method is set to Fork; another one makes `start` fail with
    /// [`ProcessError::ClosureNeedsFork`].
    ///
    /// ```
    /// let data = vec![1u64, 2, 3];
    /// let mut p = mproc_spawn::Process::fork_closure(move || data.iter().sum::<u64>());
    /// p.start().unwrap();
    /// assert_eq!(p.join().unwrap(), 6);
    /// ```
    pub fn fork_closure<F>(f: F) -> Self
    where
        F: FnOnce() -> R + Send + 'static,
    {
        let job = Job::Closure(Box::new(move || child::run_closure(f)));
        Self::with_job(job).start_method(StartMethod::Fork)
    }

    fn with_job(job: Job) -> Self {
        let (identity, default_name) = current::next_child_identity();
        Process {
            job: Some(job),
            name: None,
            daemon: false,
            method: None,
            identity,
            default_name,
            child: None,
            joined: false,
            _result: PhantomData,
        }
    }
}

impl<R> Process<R> {
    /// Sets the name (Python's `name=`); the default is `Process-N`, or
    /// `Process-M:N` in a child. The child sees it in
    /// [`current_process()`](crate::current_process).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Marks the process as a daemon (Python's `daemon=`). Recorded and visible to the
    /// child; every child, daemon or not, is killed when its parent exits. Unlike
    /// Python, a daemon may start children of its own.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// Chooses the start method of this process, instead of the default
    /// ([`get_start_method`](crate::get_start_method)).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// The process's name.
    pub fn process_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.default_name)
    }

    /// Whether the process is marked as a daemon.
    pub fn is_daemon(&self) -> bool {
        self.daemon
    }

    /// The start method it uses (or will use, if not started yet).
    pub fn method(&self) -> StartMethod {
        self.child
            .as_ref()
            .map(|c| c.method)
            .or(self.method)
            .unwrap_or_else(crate::get_start_method)
    }

    /// Starts the process (Python's `start()`).
    ///
    /// # Errors
    ///
    /// [`ProcessError::AlreadyStarted`] on a second call; [`ProcessError::Args`] if the
    /// arguments do not serialise (no process is created then);
    /// [`ProcessError::ClosureNeedsFork`]; [`ProcessError::Start`] if the OS refuses.
    pub fn start(&mut self) -> Result<(), ProcessError> {
        // Keeps the bootstrap constructor linked into every binary that starts processes.
        std::hint::black_box(bootstrap::link_hook());
        if self.child.is_some() {
            return Err(ProcessError::AlreadyStarted);
        }
        let job = self.job.take().ok_or(ProcessError::AlreadyStarted)?;
        let method = self.method.unwrap_or_else(crate::get_start_method);
        let prepared = match job {
            Job::Target {
                tramp,
                target,
                encode,
                local,
            } => match encode() {
                Ok(enc) => {
                    // Keep the encoder so that a failed start can be retried.
                    let job_back = Job::Target {
                        tramp,
                        target,
                        encode,
                        local: Box::new(|_, _| Outcome::Failed("unreachable".into())),
                    };
                    self.job = Some(job_back);
                    Prepared::Target {
                        tramp,
                        target,
                        enc,
                        local,
                    }
                }
                Err(e) => {
                    self.job = Some(Job::Target {
                        tramp,
                        target,
                        encode,
                        local,
                    });
                    return Err(ProcessError::Args(e));
                }
            },
            Job::Closure(c) => {
                if method != StartMethod::Fork {
                    self.job = Some(Job::Closure(c));
                    return Err(ProcessError::ClosureNeedsFork);
                }
                Prepared::Closure(c)
            }
        };
        let info = ChildInfo {
            name: self.process_name().to_owned(),
            daemon: self.daemon,
            identity: self.identity.clone(),
            parent_pid: rustix::process::getpid().as_raw_nonzero().get(),
            parent_name: current::own_name(),
            method: method.code(),
        };
        let started = launcher::run_long_lived(move || match method {
            StartMethod::Fork => start_fork(prepared, info),
            StartMethod::Spawn => start_spawn(prepared, info),
            StartMethod::ForkServer => crate::forkserver::start(prepared, info),
        });
        let started = match started {
            Ok(s) => s,
            Err(e) => return Err(ProcessError::Start(e)),
        };
        // Started: the job cannot run again.
        self.job = None;
        let pidfd = Arc::new(started.pidfd);
        let reg = current::register(
            ChildSummary {
                pid: started.pid,
                name: self.process_name().to_owned(),
                daemon: self.daemon,
            },
            Arc::clone(&pidfd),
        );
        self.child = Some(ChildState {
            pid: started.pid,
            pidfd,
            method,
            reader: started.reader,
            status: started.status,
            exitcode: None,
            reg,
        });
        Ok(())
    }

    /// The OS pid, once started.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.pid)
    }

    /// The exit code once the process has ended (Python's `exitcode`): `0` after the
    /// target returned, `1` after a panic, `n` after `std::process::exit(n)`, `-N`
    /// after signal N. `None` while it runs or before it starts. Does not block.
    pub fn exitcode(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        let _ = c.wait(Deadline::now());
        c.exitcode
    }

    /// Whether the process has been started and has not ended yet (Python's
    /// `is_alive()`). Does not block.
    pub fn is_alive(&mut self) -> bool {
        self.exitcode().is_none() && self.child.is_some()
    }

    /// Waits for the process to end and returns its target's value (Python's `join()`,
    /// plus the result).
    ///
    /// # Errors
    ///
    /// How the process ended if not by returning: [`ProcessError::Panicked`] (with the
    /// panic message), [`ProcessError::Exited`], [`ProcessError::Signaled`],
    /// [`ProcessError::ChildFailed`]; or [`ProcessError::NotStarted`],
    /// [`ProcessError::AlreadyJoined`], [`ProcessError::Result`], [`ProcessError::Io`].
    pub fn join(&mut self) -> Result<R, ProcessError>
    where
        R: Message,
    {
        self.join_until(Deadline::never())?
            .ok_or_else(|| ProcessError::Io(io::Error::other("wait ended early")))
    }

    /// As [`join`](Process::join), waiting at most `timeout`: `Ok(None)` if the process
    /// is still running then (it keeps running; join again later).
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<Option<R>, ProcessError>
    where
        R: Message,
    {
        self.join_until(Deadline::after(timeout))
    }

    /// As [`join`](Process::join), waiting until `deadline`.
    pub fn join_until(&mut self, deadline: Deadline) -> Result<Option<R>, ProcessError>
    where
        R: Message,
    {
        let c = self.child.as_mut().ok_or(ProcessError::NotStarted)?;
        if self.joined {
            return Err(ProcessError::AlreadyJoined);
        }
        if !c.wait(deadline).map_err(ProcessError::Io)? {
            return Ok(None);
        }
        self.joined = true;
        let code = c.exitcode.unwrap_or(255);
        match c.reader.take() {
            Some(Received::Value(bytes, fds)) => codec::decode::<R>(bytes, fds)
                .map(Some)
                .map_err(ProcessError::Result),
            Some(Received::Panicked(m)) => Err(ProcessError::Panicked(m)),
            Some(Received::Failed(m)) => Err(ProcessError::ChildFailed(m)),
            Some(Received::Refused(m)) => Err(ProcessError::Refused(m)),
            None if code < 0 => Err(ProcessError::Signaled(-code)),
            None => Err(ProcessError::Exited(code)),
        }
    }

    /// Sends SIGTERM (Python's `terminate()`). Does nothing once the process has ended.
    pub fn terminate(&self) -> Result<(), ProcessError> {
        self.signal(libc::SIGTERM)
    }

    /// Sends SIGKILL (Python's `kill()`). Does nothing once the process has ended.
    pub fn kill(&self) -> Result<(), ProcessError> {
        self.signal(libc::SIGKILL)
    }

    /// Sends signal `sig` to the process (through its pidfd: never to a reused pid).
    pub fn signal(&self, sig: i32) -> Result<(), ProcessError> {
        let c = self.child.as_ref().ok_or(ProcessError::NotStarted)?;
        c.pidfd.send_signal(sig).map_err(ProcessError::Io)
    }

    /// A file descriptor that becomes readable (`POLLIN`) when the process ends
    /// (Python's `sentinel`): its pidfd. Poll many of them to wait for the first of
    /// several processes. `None` before start.
    pub fn sentinel(&self) -> Option<BorrowedFd<'_>> {
        self.child.as_ref().map(|c| c.pidfd.as_fd())
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if c.exitcode.is_none() {
                let _ = c.pidfd.send_signal(libc::SIGKILL);
                // SIGKILL ends it promptly; the fork server reports within a moment.
                let limit = match c.method {
                    StartMethod::ForkServer => Deadline::after(Duration::from_secs(10)),
                    _ => Deadline::never(),
                };
                let _ = c.wait(limit);
            }
            current::unregister(c.reg);
        }
    }
}

/// The parent's view of a started child.
#[derive(Debug)]
struct ChildState {
    pid: i32,
    pidfd: Arc<Pidfd>,
    method: StartMethod,
    reader: ResultReader,
    status: Option<OwnedFd>,
    exitcode: Option<i32>,
    reg: u64,
}

impl ChildState {
    /// The fd that becomes readable when the exit status can be collected.
    fn exit_fd(&self) -> BorrowedFd<'_> {
        match &self.status {
            Some(s) => s.as_fd(),
            None => self.pidfd.as_fd(),
        }
    }

    /// Waits until the process has ended and its status is collected (true), or the
    /// deadline passes (false). Reads the result as it arrives, so a child writing a
    /// large result never blocks on a parent that waits for its exit.
    fn wait(&mut self, deadline: Deadline) -> io::Result<bool> {
        loop {
            if self.exitcode.is_some() {
                return Ok(true);
            }
            let want_result = !self.reader.done();
            let (exit_ready, result_ready) = {
                let exit_fd = self.exit_fd();
                let result_fd = self.reader.fd();
                let mut fds = vec![PollFd::new(&exit_fd, PollFlags::IN)];
                if want_result {
                    fds.push(PollFd::new(&result_fd, PollFlags::IN));
                }
                if deadline.poll(&mut fds)? == 0 {
                    return Ok(false);
                }
                (
                    !fds[0].revents().is_empty(),
                    fds.get(1).is_some_and(|f| !f.revents().is_empty()),
                )
            };
            if result_ready {
                self.reader.pump()?;
            }
            if exit_ready {
                self.collect()?;
            }
        }
    }

    /// Collects the exit status (the exit fd is readable) and drains the result.
    fn collect(&mut self) -> io::Result<()> {
        let code = match &self.status {
            None => {
                let pid = rustix::process::Pid::from_raw(self.pid)
                    .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
                match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG) {
                    Ok(Some((_, st))) => {
                        if let Some(sig) = st.terminating_signal() {
                            -sig
                        } else {
                            st.exit_status().unwrap_or(255)
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(Errno::INTR) => return Ok(()),
                    // Someone else reaped it (SIGCHLD ignored, or waitpid(-1) elsewhere):
                    // the status is lost.
                    Err(Errno::CHILD) => 255,
                    Err(e) => return Err(e.into()),
                }
            }
            Some(fd) => crate::forkserver::read_status(fd.as_fd(), &self.pidfd)?,
        };
        self.exitcode = Some(code);
        self.reader.pump()?;
        current::unregister(self.reg);
        Ok(())
    }
}

/// A Unix stream socket pair, both ends close-on-exec.
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Kills and reaps a child we could not take charge of.
fn abandon(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty());
    }
}

/// Opens the child's pidfd, or kills and reaps it.
fn take_charge(pid: i32) -> io::Result<Pidfd> {
    Pidfd::open(pid).inspect_err(|_| abandon(pid))
}

static WARNED_THREADS: AtomicBool = AtomicBool::new(false);

/// Threads of this process that are not known to be idle in mproc's own code.
fn other_threads() -> usize {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command's closing parenthesis start at field 3; num_threads is
    // field 20.
    let total: usize = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_ascii_whitespace().nth(17))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    // This thread, plus the helper thread (idle, or this thread, in which case the
    // thread that asked waits in mproc's channel).
    let known = 1 + usize::from(launcher::launcher_exists());
    total.saturating_sub(known)
}

/// When the thread count was last sampled (ms since the first sample + 1; 0: never).
static LAST_CHECK: AtomicU64 = AtomicU64::new(0);

fn warn_if_threads() {
    if WARNED_THREADS.load(Ordering::Relaxed) {
        return;
    }
    // Reading /proc/self/stat costs about as much as a tenth of a fork: sample it at
    // most every 50 ms (a burst of starts shares one sample).
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let now = EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1;
    let last = LAST_CHECK.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last) < 50 {
        return;
    }
    LAST_CHECK.store(now, Ordering::Relaxed);
    let n = other_threads();
    if n > 0 && !WARNED_THREADS.swap(true, Ordering::Relaxed) {
        // Straight to fd 2: `eprintln!` would be swallowed by a test harness's capture.
        let _ = writeln!(
            std::io::stderr(),
            "mproc: warning: fork start method used while {n} other thread(s) run; a lock \
             one of them holds stays locked in the child. Prefer forkserver or spawn \
             (warned once per process)."
        );
    }
}

/// Flushes stdio so that buffered output is not printed twice.
fn flush_stdio() {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

fn start_fork(prepared: Prepared, info: ChildInfo) -> io::Result<Started> {
    let (mine, theirs) = pair()?;
    let parent = rustix::process::getpid().as_raw_nonzero().get();
    warn_if_threads();
    flush_stdio();
    match sys::fork()? {
        sys::Forked::Child => {
            drop(mine);
            sys::reset_signals();
            child::prepare(&info, parent);
            let outcome = match prepared {
                Prepared::Target { enc, local, .. } => {
                    // Only what is passed is inherited, as under spawn and forkserver.
                    let mut keep: Vec<i32> = enc.fds.iter().map(AsRawFd::as_raw_fd).collect();
                    keep.push(theirs.as_raw_fd());
                    sys::close_fds_except(&keep);
                    local(&enc.bytes, enc.fds)
                }
                // A closure may use any fd it captured: everything stays open.
                Prepared::Closure(c) => c(),
            };
            child::finish(&theirs, outcome)
        }
        sys::Forked::Parent(pid) => {
            drop(theirs);
            drop(prepared);
            let pidfd = take_charge(pid)?;
            Ok(Started {
                pid,
                pidfd,
                reader: ResultReader::new(mine)?,
                status: None,
            })
        }
    }
}

pub(crate) fn start_spawn(prepared: Prepared, info: ChildInfo) -> io::Result<Started> {
    let Prepared::Target {
        tramp, target, enc, ..
    } = prepared
    else {
        return Err(io::Error::other("a closure cannot be spawned"));
    };
    let (boot_mine, boot_theirs) = pair()?;
    let (res_mine, res_theirs) = pair()?;
    let nonce = bootstrap::nonce();
    let parent = rustix::process::getpid().as_raw_nonzero().get();
    let arg_fds: Vec<i32> = enc.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let boot = bootstrap::make_boot(nonce, tramp, target, info, arg_fds.clone());
    let key = mproc_core::code::start_key(nonce);
    let frame = wire::encode_boot(&key, &boot, &enc.bytes).map_err(io::Error::other)?;
    let mut inherit = arg_fds;
    inherit.push(boot_theirs.as_raw_fd());
    inherit.push(res_theirs.as_raw_fd());
    let arg0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| "mproc-child".into());
    let spec = bootstrap::spec_string(
        nonce,
        &key,
        parent,
        boot_theirs.as_raw_fd(),
        res_theirs.as_raw_fd(),
    );
    let pid = sys::spawn_self(&arg0, (bootstrap::BOOT_ENV, &spec), &inherit)?;
    let pidfd = take_charge(pid)?;
    drop(boot_theirs);
    drop(res_theirs);
    drop(enc);
    // A child that died early makes this fail (EPIPE); join reports how it ended.
    let _ = send_all(boot_mine.as_fd(), &frame);
    drop(boot_mine);
    Ok(Started {
        pid,
        pidfd,
        reader: ResultReader::new(res_mine)?.with_proof(wire::child_proof(&key, nonce, pid)),
        status: None,
    })
}

/// Writes all of `buf` on a blocking socket without raising SIGPIPE.
pub(crate) fn send_all(sock: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::net::send(sock, buf, rustix::net::SendFlags::NOSIGNAL) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `Process::new(target, args)` + `start()` (the contract's `mproc_spawn::spawn`).
///
/// ```
/// fn double(x: i32) -> i32 { x * 2 }
/// let mut p = mproc_spawn::spawn(double, 21).unwrap();
/// assert_eq!(p.join().unwrap(), 42);
/// ```
pub fn spawn<A, R>(target: fn(A) -> R, args: A) -> Result<Process<R>, ProcessError>
where
    A: Message + Send + 'static,
    R: Message + 'static,
{
    let mut p = Process::new(target, args);
    p.start()?;
    Ok(p)
}

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
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Forkserver only: the write end of the child's lifeline (see
    /// `sys::arm_lifeline`); the child dies when it closes.
    pub(crate) lifeline: Option<OwnedFd>,
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
/// [`join_timeout`](Process::join_timeout)) before dropping what should finish, or
/// call [`set_join_at_exit(true)`](crate::set_join_at_exit) once for Python's
/// behaviour (a dropped non-daemon child keeps running and the program waits for it
/// when it exits).
///
/// Signals go through the child's pidfd, and its exit status is collected through that
/// pidfd (`waitid(P_PIDFD)`): neither can reach another process that reuses the pid.
///
/// # Children die with their parent
///
/// Every child receives SIGKILL when its parent exits, whatever the start method and
/// whatever the `daemon` flag (Python kills daemonic children at exit and joins the
/// others; mproc waits only after [`set_join_at_exit`](crate::set_join_at_exit)).
/// A fork server's child dies with the process that asked for it, not with the
/// server (a pipe whose only writer is the parent signals it: see the guide). This uses `PR_SET_PDEATHSIG`, which follows
/// the *thread* that created the child: mproc creates children from the main thread
/// when `start` is called there, and otherwise from a helper thread that lives as long
/// as the process, so a child outlives the thread that asked for it.
pub struct Process<R> {
    job: Option<Job>,
    name: Option<String>,
    /// `None`: the creating process's own daemon flag (Python's default).
    daemon: Option<bool>,
    method: Option<StartMethod>,
    executable: Option<PathBuf>,
    identity: Vec<u32>,
    default_name: String,
    child: Option<ChildState>,
    joined: bool,
    /// After `close()`: the pid and exit code it had.
    closed: Option<(Option<i32>, Option<i32>)>,
    _result: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.closed.is_some() {
            "closed"
        } else if self.child.is_none() {
            "initial"
        } else if self.is_alive() {
            "started"
        } else {
            "stopped"
        };
        f.debug_struct("Process")
            .field("name", &self.process_name())
            .field("state", &state)
            .field("daemon", &self.is_daemon())
            .field("method", &self.method())
            .field("pid", &self.pid())
            .field("exitcode", &ExitCodeDebug(self.exitcode()))
            .finish()
    }
}

/// `Some(-15 (SIGTERM))`, `Some(0)`, `None`.
struct ExitCodeDebug(Option<i32>);

impl std::fmt::Debug for ExitCodeDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("None"),
            Some(c) if c < 0 => match signal_name(-c) {
                Some(n) => write!(f, "Some({c} ({n}))"),
                None => write!(f, "Some({c})"),
            },
            Some(c) => write!(f, "Some({c})"),
        }
    }
}

/// The name of a standard signal (`SIGTERM` for 15).
pub(crate) fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGPWR => "SIGPWR",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
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
    /// // SAFETY: this doc test's own threads hold no lock the closure needs.
    /// let mut p = unsafe { mproc_spawn::Process::fork_closure(move || data.iter().sum::<u64>()) };
    /// p.start().unwrap();
    /// assert_eq!(p.join().unwrap(), 6);
    /// ```
    ///
    /// # Safety
    ///
    /// The closure runs in a `fork()` child, where only the thread that called
    /// `start` exists. If another thread of this process holds a lock when `start`
    /// forks (a `Mutex` of yours, stdout's, a logger's, an allocator's that does not
    /// repair itself after fork), that lock stays locked for ever in the child, and
    /// data it guards may be half-updated. The caller promises that nothing the
    /// closure (or its captures' `Drop`, or what it calls) touches can be held by
    /// another thread at that moment: for instance, that the program has no other
    /// threads, or that they never take such locks. glibc's malloc is repaired by
    /// `fork` and is always safe. mproc's own helper threads hold no lock across a
    /// fork. For a target without captures use [`Process::new`], which every start
    /// method runs (forkserver and spawn children start clean).
    #[allow(unsafe_code)] // an `unsafe fn` for its contract; it contains no unsafe block
    pub unsafe fn fork_closure<F>(f: F) -> Self
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
            daemon: None,
            method: None,
            executable: None,
            identity,
            default_name,
            child: None,
            joined: false,
            closed: None,
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
    /// child; every child, daemon or not, is killed when its parent exits, and with
    /// [`set_join_at_exit`](crate::set_join_at_exit) only non-daemon children are
    /// waited for. The default is the creating process's own flag, as in Python: a
    /// process created inside a daemon is a daemon. Unlike Python, a daemon may start
    /// children of its own.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = Some(daemon);
        self
    }

    /// The program a [`StartMethod::Spawn`] child runs (Python's `set_executable`, for
    /// this process only): a copy of this program, or another build of it. The default
    /// is [`get_executable`](crate::get_executable) (`/proc/self/exe` unless
    /// [`set_executable`](crate::set_executable) chose another). A program that is
    /// not this one refuses the bootstrap message, and `join` reports
    /// [`ProcessError::ChildFailed`] or the exit code. Other start methods ignore it.
    pub fn executable(mut self, path: impl Into<PathBuf>) -> Self {
        self.executable = Some(path.into());
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

    /// Whether the process is marked as a daemon (by [`daemon`](Process::daemon), or
    /// by default because this process is one).
    pub fn is_daemon(&self) -> bool {
        self.daemon.unwrap_or_else(current::own_daemon)
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
        // Python's exit handler ("process shutting down", joining children).
        crate::exit::arm();
        if self.closed.is_some() {
            return Err(ProcessError::Closed);
        }
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
        let daemon = self.is_daemon();
        let info = ChildInfo {
            name: self.process_name().to_owned(),
            daemon,
            identity: self.identity.clone(),
            parent_pid: rustix::process::getpid().as_raw_nonzero().get(),
            parent_name: current::own_name(),
            method: method.code(),
            join_at_exit: crate::exit::join_at_exit(),
            log: mproc_core::logger::settings_for_child(),
        };
        let exe = match (&self.executable, method) {
            (Some(p), _) => p.clone(),
            (None, StartMethod::Spawn) => crate::get_executable(),
            (None, _) => PathBuf::new(),
        };
        let started = launcher::run_long_lived(move || match method {
            StartMethod::Fork => start_fork(prepared, info),
            StartMethod::Spawn => start_spawn(prepared, info, &exe),
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
                daemon,
            },
            Arc::clone(&pidfd),
        );
        let source = match started.status {
            Some(fd) => StatusSource::Server(fd),
            None => StatusSource::Own,
        };
        self.child = Some(ChildState {
            pid: started.pid,
            pidfd,
            method,
            daemon,
            live: Mutex::new(Live {
                reader: started.reader,
                source,
                exitcode: None,
            }),
            lifeline: started.lifeline,
            reg,
        });
        Ok(())
    }

    /// The OS pid, once started (and still after [`close`](Process::close)).
    pub fn pid(&self) -> Option<i32> {
        match (&self.child, self.closed) {
            (Some(c), _) => Some(c.pid),
            (None, Some((pid, _))) => pid,
            (None, None) => None,
        }
    }

    /// The exit code once the process has ended (Python's `exitcode`): `0` after the
    /// target returned, `1` after a panic, `n` after `std::process::exit(n)`, `-N`
    /// after signal N. `None` while it runs or before it starts. Does not block, and
    /// takes `&self`, so a `Vec<Process>` can be inspected with `iter()`. After
    /// [`close`](Process::close) it keeps the code the process ended with.
    pub fn exitcode(&self) -> Option<i32> {
        let Some(c) = self.child.as_ref() else {
            return self.closed.and_then(|(_, code)| code);
        };
        let mut live = c.lock();
        let _ = live.wait(c, Deadline::now());
        live.exitcode
    }

    /// Whether the process has been started and has not ended yet (Python's
    /// `is_alive()`). Does not block. `false` after [`close`](Process::close).
    pub fn is_alive(&self) -> bool {
        self.child.is_some() && self.exitcode().is_none()
    }

    /// Releases what the parent holds for a process that has ended (Python's
    /// `close()`): its pidfd, result channel and status fds. Afterwards `start`,
    /// `join`, the signal methods and `close`'s siblings return
    /// [`ProcessError::Closed`] (Python's `ValueError: process object is closed`),
    /// `sentinel` is `None`, `is_alive` is `false`; `pid` and `exitcode` keep their
    /// values. A second `close` does nothing. A process that was never started can be
    /// closed too.
    ///
    /// ```
    /// fn nothing(_: ()) {}
    /// let mut p = mproc_spawn::Process::new(nothing, ());
    /// p.start().unwrap();
    /// p.join().unwrap();
    /// p.close().unwrap();
    /// assert!(matches!(p.join(), Err(mproc_spawn::ProcessError::Closed)));
    /// ```
    ///
    /// # Errors
    ///
    /// [`ProcessError::StillRunning`] if the process has not ended (Python's
    /// `ValueError: Cannot close a process while it is still running`); nothing is
    /// released then.
    pub fn close(&mut self) -> Result<(), ProcessError> {
        if self.closed.is_some() {
            return Ok(());
        }
        let code = match &self.child {
            Some(c) => {
                let code = self.exitcode();
                if code.is_none() {
                    return Err(ProcessError::StillRunning);
                }
                current::unregister(c.reg);
                code
            }
            None => None,
        };
        let pid = self.pid();
        self.child = None;
        self.job = None;
        self.closed = Some((pid, code));
        Ok(())
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
        let c = self.child.as_ref().ok_or(self.missing())?;
        if self.joined {
            return Err(ProcessError::AlreadyJoined);
        }
        let mut live = c.lock();
        if !live.wait(c, deadline).map_err(ProcessError::Io)? {
            return Ok(None);
        }
        self.joined = true;
        let code = live.exitcode.unwrap_or(255);
        match live.reader.take() {
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

    /// Sends SIGINT (Python 3.14's `interrupt()`): a target that does not handle it
    /// ends with exit code `-2`. Does nothing once the process has ended.
    pub fn interrupt(&self) -> Result<(), ProcessError> {
        self.signal(libc::SIGINT)
    }

    /// Sends signal `sig` to the process (through its pidfd: never to a reused pid).
    pub fn signal(&self, sig: i32) -> Result<(), ProcessError> {
        let c = self.child.as_ref().ok_or(self.missing())?;
        c.pidfd.send_signal(sig).map_err(ProcessError::Io)
    }

    /// A file descriptor that becomes readable (`POLLIN`) when the process ends
    /// (Python's `sentinel`): its pidfd. Poll many of them to wait for the first of
    /// several processes. `None` before start and after [`close`](Process::close).
    pub fn sentinel(&self) -> Option<BorrowedFd<'_>> {
        self.child.as_ref().map(|c| c.pidfd.as_fd())
    }

    /// The error for an operation that needs a started, unclosed process.
    fn missing(&self) -> ProcessError {
        if self.closed.is_some() {
            ProcessError::Closed
        } else {
            ProcessError::NotStarted
        }
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        let Some(c) = self.child.take() else {
            return;
        };
        if c.lock().exitcode.is_some() {
            current::unregister(c.reg);
            return;
        }
        if !c.daemon && crate::exit::join_at_exit() {
            // Python's behaviour: the child keeps running; the program waits for it
            // when it exits (and reaps it then, or earlier in `active_children`).
            crate::exit::keep_until_exit(c);
            return;
        }
        c.kill_and_reap();
    }
}

/// The parent's view of a started child.
#[derive(Debug)]
pub(crate) struct ChildState {
    pid: i32,
    pidfd: Arc<Pidfd>,
    method: StartMethod,
    daemon: bool,
    live: Mutex<Live>,
    /// Forkserver: the write end of the child's lifeline (dropping it kills the child).
    lifeline: Option<OwnedFd>,
    pub(crate) reg: u64,
}

/// Where the exit status comes from.
#[derive(Debug)]
enum StatusSource {
    /// Our own child: `waitid(P_PIDFD)`.
    Own,
    /// A fork server's child: the server writes the code on this pipe.
    Server(OwnedFd),
    /// The fork server died before reporting; the child (no longer anyone's we can
    /// wait for) is followed through its pidfd, and its code is inferred.
    Lost,
}

/// The part of a child's state that waiting changes.
#[derive(Debug)]
struct Live {
    reader: ResultReader,
    source: StatusSource,
    exitcode: Option<i32>,
}

impl ChildState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the child is still running (non-blocking).
    pub(crate) fn running(&self) -> bool {
        let mut live = self.lock();
        let _ = live.wait(self, Deadline::now());
        live.exitcode.is_none()
    }

    /// Waits for the child to end (and reaps it), up to `deadline`.
    pub(crate) fn wait_until(&self, deadline: Deadline) -> bool {
        self.lock().wait(self, deadline).unwrap_or(true)
    }

    /// SIGKILL, then reap; forgets the child.
    pub(crate) fn kill_and_reap(self) {
        let _ = self.pidfd.send_signal(libc::SIGKILL);
        // SIGKILL ends it promptly; the fork server reports within a moment.
        let limit = match self.method {
            StartMethod::ForkServer => Deadline::after(Duration::from_secs(10)),
            _ => Deadline::never(),
        };
        let _ = self.lock().wait(&self, limit);
        current::unregister(self.reg);
        drop(self.lifeline);
    }
}

impl Live {
    /// The fd that becomes readable when the exit status can be collected.
    fn exit_fd<'a>(&'a self, c: &'a ChildState) -> BorrowedFd<'a> {
        match &self.source {
            StatusSource::Server(s) => s.as_fd(),
            StatusSource::Own | StatusSource::Lost => c.pidfd.as_fd(),
        }
    }

    /// Waits until the process has ended and its status is collected (true), or the
    /// deadline passes (false). Reads the result as it arrives, so a child writing a
    /// large result never blocks on a parent that waits for its exit.
    fn wait(&mut self, c: &ChildState, deadline: Deadline) -> io::Result<bool> {
        loop {
            if self.exitcode.is_some() {
                return Ok(true);
            }
            let want_result = !self.reader.done();
            let (exit_ready, result_ready) = {
                let exit_fd = self.exit_fd(c);
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
                self.collect(c)?;
            }
        }
    }

    /// Collects the exit status (the exit fd is readable) and drains the result.
    fn collect(&mut self, c: &ChildState) -> io::Result<()> {
        let code = match &self.source {
            StatusSource::Own => match reap_pidfd(&c.pidfd)? {
                Some(code) => code,
                None => return Ok(()),
            },
            StatusSource::Server(fd) => match crate::forkserver::read_status(fd.as_fd())? {
                Some(code) => code,
                None => {
                    // The server died; the child lives on (it is no longer the
                    // server's): follow it through its pidfd.
                    self.source = StatusSource::Lost;
                    return Ok(());
                }
            },
            StatusSource::Lost => {
                // Nobody can tell us the code: infer it from what the child reported.
                self.reader.pump()?;
                match self.reader.outcome_tag() {
                    Some(wire::TAG_VALUE) => 0,
                    Some(wire::TAG_REFUSED) => crate::child::BOOTSTRAP_EXIT,
                    Some(_) => 1,
                    None => 255,
                }
            }
        };
        self.exitcode = Some(code);
        self.reader.pump()?;
        current::unregister(c.reg);
        Ok(())
    }
}

/// Reaps our child through its pidfd (`waitid(P_PIDFD)`, which only ever reaches a
/// child of this process: never a stranger that reused the pid). `None` while it runs.
fn reap_pidfd(pidfd: &Pidfd) -> io::Result<Option<i32>> {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    match waitid(
        WaitId::PidFd(pidfd.as_fd()),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    ) {
        Ok(Some(st)) => Ok(Some(match st.terminating_signal() {
            Some(sig) => -sig,
            None => st.exit_status().unwrap_or(255),
        })),
        Ok(None) => Ok(None),
        Err(Errno::INTR) => Ok(None),
        // Someone else reaped it (SIGCHLD ignored, or waitpid(-1) elsewhere): the
        // status is lost.
        Err(Errno::CHILD) => Ok(Some(255)),
        Err(e) => Err(e.into()),
    }
}

/// Whether `pidfd` refers to an unreaped child of this process (`waitid` with
/// `WNOWAIT` reports ECHILD for anything else). Checked right after `pidfd_open`, so a
/// pid that was reaped by someone else and reused cannot be taken for our child.
fn is_own_child(pidfd: &Pidfd) -> bool {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    !matches!(
        waitid(
            WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        ),
        Err(Errno::CHILD)
    )
}

/// A Unix stream socket pair, both ends close-on-exec and above 2.
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    Ok((sys::above_stdio(a)?, sys::above_stdio(b)?))
}

/// Kills and reaps a child we could not take charge of (its pidfd could not be
/// opened for lack of fds). Only called for a pid that is known to be our unreaped
/// child ([`sys::is_unreaped_child`]): any other pid may be a stranger's.
fn abandon(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty());
    }
}

/// Opens the child's pidfd (and checks that it is still our child: nobody reaped it
/// behind our back), or kills and reaps it if it is certainly still our unreaped child.
/// Called while a [`sys::NoAutoReap`] guard lives, so SIGCHLD cannot reap it meanwhile.
fn take_charge(pid: i32) -> io::Result<Pidfd> {
    let pidfd = sys::open_pidfd(pid).inspect_err(|e| {
        if e.raw_os_error() != Some(libc::ESRCH) && sys::is_unreaped_child(pid) {
            abandon(pid);
        }
    })?;
    if !is_own_child(&pidfd) {
        // Reaped by someone else (SIGCHLD ignored, or a `waitpid(-1)` elsewhere) and
        // perhaps reused: this pidfd is a stranger's. Never signal it.
        return Err(io::Error::other(
            "the new child was reaped by someone else before mproc could take charge \
             of it (is SIGCHLD ignored?)",
        ));
    }
    Ok(pidfd)
}

/// Takes the pidfd that came with the child (`clone3(CLONE_PIDFD)`), moved above 2; if
/// that fails, kills and reaps the child through the pidfd itself (never by pid).
fn adopt_pidfd(fd: OwnedFd, pid: i32) -> io::Result<Pidfd> {
    if fd.as_raw_fd() > 2 {
        return Ok(Pidfd::from_owned(fd, pid));
    }
    match rustix::io::fcntl_dupfd_cloexec(&fd, 3) {
        Ok(high) => Ok(Pidfd::from_owned(high, pid)),
        Err(e) => {
            let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
            let _ = rustix::process::waitid(
                rustix::process::WaitId::PidFd(fd.as_fd()),
                rustix::process::WaitIdOptions::EXITED,
            );
            Err(e.into())
        }
    }
}

static WARNED_THREADS: AtomicBool = AtomicBool::new(false);

/// Whether the thread warning was printed (for tests).
pub(crate) fn fork_warned() -> bool {
    WARNED_THREADS.load(Ordering::Relaxed)
}

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
    if total <= 1 {
        return 0;
    }
    // mproc's own helper threads (the launcher, a pool's engine and Ctrl-C threads, a
    // queue's feeder) are named `mproc-…` and hold no lock across a fork: only the
    // threads the program made count.
    let me = rustix::thread::gettid().as_raw_nonzero().get();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return total.saturating_sub(1);
    };
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) != Some(me))
        .filter(|e| {
            std::fs::read(e.path().join("comm")).map_or(true, |c| !c.starts_with(b"mproc-"))
        })
        .count()
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
    // Until the parent holds the pidfd, SIGCHLD must not reap the child (its pid could
    // then be reused before `pidfd_open`).
    let reap = sys::NoAutoReap::new();
    match sys::fork()? {
        sys::Forked::Child => {
            // The parent restores the disposition; the child resets its signals below.
            std::mem::forget(reap);
            drop(mine);
            sys::reset_signals();
            child::prepare(&info, parent);
            let outcome = match prepared {
                Prepared::Target { enc, local, .. } => {
                    // Only what is passed is inherited, as under spawn and forkserver.
                    let mut keep: Vec<i32> = enc.fds.iter().map(AsRawFd::as_raw_fd).collect();
                    keep.push(theirs.as_raw_fd());
                    keep.extend(current::parent_sentinel_raw());
                    sys::close_fds_except(&keep);
                    sys::stdio_devnull();
                    child::about_to_run();
                    local(&enc.bytes, enc.fds)
                }
                // A closure may use any fd it captured: everything stays open.
                Prepared::Closure(c) => {
                    sys::stdio_devnull();
                    child::about_to_run();
                    c()
                }
            };
            child::finish(&theirs, outcome)
        }
        sys::Forked::Parent(pid) => {
            drop(theirs);
            drop(prepared);
            let pidfd = take_charge(pid);
            drop(reap);
            let pidfd = pidfd?;
            Ok(Started {
                pid,
                pidfd,
                reader: ResultReader::new(mine)?,
                status: None,
                lifeline: None,
            })
        }
    }
}

pub(crate) fn start_spawn(
    prepared: Prepared,
    info: ChildInfo,
    exe: &std::path::Path,
) -> io::Result<Started> {
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
    // The child receives exactly these fds, renumbered from 3 in this order (see
    // `sys::spawn_self`): the arguments' handles, then the bootstrap and result ends.
    // The (authenticated) bootstrap names the child's numbers.
    let mut inherit: Vec<i32> = enc.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let n = inherit.len() as i32;
    let arg_fds: Vec<i32> = (0..n).map(|i| 3 + i).collect();
    let boot = bootstrap::make_boot(nonce, tramp, target, info, arg_fds);
    let key = mproc_core::code::start_key(nonce);
    let frame = wire::encode_boot(&key, &boot, &enc.bytes).map_err(io::Error::other)?;
    inherit.push(boot_theirs.as_raw_fd());
    inherit.push(res_theirs.as_raw_fd());
    let arg0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| "mproc-child".into());
    let spec = bootstrap::spec_string(nonce, &key, parent, 3 + n, 4 + n);
    let spawned = sys::spawn_self(
        exe.as_os_str(),
        &arg0,
        (bootstrap::BOOT_ENV, &spec),
        &inherit,
    )?;
    let pid = spawned.pid;
    let pidfd = match spawned.pidfd {
        Some(fd) => adopt_pidfd(fd, pid),
        None => take_charge(pid),
    };
    drop(spawned.no_reap);
    let pidfd = pidfd?;
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
        lifeline: None,
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

//! Who this process is: `current_process()`, `parent_process()`, `active_children()`.
use crate::StartMethod;
use crate::sys::ForkLocal;
use mproc_core::Pidfd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// What a child learns about itself at start (travels in the bootstrap message).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone)]
pub(crate) struct ChildInfo {
    pub(crate) name: String,
    pub(crate) daemon: bool,
    pub(crate) identity: Vec<u32>,
    pub(crate) parent_pid: i32,
    pub(crate) parent_name: String,
    pub(crate) method: u8,
    /// The parent's [`set_join_at_exit`](crate::set_join_at_exit) setting.
    pub(crate) join_at_exit: bool,
    /// The parent's logger (`mproc_core::logger`): its effective level and whether it
    /// logs to stderr; `None` if the parent never asked for it. Adopted by spawn and
    /// forkserver children (fork children inherit the logger itself).
    pub(crate) log: Option<(u32, bool)>,
}

#[derive(Debug, Clone)]
struct SelfInfo {
    name: String,
    daemon: bool,
    identity: Vec<u32>,
    parent: Option<(i32, String)>,
    method: Option<StartMethod>,
}

fn main_info() -> RwLock<SelfInfo> {
    RwLock::new(SelfInfo {
        name: "MainProcess".into(),
        daemon: false,
        identity: Vec::new(),
        parent: None,
        method: None,
    })
}

static SELF: ForkLocal<RwLock<SelfInfo>> = ForkLocal::new(main_info);
/// A pidfd of the logical parent (in a child), for `parent_process()`'s sentinel.
static PARENT_PIDFD: ForkLocal<Mutex<Option<Arc<Pidfd>>>> = ForkLocal::new(|| Mutex::new(None));
/// Python's `_process_counter`: numbers the children this process creates.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Called in a new child before the target runs.
pub(crate) fn become_child(info: &ChildInfo) {
    SELF.reset();
    COUNTER.store(0, Ordering::Relaxed);
    REGISTRY.reset();
    PARENT_PIDFD.reset();
    crate::exit::reset_after_fork();
    crate::exit::inherit(info.join_at_exit);
    // Under fork and spawn the logical parent is the real one: its pidfd, opened while
    // it is still our parent (checked after opening, so the pid cannot be a reused
    // one). A fork server's child receives it from the parent instead
    // (`set_parent_pidfd`).
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) == Some(info.parent_pid)
        && let Ok(fd) = crate::sys::open_pidfd(info.parent_pid)
        && rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) == Some(info.parent_pid)
    {
        set_parent_pidfd(fd);
    }
    let mut me = SELF.get().write().unwrap_or_else(|e| e.into_inner());
    *me = SelfInfo {
        name: info.name.clone(),
        daemon: info.daemon,
        identity: info.identity.clone(),
        parent: Some((info.parent_pid, info.parent_name.clone())),
        method: StartMethod::from_code(info.method),
    };
    drop(me);
    if StartMethod::from_code(info.method) != Some(StartMethod::Fork) {
        mproc_core::logger::adopt_child_settings(info.log);
    }
    register_name_source();
    run_child_start_hooks();
}

/// Lets mproc's logger name this process in its stderr records.
fn register_name_source() {
    mproc_core::logger::set_process_name_source(own_name);
}

/// Functions every new child runs once it knows who it is, before its target.
static CHILD_HOOKS: [std::sync::OnceLock<fn()>; 4] = [const { std::sync::OnceLock::new() }; 4];

/// Registers `hook` to run in every child this process (or a child of it) starts from
/// now on, under every start method, after [`current_process`] names the child and
/// before its target runs. For crates that extend children (log forwarding): register in
/// the parent, and for spawned children also from a constructor, which runs before
/// mproc-spawn's start-up. Registering the same function twice is a no-op.
///
/// Returns `false` if all (four) places are taken. A hook must not panic, and under
/// `fork` it runs where only async-signal-safe work is certain to be safe, as the
/// target does.
#[doc(hidden)]
pub fn at_child_start(hook: fn()) -> bool {
    for slot in &CHILD_HOOKS {
        if let Some(h) = slot.get() {
            if std::ptr::fn_addr_eq(*h, hook) {
                return true;
            }
            continue;
        }
        if slot.set(hook).is_ok() || slot.get().is_some_and(|h| std::ptr::fn_addr_eq(*h, hook)) {
            return true;
        }
    }
    false
}

fn run_child_start_hooks() {
    // `get` never waits: a slot that another thread was filling at fork time is skipped.
    for h in CHILD_HOOKS.iter().filter_map(std::sync::OnceLock::get) {
        h();
    }
}

/// The identity and default name of the next child: Python's `Process-1`, `Process-1:2`.
pub(crate) fn next_child_identity() -> (Vec<u32>, String) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    let mut id = SELF
        .get()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .identity
        .clone();
    id.push(n);
    let name = format!(
        "Process-{}",
        id.iter().map(u32::to_string).collect::<Vec<_>>().join(":")
    );
    (id, name)
}

/// Records the logical parent's pidfd (in a child).
pub(crate) fn set_parent_pidfd(fd: Pidfd) {
    *PARENT_PIDFD.get().lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(fd));
}

/// The raw fd of the parent's pidfd, if open (a fork child keeps it).
pub(crate) fn parent_sentinel_raw() -> Option<i32> {
    use std::os::fd::{AsFd, AsRawFd};
    PARENT_PIDFD
        .get()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|p| p.as_fd().as_raw_fd())
}

/// Whether this process is a daemon (a new `Process`'s default).
pub(crate) fn own_daemon() -> bool {
    SELF.get().read().unwrap_or_else(|e| e.into_inner()).daemon
}

/// This process's name (for a child's `parent_name`).
pub(crate) fn own_name() -> String {
    SELF.get()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .name
        .clone()
}

/// The process this code runs in: Python's `multiprocessing.current_process()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentProcess {
    name: String,
    pid: i32,
    daemon: bool,
    identity: Vec<u32>,
    method: Option<StartMethod>,
}

impl CurrentProcess {
    /// `MainProcess` in the process the program started as; `Process-1`, `Process-1:2`
    /// (or the name given with [`Process::name`](crate::Process::name)) in children.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The OS process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }
    /// Whether this process was started as a daemon.
    pub fn daemon(&self) -> bool {
        self.daemon
    }
    /// Python's `_identity`: the child numbers along the path from the main process
    /// (empty in the main process).
    pub fn identity(&self) -> &[u32] {
        &self.identity
    }
    /// The start method this process was started with (`None` in the main process).
    pub fn start_method(&self) -> Option<StartMethod> {
        self.method
    }
}

/// The process this code runs in (Python's `multiprocessing.current_process()`).
///
/// ```
/// let me = mproc_spawn::current_process();
/// assert_eq!(me.name(), "MainProcess");
/// assert_eq!(me.pid(), std::process::id() as i32);
/// ```
pub fn current_process() -> CurrentProcess {
    let me = SELF.get().read().unwrap_or_else(|e| e.into_inner()).clone();
    CurrentProcess {
        name: me.name,
        pid: rustix::process::getpid().as_raw_nonzero().get(),
        daemon: me.daemon,
        identity: me.identity,
        method: me.method,
    }
}

/// The process that started this one (Python's `multiprocessing.parent_process()`,
/// a `ParentProcess`): its name and pid, and a sentinel to wait for its end.
#[derive(Debug, Clone)]
pub struct ParentProcess {
    name: String,
    pid: i32,
    pidfd: Option<Arc<Pidfd>>,
}

impl PartialEq for ParentProcess {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.pid == other.pid
    }
}

impl Eq for ParentProcess {}

impl ParentProcess {
    /// The parent's name (`MainProcess`, `Process-1` …).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The pid of the process that called `start`. Under the fork server this is the
    /// logical parent, not the server (which is what `getppid()` returns).
    pub fn pid(&self) -> i32 {
        self.pid
    }
    /// Whether the parent is still running. (A child normally dies with its parent,
    /// so this is mostly true while the child runs.)
    pub fn is_alive(&self) -> bool {
        match &self.pidfd {
            Some(p) => p.is_alive(),
            None => mproc_core::process_alive(self.pid),
        }
    }
    /// A file descriptor that becomes readable when the parent ends (Python's
    /// `parent_process().sentinel`): a pidfd of the parent, opened when this process
    /// started, so it never follows a reused pid. `None` only if it could not be
    /// opened then.
    pub fn sentinel(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.pidfd.as_ref().map(|p| p.as_fd())
    }
    /// Waits until the parent ends (Python's `parent_process().join()`). mproc children
    /// die with their parent, so this returns only in a child that outlives it for a
    /// moment (or one that caught nothing: see the guide).
    ///
    /// # Errors
    ///
    /// Polling the sentinel failed, or there is no sentinel.
    pub fn join(&self) -> std::io::Result<()> {
        self.join_until(mproc_core::Deadline::never()).map(|_| ())
    }
    /// As [`join`](ParentProcess::join), waiting at most `timeout`: whether the parent
    /// ended.
    ///
    /// # Errors
    ///
    /// As [`join`](ParentProcess::join).
    pub fn join_timeout(&self, timeout: std::time::Duration) -> std::io::Result<bool> {
        self.join_until(mproc_core::Deadline::after(timeout))
    }
    fn join_until(&self, deadline: mproc_core::Deadline) -> std::io::Result<bool> {
        match &self.pidfd {
            Some(p) => p.wait_exit_until(deadline),
            None => Err(std::io::Error::other("no sentinel for the parent process")),
        }
    }
}

/// The process that started this one, `None` in the main process
/// (Python's `multiprocessing.parent_process()`).
pub fn parent_process() -> Option<ParentProcess> {
    let me = SELF.get().read().unwrap_or_else(|e| e.into_inner());
    let pidfd = PARENT_PIDFD
        .get()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    me.parent.as_ref().map(|(pid, name)| ParentProcess {
        name: name.clone(),
        pid: *pid,
        pidfd,
    })
}

/// A child this process started and has not joined yet (see [`active_children`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSummary {
    /// Its pid.
    pub pid: i32,
    /// Its name.
    pub name: String,
    /// Whether it was started as a daemon.
    pub daemon: bool,
}

struct Entry {
    id: u64,
    summary: ChildSummary,
    pidfd: Arc<Pidfd>,
}

static REGISTRY: ForkLocal<Mutex<Vec<Entry>>> = ForkLocal::new(|| Mutex::new(Vec::new()));
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Records a started child; returns the key for [`unregister`].
pub(crate) fn register(summary: ChildSummary, pidfd: Arc<Pidfd>) -> u64 {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    REGISTRY
        .get()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Entry { id, summary, pidfd });
    id
}

/// The name of a registered child.
pub(crate) fn name_of(id: u64) -> Option<String> {
    REGISTRY
        .get()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|e| e.id == id)
        .map(|e| e.summary.name.clone())
}

/// Forgets a child (joined, reaped or dropped).
pub(crate) fn unregister(id: u64) {
    REGISTRY
        .get()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|e| e.id != id);
}

/// The children of this process that are still running (Python's
/// `multiprocessing.active_children()`). Children that have exited but were not joined
/// yet are left out.
pub fn active_children() -> Vec<ChildSummary> {
    REGISTRY
        .get()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|e| e.pidfd.is_alive())
        .map(|e| e.summary.clone())
        .collect()
}

/// Names and pidfds of the registered non-daemon children that still run (for the exit
/// hook).
pub(crate) fn running_non_daemon() -> Vec<(String, Arc<Pidfd>)> {
    REGISTRY
        .get()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|e| !e.summary.daemon && e.pidfd.is_alive())
        .map(|e| (e.summary.name.clone(), Arc::clone(&e.pidfd)))
        .collect()
}

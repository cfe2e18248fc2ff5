//! `Manager`: starts or reaches a manager server and creates objects in it.
use crate::client::{Session, enc, random_u64, unexpected};
use crate::error::{ManagerError, Result};
use crate::proxy::*;
use crate::server::Server;
use crate::wire::{Kind, Op, Reply};
use mproc_channel::{Address, Connection, Pipe, RecvError};
use mproc_core::logger::Level;
use mproc_core::mp_log;
use mproc_core::{Decode, Encode, Message};
use mproc_spawn::{Process, StartMethod};
use std::sync::Arc;
use std::time::Duration;

/// How long [`Manager::start`] waits for its server to report that it listens.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A manager: a server process that holds shared objects, and this process's connection
/// to it. Python's `multiprocessing.Manager()` / `SyncManager` / `BaseManager`.
///
/// ```
/// use mproc_manager::Manager;
/// let m = Manager::start().unwrap();
/// let l = m.list::<String>().unwrap();
/// l.push(&"Hello".to_string()).unwrap();
/// assert_eq!(l.to_vec().unwrap(), ["Hello"]);
/// m.shutdown().unwrap();
/// ```
///
/// A manager from [`start`](Self::start) owns its server: [`shutdown`](Self::shutdown)
/// or dropping the manager stops it, and the server dies with this process (it is a
/// child process). A manager from [`connect`](Self::connect) only holds a connection.
pub struct Manager {
    session: Arc<Session>,
    authkey: Vec<u8>,
    process: Option<Process<()>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("address", &self.session.address)
            .field("owns_server", &self.process.is_some())
            .finish()
    }
}

/// Builds a [`Manager`] whose server listens where you say, with the key you choose,
/// started by the start method you choose.
#[derive(Debug, Default)]
pub struct ManagerBuilder {
    address: Option<Address>,
    authkey: Option<Vec<u8>>,
    method: Option<StartMethod>,
}

impl ManagerBuilder {
    /// Where the server listens (default: a fresh abstract Unix socket name). A TCP
    /// address with port 0 picks a free port; [`Manager::address`] tells which.
    pub fn address(mut self, address: Address) -> Self {
        self.address = Some(address);
        self
    }

    /// The auth key clients must prove (default: 32 random bytes).
    pub fn authkey(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.authkey = Some(key.into());
        self
    }

    /// The start method of the server process (default: the process-wide one).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Starts the server process and connects to it.
    ///
    /// # Errors
    /// [`ManagerError::Start`] if the process did not start or did not listen in time
    /// (for example, the address is in use).
    pub fn start(self) -> Result<Manager> {
        let address = self.address.unwrap_or_else(|| {
            Address::abstract_name(format!(
                "mproc-manager-{}-{:016x}",
                std::process::id(),
                random_u64()
            ))
        });
        let authkey = self.authkey.unwrap_or_else(|| {
            let mut k = vec![0u8; 32];
            for c in k.chunks_mut(8) {
                c.copy_from_slice(&random_u64().to_le_bytes());
            }
            k
        });
        let (rx, tx) = Pipe(false).map_err(|e| ManagerError::Start(e.to_string()))?;
        let mut p = Process::new(server_main, (address_parts(&address), authkey.clone(), tx))
            .name("mproc-manager");
        if let Some(m) = self.method {
            p = p.start_method(m);
        }
        p.start().map_err(|e| ManagerError::Start(e.to_string()))?;
        let ready: Result<std::result::Result<(u8, Vec<u8>), String>, RecvError> =
            rx.recv_timeout(READY_TIMEOUT);
        let real = match ready {
            Ok(Ok(parts)) => address_from_parts(parts)
                .ok_or_else(|| ManagerError::Start("the server sent a bad address".into()))?,
            Ok(Err(e)) => return Err(ManagerError::Start(e)),
            Err(e) => {
                let _ = p.kill();
                return Err(ManagerError::Start(format!(
                    "the server did not report ready: {e}"
                )));
            }
        };
        let session = Session::get(&real, Some(&authkey))?;
        Ok(Manager {
            session,
            authkey,
            process: Some(p),
        })
    }
}

/// The server process: binds, reports, serves until shut down.
fn server_main((parts, authkey, ready): ((u8, Vec<u8>), Vec<u8>, Connection)) {
    let bound = address_from_parts(parts)
        .ok_or_else(|| "bad address".to_string())
        .and_then(|a| Server::bind(a, &authkey).map_err(|e| e.to_string()));
    match bound {
        Ok(server) => {
            let _ = ready.send(&Ok::<_, String>(address_parts(server.address())));
            drop(ready);
            let _ = server.serve_forever();
        }
        Err(e) => {
            let _ = ready.send(&Err::<(u8, Vec<u8>), _>(e));
        }
    }
}

pub(crate) fn address_parts(a: &Address) -> (u8, Vec<u8>) {
    match a {
        Address::Unix(p) => (0, p.as_os_str().as_encoded_bytes().to_vec()),
        Address::Abstract(n) => (1, n.clone()),
        Address::Tcp(s) => (2, s.to_string().into_bytes()),
    }
}

pub(crate) fn address_from_parts((tag, b): (u8, Vec<u8>)) -> Option<Address> {
    match tag {
        0 => Some(Address::unix(String::from_utf8(b).ok()?)),
        1 => Some(Address::abstract_name(b)),
        2 => Some(Address::tcp(String::from_utf8(b).ok()?.parse().ok()?)),
        _ => None,
    }
}

impl Manager {
    /// Starts a manager server process with a fresh address and auth key (Python's
    /// `Manager()` / `manager.start()`).
    ///
    /// # Errors
    /// As [`ManagerBuilder::start`].
    pub fn start() -> Result<Manager> {
        ManagerBuilder::default().start()
    }

    /// A builder for a server at a chosen address, with a chosen key or start method.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

    /// Connects to a running manager (Python's `BaseManager(address, authkey).connect()`).
    ///
    /// # Errors
    /// [`ManagerError::Connect`]: nothing listens, or the key is wrong.
    pub fn connect(address: &Address, authkey: &[u8]) -> Result<Manager> {
        let session = Session::get(address, Some(authkey))?;
        Ok(Manager {
            session,
            authkey: authkey.to_vec(),
            process: None,
        })
    }

    /// Binds a server in this process without serving yet (Python's
    /// `manager.get_server()`); call [`Server::serve_forever`].
    ///
    /// # Errors
    /// The address is in use or invalid.
    pub fn get_server(address: Address, authkey: &[u8]) -> std::io::Result<Server> {
        Server::bind(address, authkey)
    }

    /// Runs a server in this process until a client shuts it down (Python's
    /// `get_server().serve_forever()`).
    ///
    /// # Errors
    /// The address is in use or invalid.
    pub fn serve(address: Address, authkey: &[u8]) -> std::io::Result<()> {
        Server::bind(address, authkey)?.serve_forever()
    }

    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    /// The server's address.
    pub fn address(&self) -> &Address {
        &self.session.address
    }

    /// The auth key.
    pub fn authkey(&self) -> &[u8] {
        &self.authkey
    }

    /// The server process's pid, for a manager this process started.
    pub fn pid(&self) -> Option<i32> {
        self.process.as_ref().and_then(Process::pid)
    }

    /// How many objects the server holds (Python's `_number_of_objects()`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn number_of_objects(&self) -> Result<usize> {
        match self.session.call(0, Op::Len)? {
            Reply::Int(n) => Ok(n as usize),
            other => Err(unexpected(&other)),
        }
    }

    /// Stops the server (if this manager started it) and waits for it to exit; a
    /// manager from [`connect`](Self::connect) only disconnects.
    ///
    /// # Errors
    /// [`ManagerError::ServerGone`] if the server had already died.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    /// Asks the server to stop, whoever started it (Python's `Server.shutdown` reached
    /// through a connection). The server exits after answering.
    ///
    /// # Errors
    /// Transport errors.
    pub fn shutdown_server(&self) -> Result<()> {
        match self.session.call(0, Op::Shutdown)? {
            Reply::Unit => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    fn stop(&mut self) -> Result<()> {
        let Some(mut p) = self.process.take() else {
            return Ok(());
        };
        if self.session.pid != crate::client::my_pid() {
            // A copy of the manager in a forked child: the server belongs to the parent.
            std::mem::forget(p);
            return Ok(());
        }
        mp_log!(Level::DEBUG, "sending shutdown message to manager");
        let r = self.shutdown_server();
        match p.join_timeout(Duration::from_secs(5)) {
            Ok(Some(())) => {}
            _ => {
                let _ = p.kill();
                let _ = p.join_timeout(Duration::from_secs(5));
            }
        }
        r
    }

    fn new_ref(&self, kind: Kind, init: Option<crate::wire::Val>, n: i64) -> Result<Arc<RefInner>> {
        match self.session.call(0, Op::Create { kind, init, n })? {
            Reply::Id(id) => Ok(Arc::new(RefInner {
                session: Arc::clone(&self.session),
                id,
                cbs: Default::default(),
            })),
            other => Err(unexpected(&other)),
        }
    }

    /// Publishes `value` (usually a proxy) under `name` in the server, for clients that
    /// know only the address and key: the analogue of Python's
    /// `BaseManager.register('get_queue', callable=lambda: queue)`. The server keeps
    /// the objects a published value refers to until it is replaced or withdrawn.
    ///
    /// # Errors
    /// Transport errors.
    pub fn publish<P: Encode>(&self, name: &str, value: &P) -> Result<()> {
        match self.session.call(
            crate::server::ROOT,
            Op::AttrSet(name.to_owned(), enc(value)?),
        )? {
            Reply::Unit => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The value published under `name` (see [`publish`](Self::publish)).
    ///
    /// # Errors
    /// [`ManagerError::KeyMissing`] if nothing is published under `name`; `Codec` if it
    /// is not a `P`.
    pub fn lookup<P: Decode>(&self, name: &str) -> Result<P> {
        match self
            .session
            .call(crate::server::ROOT, Op::AttrGet(name.to_owned()))?
        {
            Reply::Val(v) => crate::client::dec(&self.session, v),
            other => Err(unexpected(&other)),
        }
    }

    /// Withdraws what was published under `name`.
    ///
    /// # Errors
    /// [`ManagerError::KeyMissing`] if nothing is published under `name`.
    pub fn unpublish(&self, name: &str) -> Result<()> {
        match self
            .session
            .call(crate::server::ROOT, Op::AttrDel(name.to_owned()))?
        {
            Reply::Unit => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// A new empty list (Python's `manager.list()`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn list<T: Encode + Decode>(&self) -> Result<ListProxy<T>> {
        Ok(ListProxy::from_ref(self.new_ref(Kind::List, None, 0)?))
    }

    /// A new list holding `items` (Python's `manager.list(items)`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn list_from<'a, T: Encode + Decode + 'a>(
        &self,
        items: impl IntoIterator<Item = &'a T>,
    ) -> Result<ListProxy<T>> {
        let l = self.list()?;
        l.extend(items)?;
        Ok(l)
    }

    /// A new fixed-length array holding `items` (Python's `manager.Array(typecode,
    /// sequence)`; the item type plays the typecode's part). For Python's
    /// `Array(typecode, size)`, pass `&vec![T::default(); size]`.
    ///
    /// # Errors
    /// Transport errors; `Codec` if an item cannot be encoded.
    pub fn array<'a, T: Encode + Decode + 'a>(
        &self,
        items: impl IntoIterator<Item = &'a T>,
    ) -> Result<ArrayProxy<T>> {
        let items = items.into_iter().map(enc).collect::<Result<Vec<_>>>()?;
        match self.session.call(0, Op::CreateArray(items))? {
            Reply::Id(id) => Ok(ArrayProxy::from_ref(Arc::new(RefInner {
                session: Arc::clone(&self.session),
                id,
                cbs: Default::default(),
            }))),
            other => Err(unexpected(&other)),
        }
    }

    /// A new empty dict (Python's `manager.dict()`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn dict<K: Encode + Decode, V: Encode + Decode>(&self) -> Result<DictProxy<K, V>> {
        Ok(DictProxy::from_ref(self.new_ref(Kind::Dict, None, 0)?))
    }

    /// A new value (Python's `manager.Value(typecode, value)`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn value<T: Encode + Decode>(&self, v: &T) -> Result<ValueProxy<T>> {
        Ok(ValueProxy::from_ref(self.new_ref(
            Kind::Value,
            Some(enc(v)?),
            0,
        )?))
    }

    /// A new namespace (Python's `manager.Namespace()`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn namespace(&self) -> Result<NamespaceProxy> {
        Ok(NamespaceProxy::from_ref(self.new_ref(
            Kind::Namespace,
            None,
            0,
        )?))
    }

    /// A new queue of at most `maxsize` items, `0` for unbounded (Python's
    /// `manager.Queue(maxsize)`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn queue<T: Encode + Decode>(&self, maxsize: usize) -> Result<QueueProxy<T>> {
        let n = i64::try_from(maxsize).unwrap_or(0);
        Ok(QueueProxy::from_ref(self.new_ref(Kind::Queue, None, n)?))
    }

    /// A new joinable queue (Python's `manager.JoinableQueue(maxsize)`): a queue with
    /// [`task_done`](QueueProxy::task_done) and [`join`](QueueProxy::join).
    ///
    /// # Errors
    /// Transport errors.
    pub fn joinable_queue<T: Encode + Decode>(&self, maxsize: usize) -> Result<QueueProxy<T>> {
        let n = i64::try_from(maxsize).unwrap_or(0);
        Ok(QueueProxy::from_ref(self.new_ref(
            Kind::JoinableQueue,
            None,
            n,
        )?))
    }

    /// A new lock (Python's `manager.Lock()`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn lock(&self) -> Result<LockProxy> {
        Ok(LockProxy::from_ref(self.new_ref(Kind::Lock, None, 0)?))
    }

    /// A new reentrant lock (Python's `manager.RLock()`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn rlock(&self) -> Result<RLockProxy> {
        Ok(RLockProxy::from_ref(self.new_ref(Kind::RLock, None, 0)?))
    }

    /// A new semaphore with `value` permits (Python's `manager.Semaphore(value)`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn semaphore(&self, value: u32) -> Result<SemaphoreProxy> {
        Ok(SemaphoreProxy::from_ref(self.new_ref(
            Kind::Semaphore,
            None,
            value.into(),
        )?))
    }

    /// A new bounded semaphore (Python's `manager.BoundedSemaphore(value)`): releasing
    /// above `value` is an error.
    ///
    /// # Errors
    /// Transport errors.
    pub fn bounded_semaphore(&self, value: u32) -> Result<SemaphoreProxy> {
        Ok(SemaphoreProxy::from_ref(self.new_ref(
            Kind::BoundedSemaphore,
            None,
            value.into(),
        )?))
    }

    /// A new event (Python's `manager.Event()`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn event(&self) -> Result<EventProxy> {
        Ok(EventProxy::from_ref(self.new_ref(Kind::Event, None, 0)?))
    }

    /// A new condition with its own reentrant lock (Python's `manager.Condition()`).
    ///
    /// # Errors
    /// Transport errors.
    pub fn condition(&self) -> Result<ConditionProxy> {
        Ok(ConditionProxy::from_ref(self.new_ref(
            Kind::Condition,
            None,
            0,
        )?))
    }

    /// A new barrier for `parties` callers (Python's `manager.Barrier(parties)`).
    ///
    /// # Errors
    /// `BadRequest` if `parties` is 0.
    pub fn barrier(&self, parties: u32) -> Result<BarrierProxy> {
        Ok(BarrierProxy::from_ref(self.new_ref(
            Kind::Barrier,
            None,
            parties.into(),
        )?))
    }

    /// A new process pool of `processes` workers in the server (Python's
    /// `manager.Pool(processes)`): the workers are children of the server and die with
    /// it; any process holding the proxy submits work to this one pool. For the other
    /// options (initializer, `maxtasksperchild`, a time limit), see
    /// [`pool_builder`](Self::pool_builder).
    ///
    /// ```
    /// use mproc_manager::Manager;
    /// fn add((a, b): (i32, i32)) -> i32 { a + b }
    /// let m = Manager::start().unwrap();
    /// let pool = m.pool(2).unwrap();
    /// assert_eq!(pool.apply(add, (2, 3)).unwrap(), 5);
    /// ```
    ///
    /// Task functions travel as custom methods do (functions of this program, checked
    /// against their type fingerprint in the server): clients of another build are
    /// refused with `Unsupported`.
    ///
    /// # Errors
    /// `BadRequest` for zero processes; [`ManagerError::PoolStart`] if a worker could
    /// not be started.
    pub fn pool(&self, processes: usize) -> Result<PoolProxy> {
        self.pool_builder().processes(processes).build()
    }

    /// A builder for a pool in the server with Python's other `manager.Pool` options.
    pub fn pool_builder(&self) -> PoolProxyBuilder<'_> {
        PoolProxyBuilder {
            manager: self,
            spec: Ok(crate::wire::PoolSpec::default()),
        }
    }

    /// A new custom object built in the server by `ctor(args)` (Python: a type
    /// registered on `BaseManager` and created through it). Call its methods with
    /// [`Proxy::call`]. No registration step is needed: the constructor and the methods
    /// travel as functions of this program, which the server runs too.
    ///
    /// ```
    /// use mproc_manager::Manager;
    /// struct Counter(i64);
    /// impl Counter {
    ///     fn new(start: i64) -> Self { Counter(start) }
    ///     fn incr(&mut self, by: i64) -> i64 { self.0 += by; self.0 }
    /// }
    /// let m = Manager::start().unwrap();
    /// let c = m.create(Counter::new, 10).unwrap();
    /// assert_eq!(c.call(Counter::incr, 5).unwrap(), 15);
    /// ```
    ///
    /// # Errors
    /// `Unsupported` if the server runs another build of this program; `Signature` if the
    /// server's code for `fn(A) -> T` has another type fingerprint than the client sent
    /// (nothing runs); `BadRequest` if the constructor's arguments could not be decoded
    /// there; `Panicked` if it panicked.
    pub fn create<A: Encode + Decode, T: Send + 'static>(
        &self,
        ctor: fn(A) -> T,
        args: A,
    ) -> Result<Proxy<T>> {
        let (tramp, func, sig) = crate::sys::ctor_refs(ctor);
        let op = Op::CreateCustom {
            tramp,
            func,
            sig,
            args: enc(&args)?,
        };
        match self.session.call(0, op)? {
            Reply::Id(id) => Ok(Proxy::from_ref(Arc::new(RefInner {
                session: Arc::clone(&self.session),
                id,
                cbs: Default::default(),
            }))),
            other => Err(unexpected(&other)),
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Options of a pool made in a manager's server (Python's `manager.Pool(processes,
/// initializer, initargs, maxtasksperchild)`, plus mproc-pool's per-task time limit),
/// from [`Manager::pool_builder`].
///
/// ```
/// use mproc_manager::Manager;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// static BASE: AtomicU64 = AtomicU64::new(0);
/// fn init(base: u64) { BASE.store(base, Ordering::Relaxed) }
/// fn offset(x: u64) -> u64 { BASE.load(Ordering::Relaxed) + x }
/// let m = Manager::start().unwrap();
/// let pool = m.pool_builder().processes(2).initializer(init, 100).build().unwrap();
/// assert_eq!(pool.map(offset, [1, 2]).unwrap(), [101, 102]);
/// ```
pub struct PoolProxyBuilder<'m> {
    manager: &'m Manager,
    spec: Result<crate::wire::PoolSpec>,
}

impl std::fmt::Debug for PoolProxyBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("PoolProxyBuilder");
        if let Ok(s) = &self.spec {
            d.field("processes", &s.processes)
                .field("maxtasksperchild", &s.max_tasks)
                .field("task_timeout_us", &s.time_limit)
                .field("initializer", &s.init.is_some());
        }
        d.finish_non_exhaustive()
    }
}

impl PoolProxyBuilder<'_> {
    fn with(mut self, f: impl FnOnce(&mut crate::wire::PoolSpec) -> Result<()>) -> Self {
        if let Ok(s) = &mut self.spec
            && let Err(e) = f(s)
        {
            self.spec = Err(e);
        }
        self
    }

    /// Number of worker processes (default: the number of CPUs of the server's machine,
    /// Python's `processes=None`).
    pub fn processes(self, n: usize) -> Self {
        self.with(|s| {
            s.processes = Some(u64::try_from(n).unwrap_or(u64::MAX));
            Ok(())
        })
    }

    /// `f(args)` runs once in every worker before its first task (Python's
    /// `initializer`, `initargs`). A function of this program, like the tasks; if it
    /// panics, the pool is broken and tasks fail with `TaskError::Broken`.
    pub fn initializer<I: Message + Send + 'static>(self, f: fn(I), args: I) -> Self {
        self.with(|s| {
            let (tramp, func, sig) = crate::sys::init_refs(f);
            s.init = Some((tramp, func, sig, enc(&args)?));
            Ok(())
        })
    }

    /// A worker exits after this many tasks and a fresh one takes its place (Python's
    /// `maxtasksperchild`; `0`, the default, means never).
    pub fn maxtasksperchild(self, n: u64) -> Self {
        self.with(|s| {
            s.max_tasks = n;
            Ok(())
        })
    }

    /// A task still running after `limit` has its worker killed and replaced, and fails
    /// with `TaskError::TimedOut` (mproc-pool's `task_timeout`).
    pub fn task_timeout(self, limit: Duration) -> Self {
        self.with(|s| {
            s.time_limit = Some(limit.as_micros().min(u64::MAX as u128) as u64);
            Ok(())
        })
    }

    /// Starts the pool in the server.
    ///
    /// # Errors
    /// `BadRequest` for zero processes; `Codec` if the initializer's arguments do not
    /// encode; `Unsupported`/`Signature` for an initializer from another build or of
    /// another type than the server's code; [`ManagerError::PoolStart`] if a worker
    /// could not be started.
    pub fn build(self) -> Result<PoolProxy> {
        let spec = self.spec?;
        let m = self.manager;
        match m.session.call(0, Op::CreatePool(Box::new(spec)))? {
            Reply::Id(id) => Ok(PoolProxy::from_ref(Arc::new(RefInner {
                session: Arc::clone(&m.session),
                id,
                cbs: Default::default(),
            }))),
            other => Err(unexpected(&other)),
        }
    }
}

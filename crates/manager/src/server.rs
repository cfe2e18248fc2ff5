//! The server: a thread per connection (as in CPython), objects in one table with their
//! reference counts, per-object state behind a mutex and a condition variable.
use crate::bell::{Bell, Next};
use crate::pooled::{Pending, Stream, Submitted};
use crate::wire::{FaultKind, Kind, Micros, Op, Reply, Request, Val};
use mproc_channel::{Address, Client, Connection, Listener, RecvError};
use mproc_core::logger::Level;
use mproc_core::mp_log;
use mproc_pool::Pool;
use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

/// The id of the server's registry of published objects.
pub(crate) const ROOT: u64 = 1;

/// How often a blocked request checks that its client is still there.
const SLICE: Duration = Duration::from_millis(50);

type Fault = (FaultKind, String);
type Res = Result<Reply, Fault>;

fn fault(k: FaultKind) -> Fault {
    (k, String::new())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Dict {
    order: BTreeMap<u64, (Val, Val)>,
    index: HashMap<Vec<u8>, u64>,
    next: u64,
}

impl Dict {
    fn insert(&mut self, k: Val, v: Val) -> Option<Val> {
        if let Some(&pos) = self.index.get(&k.bytes) {
            let slot = self.order.get_mut(&pos).expect("index and order agree");
            return Some(std::mem::replace(&mut slot.1, v));
        }
        let pos = self.next;
        self.next += 1;
        self.index.insert(k.bytes.clone(), pos);
        self.order.insert(pos, (k, v));
        None
    }

    fn remove(&mut self, k: &[u8]) -> Option<(Val, Val)> {
        let pos = self.index.remove(k)?;
        self.order.remove(&pos)
    }

    fn get(&self, k: &[u8]) -> Option<&Val> {
        self.index.get(k).map(|p| &self.order[p].1)
    }
}

enum State {
    List(Vec<Val>),
    Dict(Dict),
    /// A fixed-length array (`Manager::array`).
    Array(Vec<Val>),
    Value(Val),
    Ns(BTreeMap<String, Val>),
    Queue {
        items: VecDeque<Val>,
        max: usize,
        /// Items put and not yet marked done (JoinableQueue).
        unfinished: u64,
        joinable: bool,
    },
    Lock {
        held: bool,
        session: u64,
    },
    RLock {
        owner: u64,
        count: u64,
        session: u64,
    },
    Sem {
        value: i64,
        max: Option<i64>,
    },
    Event(bool),
    Cond {
        owner: u64,
        count: u64,
        session: u64,
        next_ticket: u64,
        waiting: VecDeque<u64>,
        woken: HashSet<u64>,
    },
    Barrier {
        parties: u64,
        count: u64,
        generation: u64,
        broken: bool,
    },
    Custom(Box<dyn Any + Send>),
    /// A process pool (`Manager::pool`); shared so that a long map runs without the
    /// object's lock.
    Pool(Arc<Pool>),
    /// A submitted `apply_async`/`map_async`.
    PoolResult(Arc<dyn Pending>),
    /// A running `imap`/`imap_unordered`.
    PoolIter(Arc<Mutex<Box<dyn Stream>>>),
}

impl State {
    /// Every object id the values inside refer to.
    fn refs(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut add = |v: &Val| out.extend_from_slice(&v.refs);
        match self {
            State::List(l) | State::Array(l) => l.iter().for_each(&mut add),
            State::Dict(d) => d.order.values().for_each(|(k, v)| {
                add(k);
                add(v)
            }),
            State::Value(v) => add(v),
            State::Ns(n) => n.values().for_each(add),
            State::Queue { items, .. } => items.iter().for_each(add),
            _ => {}
        }
        out
    }
}

struct Obj {
    kind: Kind,
    st: Mutex<State>,
    cv: Condvar,
}

struct Entry {
    obj: Arc<Obj>,
    refs: u64,
}

#[derive(Default)]
struct Sess {
    conns: usize,
    held: HashMap<u64, u64>,
}

#[derive(Default)]
struct Table {
    objs: HashMap<u64, Entry>,
    sessions: HashMap<u64, Sess>,
    floating: HashMap<u64, u64>,
}

/// A segment a `SharedMemoryManager`'s server made (it holds the creator's handle).
enum Segment {
    Mem(mproc_shm::SharedMemory),
    List(mproc_shm::ShareableList),
}

impl Segment {
    fn name(&self) -> &str {
        match self {
            Segment::Mem(s) => s.name(),
            Segment::List(l) => l.name(),
        }
    }

    fn unlink(&self) {
        let _ = match self {
            Segment::Mem(s) => s.unlink(),
            Segment::List(l) => l.unlink(),
        };
    }
}

pub(crate) struct Shared {
    table: Mutex<Table>,
    segments: Mutex<Vec<Segment>>,
    /// Every pool made in this server, terminated when it stops serving (`None` from
    /// then on: a pool made later is terminated at once).
    pools: Mutex<Option<Vec<Weak<Pool>>>>,
    next_id: AtomicU64,
    stop: AtomicBool,
    address: Address,
}

impl Shared {
    fn obj(&self, id: u64) -> Result<Arc<Obj>, Fault> {
        lock(&self.table)
            .objs
            .get(&id)
            .map(|e| Arc::clone(&e.obj))
            .ok_or_else(|| fault(FaultKind::NoSuchObject))
    }

    /// Adds one reference per id for a value the server now stores.
    fn hold_stored(&self, ids: &[u64]) -> Result<(), Fault> {
        let mut t = lock(&self.table);
        if ids.iter().any(|id| !t.objs.contains_key(id)) {
            return Err(fault(FaultKind::NoSuchObject));
        }
        for id in ids {
            t.objs.get_mut(id).expect("checked above").refs += 1;
        }
        Ok(())
    }

    /// Adds one reference per id held by `session` (proxies it is about to decode).
    fn hold_for(&self, session: u64, ids: &[u64]) {
        let mut t = lock(&self.table);
        for id in ids {
            if let Some(e) = t.objs.get_mut(id) {
                e.refs += 1;
                *t.sessions
                    .entry(session)
                    .or_default()
                    .held
                    .entry(*id)
                    .or_insert(0) += 1;
            }
        }
    }

    /// Drops one reference per id; frees what nobody refers to any more, and what only
    /// the freed objects referred to.
    fn release(&self, mut ids: Vec<u64>) {
        while !ids.is_empty() {
            let mut freed = Vec::new();
            {
                let mut t = lock(&self.table);
                for id in ids.drain(..) {
                    if let Some(e) = t.objs.get_mut(&id) {
                        e.refs -= 1;
                        if e.refs == 0 {
                            freed.push(t.objs.remove(&id).expect("present").obj);
                        }
                    }
                }
            }
            for o in freed {
                ids.extend(lock(&o.st).refs());
            }
        }
    }

    fn release_vals(&self, vals: impl IntoIterator<Item = Val>) {
        let ids: Vec<u64> = vals.into_iter().flat_map(|v| v.refs).collect();
        if !ids.is_empty() {
            self.release(ids);
        }
    }

    fn add_object(&self, session: u64, kind: Kind, st: State) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut t = lock(&self.table);
        t.objs.insert(
            id,
            Entry {
                obj: Arc::new(Obj {
                    kind,
                    st: Mutex::new(st),
                    cv: Condvar::new(),
                }),
                refs: 1,
            },
        );
        *t.sessions
            .entry(session)
            .or_default()
            .held
            .entry(id)
            .or_insert(0) += 1;
        id
    }

    fn session_ended(&self, session: u64) {
        let held = {
            let mut t = lock(&self.table);
            let Some(s) = t.sessions.get_mut(&session) else {
                return;
            };
            s.conns -= 1;
            if s.conns > 0 {
                return;
            }
            let s = t.sessions.remove(&session).expect("present");
            let objs: Vec<Arc<Obj>> = t.objs.values().map(|e| Arc::clone(&e.obj)).collect();
            (s.held, objs)
        };
        // Locks the dead client held are released, so the others do not hang.
        for o in held.1 {
            let mut st = lock(&o.st);
            let woke = match &mut *st {
                State::Lock { held, session: s } if *held && *s == session => {
                    *held = false;
                    true
                }
                State::RLock {
                    count, session: s, ..
                }
                | State::Cond {
                    count, session: s, ..
                } if *count > 0 && *s == session => {
                    *count = 0;
                    true
                }
                _ => false,
            };
            drop(st);
            if woke {
                o.cv.notify_all();
            }
        }
        let ids = held
            .0
            .into_iter()
            .flat_map(|(id, n)| std::iter::repeat_n(id, n as usize))
            .collect();
        self.release(ids);
    }
}

/// A manager server bound to an address: Python's `BaseManager.get_server()`.
pub struct Server {
    listener: Listener,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("address", self.listener.address())
            .finish()
    }
}

impl Server {
    pub(crate) fn bind(address: Address, authkey: &[u8]) -> std::io::Result<Self> {
        let listener = Listener::bind(address, Some(authkey))?;
        let address = listener.address().clone();
        let mut table = Table::default();
        // The registry of published objects: held by the server itself, never freed.
        table.objs.insert(
            ROOT,
            Entry {
                obj: Arc::new(Obj {
                    kind: Kind::Namespace,
                    st: Mutex::new(State::Ns(BTreeMap::new())),
                    cv: Condvar::new(),
                }),
                refs: 1,
            },
        );
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                table: Mutex::new(table),
                segments: Mutex::new(Vec::new()),
                pools: Mutex::new(Some(Vec::new())),
                next_id: AtomicU64::new((crate::client::random_u64() >> 8).max(ROOT + 1)),
                stop: AtomicBool::new(false),
                address,
            }),
        })
    }

    /// The address clients connect to (for TCP port 0, the port chosen).
    pub fn address(&self) -> &Address {
        self.listener.address()
    }

    /// Serves clients until one asks the server to shut down (Python's
    /// `serve_forever`); each connection runs on a thread of its own. A client that
    /// fails authentication is refused before any request is read.
    ///
    /// On return no new client is accepted and every segment a
    /// [`SharedMemoryManager`](crate::SharedMemoryManager) made is unlinked; connections
    /// already open keep being served by their threads until they close (a server
    /// process started by [`Manager::start`](crate::Manager::start) exits right away).
    ///
    /// # Errors
    /// Never returns an error today; the `Result` leaves room for listener failures.
    pub fn serve_forever(self) -> std::io::Result<()> {
        mp_log!(
            Level::INFO,
            "manager serving at {}",
            python_repr(self.listener.address())
        );
        while !self.shared.stop.load(Ordering::SeqCst) {
            let conn = match self.listener.accept() {
                Ok(c) => c,
                // A failed handshake costs nothing more; a failing socket (out of fds)
                // is retried without spinning.
                Err(mproc_channel::ConnectError::Io(_)) => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(_) => continue,
            };
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let shared = Arc::clone(&self.shared);
            let _ = std::thread::Builder::new()
                .name("mproc-manager-conn".into())
                .spawn(move || serve_conn(&shared, conn));
        }
        // Python's SharedMemoryManager: every segment made through the server goes with it.
        for seg in lock(&self.shared.segments).drain(..) {
            seg.unlink();
        }
        // Pools go too: their workers are killed and reaped, and the tasks still running
        // fail with `Terminated` for the clients that wait on them.
        let pools = lock(&self.shared.pools).take().unwrap_or_default();
        for p in pools.iter().filter_map(Weak::upgrade) {
            p.terminate();
        }
        Ok(())
    }
}

/// An address as Python's `%r` shows it: `'/path'`, `'\x00name'`, `('127.0.0.1', 5000)`.
fn python_repr(a: &Address) -> String {
    match a {
        Address::Unix(p) => format!("'{}'", p.display()),
        Address::Abstract(n) => format!("'\\x00{}'", String::from_utf8_lossy(n)),
        Address::Tcp(s) => format!("('{}', {})", s.ip(), s.port()),
    }
}

fn serve_conn(shared: &Shared, conn: Connection) {
    let (session, same_build, build) = match conn.recv::<Request>() {
        Ok(Request {
            obj: 0,
            op:
                Op::Hello {
                    session,
                    layout,
                    exe,
                },
        }) => {
            let same =
                layout == mproc_core::code::layout() && exe == mproc_core::code::exe_identity();
            (session, same, layout)
        }
        Ok(_) => {
            let _ = conn.send(&Reply::Fault(
                FaultKind::BadRequest,
                "the first request must be a hello".into(),
            ));
            return;
        }
        Err(_) => return,
    };
    lock(&shared.table)
        .sessions
        .entry(session)
        .or_default()
        .conns += 1;
    if conn.send(&Reply::Unit).is_ok() {
        let ctx = Ctx {
            shared,
            conn: &conn,
            session,
            same_build,
            build,
        };
        let mut bell: Option<Bell> = None;
        loop {
            // The next request, and whether its reply goes through the doorbell.
            let (req, rung) = match bell.as_mut().map(|b| b.next(&conn)) {
                None => match conn.recv::<Request>() {
                    Ok(r) => (r, false),
                    Err(e @ (RecvError::Decode(_) | RecvError::TypeMismatch(_))) => {
                        // A well-framed message that is not a request (bytes that do
                        // not decode, or a message of another type): refuse it, go on.
                        let r = Reply::Fault(FaultKind::BadRequest, e.to_string());
                        if conn.send(&r).is_err() {
                            break;
                        }
                        continue;
                    }
                    Err(_) => break,
                },
                Some(Next::Rung(r)) => (r, true),
                Some(Next::Plain(r)) => (r, false),
                Some(Next::RungBad(m)) => {
                    let r = Reply::Fault(FaultKind::BadRequest, m);
                    if !bell.as_mut().is_some_and(|b| b.reply(&conn, &r)) {
                        break;
                    }
                    continue;
                }
                Some(Next::PlainBad(e)) => {
                    let r = Reply::Fault(FaultKind::BadRequest, e.to_string());
                    if conn.send(&r).is_err() {
                        break;
                    }
                    continue;
                }
                Some(Next::Gone) => break,
            };
            if req.obj == 0 && matches!(req.op, Op::Attach) && bell.is_none() {
                match attach(&conn) {
                    Ok(b) => bell = Some(b),
                    Err(true) => break,
                    Err(false) => {}
                }
                continue;
            }
            // Only a request to the server itself stops it (`handle` refuses the others).
            let stop = req.obj == 0 && matches!(req.op, Op::Shutdown);
            let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.handle(req)))
                .unwrap_or_else(|p| Err((FaultKind::Panicked, panic_text(&*p))));
            let reply = match reply {
                Ok(r) => r,
                Err((k, m)) => Reply::Fault(k, m),
            };
            if matches!(reply, Reply::Fault(FaultKind::Timeout, ref m) if m == GONE) {
                break;
            }
            let sent = match bell.as_mut() {
                Some(b) if rung => b.reply(&conn, &reply),
                _ => conn.send(&reply).is_ok(),
            };
            if !sent {
                break;
            }
            if stop {
                mp_log!(Level::DEBUG, "manager received shutdown message");
                shared.stop.store(true, Ordering::SeqCst);
                // Wake the accept loop.
                let _ = Client(&shared.address, None);
                break;
            }
        }
    }
    shared.session_ended(session);
}

const GONE: &str = "client gone";

/// Answers a client's [`Op::Attach`]: on a Unix socket, `Unit` and then a doorbell
/// region (see `bell`); elsewhere a fault, and the connection goes on without one.
/// `Err(true)`: the socket failed; `Err(false)`: refused, the client was told.
fn attach(conn: &Connection) -> Result<Bell, bool> {
    let local = conn
        .fileno()
        .and_then(|fd| rustix::net::getsockname(fd).ok())
        .is_some_and(|a| a.address_family() == rustix::net::AddressFamily::UNIX);
    let made = if local {
        Bell::create().map_err(|e| e.to_string())
    } else {
        Err("a doorbell needs a Unix socket".to_owned())
    };
    match made {
        Ok((bell, region)) => {
            if conn.send(&Reply::Unit).is_err() || conn.send(&region).is_err() {
                return Err(true);
            }
            Ok(bell)
        }
        Err(m) => {
            let r = Reply::Fault(FaultKind::Unsupported, m);
            Err(conn.send(&r).is_err())
        }
    }
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

fn deadline(t: Micros) -> Option<Instant> {
    t.map(|us| Instant::now() + Duration::from_micros(us))
}

enum WaitEnd {
    Ready,
    TimedOut,
}

/// The range a Python slice `[start:stop]` (step 1) covers in a sequence of `len`
/// items: negative bounds count from the end, and both are clamped into the sequence.
fn slice(len: usize, start: i64, stop: i64) -> std::ops::Range<usize> {
    let n = len as i64;
    let clamp = |x: i64| {
        if x < 0 {
            (n.saturating_add(x)).max(0)
        } else {
            x.min(n)
        }
    };
    let (a, b) = (clamp(start), clamp(stop));
    a as usize..b.max(a) as usize
}

fn index(len: usize, i: i64) -> Result<usize, Fault> {
    let j = if i < 0 { len as i64 + i } else { i };
    if j < 0 || j >= len as i64 {
        Err(fault(FaultKind::IndexOutOfRange))
    } else {
        Ok(j as usize)
    }
}

struct Ctx<'a> {
    shared: &'a Shared,
    conn: &'a Connection,
    session: u64,
    same_build: bool,
    /// The client's build identity (its hello's), against which every function offset
    /// it sends is resolved.
    build: u64,
}

impl Ctx<'_> {
    /// Waits on `o`'s condition variable until `ready` holds, the deadline passes or the
    /// client goes away (then the request is abandoned).
    fn wait<'g>(
        &self,
        o: &'g Obj,
        mut st: MutexGuard<'g, State>,
        until: Option<Instant>,
        mut ready: impl FnMut(&mut State) -> bool,
    ) -> Result<(MutexGuard<'g, State>, WaitEnd), Fault> {
        loop {
            if ready(&mut st) {
                return Ok((st, WaitEnd::Ready));
            }
            let slice = match until {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok((st, WaitEnd::TimedOut));
                    }
                    (d - now).min(SLICE)
                }
                None => SLICE,
            };
            st =
                o.cv.wait_timeout(st, slice)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            // The client sends nothing while it waits for this answer: anything readable
            // means it closed the connection.
            if self.conn.poll(Duration::ZERO).unwrap_or(true) {
                return Err((FaultKind::Timeout, GONE.into()));
            }
        }
    }

    fn out(&self, v: Val) -> Reply {
        self.shared.hold_for(self.session, &v.refs);
        Reply::Val(v)
    }

    fn out_vals(&self, vs: Vec<Val>) -> Reply {
        for v in &vs {
            self.shared.hold_for(self.session, &v.refs);
        }
        Reply::Vals(vs)
    }

    fn custom_ok(&self) -> Result<(), Fault> {
        if self.same_build {
            Ok(())
        } else {
            Err((
                FaultKind::Unsupported,
                "this client runs another build of the program, so it cannot run code in \
                 the server (custom objects, sort)"
                    .into(),
            ))
        }
    }

    fn handle(&self, req: Request) -> Res {
        let sh = self.shared;
        if req.obj == 0 {
            return match req.op {
                Op::Create { kind, init, n } => self.create(kind, init, n),
                Op::CreateCustom {
                    tramp,
                    func,
                    sig,
                    args,
                } => {
                    self.custom_ok()?;
                    let o = crate::sys::run_ctor(self.build, tramp, func, &sig, &args)?;
                    Ok(Reply::Id(sh.add_object(
                        self.session,
                        Kind::Custom,
                        State::Custom(o),
                    )))
                }
                Op::Shutdown => Ok(Reply::Unit),
                Op::CreateArray(items) => {
                    let refs: Vec<u64> =
                        items.iter().flat_map(|v| v.refs.iter().copied()).collect();
                    sh.hold_stored(&refs)?;
                    Ok(Reply::Id(sh.add_object(
                        self.session,
                        Kind::Array,
                        State::Array(items),
                    )))
                }
                Op::ShmCreate { size } => {
                    let size = usize::try_from(size)
                        .map_err(|_| (FaultKind::BadRequest, "size too large".into()))?;
                    let seg = mproc_shm::SharedMemory::create(size)
                        .map_err(|e| (FaultKind::Unsupported, e.to_string()))?;
                    Ok(self.keep(Segment::Mem(seg)))
                }
                Op::ShmList { items } => {
                    let items: Vec<mproc_shm::Item> = items.into_iter().map(Into::into).collect();
                    let l = mproc_shm::ShareableList::new(&items)
                        .map_err(|e| (FaultKind::Unsupported, e.to_string()))?;
                    Ok(self.keep(Segment::List(l)))
                }
                Op::ShmNames => Ok(Reply::Names(
                    lock(&sh.segments)
                        .iter()
                        .map(|s| s.name().to_owned())
                        .collect(),
                )),
                Op::Len => Ok(Reply::Int(lock(&sh.table).objs.len() as i64 - 1)),
                Op::CreatePool(spec) => self.create_pool(*spec),
                _ => Err((FaultKind::BadRequest, "no object named".into())),
            };
        }
        let id = req.obj;
        match req.op {
            Op::Incref => {
                sh.hold_for(self.session, &[id]);
                return self.exists(id);
            }
            Op::Decref => {
                let mut t = lock(&sh.table);
                let Some(s) = t.sessions.get_mut(&self.session) else {
                    return Ok(Reply::Unit);
                };
                match s.held.get_mut(&id) {
                    Some(n) if *n > 1 => *n -= 1,
                    Some(_) => {
                        s.held.remove(&id);
                    }
                    None => return Ok(Reply::Unit),
                }
                drop(t);
                sh.release(vec![id]);
                return Ok(Reply::Unit);
            }
            Op::Float => {
                sh.hold_stored(&[id])?;
                let token = crate::client::random_u64();
                lock(&sh.table).floating.insert(token, id);
                return Ok(Reply::Id(token));
            }
            Op::Adopt { token } => {
                let mut t = lock(&sh.table);
                if t.floating.get(&token) == Some(&id) {
                    t.floating.remove(&token);
                    *t.sessions
                        .entry(self.session)
                        .or_default()
                        .held
                        .entry(id)
                        .or_insert(0) += 1;
                    return Ok(Reply::Unit);
                }
                drop(t);
                sh.hold_for(self.session, &[id]);
                return self.exists(id);
            }
            _ => {}
        }
        let o = sh.obj(id)?;
        if matches!(o.kind, Kind::Pool | Kind::PoolResult | Kind::PoolIter) {
            return self.pool_op(&o, req.op);
        }
        self.object(&o, req.op)
    }

    fn create_pool(&self, spec: crate::wire::PoolSpec) -> Res {
        let mut b = Pool::builder().maxtasksperchild(spec.max_tasks);
        if let Some(n) = spec.processes {
            let n = usize::try_from(n)
                .map_err(|_| (FaultKind::BadRequest, "too many processes".into()))?;
            b = b.processes(n);
        }
        if let Some(us) = spec.time_limit {
            b = b.task_timeout(Duration::from_micros(us));
        }
        if let Some((tramp, func, sig, args)) = spec.init {
            self.custom_ok()?;
            b = crate::sys::run_init(self.build, tramp, func, &sig, b, &args)?;
        }
        let pool = b.build().map_err(|e| match e {
            mproc_pool::PoolError::InvalidArgument(m) => (FaultKind::BadRequest, m.to_owned()),
            other => (FaultKind::PoolStart, other.to_string()),
        })?;
        let pool = Arc::new(pool);
        let kept = match lock(&self.shared.pools).as_mut() {
            Some(pools) => {
                pools.retain(|w| w.strong_count() > 0);
                pools.push(Arc::downgrade(&pool));
                true
            }
            None => false,
        };
        if !kept {
            pool.terminate();
            return Err((
                FaultKind::PoolStart,
                "the server has stopped serving".into(),
            ));
        }
        Ok(Reply::Id(self.shared.add_object(
            self.session,
            Kind::Pool,
            State::Pool(pool),
        )))
    }

    /// Runs `step` with a wait of at most a slice until it gives a value or `until`
    /// passes (`Ok(None)`), checking between slices that the client is still there (if
    /// not, the request is abandoned; the work it waited for goes on).
    fn block<T>(
        &self,
        until: Option<Instant>,
        mut step: impl FnMut(Duration) -> Option<T>,
    ) -> Result<Option<T>, Fault> {
        loop {
            let slice = until.map_or(SLICE, |d| {
                d.saturating_duration_since(Instant::now()).min(SLICE)
            });
            if let Some(v) = step(slice) {
                return Ok(Some(v));
            }
            if until.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            // The client sends nothing while it waits for this answer: anything readable
            // means it closed the connection.
            if self.conn.poll(Duration::ZERO).unwrap_or(true) {
                return Err((FaultKind::Timeout, GONE.into()));
            }
        }
    }

    fn await_job(&self, job: &dyn Pending, until: Option<Instant>) -> Res {
        match self.block(until, |t| job.get(t))? {
            None => Err(fault(FaultKind::Timeout)),
            Some(Ok(v)) => Ok(self.out(v)),
            Some(Err(task)) => Ok(Reply::Task(Box::new(task))),
        }
    }

    /// Requests to pools and their results. The object's lock is held only to take a
    /// handle on it: a long map leaves the pool free for other clients' requests.
    fn pool_op(&self, o: &Obj, op: Op) -> Res {
        enum Held {
            Pool(Arc<Pool>),
            Result(Arc<dyn Pending>),
            Iter(Arc<Mutex<Box<dyn Stream>>>),
        }
        let held = match &*lock(&o.st) {
            State::Pool(p) => Held::Pool(Arc::clone(p)),
            State::PoolResult(r) => Held::Result(Arc::clone(r)),
            State::PoolIter(i) => Held::Iter(Arc::clone(i)),
            _ => return Err(fault(FaultKind::WrongKind)),
        };
        match (held, op) {
            (Held::Pool(pool), Op::PoolRun(run)) => {
                let crate::wire::PoolRun {
                    tramp,
                    func,
                    sig,
                    what,
                    args,
                    chunksize,
                    wait,
                    last,
                } = *run;
                self.custom_ok()?;
                let chunksize = usize::try_from(chunksize)
                    .map_err(|_| (FaultKind::BadRequest, "chunk size too large".into()))?;
                let submitted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crate::sys::run_pool(
                        self.build, tramp, func, &sig, &pool, what, &args, chunksize, last,
                    )
                }))
                .map_err(|p| (FaultKind::Panicked, panic_text(&*p)))??;
                let (kind, st) = match submitted {
                    Submitted::Job(job) if wait => return self.await_job(&*job, None),
                    Submitted::Job(job) => (Kind::PoolResult, State::PoolResult(job)),
                    Submitted::Iter(it) => {
                        (Kind::PoolIter, State::PoolIter(Arc::new(Mutex::new(it))))
                    }
                };
                Ok(Reply::Id(self.shared.add_object(self.session, kind, st)))
            }
            (Held::Pool(pool), Op::PoolClose) => {
                pool.close();
                Ok(Reply::Unit)
            }
            (Held::Pool(pool), Op::PoolTerminate) => {
                pool.terminate();
                Ok(Reply::Unit)
            }
            (Held::Pool(pool), Op::PoolJoin) => {
                // `join` cannot be given up half-way: it runs on a thread of its own, so
                // that a client that leaves while it waits frees this connection's thread.
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::Builder::new()
                    .name("mproc-manager-join".into())
                    .spawn(move || {
                        pool.join();
                        let _ = tx.send(());
                    })
                    .map_err(|e| (FaultKind::Unsupported, e.to_string()))?;
                self.block(None, |t| match rx.recv_timeout(t) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                    _ => Some(()),
                })?;
                Ok(Reply::Unit)
            }
            (Held::Pool(pool), Op::PoolPids) => Ok(Reply::Ints(
                pool.pids().into_iter().map(i64::from).collect(),
            )),
            (Held::Result(job), Op::PoolGet { timeout }) => {
                self.await_job(&*job, deadline(timeout))
            }
            (Held::Result(job), Op::Wait { timeout, .. }) => Ok(Reply::Bool(
                self.block(deadline(timeout), |t| job.wait(t).then_some(()))?
                    .is_some(),
            )),
            (Held::Result(job), Op::PoolReady) => Ok(Reply::Bool(job.ready())),
            (Held::Result(job), Op::PoolSuccessful) => Ok(Reply::Int(match job.successful() {
                None => -1,
                Some(false) => 0,
                Some(true) => 1,
            })),
            (
                Held::Iter(it),
                Op::PoolNext {
                    timeout,
                    more,
                    last,
                },
            ) => {
                let mut it = lock(&it);
                if more.is_some() || last {
                    it.feed(more.as_deref(), last)
                        .map_err(|e| (FaultKind::BadRequest, e))?;
                }
                match self.block(deadline(timeout), |t| it.next(t))? {
                    None => Err(fault(FaultKind::Timeout)),
                    Some(None) => Ok(Reply::MaybeVal(None)),
                    Some(Some(Ok(v))) => Ok(self.out(v)),
                    Some(Some(Err(task))) => Ok(Reply::Task(Box::new(task))),
                }
            }
            _ => Err((
                FaultKind::WrongKind,
                format!("a {:?} object does not take this request", o.kind),
            )),
        }
    }

    fn keep(&self, seg: Segment) -> Reply {
        let name = seg.name().to_owned();
        lock(&self.shared.segments).push(seg);
        Reply::Names(vec![name])
    }

    fn exists(&self, id: u64) -> Res {
        if lock(&self.shared.table).objs.contains_key(&id) {
            Ok(Reply::Unit)
        } else {
            Err(fault(FaultKind::NoSuchObject))
        }
    }

    fn create(&self, kind: Kind, init: Option<Val>, n: i64) -> Res {
        if let Some(v) = &init {
            self.shared.hold_stored(&v.refs)?;
        }
        let st = match kind {
            Kind::List => State::List(init.into_iter().collect()),
            Kind::Dict => State::Dict(Dict {
                order: BTreeMap::new(),
                index: HashMap::new(),
                next: 0,
            }),
            Kind::Value => State::Value(init.unwrap_or_default()),
            Kind::Namespace => State::Ns(BTreeMap::new()),
            Kind::Queue | Kind::JoinableQueue => State::Queue {
                items: VecDeque::new(),
                max: if n <= 0 { usize::MAX } else { n as usize },
                unfinished: 0,
                joinable: kind == Kind::JoinableQueue,
            },
            Kind::Lock => State::Lock {
                held: false,
                session: 0,
            },
            Kind::RLock => State::RLock {
                owner: 0,
                count: 0,
                session: 0,
            },
            Kind::Semaphore | Kind::BoundedSemaphore => {
                if n < 0 {
                    return Err((FaultKind::BadRequest, "negative semaphore count".into()));
                }
                State::Sem {
                    value: n,
                    max: (kind == Kind::BoundedSemaphore).then_some(n),
                }
            }
            Kind::Event => State::Event(false),
            Kind::Condition => State::Cond {
                owner: 0,
                count: 0,
                session: 0,
                next_ticket: 0,
                waiting: VecDeque::new(),
                woken: HashSet::new(),
            },
            Kind::Barrier => {
                if n < 1 {
                    return Err((FaultKind::BadRequest, "a barrier needs parties >= 1".into()));
                }
                State::Barrier {
                    parties: n as u64,
                    count: 0,
                    generation: 0,
                    broken: false,
                }
            }
            Kind::Custom => return Err((FaultKind::BadRequest, "use CreateCustom".into())),
            Kind::Array => return Err((FaultKind::BadRequest, "use CreateArray".into())),
            Kind::Pool | Kind::PoolResult | Kind::PoolIter => {
                return Err((FaultKind::BadRequest, "use CreatePool".into()));
            }
        };
        Ok(Reply::Id(self.shared.add_object(self.session, kind, st)))
    }

    fn object(&self, o: &Obj, op: Op) -> Res {
        let sh = self.shared;
        // Values going in take their references before the object's lock is taken.
        let incoming: Vec<u64> = match &op {
            Op::Push(v)
            | Op::SetIndex(_, v)
            | Op::Insert(_, v)
            | Op::Set(v)
            | Op::AttrSet(_, v)
            | Op::Put { v, .. } => v.refs.clone(),
            Op::DictInsert(k, v) | Op::DictSetDefault(k, v) => {
                k.refs.iter().chain(&v.refs).copied().collect()
            }
            Op::Extend(vs) | Op::SetSlice { items: vs, .. } => {
                vs.iter().flat_map(|v| v.refs.iter().copied()).collect()
            }
            Op::DictUpdate(ps) => ps
                .iter()
                .flat_map(|(k, v)| k.refs.iter().chain(&v.refs).copied())
                .collect(),
            _ => Vec::new(),
        };
        sh.hold_stored(&incoming)?;
        let mut dropped: Vec<Val> = Vec::new();
        let r = self.apply(o, op, &mut dropped);
        if r.is_err() {
            // The values never went in.
            sh.release(incoming);
        }
        sh.release_vals(dropped);
        r
    }

    fn apply(&self, o: &Obj, op: Op, dropped: &mut Vec<Val>) -> Res {
        let mut st = lock(&o.st);
        match (&mut *st, op) {
            // ------------------------------------------------------------ common
            (State::List(l), Op::Len) => Ok(Reply::Int(l.len() as i64)),
            (State::Dict(d), Op::Len) => Ok(Reply::Int(d.order.len() as i64)),
            (State::Queue { items, .. }, Op::Len) => Ok(Reply::Int(items.len() as i64)),
            (State::List(l), Op::Clear) => {
                dropped.append(l);
                Ok(Reply::Unit)
            }
            (State::Dict(d), Op::Clear) => {
                d.index.clear();
                for (_, (k, v)) in std::mem::take(&mut d.order) {
                    dropped.push(k);
                    dropped.push(v);
                }
                Ok(Reply::Unit)
            }
            (State::List(l), Op::Snapshot) => {
                let vs = l.clone();
                drop(st);
                Ok(self.out_vals(vs))
            }
            (State::Dict(d), Op::Snapshot) => {
                let ps: Vec<(Val, Val)> = d.order.values().cloned().collect();
                drop(st);
                for (k, v) in &ps {
                    self.shared.hold_for(self.session, &k.refs);
                    self.shared.hold_for(self.session, &v.refs);
                }
                Ok(Reply::Pairs(ps))
            }
            (State::Ns(n), Op::Snapshot) => Ok(Reply::Names(n.keys().cloned().collect())),
            // ------------------------------------------------------------ list
            (State::List(l), Op::Push(v)) => {
                l.push(v);
                Ok(Reply::Unit)
            }
            (State::List(l), Op::Extend(vs)) => {
                l.extend(vs);
                Ok(Reply::Unit)
            }
            (State::List(l), Op::Index(i)) => {
                let v = l[index(l.len(), i)?].clone();
                drop(st);
                Ok(self.out(v))
            }
            (State::List(l), Op::SetIndex(i, v)) => {
                let j = index(l.len(), i)?;
                dropped.push(std::mem::replace(&mut l[j], v));
                Ok(Reply::Unit)
            }
            (State::List(l), Op::Insert(i, v)) => {
                let n = l.len() as i64;
                let j = if i < 0 { (n + i).max(0) } else { i.min(n) };
                l.insert(j as usize, v);
                Ok(Reply::Unit)
            }
            (State::List(l), Op::Pop(i)) => {
                let j = index(l.len(), i.unwrap_or(-1))?;
                let v = l.remove(j);
                drop(st);
                let r = self.out(v.clone());
                dropped.push(v);
                Ok(r)
            }
            (State::List(l), Op::RemoveEq(v)) => {
                let j = l
                    .iter()
                    .position(|x| x.bytes == v.bytes)
                    .ok_or_else(|| fault(FaultKind::NotFound))?;
                dropped.push(l.remove(j));
                Ok(Reply::Unit)
            }
            (State::List(l), Op::Contains(v)) => Ok(Reply::Int(
                l.iter()
                    .position(|x| x.bytes == v.bytes)
                    .map_or(-1, |p| p as i64),
            )),
            (State::List(l), Op::Sort { tramp, sig }) => {
                self.custom_ok()?;
                crate::sys::run_sort(self.build, tramp, &sig, l)?;
                Ok(Reply::Unit)
            }
            // ------------------------------------------------------------ array
            (State::Array(a), Op::Len) => Ok(Reply::Int(a.len() as i64)),
            (State::Array(a), Op::Snapshot) => {
                let vs = a.clone();
                drop(st);
                Ok(self.out_vals(vs))
            }
            (State::Array(a), Op::Index(i)) => {
                let v = a[index(a.len(), i)?].clone();
                drop(st);
                Ok(self.out(v))
            }
            (State::Array(a), Op::SetIndex(i, v)) => {
                let j = index(a.len(), i)?;
                dropped.push(std::mem::replace(&mut a[j], v));
                Ok(Reply::Unit)
            }
            (State::Array(a), Op::Slice { start, stop }) => {
                let r = slice(a.len(), start, stop);
                let vs = a[r].to_vec();
                drop(st);
                Ok(self.out_vals(vs))
            }
            (State::Array(a), Op::SetSlice { start, stop, items }) => {
                let r = slice(a.len(), start, stop);
                if r.len() != items.len() {
                    return Err((
                        FaultKind::SizeMismatch,
                        format!(
                            "a slice of {} items cannot take {} items",
                            r.len(),
                            items.len()
                        ),
                    ));
                }
                for (slot, v) in a[r].iter_mut().zip(items) {
                    dropped.push(std::mem::replace(slot, v));
                }
                Ok(Reply::Unit)
            }
            // ------------------------------------------------------------ dict
            (State::Dict(d), Op::DictGet(k)) => {
                let v = d.get(&k.bytes).cloned();
                drop(st);
                Ok(Reply::MaybeVal(v.inspect(|v| {
                    self.shared.hold_for(self.session, &v.refs);
                })))
            }
            (State::Dict(d), Op::DictInsert(k, v)) => {
                let kb = k.clone();
                let old = d.insert(k, v);
                if old.is_some() {
                    // The key stored first stays; the new copy goes.
                    dropped.push(kb);
                }
                drop(st);
                Ok(Reply::MaybeVal(old.inspect(|v| {
                    self.shared.hold_for(self.session, &v.refs);
                    dropped.push(v.clone());
                })))
            }
            (State::Dict(d), Op::DictRemove(k)) => {
                let old = d.remove(&k.bytes);
                drop(st);
                Ok(Reply::MaybeVal(old.map(|(k, v)| {
                    self.shared.hold_for(self.session, &v.refs);
                    dropped.push(k);
                    dropped.push(v.clone());
                    v
                })))
            }
            (State::Dict(d), Op::Contains(k)) => {
                Ok(Reply::Int(if d.index.contains_key(&k.bytes) {
                    0
                } else {
                    -1
                }))
            }
            (State::Dict(d), Op::DictSetDefault(k, v)) => {
                let cur = match d.get(&k.bytes) {
                    Some(cur) => {
                        dropped.push(k);
                        dropped.push(v);
                        cur.clone()
                    }
                    None => {
                        d.insert(k, v.clone());
                        v
                    }
                };
                drop(st);
                Ok(self.out(cur))
            }
            (State::Dict(d), Op::DictUpdate(ps)) => {
                for (k, v) in ps {
                    let kb = k.clone();
                    if let Some(old) = d.insert(k, v) {
                        dropped.push(kb);
                        dropped.push(old);
                    }
                }
                Ok(Reply::Unit)
            }
            // ------------------------------------------------------------ value, namespace
            (State::Value(cur), Op::Get) => {
                let v = cur.clone();
                drop(st);
                Ok(self.out(v))
            }
            (State::Value(cur), Op::Set(v)) => {
                dropped.push(std::mem::replace(cur, v));
                Ok(Reply::Unit)
            }
            (State::Ns(n), Op::AttrGet(name)) => {
                let v = n.get(&name).cloned().ok_or((FaultKind::KeyMissing, name))?;
                drop(st);
                Ok(self.out(v))
            }
            (State::Ns(n), Op::AttrSet(name, v)) => {
                dropped.extend(n.insert(name, v));
                Ok(Reply::Unit)
            }
            (State::Ns(n), Op::AttrDel(name)) => {
                let v = n.remove(&name).ok_or((FaultKind::KeyMissing, name))?;
                dropped.push(v);
                Ok(Reply::Unit)
            }
            // ------------------------------------------------------------ queue
            (State::Queue { .. }, Op::Put { v, block, timeout }) => {
                let until = if block {
                    deadline(timeout)
                } else {
                    Some(Instant::now())
                };
                let (mut st, end) = self.wait(o, st, until, |s| match s {
                    State::Queue { items, max, .. } => items.len() < *max,
                    _ => true,
                })?;
                match (&mut *st, end) {
                    (
                        State::Queue {
                            items, unfinished, ..
                        },
                        WaitEnd::Ready,
                    ) => {
                        items.push_back(v);
                        *unfinished += 1;
                        drop(st);
                        o.cv.notify_all();
                        Ok(Reply::Unit)
                    }
                    _ => Err(fault(FaultKind::Full)),
                }
            }
            (State::Queue { .. }, Op::Take { block, timeout }) => {
                let until = if block {
                    deadline(timeout)
                } else {
                    Some(Instant::now())
                };
                let (mut st, end) = self.wait(o, st, until, |s| match s {
                    State::Queue { items, .. } => !items.is_empty(),
                    _ => true,
                })?;
                match (&mut *st, end) {
                    (State::Queue { items, .. }, WaitEnd::Ready) => {
                        let v = items.pop_front().expect("not empty");
                        drop(st);
                        o.cv.notify_all();
                        let r = self.out(v.clone());
                        dropped.push(v);
                        Ok(r)
                    }
                    _ => Err(fault(FaultKind::Empty)),
                }
            }
            (
                State::Queue {
                    unfinished,
                    joinable: true,
                    ..
                },
                Op::TaskDone,
            ) => {
                if *unfinished == 0 {
                    return Err((
                        FaultKind::NotFound,
                        "task_done() called too many times".into(),
                    ));
                }
                *unfinished -= 1;
                drop(st);
                o.cv.notify_all();
                Ok(Reply::Unit)
            }
            (State::Queue { joinable: true, .. }, Op::Wait { timeout, .. }) => {
                let (_st, end) = self.wait(o, st, deadline(timeout), |s| {
                    matches!(s, State::Queue { unfinished: 0, .. })
                })?;
                Ok(Reply::Bool(matches!(end, WaitEnd::Ready)))
            }
            // ------------------------------------------------------------ locks
            (
                State::Lock { .. } | State::RLock { .. } | State::Sem { .. } | State::Cond { .. },
                Op::Acquire {
                    block,
                    timeout,
                    owner,
                },
            ) => {
                let until = if block {
                    deadline(timeout)
                } else {
                    Some(Instant::now())
                };
                let me = self.session;
                let (st, end) = self.wait(o, st, until, |s| try_acquire(s, owner, me))?;
                drop(st);
                Ok(Reply::Bool(matches!(end, WaitEnd::Ready)))
            }
            (State::Lock { held, .. }, Op::Release { .. }) => {
                if !*held {
                    return Err(fault(FaultKind::NotOwner));
                }
                *held = false;
                drop(st);
                o.cv.notify_all();
                Ok(Reply::Unit)
            }
            (
                State::RLock {
                    owner: w, count, ..
                },
                Op::Release { owner },
            )
            | (
                State::Cond {
                    owner: w, count, ..
                },
                Op::Release { owner },
            ) => {
                if *count == 0 || *w != owner {
                    return Err(fault(FaultKind::NotOwner));
                }
                *count -= 1;
                let free = *count == 0;
                drop(st);
                if free {
                    o.cv.notify_all();
                }
                Ok(Reply::Unit)
            }
            (State::Sem { value, max }, Op::Release { .. }) => {
                if max.is_some_and(|m| *value >= m) {
                    return Err((
                        FaultKind::NotOwner,
                        "bounded semaphore released too many times".into(),
                    ));
                }
                *value += 1;
                drop(st);
                o.cv.notify_all();
                Ok(Reply::Unit)
            }
            (State::Sem { value, .. }, Op::Get) => Ok(Reply::Int(*value)),
            // ------------------------------------------------------------ event
            (State::Event(f), Op::EventSet) => {
                *f = true;
                drop(st);
                o.cv.notify_all();
                Ok(Reply::Unit)
            }
            (State::Event(f), Op::EventClear) => {
                *f = false;
                Ok(Reply::Unit)
            }
            (State::Event(f), Op::EventIsSet) => Ok(Reply::Bool(*f)),
            (State::Event(_), Op::Wait { timeout, .. }) => {
                let (st, _) = self.wait(o, st, deadline(timeout), |s| {
                    matches!(s, State::Event(true))
                })?;
                Ok(Reply::Bool(matches!(*st, State::Event(true))))
            }
            // ------------------------------------------------------------ condition
            (State::Cond { .. }, Op::Wait { timeout, owner }) => {
                self.cond_wait(o, st, timeout, owner)
            }
            (
                State::Cond {
                    owner: w,
                    count,
                    waiting,
                    woken,
                    ..
                },
                Op::Notify { n, owner },
            ) => {
                if *count == 0 || *w != owner {
                    return Err(fault(FaultKind::NotOwner));
                }
                for _ in 0..n {
                    match waiting.pop_front() {
                        Some(t) => {
                            woken.insert(t);
                        }
                        None => break,
                    }
                }
                drop(st);
                o.cv.notify_all();
                Ok(Reply::Unit)
            }
            // ------------------------------------------------------------ barrier
            (State::Barrier { .. }, Op::Wait { timeout, .. }) => self.barrier_wait(o, st, timeout),
            (State::Barrier { broken, .. }, Op::BarrierAbort) => {
                *broken = true;
                drop(st);
                o.cv.notify_all();
                Ok(Reply::Unit)
            }
            (
                State::Barrier {
                    count,
                    generation,
                    broken,
                    ..
                },
                Op::BarrierReset,
            ) => {
                if *count > 0 {
                    // Current waiters see a new generation and a broken flag: they fail.
                    *broken = true;
                    drop(st);
                    o.cv.notify_all();
                    std::thread::sleep(Duration::from_millis(1));
                    st = lock(&o.st);
                    if let State::Barrier {
                        count,
                        generation,
                        broken,
                        ..
                    } = &mut *st
                    {
                        *generation += 1;
                        *count = 0;
                        *broken = false;
                    }
                } else {
                    *generation += 1;
                    *broken = false;
                }
                Ok(Reply::Unit)
            }
            (
                State::Barrier {
                    parties,
                    count,
                    broken,
                    ..
                },
                Op::BarrierInfo,
            ) => Ok(Reply::Ints(vec![
                *parties as i64,
                *count as i64,
                *broken as i64,
            ])),
            // ------------------------------------------------------------ custom
            (
                State::Custom(obj),
                Op::Call {
                    tramp,
                    func,
                    sig,
                    args,
                },
            ) => {
                self.custom_ok()?;
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crate::sys::run_method(self.build, tramp, func, &sig, &mut **obj, &args)
                }));
                drop(st);
                match r {
                    Ok(Ok(v)) => Ok(self.out(v)),
                    Ok(Err(refusal)) => Err(refusal),
                    Err(p) => Err((FaultKind::Panicked, panic_text(&*p))),
                }
            }
            _ => Err((
                FaultKind::WrongKind,
                format!("a {:?} object does not take this request", o.kind),
            )),
        }
    }

    fn cond_wait<'g>(
        &self,
        o: &'g Obj,
        mut st: MutexGuard<'g, State>,
        timeout: Micros,
        me: u64,
    ) -> Res {
        let State::Cond {
            owner,
            count,
            next_ticket,
            waiting,
            ..
        } = &mut *st
        else {
            unreachable!("checked by the caller")
        };
        if *count == 0 || *owner != me {
            return Err(fault(FaultKind::NotOwner));
        }
        let saved = *count;
        *count = 0;
        let ticket = *next_ticket;
        *next_ticket += 1;
        waiting.push_back(ticket);
        o.cv.notify_all();
        let r = self.wait(o, st, deadline(timeout), |s| match s {
            State::Cond { woken, .. } => woken.contains(&ticket),
            _ => true,
        });
        let (mut st, end) = match r {
            Ok(x) => x,
            Err(e) => {
                let mut st = lock(&o.st);
                if let State::Cond { waiting, woken, .. } = &mut *st {
                    waiting.retain(|&t| t != ticket);
                    woken.remove(&ticket);
                }
                return Err(e);
            }
        };
        if let State::Cond { waiting, woken, .. } = &mut *st {
            waiting.retain(|&t| t != ticket);
            woken.remove(&ticket);
        }
        // Reacquire the lock, however long that takes (as Python does).
        let sess = self.session;
        let r = self.wait(o, st, None, |s| {
            if let State::Cond {
                owner,
                count,
                session,
                ..
            } = s
                && *count == 0
            {
                *owner = me;
                *count = saved;
                *session = sess;
                return true;
            }
            false
        });
        drop(r?);
        Ok(Reply::Bool(matches!(end, WaitEnd::Ready)))
    }

    fn barrier_wait<'g>(&self, o: &'g Obj, mut st: MutexGuard<'g, State>, timeout: Micros) -> Res {
        let State::Barrier {
            parties,
            count,
            generation,
            broken,
        } = &mut *st
        else {
            unreachable!("checked by the caller")
        };
        if *broken {
            return Err(fault(FaultKind::BrokenBarrier));
        }
        let index = *count;
        *count += 1;
        if *count == *parties {
            *count = 0;
            *generation += 1;
            drop(st);
            o.cv.notify_all();
            return Ok(Reply::Int(index as i64));
        }
        let gen0 = *generation;
        let r = self.wait(o, st, deadline(timeout), |s| match s {
            State::Barrier {
                generation, broken, ..
            } => *generation != gen0 || *broken,
            _ => true,
        });
        let (mut st, end) = match r {
            Ok(x) => x,
            Err(e) => {
                if let State::Barrier { broken, .. } = &mut *lock(&o.st) {
                    *broken = true;
                }
                o.cv.notify_all();
                return Err(e);
            }
        };
        let State::Barrier {
            generation, broken, ..
        } = &mut *st
        else {
            unreachable!()
        };
        if *generation != gen0 {
            return Ok(Reply::Int(index as i64));
        }
        if matches!(end, WaitEnd::TimedOut) {
            *broken = true;
            drop(st);
            o.cv.notify_all();
        }
        Err(fault(FaultKind::BrokenBarrier))
    }
}

fn try_acquire(s: &mut State, who: u64, me: u64) -> bool {
    match s {
        State::Lock { held, session } => {
            if *held {
                return false;
            }
            *held = true;
            *session = me;
            true
        }
        State::RLock {
            owner,
            count,
            session,
        }
        | State::Cond {
            owner,
            count,
            session,
            ..
        } => {
            if *count > 0 && *owner != who {
                return false;
            }
            *owner = who;
            *count += 1;
            *session = me;
            true
        }
        State::Sem { value, .. } => {
            if *value <= 0 {
                return false;
            }
            *value -= 1;
            true
        }
        _ => true,
    }
}

/// Decodes `data` as a request and runs it against a scratch server state, as a
/// connection of another build would (so no request can make the server run code by
/// offset); blocking requests end at once, their client being gone. For the fuzz target.
#[doc(hidden)]
pub fn fuzz_request(data: &[u8]) {
    use std::sync::OnceLock;
    static SHARED: OnceLock<Shared> = OnceLock::new();
    let shared = SHARED.get_or_init(|| Shared {
        table: Mutex::new(Table::default()),
        segments: Mutex::new(Vec::new()),
        pools: Mutex::new(Some(Vec::new())),
        next_id: AtomicU64::new(1),
        stop: AtomicBool::new(false),
        address: Address::abstract_name("mproc-manager-fuzz-unbound"),
    });
    let Ok((conn, peer)) = mproc_channel::Pipe(true) else {
        return;
    };
    drop(peer);
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(data.len());
    aligned.extend_from_slice(data);
    let Ok(req) = mproc_core::codec::decode::<Request>(&aligned, Vec::new()) else {
        return;
    };
    if matches!(
        req.op,
        Op::Shutdown
            | Op::Hello { .. }
            | Op::ShmCreate { .. }
            | Op::ShmList { .. }
            | Op::CreatePool(_)
    ) {
        return;
    }
    let ctx = Ctx {
        shared,
        conn: &conn,
        session: 1,
        same_build: false,
        build: 0,
    };
    let _ = ctx.handle(req);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ManagerError;
    use crate::wire::Sig;
    use mproc_core::codec;

    fn serve() -> (Address, std::thread::JoinHandle<std::io::Result<()>>) {
        let name = format!("mproc-manager-test-{}", crate::client::random_u64());
        let s = Server::bind(Address::abstract_name(name), b"key").unwrap();
        let a = s.address().clone();
        (a, std::thread::spawn(move || s.serve_forever()))
    }

    fn hello(c: &Connection, layout: u64) {
        let h = Request {
            obj: 0,
            op: Op::Hello {
                session: crate::client::random_u64(),
                layout,
                exe: mproc_core::code::exe_identity(),
            },
        };
        c.send(&h).unwrap();
        assert!(matches!(c.recv::<Reply>().unwrap(), Reply::Unit));
    }

    /// A pool of one worker process in the server; its object id.
    fn create_pool(c: &Connection) -> u64 {
        let spec = crate::wire::PoolSpec {
            processes: Some(1),
            ..Default::default()
        };
        match ask(c, 0, Op::CreatePool(Box::new(spec))) {
            Reply::Id(id) => id,
            other => panic!("{other:?}"),
        }
    }

    fn create_list(c: &Connection) -> u64 {
        let r = Request {
            obj: 0,
            op: Op::Create {
                kind: Kind::List,
                init: None,
                n: 0,
            },
        };
        c.send(&r).unwrap();
        match c.recv::<Reply>().unwrap() {
            Reply::Id(id) => id,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_requests_are_refused_and_the_server_goes_on() {
        let (a, t) = serve();
        let c = Client(&a, Some(b"key")).unwrap();
        hello(&c, mproc_core::code::layout());
        let mut seed = 0x1234_5678_9abc_def0u64;
        for i in 0..500usize {
            let mut junk = vec![0u8; i % 97];
            for b in &mut junk {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            c.send_bytes(&junk).unwrap();
            match c.recv::<Reply>().unwrap() {
                Reply::Fault(FaultKind::BadRequest, _) => {}
                // Bytes that happen to decode as a request get an answer of their own.
                Reply::Fault(..) | Reply::Unit | Reply::Int(_) | Reply::Id(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        // A request for an object that does not exist, and one of the wrong kind.
        c.send(&Request {
            obj: 77,
            op: Op::Len,
        })
        .unwrap();
        assert!(matches!(
            c.recv::<Reply>().unwrap(),
            Reply::Fault(FaultKind::NoSuchObject, _)
        ));
        let id = create_list(&c);
        c.send(&Request {
            obj: id,
            op: Op::EventSet,
        })
        .unwrap();
        assert!(matches!(
            c.recv::<Reply>().unwrap(),
            Reply::Fault(FaultKind::WrongKind, _)
        ));
        c.send(&Request {
            obj: id,
            op: Op::Len,
        })
        .unwrap();
        assert!(matches!(c.recv::<Reply>().unwrap(), Reply::Int(0)));
        c.send(&Request {
            obj: 0,
            op: Op::Shutdown,
        })
        .unwrap();
        assert!(matches!(c.recv::<Reply>().unwrap(), Reply::Unit));
        t.join().unwrap().unwrap();
    }

    fn attach_bell(c: &Connection) -> Bell {
        c.send(&Request {
            obj: 0,
            op: Op::Attach,
        })
        .unwrap();
        assert!(matches!(c.recv::<Reply>().unwrap(), Reply::Unit));
        Bell::attach(c.recv::<mproc_core::Region>().unwrap()).unwrap()
    }

    fn bell_len(b: &mut Bell, c: &Connection, id: u64) -> i64 {
        match b
            .call(
                c,
                &Request {
                    obj: id,
                    op: Op::Len,
                },
            )
            .unwrap()
        {
            Reply::Int(n) => n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_doorbell_bytes_are_refused_and_the_server_goes_on() {
        use crate::bell::{CAP, REP_BUF, REQ_BUF};
        let (a, t) = serve();
        let c = Client(&a, Some(b"key")).unwrap();
        hello(&c, mproc_core::code::layout());
        let mut b = attach_bell(&c);
        let create = Request {
            obj: 0,
            op: Op::Create {
                kind: Kind::List,
                init: None,
                n: 0,
            },
        };
        let id = match b.call(&c, &create).unwrap() {
            Reply::Id(id) => id,
            other => panic!("{other:?}"),
        };
        // Junk of every short length in the request buffer: refused, one by one.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..400usize {
            let junk: Vec<u8> = (0..i % 211).map(|_| next() as u8).collect();
            let mut al = rkyv::util::AlignedVec::<16>::new();
            al.extend_from_slice(&junk);
            let decoded = codec::decode::<Request>(&al, Vec::new());
            if matches!(
                &decoded,
                Ok(Request {
                    op: Op::Shutdown,
                    ..
                })
            ) {
                continue;
            }
            // Junk that happens to decode is served as the request it spells; the rest
            // is refused.
            match b.ring(&c, Some(&junk), junk.len() as u32, None).unwrap() {
                Reply::Fault(FaultKind::BadRequest, _) => assert!(decoded.is_err()),
                _ => assert!(decoded.is_ok(), "junk of {} bytes served", junk.len()),
            }
        }
        // Lengths beyond the buffer.
        for len in [CAP as u32 + 1, u32::MAX - 1, 1 << 31] {
            assert!(matches!(
                b.ring(&c, None, len, None).unwrap(),
                Reply::Fault(FaultKind::BadRequest, _)
            ));
        }
        // A second doorbell on the same connection is refused.
        assert!(matches!(
            b.call(
                &c,
                &Request {
                    obj: 0,
                    op: Op::Attach
                }
            )
            .unwrap(),
            Reply::Fault(FaultKind::BadRequest, _)
        ));
        // A peer scribbling on both buffers while calls run: every call ends (an answer,
        // a refusal or a reply that does not validate), none crashes either side.
        let region = b.region().try_clone().unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut x = 0x1234_5678u64;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let at = if x & 1 == 0 { REQ_BUF } else { REP_BUF };
                    let _ = region.write_bytes(at + (x >> 50) as usize % 64, &x.to_le_bytes());
                }
            });
            let push = Request {
                obj: id,
                op: Op::Push(Val {
                    bytes: vec![1, 2, 3, 4],
                    refs: vec![],
                    ty: 7,
                }),
            };
            let results: Vec<_> = (0..2000).map(|_| b.call(&c, &push)).collect();
            stop.store(true, Ordering::Relaxed);
            for r in results {
                match r {
                    Ok(_) | Err(ManagerError::Protocol(_)) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
        });
        // (The scribbles may have turned a push into any request on that list, a
        // decref included: go on with a new one.)
        let id = match b.call(&c, &create).unwrap() {
            Reply::Id(id) => id,
            other => panic!("{other:?}"),
        };
        let n = bell_len(&mut b, &c, id);
        assert_eq!(n, 0);
        // Messages too big for the buffers take the socket, announced by the doorbell.
        let big = Val {
            bytes: (0..200_000u32).map(|i| i as u8).collect(),
            refs: vec![],
            ty: 9,
        };
        let push_big = Request {
            obj: id,
            op: Op::Push(big.clone()),
        };
        assert!(matches!(b.call(&c, &push_big).unwrap(), Reply::Unit));
        match b
            .call(
                &c,
                &Request {
                    obj: id,
                    op: Op::Index(-1),
                },
            )
            .unwrap()
        {
            Reply::Val(v) => assert_eq!(v, big),
            other => panic!("{other:?}"),
        }
        // A request sent on the socket alone is still answered there.
        c.send(&Request {
            obj: id,
            op: Op::Len,
        })
        .unwrap();
        assert_eq!(
            match c.recv::<Reply>().unwrap() {
                Reply::Int(n) => n,
                other => panic!("{other:?}"),
            },
            n + 1
        );
        assert_eq!(bell_len(&mut b, &c, id), n + 1);
        let _ = b.call(
            &c,
            &Request {
                obj: 0,
                op: Op::Shutdown,
            },
        );
        t.join().unwrap().unwrap();
    }

    #[test]
    fn an_unauthenticated_request_is_never_read() {
        let (a, t) = serve();
        for key in [None, Some(&b"wrong"[..])] {
            // Without the key, or with a wrong one, a well-formed request is never run.
            if let Ok(c) = Client(&a, key) {
                let _ = c.send(&Request {
                    obj: 0,
                    op: Op::Create {
                        kind: Kind::List,
                        init: None,
                        n: 0,
                    },
                });
                assert!(c.recv::<Reply>().is_err());
            }
        }
        let c = Client(&a, Some(b"key")).unwrap();
        hello(&c, mproc_core::code::layout());
        c.send(&Request {
            obj: 0,
            op: Op::Len,
        })
        .unwrap();
        assert!(matches!(c.recv::<Reply>().unwrap(), Reply::Int(0)));
        c.send(&Request {
            obj: 0,
            op: Op::Shutdown,
        })
        .unwrap();
        let _ = c.recv::<Reply>();
        t.join().unwrap().unwrap();
    }

    #[test]
    fn another_build_cannot_run_code_in_the_server() {
        let (a, t) = serve();
        let c = Client(&a, Some(b"key")).unwrap();
        hello(&c, mproc_core::code::layout() ^ 1);
        let id = create_list(&c);
        let (tramp, func, sig) = crate::sys::ctor_refs(|n: i64| n);
        let req = Request {
            obj: 0,
            op: Op::CreateCustom {
                tramp,
                func,
                sig,
                args: crate::client::enc(&1i64).unwrap(),
            },
        };
        c.send(&req).unwrap();
        assert!(matches!(
            c.recv::<Reply>().unwrap(),
            Reply::Fault(FaultKind::Unsupported, _)
        ));
        let (tramp, sig) = crate::sys::sort_tramp::<u8>();
        let sort = Request {
            obj: id,
            op: Op::Sort { tramp, sig },
        };
        c.send(&sort).unwrap();
        assert!(matches!(
            c.recv::<Reply>().unwrap(),
            Reply::Fault(FaultKind::Unsupported, _)
        ));
        c.send(&Request {
            obj: 0,
            op: Op::Shutdown,
        })
        .unwrap();
        let _ = c.recv::<Reply>();
        t.join().unwrap().unwrap();
    }

    static CTOR_CALLS: AtomicU64 = AtomicU64::new(0);
    static METHOD_CALLS: AtomicU64 = AtomicU64::new(0);

    struct Counter(i64);

    fn make_counter(n: i64) -> Counter {
        CTOR_CALLS.fetch_add(1, Ordering::SeqCst);
        Counter(n)
    }

    fn incr(c: &mut Counter, by: i64) -> i64 {
        METHOD_CALLS.fetch_add(1, Ordering::SeqCst);
        c.0 += by;
        c.0
    }

    fn plain<T: mproc_core::Decode>(v: &Val) -> T {
        let mut al = rkyv::util::AlignedVec::<16>::with_capacity(v.bytes.len());
        al.extend_from_slice(&v.bytes);
        codec::decode::<T>(&al, Vec::new()).unwrap()
    }

    fn ask(c: &Connection, obj: u64, op: Op) -> Reply {
        c.send(&Request { obj, op }).unwrap();
        c.recv::<Reply>().unwrap()
    }

    /// The fault text names the type the server expects and the one the client sent.
    fn assert_names_both(reply: Reply, expected: &str, found: &str) {
        match reply {
            Reply::Fault(FaultKind::Signature, m) => {
                assert!(m.contains(expected) && m.contains(found), "{m}");
                assert!(!m.contains("0x"), "{m}");
                assert!(matches!(
                    ManagerError::from_fault(FaultKind::Signature, m),
                    ManagerError::Signature(_)
                ));
            }
            other => panic!("expected a signature fault, got {other:?}"),
        }
    }

    #[test]
    fn a_mismatched_signature_is_refused_and_nothing_runs() {
        let (a, t) = serve();
        let c = Client(&a, Some(b"key")).unwrap();
        hello(&c, mproc_core::code::layout());
        let args = crate::client::enc(&10i64).unwrap();

        // A constructor sent with the fingerprint of another type: refused, not run.
        let (tramp, func, good) = crate::sys::ctor_refs(make_counter);
        let forged: Sig = crate::sys::sig_ctor::<String, Counter>().into();
        let ctor = |sig: Sig| Op::CreateCustom {
            tramp,
            func,
            sig,
            args: args.clone(),
        };
        assert_names_both(ask(&c, 0, ctor(forged)), "fn(i64)", "String");
        assert_eq!(CTOR_CALLS.load(Ordering::SeqCst), 0, "nothing ran");
        let id = match ask(&c, 0, ctor(good)) {
            Reply::Id(id) => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(CTOR_CALLS.load(Ordering::SeqCst), 1);

        // A method sent with the fingerprint of another signature (another argument
        // type, or another object type): refused, the object untouched.
        let (tramp, func, good) = crate::sys::method_refs(incr);
        let call = |sig: Sig| Op::Call {
            tramp,
            func,
            sig,
            args: crate::client::enc(&5i64).unwrap(),
        };
        let wrong_arg: Sig = crate::sys::sig_method::<Counter, u8, i64>().into();
        assert_names_both(ask(&c, id, call(wrong_arg)), "i64", "u8");
        let wrong_obj: Sig = crate::sys::sig_method::<u32, i64, i64>().into();
        assert_names_both(ask(&c, id, call(wrong_obj)), "Counter", "u32");
        assert_eq!(METHOD_CALLS.load(Ordering::SeqCst), 0, "nothing ran");
        match ask(&c, id, call(good)) {
            Reply::Val(v) => assert_eq!(plain::<i64>(&v), 15),
            other => panic!("{other:?}"),
        }
        assert_eq!(METHOD_CALLS.load(Ordering::SeqCst), 1);

        // A sort sent with the fingerprint of another item type: refused, list unchanged.
        let list = create_list(&c);
        for x in [3u8, 1, 2] {
            let v = crate::client::enc(&x).unwrap();
            assert!(matches!(ask(&c, list, Op::Push(v)), Reply::Unit));
        }
        let (tramp, good) = crate::sys::sort_tramp::<u8>();
        let forged: Sig = crate::sys::sig_sort::<String>().into();
        assert_names_both(
            ask(&c, list, Op::Sort { tramp, sig: forged }),
            "u8",
            "String",
        );
        let items = |c: &Connection| match ask(c, list, Op::Snapshot) {
            Reply::Vals(vs) => vs.iter().map(plain::<u8>).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(items(&c), [3, 1, 2]);
        assert!(matches!(
            ask(&c, list, Op::Sort { tramp, sig: good }),
            Reply::Unit
        ));
        assert_eq!(items(&c), [1, 2, 3]);

        // An offset outside the code is refused too, without an address in the text.
        match ask(
            &c,
            id,
            Op::Call {
                tramp: u64::MAX / 2,
                func,
                sig: crate::sys::sig_method::<Counter, i64, i64>().into(),
                args: crate::client::enc(&5i64).unwrap(),
            },
        ) {
            Reply::Fault(FaultKind::BadRequest, m) => assert!(!m.contains("0x"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(METHOD_CALLS.load(Ordering::SeqCst), 1);

        assert!(matches!(ask(&c, 0, Op::Shutdown), Reply::Unit));
        t.join().unwrap().unwrap();
    }

    fn pool_square(x: u64) -> u64 {
        x * x
    }

    fn pool_mul(a: u64, b: u64) -> u64 {
        a * b
    }

    #[test]
    fn an_imap_refuses_a_wrong_batch_and_fails_rather_than_waits_for_missing_input() {
        use crate::wire::PoolWhat;
        let (a, t) = serve();
        let c = Client(&a, Some(b"key")).unwrap();
        hello(&c, mproc_core::code::layout());
        let pool = create_pool(&c);
        let (tramp, func, sig) = crate::sys::task_refs(pool_square);
        let it = match ask(
            &c,
            pool,
            Op::PoolRun(Box::new(crate::wire::PoolRun {
                tramp,
                func,
                sig,
                what: PoolWhat::Imap,
                args: crate::client::enc(&vec![2u64, 3]).unwrap(),
                chunksize: 1,
                wait: false,
                last: false,
            })),
        ) {
            Reply::Id(id) => id,
            other => panic!("{other:?}"),
        };
        let next = |more: Option<Val>, last: bool| Op::PoolNext {
            timeout: None,
            more: more.map(Box::new),
            last,
        };
        // A batch of another item type is refused; the iterator goes on.
        let wrong = crate::client::enc(&vec![String::from("x")]).unwrap();
        assert!(matches!(
            ask(&c, it, next(Some(wrong), false)),
            Reply::Fault(FaultKind::BadRequest, _)
        ));
        let val = |r: Reply| match r {
            Reply::Val(v) => crate::sys::decode::<u64>(&v).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(val(ask(&c, it, next(None, false))), 4);
        assert_eq!(val(ask(&c, it, next(None, false))), 9);
        // The client sent no more and did not say the input ended: a failure, not a
        // wait for input that cannot come.
        assert!(matches!(
            ask(&c, it, next(None, false)),
            Reply::Task(w) if matches!(w.clone().into_error(), ManagerError::Task(mproc_pool::TaskError::Broken { .. }))
        ));
        let more = crate::client::enc(&vec![5u64]).unwrap();
        assert_eq!(val(ask(&c, it, next(Some(more), true))), 25);
        assert!(matches!(
            ask(&c, it, next(None, false)),
            Reply::MaybeVal(None)
        ));
        assert!(matches!(ask(&c, 0, Op::Shutdown), Reply::Unit));
        t.join().unwrap().unwrap();
    }

    #[test]
    fn pool_tasks_are_refused_for_another_build_or_a_forged_signature() {
        use crate::wire::PoolWhat;
        let (a, t) = serve();
        let c = Client(&a, Some(b"key")).unwrap();
        hello(&c, mproc_core::code::layout());
        let pool = create_pool(&c);
        let (tramp, func, good) = crate::sys::task_refs(pool_square);
        let run = |sig: Sig, what: PoolWhat| {
            Op::PoolRun(Box::new(crate::wire::PoolRun {
                tramp,
                func,
                sig,
                what,
                args: crate::client::enc(&4u64).unwrap(),
                chunksize: 0,
                wait: true,
                last: false,
            }))
        };
        match ask(&c, pool, run(good.clone(), PoolWhat::Apply)) {
            Reply::Val(v) => assert_eq!(plain::<u64>(&v), 16),
            other => panic!("{other:?}"),
        }
        // The fingerprint of another function type, with this function and trampoline.
        let forged = crate::sys::task_refs(|s: String| s.len() as u64).2;
        assert_names_both(
            ask(&c, pool, run(forged, PoolWhat::Apply)),
            "fn(u64) -> u64",
            "fn(alloc::string::String) -> u64",
        );
        // A plain task's trampoline does not run starmaps; a starmap's checks its own
        // fingerprint.
        assert!(matches!(
            ask(&c, pool, run(good.clone(), PoolWhat::Starmap)),
            Reply::Fault(FaultKind::BadRequest, _)
        ));
        let (st, sf, ssig) = crate::sys::star_refs(pool_mul);
        let star = |sig: Sig| {
            Op::PoolRun(Box::new(crate::wire::PoolRun {
                tramp: st,
                func: sf,
                sig,
                what: PoolWhat::Starmap,
                args: crate::client::enc(&vec![(2u64, 3u64)]).unwrap(),
                chunksize: 0,
                wait: true,
                last: false,
            }))
        };
        match ask(&c, pool, star(ssig)) {
            Reply::Val(v) => assert_eq!(plain::<Vec<u64>>(&v), [6]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ask(&c, pool, star(good.clone())),
            Reply::Fault(FaultKind::Signature, _)
        ));
        // Another build may hold the pool but not run code on it.
        let other = Client(&a, Some(b"key")).unwrap();
        hello(&other, mproc_core::code::layout() ^ 1);
        assert!(matches!(
            ask(&other, pool, run(good, PoolWhat::Map)),
            Reply::Fault(FaultKind::Unsupported, _)
        ));
        assert!(matches!(ask(&other, pool, Op::PoolPids), Reply::Ints(p) if p.len() == 1));
        // Nor make a pool with an initializer (a function of this program) in it.
        let (it, ifn, isig) = crate::sys::init_refs(|_: u64| {});
        let spec = crate::wire::PoolSpec {
            processes: Some(1),
            init: Some((it, ifn, isig, crate::client::enc(&1u64).unwrap())),
            ..Default::default()
        };
        assert!(matches!(
            ask(&other, 0, Op::CreatePool(Box::new(spec))),
            Reply::Fault(FaultKind::Unsupported, _)
        ));
        // Pool requests on another kind of object, and other requests on a pool.
        let list = create_list(&c);
        assert!(matches!(
            ask(&c, list, Op::PoolClose),
            Reply::Fault(FaultKind::WrongKind, _)
        ));
        assert!(matches!(
            ask(&c, pool, Op::Len),
            Reply::Fault(FaultKind::WrongKind, _)
        ));
        c.send(&Request {
            obj: 0,
            op: Op::Shutdown,
        })
        .unwrap();
        let _ = c.recv::<Reply>();
        t.join().unwrap().unwrap();
    }

    #[test]
    fn a_stopped_server_terminates_its_pools_and_makes_no_more() {
        let (a, t) = serve();
        let (c1, c2) = (
            Client(&a, Some(b"key")).unwrap(),
            Client(&a, Some(b"key")).unwrap(),
        );
        hello(&c1, mproc_core::code::layout());
        hello(&c2, mproc_core::code::layout());
        let spec = || {
            Op::CreatePool(Box::new(crate::wire::PoolSpec {
                processes: Some(1),
                ..Default::default()
            }))
        };
        let pool = match ask(&c2, 0, spec()) {
            Reply::Id(id) => id,
            other => panic!("{other:?}"),
        };
        assert!(matches!(ask(&c1, 0, Op::Shutdown), Reply::Unit));
        t.join().unwrap().unwrap();
        // The other connection is still served: its pool was terminated, and no new
        // pool is made.
        let (tramp, func, sig) = crate::sys::task_refs(pool_square);
        let run = Op::PoolRun(Box::new(crate::wire::PoolRun {
            tramp,
            func,
            sig,
            what: crate::wire::PoolWhat::Apply,
            args: crate::client::enc(&2u64).unwrap(),
            chunksize: 0,
            wait: true,
            last: false,
        }));
        match ask(&c2, pool, run) {
            Reply::Task(t) => assert!(matches!(
                (*t).into_error(),
                ManagerError::Task(mproc_pool::TaskError::Closed)
            )),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ask(&c2, 0, spec()),
            Reply::Fault(FaultKind::PoolStart, _)
        ));
    }

    #[test]
    fn the_fuzz_entry_survives_encoded_requests_of_every_kind() {
        let ops = vec![
            Op::Create {
                kind: Kind::Queue,
                init: None,
                n: 1,
            },
            Op::Take {
                block: true,
                timeout: None,
            },
            Op::Acquire {
                block: true,
                timeout: None,
                owner: 3,
            },
            Op::Wait {
                timeout: None,
                owner: 0,
            },
            Op::Call {
                tramp: 1,
                func: 2,
                sig: Sig {
                    hash: 3,
                    name: "fn()".into(),
                },
                args: Val::default(),
            },
            Op::Sort {
                tramp: 5,
                sig: Sig {
                    hash: 6,
                    name: String::new(),
                },
            },
            Op::CreateArray(vec![Val::default(); 3]),
            Op::Slice {
                start: i64::MIN,
                stop: i64::MAX,
            },
            Op::SetSlice {
                start: -1,
                stop: i64::MIN,
                items: vec![Val::default()],
            },
            Op::Nudge,
            Op::Attach,
            Op::CreatePool(Box::default()),
            Op::PoolRun(Box::new(crate::wire::PoolRun {
                tramp: 1,
                func: 2,
                sig: Sig {
                    hash: 3,
                    name: String::new(),
                },
                what: crate::wire::PoolWhat::Map,
                args: Val::default(),
                chunksize: u64::MAX,
                wait: true,
                last: false,
            })),
            Op::PoolGet { timeout: None },
            Op::PoolNext {
                timeout: Some(0),
                more: None,
                last: false,
            },
            Op::PoolJoin,
            Op::PoolTerminate,
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let e = codec::encode(&Request { obj: i as u64, op }).unwrap();
            fuzz_request(&e.bytes);
        }
        fuzz_request(&[0xff; 40]);
    }

    #[test]
    fn mutated_requests_are_errors_not_crashes() {
        let ops = || {
            vec![
                Op::Create {
                    kind: Kind::Dict,
                    init: Some(Val::default()),
                    n: 3,
                },
                Op::DictInsert(Val::default(), Val::default()),
                Op::Push(Val {
                    bytes: vec![1, 2, 3],
                    refs: vec![5, 6],
                    ty: 9,
                }),
                Op::Put {
                    v: Val::default(),
                    block: false,
                    timeout: Some(1),
                },
                Op::Acquire {
                    block: true,
                    timeout: Some(10),
                    owner: 1,
                },
                Op::Adopt { token: 4 },
                Op::DictUpdate(vec![(Val::default(), Val::default())]),
            ]
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..300 {
            for (i, op) in ops().into_iter().enumerate() {
                let obj = if round % 3 == 0 {
                    0
                } else {
                    (i as u64 % 4) + 1
                };
                let mut bytes = codec::encode(&Request { obj, op }).unwrap().bytes.to_vec();
                for _ in 0..(next() % 4) {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] ^= next() as u8;
                }
                fuzz_request(&bytes);
            }
        }
    }

    #[test]
    fn slices_clamp_as_python_does() {
        assert_eq!(slice(5, 1, 3), 1..3);
        assert_eq!(slice(5, -2, i64::MAX), 3..5);
        assert_eq!(slice(5, i64::MIN, -4), 0..1);
        assert_eq!(slice(5, 4, 1), 4..4);
        assert_eq!(slice(5, 7, 9), 5..5);
        assert_eq!(slice(0, i64::MIN, i64::MAX), 0..0);
    }
}

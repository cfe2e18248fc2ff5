//! The client side: one session per process and manager, a small pool of connections
//! (a call that blocks in the server, such as `Lock::acquire`, holds one connection and
//! leaves the others to other threads), and the encoding of values with the proxies
//! inside them.
use crate::bell::Bell;
use crate::error::{ManagerError, Result};
use crate::wire::{Op, Reply, Request, Val};
use mproc_channel::{Address, Client, Connection, RecvError, SendError};
use mproc_core::{Decode, Encode, Region, codec};
use rkyv::util::AlignedVec;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// A process's link to one manager: its id in the server, and idle connections.
pub(crate) struct Session {
    pub(crate) address: Address,
    pub(crate) authkey: Option<Vec<u8>>,
    pub(crate) id: u64,
    pub(crate) pid: u32,
    idle: Mutex<Vec<Link>>,
    /// In a process forked from the one that made this session: that process's own
    /// session with the same manager, kept so that every call does not connect anew.
    forked: Mutex<Option<Arc<Session>>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("address", &self.address)
            .field("id", &self.id)
            .finish()
    }
}

static SESSIONS: Mutex<Vec<Weak<Session>>> = Mutex::new(Vec::new());

pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // Unique enough without the entropy source: time and pid.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ ((std::process::id() as u64) << 40) | 1;
    }
    u64::from_le_bytes(b) | 1
}

pub(crate) fn my_pid() -> u32 {
    mproc_core::pid::current()
}

impl Session {
    /// This process's session with the manager at `address`, connecting if needed.
    pub(crate) fn get(address: &Address, authkey: Option<&[u8]>) -> Result<Arc<Session>> {
        let pid = my_pid();
        let mut all = SESSIONS.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|w| w.strong_count() > 0);
        for w in all.iter() {
            if let Some(s) = w.upgrade()
                && s.pid == pid
                && &s.address == address
                && s.authkey.as_deref() == authkey
            {
                return Ok(s);
            }
        }
        let s = Arc::new(Session {
            address: address.clone(),
            authkey: authkey.map(<[u8]>::to_vec),
            id: random_u64(),
            pid,
            idle: Mutex::new(Vec::new()),
            forked: Mutex::new(None),
        });
        // The first connection anchors the session in the server: it stays open (in the
        // idle pool) for as long as the session lives.
        let c = s.open()?;
        s.put_back(c);
        all.push(Arc::downgrade(&s));
        Ok(s)
    }

    /// This process's session with the same manager, for a session inherited through
    /// `fork`; kept in the inherited copy (which only this process sees) for later
    /// calls.
    fn here(&self) -> Result<Arc<Session>> {
        let mut f = self.forked.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = f.as_ref()
            && s.pid == my_pid()
        {
            return Ok(Arc::clone(s));
        }
        let s = Session::get(&self.address, self.authkey.as_deref())?;
        *f = Some(Arc::clone(&s));
        Ok(s)
    }

    fn open(&self) -> Result<Link> {
        let c = Client(&self.address, self.authkey.as_deref())?;
        let hello = Request {
            obj: 0,
            op: Op::Hello {
                session: self.id,
                layout: mproc_core::code::layout(),
                exe: mproc_core::code::exe_identity(),
            },
        };
        match round_trip(&c, &hello)? {
            Reply::Unit => {}
            other => return Err(unexpected(&other)),
        }
        // A server on this host hands out a doorbell; one elsewhere cannot.
        let bell = match self.address {
            Address::Unix(_) | Address::Abstract(_) => attach(&c)?,
            Address::Tcp(_) => None,
        };
        Ok(Link { conn: c, bell })
    }

    fn put_back(&self, c: Link) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(c);
    }

    /// Sends `op` to object `obj` and returns the server's reply (faults as errors).
    pub(crate) fn call(&self, obj: u64, op: Op) -> Result<Reply> {
        if self.pid != my_pid() {
            // A forked copy of another process's session: its connections belong to the
            // parent. Talk through this process's own session.
            return self.here()?.call(obj, op);
        }
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut c = match pooled {
            Some(c) => c,
            // The session reached the server before: failing to reach it now means it
            // is gone.
            None => self.open().map_err(|e| match e {
                ManagerError::Connect(mproc_channel::ConnectError::Io(_)) => {
                    ManagerError::ServerGone
                }
                other => other,
            })?,
        };
        let req = Request { obj, op };
        let r = match c.bell.as_mut() {
            Some(b) => b.call(&c.conn, &req),
            None => round_trip(&c.conn, &req),
        };
        match r {
            Ok(reply) => {
                self.put_back(c);
                match reply {
                    Reply::Fault(kind, msg) => Err(ManagerError::from_fault(kind, msg)),
                    Reply::Task(task) => Err((*task).into_error()),
                    other => Ok(other),
                }
            }
            Err(e) => {
                if !matches!(e, ManagerError::ServerGone | ManagerError::Io(_)) {
                    self.put_back(c);
                }
                Err(e)
            }
        }
    }
}

/// One connection of a session, with its doorbell when the server is on this host.
struct Link {
    conn: Connection,
    bell: Option<Bell>,
}

/// Asks the server for a doorbell on `c`. `None` when it refuses (it cannot share
/// memory with us): the connection then carries every call.
fn attach(c: &Connection) -> Result<Option<Bell>> {
    let req = Request {
        obj: 0,
        op: Op::Attach,
    };
    match round_trip(c, &req)? {
        Reply::Unit => {}
        Reply::Fault(..) => return Ok(None),
        other => return Err(unexpected(&other)),
    }
    let region = match c.recv::<Region>() {
        Ok(r) => r,
        // Not shareable here (another pid namespace, say: the region's import fails as
        // a decode error): the frame is consumed and the connection stays usable for
        // socket calls.
        Err(RecvError::Decode(_) | RecvError::TypeMismatch(_)) => return Ok(None),
        Err(e) => return Err(recv_error(e)),
    };
    Ok(Bell::attach(region).ok())
}

pub(crate) fn send(c: &Connection, req: &Request) -> Result<()> {
    c.send(req).map_err(|e| match e {
        SendError::Disconnected | SendError::Closed => ManagerError::ServerGone,
        SendError::Io(e) => ManagerError::Io(e),
        other => ManagerError::Codec(other.to_string()),
    })
}

fn recv_error(e: RecvError) -> ManagerError {
    match e {
        RecvError::Disconnected | RecvError::Closed | RecvError::Broken => ManagerError::ServerGone,
        RecvError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            ManagerError::ServerGone
        }
        RecvError::Io(e) => ManagerError::Io(e),
        other => ManagerError::Protocol(other.to_string()),
    }
}

pub(crate) fn recv(c: &Connection) -> Result<Reply> {
    c.recv::<Reply>().map_err(recv_error)
}

fn round_trip(c: &Connection, req: &Request) -> Result<Reply> {
    send(c, req)?;
    recv(c)
}

pub(crate) fn unexpected(r: &Reply) -> ManagerError {
    ManagerError::Protocol(format!("unexpected reply {r:?}"))
}

// ------------------------------------------------------------------ values and proxies

thread_local! {
    /// While a value for a request is encoded: the ids of the proxies inside it.
    static COLLECT: RefCell<Option<Vec<u64>>> = const { RefCell::new(None) };
    /// While a reply's value is decoded: references the server took for this session
    /// on the proxies inside it, which their imports adopt.
    static ADOPT: RefCell<Option<Vec<u64>>> = const { RefCell::new(None) };
}

/// Encodes a value for the server; proxies inside it are recorded, handles with fds are
/// refused (the server keeps bytes only).
pub(crate) fn enc<T: Encode>(v: &T) -> Result<Val> {
    let saved = COLLECT.with(|c| c.replace(Some(Vec::new())));
    let r = codec::encode(v);
    let refs = COLLECT.with(|c| c.replace(saved)).unwrap_or_default();
    let e = r.map_err(|e| ManagerError::Codec(e.to_string()))?;
    if !e.fds.is_empty() {
        return Err(ManagerError::Codec(
            "a value holding handles with file descriptors (locks, queues, segments) cannot \
             be stored in a manager; store a manager proxy instead"
                .into(),
        ));
    }
    Ok(Val {
        bytes: e.bytes.to_vec(),
        refs,
        ty: type_tag::<T>(),
    })
}

/// A fingerprint of `T`'s name (FNV-1a), so a value read back as another type is a
/// typed error rather than a reinterpretation of its bytes.
pub(crate) fn type_tag<T>() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::any::type_name::<T>().bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Decodes a value from the server, adopting the references it carries.
pub(crate) fn dec<T: Decode>(session: &Session, v: Val) -> Result<T> {
    if v.ty != type_tag::<T>() {
        for id in v.refs {
            let _ = session.call(id, Op::Decref);
        }
        return Err(ManagerError::Codec(format!(
            "the stored value is not a {}",
            std::any::type_name::<T>()
        )));
    }
    let mut al = AlignedVec::<16>::with_capacity(v.bytes.len());
    al.extend_from_slice(&v.bytes);
    let saved = ADOPT.with(|c| c.replace(Some(v.refs)));
    let r = codec::decode::<T>(&al, Vec::new());
    let left = ADOPT.with(|c| c.replace(saved)).unwrap_or_default();
    for id in left {
        let _ = session.call(id, Op::Decref);
    }
    r.map_err(|e| ManagerError::Codec(e.to_string()))
}

/// Called by a proxy's export: inside [`enc`], records the id (the server will take a
/// reference for the stored value); returns whether it did.
pub(crate) fn collect(id: u64) -> bool {
    COLLECT.with(|c| match c.borrow_mut().as_mut() {
        Some(v) => {
            v.push(id);
            true
        }
        None => false,
    })
}

/// Called by a proxy's import: inside [`dec`], takes over a reference the server made
/// for this session; returns whether there was one.
pub(crate) fn adopt(id: u64) -> bool {
    ADOPT.with(|c| match c.borrow_mut().as_mut() {
        Some(v) => match v.iter().position(|&x| x == id) {
            Some(i) => {
                v.swap_remove(i);
                true
            }
            None => false,
        },
        None => false,
    })
}

static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);
thread_local! {
    static THREAD: u64 = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// Who holds a reentrant lock: this thread of this session.
pub(crate) fn owner(session: &Session) -> u64 {
    let t = THREAD.with(|t| *t);
    let s = if session.pid == my_pid() {
        session.id
    } else {
        session.here().map(|s| s.id).unwrap_or(session.id)
    };
    s.rotate_left(20) ^ t
}

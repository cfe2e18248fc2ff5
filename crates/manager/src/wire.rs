//! The request and reply messages between a proxy and its manager's server.
//!
//! Every request is one checked rkyv frame ([`Request`]); every reply one [`Reply`]. A
//! value the server stores is a [`Val`]: the rkyv bytes of the client's value (the server
//! never decodes them) and the ids of the manager objects whose proxies sit inside it, so
//! a stored value keeps those objects alive.
use rkyv::{Archive, Deserialize, Serialize};

/// A value as the server holds it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Val {
    /// The value's rkyv bytes.
    pub(crate) bytes: Vec<u8>,
    /// Objects referred to by proxies inside the value.
    pub(crate) refs: Vec<u64>,
    /// A fingerprint of the value's Rust type, checked when it is read back.
    pub(crate) ty: u64,
}

/// The kinds of object a server holds.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    List,
    Dict,
    Value,
    Namespace,
    Queue,
    JoinableQueue,
    Lock,
    RLock,
    Semaphore,
    BoundedSemaphore,
    Event,
    Condition,
    Barrier,
    Custom,
    Array,
    /// A process pool (`Manager::pool`).
    Pool,
    /// The pending result of an `apply_async`/`map_async` on a pool.
    PoolResult,
    /// The results of an `imap`/`imap_unordered` on a pool, as they arrive.
    PoolIter,
}

/// What a [`Op::PoolRun`] asks the pool to do with the function.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolWhat {
    /// `f(args)` once; the arguments are one `A`.
    Apply,
    /// `f` over a `Vec<A>`, results in order.
    Map,
    /// A starmap function over a `Vec<Args>` of tuples.
    Starmap,
    /// `f` over a `Vec<A>`, results streamed in order.
    Imap,
    /// `f` over a `Vec<A>`, results streamed as they finish.
    ImapUnordered,
    /// A starmap function over a `Vec<Args>` of tuples, results streamed in order.
    Istarmap,
}

/// The fingerprint of a function's type ([`mproc_core::code::FnSig`]) as it travels with
/// the function's offset: the hash the server checks, and the client's name for the type
/// (for the error that names both when they differ).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sig {
    pub(crate) hash: u64,
    pub(crate) name: String,
}

impl From<mproc_core::code::FnSig> for Sig {
    fn from(s: mproc_core::code::FnSig) -> Self {
        Sig {
            hash: s.hash,
            name: s.name.to_owned(),
        }
    }
}

/// A timeout in microseconds; `None` waits for ever.
pub(crate) type Micros = Option<u64>;

/// What a request asks of its object.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) enum Op {
    /// First message on every connection: the client's session and build.
    Hello {
        session: u64,
        layout: u64,
        exe: u64,
    },
    /// Creates an object; `init` and `n` depend on the kind (a value's initial value, a
    /// queue's maxsize, a semaphore's count, a barrier's parties).
    Create {
        kind: Kind,
        init: Option<Val>,
        n: i64,
    },
    /// Creates a custom object by calling a constructor in the server.
    CreateCustom {
        tramp: u64,
        func: u64,
        sig: Sig,
        args: Val,
    },
    Incref,
    Decref,
    /// A reference for a proxy in flight between processes: returns a token.
    Float,
    /// Takes over a floating reference.
    Adopt {
        token: u64,
    },
    Len,
    Clear,
    Snapshot,
    Push(Val),
    Extend(Vec<Val>),
    Index(i64),
    SetIndex(i64, Val),
    Pop(Option<i64>),
    Insert(i64, Val),
    RemoveEq(Val),
    Contains(Val),
    Sort {
        tramp: u64,
        sig: Sig,
    },
    DictGet(Val),
    DictInsert(Val, Val),
    DictRemove(Val),
    DictSetDefault(Val, Val),
    DictUpdate(Vec<(Val, Val)>),
    Get,
    Set(Val),
    AttrGet(String),
    AttrSet(String, Val),
    AttrDel(String),
    Put {
        v: Val,
        block: bool,
        timeout: Micros,
    },
    Take {
        block: bool,
        timeout: Micros,
    },
    Acquire {
        block: bool,
        timeout: Micros,
        owner: u64,
    },
    Release {
        owner: u64,
    },
    TaskDone,
    EventSet,
    EventClear,
    EventIsSet,
    Wait {
        timeout: Micros,
        owner: u64,
    },
    Notify {
        n: u64,
        owner: u64,
    },
    BarrierAbort,
    BarrierReset,
    BarrierInfo,
    Call {
        tramp: u64,
        func: u64,
        sig: Sig,
        args: Val,
    },
    /// Creates a shared memory segment in the server, which unlinks it at shutdown.
    ShmCreate {
        size: u64,
    },
    /// Creates a `ShareableList` segment in the server.
    ShmList {
        items: Vec<WireItem>,
    },
    /// The names of the segments the server made.
    ShmNames,
    Shutdown,
    /// Wakes a server asleep on a connection with a doorbell (see `bell`): the request
    /// itself is in the shared buffer.
    Nudge,
    /// Asks for a doorbell on this (local) connection: the server answers `Unit` and
    /// then sends the region, or a fault.
    Attach,
    /// Creates a fixed-length array holding these items.
    CreateArray(Vec<Val>),
    /// The items `start..stop` (clamped as Python clamps a slice).
    Slice {
        start: i64,
        stop: i64,
    },
    /// Replaces the items `start..stop` (clamped) by as many items.
    SetSlice {
        start: i64,
        stop: i64,
        items: Vec<Val>,
    },
    /// Creates a process pool in the server (boxed: the hot requests do not grow).
    CreatePool(Box<PoolSpec>),
    /// Runs a function of this program on a pool object (boxed: the hot requests do
    /// not grow with it).
    PoolRun(Box<PoolRun>),
    /// A pool result's value, waiting at most `timeout`.
    PoolGet {
        timeout: Micros,
    },
    /// Whether a pool result is ready.
    PoolReady,
    /// Whether a ready pool result succeeded (`Int`: -1 not ready, 0 failed, 1 succeeded).
    PoolSuccessful,
    /// The next result of a pool iterator (`MaybeVal(None)` at the end).
    /// With it, the next batch of the iterator's input (an encoded `Vec` of items) and
    /// whether the input ends there.
    PoolNext {
        timeout: Micros,
        more: Option<Box<Val>>,
        last: bool,
    },
    PoolClose,
    PoolTerminate,
    PoolJoin,
    /// The pids of a pool's workers.
    PoolPids,
}

/// The options of a pool made in the server (Python's `manager.Pool(processes,
/// initializer, initargs, maxtasksperchild)`, plus a per-task time limit).
#[derive(Archive, Serialize, Deserialize, Debug, Default)]
pub(crate) struct PoolSpec {
    /// `None`: as many workers as the server's machine has CPUs.
    pub(crate) processes: Option<u64>,
    /// `0`: never replace a worker for its task count.
    pub(crate) max_tasks: u64,
    /// A per-task time limit, in microseconds.
    pub(crate) time_limit: Micros,
    /// The initializer: its trampoline's and its own offsets, fingerprint and arguments.
    pub(crate) init: Option<(u64, u64, Sig, Val)>,
}

/// A function of this program submitted to a pool object: submitted, then either
/// awaited (`wait`: the reply is the result) or kept as a result object (the reply is
/// its id). `chunksize` 0 is the pool's default.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct PoolRun {
    pub(crate) tramp: u64,
    pub(crate) func: u64,
    pub(crate) sig: Sig,
    pub(crate) what: PoolWhat,
    pub(crate) args: Val,
    pub(crate) chunksize: u64,
    pub(crate) wait: bool,
    /// For an iterator: `args` is the first batch of its input, and the input ends
    /// there (else later batches come with [`Op::PoolNext`]).
    pub(crate) last: bool,
}

/// One request: an object id (0 for the server itself) and what to do.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct Request {
    pub(crate) obj: u64,
    pub(crate) op: Op,
}

/// Why the server refused or failed a request.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultKind {
    NoSuchObject,
    WrongKind,
    IndexOutOfRange,
    KeyMissing,
    NotFound,
    Empty,
    Full,
    Timeout,
    NotOwner,
    BrokenBarrier,
    Panicked,
    BadRequest,
    Unsupported,
    /// A function's type fingerprint differs from the one its trampoline was made for.
    Signature,
    /// A slice assignment of another length than the slice (a fixed-length array).
    SizeMismatch,
    /// A process pool could not be started in the server.
    PoolStart,
}

/// The server's answer.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) enum Reply {
    Unit,
    Id(u64),
    Val(Val),
    MaybeVal(Option<Val>),
    Vals(Vec<Val>),
    Pairs(Vec<(Val, Val)>),
    Bool(bool),
    Int(i64),
    Ints(Vec<i64>),
    Names(Vec<String>),
    Fault(FaultKind, String),
    /// A pool task failed (`mproc_pool::TaskError`, with the item's index for a map;
    /// boxed: the hot replies do not grow with it).
    Task(Box<WireTask>),
}

/// A pool task's failure on the wire (`mproc_pool::TaskError`, plus the index of the
/// failed item for a map).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireTask {
    /// Which `TaskError` variant (see `pooled::task_kind`).
    pub(crate) kind: u8,
    /// The panic message, broken-pool reason or codec message.
    pub(crate) text: String,
    pub(crate) pid: i32,
    pub(crate) signal: Option<i32>,
    pub(crate) exitcode: Option<i32>,
    /// A time limit, in microseconds.
    pub(crate) limit_us: u64,
    /// The failed item's index, for a map.
    pub(crate) index: Option<u64>,
}

/// A `ShareableList` item on the wire (mproc-shm's `Item` is not an rkyv type).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum WireItem {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
}

impl From<&mproc_shm::Item> for WireItem {
    fn from(i: &mproc_shm::Item) -> Self {
        use mproc_shm::Item;
        match i {
            Item::None => WireItem::None,
            Item::Bool(b) => WireItem::Bool(*b),
            Item::Int(n) => WireItem::Int(*n),
            Item::Float(f) => WireItem::Float(*f),
            Item::Str(s) => WireItem::Str(s.clone()),
            Item::Bytes(b) => WireItem::Bytes(b.clone()),
        }
    }
}

impl From<WireItem> for mproc_shm::Item {
    fn from(i: WireItem) -> Self {
        use mproc_shm::Item;
        match i {
            WireItem::None => Item::None,
            WireItem::Bool(b) => Item::Bool(b),
            WireItem::Int(n) => Item::Int(n),
            WireItem::Float(f) => Item::Float(f),
            WireItem::Str(s) => Item::Str(s),
            WireItem::Bytes(b) => Item::Bytes(b),
        }
    }
}

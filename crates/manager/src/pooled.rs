//! A manager's process pools, server side: the pool's typed results behind type-erased
//! traits (the server holds bytes only), and task failures on the wire.
//!
//! The typed halves are made by the trampolines in `sys`, monomorphised for the
//! function's argument and result types; from then on the server only asks for encoded
//! results.
use crate::client::enc;
use crate::error::ManagerError;
use crate::wire::{Val, WireTask};
use mproc_core::Message;
use mproc_pool::{AsyncResult, IMap, MapError, MapResult, Pool, ResultError, TaskError};
use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// What waiting for a result gives: its encoded value, or the task's failure.
pub(crate) type Outcome = Result<Val, WireTask>;

/// A submitted `apply_async`/`map_async`, whatever its result type.
pub(crate) trait Pending: Send + Sync {
    /// The outcome, waiting at most `t`; `None` if it is not ready by then.
    fn get(&self, t: Duration) -> Option<Outcome>;
    /// Waits at most `t`; whether the work has finished.
    fn wait(&self, t: Duration) -> bool;
    /// Whether the work has finished.
    fn ready(&self) -> bool;
    /// Whether it finished without error (`None` while it runs).
    fn successful(&self) -> Option<bool>;
}

/// A running `imap`/`imap_unordered`/`istarmap`, whatever its result type.
pub(crate) trait Stream: Send {
    /// Takes the next batch of the input (an encoded `Vec` of items, if any), and
    /// whether the input ends with it.
    ///
    /// # Errors
    /// The batch is not a `Vec` of this stream's items (nothing is taken).
    fn feed(&mut self, batch: Option<&Val>, last: bool) -> Result<(), String>;
    /// The next outcome, waiting at most `t`: `None` if none arrived by then,
    /// `Some(None)` at the end.
    fn next(&mut self, t: Duration) -> Option<Option<Outcome>>;
}

/// What a trampoline hands the server after submitting work to a pool.
pub(crate) enum Submitted {
    Job(std::sync::Arc<dyn Pending>),
    Iter(Box<dyn Stream>),
}

/// Encodes a result for the client (a result that cannot be stored in a manager, one
/// holding fds, fails as a codec error).
fn out<R: Message>(r: &R) -> Outcome {
    enc(r).map_err(|e| {
        WireTask::from_task(
            &TaskError::Codec {
                message: e.to_string(),
            },
            None,
        )
    })
}

impl<R: Message + 'static> Pending for AsyncResult<R> {
    fn get(&self, t: Duration) -> Option<Outcome> {
        match self.get_timeout(t) {
            Ok(r) => Some(out(&r)),
            Err(ResultError::Timeout) => None,
            Err(ResultError::Failed(e)) => Some(Err(WireTask::from_task(&e, None))),
        }
    }
    fn wait(&self, t: Duration) -> bool {
        self.wait_timeout(t)
    }
    fn ready(&self) -> bool {
        AsyncResult::ready(self)
    }
    fn successful(&self) -> Option<bool> {
        AsyncResult::successful(self)
    }
}

impl<R: Message + 'static> Pending for MapResult<R> {
    fn get(&self, t: Duration) -> Option<Outcome> {
        match self.get_timeout(t) {
            Ok(r) => Some(out(&r)),
            Err(ResultError::Timeout) => None,
            Err(ResultError::Failed(MapError { index, error })) => {
                Some(Err(WireTask::from_task(&error, Some(index as u64))))
            }
        }
    }
    fn wait(&self, t: Duration) -> bool {
        self.wait_timeout(t)
    }
    fn ready(&self) -> bool {
        MapResult::ready(self)
    }
    fn successful(&self) -> Option<bool> {
        MapResult::successful(self)
    }
}

/// Makes the pool's iterator over one batch of a stream's input.
pub(crate) type MakeIMap<A, R> =
    Box<dyn Fn(&Pool, Vec<A>) -> IMap<std::vec::IntoIter<A>, R> + Send>;

/// The pool's iterator over one batch of the input, with the outcomes it gave while
/// it was being started.
struct Batch<A, R> {
    /// `None`: a batch that reached a pool already dropped (its items failed).
    imap: Option<IMap<std::vec::IntoIter<A>, R>>,
    early: VecDeque<Outcome>,
    ended: bool,
}

impl<A, R> Batch<A, R>
where
    A: Message + Send + 'static,
    R: Message + Send + 'static,
{
    fn next(&mut self, t: Duration) -> Option<Option<Outcome>> {
        if let Some(o) = self.early.pop_front() {
            return Some(Some(o));
        }
        let Some(imap) = self.imap.as_mut().filter(|_| !self.ended) else {
            return Some(None);
        };
        let r = match imap.next_timeout(t) {
            None => Some(None),
            Some(Ok(r)) => Some(Some(out(&r))),
            Some(Err(ResultError::Timeout)) => None,
            Some(Err(ResultError::Failed(e))) => Some(Some(Err(WireTask::from_task(&e, None)))),
        };
        self.ended = matches!(r, Some(None));
        r
    }
}

/// An `imap` whose input arrives from the client in batches (Python's `IteratorProxy`
/// over a lazily consumed input): each batch is handed to the pool as it arrives, as
/// one of the pool's own iterators, so the workers stay busy across batches while
/// neither side holds more than a few batches. Results come from the oldest batch
/// first (`imap`), or from whichever batch has one (`imap_unordered`). Dropping it
/// drops the batches: their items not yet started are cancelled.
pub(crate) struct Batches<A, R> {
    pool: Weak<Pool>,
    make: MakeIMap<A, R>,
    ordered: bool,
    live: VecDeque<Batch<A, R>>,
    last: bool,
}

impl<A, R> Batches<A, R>
where
    A: Message + Send + 'static,
    R: Message + Send + 'static,
{
    pub(crate) fn new(
        pool: &Arc<Pool>,
        make: MakeIMap<A, R>,
        ordered: bool,
        first: Vec<A>,
        last: bool,
    ) -> Self {
        let mut b = Batches {
            pool: Arc::downgrade(pool),
            make,
            ordered,
            live: VecDeque::new(),
            last: false,
        };
        b.push(first, last);
        b
    }

    fn push(&mut self, items: Vec<A>, last: bool) {
        self.last = last;
        if items.is_empty() {
            return;
        }
        let n = items.len();
        let Some(pool) = self.pool.upgrade() else {
            // The pool was dropped: its items fail as a terminated pool's do.
            let e = WireTask::from_task(&TaskError::Terminated, None);
            self.live.push_back(Batch {
                imap: None,
                early: std::iter::repeat_n(Err(e), n).collect(),
                ended: true,
            });
            return;
        };
        let mut batch = Batch {
            imap: Some((self.make)(&pool, items)),
            early: VecDeque::new(),
            ended: false,
        };
        // The pool pulls an iterator's items as it is read: a first read hands the
        // whole batch (no larger than the iterator's window) to the workers now.
        if let Some(Some(o)) = batch.next(Duration::ZERO) {
            batch.early.push_back(o);
        }
        self.live.push_back(batch);
    }

    /// No batch left to read: the end, or (a client that did not send the rest of its
    /// input) a failure rather than a wait for input that cannot come.
    fn dry(&self) -> Option<Option<Outcome>> {
        if self.last {
            Some(None)
        } else {
            Some(Some(Err(WireTask::from_task(
                &TaskError::Broken {
                    reason: "the imap's client sent no more input".into(),
                },
                None,
            ))))
        }
    }
}

impl<A, R> Stream for Batches<A, R>
where
    A: Message + Send + 'static,
    R: Message + Send + 'static,
{
    fn feed(&mut self, batch: Option<&Val>, last: bool) -> Result<(), String> {
        let items = match batch {
            Some(v) => crate::sys::decode::<Vec<A>>(v)?,
            None => Vec::new(),
        };
        self.push(items, last || self.last);
        Ok(())
    }

    fn next(&mut self, t: Duration) -> Option<Option<Outcome>> {
        let until = Instant::now()
            .checked_add(t)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if self.ordered || self.live.len() < 2 {
                let front = match self.live.front_mut() {
                    Some(f) => f,
                    None => return self.dry(),
                };
                match front.next(left) {
                    Some(None) => {
                        self.live.pop_front();
                    }
                    other => return other,
                }
                continue;
            }
            // Several batches run: any of them may have the next result.
            for b in &mut self.live {
                if let Some(Some(o)) = b.next(Duration::ZERO) {
                    return Some(Some(o));
                }
            }
            self.live.retain(|b| !(b.ended && b.early.is_empty()));
            if self.live.len() < 2 {
                continue;
            }
            if left.is_zero() {
                return None;
            }
            if let Some(Some(o)) = self.live[0].next(left.min(POLL)) {
                return Some(Some(o));
            }
        }
    }
}

/// How long an `imap_unordered` over several batches waits on the oldest before it
/// looks at the others again.
const POLL: Duration = Duration::from_millis(2);

const PANICKED: u8 = 0;
const WORKER_LOST: u8 = 1;
const TIMED_OUT: u8 = 2;
const CANCELLED: u8 = 3;
const TERMINATED: u8 = 4;
const CLOSED: u8 = 5;
const BROKEN: u8 = 6;
const CODEC: u8 = 7;

impl WireTask {
    pub(crate) fn from_task(e: &TaskError, index: Option<u64>) -> WireTask {
        let mut w = WireTask {
            kind: BROKEN,
            text: String::new(),
            pid: 0,
            signal: None,
            exitcode: None,
            limit_us: 0,
            index,
        };
        match e {
            TaskError::Panicked { message } => {
                w.kind = PANICKED;
                w.text = message.clone();
            }
            TaskError::WorkerLost {
                pid,
                signal,
                exitcode,
            } => {
                w.kind = WORKER_LOST;
                (w.pid, w.signal, w.exitcode) = (*pid, *signal, *exitcode);
            }
            TaskError::TimedOut { pid, limit } => {
                w.kind = TIMED_OUT;
                w.pid = *pid;
                w.limit_us = limit.as_micros().min(u64::MAX as u128) as u64;
            }
            TaskError::Cancelled => w.kind = CANCELLED,
            TaskError::Terminated => w.kind = TERMINATED,
            TaskError::Closed => w.kind = CLOSED,
            TaskError::Broken { reason } => w.text = reason.clone(),
            TaskError::Codec { message } => {
                w.kind = CODEC;
                w.text = message.clone();
            }
            // A kind this build does not know: the pool's own words for it.
            other => w.text = other.to_string(),
        }
        w
    }

    fn task(self) -> TaskError {
        match self.kind {
            PANICKED => TaskError::Panicked { message: self.text },
            WORKER_LOST => TaskError::WorkerLost {
                pid: self.pid,
                signal: self.signal,
                exitcode: self.exitcode,
            },
            TIMED_OUT => TaskError::TimedOut {
                pid: self.pid,
                limit: Duration::from_micros(self.limit_us),
            },
            CANCELLED => TaskError::Cancelled,
            TERMINATED => TaskError::Terminated,
            CLOSED => TaskError::Closed,
            CODEC => TaskError::Codec { message: self.text },
            _ => TaskError::Broken { reason: self.text },
        }
    }

    /// The client's error: [`ManagerError::Map`] for a map's item, else
    /// [`ManagerError::Task`].
    pub(crate) fn into_error(self) -> ManagerError {
        match self.index {
            Some(i) => ManagerError::Map(MapError {
                index: usize::try_from(i).unwrap_or(usize::MAX),
                error: self.task(),
            }),
            None => ManagerError::Task(self.task()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_errors_survive_the_wire() {
        let all = [
            TaskError::Panicked {
                message: "boom".into(),
            },
            TaskError::WorkerLost {
                pid: 7,
                signal: Some(9),
                exitcode: Some(-9),
            },
            TaskError::TimedOut {
                pid: 8,
                limit: Duration::from_millis(1500),
            },
            TaskError::Cancelled,
            TaskError::Terminated,
            TaskError::Closed,
            TaskError::Broken {
                reason: "init".into(),
            },
            TaskError::Codec {
                message: "bytes".into(),
            },
        ];
        for e in all {
            match WireTask::from_task(&e, None).into_error() {
                ManagerError::Task(t) => assert_eq!(t, e),
                other => panic!("{other:?}"),
            }
            match WireTask::from_task(&e, Some(3)).into_error() {
                ManagerError::Map(m) => assert_eq!(m, MapError { index: 3, error: e }),
                other => panic!("{other:?}"),
            }
        }
    }
}

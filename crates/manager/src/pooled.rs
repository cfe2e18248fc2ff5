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
use mproc_pool::{AsyncResult, IMap, MapError, MapResult, ResultError, TaskError};
use std::time::Duration;

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

/// A running `imap`/`imap_unordered`, whatever its result type.
pub(crate) trait Stream: Send {
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

impl<A, R> Stream for IMap<std::vec::IntoIter<A>, R>
where
    A: Message + Send + 'static,
    R: Message + Send + 'static,
{
    fn next(&mut self, t: Duration) -> Option<Option<Outcome>> {
        match self.next_timeout(t) {
            None => Some(None),
            Some(Ok(r)) => Some(Some(out(&r))),
            Some(Err(ResultError::Timeout)) => None,
            Some(Err(ResultError::Failed(e))) => Some(Some(Err(WireTask::from_task(&e, None)))),
        }
    }
}

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

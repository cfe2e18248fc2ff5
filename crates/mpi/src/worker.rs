//! The worker side: announce itself, then receive chunks, run them, send the outcomes
//! back, until told to stop. Results leave through non-blocking sends and the worker
//! keeps receiving while they drain, so the pool's rank and a worker never both block
//! sending to each other.
use crate::env::{self, WORKER_ARG};
use crate::error::MpiError;
use crate::sys::{self, Isend};
use crate::wire::{self, TAG_HELLO, TAG_RESULT, TAG_STOP, TAG_TASK};
use mpi::point_to_point::MatchedReceiveVec;
use mpi::traits::*;
use rkyv::util::AlignedVec;
use std::time::{Duration, Instant};

/// After this long without a message a waiting worker sleeps between polls.
const HOT: Duration = Duration::from_millis(2);
/// How long an idle worker sleeps between polls.
const NAP: Duration = Duration::from_micros(50);

/// How long to wait between checks that the spawner is still alive.
const PARENT_CHECK: Duration = Duration::from_millis(100);

fn node_name() -> String {
    mpi::environment::processor_name().unwrap_or_default()
}

/// Serves the pool whose rank is `master` in `comm` until it sends a stop.
/// `parent` is the spawner's pid when it runs on this node (spawn mode): the worker
/// ends when it dies.
pub(crate) fn serve<C: Communicator>(
    comm: &C,
    master: i32,
    parent: Option<i32>,
) -> Result<(), MpiError> {
    let mut sends: Vec<Isend> = Vec::new();
    {
        let _g = env::lock();
        let hello = wire::hello(mproc_core::code::layout(), std::process::id(), &node_name());
        sends.push(Isend::start(
            &comm.process_at_rank(master),
            TAG_HELLO,
            hello,
        ));
    }
    let mut last = Instant::now();
    let mut checked = Instant::now();
    let mut input: AlignedVec = AlignedVec::new();
    loop {
        let msg = {
            let _g = env::lock();
            sends.retain_mut(|s| !s.poll());
            comm.process_at_rank(master)
                .immediate_matched_probe()
                .map(|probed| {
                    let (v, st) = probed.matched_receive_vec::<u8>();
                    (v, st.tag())
                })
        };
        match msg {
            Some((v, TAG_TASK)) => {
                let (id, tramp, func, sig, payload) = wire::parse_task(&v)?;
                input.clear();
                input.extend_from_slice(payload);
                let out = sys::call(tramp, func, sig, &input);
                let frame = wire::result(id, &out);
                let _g = env::lock();
                sends.push(Isend::start(
                    &comm.process_at_rank(master),
                    TAG_RESULT,
                    frame,
                ));
                last = Instant::now();
            }
            Some((_, TAG_STOP)) => {
                // Every result was received before the stop was sent; finish the sends.
                while !sends.is_empty() {
                    let _g = env::lock();
                    sends.retain_mut(|s| !s.poll());
                }
                return Ok(());
            }
            Some((_, tag)) => {
                return Err(MpiError::Protocol(format!("worker got tag {tag:#x}")));
            }
            None => {
                if last.elapsed() < HOT {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(NAP);
                }
                if let Some(p) = parent
                    && checked.elapsed() > PARENT_CHECK
                {
                    checked = Instant::now();
                    if !mproc_core::process_alive(p) {
                        // The spawner died: a worker never outlives it.
                        sys::exit_now(1);
                    }
                }
            }
        }
    }
}

/// The whole life of a process started by `MpiPool::spawn` (called before `main`).
pub(crate) fn serve_spawned() -> Result<(), MpiError> {
    crate::env::init()?;
    let parent_pid = spawner_pid();
    let parent = {
        let _g = env::lock();
        mpi::topology::SimpleCommunicator::world().parent()
    };
    let Some(parent) = parent else {
        return Err(MpiError::Spawn(
            "started as a spawned worker but MPI has no parent communicator".into(),
        ));
    };
    let res = serve(&parent, 0, parent_pid);
    let _g = env::lock();
    drop(parent);
    sys::finalize();
    res
}

/// The spawner's pid, passed after the marker argument as `pid@node`, when the spawner
/// runs on this node.
fn spawner_pid() -> Option<i32> {
    let cmd = std::fs::read("/proc/self/cmdline").ok()?;
    let mut args = cmd.split(|&b| b == 0);
    args.find(|a| *a == WORKER_ARG.as_bytes())?;
    let v = std::str::from_utf8(args.next()?).ok()?;
    let (pid, node) = v.split_once('@')?;
    let _g = env::lock();
    (node == node_name()).then(|| pid.parse().ok()).flatten()
}

//! Scenario 2: Lock, RLock, Mutex and Semaphore holders SIGKILLed while holding.
//!
//! A holder process takes the primitive, signals that it holds it and sleeps. A waiter
//! process and a waiter thread of the parent block on it. The parent SIGKILLs the
//! holder and measures, on CLOCK_MONOTONIC, how long until a waiter gets in. Exactly one
//! waiter must be told the owner died (`OwnerDied`); the other then gets a clean lock.
//! Semaphores have no owner (as in Python): the dead holder's permit is not returned,
//! and the check is that others keep going on the remaining permits.
use crate::util::{METHODS, kill_ours, mono_ns, ms};
use crate::{Budget, Outcome};
use mproc_spawn::Process;
use mproc_sync::{Event, Lock, Mutex, RLock, Semaphore};
use std::time::{Duration, Instant};

/// The bound checked: mproc-sync reports a dead holder to a sleeping waiter within
/// about a millisecond (its process watches the holder's pidfd, target ≤ 10 ms);
/// ten times the target leaves room for a loaded machine's scheduling delays.
const BOUND: Duration = Duration::from_millis(100);

fn hold_lock((l, ev): (Lock, Event)) -> u32 {
    let g = l.lock();
    ev.set();
    std::thread::sleep(Duration::from_secs(600));
    drop(g);
    0
}

fn hold_rlock((l, ev): (RLock, Event)) -> u32 {
    let g1 = l.lock();
    let g2 = l.lock(); // held twice
    ev.set();
    std::thread::sleep(Duration::from_secs(600));
    drop((g1, g2));
    0
}

fn hold_mutex((m, ev): (Mutex<u64>, Event)) -> u32 {
    if let Ok(mut g) = m.lock() {
        *g += 1;
        ev.set();
        std::thread::sleep(Duration::from_secs(600));
    }
    0
}

fn hold_sem((s, ev): (Semaphore, Event)) -> u32 {
    s.acquire();
    ev.set();
    std::thread::sleep(Duration::from_secs(600));
    0
}

/// Waiters report (saw the owner die, CLOCK_MONOTONIC ns when they got in).
fn report<G>(r: Result<G, mproc_sync::TryLockError<G>>) -> (bool, u64) {
    let t = mono_ns();
    match r {
        Ok(_) => (false, t),
        Err(mproc_sync::TryLockError::OwnerDied(_)) => (true, t),
        Err(_) => (false, 0),
    }
}

fn wait_lock(l: Lock) -> (bool, u64) {
    report(l.lock_timeout(Duration::from_secs(10)))
}

fn wait_rlock(l: RLock) -> (bool, u64) {
    report(l.lock_timeout(Duration::from_secs(10)))
}

fn wait_mutex(m: Mutex<u64>) -> (bool, u64) {
    report(m.lock_timeout(Duration::from_secs(10)))
}

fn wait_sem(s: Semaphore) -> (bool, u64) {
    let ok = s.acquire_timeout(Duration::from_secs(10));
    let t = mono_ns();
    if ok {
        let _ = s.release();
        (false, t)
    } else {
        (false, 0)
    }
}

#[derive(Default)]
struct Kind {
    rounds: u64,
    told: u64,
    worst: Duration,
    over_bound: u64,
}

pub(crate) fn run(b: Budget) -> Outcome {
    let mut out = Outcome {
        nothing_lost: true,
        ..Outcome::default()
    };
    let per_kind = b.time / 4;
    let mut kinds = Vec::new();
    for kind in ["Lock", "RLock", "Mutex", "Semaphore"] {
        let mut k = Kind::default();
        let t0 = Instant::now();
        while t0.elapsed() < per_kind || k.rounds < 2 {
            if let Err(e) = round(kind, &mut k) {
                out.violate(format!("{kind}: {e}"));
                break;
            }
            if t0.elapsed() > per_kind * 3 {
                break;
            }
        }
        println!(
            "  {kind}: {} holders killed, {} waiters told of the dead owner, worst {}",
            k.rounds,
            k.told,
            ms(k.worst)
        );
        if k.over_bound > 0 {
            out.violate(format!(
                "{kind}: {} of {} rounds took longer than {} (worst {})",
                k.over_bound,
                k.rounds,
                ms(BOUND),
                ms(k.worst)
            ));
        }
        kinds.push((kind, k));
    }
    let total: u64 = kinds.iter().map(|(_, k)| k.rounds).sum();
    out.load = format!(
        "{total} rounds (fork, spawn, forkserver in turn): holder process + 1 waiter process + 1 waiter thread per round, over Lock, RLock (held twice), Mutex<u64>, Semaphore(2)"
    );
    out.faults = format!("{total} SIGKILLs of holders while holding");
    out.seen = kinds
        .iter()
        .map(|(n, k)| {
            if *n == "Semaphore" {
                format!("{n}: others went on in {} worst", ms(k.worst))
            } else {
                format!("{n}: {}/{} told, worst {}", k.told, k.rounds, ms(k.worst))
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    out
}

/// One round: start a holder, then the waiters, kill the holder, time the hand-over.
fn round(kind: &str, k: &mut Kind) -> Result<(), String> {
    let ev = Event::new().map_err(|e| e.to_string())?;
    macro_rules! go {
        ($prim:expr, $hold:ident, $wait:ident, $local:expr) => {{
            let prim = $prim;
            let method = METHODS[k.rounds as usize % 3].1;
            let mut holder = Process::new($hold, (prim.clone(), ev.clone())).start_method(method);
            holder.start().map_err(|e| e.to_string())?;
            if !ev.wait_timeout(Duration::from_secs(20)) {
                let _ = holder.kill();
                return Err("holder never got the lock".into());
            }
            let mut waiter = Process::new($wait, prim.clone()).start_method(method);
            waiter.start().map_err(|e| e.to_string())?;
            let p2 = prim.clone();
            let th = std::thread::spawn(move || $local(p2));
            // Let both waiters go to sleep on it.
            std::thread::sleep(Duration::from_millis(30));
            let pid = holder.pid().unwrap_or(0);
            let t_kill = mono_ns();
            if !kill_ours(pid) {
                return Err(format!("could not kill holder {pid}"));
            }
            let _ = holder.join_timeout(Duration::from_secs(10));
            let a = waiter
                .join_timeout(Duration::from_secs(30))
                .map_err(|e| e.to_string())?
                .ok_or("waiter process hung")?;
            let bth = th.join().map_err(|_| "waiter thread panicked")?;
            (t_kill, a, bth)
        }};
    }
    let (t_kill, a, bth) = match kind {
        "Lock" => {
            go!(
                Lock::new().map_err(|e| e.to_string())?,
                hold_lock,
                wait_lock,
                wait_lock
            )
        }
        "RLock" => {
            go!(
                RLock::new().map_err(|e| e.to_string())?,
                hold_rlock,
                wait_rlock,
                wait_rlock
            )
        }
        "Mutex" => {
            go!(
                Mutex::new(0u64).map_err(|e| e.to_string())?,
                hold_mutex,
                wait_mutex,
                wait_mutex
            )
        }
        _ => {
            go!(
                Semaphore::new(2).map_err(|e| e.to_string())?,
                hold_sem,
                wait_sem,
                wait_sem
            )
        }
    };
    k.rounds += 1;
    if a.1 == 0 || bth.1 == 0 {
        return Err("a waiter timed out after 10 s: it never learned of the dead owner".into());
    }
    let first = a.1.min(bth.1);
    let d = Duration::from_nanos(first.saturating_sub(t_kill));
    k.worst = k.worst.max(d);
    if d > BOUND {
        k.over_bound += 1;
    }
    let told = u64::from(a.0) + u64::from(bth.0);
    k.told += told;
    if kind != "Semaphore" && told != 1 {
        return Err(format!(
            "{told} waiters were told the owner died (expected exactly 1)"
        ));
    }
    Ok(())
}

//! Scenario 3: Queue producers and consumers SIGKILLed at random points.
//!
//! Accounting lives in a shared region the parent reads after the run:
//! - each producer instance `p` puts `(p, seq)` for seq = 0, 1, … and after each put
//!   that returned `Ok` stores `sent[p] = seq + 1` (a put killed before that store may
//!   still be delivered: an extra, never a loss);
//! - each consumer instance `c`, after a get returns `(p, seq)`, stores it in
//!   `holding[c]`, increments `count[p][seq]`, then clears `holding[c]`.
//!
//! Invariants: no `count` above 1 (nothing duplicated); every message reported sent is
//! counted once, or is explained by a killed consumer (at most one message per consumer
//! kill: the one it held); the queue still carries messages afterwards, and once it
//! has gone round its ring twice more no arena chunk is left held (a chunk of a killed
//! producer or consumer is freed exactly once, with its slot).
use crate::util::{Rng, kill_ours};
use crate::{Budget, Outcome};
use mproc_channel::{GetError, Queue};
use mproc_core::Region;
use mproc_spawn::Process;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const MAXP: u64 = 512; // producer instances
const MAXC: u64 = 512; // consumer instances
const PER: u64 = 8192; // messages per producer instance at most
const STOP_P: usize = 0;
const STOP_C: usize = 4;
const HOLD_OFF: usize = 64;
const SENT_OFF: usize = HOLD_OFF + 8 * MAXC as usize;
const CNT_OFF: usize = SENT_OFF + 4 * MAXP as usize;
const NONE: u64 = u64::MAX;
/// (producer, seq, payload): every 16th message carries 96 KiB, more than an arena
/// chunk, so it travels in a region of its own; every 4th of the others is mid-size
/// (past a slot, within a chunk: it travels in the queue's arena); the rest are small.
type Msg = (u64, u64, Vec<u8>);
const BIG: usize = 96 * 1024;

/// The payload length of message `seq`.
fn payload_len(seq: u64) -> usize {
    if seq.is_multiple_of(16) {
        BIG
    } else if seq % 4 == 1 {
        300 + (seq as usize * 4099) % 40_000
    } else {
        0
    }
}

fn cnt_off(p: u64, seq: u64) -> usize {
    CNT_OFF + 4 * (p * PER + seq) as usize
}

fn producer((q, r, p): (Queue<Msg>, Region, u64)) -> u64 {
    let stop = r.atomic_u32(STOP_P).expect("in bounds");
    let sent = r.atomic_u32(SENT_OFF + 4 * p as usize).expect("in bounds");
    let mut seq = 0;
    while seq < PER && stop.load(Ordering::SeqCst) == 0 {
        let payload = vec![(seq % 251) as u8; payload_len(seq)];
        match q.put_timeout((p, seq, payload), Duration::from_millis(50)) {
            Ok(()) => {
                seq += 1;
                sent.store(seq as u32, Ordering::SeqCst);
                if seq.is_multiple_of(8) {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            Err(e) if e.is_full() => {}
            Err(_) => break,
        }
    }
    while stop.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    seq
}

fn consumer((q, r, c): (Queue<Msg>, Region, u64)) -> u64 {
    let stop = r.atomic_u32(STOP_C).expect("in bounds");
    let hold = r.atomic_u64(HOLD_OFF + 8 * c as usize).expect("in bounds");
    let mut got = 0;
    loop {
        match q.get_timeout(Duration::from_millis(50)) {
            Ok((p, seq, payload)) => {
                hold.store(p * PER + seq, Ordering::SeqCst);
                let intact = payload.len() == payload_len(seq)
                    && payload.iter().all(|&b| b == (seq % 251) as u8);
                if p < MAXP && seq < PER && intact {
                    r.atomic_u32(cnt_off(p, seq))
                        .expect("in bounds")
                        .fetch_add(1, Ordering::SeqCst);
                }
                hold.store(NONE, Ordering::SeqCst);
                got += 1;
            }
            Err(GetError::Empty) => {
                if stop.load(Ordering::SeqCst) != 0 {
                    return got;
                }
            }
            Err(_) => return got,
        }
    }
}

pub(crate) fn run(b: Budget) -> Outcome {
    // Phase 1 kills producers only: then not one message reported sent may be missing
    // (a dead producer must not take a message it already handed over with it, large
    // ones included). Phase 2 kills both sides.
    let half = Budget {
        time: b.time / 2,
        ..b
    };
    let mut p1 = run_phase(half, false);
    let p2 = run_phase(
        Budget {
            seed: b.seed ^ 0xA5A5,
            ..half
        },
        true,
    );
    let mut out = Outcome {
        nothing_lost: p1.nothing_lost && p2.nothing_lost,
        ..Outcome::default()
    };
    out.violations = std::mem::take(&mut p1.violations)
        .into_iter()
        .map(|v| format!("producers-only phase: {v}"))
        .chain(
            p2.violations
                .into_iter()
                .map(|v| format!("both-sides phase: {v}")),
        )
        .collect();
    out.load = p2.load;
    out.faults = format!("phase 1: {}; phase 2: {}", p1.faults, p2.faults);
    out.seen = format!("phase 1: {}; phase 2: {}", p1.seen, p2.seen);
    out
}

fn run_phase(b: Budget, kill_consumers: bool) -> Outcome {
    let mut out = Outcome {
        nothing_lost: true,
        ..Outcome::default()
    };
    let setup = || -> Result<(Queue<Msg>, Region), String> {
        let q = Queue::with_maxsize(64).map_err(|e| e.to_string())?;
        let r = Region::new(CNT_OFF + 4 * (MAXP * PER) as usize).map_err(|e| e.to_string())?;
        Ok((q, r))
    };
    let (q, r) = match setup() {
        Ok(v) => v,
        Err(e) => {
            out.violate(format!("setup: {e}"));
            return out;
        }
    };
    for c in 0..MAXC {
        r.atomic_u64(HOLD_OFF + 8 * c as usize)
            .expect("in bounds")
            .store(NONE, Ordering::SeqCst);
    }
    let mut rng = Rng::new(b.seed);
    let (mut np, mut nc) = (0u64, 0u64);
    let start_p = |np: &mut u64| -> Option<Process<u64>> {
        let mut pr = Process::new(producer, (q.clone(), r.try_clone().ok()?, *np));
        *np += 1;
        pr.start().ok().map(|()| pr)
    };
    let start_c = |nc: &mut u64| -> Option<Process<u64>> {
        let mut pr = Process::new(consumer, (q.clone(), r.try_clone().ok()?, *nc));
        *nc += 1;
        pr.start().ok().map(|()| pr)
    };
    let mut prods: Vec<Process<u64>> = (0..2).filter_map(|_| start_p(&mut np)).collect();
    let mut cons: Vec<Process<u64>> = (0..2).filter_map(|_| start_c(&mut nc)).collect();
    let (mut pkills, mut ckills) = (0u64, 0u64);
    let run_time = b.time.mul_f64(0.8);
    let t0 = Instant::now();
    while t0.elapsed() < run_time && np < MAXP - 4 && nc < MAXC - 4 {
        std::thread::sleep(Duration::from_millis(40 + rng.below(120)));
        let victim_is_producer = !kill_consumers || rng.below(2) == 0;
        let list = if victim_is_producer {
            &mut prods
        } else {
            &mut cons
        };
        if list.is_empty() {
            continue;
        }
        let i = rng.below(list.len() as u64) as usize;
        let mut victim = list.swap_remove(i);
        if let Some(pid) = victim.pid()
            && kill_ours(pid)
        {
            if victim_is_producer {
                pkills += 1;
            } else {
                ckills += 1;
            }
        }
        let _ = victim.join_timeout(Duration::from_secs(10));
        let fresh = if victim_is_producer {
            start_p(&mut np)
        } else {
            start_c(&mut nc)
        };
        match fresh {
            Some(p) if victim_is_producer => prods.push(p),
            Some(p) => cons.push(p),
            None => out.violate("could not start a replacement process"),
        }
    }
    // Stop producers, let consumers drain, then stop consumers.
    r.atomic_u32(STOP_P)
        .expect("in bounds")
        .store(1, Ordering::SeqCst);
    for mut p in prods {
        if !matches!(p.join_timeout(Duration::from_secs(20)), Ok(Some(_))) {
            out.violate("a producer did not stop");
            let _ = p.kill();
        }
    }
    let drain = Instant::now();
    while !q.is_empty() && drain.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !q.is_empty() {
        out.violate(format!("queue not drained after 20 s ({} left)", q.qsize()));
    }
    r.atomic_u32(STOP_C)
        .expect("in bounds")
        .store(1, Ordering::SeqCst);
    for mut c in cons {
        if !matches!(c.join_timeout(Duration::from_secs(20)), Ok(Some(_))) {
            out.violate("a consumer did not stop");
            let _ = c.kill();
        }
    }
    // Account.
    let (mut reported, mut received, mut dup, mut missing) = (0u64, 0u64, 0u64, 0u64);
    let mut extra = 0u64;
    let mut held = 0u64;
    for c in 0..nc {
        if r.atomic_u64(HOLD_OFF + 8 * c as usize)
            .expect("in bounds")
            .load(Ordering::SeqCst)
            != NONE
        {
            held += 1;
        }
    }
    for p in 0..np {
        let sent = u64::from(
            r.atomic_u32(SENT_OFF + 4 * p as usize)
                .expect("in bounds")
                .load(Ordering::SeqCst),
        );
        reported += sent;
        for seq in 0..PER {
            let n = u64::from(
                r.atomic_u32(cnt_off(p, seq))
                    .expect("in bounds")
                    .load(Ordering::SeqCst),
            );
            received += n;
            if n > 1 {
                dup += n - 1;
            }
            if n == 0 && seq < sent {
                missing += 1;
            }
            if n > 0 && seq > sent {
                extra += 1; // more than one past the last reported put: impossible
            }
        }
    }
    if dup > 0 {
        out.nothing_lost = false;
        out.violate(format!("{dup} messages received twice"));
    }
    if missing > ckills {
        out.nothing_lost = false;
        out.violate(format!(
            "{missing} messages reported sent were never received, but only {ckills} consumers were killed"
        ));
    }
    if extra > 0 {
        out.violate(format!("{extra} messages received that were never put"));
    }
    // The queue stays usable.
    let usable = q
        .put_timeout((u64::MAX, 1, vec![7; BIG]), Duration::from_secs(5))
        .is_ok()
        && matches!(q.get_timeout(Duration::from_secs(5)), Ok((u64::MAX, 1, v)) if v == vec![7; BIG]);
    if !usable {
        out.violate("the queue no longer carries messages");
    }
    // Two more laps of mid-size messages: every slot a killed process held is then
    // reclaimed, and so is its chunk: none may stay held.
    let laps = 2 * q.maxsize() as u64;
    let mut lapped = true;
    for i in 0..laps {
        let m = (u64::MAX, i, vec![9; 1000 + i as usize]);
        lapped &= q.put_timeout(m, Duration::from_secs(5)).is_ok()
            && matches!(q.get_timeout(Duration::from_secs(5)), Ok((u64::MAX, j, _)) if j == i);
    }
    let chunks_held = q.arena_chunks_in_use();
    if !lapped {
        out.violate("mid-size messages after the run did not go through");
    }
    if chunks_held != 0 {
        out.violate(format!(
            "{chunks_held} arena chunks still held after two clean laps"
        ));
    }
    out.load = format!(
        "Queue maxsize 64 (1 message in 16 of 96 KiB, past the arena chunk size; 1 in 4 of the rest 0.3-40 KiB, in the arena), 2 producers + 2 consumers alive at a time ({np} producer and {nc} consumer processes over the run)"
    );
    out.faults = format!("{pkills} producer and {ckills} consumer SIGKILLs at random points");
    out.seen = format!(
        "{reported} puts reported sent, {received} received, {dup} duplicated, {missing} missing, each held by a killed consumer ({held} caught holding, <= 1 per consumer kill); queue usable after: {usable}; arena chunks held after two laps: {chunks_held}"
    );
    out
}

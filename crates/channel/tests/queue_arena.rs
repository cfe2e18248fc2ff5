//! Mid-size queue messages (larger than a slot, no larger than an arena chunk) and the
//! per-slot type fingerprint: every size class at its boundaries, many processes with
//! mixed sizes, consumers too slow for the arena (the memfd fallback), processes killed
//! while they hold a chunk, `JoinableQueue` and `SimpleQueue`, handles beside a
//! mid-size archive, and a slot written as another type. Children are started with
//! `mproc_spawn::Process` (the default start method: the suite runs this file under
//! fork, spawn and forkserver).
use mproc_channel::{GetError, JoinableQueue, Queue, SimpleQueue};
use mproc_core::{Region, codec};
use mproc_spawn::Process;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn start<A: mproc_core::Message + Send + 'static, R: mproc_core::Message + 'static>(
    f: fn(A) -> R,
    args: A,
) -> Process<R> {
    let mut p = Process::new(f, args);
    p.start().expect("start child");
    p
}

/// Offsets of the ring layout (queue/ring.rs), to play dead holders on purpose.
const HEADER: usize = 384;
const ENQ: usize = 64;
const DEQ: usize = 128;
const S_TYPE: usize = 24;
/// Slot stride of a 224-byte slot.
const STRIDE_DEFAULT: usize = 256;
/// Bytes between two arena owner words (they follow the slots).
const OWNER_STRIDE: usize = 64;

fn ring_region<T: rkyv::Archive>(q: &Queue<T>) -> Region {
    let enc = codec::encode(q).unwrap();
    Region::from_fd(enc.fds.into_iter().next().unwrap()).unwrap()
}

/// The owner word of arena chunk `i` of a ring of `cap` default-size slots.
fn owner_off(cap: usize, i: usize) -> usize {
    HEADER + cap * STRIDE_DEFAULT + i * OWNER_STRIDE
}

/// Recognisable bytes for message `seq` of producer `id`.
fn pattern(id: u32, seq: u32, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(31) ^ id.wrapping_mul(7) ^ seq)
        .map(|x| x as u8)
        .collect()
}

/// The pid of a process that has exited (and been reaped).
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

#[test]
fn every_size_class_round_trips_at_its_boundaries() {
    // Small geometry: slots of 64 bytes, 4 chunks of 256.
    let q: Queue<Vec<u8>> = Queue::builder()
        .maxsize(16)
        .slot_size(64)
        .arena_chunks(4)
        .chunk_size(256)
        .build()
        .unwrap();
    assert_eq!(
        (q.slot_size(), q.chunk_size(), q.arena_chunks()),
        (64, 256, 4)
    );
    let mut seen = HashSet::new();
    for n in 0..400 {
        let v = pattern(1, n as u32, n);
        q.put_ref(&v).unwrap();
        let m = q.get_ref().unwrap();
        let len = m.bytes().len();
        seen.insert(len);
        let in_arena = len > 64 && len <= 256;
        assert_eq!(
            q.arena_chunks_in_use(),
            usize::from(in_arena),
            "archive of {len} bytes"
        );
        assert_eq!(m.as_slice(), v.as_slice(), "payload of {n} bytes");
        drop(m);
        assert_eq!(q.arena_chunks_in_use(), 0);
        // The owned path too.
        q.put_ref(&v).unwrap();
        assert_eq!(q.get().unwrap(), v);
    }
    // Archive lengths of a Vec<u8> step by 4: every boundary was crossed both ways.
    for len in [60, 64, 68, 252, 256, 260] {
        assert!(seen.contains(&len), "no archive of {len} bytes");
    }

    // The default geometry: 224-byte slots, 64 KiB chunks; then a huge message.
    let q: Queue<Vec<u8>> = Queue::new().unwrap();
    assert_eq!(q.slot_size(), mproc_channel::DEFAULT_SLOT_SIZE);
    assert_eq!(q.chunk_size(), mproc_channel::DEFAULT_CHUNK_SIZE);
    let chunk = q.chunk_size();
    let sizes = (200..240)
        .chain(chunk - 24..chunk + 8)
        .chain([0, 1, 4 << 20]);
    for n in sizes {
        let v = pattern(2, n as u32, n);
        q.put(v.clone()).unwrap();
        let m = q.get_ref().unwrap();
        let len = m.bytes().len();
        let in_arena = len > 224 && len <= chunk;
        assert_eq!(q.arena_chunks_in_use(), usize::from(in_arena), "{len}");
        assert_eq!(m.as_slice(), v.as_slice());
    }
    assert_eq!(q.arena_chunks_in_use(), 0);
}

#[test]
fn builder_rejects_an_arena_out_of_range_and_can_turn_it_off() {
    let r: Result<Queue<u8>, _> = Queue::builder().chunk_size(2 << 30).build();
    assert!(r.is_err());
    let q: Queue<Vec<u8>> = Queue::builder().arena_chunks(0).build().unwrap();
    assert_eq!((q.arena_chunks(), q.chunk_size()), (0, 0));
    q.put(vec![5; 1000]).unwrap(); // a memfd of its own
    assert_eq!(q.get().unwrap(), vec![5; 1000]);
    // Never more chunks than slots.
    let q: Queue<Vec<u8>> = Queue::with_maxsize(3).unwrap();
    assert_eq!(q.arena_chunks(), 3);
}

#[test]
fn a_consumer_more_than_k_messages_behind_falls_back_and_loses_nothing() {
    let q: Queue<(u32, Vec<u8>)> = Queue::builder()
        .maxsize(64)
        .arena_chunks(4)
        .chunk_size(4096)
        .build()
        .unwrap();
    for i in 0..40u32 {
        q.put((i, pattern(0, i, 1000 + i as usize))).unwrap();
    }
    // The first four took the chunks; later ones found them busy (memfd path).
    assert_eq!(q.arena_chunks_in_use(), 4);
    for i in 0..40u32 {
        assert_eq!(q.get().unwrap(), (i, pattern(0, i, 1000 + i as usize)));
    }
    assert_eq!(q.arena_chunks_in_use(), 0);

    // A guard held across many puts: its chunk stays put, the others cycle.
    q.put((100, pattern(0, 100, 2000))).unwrap();
    let held = q.get_ref().unwrap();
    assert_eq!(held.1.as_slice(), pattern(0, 100, 2000).as_slice());
    for round in 0..5u32 {
        for i in 0..10u32 {
            q.put((i, pattern(round, i, 3000))).unwrap();
        }
        for i in 0..10u32 {
            assert_eq!(q.get().unwrap(), (i, pattern(round, i, 3000)));
        }
    }
    assert_eq!(held.1.as_slice(), pattern(0, 100, 2000).as_slice());
    assert_eq!(q.arena_chunks_in_use(), 1);
    drop(held);
    assert_eq!(q.arena_chunks_in_use(), 0);
}

type Mid = (u32, u32, Vec<u8>);

/// Message sizes a producer cycles through: inline, arena (small and large) and memfd.
const SIZES: [usize; 6] = [10, 200, 300, 3000, 20_000, 70_000];

fn mid_producer((q, id, n): (Queue<Mid>, u32, u32)) {
    for seq in 0..n {
        let size = SIZES[(seq as usize + id as usize) % SIZES.len()];
        q.put((id, seq, pattern(id, seq, size))).unwrap();
    }
}

/// Takes messages until `Closed`, checking each payload; returns (id, seq) in order.
fn mid_consumer(q: Queue<Mid>) -> Result<Vec<(u32, u32)>, String> {
    let mut got = Vec::new();
    loop {
        match q.get_timeout(Duration::from_secs(60)) {
            Ok((id, seq, v)) => {
                let size = SIZES[(seq as usize + id as usize) % SIZES.len()];
                if v != pattern(id, seq, size) {
                    return Err(format!("bad payload for {id}/{seq}"));
                }
                got.push((id, seq));
            }
            Err(GetError::Closed) => return Ok(got),
            Err(e) => return Err(format!("{e}")),
        }
    }
}

fn many_processes_mixed_sizes(q: Queue<Mid>) {
    let (producers, per) = (3u32, 240u32);
    let consumers: Vec<_> = (0..2).map(|_| start(mid_consumer, q.clone())).collect();
    let prods: Vec<_> = (0..producers)
        .map(|id| start(mid_producer, (q.clone(), id, per)))
        .collect();
    for mut p in prods {
        p.join().unwrap();
    }
    // Everything put is in the ring: close, so the consumers end after draining it.
    q.close();
    let mut all = HashSet::new();
    for mut c in consumers {
        let got = c.join().unwrap().unwrap();
        // FIFO per producer, as seen by each consumer.
        let mut last = vec![None; producers as usize];
        for &(id, seq) in &got {
            let prev = last[id as usize].replace(seq);
            assert!(prev < Some(seq), "producer {id}: {seq} after {prev:?}");
            assert!(all.insert((id, seq)), "duplicate {id}/{seq}");
        }
    }
    assert_eq!(all.len(), (producers * per) as usize, "lost messages");
    assert_eq!(q.arena_chunks_in_use(), 0);
}

#[test]
fn many_producers_and_consumers_with_mixed_sizes_keep_fifo_per_producer() {
    many_processes_mixed_sizes(Queue::with_maxsize(32).unwrap());
}

#[test]
fn many_processes_with_fewer_chunks_than_messages_in_flight() {
    many_processes_mixed_sizes(
        Queue::builder()
            .maxsize(32)
            .arena_chunks(5)
            .build()
            .unwrap(),
    );
}

#[test]
fn a_dead_producer_s_chunk_is_freed_with_its_slot() {
    let q: Queue<Vec<u8>> = Queue::with_maxsize(8).unwrap();
    let raw = ring_region(&q);
    let pid = u64::from(dead_pid());
    // That process claimed position 0 and its chunk, and died inside the chunk write.
    raw.atomic_u64(HEADER).unwrap().store(pid, Ordering::SeqCst);
    raw.atomic_u64(ENQ).unwrap().store(1, Ordering::SeqCst);
    raw.atomic_u64(owner_off(8, 0))
        .unwrap()
        .store(1, Ordering::SeqCst);
    // Half-written garbage in chunk 0 (the first page after the owner words).
    raw.write_bytes(4096, &[0xaa; 4096]).unwrap();
    assert_eq!(q.arena_chunks_in_use(), 1);
    q.put(vec![3; 1000]).unwrap(); // position 1, chunk 1
    let t = Instant::now();
    assert_eq!(
        q.get_timeout(Duration::from_secs(10)).unwrap(),
        vec![3; 1000]
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(q.arena_chunks_in_use(), 0);
    // The chunk of position 0 serves position 8.
    for i in 0..8u8 {
        q.put(vec![i; 500]).unwrap();
    }
    for i in 0..8u8 {
        assert_eq!(q.get().unwrap(), vec![i; 500]);
    }
    assert_eq!(q.arena_chunks_in_use(), 0);
}

#[test]
fn a_chunk_held_by_a_dead_consumer_is_taken_by_the_next_producer_of_it() {
    // 8 slots, 2 chunks: position 2 needs chunk 0 long before the ring laps to slot 0.
    let q: Queue<Vec<u8>> = Queue::builder().maxsize(8).arena_chunks(2).build().unwrap();
    let raw = ring_region(&q);
    let pid = u64::from(dead_pid());
    // A consumer took position 0 (a chunk message) and died holding it.
    raw.atomic_u64(HEADER)
        .unwrap()
        .store((1 << 32) | pid, Ordering::SeqCst);
    raw.atomic_u64(ENQ).unwrap().store(1, Ordering::SeqCst);
    raw.atomic_u64(DEQ).unwrap().store(1, Ordering::SeqCst);
    let owner0 = raw.atomic_u64(owner_off(8, 0)).unwrap();
    owner0.store(1, Ordering::SeqCst);
    q.put(vec![1; 1000]).unwrap(); // position 1: chunk 1
    q.put(vec![2; 1000]).unwrap(); // position 2: chunk 0, its holder is dead
    // Position 2's message is in chunk 0 (not yet released): owner = tag(2) = 3.
    assert_eq!(owner0.load(Ordering::SeqCst), 3);
    assert_eq!(q.get().unwrap(), vec![1; 1000]);
    assert_eq!(q.get().unwrap(), vec![2; 1000]);
    assert_eq!(owner0.load(Ordering::SeqCst), 0);
    assert_eq!(q.arena_chunks_in_use(), 0);
}

fn child_hold_mid((q, ready): (Queue<Vec<u8>>, Queue<u32>)) {
    let guard = q.get_ref().unwrap();
    assert_eq!(guard.len(), 5000);
    ready.put(1).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_consumer_killed_while_holding_a_chunk_loses_only_its_message() {
    let q: Queue<Vec<u8>> = Queue::with_maxsize(2).unwrap();
    let ready: Queue<u32> = Queue::new().unwrap();
    q.put(vec![1; 5000]).unwrap();
    q.put(vec![2; 5000]).unwrap();
    let mut holder = start(child_hold_mid, (q.clone(), ready.clone()));
    ready.get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(q.arena_chunks_in_use(), 2);
    holder.kill().unwrap();
    assert!(holder.join().is_err()); // killed
    assert_eq!(q.get().unwrap(), vec![2; 5000]);
    let t = Instant::now();
    // Needs the dead child's slot and chunk.
    q.put_timeout(vec![3; 5000], Duration::from_secs(20))
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(q.get().unwrap(), vec![3; 5000]);
    assert_eq!(q.arena_chunks_in_use(), 0);
}

#[test]
fn a_chunk_of_a_killed_consumer_returns_before_the_ring_laps() {
    // 64 slots, 2 chunks: the dead consumer's slot is far away, its chunk is not.
    let q: Queue<Vec<u8>> = Queue::builder()
        .maxsize(64)
        .arena_chunks(2)
        .build()
        .unwrap();
    let ready: Queue<u32> = Queue::new().unwrap();
    q.put(vec![1; 5000]).unwrap();
    let mut holder = start(child_hold_mid, (q.clone(), ready.clone()));
    ready.get_timeout(Duration::from_secs(60)).unwrap();
    holder.kill().unwrap();
    assert!(holder.join().is_err());
    assert_eq!(q.arena_chunks_in_use(), 1);
    for i in 0..10u8 {
        q.put(vec![i; 5000]).unwrap();
        let m = q.get_ref().unwrap();
        assert_eq!(m.as_slice(), vec![i; 5000].as_slice());
        // Each message took a chunk; position 2 took the dead consumer's back.
        let held = if i == 0 { 2 } else { 1 };
        assert_eq!(q.arena_chunks_in_use(), held, "message {i}");
    }
    assert_eq!(q.arena_chunks_in_use(), 0);
}

/// Puts numbered mid-size messages until killed.
fn endless_producer(q: Queue<Mid>) {
    for seq in 0.. {
        let size = 300 + (seq as usize * 977) % 6000;
        q.put((0, seq, pattern(0, seq, size))).unwrap();
    }
}

#[test]
fn producers_killed_mid_stream_leave_no_chunk_behind() {
    // Fewer chunks than slots, so busy chunks (memfd fallback) happen too.
    let q: Queue<Mid> = Queue::builder()
        .maxsize(16)
        .arena_chunks(8)
        .chunk_size(8192)
        .build()
        .unwrap();
    let mut total = 0;
    for round in 0..6u64 {
        let p = start(endless_producer, q.clone());
        // Let it run into a full queue, then consume while it is killed at a
        // varying moment (often inside a put: claim, chunk write or publish).
        let first = q.get_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(first.1, 0);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_micros(500 + round * 700));
            p.kill().unwrap();
            p
        });
        let mut last = 0;
        loop {
            match q.get_timeout(Duration::from_millis(300)) {
                Ok((_, seq, v)) => {
                    assert!(seq > last, "{seq} after {last}");
                    let size = 300 + (seq as usize * 977) % 6000;
                    assert!(v == pattern(0, seq, size), "payload of {seq}");
                    last = seq;
                    total += 1;
                }
                Err(GetError::Empty) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let mut p = killer.join().unwrap();
        assert!(p.join().is_err());
        assert_eq!(q.arena_chunks_in_use(), 0, "round {round}");
    }
    assert!(total > 0);
}

fn joinable_worker(q: JoinableQueue<Vec<u8>>) -> u32 {
    let mut n = 0;
    while let Ok(v) = q.get_timeout(Duration::from_secs(30)) {
        if v.is_empty() {
            q.task_done().unwrap();
            break;
        }
        assert!(v == pattern(9, v.len() as u32, v.len()));
        n += 1;
        q.task_done().unwrap();
    }
    n
}

fn simple_echo((q, back): (SimpleQueue<Vec<u8>>, SimpleQueue<Vec<u8>>)) {
    while let Ok(v) = q.get() {
        let stop = v.is_empty();
        back.put(v).unwrap();
        if stop {
            break;
        }
    }
}

#[test]
fn joinable_and_simple_queues_carry_mid_size_messages() {
    let q: JoinableQueue<Vec<u8>> = JoinableQueue::new().unwrap();
    let mut w = start(joinable_worker, q.clone());
    for n in (300..40_000).step_by(997) {
        q.put(pattern(9, n as u32, n)).unwrap();
    }
    q.put(Vec::new()).unwrap();
    assert!(q.join_timeout(Duration::from_secs(60)));
    assert_eq!(w.join().unwrap(), 40);
    assert_eq!(q.arena_chunks_in_use(), 0);

    let (to, back): (SimpleQueue<Vec<u8>>, SimpleQueue<Vec<u8>>) =
        (SimpleQueue::new().unwrap(), SimpleQueue::new().unwrap());
    let mut e = start(simple_echo, (to.clone(), back.clone()));
    for n in [225, 1000, 65_000, 70_000, 0] {
        to.put(pattern(3, 0, n)).unwrap();
        assert_eq!(back.get().unwrap(), pattern(3, 0, n));
    }
    e.join().unwrap();
}

fn child_read_mid_region(q: Queue<(Vec<u8>, Region)>) -> (bool, u32) {
    let (v, r) = q.get_timeout(Duration::from_secs(30)).unwrap();
    (
        v == pattern(4, 0, 3000),
        r.atomic_u32(0).unwrap().load(Ordering::Relaxed),
    )
}

#[test]
fn handles_travel_beside_a_mid_size_archive() {
    let q: Queue<(Vec<u8>, Region)> = Queue::new().unwrap();
    let mut c = start(child_read_mid_region, q.clone());
    let r = Region::new(4096).unwrap();
    r.atomic_u32(0).unwrap().store(77, Ordering::Relaxed);
    q.put((pattern(4, 0, 3000), r)).unwrap();
    assert_eq!(c.join().unwrap(), (true, 77));
    assert_eq!(q.arena_chunks_in_use(), 0);
}

#[test]
fn put_in_place_of_a_mid_size_message_goes_through_the_arena() {
    let q: Queue<Vec<u8>> = Queue::with_maxsize(4).unwrap();
    q.put_in_place(&pattern(5, 0, 1500)).unwrap();
    let m = q.get_ref().unwrap();
    assert_eq!(q.arena_chunks_in_use(), 1);
    assert_eq!(m.as_slice(), pattern(5, 0, 1500).as_slice());
}

fn child_get_u64(q: Queue<u64>) -> Result<u64, String> {
    q.get_timeout(Duration::from_secs(30))
        .map_err(|e| format!("{e}"))
}

#[test]
fn a_slot_written_as_another_type_is_a_type_mismatch() {
    let q: Queue<u64> = Queue::new().unwrap();
    let raw = ring_region(&q);
    for i in 1..=3 {
        q.put(i).unwrap();
    }
    // Slots 0 and 1 claim to hold another type.
    for slot in 0..2 {
        raw.atomic_u64(HEADER + slot * STRIDE_DEFAULT + S_TYPE)
            .unwrap()
            .fetch_xor(0x5a5a, Ordering::SeqCst);
    }
    match q.get() {
        Err(GetError::TypeMismatch(m)) => {
            assert_eq!(m.expected, "u64");
            assert!(m.found.contains("another message type"), "{}", m.found);
        }
        r => panic!("{r:?}"),
    }
    // In another process: the typed error, then the queue goes on.
    let err = start(child_get_u64, q.clone()).join().unwrap().unwrap_err();
    assert!(
        err.contains("type mismatch") && err.contains("u64"),
        "{err}"
    );
    assert_eq!(q.get().unwrap(), 3);
    q.put(4).unwrap();
    assert_eq!(start(child_get_u64, q.clone()).join().unwrap(), Ok(4));
}

"""CPython's side of the `sync` area: Lock acquire+release, two processes incrementing
a shared counter under a Lock, and an Event ping-pong between two processes.
Also RLock and Semaphore acquire+release, two processes incrementing a Value under its
own lock, a Condition ping-pong and Barrier(2) cycles between two processes.
Same workload names and units as xtask/bench/src/sync.rs."""
import multiprocessing as mp
import time

from common import emit, pick, rate, time_per_op, wants


def uncontended(samples):
    lock = mp.Lock()
    acquire, release = lock.acquire, lock.release

    def run(n):
        for _ in range(n):
            acquire()
            release()

    emit("lock.uncontended", "ns", time_per_op(samples, pick(2_000_000, 200_000), 1e-9, run))


def uncontended_other(samples, name, lock):
    acquire, release = lock.acquire, lock.release

    def run(n):
        for _ in range(n):
            acquire()
            release()

    emit(name, "ns", time_per_op(samples, pick(2_000_000, 200_000), 1e-9, run))


def _value_contender(v, start, n, out, slot):
    while not start.is_set():
        pass
    t0 = time.monotonic_ns()
    for _ in range(n):
        with v.get_lock():
            v.value += 1
    out[2 * slot] = t0
    out[2 * slot + 1] = time.monotonic_ns()


def value_contended(runs):
    n = pick(100_000, 20_000)
    rates = []
    for _ in range(runs):
        v = mp.Value("q", 0)
        start = mp.Event()
        out = mp.Array("q", 4, lock=False)
        ps = [mp.Process(target=_value_contender, args=(v, start, n, out, i)) for i in range(2)]
        for p in ps:
            p.start()
        time.sleep(0.05)
        start.set()
        for p in ps:
            p.join()
        assert v.value == 2 * n, v.value
        span = max(out[1], out[3]) - min(out[0], out[2])
        rates.append(2 * n / (max(span, 1) / 1e9))
    emit("value.contended_2p", "ops/s", rates)


def _cond_ponger(cond, turn, total):
    for _ in range(total):
        with cond:
            cond.wait_for(lambda: turn.value == 1)
            turn.value = 0
            cond.notify()


def cond_pingpong(samples):
    iters = pick(2_000, 500)
    cond, turn = mp.Condition(), mp.RawValue("i", 0)
    total = max(1, iters // 10) + samples * iters
    p = mp.Process(target=_cond_ponger, args=(cond, turn, total))
    p.start()

    def run(n):
        for _ in range(n):
            with cond:
                turn.value = 1
                cond.notify()
                cond.wait_for(lambda: turn.value == 0)

    emit("condition.pingpong", "us", time_per_op(samples, iters, 1e-6, run))
    p.join()


def _barrier_party(b, total):
    for _ in range(total):
        b.wait()


def barrier_cycles(samples):
    ops = pick(5_000, 1_000)
    b = mp.Barrier(2)
    total = max(1, ops // 10) + samples * ops
    p = mp.Process(target=_barrier_party, args=(b, total))
    p.start()

    def run(n):
        for _ in range(n):
            b.wait()

    emit("barrier.cycles_2p", "cycles/s", rate(samples, ops, run))
    p.join()


def _contender(lock, counter, start, n, out, slot):
    while not start.is_set():
        pass
    t0 = time.monotonic_ns()
    for _ in range(n):
        with lock:
            counter.value += 1
    out[2 * slot] = t0
    out[2 * slot + 1] = time.monotonic_ns()


def contended(runs):
    n = pick(100_000, 20_000)
    rates = []
    for _ in range(runs):
        lock = mp.Lock()
        counter = mp.Value("q", 0, lock=False)
        start = mp.Event()
        out = mp.Array("q", 4, lock=False)
        ps = [mp.Process(target=_contender, args=(lock, counter, start, n, out, i)) for i in range(2)]
        for p in ps:
            p.start()
        time.sleep(0.05)
        start.set()
        for p in ps:
            p.join()
        assert counter.value == 2 * n, counter.value
        span = max(out[1], out[3]) - min(out[0], out[2])
        rates.append(2 * n / (max(span, 1) / 1e9))
    emit("lock.contended_2p", "ops/s", rates)


def _ponger(ping, pong, total):
    for _ in range(total):
        ping.wait()
        ping.clear()
        pong.set()


def pingpong(samples):
    iters = pick(2_000, 500)
    ping, pong = mp.Event(), mp.Event()
    total = max(1, iters // 10) + samples * iters
    p = mp.Process(target=_ponger, args=(ping, pong, total))
    p.start()

    def run(n):
        for _ in range(n):
            ping.set()
            pong.wait()
            pong.clear()

    emit("event.pingpong", "us", time_per_op(samples, iters, 1e-6, run))
    p.join()


if __name__ == "__main__":
    samples = pick(9, 5)
    if wants("lock.uncontended"):
        uncontended(samples)
    if wants("lock.rlock_uncontended"):
        uncontended_other(samples, "lock.rlock_uncontended", mp.RLock())
    if wants("lock.semaphore_uncontended"):
        uncontended_other(samples, "lock.semaphore_uncontended", mp.Semaphore(1))
    if wants("lock.contended_2p"):
        contended(pick(5, 3))
    if wants("value.contended_2p"):
        value_contended(pick(5, 3))
    if wants("event.pingpong"):
        pingpong(samples)
    if wants("condition.pingpong"):
        cond_pingpong(samples)
    if wants("barrier.cycles_2p"):
        barrier_cycles(samples)

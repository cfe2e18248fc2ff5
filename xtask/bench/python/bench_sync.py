"""CPython's side of the `sync` area: Lock acquire+release, two processes incrementing
a shared counter under a Lock, and an Event ping-pong between two processes.
Same workload names and units as xtask/bench/src/sync.rs."""
import multiprocessing as mp
import time

from common import emit, pick, time_per_op


def uncontended(samples):
    lock = mp.Lock()
    acquire, release = lock.acquire, lock.release

    def run(n):
        for _ in range(n):
            acquire()
            release()

    emit("lock.uncontended", "ns", time_per_op(samples, pick(2_000_000, 200_000), 1e-9, run))


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
    uncontended(samples)
    contended(pick(5, 3))
    pingpong(samples)

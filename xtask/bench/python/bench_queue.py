"""CPython's side of the queue workloads: multiprocessing.Queue between this process and
one child (fork context, the cheapest to start; the workloads do not depend on it)."""
import multiprocessing as mp

from common import emit, pick, rate, time_per_op, wants

STOP = -1
MIB = 1 << 20


def echo(ping, pong):
    while True:
        v = ping.get()
        if v == STOP:
            break
        pong.put(v)


def producer(go, data, payload):
    while True:
        n = go.get()
        if n == STOP:
            break
        for i in range(n):
            data.put(payload if payload is not None else i)


def pingpong(ctx):
    ping, pong = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=echo, args=(ping, pong))
    p.start()

    def run(n):
        for i in range(n):
            ping.put(i)
            pong.get()

    s = time_per_op(pick(10, 5), pick(5000, 1000), 1e-6, run)
    ping.put(STOP)
    p.join()
    emit("queue.pingpong", "µs", s)


def stream(ctx, workload, unit, ops, payload, scale, kind="Queue"):
    if not wants(workload):
        return
    go, data = ctx.Queue(), getattr(ctx, kind)()
    p = ctx.Process(target=producer, args=(go, data, payload))
    p.start()

    def run(n):
        go.put(n)
        for _ in range(n):
            data.get()

    s = rate(pick(10, 5), ops, run)
    go.put(STOP)
    p.join()
    emit(workload, unit, [x * scale for x in s])


def main():
    ctx = mp.get_context("fork")
    if wants("queue.pingpong"):
        pingpong(ctx)
    stream(ctx, "queue.small_throughput", "msg/s", pick(200_000, 40_000), None, 1.0)
    stream(ctx, "queue.simplequeue_small_throughput", "msg/s", pick(200_000, 40_000), None, 1.0,
           kind="SimpleQueue")
    stream(ctx, "queue.mid_512b_throughput", "msg/s", pick(200_000, 40_000), bytes(512), 1.0)
    stream(ctx, "queue.mid_1kib_throughput", "msg/s", pick(200_000, 40_000), bytes(1024), 1.0)
    stream(ctx, "queue.mid_8kib_throughput", "msg/s", pick(100_000, 20_000), bytes(8192), 1.0)
    stream(ctx, "queue.bw_1mib", "GB/s", pick(500, 100), bytes(MIB), MIB / 1e9)


if __name__ == "__main__":
    main()

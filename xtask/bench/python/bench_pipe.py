"""CPython's side of the pipe workloads: multiprocessing.Pipe between this process and
one child (fork context; the workloads do not depend on it).

- pipe.pingpong: an int sent and echoed back (pickled), µs per round trip.
- pipe.bw_1mib: 1 MiB send_bytes one way, recv_bytes on the other, GB/s.
- pipe.bw_64mib_one: one 64 MiB send_bytes at a time, acknowledged before the next, GB/s.
"""
import multiprocessing as mp

from common import emit, pick, rate, time_per_op, wants

MIB = 1 << 20


def echo(conn):
    while True:
        try:
            v = conn.recv()
        except EOFError:
            break
        if v is None:
            break
        conn.send(v)


def sink(conn):
    while True:
        try:
            b = conn.recv_bytes()
        except EOFError:
            break
        if b == b"stop":
            break
        if not b:
            conn.send_bytes(b"")


def pingpong(ctx):
    a, b = ctx.Pipe(True)
    p = ctx.Process(target=echo, args=(b,))
    p.start()

    def run(n):
        for i in range(n):
            a.send(i)
            a.recv()

    s = time_per_op(pick(15, 5), pick(20_000, 5_000), 1e-6, run)
    a.send(None)
    p.join()
    emit("pipe.pingpong", "µs", s)


def bandwidth(ctx):
    a, b = ctx.Pipe(True)
    p = ctx.Process(target=sink, args=(b,))
    p.start()
    payload = bytes(MIB)

    def run(n):
        for _ in range(n):
            a.send_bytes(payload)
        a.send_bytes(b"")
        a.recv_bytes()

    s = rate(pick(10, 5), pick(1_000, 200), run)
    a.send_bytes(b"stop")
    p.join()
    emit("pipe.bw_1mib", "GB/s", [x * MIB / 1e9 for x in s])


def acker(conn, size):
    while True:
        try:
            b = conn.recv_bytes()
        except EOFError:
            break
        if len(b) != size:
            break
        del b
        conn.send_bytes(b"")


def one_big(ctx):
    size = 64 * MIB
    a, b = ctx.Pipe(True)
    p = ctx.Process(target=acker, args=(b, size))
    p.start()
    payload = bytes(size)

    def run(n):
        for _ in range(n):
            a.send_bytes(payload)
            a.recv_bytes()

    s = rate(pick(7, 3), pick(3, 1), run)
    a.send_bytes(b"stop")
    p.join()
    emit("pipe.bw_64mib_one", "GB/s", [x * size / 1e9 for x in s])


def main():
    ctx = mp.get_context("fork")
    if wants("pipe.pingpong"):
        pingpong(ctx)
    if wants("pipe.bw_1mib"):
        bandwidth(ctx)
    if wants("pipe.bw_64mib_one"):
        one_big(ctx)


if __name__ == "__main__":
    main()

"""CPython's side of the `shm` area: SharedMemory create + close + unlink (4 KiB), a
child writing 256 MiB (32 MiB with --quick) into a new SharedMemory that the parent then
reads (process start included), Value('d') += 1 under its lock, and RawValue('d') += 1.
Same workload names and units as xtask/bench/src/shm.rs."""
import multiprocessing as mp
import time
from multiprocessing import shared_memory

from common import emit, pick, rate, time_per_op

CHUNK = 1 << 20


def create_unlink(samples):
    def run(n):
        for _ in range(n):
            shm = shared_memory.SharedMemory(create=True, size=4096)
            shm.close()
            shm.unlink()

    emit("shm.create_unlink", "µs", time_per_op(samples, pick(2_000, 300), 1e-6, run))


def _writer(name, size):
    shm = shared_memory.SharedMemory(name=name)
    src = bytes(i & 0xFF for i in range(CHUNK))
    buf = shm.buf
    for off in range(0, size, CHUNK):
        n = min(CHUNK, size - off)
        buf[off:off + n] = src[:n]
    del buf
    shm.close()


def bandwidth(samples):
    size = pick(256 << 20, 32 << 20)
    out = []
    for i in range(samples + 1):
        t = time.perf_counter()
        shm = shared_memory.SharedMemory(create=True, size=size)
        p = mp.Process(target=_writer, args=(shm.name, size))
        p.start()
        p.join()
        dst = bytearray(CHUNK)
        buf = shm.buf
        for off in range(0, size, CHUNK):
            n = min(CHUNK, size - off)
            dst[:n] = buf[off:off + n]
        del buf
        shm.close()
        shm.unlink()
        if i:
            out.append(size / (time.perf_counter() - t) / 1e9)
    emit("shm.bw", "GB/s", out)


def locked_incr(samples):
    v = mp.Value("d", 0.0)

    def run(n):
        for _ in range(n):
            v.value += 1

    emit("value.locked_incr", "ops/s", rate(samples, pick(1_000_000, 200_000), run))


def raw_incr(samples):
    v = mp.RawValue("d", 0.0)

    def run(n):
        for _ in range(n):
            v.value += 1

    emit("rawvalue.incr", "ops/s", rate(samples, pick(5_000_000, 500_000), run))


if __name__ == "__main__":
    import sys

    flt = sys.argv[sys.argv.index("--filter") + 1] if "--filter" in sys.argv else ""
    if flt in "shm.create_unlink":
        create_unlink(pick(15, 5))
    if flt in "shm.bw":
        bandwidth(pick(5, 3))
    if flt in "value.locked_incr":
        locked_incr(pick(15, 5))
    if flt in "rawvalue.incr":
        raw_incr(pick(15, 5))

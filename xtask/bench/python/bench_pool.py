"""Area `pool`: CPython's multiprocessing.Pool and ProcessPoolExecutor on the same
workloads as xtask/bench/src/pool.rs (Pool(2), default start method)."""
import concurrent.futures
import multiprocessing as mp
import multiprocessing.pool
import time

from common import emit, pick, rate, time_per_op, wants


def square(x):
    return x * x


def burn(iters):
    x = 0x9E3779B97F4A7C15 ^ iters
    m = (1 << 64) - 1
    for _ in range(iters):
        x ^= (x << 13) & m
        x ^= x >> 7
        x ^= (x << 17) & m
    return x


def calibrate(ms):
    n = 1000
    while True:
        t = time.perf_counter()
        burn(n)
        el = (time.perf_counter() - t) * 1e3
        if el > 20:
            return int(n * ms / el)
        n *= 2


def startup(method, samples):
    """ms from Pool(2) creation with `method` to the first result of apply (shutdown untimed)."""
    ctx = mp.get_context(method)
    out = []
    for i in range(samples + 1):
        t = time.perf_counter()
        pool = ctx.Pool(2)
        assert pool.apply(square, (3,)) == 9
        ms = (time.perf_counter() - t) * 1e3
        pool.terminate()
        pool.join()
        if i:  # the first is a warm-up (it also starts the forkserver)
            out.append(ms)
    return out


def main():
    samples = pick(5, 3)
    for method in ["fork", "spawn", "forkserver"]:
        name = "pool.startup_first_result_" + method
        if wants(name):
            emit(name, "ms", startup(method, pick(7, 3)))
    with mp.Pool(2) as pool:
        for name, cs, n in [
            ("pool.map_trivial_c1", 1, pick(100_000, 20_000)),
            ("pool.map_trivial_cdefault", None, 100_000),
            ("pool.map_trivial_c1000", 1000, 100_000),
        ]:
            if wants(name):
                s = rate(samples, n, lambda k: pool.map(square, range(k), cs))
                emit(name, "items/s", s)
        if wants("pool.imap_c1000"):
            s = rate(samples, 100_000, lambda k: list(pool.imap(square, range(k), 1000)))
            emit("pool.imap_c1000", "items/s", s)
        for name, cs, n in [
            ("pool.imap_unordered_c1", 1, pick(20_000, 5_000)),
            ("pool.imap_unordered_c1000", 1000, 100_000),
        ]:
            if wants(name):
                s = rate(samples, n, lambda k: list(pool.imap_unordered(square, range(k), cs)))
                emit(name, "items/s", s)
        if wants("pool.threadpool_map_c1000"):
            with multiprocessing.pool.ThreadPool(2) as tpool:
                s = rate(samples, 1_000_000, lambda k: tpool.map(square, range(k), 1000))
                emit("pool.threadpool_map_c1000", "items/s", s)
        with concurrent.futures.ProcessPoolExecutor(2) as ex:
            for name, cs, n in [
                ("pool.executor_map_c1", 1, pick(5_000, 1_000)),
                ("pool.executor_map_c1000", 1000, 100_000),
            ]:
                if wants(name):
                    s = rate(min(samples, 3), n, lambda k: list(ex.map(square, range(k), chunksize=cs)))
                    emit(name, "items/s", s)
        if wants("pool.apply_async_rtt"):
            iters = pick(2000, 300)
            s = time_per_op(
                samples, iters, 1e-6,
                lambda k: [pool.apply_async(square, (i,)).get() for i in range(k)],
            )
            emit("pool.apply_async_rtt", "us", s)

        if not (wants("pool.cpu_bound_speedup") or wants("pool.cpu_bound_speedup_executor")):
            return
        iters = calibrate(20.0)
        tasks = [iters] * 40
        par, exe = [], []
        with concurrent.futures.ProcessPoolExecutor(2) as ex:
            for _ in range(pick(3, 2)):
                t = time.perf_counter()
                [burn(i) for i in tasks]
                seq = time.perf_counter() - t
                t = time.perf_counter()
                pool.map(burn, tasks, 1)
                par.append(seq / (time.perf_counter() - t))
                t = time.perf_counter()
                fs = [ex.submit(burn, i) for i in tasks]
                [f.result() for f in fs]
                exe.append(seq / (time.perf_counter() - t))
        emit("pool.cpu_bound_speedup", "x", par)
        emit("pool.cpu_bound_speedup_executor", "x", exe)


if __name__ == "__main__":
    main()

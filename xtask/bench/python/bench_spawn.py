"""CPython's side of the process start workloads: start + join of a no-op
multiprocessing.Process under each start method, in microseconds."""
import multiprocessing as mp

from common import emit, pick, time_per_op, wants


def noop():
    pass


def start_join(ctx, n):
    for _ in range(n):
        p = ctx.Process(target=noop)
        p.start()
        p.join()


def main():
    for method, iters in (("fork", pick(200, 50)), ("spawn", pick(20, 5)), ("forkserver", pick(100, 30))):
        if not wants("start." + method):
            continue
        ctx = mp.get_context(method)
        s = time_per_op(pick(7, 3), iters, 1e-6, lambda n: start_join(ctx, n))
        emit("start." + method, "us", s)


if __name__ == "__main__":
    main()

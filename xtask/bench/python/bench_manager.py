"""CPython's side of the manager workloads: multiprocessing.Manager() (its server is a
child process; proxies talk to it over a Unix socket, as mproc's do).

- manager.list_append: manager.list().append(i), µs per call.
- manager.list_len: len(manager_list), µs per call.
"""
import multiprocessing as mp

from common import emit, pick, time_per_op


def main():
    ctx = mp.get_context("fork")
    with ctx.Manager() as m:
        lst = m.list()

        def append(n):
            for i in range(n):
                lst.append(i)
            del lst[:]

        emit("manager.list_append", "µs", time_per_op(pick(15, 5), pick(20_000, 3_000), 1e-6, append))
        lst.append(1)

        def length(n):
            for _ in range(n):
                len(lst)

        emit("manager.list_len", "µs", time_per_op(pick(15, 5), pick(20_000, 3_000), 1e-6, length))


if __name__ == "__main__":
    main()

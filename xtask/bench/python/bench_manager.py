"""CPython's side of the manager workloads: multiprocessing.Manager() (its server is a
child process; proxies talk to it over a Unix socket, as mproc's do).

- manager.list_append: manager.list().append(i), µs per call.
- manager.list_len: len(manager_list), µs per call.
- manager.dict_setget_child: a child process alternates d[k] = v and d[k] on a
  manager dict, µs per operation.
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

        d = m.dict()
        parent, child = ctx.Pipe()
        p = ctx.Process(target=dict_child, args=(d, child))
        p.start()

        def setget(n):
            parent.send(n)
            assert parent.recv() == n

        emit("manager.dict_setget_child", "µs", time_per_op(pick(15, 5), pick(20_000, 3_000), 1e-6, setget))
        parent.send(None)
        p.join()


def dict_child(d, conn):
    while True:
        n = conn.recv()
        if n is None:
            return
        # Even steps set key (i % 64) to i, odd steps read it back.
        for i in range(n):
            if i % 2 == 0:
                d[i % 64] = i
            else:
                assert d[(i - 1) % 64] == i - 1
        conn.send(n)


if __name__ == "__main__":
    from common import wants

    if any(wants(w) for w in ("manager.list_append", "manager.list_len", "manager.dict_setget_child")):
        main()

"""mpi4py.futures' side of the `mpi.` rows: run under `mpirun -n 3` (rank 0 submits, the
other 2 ranks serve, as mproc-mpi's SPMD pool does). `cargo xtask bench` installs mpi4py
with pip when it is missing.

- mpi.map_trivial_c1000 (items/s): MPICommExecutor.map of x*x over 1,000,000 integers,
  chunksize 1000;
- mpi.apply_rtt (us per submit + result of a trivial task, one at a time).
"""
import sys

from mpi4py import MPI
from mpi4py.futures import MPICommExecutor

from common import emit, pick, rate, time_per_op

FILTER = sys.argv[sys.argv.index("--filter") + 1] if "--filter" in sys.argv else None


def wants(w):
    return FILTER is None or FILTER in w


def square(x):
    return x * x


def main():
    with MPICommExecutor(MPI.COMM_WORLD, root=0) as ex:
        if ex is None:
            return
        samples = pick(5, 3)
        n = pick(1_000_000, 200_000)
        if wants("mpi.map_trivial_c1000"):
            s = rate(samples, n, lambda k: list(ex.map(square, range(k), chunksize=1000)))
            emit("mpi.map_trivial_c1000", "items/s", s, impl="mpi4py")
        if wants("mpi.apply_rtt"):
            iters = pick(2000, 500)
            s = time_per_op(
                samples,
                iters,
                1e-6,
                lambda k: [ex.submit(square, i).result() for i in range(k)],
            )
            emit("mpi.apply_rtt", "us", s, impl="mpi4py")


if __name__ == "__main__":
    main()

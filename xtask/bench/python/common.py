"""Timing helpers shared by the CPython benchmark scripts."""
import json
import statistics
import sys
import time

QUICK = "--quick" in sys.argv
FILTER = sys.argv[sys.argv.index("--filter") + 1] if "--filter" in sys.argv[:-1] else ""


def wants(workload):
    """Whether a workload of this name should run (its name contains --filter's value)."""
    return FILTER in workload


def pick(full, quick):
    return quick if QUICK else full


def emit(workload, unit, samples, impl="cpython"):
    s = sorted(x for x in samples if x == x)
    rec = {
        "workload": workload,
        "impl": impl,
        "unit": unit,
        "median": statistics.median(s) if s else None,
        "min": s[0] if s else None,
        "max": s[-1] if s else None,
    }
    print(json.dumps(rec), flush=True)


def time_per_op(samples, iters, per, fn):
    """fn(n) performs n operations; returns time per op of each sample in `per` units."""
    fn(max(1, iters // 10))
    out = []
    for _ in range(samples):
        t = time.perf_counter()
        fn(iters)
        out.append((time.perf_counter() - t) / iters / per)
    return out


def rate(samples, ops, fn):
    """fn(n) performs n operations; returns ops/s of each sample."""
    fn(max(1, ops // 10))
    out = []
    for _ in range(samples):
        t = time.perf_counter()
        fn(ops)
        out.append(ops / max(time.perf_counter() - t, 1e-9))
    return out

"""Harness overhead: an 8-rank process world end to end, and very large worlds.

    python benchmarks/harness.py [--rounds 20] [--big]

For each store it measures ``run_world`` of 8 process ranks that open the store, meet at a
barrier and return (start, rendezvous, teardown), with the store's endpoint already up ("warm"),
and prints the median against the target (0.15 s) and against a reference measured in the same
run: 8 bare ``multiprocess`` fork+join of processes that do nothing.  ``--big`` also runs a
256-process world and a 1024-thread world to completion and reports their wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import multiprocess

from storeharness.harness import Endpoint, Fate, RankContext, run_world, targets

TARGET = 0.15


def _meet(ctx: RankContext) -> int:
    assert ctx.world_size is not None
    ctx.store.barrier("met", ctx.world_size)
    return ctx.rank


def _nothing() -> None:
    return None


def bare_forks(n: int) -> float:
    ctx = multiprocess.get_context("fork")
    start = time.perf_counter()
    procs = [ctx.Process(target=_nothing) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return time.perf_counter() - start


def world_once(endpoint: Endpoint, n: int, workers: str) -> float:
    start = time.perf_counter()
    result = run_world(_meet, n, endpoint.opener(), workers, time_limit=600)
    spent = time.perf_counter() - start
    bad = [r.describe() for r in result if r.fate is not Fate.RETURNED]
    if bad:
        raise SystemExit(f"world of {n} {workers} ranks failed: {bad[:3]}")
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--big", action="store_true", help="also 256 processes, 1024 threads")
    args = parser.parse_args()
    print(f"8-rank process world, end to end, median of {args.rounds} (warm endpoint)")
    print(f"{'store':<8} {'median':>9} {'target':>8} {'bare 8 forks':>13} {'ratio':>7}")
    with tempfile.TemporaryDirectory(prefix="storeharness-bench-") as tmp:
        for name in ("tcp", "file"):
            with targets.start(name, Path(tmp) / name, timeout=60) as endpoint:
                world_once(endpoint, 8, "process")  # warm: imports, page cache, server
                worlds, bares = [], []
                for _ in range(args.rounds):
                    worlds.append(world_once(endpoint, 8, "process"))
                    bares.append(bare_forks(8))
                med, ref = statistics.median(worlds), statistics.median(bares)
                verdict = "met" if med <= TARGET else "MISSED"
                print(
                    f"{name:<8} {med * 1000:>7.1f}ms {TARGET * 1000:>6.0f}ms {ref * 1000:>11.1f}ms "
                    f"{med / ref:>6.2f}x  {verdict}"
                )
        if args.big:
            big = [("tcp", 256, "process"), ("file", 256, "process"),
                   ("tcp", 1024, "thread"), ("hash", 1024, "thread")]  # fmt: skip
            for name, n, workers in big:
                with targets.start(name, Path(tmp) / f"big-{name}-{n}", timeout=600) as endpoint:
                    spent = world_once(endpoint, n, workers)
                print(f"{n} {workers} ranks on {name}: completed in {spent:.2f} s")


if __name__ == "__main__":
    main()

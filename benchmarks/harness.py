"""Harness overhead: an endpoint's start, an 8-rank process world end to end, very large worlds.

    python benchmarks/harness.py [--rounds 20] [--big] [--endpoints-only]

Endpoint start (what every scenario case pays before its world runs): the median time to bring
up a ``tcp`` endpoint (its server, its run mark) and close it, with the server forked from the
pre-imported template (what the harness does) against a server started as a fresh interpreter
(``python -m storeharness.stores.tcp``, what it did before), measured alternately in the same
run; likewise torch's server (``torch-tcp``) when torch is installed.

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
from storeharness.harness.targets import server as server_targets
from storeharness.harness.targets import torch as torch_targets
from storeharness.stores.tcp import ServerProcess

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


def endpoint_once(target: targets.Target, workdir: Path) -> float:
    start = time.perf_counter()
    with target.start(workdir, timeout=60):
        pass
    return time.perf_counter() - start


def _fresh(target: targets.Target, serve: object) -> targets.Target:
    """``target`` with its server started by ``serve`` instead (same spec, same client)."""
    assert isinstance(target, server_targets.ServerTarget)
    return server_targets.ServerTarget(target.spec, serve, target.client)  # type: ignore[arg-type]


def endpoints(rounds: int, tmp: Path) -> None:
    print(f"endpoint start + close, median of {rounds} (alternating, same run)")
    print(f"{'store':<10} {'fresh process':>14} {'fork server':>12} {'speed-up':>9}")
    pairs = [("tcp", ServerProcess)]
    if targets.torch_missing() is None:
        pairs.append(("torch-tcp", torch_targets.TorchServer))
    for name, fresh_server in pairs:
        forked, fresh = targets.get(name), _fresh(targets.get(name), fresh_server)
        endpoint_once(forked, tmp / f"warm-{name}")  # start the template once, as a run does
        endpoint_once(fresh, tmp / f"warm-fresh-{name}")
        a, b = [], []
        for i in range(rounds):
            b.append(endpoint_once(fresh, tmp / f"fresh-{name}-{i}"))
            a.append(endpoint_once(forked, tmp / f"forked-{name}-{i}"))
        med_a, med_b = statistics.median(a), statistics.median(b)
        print(f"{name:<10} {med_b * 1000:>12.1f}ms {med_a * 1000:>10.1f}ms {med_b / med_a:>8.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--big", action="store_true", help="also 256 processes, 1024 threads")
    parser.add_argument("--endpoints-only", action="store_true", help="only endpoint start")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="storeharness-bench-") as tmp:
        endpoints(args.rounds, Path(tmp))
    if args.endpoints_only:
        return
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

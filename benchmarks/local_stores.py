"""Latency of set/get/add/check on HashStore and FileStore, beside torch's, in one run.

    python benchmarks/local_stores.py [--ops 20000] [--rounds 7] [--dir DIR] [--json FILE]
                                      [--baseline CHECKOUT]

Rounds alternate ours and torch's so that drift on a noisy machine hits both alike; each figure
is the median over rounds of the mean µs/op within a round.  Ratios are ours / torch (lower is
better).  Without torch installed, only our figures are printed.  Targets (issue 2): FileStore
set/get within 2x of torch's, HashStore within 5x.  ``multi_set`` sets 10 keys per call (µs per
call).  ``file add, 4 procs`` is the wall time (ms) of 4 processes doing 500 ``add``s each on
one file: contention for the file lock.  ``--baseline CHECKOUT`` also measures the FileStore of
another checkout of this repository (e.g. ``main``'s) in the same rounds: ours / baseline.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storeharness.stores import FileStore, HashStore

OPS = ("set", "get", "add", "check", "multi_set")
TARGETS = {"hash": 5.0, "file": 2.0}


def make_ops(store: Any, n: int) -> dict[str, Callable[[], None]]:
    keys = [f"key{i % 100}" for i in range(n)]
    value = b"v" * 32
    store.set("present", value)
    store.set("counter", "0")

    def do_set() -> None:
        s = store.set
        for k in keys:
            s(k, value)

    def do_get() -> None:
        g = store.get
        for _ in keys:
            g("present")

    def do_add() -> None:
        a = store.add
        for _ in keys:
            a("counter", 1)

    def do_check() -> None:
        c = store.check
        probe = ["present"]
        for _ in keys:
            c(probe)

    batch = [f"mkey{i}" for i in range(10)]
    values = [value] * 10

    def do_multi_set() -> None:
        m = store.multi_set
        for _ in keys:
            m(batch, values)

    return {
        "set": do_set,
        "get": do_get,
        "add": do_add,
        "check": do_check,
        "multi_set": do_multi_set,
    }


def measure(store: Any, n: int) -> dict[str, float]:
    ops = make_ops(store, n)
    out = {}
    for name in OPS:
        start = time.perf_counter()
        ops[name]()
        out[name] = (time.perf_counter() - start) / n * 1e6
    return out


def contended_adds(make: Callable[[], Any], procs: int = 4, n: int = 500) -> float:
    """Wall ms for ``procs`` forked processes to do ``n`` adds each on one store."""
    go_r, go_w = os.pipe()
    pids = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                store = make()
                os.read(go_r, 1)
                for _ in range(n):
                    store.add("counter", 1)
            finally:
                os._exit(0)
        pids.append(pid)
    start = time.perf_counter()
    os.write(go_w, b"x" * procs)
    for pid in pids:
        os.waitpid(pid, 0)
    elapsed = (time.perf_counter() - start) * 1e3
    os.close(go_r)
    os.close(go_w)
    return elapsed


def load_baseline(checkout: str) -> Any:
    """Import ``checkout``'s ``stores`` package under another name, beside ours."""
    root = Path(checkout) / "stores"
    spec = importlib.util.spec_from_file_location(
        "_baseline_stores", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"--baseline: no stores package in {checkout!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def factories(tmp: str, baseline: Any = None) -> dict[str, dict[str, Callable[[int], Any]]]:
    result: dict[str, dict[str, Callable[[int], Any]]] = {
        "hash": {"ours": lambda i: HashStore()},
        "file": {"ours": lambda i: FileStore(f"{tmp}/ours-{i}")},
    }
    if baseline is not None:
        result["file"]["baseline"] = lambda i: baseline.FileStore(f"{tmp}/baseline-{i}")
    try:
        import torch.distributed as dist
    except ImportError:
        return result
    result["hash"]["torch"] = lambda i: dist.HashStore()
    result["file"]["torch"] = lambda i: dist.FileStore(f"{tmp}/torch-{i}", -1)
    return result


def run(n: int, rounds: int, tmp: str, baseline: Any = None) -> dict[str, Any]:
    table: dict[str, dict[str, dict[str, list[float]]]] = {}
    for kind, impls in factories(tmp, baseline).items():
        table[kind] = {impl: {op: [] for op in OPS} for impl in impls}
        for r in range(rounds):
            for impl, make in impls.items():
                store = make(r)
                for op, us in measure(store, n).items():
                    table[kind][impl][op].append(us)
                del store
    contended: dict[str, list[float]] = {impl: [] for impl in factories(tmp, baseline)["file"]}
    for r in range(rounds):
        for impl, make in factories(tmp, baseline)["file"].items():
            contended[impl].append(contended_adds(functools.partial(make, 1000 + r)))
    medians = {
        kind: {
            impl: {op: statistics.median(v) for op, v in ops.items()} for impl, ops in impls.items()
        }
        for kind, impls in table.items()
    }
    return {
        "ops_per_round": n,
        "rounds": rounds,
        "median_us_per_op": medians,
        "file_add_4_procs_ms": {impl: statistics.median(v) for impl, v in contended.items()},
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"median µs/op over {result['rounds']} rounds of {result['ops_per_round']} ops "
        "(ratio = ours/torch, lower is better; vs base = ours/baseline)",
        "",
        f"{'store':<6} {'op':<9} {'ours':>9} {'torch':>9} {'ratio':>7} {'target':>7} "
        f"{'baseline':>9} {'vs base':>7}",
    ]
    for kind, impls in result["median_us_per_op"].items():
        for op in OPS:
            ours = impls["ours"][op]
            torch_us = impls.get("torch", {}).get(op)
            ratio = "" if torch_us is None else f"{ours / torch_us:.2f}x"
            target = f"{TARGETS[kind]:.0f}x" if op in ("set", "get") or kind == "hash" else ""
            shown = "-" if torch_us is None else f"{torch_us:.2f}"
            base = impls.get("baseline", {}).get(op)
            based = "" if base is None else f"{base:>9.2f} {ours / base:>6.2f}x"
            lines.append(
                f"{kind:<6} {op:<9} {ours:>9.2f} {shown:>9} {ratio:>7} {target:>7} {based}".rstrip()
            )
    wall = result["file_add_4_procs_ms"]
    ours = wall["ours"]
    torch_ms = wall.get("torch")
    base = wall.get("baseline")
    lines.append(
        f"file add, 4 procs (ms): ours {ours:.1f}"
        + ("" if torch_ms is None else f", torch {torch_ms:.1f} ({ours / torch_ms:.2f}x)")
        + ("" if base is None else f", baseline {base:.1f} ({ours / base:.2f}x)")
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20000, help="operations per round (20000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per store (7)")
    parser.add_argument("--dir", help="where FileStore files go (default: a new temp dir)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--baseline", metavar="CHECKOUT", help="also measure this checkout's FileStore"
    )
    args = parser.parse_args()
    baseline = load_baseline(args.baseline) if args.baseline else None
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = run(args.ops, args.rounds, tmp, baseline)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""What torch pays to call our store through as_torch_store, beside torch's own HashStore.

    python benchmarks/torch_compat.py [--ops 5000] [--rounds 7]

Each operation is called the way gloo calls it: on torch's C++ ``PrefixStore``, which calls
down into the store beneath (for ours: C++ → pybind11 trampoline → our Python → our HashStore).
The reference is torch's C++ HashStore under the same PrefixStore, measured in the same run;
rounds alternate the two so drift on a noisy machine hits both alike.  Figures are the median
over rounds of the mean µs/op; the ratio is ours / torch's (lower is better).  Also printed: a
gloo process group of 3 threads set up over each (median ms).  No target: this shows the cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storeharness.stores import HashStore
from storeharness.stores.torch_compat import as_torch_store


def ops(store: Any, n: int) -> dict[str, Callable[[], None]]:
    value = b"v" * 32
    store.set("present", value)

    def do_set() -> None:
        for i in range(n):
            store.set(f"k{i % 100}", value)

    def do_get() -> None:
        for _ in range(n):
            store.get("present")

    def do_add() -> None:
        for _ in range(n):
            store.add("counter", 1)

    def do_wait() -> None:
        for _ in range(n):
            store.wait(["present"])

    return {"set": do_set, "get": do_get, "add": do_add, "wait": do_wait}


def gloo_setup_ms(dist: Any, make: Callable[[], Any], world_size: int = 3) -> float:
    store = make()
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            dist.ProcessGroupGloo(dist.PrefixStore("g", store), r, world_size, timedelta(30))
        except BaseException as exc:
            errors.append(exc)

    start = time.perf_counter()
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/torch_compat.py")
    parser.add_argument("--ops", type=int, default=5000, help="operations per round and op")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (median taken)")
    args = parser.parse_args()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's store-taking constructor reads it
    import torch.distributed as _dist

    dist: Any = _dist  # partly untyped (pybind11)

    ours_backing: list[HashStore] = []

    def ours() -> Any:
        ours_backing.append(HashStore())
        return as_torch_store(ours_backing[-1])

    makers = {"ours": ours, "torch": dist.HashStore}
    samples: dict[tuple[str, str], list[float]] = {}
    setup: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(args.rounds):
        for name, make in makers.items():
            for op, fn in ops(dist.PrefixStore("p", make()), args.ops).items():
                start = time.perf_counter()
                fn()
                spent = (time.perf_counter() - start) / args.ops * 1e6
                samples.setdefault((name, op), []).append(spent)
            setup[name].append(gloo_setup_ms(dist, make))
    for store in ours_backing:
        store.close()
    print(f"µs/op through torch's C++ PrefixStore, median of {args.rounds} rounds")
    print(f"{'op':6} {'ours':>9} {'torch':>9} {'ratio':>7}")
    for op in ("set", "get", "add", "wait"):
        mine = statistics.median(samples[("ours", op)])
        theirs = statistics.median(samples[("torch", op)])
        print(f"{op:6} {mine:9.2f} {theirs:9.2f} {mine / theirs:7.1f}x")
    mine, theirs = statistics.median(setup["ours"]), statistics.median(setup["torch"])
    print(f"gloo group of 3 threads, setup ms: ours {mine:.1f}, torch {theirs:.1f}, "
          f"ratio {mine / theirs:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

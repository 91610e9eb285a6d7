"""EtcdStore against raw etcd-sdk-python calls, and against torch's v2 EtcdStore, in one run.

    python benchmarks/etcd_store.py [--ops 500] [--rounds 5]

One etcd member (3.4/3.5, ``--enable-v2`` so torch's v2 store runs on the same server), its data
dir on tmpfs when there is one.  Two measures, each a median over rounds of the mean per
operation, all in threads of this process; the clients take turns round by round, and a ratio
is the median of the rounds' ratios:

* set+get: ``set(k, v)`` then ``get(k)`` on a present key.  Raw: pyetcd's ``put`` and ``get``.
* wait wake-up: a ping-pong of two threads, each setting its key and then blocking until the
  other's appears (a read, a watch from the read's revision, a second read for a write that
  raced the watch's creation): per exchange, one set and one wake-up.  Raw: the same steps
  written with pyetcd's ``put``, ``get_response`` and ``add_watch_callback``.

Ratios compare EtcdStore with the raw client (target: at most 1.2x) and torch's v2 EtcdStore
with EtcdStore.  The machine may be shared: read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storeharness.harness.targets._etcd_server import EtcdCluster
from storeharness.stores.etcd import EtcdStore

TARGET = 1.2
MEASURES = ("set+get", "wake-up")


# ------------------------------------------------------------------ the three clients


class Raw:
    """What a user would write with etcd-sdk-python directly."""

    def __init__(self, endpoint: str) -> None:
        import pyetcd

        host, port = endpoint.split(":")
        self.c = pyetcd.client(host=host, port=int(port))
        self.prefix = f"raw/{uuid.uuid4().hex}/".encode()

    def set(self, key: str, value: bytes) -> None:
        self.c.put(self.prefix + key.encode(), value)

    def get(self, key: str) -> bytes:
        """The value of ``key``, waiting for it: the same steps as EtcdStore, written raw."""
        k = self.prefix + key.encode()
        resp = self.c.get_response(k)
        if resp.kvs:
            return bytes(resp.kvs[0].value)
        events: queue.Queue[Any] = queue.Queue()
        watch_id = self.c.add_watch_callback(k, events.put, start_revision=resp.header.revision + 1)
        try:
            again = self.c.get_response(k)  # a put that raced the watch's creation
            if again.kvs:
                return bytes(again.kvs[0].value)
            while True:
                update = events.get(timeout=30)
                for event in getattr(update, "events", []):
                    if type(event).__name__ == "PutEvent":
                        return bytes(event.value)
        finally:
            self.c.cancel_watch(watch_id)

    def close(self) -> None:
        self.c.close()


def _ours(endpoint: str) -> Any:
    return EtcdStore(endpoint, prefix=f"bench/{uuid.uuid4().hex}", timeout=30)


def _torch(endpoint: str) -> Any:
    from storeharness.harness.targets.etcd import torch_etcd_store

    return torch_etcd_store(endpoint, f"bench/{uuid.uuid4().hex}", 30)


# ------------------------------------------------------------------ measures


def set_get(client: Any, ops: int) -> float:
    start = time.perf_counter()
    for i in range(ops):
        client.set(f"k{i % 16}", b"value")
        client.get(f"k{i % 16}")
    return (time.perf_counter() - start) / ops


def ping_pong(a: Any, b: Any, ops: int) -> float:
    """Mean time of one set + one wake-up, over ``ops`` exchanges between two threads."""
    tag = uuid.uuid4().hex[:8]
    failed: list[BaseException] = []

    def pong() -> None:
        try:
            for i in range(ops):
                b.get(f"{tag}-ping{i}")
                b.set(f"{tag}-pong{i}", b"x")
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=pong)
    thread.start()
    start = time.perf_counter()
    for i in range(ops):
        a.set(f"{tag}-ping{i}", b"x")
        a.get(f"{tag}-pong{i}")
    spent = time.perf_counter() - start
    thread.join()
    if failed:
        raise failed[0]
    return spent / (2 * ops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with (
        tempfile.TemporaryDirectory(prefix="etcd-bench-", dir=shm) as where,
        EtcdCluster(Path(where), enable_v2=True) as c,
    ):
        endpoint = c.members[0].endpoint
        makers: dict[str, Callable[[str], Any]] = {"raw": Raw, "ours": _ours}
        try:
            _torch(endpoint).close()
            makers["torch-v2"] = _torch
        except Exception as exc:  # torch or python-etcd missing: say so, measure the rest
            print(f"torch's v2 EtcdStore skipped: {type(exc).__name__}: {exc}")
        clients: dict[str, tuple[Any, Any]] = {}
        for name, make in makers.items():
            a, b = make(endpoint), make(endpoint)
            if name != "raw":  # a handle per thread, on the same data
                b.close()
                b = a.clone() if name == "ours" else a
            else:
                b.prefix = a.prefix
            set_get(a, 50)  # warm up: channels, lease, first watch
            clients[name] = (a, b)
        # Round by round, every client in turn: a load that drifts over the run (the machine is
        # shared) then weighs on all of them alike, and each round gives a ratio of its own.
        times: dict[str, dict[str, list[float]]] = {m: {n: [] for n in clients} for m in MEASURES}
        # All set+get rounds first: the ping-pong's keys would grow the directory that torch's
        # v2 store re-reads.
        for _ in range(args.rounds):
            for name, (a, _b) in clients.items():
                times["set+get"][name].append(set_get(a, args.ops))
        for _ in range(args.rounds):
            for name, (a, b) in clients.items():
                times["wake-up"][name].append(ping_pong(a, b, args.ops // 5))
        for a, b in clients.values():
            for h in {id(a): a, id(b): b}.values():
                h.close()
    load = os.getloadavg()
    print(f"etcd at {endpoint}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"median of {args.rounds} interleaved rounds, mean per operation; ratio: median of "
          "the rounds' ratios")  # fmt: skip
    print(f"{'measure':10} {'raw pyetcd':>12} {'EtcdStore':>12} {'ours/raw':>9} "
          f"{'torch v2':>12} {'torch/ours':>11}")  # fmt: skip
    for measure in MEASURES:
        got = times[measure]
        raw, ours = statistics.median(got["raw"]), statistics.median(got["ours"])
        ratio = _ratio(got["ours"], got["raw"])
        verdict = "ok" if ratio <= TARGET else f"over {TARGET}x"
        torch_cols = ""
        if "torch-v2" in got:
            torch = statistics.median(got["torch-v2"])
            torch_cols = f"{torch * 1e3:10.3f}ms {_ratio(got['torch-v2'], got['ours']):10.2f}x"
        print(f"{measure:10} {raw * 1e3:10.3f}ms {ours * 1e3:10.3f}ms {ratio:8.2f}x "
              f"{torch_cols}  {verdict}")  # fmt: skip


def _ratio(these: list[float], those: list[float]) -> float:
    """The median over rounds of one client's time over another's in the same round."""
    return statistics.median(x / y for x, y in zip(these, those, strict=True))


if __name__ == "__main__":
    main()

"""What one hostile client costs our TCPStore server and everyone else on it (issue 11).

    python benchmarks/tcp_hostile.py [--accelerate auto|yes|no] [--flood 200000]

Each attack runs against a fresh server process (``ServerProcess``), while a bystander client
measures its own ``get`` round trips; the reference is the bystander's median on the idle
server, measured in the same run.  Figures:

Each latency figure is also given as a ratio to the idle median (``worst_vs_idle``).

* waiter flood: one connection parks N waits on one key, then disconnects; the bystander's
  slowest get while the server drops them (was 4.6 s for 200k: a quadratic drop).
* trickled many-key requests: multi_set of 100k/200k/400k keys; seconds to apply, and the
  bystander's slowest get meanwhile (was 0.5/2.0/8.4 s and up to 8.3 s).
* multi_get amplification: 20 requests each naming a 1 MiB value 1000 times, never read;
  the server's peak RSS growth (was hundreds of MiB).
* bigint counter: a 5000-digit counter under a barrier; whether the writer's connection and
  the barrier waiter survive.

Runs against whatever ``storeharness`` is importable, so the same script measures an older
checkout (``PYTHONPATH=/path/to/checkout``); Limits fields it lacks are left out.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import select
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from storeharness.stores import TCPStore
from storeharness.stores.tcp import Limits, ServerProcess, bind_listener
from storeharness.stores.tcp.codec import MAGIC, Query, encode_multi_set, encode_request

HELLO = encode_request(Query.VALIDATE, MAGIC)


def limits(**wanted: int) -> Limits:
    known = {f.name for f in dataclasses.fields(Limits)}
    return Limits(**{k: v for k, v in wanted.items() if k in known})


@contextlib.contextmanager
def server(accelerate: bool | None, lim: Limits | None = None) -> Iterator[ServerProcess]:
    proc = ServerProcess(bind_listener(0, host="127.0.0.1"), lim, accelerate)
    try:
        yield proc
    finally:
        proc.stop()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


class Bystander:
    """A client timing its gets in a thread until stopped; ``worst`` is the slowest."""

    def __init__(self, port: int) -> None:
        self.store = TCPStore("127.0.0.1", port, timeout=120)
        self.store.set("mine", "1")
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def idle_median(self, rounds: int = 2000) -> float:
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            self.store.get("mine")
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            self.store.get("mine")
            self.times.append(time.perf_counter() - start)

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(300)
        self.store.close()

    @property
    def worst(self) -> float:
        return max(self.times, default=float("nan"))


def settle(condition: Callable[[], bool], limit: float = 120.0) -> None:
    end = time.monotonic() + limit
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)


def waiter_flood(accelerate: bool | None, n: int) -> dict[str, Any]:
    with server(accelerate, limits(max_waits=n + 1)) as srv:
        setter = TCPStore("127.0.0.1", srv.port, timeout=120)
        flood = socket.create_connection(("127.0.0.1", srv.port))
        flood.sendall(HELLO + encode_request(Query.WAIT, [b"/hot"]) * n)
        flood.sendall(encode_request(Query.PING, 7))  # answered once every wait is parked
        echo = b""
        while len(echo) < 4:
            echo += flood.recv(4 - len(echo))
        by = Bystander(srv.port)
        reference = by.idle_median(500)
        with by:
            settle(lambda: len(by.times) > 50)
            start = time.perf_counter()
            flood.close()
            time.sleep(3.0)  # a fixed window in which the drop happens (a benchmark, not a test)
        setter.close()
        return {"idle_get_s": reference, "worst_get_s": by.worst,
                "worst_vs_idle": by.worst / reference, "window_s": 3.0,
                "since_close_s": time.perf_counter() - start}  # fmt: skip


def trickled(accelerate: bool | None, keys: int) -> dict[str, Any]:
    with server(accelerate) as srv:
        writer = TCPStore("127.0.0.1", srv.port, timeout=300)
        pairs = [(b"/k%07d" % i, b"v") for i in range(keys)]
        payload = encode_multi_set(pairs)
        by = Bystander(srv.port)
        reference = by.idle_median(500)
        with by:
            settle(lambda: len(by.times) > 50)
            start = time.perf_counter()
            writer._client.multi_set(payload)
            writer.num_keys()  # answered once the multi_set is applied
            took = time.perf_counter() - start
        writer.close()
        return {"keys": keys, "apply_s": took, "idle_get_s": reference, "worst_get_s": by.worst,
                "worst_vs_idle": by.worst / reference}  # fmt: skip


def amplification(accelerate: bool | None) -> dict[str, Any]:
    with server(accelerate) as srv:
        good = TCPStore("127.0.0.1", srv.port, timeout=120)
        good.set("big", b"x" * (1 << 20))
        assert good.check(["big"])  # applied (a set has no reply) before anyone asks
        base = peak_rss_mib(srv.proc.pid)
        greedy = socket.create_connection(("127.0.0.1", srv.port))
        greedy.sendall(HELLO)
        greedy.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            greedy.send(encode_request(Query.MULTI_GET, [b"/big"] * 1000) * 20)
        # measured once the server is replying: it has built (or queued) its first reply
        assert select.select([greedy], [], [], 60)[0], "the server never answered"
        start = time.perf_counter()
        for _ in range(200):
            good.add("still", 1)
        took = time.perf_counter() - start
        grown = peak_rss_mib(srv.proc.pid) - base
        greedy.close()
        good.close()
        return {"rss_growth_mib": grown, "bystander_200_adds_s": took}


def bigint(accelerate: bool | None) -> dict[str, Any]:
    with server(accelerate) as srv:
        m = TCPStore("127.0.0.1", srv.port, timeout=10)
        waiter = TCPStore("127.0.0.1", srv.port, timeout=10)
        outcome: list[str] = []
        t = threading.Thread(target=lambda: outcome.append(_barrier(waiter)), daemon=True)
        t.start()
        settle(lambda: m.check(["bk"]))
        m.set("bk", b"9" * 5000)
        try:
            m.add("bk", 1)
            writer = "add answered"
        except Exception as exc:
            writer = f"add raised {type(exc).__name__}"
        try:
            m.add("other", 1)
            writer += "; connection kept"
        except Exception as exc:
            writer += f"; next call raised {type(exc).__name__}"
        with contextlib.suppress(Exception):
            TCPStore("127.0.0.1", srv.port, timeout=10).set("bk", "2")
        t.join(15)
        return {"writer": writer, "barrier waiter": outcome[0] if outcome else "still blocked"}


def _barrier(store: TCPStore) -> str:
    try:
        store.barrier("bk", 2)
        return "released"
    except Exception as exc:
        return f"raised {type(exc).__name__}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/tcp_hostile.py")
    parser.add_argument("--accelerate", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--flood", type=int, default=200_000)
    parser.add_argument("--keys", default="100000,200000,400000")
    args = parser.parse_args()
    accelerate = {"auto": None, "yes": True, "no": False}[args.accelerate]
    print(f"python {sys.version.split()[0]}, accelerate={args.accelerate}")
    print("bigint counter:", bigint(accelerate), flush=True)
    print("amplification:", amplification(accelerate), flush=True)
    print(f"waiter flood ({args.flood}):", waiter_flood(accelerate, args.flood), flush=True)
    for keys in (int(k) for k in args.keys.split(",")):
        print("trickled multi_set:", trickled(accelerate, keys), flush=True)


if __name__ == "__main__":
    main()

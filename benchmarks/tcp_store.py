"""TCPStore: ours beside torch's libuv server, each driven by torch's client and by ours.

    python benchmarks/tcp_store.py [--quick] [--rounds 5] [--markdown docs/benchmarks.md]

Every server runs in a process of its own; clients run in this process or in forked children.
Four pairings, written client→server: torch→torch (the reference), torch→ours, ours→ours,
ours→torch.  Figures are medians over rounds; ratios compare against torch→torch in the same run.

torch reverse-resolves every new connection, and this sandbox's resolver stalls 5 s on bursts
(BENCHMARK_ANCHORS.md), which would measure the resolver, not the stores.  So the script builds
``nodns.c`` (a ``getnameinfo`` wrapper forcing numeric answers) and re-executes itself with it
in ``LD_PRELOAD``, for every process, torch's and ours alike.  Ours never reverse-resolves.

Round trips depend on where the scheduler puts client and server: on one CPU a round trip is
two context switches (~10 µs here); on two, waking the sleeping side costs ~70-90 µs on gVisor.
Left alone, the scheduler flips between the two from run to run, so the single-client rows are
measured under both placements, set with ``sched_setaffinity`` on every thread of the client
and the servers: "same CPU" (all on CPU 0) and "split CPUs" (client on 0, servers on 1).  The
multi-process rows run unpinned.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PAIRINGS = [("torch", "torch"), ("torch", "ours"), ("ours", "ours"), ("ours", "torch")]
REF = ("torch", "torch")


def ensure_nodns() -> None:
    """Re-exec with the numeric-getnameinfo shim preloaded (built here with gcc)."""
    if os.environ.get("STOREHARNESS_NODNS") == "1":
        return
    build = Path(tempfile.mkdtemp(prefix="nodns-")) / "nodns.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(build), str(HERE / "nodns.c"), "-ldl"],
        check=True,
    )
    env = dict(os.environ, STOREHARNESS_NODNS="1")
    env["LD_PRELOAD"] = f"{build} {env.get('LD_PRELOAD', '')}".strip()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


TORCH_SERVER = """
import sys
from datetime import timedelta
import torch.distributed as dist
store = dist.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=3600), use_libuv=True)
print(store.port, flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def server(kind: str) -> Iterator[tuple[int, int]]:
    """A server in its own process: ``(port, pid)``."""
    if kind == "torch":
        proc = subprocess.Popen(
            [sys.executable, "-c", TORCH_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline())
        try:
            yield port, proc.pid
        finally:
            proc.stdin.close()
            proc.wait(30)
    else:
        from storeharness.stores.tcp import ServerProcess, bind_listener

        ours = ServerProcess(bind_listener(0))
        try:
            yield ours.port, ours.proc.pid
        finally:
            ours.stop()


ALL_CPUS = frozenset(range(os.cpu_count() or 1))
#: placement name -> (the client's CPUs, the servers' CPUs)
PLACEMENTS = {"same CPU": ({0}, {0}), "split CPUs": ({0}, {1})}


def pin(pid: int, cpus: set[int] | frozenset[int]) -> None:
    """Set the CPU affinity of every thread of ``pid``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


def client(kind: str, port: int) -> Any:
    if kind == "torch":
        import torch.distributed as dist

        return dist.TCPStore("127.0.0.1", port, None, False, timedelta(seconds=600))
    from storeharness.stores import TCPStore

    return TCPStore("127.0.0.1", port, timeout=600)


def per_op_us(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


# --------------------------------------------------------------------------- workloads


def lat_add(c: Any, tag: str, n: int) -> float:
    return per_op_us(lambda: c.add(f"lat/{tag}", 1), n)


def lat_get(c: Any, tag: str, n: int) -> float:
    c.set(f"get/{tag}", b"v" * 16)
    return per_op_us(lambda: c.get(f"get/{tag}"), n)


def multi(c: Any, tag: str, n: int, op: str) -> float:
    keys = [f"m/{tag}/{i}" for i in range(1000)]
    values = [b"v" * 16] * 1000
    c.multi_set(keys, values)
    if op == "multi_set":
        return per_op_us(lambda: c.multi_set(keys, values), n) / 1000  # ms
    return per_op_us(lambda: c.multi_get(keys), n) / 1000  # ms


def big_value(c: Any, tag: str, size: int) -> float | str:
    data = b"x" * size
    try:
        start = time.perf_counter()
        c.set(f"big/{tag}/{size}", data)
        got = c.get(f"big/{tag}/{size}")
        spent = (time.perf_counter() - start) * 1000
    except Exception as exc:
        return f"fails ({type(exc).__name__})"
    return spent if len(got) == size else "wrong size"


def _adder(kind: str, port: int, key: str, adds: int, ready: Any, go: Any, done: Any) -> None:
    c = client(kind, port)
    ready.put(os.getpid())
    go.wait()
    for _ in range(adds):
        c.add(key, 1)
    done.put(os.getpid())


def timed_from_go(target: Callable[..., None], args: tuple[Any, ...], n: int) -> float:
    """Fork ``n`` children running ``target(*args, ready, go, done)``; seconds from the "go"
    (sent once all reported ready, i.e. connected) until all reported done."""
    import multiprocess

    ctx = multiprocess.get_context("fork")
    ready, go, done = ctx.Queue(), ctx.Event(), ctx.Queue()
    children = [ctx.Process(target=target, args=(*args, ready, go, done)) for _ in range(n)]
    for p in children:
        p.start()
    for _ in children:
        ready.get(timeout=600)
    start = time.perf_counter()
    go.set()
    for _ in children:
        done.get(timeout=600)
    spent = time.perf_counter() - start
    for p in children:
        p.join(60)
    return spent


def throughput(kind: str, port: int, tag: str, procs: int, adds: int) -> float:
    spent = timed_from_go(_adder, (kind, port, f"tp/{tag}", adds), procs)
    return procs * adds / spent


def connect_many(kind: str, port: int, n: int) -> float:
    start = time.perf_counter()
    clients = [client(kind, port) for _ in range(n)]
    spent = (time.perf_counter() - start) * 1000
    for c in clients:
        if hasattr(c, "close"):
            c.close()
    del clients
    return spent


def _barrier_rank(kind: str, port: int, key: str, n: int, ready: Any, go: Any, done: Any) -> None:
    c = client(kind, port)
    ready.put(os.getpid())
    go.wait()
    if c.add(key, 1) == n:
        c.set(f"{key}/done", "1")
    c.wait([f"{key}/done"], timedelta(seconds=600))
    done.put(os.getpid())
    done.close()
    done.join_thread()  # the queue's feeder thread must write before _exit skips it
    os._exit(0)


def barrier(kind: str, port: int, tag: str, n: int) -> float:
    """Add-then-wait across ``n`` forked processes, timed from a "go" broadcast sent once all
    of them have connected (process creation and connecting are not the store's cost)."""
    return timed_from_go(_barrier_rank, (kind, port, f"bar/{tag}", n), n)


def in_clean_process(workload: str, kind: str, port: int, *args: int) -> float:
    """Run a multi-process workload from a fresh interpreter, so every pairing forks from the
    same small parent (forking this benchmark, grown by 64 MiB values, costs more)."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", workload, kind, str(port), *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def child_main(argv: list[str]) -> None:
    workload, kind, port, *rest = argv
    if kind == "torch":
        import torch.distributed  # noqa: F401 - loaded before forking, as a torch job would
    tag = f"{kind}-{os.getpid()}"
    if workload == "throughput":
        print(throughput(kind, int(port), tag, int(rest[0]), int(rest[1])))
    else:
        print(barrier(kind, int(port), tag, int(rest[0])))


# --------------------------------------------------------------------------- the run


def run(rounds: int, quick: bool) -> dict[str, dict[tuple[str, str], Any]]:
    n = 500 if quick else 2000
    table: dict[str, dict[tuple[str, str], Any]] = {}

    def record(name: str, pair: tuple[str, str], value: Any) -> None:
        table.setdefault(name, {})[pair] = [*table.get(name, {}).get(pair, []), value]

    # With one CPU there is one placement only.
    placements = PLACEMENTS if len(ALL_CPUS) > 1 else {"same CPU": PLACEMENTS["same CPU"]}
    with server("torch") as (torch_port, torch_pid), server("ours") as (our_port, our_pid):
        ports = {"torch": torch_port, "ours": our_port}
        for r in range(rounds):  # interleave pairings each round so drift hits all alike
            for where, (client_cpus, server_cpus) in placements.items():
                pin(os.getpid(), client_cpus)
                pin(torch_pid, server_cpus)
                pin(our_pid, server_cpus)
                for pair in PAIRINGS:
                    kind, srv = pair
                    c = client(kind, ports[srv])
                    tag = f"{kind}-{r}"
                    for name, value in [
                        ("add round trip (µs)", lat_add(c, tag, n)),
                        ("get (µs)", lat_get(c, tag, n)),
                        ("multi_set 1000 keys (ms)", multi(c, tag, 20, "multi_set")),
                        ("multi_get 1000 keys (ms)", multi(c, tag, 20, "multi_get")),
                    ]:
                        record(f"{name}, {where}", pair, value)
                    if hasattr(c, "close"):
                        c.close()
            for pid in (os.getpid(), torch_pid, our_pid):
                pin(pid, ALL_CPUS)
            for pair in PAIRINGS:
                kind, srv = pair
                for procs, adds in [(1, n), (4, n), (64, max(50, n // 20))]:
                    name = f"adds/s, {procs} client process{'es' if procs > 1 else ''}"
                    record(
                        name, pair, in_clean_process("throughput", kind, ports[srv], procs, adds)
                    )
        for pair in PAIRINGS:
            kind, srv = pair
            c = client(kind, ports[srv])
            for size in (1, 8, 64):
                record(f"set+get {size} MiB (ms)", pair, big_value(c, kind, size << 20))
            if hasattr(c, "close"):
                c.close()
            record("connect 512 clients (ms)", pair, connect_many(kind, ports[srv], 512))
            for procs in (128,) if quick else (128, 512):
                name = f"add-then-wait barrier, {procs} processes, from go (s)"
                record(name, pair, in_clean_process("barrier", kind, ports[srv], procs))
    return {name: {p: _median(v) for p, v in row.items()} for name, row in table.items()}


def _median(values: list[Any]) -> Any:
    """The median of the numbers; a failure's text when any round failed."""
    failed = [v for v in values if not isinstance(v, float)]
    return failed[0] if failed else statistics.median(values)


#: (row, pairing compared with torch→torch, target, "le" = ratio must be <=, "ge" = >=)
TARGETS = [
    *(
        target
        for where in PLACEMENTS
        for target in [
            (f"add round trip (µs), {where}", ("torch", "ours"), 1.15, "le"),
            (f"add round trip (µs), {where}", ("ours", "ours"), 1.3, "le"),
            (f"get (µs), {where}", ("ours", "ours"), 0.6, "le"),
            (f"multi_get 1000 keys (ms), {where}", ("ours", "ours"), 1.0, "le"),
            (f"multi_set 1000 keys (ms), {where}", ("ours", "ours"), 1.0, "le"),
        ]
    ),
    ("adds/s, 4 client processes", ("ours", "ours"), 1.0, "ge"),
    ("add-then-wait barrier, 128 processes, from go (s)", ("ours", "ours"), 1.0, "le"),
    ("add-then-wait barrier, 512 processes, from go (s)", ("ours", "ours"), 1.0, "le"),
]


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"
    return str(value)


def markdown(result: dict[str, dict[tuple[str, str], Any]], rounds: int) -> str:
    head = " | ".join(f"{c}→{s}" for c, s in PAIRINGS)
    lines = [
        f"| workload (median of {rounds} rounds) | {head} | ours→ours / torch→torch |",
        "|---" * (len(PAIRINGS) + 2) + "|",
    ]
    for name, row in result.items():
        ref, mine = row.get(REF), row.get(("ours", "ours"))
        ratio = f"{mine / ref:.2f}x" if isinstance(ref, float) and isinstance(mine, float) else ""
        cells = " | ".join(fmt(row.get(p, "")) for p in PAIRINGS)
        lines.append(f"| {name} | {cells} | {ratio} |")
    lines += ["", "| target | ratio | goal | met |", "|---|---|---|---|"]
    for name, pair, goal, how in TARGETS:
        row = result.get(name, {})
        ref, mine = row.get(REF), row.get(pair)
        if not (isinstance(ref, float) and isinstance(mine, float)):
            continue
        ratio = mine / ref
        met = ratio <= goal if how == "le" else ratio >= goal
        sign = "≤" if how == "le" else "≥"
        label = f"{name}, {pair[0]}→{pair[1]}"
        lines.append(f"| {label} | {ratio:.2f}x | {sign} {goal}x | {'yes' if met else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per workload (5)")
    parser.add_argument("--quick", action="store_true", help="fewer ops; skip the 512 barrier")
    parser.add_argument("--markdown", help="also write the tables into this file")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    ensure_nodns()
    if args.child:
        child_main(args.child)
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("this benchmark compares with torch: pip install torch==2.13.0")
    result = run(args.rounds, args.quick)
    text = markdown(result, args.rounds)
    print(text)
    if args.markdown:
        out = Path(args.markdown)
        # Keep the hand-written reading notes that follow the tables.
        old = out.read_text() if out.exists() else ""
        notes = old[old.find(NOTES) :] if NOTES in old else ""
        out.write_text(
            "# TCPStore benchmark\n\n"
            f"`python benchmarks/tcp_store.py --rounds {args.rounds}"
            f"{' --quick' if args.quick else ''}`, on this machine kind (2 vCPUs, gVisor), "
            f"{time.strftime('%Y-%m-%d')}.  Pairings are client→server; every server runs in "
            "its own process; reverse DNS is made numeric for every process, and the "
            "single-client rows are measured with client and servers pinned to one CPU and to "
            "two (see the script's docstring).  Lower is better except for adds/s.\n\n"
            + text
            + "\n"
            + (f"\n{notes}" if notes else "")
        )


NOTES = "## Reading these figures"


if __name__ == "__main__":
    main()

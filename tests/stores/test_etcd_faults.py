"""EtcdStore when etcd itself fails: 3-member clusters of our own, members killed and restarted.

Every test starts its own cluster (they kill members) in its temporary directory, with 50/500 ms
heartbeat/election timing, which a loaded 2-core machine does not mistake for a dead leader.
The figures (how long operations paused around a kill) are printed with ``-s``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from storeharness.harness.targets._etcd_server import EtcdCluster, etcd_missing
from storeharness.stores import StoreBroken, StoreTimeout
from storeharness.stores.etcd import EtcdStore, _watch

from . import etcd_support

#: One RPC's cap in these tests: how long a request stuck on a dead leader waits before a retry.
RPC = 0.5
ROUNDS = 60
WORKERS = 3


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    etcd_support.require(etcd_missing())
    with EtcdCluster(tmp_path / "etcd", size=3, timing=(50, 500)) as c:
        yield c


def _open(endpoints: str, prefix: str, timeout: float = 30.0) -> EtcdStore:
    return EtcdStore(endpoints, prefix=prefix, timeout=timeout, rpc_timeout=RPC)


#: A worker process (started with exec, not fork: a child forked while another thread of this
#: process is inside a gRPC call can deadlock in gRPC): add, push and pop ``rounds`` times, then
#: print when each round completed and what it popped.
_WORKER = """
import json, sys, time
from storeharness.stores.etcd import EtcdStore
endpoints, prefix, rank, rounds, workers, rpc = sys.argv[1:7]
rank, rounds, workers = int(rank), int(rounds), int(workers)
store = EtcdStore(endpoints, prefix=prefix, timeout=30, rpc_timeout=float(rpc))
done, popped = [], []
for i in range(rounds):
    store.add("counter", 1)
    store.queue_push("q", f"{rank}-{i}")
    popped.append(store.queue_pop("q").decode())
    done.append(time.monotonic())
    if i == rounds // 3 and store.add("warm", 1) == workers:
        store.set("all-warm", "1")
store.close()
print(json.dumps([done, popped]))
"""


def _run_world_killing(
    cluster: EtcdCluster, kill: Callable[[], None]
) -> tuple[float, list[tuple[list[float], list[str]]], EtcdStore]:
    """Run the workers; once all are a third through, ``kill()``; returns its time and results."""
    prefix = f"faults/{uuid.uuid4().hex}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, cluster.endpoints, prefix, str(rank), str(ROUNDS),
             str(WORKERS), str(RPC)],
            stdout=subprocess.PIPE, text=True,
        )
        for rank in range(WORKERS)
    ]  # fmt: skip
    try:
        main = _open(cluster.endpoints, prefix)
        main.wait(["all-warm"], 60)  # every worker is a third through
        killed_at = time.monotonic()
        kill()
        outputs = [p.communicate(timeout=150)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * WORKERS, outputs
    results = [tuple(json.loads(out)) for out in outputs]
    return killed_at, results, main


def _check_exact(main: EtcdStore, results: list[tuple[list[float], list[str]]]) -> None:
    assert main.add("counter", 0) == WORKERS * ROUNDS, "an add was lost or applied twice"
    popped = [item for _, items in results for item in items]
    pushed = [f"{r}-{i}" for r in range(WORKERS) for i in range(ROUNDS)]
    assert sorted(popped) == sorted(pushed), "a queue item was lost or delivered twice"
    assert main.queue_len("q") == 0


def _pause(killed_at: float, results: list[tuple[list[float], list[str]]]) -> float:
    """The longest any worker went, from the kill, until its next completed round."""
    waits = []
    for done, _ in results:
        after = [t for t in done if t > killed_at]
        if after:
            waits.append(after[0] - killed_at)
    assert waits, "every worker had finished before the kill: the test tested nothing"
    return max(waits)


def test_leader_killed_operations_resume_within_2s_exactly_once(cluster: EtcdCluster) -> None:
    victim: list[int] = []

    def kill_leader() -> None:
        victim.append(cluster.leader())
        cluster.kill(victim[0])

    killed_at, results, main = _run_world_killing(cluster, kill_leader)
    pause = _pause(killed_at, results)
    print(f"\nleader m{victim[0]} killed: operations resumed after {pause:.3f} s (max over "
          f"{WORKERS} workers)")  # fmt: skip
    assert pause < 2.0, f"operations paused {pause:.2f} s after the leader was killed"
    _check_exact(main, results)
    main.close()


def test_follower_killed_no_interruption(cluster: EtcdCluster) -> None:
    def kill_follower() -> None:
        leader = cluster.leader()
        cluster.kill((leader + 1) % 3)

    killed_at, results, main = _run_world_killing(cluster, kill_follower)
    pause = _pause(killed_at, results)
    print(f"\nfollower killed: longest pause {pause:.3f} s")
    assert pause < 1.0, f"operations paused {pause:.2f} s after a follower was killed"
    _check_exact(main, results)
    main.close()


def test_quorum_lost_errors_within_the_timeout_and_no_hang(cluster: EtcdCluster) -> None:
    prefix = f"faults/{uuid.uuid4().hex}"
    store = EtcdStore(cluster.endpoints, prefix=prefix, timeout=2.0, rpc_timeout=RPC)
    store.set("before", "1")
    leader = cluster.leader()
    cluster.kill(leader)
    cluster.kill((leader + 1) % 3)
    operations: list[tuple[str, Callable[[], object]]] = [
        ("set", lambda: store.set("k", "v")),
        ("get", lambda: store.get("before")),
        ("add", lambda: store.add("n", 1)),
        ("wait", lambda: store.wait(["never"])),
        ("queue_pop", lambda: store.queue_pop("q")),
    ]
    for name, call in operations:
        start = time.monotonic()
        with pytest.raises((StoreBroken, StoreTimeout)) as err:
            call()
        spent = time.monotonic() - start
        assert spent < 2.0 + RPC + 1.0, f"{name} took {spent:.2f} s with a 2 s timeout"
        if isinstance(err.value, StoreBroken):
            assert cluster.endpoints.split(",")[0] in str(err.value), err.value
    store.close()


def test_member_restarted_catches_up_and_serves(cluster: EtcdCluster) -> None:
    prefix = f"faults/{uuid.uuid4().hex}"
    store = _open(cluster.endpoints, prefix)
    follower = (cluster.leader() + 1) % 3
    cluster.kill(follower)
    store.set("written-while-down", "1")
    store.add("n", 7)
    cluster.restart(follower)
    alone = _open(cluster.members[follower].endpoint, prefix)  # only the restarted member
    assert alone.get("written-while-down") == b"1"
    assert alone.add("n", 1) == 8
    store.close()
    alone.close()


def test_a_watch_outlives_compaction_and_re_reads_a_compacted_start(
    cluster: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"faults/{uuid.uuid4().hex}"
    store = _open(cluster.endpoints, prefix, timeout=20)
    writer = _open(cluster.endpoints, prefix)

    def compact() -> None:
        writer.set("tick", "x")  # a new revision to compact up to
        op = writer._op("compact", [])
        head = writer._call(op, "Range", lambda: writer.rpc.RangeRequest(key=b"x"))
        writer._call(op, "Compact", lambda: writer.rpc.CompactionRequest(
            revision=head.header.revision, physical=True))  # fmt: skip

    # 1. Between the read and the watch, the key is set and history compacted past the read:
    # the watch from the read's revision is cancelled, and the store must re-read to see it.
    original = _watch.Watch.start
    restarted: list[int] = []

    def late_start(self: _watch.Watch, targets: Any, revision: int, deadline: float) -> bool:
        if not restarted:
            writer.set("late", "arrived")
            writer.set("filler", "x")
            compact()
        restarted.append(revision)
        return original(self, targets, revision, deadline)

    reads: list[int] = []
    values = store._values

    def counted(*args: Any) -> Any:
        reads.append(1)
        return values(*args)

    monkeypatch.setattr(_watch.Watch, "start", late_start)
    monkeypatch.setattr(store, "_values", counted)
    assert store.get("late") == b"arrived"
    assert len(reads) == 2, f"{len(reads)} reads: the compacted watch did not make it re-read"
    monkeypatch.setattr(store, "_values", values)
    monkeypatch.setattr(_watch.Watch, "start", original)

    # 2. A watch already running when history is compacted keeps delivering.
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(store.get("after-compaction")))
    reader.start()
    deadline = time.monotonic() + 10
    while not store._sleepers and time.monotonic() < deadline:
        time.sleep(0.005)  # until the reader is blocked in its watch
    compact()
    writer.set("after-compaction", "seen")
    reader.join(15)
    assert got == [b"seen"]
    store.close()
    writer.close()


def test_a_paused_member_is_a_timeout_within_the_ops_own_time_and_broken_past_the_rpc_cap(
    tmp_path: Path,
) -> None:
    # The deadline travels down to each RPC: an RPC cut by the operation's own (short) time
    # says nothing about the cluster (StoreTimeout with that limit); attempts that ran into
    # the per-RPC cap do (StoreBroken naming the endpoints).
    etcd_support.require(etcd_missing())
    with EtcdCluster(tmp_path / "etcd", size=1) as one:
        store = EtcdStore(one.endpoints, prefix=f"faults/{uuid.uuid4().hex}", timeout=0.3,
                          rpc_timeout=RPC)  # fmt: skip
        proc = one.members[0].proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)
        try:
            calls: list[tuple[str, Callable[[], object], float]] = [
                ("set", lambda: store.set("k", "v"), 0.3),
                ("wait", lambda: store.wait(["k"], 0.2), 0.2),
            ]
            for name, call, limit in calls:
                start = time.monotonic()
                with pytest.raises(StoreTimeout) as short:
                    call()
                spent = time.monotonic() - start
                assert short.value.op == name and short.value.timeout == limit, short.value
                assert spent < limit + 1.0, f"{name} took {spent:.2f} s with a {limit} s limit"
            store.set_timeout(1.6)  # three attempts capped at 0.5 s go unanswered
            start = time.monotonic()
            with pytest.raises(StoreBroken, match=one.endpoints) as broken:
                store.add("n", 1)
            assert broken.value.op == "add"  # type: ignore[attr-defined]
            assert time.monotonic() - start < 1.6 + 1.0
        finally:
            proc.send_signal(signal.SIGCONT)
        store.set_timeout(10)
        # The member answers again.  The broken add's three attempts may have been applied
        # when etcd woke up (they waited in its socket): at most one of them.
        assert store.add("n", 1) in (1, 2)
        store.close()

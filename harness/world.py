"""Run one function on every rank of a world, as processes or threads, and report each fate.

This is the first cut of the world runner: fixed world size, one store opener, one deadline.
Processes start from an explicit ``multiprocess`` context; on the deadline they are stopped with
escalation (SIGTERM, then SIGKILL, each with a bounded join) and reported as timed out, so a run
never leaves a child behind.
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import multiprocess
from multiprocess.connection import wait as wait_connections

from stores import Store

__all__ = ["Fate", "RankFn", "RankResult", "run_world"]

#: ``fn(store, rank, world_size)``: what every rank runs; its return value must pickle.
RankFn = Callable[[Store, int, int], Any]


class Fate(enum.StrEnum):
    RETURNED = "returned"
    RAISED = "raised"
    DIED = "died"
    TIMED_OUT = "timed out"


@dataclass(frozen=True)
class RankResult:
    """What became of one rank."""

    rank: int
    fate: Fate
    value: Any = None
    error: str = ""
    traceback: str = ""
    exitcode: int | None = None
    elapsed: float = 0.0

    def describe(self) -> str:
        if self.fate is Fate.RETURNED:
            return f"rank {self.rank}: returned {self.value!r} in {self.elapsed:.3f} s"
        if self.fate is Fate.RAISED:
            return f"rank {self.rank}: raised {self.error}"
        if self.fate is Fate.DIED:
            code = self.exitcode
            how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit {code}"
            return f"rank {self.rank}: died ({how}) without a result"
        return f"rank {self.rank}: still running at the deadline ({self.error})"


def _rank_main(conn: Any, fn: RankFn, open_store: Callable[[], Store], rank: int, n: int) -> None:
    start = time.monotonic()
    try:
        with open_store() as store:
            value = fn(store, rank, n)
        reply = ("ok", value, "", "", time.monotonic() - start)
    except BaseException as exc:
        reply = ("error", None, f"{type(exc).__name__}: {exc}", traceback.format_exc(), 0.0)
    try:
        conn.send(reply)
    except Exception as exc:  # the value did not pickle: report that instead of vanishing
        conn.send(("error", None, f"result of rank {rank} could not be sent: {exc}", "", 0.0))
    conn.close()


def run_world(
    fn: RankFn,
    world_size: int,
    open_store: Callable[[], Store],
    workers: str = "process",
    deadline: float = 60.0,
    start_method: str = "fork",
) -> list[RankResult]:
    """Run ``fn`` on ``world_size`` ranks; each opens its own store with ``open_store()``.

    ``workers`` is ``"process"`` (``open_store`` must pickle for non-fork start methods) or
    ``"thread"``.  Raises ``ValueError`` for a bad world size or worker kind.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if workers == "process":
        return _run_processes(fn, world_size, open_store, deadline, start_method)
    if workers == "thread":
        return _run_threads(fn, world_size, open_store, deadline)
    raise ValueError(f"workers must be 'process' or 'thread', got {workers!r}")


def _run_processes(
    fn: RankFn, n: int, open_store: Callable[[], Store], deadline: float, method: str
) -> list[RankResult]:
    ctx = multiprocess.get_context(method)
    procs, conns = [], []
    results: dict[int, RankResult] = {}
    end = time.monotonic() + deadline
    try:
        # A forked child must not garbage-collect what it inherited (objects whose threads
        # did not survive the fork can crash when collected): freeze it first.
        gc.freeze()
        try:
            for rank in range(n):
                reader, writer = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_rank_main, args=(writer, fn, open_store, rank, n), name=f"rank-{rank}"
                )
                proc.start()
                writer.close()
                procs.append(proc)
                conns.append(reader)
        finally:
            gc.unfreeze()
        pending = dict(enumerate(conns))
        while pending:
            left = end - time.monotonic()
            ready = wait_connections(list(pending.values()), max(0.0, left)) if left > 0 else []
            if not ready:
                break
            for rank, conn in list(pending.items()):
                if conn not in ready:
                    continue
                del pending[rank]
                try:
                    status, value, error, tb, elapsed = conn.recv()
                except EOFError:
                    procs[rank].join(5)
                    results[rank] = RankResult(rank, Fate.DIED, exitcode=procs[rank].exitcode)
                    continue
                fate = Fate.RETURNED if status == "ok" else Fate.RAISED
                results[rank] = RankResult(rank, fate, value, error, tb, elapsed=elapsed)
        for rank in pending:
            results[rank] = RankResult(rank, Fate.TIMED_OUT, error=f"deadline {deadline:g} s")
    finally:
        for conn in conns:
            conn.close()
        _reap(procs)
    return [dataclasses.replace(results[r], exitcode=procs[r].exitcode) for r in range(n)]


def _reap(procs: list[Any]) -> None:
    """Stop every process: bounded join, then SIGTERM, then SIGKILL."""
    for proc in procs:
        proc.join(2)
    for step in ("terminate", "kill"):
        alive = [p for p in procs if p.is_alive()]
        for proc in alive:
            getattr(proc, step)()
        for proc in alive:
            proc.join(2)


def _run_threads(
    fn: RankFn, n: int, open_store: Callable[[], Store], deadline: float
) -> list[RankResult]:
    results: dict[int, RankResult] = {}

    def target(rank: int) -> None:
        start = time.monotonic()
        try:
            with open_store() as store:
                value = fn(store, rank, n)
            results[rank] = RankResult(rank, Fate.RETURNED, value, elapsed=time.monotonic() - start)
        except BaseException as exc:
            results[rank] = RankResult(
                rank,
                Fate.RAISED,
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
            )

    threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(n)]
    end = time.monotonic() + deadline
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    return [
        results.get(r, RankResult(r, Fate.TIMED_OUT, error=f"deadline {deadline:g} s"))
        for r in range(n)
    ]

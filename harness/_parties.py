"""Conformance parties as real processes (fork): the `parties` of cross-process targets."""

from __future__ import annotations

import gc
import os
import signal
import traceback
from collections.abc import Callable
from typing import Any

import multiprocess
from multiprocess.connection import wait as wait_connections

_CTX = multiprocess.get_context("fork")


def _party_main(conn: Any, worker: Callable[..., Any], rank: int, args: tuple[Any, ...]) -> None:
    try:
        result = worker(args[0], rank, *args[1:])
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    else:
        conn.send(("ok", result, ""))
    finally:
        conn.close()


__all__ = ["process_parties"]


def process_parties(
    worker: Callable[..., Any], n: int, args: tuple[Any, ...], timeout: float = 60.0
) -> list[Any]:
    """``worker(opener, rank, *rest)`` in ``n`` forked processes; results by rank.

    A party that fails, dies or outlives ``timeout`` fails the call; every child is reaped.
    """
    procs, conns = [], []
    try:
        # Children must never garbage-collect what they inherit (torch objects whose threads
        # did not survive the fork segfault when collected): freeze it before forking.
        gc.freeze()
        try:
            for rank in range(n):
                reader, writer = _CTX.Pipe(duplex=False)
                proc = _CTX.Process(
                    target=_party_main, args=(writer, worker, rank, args), daemon=True
                )
                proc.start()
                writer.close()
                procs.append(proc)
                conns.append(reader)
        finally:
            gc.unfreeze()
        replies: dict[int, tuple[str, Any, str]] = {}
        pending = dict(enumerate(conns))
        while pending:
            ready = wait_connections(list(pending.values()), timeout)
            if not ready:
                raise AssertionError(
                    f"parties {sorted(pending)} of {n} still running after {timeout} s"
                )
            for rank, conn in list(pending.items()):
                if conn in ready:
                    try:
                        replies[rank] = conn.recv()
                    except EOFError as exc:
                        procs[rank].join(5)
                        code = procs[rank].exitcode
                        raise AssertionError(
                            f"party {rank} died without a result (exit {code})"
                        ) from exc
                    del pending[rank]
        for rank in range(n):
            status, value, tb = replies[rank]
            if status != "ok":
                raise AssertionError(f"party {rank} of {n} failed: {value}\n{tb}")
        for rank, proc in enumerate(procs):
            proc.join(timeout)
            if proc.exitcode != 0:  # e.g. a crash while tearing down after answering
                raise AssertionError(f"party {rank} answered but then exited {proc.exitcode}")
        return [replies[r][1] for r in range(n)]
    finally:
        for conn in conns:
            conn.close()
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
                proc.join(5)

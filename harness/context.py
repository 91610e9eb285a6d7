"""What a rank sees: its context (rank, world size, store, logger, named points) and its main.

A rank talks to the runner over one duplex pipe.  ``ctx.point(name)`` announces a named point
and waits for the runner's go-ahead, which comes after every fault triggered by that point has
been applied, so faults land at exactly the place the scenario names.  ``ctx.wait_for(rank,
name)`` blocks until another rank has reached a point: ranks coordinate through the runner
rather than through sleeps.  The messages on the pipe are the frozen records of ``_messages``:
the rank sends :class:`AtPoint`, :class:`AwaitPoint` and last :class:`Finished`; the runner
answers each question with :class:`Go`, :class:`Reached`, :class:`Never` or :class:`Stop`.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import faulthandler
import logging
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..stores import Store
from ._messages import AtPoint, AwaitEnd, AwaitPoint, Finished, Go, Never, PipeFd, Reached, Stop
from .faults import AnyRank
from .history._record import Recorder, RecordingStore

__all__ = ["DUMP_SIGNAL", "RankContext", "RankStopped"]

#: The signal that makes a process rank write every thread's stack to its log (faulthandler).
DUMP_SIGNAL = signal.SIGUSR2
_PR_SET_PDEATHSIG = 1


class RankStopped(BaseException):
    """The runner asked this rank to stop (its time was up), or a point it awaited is gone.

    A ``BaseException``, like ``KeyboardInterrupt``, so that ``except Exception`` in scenario
    code does not swallow it.
    """


class RankContext:
    """Handed to every rank: who it is, its store, its logger, and named points."""

    def __init__(
        self,
        conn: Any,
        rank: int,
        world_size: int | None,
        store: Store,
        log: logging.Logger,
        seed: int,
        tags: Mapping[str, int] | None = None,
        where: tuple[str, str] = ("local", "127.0.0.1"),
    ) -> None:
        self._conn = conn
        self._tags = dict(tags or {})
        self.rank = rank
        #: The fixed world size, or ``None`` in a non-fixed world (ranks take ids from the store).
        self.world_size = world_size
        self.store = store
        self.log = log
        self.seed = seed
        #: Deterministic per rank and seed, for scenarios that want randomness that replays.
        self.random = random.Random(seed * 1_000_003 + rank)
        #: The name of the host this rank runs on (``"local"`` in a world on one machine).
        self.host = where[0]
        #: The data-plane address of this rank's host (where others reach what it serves).
        self.address = where[1]

    def __repr__(self) -> str:
        return f"RankContext(rank={self.rank}, world_size={self.world_size}, store={self.store!r})"

    def rank_of(self, tag: str | AnyRank) -> int:
        """The rank the run's seeded plan picked for ``AnyRank(tag)`` (a fault's or expect's).

        Raises ``KeyError`` naming the tags the plan has when ``tag`` is not one of them.
        """
        name = tag.tag if isinstance(tag, AnyRank) else tag
        try:
            return self._tags[name]
        except KeyError:
            known = ", ".join(sorted(self._tags)) or "none"
            raise KeyError(
                f"no AnyRank tagged {name!r} in this run's plan (tags: {known})"
            ) from None

    def point(self, name: str) -> None:
        """Announce that this rank reached ``name``; return once its faults were applied.

        Raises :class:`RankStopped` when the runner is stopping the world instead.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"ctx.point needs a non-empty name, got {name!r}")
        self.log.debug("point %s", name)
        self._conn.send(AtPoint(name))
        self._answer(f"point {name!r}")

    def wait_for(self, rank: int, name: str) -> None:
        """Block until rank ``rank`` has reached the point ``name`` (at once if it already has).

        Raises :class:`RankStopped` if that rank ended (or never started) without reaching it.
        """
        self._conn.send(AwaitPoint(int(rank), str(name)))
        self._answer(f"waiting for rank {rank} to reach {name!r}")

    def wait_for_end(self, rank: int) -> None:
        """Block until rank ``rank`` has ended: returned, raised, died (a fault killed it, say)
        or never started.  A process rank that died has been reaped by then (its sockets are
        closed), so a store's next request comes after its death.

        Raises :class:`RankStopped` if there is no such rank, or it is this one.
        """
        self._conn.send(AwaitEnd(int(rank)))
        self._answer(f"waiting for rank {rank} to end")

    def _answer(self, doing: str) -> None:
        match self._conn.recv():
            case Go() | Reached():
                return
            case Never(why):
                raise RankStopped(f"rank {self.rank} {doing}: {why}")
            case Stop():
                raise RankStopped(f"rank {self.rank} was stopped by the runner while {doing}")
            case other:  # the runner sends only the above: a bug, so say so loudly
                raise TypeError(f"rank {self.rank} {doing}: the runner answered {other!r}")


def run_rank(
    conn: Any,
    fn: Callable[[RankContext], Any],
    open_store: Callable[[], Store],
    rank: int,
    world_size: int | None,
    log: logging.Logger,
    seed: int,
    op_timeout: float | None,
    on_open: Callable[[Store], None] | None = None,
    tags: Mapping[str, int] | None = None,
    history: str | None = None,
    where: tuple[str, str] = ("local", "127.0.0.1"),
) -> None:
    """Open the store, run ``fn(ctx)``, and send the result (or the exception) to the runner.

    ``history``: a file to record every operation on the rank's store into (``harness.history``).
    """
    start = time.monotonic()
    recorder = None
    try:
        store = open_store()
        try:
            if op_timeout is not None:
                store.set_timeout(op_timeout)
            if history is not None:
                recorder = Recorder(history, rank)
                store = RecordingStore(store, recorder)
            if on_open is not None:
                on_open(store)
            value = fn(RankContext(conn, rank, world_size, store, log, seed, tags, where))
        finally:
            store.close()
            if recorder is not None:
                recorder.close()
        reply = Finished(True, value, None, "", "", time.monotonic() - start)
    except BaseException as exc:
        tb = traceback.format_exc()
        log.error("rank %d raised %s", rank, tb.rstrip())
        error = f"{type(exc).__name__}: {exc}"
        reply = Finished(False, None, exc, error, tb, time.monotonic() - start)
    try:
        try:
            conn.send(reply)
        except Exception as exc:  # the value or exception did not pickle: say so, keep the text
            note = f"(could not send it to the runner: {type(exc).__name__}: {exc})"
            error = f"{reply.error} {note}".strip()
            conn.send(dataclasses.replace(reply, value=None, exception=None, error=error))
    except OSError:
        pass  # the runner is gone; nobody is left to tell
    finally:
        conn.close()


def rank_logger(rank: int, path: str, token: str) -> logging.Logger:
    """A logger writing to this rank's own file (and nowhere else)."""
    log = logging.getLogger(f"storeharness.{token}.rank{rank}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank {rank} %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log


def release_logger(log: logging.Logger) -> None:
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    logging.Logger.manager.loggerDict.pop(log.name, None)


def process_main(
    conn: Any,
    fn: Callable[[RankContext], Any],
    open_store: Callable[[], Store],
    rank: int,
    world_size: int | None,
    log_path: str,
    token: str,
    seed: int,
    op_timeout: float | None,
    inherited: Sequence[int],
    runner_pid: int,
    tags: Mapping[str, int] | None = None,
    history: str | None = None,
    where: tuple[str, str] = ("local", "127.0.0.1"),
) -> None:
    """A process rank: die with the runner, keep only our own fds, log and dump to our file."""
    _die_with_parent(runner_pid)
    for fd in inherited:  # other ranks' pipes and the runner's listeners are not ours
        with contextlib.suppress(OSError):
            os.close(fd)
    # The scenario's prints, uncaught tracebacks and faulthandler dumps land in the rank's log.
    out = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    # Whatever sys.stdout/stderr were in the runner (pytest's capture, say), ours are the log.
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    faulthandler.register(DUMP_SIGNAL, file=2, all_threads=True, chain=False)
    log = rank_logger(rank, log_path, token)
    conn.send(PipeFd(conn.fileno()))  # so the runner can tell our pipe reads from other waits
    run_rank(
        conn, fn, open_store, rank, world_size, log, seed, op_timeout, tags=tags, history=history,
        where=where,
    )  # fmt: skip
    logging.shutdown()


def _die_with_parent(runner_pid: int) -> None:
    """Ask Linux to SIGKILL us when the runner dies, so no rank outlives a crashed runner."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the runner's reaping still applies
        pass
    if os.getppid() != runner_pid:  # the runner died before prctl took effect
        os._exit(1)

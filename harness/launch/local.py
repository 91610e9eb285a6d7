"""Ranks on this machine: forked (or spawned) processes from a ``multiprocess`` context, or threads.

Each rank has a duplex pipe to the runner.  A process rank first sends :class:`PipeFd` (its end's
number in its own process); the reader keeps it here, since only the ``/proc`` blocked check needs
it.  Process ranks die with the runner (``PR_SET_PDEATHSIG``, set in ``process_main``); threads
cannot be signalled or killed, so a stop reaches them only by closing their store.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
from collections.abc import Callable
from signal import Signals
from typing import Any

import multiprocess

from .. import _inspect as I
from .._messages import PipeFd, RunnerMessage
from .._results import HostClock
from ..context import DUMP_SIGNAL, process_main, rank_logger, release_logger, run_rank
from ._base import KILL_TIMEOUT, REAP_TIMEOUT, Delivery, Handle, RankSpec, Reader, Signalled

__all__ = [
    "BLOCKED_POLL",
    "LocalHandle",
    "LocalLauncher",
    "process_stacks",
    "reap_process",
    "serve_armed",
]

#: Seconds between ``/proc`` looks while a signal waits for its rank to block in a system call.
BLOCKED_POLL = 0.002


class LocalHandle:
    """A rank on this machine: its pipe, and its process or thread."""

    def __init__(self, spec: RankSpec, conn: Any) -> None:
        self.rank = spec.rank
        self.spec = spec
        self.conn = conn
        self.proc: Any = None
        self.thread: threading.Thread | None = None
        self.store: Any = None
        self.control_fd = -1  # the rank's end of its pipe, numbered as in the rank's process
        self.abandoned = False  # a thread still blocked after its stop: not joined again
        self.armed: list[Signals] = []
        self._unregister: Callable[[Any], object] = lambda conn: None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def signalable(self) -> bool:
        return self.proc is not None

    @property
    def is_thread(self) -> bool:
        return self.thread is not None

    def read(self) -> list[Delivery]:
        """What the rank sent (its :class:`PipeFd` is kept here); ``None`` once it closed."""
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            return [(self.rank, None)]
        if isinstance(msg, PipeFd):
            self.control_fd = msg.fd
            return []
        return [(self.rank, msg)]

    def send(self, msg: RunnerMessage) -> None:
        with contextlib.suppress(OSError):  # it died (perhaps by our own fault); EOF is next
            self.conn.send(msg)

    def signal(self, sig: Signals) -> bool:
        return self.proc is not None and I.kill(self.proc.pid, sig)

    def arm(self, sig: Signals) -> None:
        self.armed.append(sig)

    def close_store(self) -> None:
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.close()

    def reap(self, timeout: float) -> None:
        if self.proc is not None:
            self.proc.join(timeout)

    def abandon(self, timeout: float) -> bool:
        if self.thread is None:
            return False
        self.thread.join(timeout)
        self.abandoned = self.thread.is_alive()  # it had its chance: teardown does not wait
        return self.abandoned

    def close(self) -> None:
        self.armed.clear()
        if not self.conn.closed:
            self._unregister(self.conn)
            self.conn.close()

    def exitcode(self) -> int | None:
        return self.proc.exitcode if self.proc is not None else None

    def log_tail(self) -> str:
        return I.tail(self.spec.log_path)

    def history_file(self) -> str:
        return self.spec.history_path


def serve_armed(handles: list[Any]) -> list[Delivery]:
    """Send each armed signal whose rank now sleeps in a system call (not its pipe read).

    Shared with the host agent, which runs the same check on its host: ``handles`` need
    ``rank``, ``pid``, ``control_fd`` and an ``armed`` list (first armed goes first).
    """
    out: list[Delivery] = []
    for handle in handles:
        if not handle.armed or handle.pid is None:
            continue
        syscall = I.blocked_in(handle.pid, handle.control_fd)
        if syscall is None:
            continue
        sig = handle.armed.pop(0)
        I.kill(handle.pid, sig)
        out.append((handle.rank, Signalled(sig, f" while blocked in system call {syscall}")))
    return out


def process_stacks(ranks: list[tuple[int, int, str]], timeout: float) -> dict[int, str]:
    """SIGUSR2 each ``(rank, pid, log path)`` (faulthandler dumps into the log); where each is.

    Shared with the host agent, which dumps the ranks of its host the same way.
    """
    sizes = {rank: I.size(log) for rank, _, log in ranks}
    for _, pid, _ in ranks:
        I.kill(pid, DUMP_SIGNAL)
    I.wait_for_dumps({log: sizes[rank] for rank, _, log in ranks}, timeout)
    return {rank: I.where(I.read_from(log, sizes[rank])) for rank, _, log in ranks}


def reap_process(proc: Any) -> None:
    """Wait (bounded) for a rank process to exit; SIGKILL it if it has not, and wait again.

    Shared with the host agent, which reaps the ranks of its host the same way.
    """
    proc.join(REAP_TIMEOUT)
    if proc.is_alive():
        proc.kill()
        proc.join(KILL_TIMEOUT)


class LocalLauncher:
    """Ranks as processes of ``mp`` (a ``multiprocess`` context), or threads when ``mp`` is None.

    ``extra_fds``: descriptors of the runner a forked rank must close (a proxy's listeners).
    """

    def __init__(self, mp: Any = None, extra_fds: Callable[[], list[int]] = list) -> None:
        self.mp = mp
        self.extra_fds = extra_fds
        self.handles: list[LocalHandle] = []
        self._register: Callable[[Any, Reader], None] | None = None
        self._unregister: Callable[[Any], object] = lambda conn: None

    def bind(
        self, register: Callable[[Any, Reader], None], unregister: Callable[[Any], object]
    ) -> None:
        self._register, self._unregister = register, unregister

    def start(self, spec: RankSpec) -> LocalHandle:
        assert self._register is not None, "bind() the launcher to the runner's selector first"
        history = spec.history_path if spec.history else None
        if self.mp is not None:
            ours, theirs = self.mp.Pipe(duplex=True)
            handle = LocalHandle(spec, ours)
            inherited = [h.conn.fileno() for h in self.handles if not h.conn.closed]
            inherited += [ours.fileno(), *self.extra_fds()]
            args = (
                theirs, spec.fn, spec.open_store, spec.rank, spec.world_size, spec.log_path,
                spec.token, spec.seed, spec.op_timeout, inherited, os.getpid(), spec.tags,
                history,
            )  # fmt: skip
            proc = self.mp.Process(target=process_main, args=args, name=f"rank-{spec.rank}")
            # A forked child must not garbage-collect what it inherited (objects whose threads
            # did not survive the fork can crash when collected): freeze it first.
            gc.freeze()
            try:
                proc.start()
            finally:
                gc.unfreeze()
            theirs.close()
            handle.proc = proc
        else:
            ours, theirs = multiprocess.Pipe(duplex=True)
            handle = LocalHandle(spec, ours)
            log = rank_logger(spec.rank, spec.log_path, spec.token)

            def main() -> None:
                try:
                    run_rank(
                        theirs, spec.fn, spec.open_store, spec.rank, spec.world_size, log,
                        spec.seed, spec.op_timeout, on_open=lambda s: setattr(handle, "store", s),
                        tags=spec.tags, history=history,
                    )  # fmt: skip
                finally:
                    release_logger(log)

            handle.thread = threading.Thread(target=main, name=f"rank-{spec.rank}", daemon=True)
            handle.thread.start()
        handle._unregister = self._unregister
        self.handles.append(handle)
        self._register(ours, handle.read)
        return handle

    def poll(self) -> tuple[list[Delivery], float | None]:
        out = serve_armed(self.handles)
        return out, (BLOCKED_POLL if any(h.armed for h in self.handles) else None)

    def stacks(self, handles: list[Handle], timeout: float) -> dict[int, str]:
        ours = [h for h in self.handles if h in handles]
        procs = [(h.rank, h.proc.pid, h.spec.log_path) for h in ours if h.proc is not None]
        found = process_stacks(procs, timeout)
        for h in ours:
            if h.thread is not None:
                found[h.rank] = I.thread_stack(h.thread, h.rank, h.spec.log_path)
        return found

    def teardown(self, handles: list[Handle], running: list[Handle]) -> None:
        for h in running:
            if h.pid is not None:
                I.kill(h.pid, signal.SIGKILL)
        ours = [h for h in self.handles if h in handles]
        joins_deadline = time.monotonic() + REAP_TIMEOUT  # one bound for all threads, however many
        for h in ours:
            # Past its pipe's end a thread only releases its logger; one still blocked after its
            # stop had its chance (it ends once its endpoint closes, after the world).
            if h.thread is not None and not h.abandoned:
                h.thread.join(max(0.0, joins_deadline - time.monotonic()))
            if h.proc is not None:
                reap_process(h.proc)
            h.close()

    def clocks(self) -> tuple[HostClock, ...]:
        return ()

    def host_fault(self, fault: Any) -> str:
        raise ValueError(
            f"{fault!r} acts between hosts; this world runs on one machine (give it hosts)"
        )

    def close(self) -> None:
        for h in self.handles:
            h.close()
        # Drop the runner's callbacks and our handles: no reference cycle keeps the world (and
        # each process's sentinel descriptor) alive until the garbage collector happens by.
        self.handles = []
        self._register, self._unregister = None, lambda conn: None

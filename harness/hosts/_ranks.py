"""The agent's side of remote ranks: a world's ranks on this host, relayed to the controller.

The controller (:mod:`..launch.remote`) opens a *world* on the agent with a channel of its own
for rank traffic, then asks the agent (over the agent's request channel, answered in order by
the agent's main thread) to start, signal, dump, reap and collect ranks.  Ranks are forked from
the agent's main thread with ``process_main``, exactly as the local launcher forks them from the
runner: the rank↔agent pipe carries the same messages as rank↔runner on one machine, and dies
with the agent's main thread (``PR_SET_PDEATHSIG``).

One relay thread per world reads every rank's pipe and forwards each message *unopened* (the
pickled bytes) on the world channel, keeps each rank's :class:`PipeFd` for the ``/proc`` blocked
check, and sends armed signals once their rank blocks — the check runs here, on the rank's host.
The controller's side of the world channel carries:

controller → agent
    ``("to", rank, bytes)`` a runner message for the rank; ``("arm", rank, signum)``.
agent → controller
    ``("from", rank, bytes)``; ``("eof", rank)`` when its pipe closed;
    ``("signalled", rank, signum, how)`` when an armed signal went out.
"""

from __future__ import annotations

import contextlib
import gc
import linecache
import os
import selectors
import shutil
import signal
import sys
import tempfile
import threading
import types
from typing import Any

import multiprocess
from multiprocess.reduction import ForkingPickler

from .. import _inspect as I
from .._messages import PipeFd
from ..context import process_main
from ..launch._base import Signalled, history_path
from ..launch.local import BLOCKED_POLL, process_stacks, reap_process, serve_armed

__all__ = ["RankHost", "install_module"]

_KILL_TIMEOUT = 5.0  # how long the relay thread gets to end
#: The most of a rank's log sent back to the controller.
LOG_LIMIT = 1 << 20


def install_module(name: str, filename: str, source: str) -> None:
    """Import ``source`` as module ``name`` with frames naming ``filename`` (the controller's
    path), its lines in ``linecache`` so tracebacks and stack dumps show them on this host.

    Parent packages that this host lacks are made as empty packages whose ``__path__`` is the
    controller's directory (found if the hosts share a filesystem, as namespaces do).
    """
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == filename:
        return
    parts = name.split(".")
    directory = os.path.dirname(filename)
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            try:
                __import__(parent)
            except ImportError:
                package = types.ModuleType(parent)
                up = os.sep.join([directory, *[".."] * (len(parts) - 1 - i)])
                package.__path__ = [os.path.normpath(up)]
                sys.modules[parent] = package
    module = types.ModuleType(name)
    module.__file__ = filename
    module.__package__ = name.rpartition(".")[0]
    lines = source.splitlines(keepends=True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    sys.modules[name] = module
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise


class _Rank:
    """One rank process on this host (what ``serve_armed`` needs, and its files)."""

    def __init__(self, rank: int, proc: Any, conn: Any, log_path: str) -> None:
        self.rank, self.proc, self.conn, self.log_path = rank, proc, conn, log_path
        self.control_fd = -1
        self.armed: list[signal.Signals] = []
        self.first = True  # its first message is its PipeFd

    @property
    def pid(self) -> int:
        return int(self.proc.pid)


class RankHost:
    """The ranks of one world on this host, and the thread relaying their pipes."""

    def __init__(self, token: str, channel: Any, modules: list[tuple[str, str, str]]) -> None:
        for name, filename, source in modules:
            install_module(name, filename, source)
        self.token = token
        self.dir = tempfile.mkdtemp(prefix=f"storeharness-{token}-")
        self.channel = channel
        self.mp = multiprocess.get_context("fork")
        self.ranks: dict[int, _Rank] = {}
        self.lock = threading.Lock()
        self.new: list[_Rank] = []  # started, to be registered by the relay thread
        self.closing = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        channel.setcallback(self._from_controller, endmarker=None)
        self.thread = threading.Thread(target=self._relay, name=f"relay-{token}", daemon=True)
        self.thread.start()

    # ----------------------------------------------------------------- requests (main thread)

    def start(self, rank: int, payload: bytes) -> int:
        """Fork rank ``rank`` (``payload``: its pickled function, store opener and settings)."""
        loaded = ForkingPickler.loads(payload)
        fn, open_store, world_size, seed, op_timeout, tags, history, where = loaded
        log_path = os.path.join(self.dir, f"rank-{rank}.log")
        ours, theirs = self.mp.Pipe(duplex=True)
        keep = {0, 1, 2, theirs.fileno()}
        inherited = [int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) not in keep]
        history_file = history_path(log_path) if history else None
        args = (
            theirs, fn, open_store, rank, world_size, log_path, self.token, seed, op_timeout,
            inherited, os.getpid(), tags, history_file, tuple(where),
        )  # fmt: skip
        proc = self.mp.Process(target=process_main, args=args, name=f"rank-{rank}")
        gc.freeze()  # the child must not collect objects whose threads did not survive the fork
        try:
            proc.start()
        finally:
            gc.unfreeze()
        theirs.close()
        entry = _Rank(rank, proc, ours, log_path)
        with self.lock:
            self.ranks[rank] = entry
            self.new.append(entry)
        self._wake()
        return entry.pid

    def signal(self, rank: int, signum: int) -> bool:
        return I.kill(self.ranks[rank].pid, signum)

    def stacks(self, ranks: list[int], timeout: float) -> dict[int, str]:
        procs = [(r, self.ranks[r].pid, self.ranks[r].log_path) for r in ranks if r in self.ranks]
        return process_stacks(procs, timeout)

    def reap(self, rank: int, timeout: float) -> int | None:
        proc = self.ranks[rank].proc
        proc.join(timeout)
        return None if proc.exitcode is None else int(proc.exitcode)

    def files(self, rank: int) -> tuple[bytes, bytes | None]:
        """The end of the rank's log (at most :data:`LOG_LIMIT`) and its history file."""
        log = self.ranks[rank].log_path
        text = I.read_from(log, max(0, I.size(log) - LOG_LIMIT)).encode()
        try:
            with open(history_path(log), "rb") as f:
                return text, f.read()
        except FileNotFoundError:
            return text, None

    def close(self, kill: list[int]) -> None:
        """Kill ``kill``, reap every rank (SIGKILL after a bounded wait), remove the work dir."""
        for rank in kill:
            if rank in self.ranks:
                I.kill(self.ranks[rank].pid, signal.SIGKILL)
        for entry in self.ranks.values():
            reap_process(entry.proc)
        self.closing = True
        self._wake()
        self.thread.join(_KILL_TIMEOUT)
        for entry in self.ranks.values():
            with contextlib.suppress(OSError):
                entry.conn.close()
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------- the controller's messages

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wake_w, b"!")

    def _from_controller(self, msg: Any) -> None:
        """On execnet's receiver thread: relay a runner message, or arm a signal."""
        if msg is None:  # the controller closed the world channel
            return
        kind, rank = msg[0], msg[1]
        entry = self.ranks.get(rank)
        if entry is None:
            return
        if kind == "to":
            with contextlib.suppress(OSError):  # it died; its EOF reaches the controller next
                entry.conn.send_bytes(msg[2])
        elif kind == "arm":
            with self.lock:
                entry.armed.append(signal.Signals(msg[2]))
            self._wake()

    # ------------------------------------------------------------------------ relay thread

    def _relay(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.wake_r, selectors.EVENT_READ, None)
        try:
            while not self.closing:
                with self.lock:
                    armed = any(e.armed for e in self.ranks.values())
                for key, _ in sel.select(BLOCKED_POLL if armed else None):
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError, OSError):
                            os.read(self.wake_r, 4096)
                        with self.lock:
                            new, self.new = self.new, []
                        for entry in new:
                            sel.register(entry.conn, selectors.EVENT_READ, entry)
                    else:
                        self._read(sel, key.data)
                with self.lock:
                    sent = serve_armed(list(self.ranks.values()))
                for rank, what in sent:
                    if isinstance(what, Signalled):
                        self._send(("signalled", rank, int(what.sig), what.how))
        finally:
            sel.close()

    def _read(self, sel: selectors.BaseSelector, entry: _Rank) -> None:
        try:
            data = entry.conn.recv_bytes()
        except (EOFError, OSError):
            sel.unregister(entry.conn)
            with self.lock:
                entry.armed.clear()
            self._send(("eof", entry.rank))
            return
        if entry.first:
            entry.first = False
            msg = ForkingPickler.loads(data)
            if isinstance(msg, PipeFd):
                entry.control_fd = msg.fd
                return
        self._send(("from", entry.rank, data))

    def _send(self, msg: tuple[Any, ...]) -> None:
        with contextlib.suppress(Exception):  # the controller is gone: the lease ends us
            self.channel.send(msg)

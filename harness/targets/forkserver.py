"""Our TCPStore servers, forked from a pre-imported template instead of started from scratch.

A fresh ``python -m storeharness.stores.tcp`` spends most of its start-up importing ``stores``
and uvloop.  :class:`ForkServer` starts one template process per owner process (lazily, the
first time a server is asked for; see ``harness/_forkserver_main.py``) and each
:class:`ForkedServer` is a fork of it: its own process, serving its own empty store on the
socket its endpoint bound, stopped by the same ladder as any child (close its stdin, SIGTERM,
SIGKILL).  Where the template cannot run (no ``os.pidfd_open``: not Linux, an old kernel),
:func:`forked_server` falls back to a fresh :class:`~storeharness.stores.tcp.ServerProcess`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import IO, Any

from ...stores._process import stop_process
from ...stores.tcp import ServerProcess
from ...stores.tcp.codec import Limits

__all__ = [
    "LOST",
    "ForkServer",
    "ForkedProcess",
    "ForkedServer",
    "ForkedTorchServer",
    "forked_server",
    "template",
]

#: What the template runs (see the module docstring of ``_forkserver_main``).
TEMPLATE_MODULE = "storeharness.harness._forkserver_main"
#: How long a request may wait for the template's answer (a loaded machine), in seconds.
REPLY_TIMEOUT = 60.0
KINDS = ("ours", "torch")
#: The exit code of a server whose template died before it could tell us the real one.
LOST = 255


class ForkServerError(RuntimeError):
    """The template would not start, or would not fork a server."""


class ForkedProcess:
    """A server the template forked, with the part of ``Popen``'s interface owners use.

    Not our child but the template's: it is signalled through a pidfd (never a reused pid),
    and its end is read from the status pipe the template writes its wait status to.
    """

    def __init__(
        self, pid: int, pidfd: int, watch: int, status: int, out: int | None = None
    ) -> None:
        self.pid, self.args = pid, [TEMPLATE_MODULE, f"server {pid}"]
        self._pidfd, self._status = pidfd, status
        #: Closing it tells the server to stop serving (it is the server's stdin).  Text, as
        #: a ``Popen(text=True)``'s: a proxy reads its commands from it as lines.
        self.stdin: IO[str] | None = os.fdopen(watch, "w", encoding="utf-8")
        #: The child's stdout (a proxy's replies), when it was given one.
        self.stdout: IO[str] | None = None if out is None else os.fdopen(out, encoding="utf-8")
        self.stderr: IO[str] | None = None
        self.returncode: int | None = None

    def __repr__(self) -> str:
        return f"ForkedProcess(pid={self.pid}, returncode={self.returncode})"

    def poll(self) -> int | None:
        """Its exit code once it has ended (negative: the signal that ended it), else ``None``."""
        if self.returncode is None and select.select([self._pidfd], [], [], 0)[0]:
            self._collect()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for it to end; raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        if self.returncode is None:
            # a pidfd reads as ready once its process has ended (reaped or not)
            if not select.select([self._pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            self._collect()
        assert self.returncode is not None
        return self.returncode

    def _collect(self) -> None:
        """It has ended: read the wait status the template writes once it has reaped it."""
        data = b""
        if select.select([self._status], [], [], REPLY_TIMEOUT)[0]:
            data = os.read(self._status, 4)
        if len(data) == 4:
            self.returncode = os.waitstatus_to_exitcode(struct.unpack("!i", data)[0])
        else:  # the template died before it could reap this server: its exit code is lost
            self.returncode = LOST
        self._release()

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it ended just now
                signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def _release(self) -> None:
        for fd in (self._pidfd, self._status):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pidfd = self._status = -1

    def __del__(self) -> None:
        if self._status >= 0:
            self._release()


class ForkServer:
    """One template process, started on first use; :meth:`spawn` forks a server from it.

    ``kind`` is ``"ours"`` (our server; the template imports ``stores`` and uvloop) or
    ``"torch"`` (torch's TCPStore master; the template imports torch).
    """

    def __init__(
        self, kind: str = "ours", popen: Callable[..., subprocess.Popen[bytes]] | None = None
    ) -> None:
        """``popen(argv, pass_fds=, stdin=)`` starts the template (default ``subprocess.Popen``;
        a host's agent passes its own, so the template is a process the agent owns)."""
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}; use one of {', '.join(KINDS)}")
        self.kind = kind
        self._popen = popen or subprocess.Popen
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = self._popen(
                [
                    sys.executable,
                    "-m",
                    TEMPLATE_MODULE,
                    str(theirs.fileno()),
                    *(["--torch"] if self.kind == "torch" else []),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        ours.settimeout(REPLY_TIMEOUT)
        try:
            hello, _ = self._answer(ours)
            if "ready" not in hello:
                raise ForkServerError(f"the server template said {hello!r}")
        except BaseException:
            ours.close()
            stop_process(self._proc)
            self._proc = None
            raise
        self._control = ours
        return ours

    @staticmethod
    def _answer(control: socket.socket) -> tuple[dict[str, Any], list[int]]:
        try:
            head, fds, _, _ = socket.recv_fds(control, 4, 1)
            if len(head) != 4:
                raise ForkServerError("the server template exited")
            size = struct.unpack("!I", head)[0]
            body = b""
            while len(body) < size:
                chunk = control.recv(size - len(body))
                if not chunk:
                    raise ForkServerError("the server template exited mid-answer")
                body += chunk
        except OSError as exc:
            raise ForkServerError(f"the server template did not answer: {exc}") from exc
        reply: dict[str, Any] = json.loads(body)
        return reply, fds

    def spawn(self, sock: socket.socket, *, stdout: bool = False, **settings: Any) -> ForkedProcess:
        """Fork a server for ``sock`` (which the server takes over: closed here).

        ``settings``: ``limits`` (a dict of :class:`Limits` fields) and ``accelerate`` for
        ours, ``use_libuv`` for torch's, ``kind="proxy"`` and ``upstream="host:port"`` for the
        fault proxy.  ``stdout=True`` gives the child a pipe for its stdout (``proc.stdout``).
        """
        watch_r, watch_w = os.pipe()
        status_r, status_w = os.pipe()
        out_r, out_w = os.pipe() if stdout else (None, None)
        request = json.dumps({"kind": self.kind, **settings}).encode()
        passed = [sock.fileno(), watch_r, status_w, *([] if out_w is None else [out_w])]
        try:
            with self._lock:
                for attempt in (1, 2):
                    fresh = self._control is None
                    control = self._control or self._start()
                    try:
                        socket.send_fds(control, [request], passed)
                        reply, fds = self._answer(control)
                        break
                    except (OSError, ForkServerError):
                        self._close()
                        if fresh or attempt == 2:
                            raise
                        # the template died since its last fork (killed, say): start another
        except BaseException:
            for fd in (watch_w, status_r, out_r):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in (watch_r, status_w, out_w):
                if fd is not None:
                    os.close(fd)
            sock.close()
        if "pid" not in reply or len(fds) != 1:
            for fd in (*fds, watch_w, status_r, out_r):
                if fd is not None:
                    os.close(fd)
            raise ForkServerError(f"the server template would not fork: {reply.get('error')}")
        return ForkedProcess(int(reply["pid"]), fds[0], watch_w, status_r, out_r)

    def _close(self) -> None:
        if self._control is not None:
            self._control.close()  # the template exits when it sees its control socket close
            self._control = None
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None

    def close(self) -> None:
        """Stop the template (servers it forked keep serving until their owners stop them)."""
        with self._lock:
            self._close()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid


_TEMPLATES: dict[tuple[int, str], ForkServer] = {}
_TEMPLATES_LOCK = threading.Lock()


def template(kind: str = "ours") -> ForkServer:
    """This process's template of ``kind`` (a forked rank gets its own, not its parent's)."""
    with _TEMPLATES_LOCK:
        key = (os.getpid(), kind)
        if key not in _TEMPLATES:
            _TEMPLATES[key] = ForkServer(kind)
        return _TEMPLATES[key]


#: Set to ``0`` to start every server as a fresh interpreter (to compare, or to rule it out).
ENV = "STOREHARNESS_FORKSERVER"


def available() -> bool:
    """Whether servers are forked from a template here: Linux pidfds, and not turned off by
    ``STOREHARNESS_FORKSERVER=0``."""
    if os.environ.get(ENV, "1").strip() == "0":
        return False
    return hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


class ForkedServer:
    """Our TCPStore server on ``sock``, forked from this process's template (see the module)."""

    def __init__(
        self, sock: socket.socket, limits: Limits | None = None, accelerate: bool | None = None
    ) -> None:
        self.port: int = sock.getsockname()[1]
        self.proc = template().spawn(sock, limits=asdict(limits or Limits()), accelerate=accelerate)

    def __repr__(self) -> str:
        return f"ForkedServer(port={self.port}, pid={self.proc.pid})"

    def stop(self) -> None:
        """Close its stdin (it stops serving), then SIGTERM, then SIGKILL; idempotent."""
        stop_process(self.proc)


class ForkedTorchServer:
    """torch's TCPStore master on ``sock``, forked from this process's torch template."""

    def __init__(self, sock: socket.socket, use_libuv: bool = True) -> None:
        self.port: int = sock.getsockname()[1]
        self.proc = template("torch").spawn(sock, use_libuv=use_libuv)

    def __repr__(self) -> str:
        return f"ForkedTorchServer(port={self.port}, pid={self.proc.pid})"

    def stop(self) -> None:
        """Close its stdin (it stops serving), then SIGTERM, then SIGKILL; idempotent."""
        stop_process(self.proc)


def forked_server(
    sock: socket.socket, limits: Limits | None = None, accelerate: bool | None = None
) -> ForkedServer | ServerProcess:
    """A server forked from the template where that works here, else a fresh process."""
    if available():
        return ForkedServer(sock, limits, accelerate)
    return ServerProcess(sock, limits, accelerate)

"""A userspace TCP proxy between ranks and a store server that can delay, drop or black-hole.

It runs an asyncio loop in a thread of the runner's process and listens on an ephemeral
loopback port (bound once, never picked-then-bound).  Faults switch its mode; ``heal()``
switches back.  Chunks are forwarded in order per direction, so a delay slows a connection down
without reordering it; a black hole swallows bytes in both directions while keeping every
connection open, so clients see silence, not an error; a drop resets every live connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Coroutine
from typing import Any

from ..stores._process import Child, stop_process

__all__ = ["Proxy", "ProxyProcess"]

_CHUNK = 1 << 16
#: What ``ProxyProcess`` runs.  Not this module: the package imports this one (through
#: targets.py), and ``python -m`` of a module its package already imported warns at every start.
CHILD_MODULE = "storeharness.harness._proxy_main"


class Proxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream``; ``close()`` stops it and every connection."""

    def __init__(
        self, upstream_host: str, upstream_port: int, listener: socket.socket | None = None
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = 0.0
        self.blackholed = False
        self._conns: set[asyncio.StreamWriter] = set()
        self._listener = listener or socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.port: int = self._listener.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name=f"proxy-{self.port}", daemon=True
        )
        self._thread.start()
        started.wait()

    def __repr__(self) -> str:
        host, port = self.upstream
        return f"Proxy(127.0.0.1:{self.port} → {host}:{port})"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._accept, sock=self._listener)

        self._loop.run_until_complete(serve())
        started.set()
        self._loop.run_forever()
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # ----------------------------------------------------------------------------- modes

    def set_delay(self, seconds: float) -> None:
        """Hold every chunk for ``seconds`` before forwarding it (0 to stop)."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {seconds!r}")
        self.delay = seconds

    def blackhole(self) -> None:
        """Swallow all traffic from now on; connections stay open."""
        self.blackholed = True

    def heal(self) -> None:
        """Forward normally again (what was swallowed stays lost)."""
        self.delay = 0.0
        self.blackholed = False

    def drop(self) -> int:
        """Reset every live connection (RST to both sides); returns how many there were."""
        count = len(self._conns)

        async def reset() -> None:
            for writer in list(self._conns):
                _reset(writer)

        self._call(reset())
        return count

    def close(self) -> None:
        """Stop listening, reset every connection, and stop the proxy's thread."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._conns):
                _reset(writer)

        self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._listener.close()

    # ------------------------------------------------------------------------ forwarding

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        self._conns |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
            )
        finally:
            self._conns -= {writer, up_writer}
            for w in (writer, up_writer):
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(_CHUNK):
            if self.delay and not self.blackholed:
                await asyncio.sleep(self.delay)  # the fault itself: traffic arrives late
            if self.blackholed:
                continue
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the peer sees a reset rather than an orderly end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ProxyProcess:
    """A :class:`Proxy` in a process of its own, driven by one-line commands on its stdin.

    Ranks forked by the runner must not inherit the proxy's sockets (a reset only happens when
    the last copy of a socket closes), so the proxy lives outside the runner.  It listens on a
    socket this process bound (so its port is known before it starts), and it exits when its
    stdin closes, so it cannot outlive its owner.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        from .targets import forkserver  # the targets import this module

        listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.port: int = listener.getsockname()[1]
        self.upstream = (upstream_host, upstream_port)
        self.proc: Child
        if forkserver.available():  # forked from the template: no interpreter start-up
            self.proc = forkserver.template().spawn(
                listener, stdout=True, kind="proxy", upstream=f"{upstream_host}:{upstream_port}"
            )
            return
        args = [
            sys.executable, "-m", CHILD_MODULE,
            "--listen-fd", str(listener.fileno()),
            "--upstream", f"{upstream_host}:{upstream_port}",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=[listener.fileno()],
            text=True,
        )
        listener.close()

    def __repr__(self) -> str:
        host, port = self.upstream
        return f"ProxyProcess(127.0.0.1:{self.port} → {host}:{port}, pid={self.proc.pid})"

    def command(self, line: str) -> str:
        """Send one command (``delay S``, ``blackhole``, ``heal``, ``drop``); return its reply."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(line + "\n")
        stdin.flush()
        reply = str(stdout.readline()).strip()
        if not reply.startswith("ok"):
            raise RuntimeError(f"{self!r}: command {line!r} failed: {reply or 'proxy exited'}")
        return reply

    def close(self) -> None:
        """Close its stdin (it stops), then SIGTERM, then SIGKILL, each with a bounded wait."""
        stop_process(self.proc)

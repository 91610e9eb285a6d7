"""The TCPStore server: asyncio transport around the state machine, in a thread or a process.

A bad peer (wrong magic, garbage, a length over the limits, an unknown command) loses only its
own connection, which is logged; a client that stops reading has its reads paused so memory stays
bounded.  Run standalone with ``python -m storeharness.stores.tcp --port 29500``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from .._errors import StoreBindError, StoreError
from .._process import stop_process
from ._accel import speedups
from ._state import Conn, ServerState
from .codec import Limits, ProtocolError, Query, RequestDecoder

__all__ = ["ServerProcess", "TCPServer", "bind_listener"]

log = logging.getLogger("storeharness.stores.tcp.server")

#: The requests that change a connection's handshake state (validated, extended).
_HANDSHAKE = frozenset({Query.VALIDATE, Query.PING})


def bind_listener(port: int, backlog: int = 4096, host: str | None = None) -> socket.socket:
    """Bind and listen on ``host``, or on every interface as torch's server does (the default).

    With no ``host``: IPv6 dual-stack (``::``), else IPv4 (``0.0.0.0``), as a torch
    ``TCPStore`` master listens.  With one (``"127.0.0.1"``, ``"::1"``, a name): each address it
    resolves to, in order, until one binds.  Raises :class:`StoreBindError` (a
    ``DistNetworkError``, as torch's) naming the address and port when none can be bound (the
    port in use, an address not on this machine).
    """
    if host is None:
        candidates = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise StoreBindError(
                f"cannot listen on {host}:{port}: {exc.strerror} (give an address of this machine)",
                host=host,
                port=port,
            ) from exc
        candidates = list(dict.fromkeys((info[0], str(info[4][0])) for info in infos))
    errors = []
    last_errno: int | None = None
    for family, address in candidates:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            errors.append(f"{address}: {exc.strerror}")
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and host is None:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((address, port))
            sock.listen(backlog)
            return sock
        except OSError as exc:
            sock.close()
            last_errno = exc.errno
            errors.append(f"[{address}]:{port}: {exc.strerror}")
            if exc.errno == errno.EADDRINUSE:
                break
    raise StoreBindError(
        "The server socket has failed to listen on any local network address. "
        f"port: {port}: {'; '.join(errors)} (another server on this port? use port=0 or "
        "multi_tenant=True to share one)",
        port=port,
        errno=last_errno,
    )


def adopt_listener(fd: int, port: int, backlog: int = 4096) -> socket.socket:
    """Take over an already bound socket (listening or not); its port must be ``port`` (or 0)."""
    sock = socket.socket(fileno=fd)
    bound = sock.getsockname()[1]
    if port not in (0, bound):
        sock.detach()
        raise StoreError(
            f"listen fd {fd} is bound to port {bound}, expected to be bound to port {port}",
            fd=fd,
            port=port,
        )
    sock.listen(backlog)
    return sock


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class _Connection(asyncio.Protocol):
    def __init__(self, server: TCPServer) -> None:
        self.server = server
        self.transport: Any = None
        self.conn: Conn | None = None
        self.decoder = RequestDecoder(server.limits)
        self.paused = False
        #: The C fast path bound to this connection (see _arm), or None.
        self.serve: Callable[[bytes | bytearray], int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        state = self.server.state
        peer = transport.get_extra_info("peername")
        if state.connections >= self.server.max_connections:
            log.warning("refusing %s: %d connections (max_connections)", peer, state.connections)
            self.transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = Conn(self.transport.write, str(peer))
        state.connect(self.conn)
        self.server.protocols.add(self)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:
            return
        serve = self.serve
        if serve is not None and not self.paused and not self.decoder.buffered:
            # The common case: whole requests in one read, answered in C without a copy.
            try:
                used = serve(data)
            except Exception:
                self._internal_error(conn)
                return
            if used == len(data):
                return
            data = data[used:]
        self.decoder.feed(data)
        self._process()

    def _process(self) -> None:
        """Handle buffered requests until none is complete or the peer stops reading replies.

        With the C speedups, the leading requests they can answer are answered there (see
        ``_speedups.c``); the first one they leave, the Python state machine handles.
        """
        conn = self.conn
        if conn is None:
            return
        decoder = self.decoder
        handle = self.server.state.handle
        try:
            while not self.paused:
                serve = self.serve
                if serve is not None and decoder.ready:
                    used = serve(decoder.buffer)
                    if used:
                        decoder.consume(used)
                        continue  # flow control may have paused us meanwhile
                request = decoder.next()
                if request is None:
                    break
                handle(conn, request)
                if request[0] in _HANDSHAKE:  # validated or extended: rebind the fast path
                    decoder.extended = conn.extended
                    self._arm()
        except ProtocolError as exc:
            log.warning("dropping connection %s: %s", conn.name, exc)
            self.transport.abort()
        except Exception:
            self._internal_error(conn)

    def _internal_error(self, conn: Conn) -> None:
        log.exception("dropping connection %s after an internal error", conn.name)
        self.transport.abort()

    def _arm(self) -> None:
        """Bind the C fast path to this connection once validated (again once extended)."""
        conn, serve = self.conn, self.server.serve_fast
        if serve is None or conn is None or not conn.validated:
            self.serve = None
            return
        state, lim = self.server.state, self.server.limits
        self.serve = functools.partial(
            serve, state.data, state.waiters, conn.extended,
            lim.max_key, lim.max_value, lim.max_keys, conn.send,
        )  # fmt: skip

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.server.state.disconnect(self.conn)
            self.conn = None
        self.server.protocols.discard(self)

    def pause_writing(self) -> None:
        # The peer is not reading its replies: stop handling and reading its requests, so at
        # most one reply past the high-water mark and one read chunk are ever buffered for it.
        self.paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        self.transport.resume_reading()
        self._process()


class TCPServer:
    """Serves one store on a listening socket, from an event loop in a background thread.

    Use :func:`bind_listener` or :func:`adopt_listener` for the socket; ``port`` tells which port.
    """

    def __init__(
        self,
        sock: socket.socket,
        limits: Limits | None = None,
        max_connections: int = 1 << 16,
        accelerate: bool | None = None,
    ) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.limits = limits or Limits()
        self.max_connections = max_connections
        self.state = ServerState()
        # The C fast path (None: pure Python).  accelerate=None: use it when built.
        module = speedups(accelerate, "TCPServer")
        self.serve_fast: Any = None if module is None else module.serve
        self.protocols: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Future[None] | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    def __repr__(self) -> str:
        return f"TCPServer(port={self.port})"

    def start(self) -> TCPServer:
        """Start serving in a daemon thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self._run, name=f"tcpstore-{self.port}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise StoreError(f"TCPStore server on port {self.port} failed to start") from (
                self._failure
            )
        return self

    def _run(self) -> None:
        loop = self._loop = _new_loop()
        try:
            loop.run_until_complete(self.serve())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
        finally:
            loop.close()

    async def serve(self, until: asyncio.Future[None] | None = None) -> None:
        """Serve until :meth:`stop` (or ``until`` completes); then close every connection."""
        loop = asyncio.get_running_loop()
        self._stop = until if until is not None else loop.create_future()
        server = await loop.create_server(lambda: _Connection(self), sock=self.sock)
        self._ready.set()
        try:
            await self._stop
        finally:
            server.close()
            for proto in list(self.protocols):
                proto.transport.abort()
            await server.wait_closed()

    def adopt(self, sock: socket.socket) -> concurrent.futures.Future[None]:
        """Serve an already connected socket (one end of a socketpair, say) like an accepted one.

        Thread-safe; the server must be running.  Used to drive the full connection path
        without paying for a TCP connect (fuzzing, tests).
        """
        loop = self._loop
        if loop is None or self._stop is None:
            raise StoreError(f"{self!r} is not running")

        async def attach() -> None:
            await loop.connect_accepted_socket(lambda: _Connection(self), sock)

        return asyncio.run_coroutine_threadsafe(attach(), loop)

    def stop(self) -> None:
        """Stop serving and drop every client (they get "connection closed"); idempotent."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already closing
                loop.call_soon_threadsafe(_finish, stop)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        with contextlib.suppress(OSError):
            self.sock.close()


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(Limits))


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


def _limit_options(limits: Limits) -> list[str]:
    """``limits`` as the server's command-line options (``--max-key N ...``), every field."""
    return [arg for name in _LIMIT_FIELDS for arg in (_option(name), str(getattr(limits, name)))]


class ServerProcess:
    """A TCPStore server in a process of its own, on a socket this process bound.

    The child serves until this object's ``stop()`` or this process's exit (it watches a pipe
    from us and stops on EOF), so it cannot outlive its owner.
    """

    def __init__(
        self, sock: socket.socket, limits: Limits | None = None, accelerate: bool | None = None
    ) -> None:
        self.port: int = sock.getsockname()[1]
        lim = limits or Limits()
        speed = {None: "auto", True: "yes", False: "no"}[accelerate]
        args = [
            sys.executable, "-m", "storeharness.stores.tcp", "--listen-fd", str(sock.fileno()),
            *_limit_options(lim), "--accelerate", speed,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, pass_fds=[sock.fileno()])
        sock.close()  # the child holds it now; the port stays bound, so no race

    def __repr__(self) -> str:
        return f"ServerProcess(port={self.port}, pid={self.proc.pid})"

    def stop(self) -> None:
        """Close its stdin (it stops serving), then SIGTERM, then SIGKILL; idempotent."""
        stop_process(self.proc)


def _serve_process(
    sock: socket.socket, limits: Limits, watch_stdin: bool, accelerate: bool | None = None
) -> None:
    server = TCPServer(sock, limits, accelerate=accelerate)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        until: asyncio.Future[None] = loop.create_future()

        def finish() -> None:
            if not until.done():
                until.set_result(None)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, finish)
        if watch_stdin:

            def on_stdin() -> None:
                if not os.read(0, 4096):
                    loop.remove_reader(0)
                    finish()

            loop.add_reader(0, on_stdin)
        await server.serve(until)

    loop = _new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a TCPStore (torch c10d wire protocol).")
    parser.add_argument("--port", type=int, default=29500, help="port to bind (0: any)")
    parser.add_argument("--listen-fd", type=int, help="serve an already bound socket instead")
    defaults = Limits()
    for name in _LIMIT_FIELDS:  # every field, so a new limit cannot be left behind
        parser.add_argument(
            _option(name), type=int, default=getattr(defaults, name), help=f"Limits.{name}"
        )
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument(
        "--accelerate",
        choices=["auto", "yes", "no"],
        default="auto",
        help="the C hot path: when built (auto), required (yes), or pure Python (no)",
    )
    args = parser.parse_args(argv)
    accelerate = {"auto": None, "yes": True, "no": False}[args.accelerate]
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    limits = Limits(**{name: getattr(args, name) for name in _LIMIT_FIELDS})
    if args.listen_fd is not None:
        _serve_process(adopt_listener(args.listen_fd, 0), limits, True, accelerate)
    else:
        sock = bind_listener(args.port)
        print(f"serving TCPStore on port {sock.getsockname()[1]}", flush=True)
        _serve_process(sock, limits, False, accelerate)


if __name__ == "__main__":
    main()

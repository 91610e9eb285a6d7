"""The TCPStore server: asyncio transport around the state machine, in a thread or a process.

A bad peer (wrong magic, garbage, a length over the limits, an unknown command) loses only its
own connection, which is logged; a client that stops reading has its reads paused so memory stays
bounded (see :class:`~.codec.Limits` for every bound).  A server in a process of its own, and the
standalone ``python -m storeharness.stores.tcp``, are in :mod:`._standalone`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import functools
import logging
import resource
import socket
import threading
from collections.abc import Callable
from typing import Any

from .._errors import StoreBindError, StoreError
from ._accel import speedups
from ._state import Conn, ServerState
from .codec import Limits, ProtocolError, Query, RequestDecoder, reply_error

__all__ = ["TCPServer", "adopt_listener", "bind_listener"]

log = logging.getLogger("storeharness.stores.tcp.server")

#: The requests that change a connection's handshake state (validated, extended).
_HANDSHAKE = frozenset({Query.VALIDATE, Query.PING, Query.AUTH})


#: What a port-in-use error suggests to a caller of the Python API.
API_HINT = "use port=0 or multi_tenant=True to share one"


def bind_listener(
    port: int, backlog: int = 4096, host: str | None = None, *, hint: str = API_HINT
) -> socket.socket:
    """Bind and listen on ``host``, or on every interface as torch's server does (the default).

    With no ``host``: IPv6 dual-stack (``::``), else IPv4 (``0.0.0.0``), as a torch
    ``TCPStore`` master listens.  With one (``"127.0.0.1"``, ``"::1"``, a name): each address it
    resolves to, in order, until one binds.  Raises :class:`StoreBindError` (a
    ``DistNetworkError``, as torch's) naming the address and port when none can be bound (the
    port in use, an address not on this machine); ``hint`` is what its message suggests.
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
        f"port: {port}: {'; '.join(errors)} (another server on this port? {hint})",
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


#: File descriptors kept free of connections: the listener, the loop's own, logs, pipes.
_FD_RESERVE = 32


def _fd_room() -> int:
    """Connections this process can hold open at once (RLIMIT_NOFILE, less a reserve)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(1, soft - _FD_RESERVE)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


#: Replies are handed to the transport in pieces of at most this many bytes, the next only once
#: it has room: a connection's unsent replies are then at most the transport's high-water mark
#: plus one piece in copies, the rest references to stored values (multi_get amplification).
_PIECE = 1 << 18


class _Connection(asyncio.Protocol):
    def __init__(self, server: TCPServer) -> None:
        self.server = server
        self.transport: Any = None
        self.conn: Conn | None = None
        self.decoder = RequestDecoder(server.limits)
        #: Handling paused: the peer is not reading its replies (transport over high water,
        #: or replies queued here).
        self.paused = False
        #: Replies (or their remainders) not yet handed to the transport, and their size.
        self.backlog: collections.deque[bytes | memoryview] = collections.deque()
        self.queued = 0
        #: Bytes this connection holds in the server's buffer budget (see _account).
        self.held = 0
        self.deadline: asyncio.TimerHandle | None = None
        #: The C fast path bound to this connection (see _arm), or None.
        self.serve: Callable[[bytes | bytearray], int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        server = self.server
        state = server.state
        peer = transport.get_extra_info("peername")
        if state.connections >= server.max_connections:
            log.warning(
                "refusing %s: %d connections open (max_connections=%d)",
                peer, state.connections, server.max_connections,
            )  # fmt: skip
            self.transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = Conn(self.send, str(peer), self.sendv, self.transport.abort)
        state.connect(self.conn)
        server.protocols.add(self)
        loop = server.loop_or_none()
        if loop is not None:
            self.deadline = loop.call_later(server.limits.handshake_timeout, self._handshake_due)

    def _handshake_due(self) -> None:
        conn = self.conn
        if conn is not None and not conn.authed:
            log.warning(
                "dropping connection %s: no complete handshake within %.1f s "
                "(handshake_timeout)", conn.name, self.server.limits.handshake_timeout,
            )  # fmt: skip
            self.transport.abort()

    # ----------------------------------------------------------------- replies

    def send(self, data: bytes) -> None:
        if self.backlog or self.paused or len(data) > _PIECE:
            self.backlog.append(data)
            self.queued += len(data)
            self._flush()
        else:
            self.transport.write(data)

    def sendv(self, parts: list[bytes]) -> None:
        self.backlog.extend(parts)
        self.queued += sum(len(p) for p in parts)
        self._flush()

    def _flush(self) -> None:
        """Hand queued replies to the transport while it has room (pause_writing says not)."""
        backlog, write = self.backlog, self.transport.write
        while backlog and not self.paused:
            data = backlog.popleft()
            if len(data) > _PIECE:
                view = memoryview(data)
                backlog.appendleft(view[_PIECE:])
                data = view[:_PIECE]
            self.queued -= len(data)
            write(data)
        self._account()

    # ----------------------------------------------------------------- requests

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
                if self.queued:
                    self._account()
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
                    if self.serve is not None and decoder.ready:
                        continue  # a trickled many-key request is complete: C may take it
                    self._budget(conn)
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
        self._account()

    def _account(self) -> None:
        """Update the server-wide count of buffered bytes with this connection's."""
        held = self.decoder.buffered + self.queued
        self.server.buffered += held - self.held
        self.held = held

    def _budget(self, conn: Conn) -> None:
        """Refuse the incomplete request at the head if buffering it breaks ``max_buffered``."""
        need = self.decoder.need
        if need <= self.decoder.buffered + 1:
            return  # no length announced yet
        limit = self.server.limits.max_buffered
        others = self.server.buffered - self.held
        if others + need + self.queued <= limit:
            return
        why = (
            f"the server is short of buffer space: a request of {need} bytes while "
            f"{others} bytes are buffered for other connections (max_buffered={limit}); "
            "retry later, send less at once, or raise the server's max_buffered"
        )
        if conn.extended:
            self.transport.write(reply_error(why))
        raise ProtocolError(why)

    def _internal_error(self, conn: Conn) -> None:
        log.exception("dropping connection %s after an internal error", conn.name)
        self.transport.abort()

    def _arm(self) -> None:
        """Bind the C fast path to this connection once validated (again once extended)."""
        conn, serve = self.conn, self.server.serve_fast
        if serve is None or conn is None or not conn.authed:
            self.serve = None
            self.decoder.defer = False
            return
        self.decoder.defer = True
        state, lim = self.server.state, self.server.limits
        self.serve = functools.partial(
            serve, state.data, state.waiters, conn.extended,
            lim.max_key, lim.max_value, lim.max_keys, conn.send,
        )  # fmt: skip

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        if self.conn is not None:
            self.server.state.disconnect(self.conn)
            self.conn = None
        self.backlog.clear()
        self.queued = 0
        self.decoder.consume(self.decoder.buffered)
        self._account()
        self.server.protocols.discard(self)

    def pause_writing(self) -> None:
        # The peer is not reading its replies: stop handling and reading its requests, so at
        # most one reply past the high-water mark and one read chunk are ever buffered for it.
        self.paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        self._flush()
        if self.paused:
            return
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
        accelerate: bool | None = None,
        token: str | None = None,
    ) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.limits = lim = limits or Limits()
        #: Connections served at once: the limit, kept below the file-descriptor limit so
        #: that accepting (and refusing) never fails for want of one.
        self.max_connections = min(lim.max_connections, _fd_room())
        self.state = ServerState(lim, token)
        # The C fast path (None: pure Python).  accelerate=None: use it when built.
        module = speedups(accelerate, "TCPServer")
        self.serve_fast: Any = None if module is None else module.serve
        self.protocols: set[_Connection] = set()
        #: Bytes buffered for every connection's requests and replies (``max_buffered``).
        self.buffered = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Future[None] | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    def loop_or_none(self) -> asyncio.AbstractEventLoop | None:
        """The running event loop serving this server, if any (none when driven directly)."""
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None

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

"""The blocking TCPStore client: one connection, strict request/reply, the shared codec.

Against our server it negotiates the extensions (one-round-trip ``get``, error replies that keep
the connection, server-side counter waits); against torch's server it speaks plain torch.  Keys
passed here are wire keys (the facade adds torch's ``/`` prefix).

Time.  Two durations, each named ``*_timeout``: ``connect_timeout`` bounds connecting (TCP
connect and handshake, with retries while nobody listens); ``io_timeout`` bounds a request that
the server answers at once (``add``, ``check``...), from sending it to its reply; a blocking
request (a wait) is bounded by the ``timeout`` it is given.  Each request computes its
*deadline*, an instant of ``time.monotonic()``, once, and passes it down, into the C speedups too.

A connection that breaks mid-request (server gone, a signal handler raising) is closed; the
request fails with :class:`StoreBroken` and the next request reconnects (:mod:`._connect`).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from time import monotonic
from typing import Any, TypeVar

from .._errors import StoreBroken, StoreClosed, StoreTimeout, StoreValueError
from .._types import deadline_after
from ._accel import speedups
from ._connect import open_connection
from ._spin import SpinPolicy
from .codec import (
    CHECK_READY,
    EXT_ACK,
    EXT_HELLO,
    STATUS_CANCELED,
    STATUS_ERROR,
    STATUS_OK,
    STOP_WAITING,
    WAIT_CANCELED,
    Incomplete,
    Query,
    encode_request,
    parse_bytes,
    parse_bytes_list,
    parse_i64,
    parse_u8,
)

__all__ = ["TCPClient"]

_T = TypeVar("_T")
Parser = Callable[[bytearray, int], tuple[_T, int]]
_CANCEL = encode_request(Query.CANCEL_WAIT)
#: Requests up to this size go through the C fast path (sent whole, so a signal never splits
#: one); larger ones, and replies of other shapes, take the Python path.
_FAST_PAYLOAD = 1 << 16
# The hot requests, encoded inline (the same bytes as encode_request, without its generality).
_U64, _I64 = struct.Struct("<Q"), struct.Struct("<q")
_SET, _ADD, _WAIT_GET = bytes([Query.SET]), bytes([Query.ADD]), bytes([Query.WAIT_GET])


class _Late(Exception):
    """A blocked request's answer arrived together with our cancellation."""

    def __init__(self, value: object) -> None:
        self.value = value


class TCPClient:
    """A connection to a TCPStore server (ours or torch's).

    ``connect_timeout`` bounds connecting, here and on each lazy reconnect; ``io_timeout``
    bounds each request the server answers at once (and may be changed later); ``0`` means no
    limit for either.  Raises :class:`StoreBroken` when it cannot connect in time, saying why.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        io_timeout: float,
        extensions: bool = True,
        spin: float = 50e-6,
        accelerate: bool | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.endpoint = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        self.connect_timeout = connect_timeout
        self._io_timeout = io_timeout
        self.want_extensions = extensions
        #: How to wait for replies: spin first or sleep at once (learnt per connection).
        self.spin = SpinPolicy(spin)
        self._poll = select.poll()
        #: The C speedups module in use, or ``None``.
        self.speedups = module = speedups(accelerate, "TCPClient")
        self._fast: Any = None if module is None else module.call
        self._rcvtimeo = 0.0  # the socket's SO_RCVTIMEO (see _arm_rcvtimeo)
        self.extended = False
        self.lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._fd = -1
        self._buf = bytearray()
        self._closed = False
        self._connect(deadline_after(connect_timeout))

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self._sock else "broken")
        return f"TCPClient({self.endpoint}, {state}{', extended' if self.extended else ''})"

    @property
    def io_timeout(self) -> float:
        """Seconds a request the server answers at once may take, send to reply (0: no limit)."""
        return self._io_timeout

    @io_timeout.setter
    def io_timeout(self, seconds: float) -> None:
        self._io_timeout = seconds
        # The socket's SO_RCVTIMEO follows, unless a call is in flight: its reads rely on the
        # value they were given, so the socket keeps it until the next reconnect (a stale
        # SO_RCVTIMEO only costs the C path its one-syscall read, never correctness).
        if self.lock.acquire(blocking=False):
            try:
                if self._sock is not None:
                    self._arm_rcvtimeo(self._sock, self._rcvtimeo)
            finally:
                self.lock.release()

    # ----------------------------------------------------------------- connection

    def _connect(self, deadline: float | None) -> None:
        """Connect and shake hands by ``deadline`` (see :mod:`._connect`); raises
        :class:`StoreBroken` saying what the last attempt met."""
        want = self.want_extensions
        nonce = EXT_HELLO if want else os.getpid() & 0xFFFFFFFF
        answers = {EXT_ACK, nonce} if want else {nonce}
        sock, answer = open_connection(self.host, self.port, self.endpoint, deadline, nonce,
                                       answers)  # fmt: skip
        self.extended = want and answer == EXT_ACK
        self._arm_rcvtimeo(sock)
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._sock, self._fd = sock, sock.fileno()
        self._buf.clear()

    def _arm_rcvtimeo(self, sock: socket.socket, current: float = 0.0) -> None:
        """Give the socket SO_RCVTIMEO = the I/O timeout (none without the C path or a limit),
        so the C path can wait for a reply in one blocking recv (no poll first) when its
        deadline is at least that far.  ``current``: the socket's value now (0 for a new one),
        kept if it cannot be changed; ``_rcvtimeo`` always says what the socket has."""
        limit = self._io_timeout
        armed = limit if self._fast is not None and 0 < limit < 1e6 else 0.0
        whole = int(armed)
        micros = int((armed - whole) * 1e6)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, micros))
        except OSError:
            armed = current
        self._rcvtimeo = armed

    def close(self) -> None:
        self._closed = True
        self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf.clear()

    def _ensure(self, op: str) -> None:
        if self._closed:
            raise StoreClosed(op, repr(self))
        if self._sock is None:
            self._connect(deadline_after(self.connect_timeout))

    # ----------------------------------------------------------------- I/O

    def _send(self, payload: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(payload)
        except OSError as exc:
            self._drop()
            raise StoreBroken(
                f"TCPStore {self.endpoint}: send failed ({exc.strerror}); did the server stop?",
                host=self.host,
                port=self.port,
            ) from exc

    def _read(self, parse: Parser[_T], deadline: float | None, op: str) -> _T:
        """Read one reply with ``parse``; ``TimeoutError`` past ``deadline``."""
        buf = self._buf
        while True:
            try:
                value, end = parse(buf, 0)
            except Incomplete:
                pass
            else:
                del buf[:end]
                return value
            try:
                chunk = self._recv(deadline)
            except TimeoutError:
                raise
            except OSError as exc:
                self._drop()
                raise self._lost(op, exc) from exc
            if not chunk:
                self._drop()
                raise self._closed_during(op)
            buf += chunk

    def _recv(self, deadline: float | None) -> bytes:
        """Receive what has arrived: spin for up to ``self.spin.budget`` seconds polling with
        MSG_DONTWAIT, then sleep in the kernel (see :mod:`._spin` for when spinning pays)."""
        sock = self._sock
        assert sock is not None
        budget = self.spin.budget
        if budget:
            give_up = time.perf_counter() + budget
            while True:
                try:
                    return sock.recv(1 << 16, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    if time.perf_counter() > give_up:
                        break
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not self._poll.poll(left * 1000):
                raise TimeoutError
        elif self._rcvtimeo:
            self._poll.poll()  # no limit: a bare recv would end at SO_RCVTIMEO
        return sock.recv(1 << 16)

    def _exchange(
        self,
        payload: bytes,
        parse: Parser[_T] | None,
        deadline: float | None,
        op: str,
        may_block: bool = False,
    ) -> _T | None:
        """Send one request and read its reply (none when ``parse`` is ``None``) by
        ``deadline`` (``None``: no limit), else raise ``TimeoutError``.
        ``may_block``: the server may hold the reply back (a wait), so a slow reply says
        nothing about how fast the server answers (see :class:`SpinPolicy`).

        Through the C speedups when the reply has a simple shape and nothing is buffered;
        a reply they leave incomplete (deadline passed, a signal arrived) is finished here.
        """
        shape = _SHAPES.get(parse)
        fast = self._fast
        if fast is None or shape is None or self._buf or len(payload) > _FAST_PAYLOAD:
            self._send(payload)
            if parse is None:
                return None
            sent = time.perf_counter()
            result = self._reply(parse, deadline, op)
            self.spin.record(time.perf_counter() - sent, may_block)
            return result
        try:
            status, value, rest, took = fast(
                self._fd,
                payload,
                shape,
                self.extended,
                self.spin.budget if parse is not None else 0.0,
                -1.0 if deadline is None else deadline,
                self._rcvtimeo,
            )
        except EOFError:
            self._drop()
            raise self._closed_during(op) from None
        except OSError as exc:
            self._drop()
            raise self._lost(op, exc) from exc
        if parse is None:
            return None
        self.spin.record(took, may_block)
        if rest:
            self._buf += rest
        if status == STATUS_OK:
            if parse is _stop_waiting and value != STOP_WAITING:
                raise StoreBroken(f"TCPStore: expected STOP_WAITING, got {value}")
            return value  # type: ignore[no-any-return]
        if status < 0:  # not complete yet: read the rest (and time out) in Python
            return self._reply(parse, deadline, op)
        if status == STATUS_ERROR:
            raise StoreValueError(value.decode("utf-8", "replace"))
        self._drop()
        raise StoreBroken(f"TCPStore {self.endpoint}: unexpected status {status} in {op}")

    def _lost(self, op: str, exc: OSError) -> StoreBroken:
        return StoreBroken(
            f"TCPStore {self.endpoint}: {op} failed, connection lost ({exc.strerror})",
            host=self.host,
            port=self.port,
        )

    def _closed_during(self, op: str) -> StoreBroken:
        return StoreBroken(
            f"TCPStore {self.endpoint}: connection closed by the server during {op} "
            "(did the server shut down or crash, or reject the request?)",
            host=self.host,
            port=self.port,
        )

    def _reply(self, parse: Parser[_T], deadline: float | None, op: str) -> _T:
        """Read a reply, first the status byte on extended connections."""
        if self.extended:
            status = self._read(parse_u8, deadline, op)
            if status == STATUS_ERROR:
                message = self._read(parse_bytes, None, op).decode("utf-8", "replace")
                raise StoreValueError(message)
            if status != STATUS_OK:
                self._drop()
                raise StoreBroken(f"TCPStore {self.endpoint}: unexpected status {status} in {op}")
        return self._read(parse, deadline, op)

    def call(self, op: str, payload: bytes, parse: Parser[_T] | None) -> _T | None:
        """Send one request and read its reply (``parse=None``: the command has no reply), by
        the I/O timeout."""
        with self.lock:
            if self._sock is None:
                self._ensure(op)
            start = monotonic()
            limit = self._io_timeout
            deadline = None if limit == 0 else start + limit
            try:
                return self._exchange(payload, parse, deadline, op)
            except StoreValueError:
                raise  # an error reply: the stream is still in step
            except TimeoutError:
                self._drop()
                raise self._silent(op, [], start, limit) from None
            except BaseException:
                self._drop()  # mid-request the stream position is unknown
                raise

    def _io_deadline(self) -> float | None:
        """When a reply that needs no waiting is overdue: the server went silent."""
        return deadline_after(self._io_timeout)

    def _silent(self, op: str, keys: list[str], start: float, limit: float) -> StoreTimeout:
        return StoreTimeout(
            op,
            keys,
            time.monotonic() - start,
            limit,
            f"TCPStore({self.endpoint})",
            "the server sent no reply; the connection was dropped (server hung, or traffic lost?)",
        )

    def blocking(
        self,
        op: str,
        payload: bytes,
        parse: Parser[_T],
        timeout: float,
        keys: list[str],
    ) -> _T:
        """A request the server answers when ready; on timeout cancel it and raise."""
        start = monotonic()
        deadline = None if timeout == 0 else start + timeout
        with self.lock:
            if self._sock is None:
                self._ensure(op)
            try:
                try:
                    return self._exchange(payload, parse, deadline, op, True)  # type: ignore[return-value]
                except TimeoutError:
                    try:
                        self._cancel(parse, op)
                    except _Late as late:
                        return late.value  # type: ignore[return-value]
                    except TimeoutError:  # not even the cancel was answered
                        self._drop()
                        raise self._silent(op, keys, start, timeout) from None
                    elapsed = time.monotonic() - start
                    where = f"TCPStore({self.endpoint})"
                    raise StoreTimeout(op, keys, elapsed, timeout, where) from None
            except (StoreTimeout, StoreValueError):
                raise
            except BaseException:
                self._drop()
                raise

    def _cancel(self, parse: Parser[object], op: str) -> None:
        """Send CANCEL_WAIT and read up to its acknowledgement (torch's protocol)."""
        self._send(_CANCEL)
        deadline = self._io_deadline()
        if not self.extended:
            while self._read(parse_u8, deadline, op) != WAIT_CANCELED:
                pass  # a STOP_WAITING that raced the cancel
            return
        late: object = _Late
        while True:
            status = self._read(parse_u8, deadline, op)
            if status == STATUS_CANCELED:
                break
            if status == STATUS_OK:
                late = self._read(parse, deadline, op)
        if late is not _Late:
            raise _Late(late)

    # ----------------------------------------------------------------- operations

    def set(self, key: bytes, value: bytes) -> None:
        pack = _U64.pack
        self.call("set", b"".join((_SET, pack(len(key)), key, pack(len(value)), value)), None)

    def get(self, key: bytes, timeout: float, shown: str) -> bytes:
        if self.extended:
            payload = _WAIT_GET + _U64.pack(len(key)) + key
            return self.blocking("get", payload, parse_bytes, timeout, [shown])
        self.wait([key], timeout, [shown], "get")
        result = self.call("get", encode_request(Query.GET, key), parse_bytes)
        assert result is not None
        return result

    def add(self, key: bytes, amount: int) -> int:
        result = self.call("add", _ADD + _U64.pack(len(key)) + key + _I64.pack(amount), parse_i64)
        assert result is not None
        return result

    def compare_set(self, key: bytes, expected: bytes, desired: bytes) -> bytes:
        payload = encode_request(Query.COMPARE_SET, key, expected, desired)
        result = self.call("compare_set", payload, parse_bytes)
        assert result is not None
        return result

    def wait(self, keys: list[bytes], timeout: float, shown: list[str], op: str = "wait") -> None:
        self.blocking(op, encode_request(Query.WAIT, keys), _stop_waiting, timeout, shown)

    def check(self, keys: list[bytes]) -> bool:
        return self.call("check", encode_request(Query.CHECK, keys), parse_u8) == CHECK_READY

    def delete_key(self, key: bytes) -> bool:
        return bool(self.call("delete_key", encode_request(Query.DELETE_KEY, key), parse_i64))

    def num_keys(self) -> int:
        result = self.call("num_keys", encode_request(Query.GETNUMKEYS), parse_i64)
        assert result is not None
        return result

    def append(self, key: bytes, value: bytes) -> None:
        self.call("append", encode_request(Query.APPEND, key, value), None)

    def multi_get(self, keys: list[bytes], timeout: float, shown: list[str]) -> list[bytes]:
        n = len(keys)

        def values(buf: bytearray, pos: int) -> tuple[list[bytes], int]:
            return parse_bytes_list(buf, pos, n)

        if self.extended:
            payload = encode_request(Query.WAIT_MULTI_GET, keys)
            return self.blocking("multi_get", payload, values, timeout, shown)
        self.wait(keys, timeout, shown, "multi_get")
        result = self.call("multi_get", encode_request(Query.MULTI_GET, keys), values)
        assert result is not None
        return result

    def multi_set(self, payload: bytes) -> None:
        """Send a MULTI_SET request (see :func:`.codec.encode_multi_set`)."""
        self.call("multi_set", payload, None)

    def queue_push(self, key: bytes, value: bytes) -> None:
        self.call("queue_push", encode_request(Query.QUEUE_PUSH, key, value), None)

    def queue_pop(self, key: bytes) -> bytes | None:
        """Pop without blocking: the value, or ``None`` on an empty queue."""

        def popped(buf: bytearray, pos: int) -> tuple[bytes | None, int]:
            size, pos = parse_i64(buf, pos)
            if size <= 0:
                return None, pos
            return parse_bytes(buf, pos)

        return self.call("queue_pop", encode_request(Query.QUEUE_POP, key), popped)

    def queue_len(self, key: bytes) -> int:
        result = self.call("queue_len", encode_request(Query.QUEUE_LEN, key), parse_i64)
        assert result is not None
        return result

    def list_keys(self) -> list[bytes]:
        def keys(buf: bytearray, pos: int) -> tuple[list[bytes], int]:
            n, pos = parse_i64(buf, pos)
            return parse_bytes_list(buf, pos, n)

        result = self.call("list_keys", encode_request(Query.LIST_KEYS), keys)
        assert result is not None
        return result

    def barrier(self, key: bytes, world_size: int, timeout: float, shown: str) -> None:
        payload = encode_request(Query.BARRIER, key, world_size)
        self.blocking("barrier", payload, _stop_waiting, timeout, [shown])

    def wait_count(self, key: bytes, target: int, timeout: float) -> int:
        """Extension: block until the counter at ``key`` is at least ``target``."""
        payload = encode_request(Query.WAIT_COUNT, key, target)
        shown = key.decode("utf-8", "replace")
        return self.blocking("wait_count", payload, parse_i64, timeout, [shown])


def _stop_waiting(buf: bytearray, pos: int) -> tuple[int, int]:
    value, pos = parse_u8(buf, pos)
    if value != STOP_WAITING:
        raise StoreBroken(f"TCPStore: expected STOP_WAITING, got {value}")
    return value, pos


#: Reply parsers the C fast path can stand in for, with its shape codes (see _speedups.c).
_SHAPES: dict[object, int] = {None: 0, parse_u8: 1, _stop_waiting: 1, parse_i64: 2, parse_bytes: 3}

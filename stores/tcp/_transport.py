"""The TCP client's transport: one connection, strict request/reply, time bounds, the C path.

:class:`Transport` owns the socket: connecting (:mod:`._connect`), sending and reading with the
shared codec's parsers, the C speedups' one-call round trips, and blocking requests with their
cancel; :class:`~.client.TCPClient` adds the store operations on top.

Time.  Three durations, each named ``*_timeout``: ``connect_timeout`` bounds connecting (TCP
connect and handshake, with retries while nobody listens); ``io_timeout`` bounds a request that
the server answers at once (``add``, ``check``...), from sending it to its reply; a blocking
request (a wait) is bounded by the ``timeout`` it is given.  Each operation computes its
*deadline*, an instant of ``time.monotonic()``, once, and passes it down: to the reconnect, to
each send and read, into the C speedups.  When a blocking request's time is up the client sends
torch's cancel and gives the server :func:`overtime` (at most 0.5 s) to acknowledge it and to say
which keys were missing.  A server that says nothing (stopped, hung, a black-holing network) is
never waited for beyond that: the connection is dropped, :class:`StoreTimeout` is raised, and the
next call reconnects.  So every operation ends by its timeout plus the overtime.  A connection
that breaks mid-request fails it with :class:`StoreBroken`; the next one reconnects.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any, TypeVar

from .._errors import StoreBroken, StoreClosed, StoreTimeout, StoreValueError
from .._types import deadline_after, parse_counter
from ._accel import speedups
from ._connect import SILENT, SILENT_DETAIL, open_connection
from ._spin import SpinPolicy
from ._token import resolve_token
from .codec import (
    CHECK_READY,
    EXT_ACK,
    EXT_AUTH,
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
    parse_i64,
    parse_u8,
)

__all__ = ["OVERTIME_MAX", "Parser", "Shown", "Transport", "overtime"]

_T = TypeVar("_T")
Parser = Callable[[bytearray, int], tuple[_T, int]]
#: The keys an error names: one (a plain str, so the hot path builds no list) or several.
Shown = str | Sequence[str]
_CANCEL = encode_request(Query.CANCEL_WAIT)
#: Requests up to this size go through the C fast path (sent whole, so a signal never splits
#: one); larger ones, and replies of other shapes, take the Python path.
_FAST_PAYLOAD = 1 << 16
#: How long close() waits for a call in another thread to let go of the connection before it
#: leaves closing the fd to that call (which drops it as it wakes).
_CLOSE_WAIT = 5.0
# The hot requests, encoded inline (the same bytes as encode_request, without its generality).
_U64, _I64 = struct.Struct("<Q"), struct.Struct("<q")
_SET, _ADD, _WAIT_GET = bytes([Query.SET]), bytes([Query.ADD]), bytes([Query.WAIT_GET])
#: The C call()'s status for a request the server took only part of (see _speedups.c).
_UNSENT = -2
#: A cancelled request's reply that did not arrive before the cancel's acknowledgement.
_NOTHING: Any = object()

#: Overtime after a blocking request's timeout: at least this, this share of the timeout, at most.
OVERTIME_MIN, OVERTIME_SHARE, OVERTIME_MAX = 0.25, 0.1, 0.5


def overtime(timeout: float) -> float:
    """How long past a blocking request's ``timeout`` the server gets to acknowledge our cancel
    and say which keys were missing: a tenth of the timeout, within 0.25 s .. 0.5 s.

    A live server answers in microseconds, so this is only ever spent on a silent or badly
    overloaded one; running out of it costs the connection (the next call reconnects), never
    a wrong result.
    """
    return min(OVERTIME_MAX, max(OVERTIME_MIN, timeout * OVERTIME_SHARE))


class _Unsent(Exception):
    """The server took no more of our request by the deadline: it has stopped reading."""


def _silence(exc: Exception) -> str:
    """What a request that ran out of time with ``exc`` met."""
    unsent = isinstance(exc, _Unsent)
    return "the server stopped reading the request" if unsent else "the server sent no reply"


def _names(shown: Shown) -> list[str]:
    return [shown] if isinstance(shown, str) else list(shown)


class Transport:
    """A connection to a TCPStore server (ours or torch's), without the store operations.

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
        token: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.endpoint = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        self._where = f"TCPStore({self.endpoint})"
        self.connect_timeout = connect_timeout
        self._io_timeout = io_timeout
        self.want_extensions = extensions
        self._token = resolve_token(token)
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
        # SO_RCVTIMEO follows unless a call is in flight (it relies on the value it was given;
        # a stale one only costs the C path its one-syscall read, never correctness).
        if self.lock.acquire(blocking=False):
            try:
                if self._sock is not None:
                    self._arm_rcvtimeo(self._sock, self._rcvtimeo)
            finally:
                self.lock.release()

    # ----------------------------------------------------------------- connection

    def _connect(self, deadline: float | None) -> None:
        """Connect and shake hands by ``deadline`` (:mod:`._connect`), or :class:`StoreBroken`."""
        want = self.want_extensions
        nonce = EXT_HELLO if want else os.getpid() & 0xFFFFFFFF
        answers = {EXT_ACK, EXT_AUTH, nonce} if want else {nonce}
        sock, answer = open_connection(
            self.host, self.port, self.endpoint, deadline, nonce, answers, self._token
        )
        self.extended = want and answer in (EXT_ACK, EXT_AUTH)
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

    def _reconnect(
        self, op: str, shown: Shown, start: float, limit: float, deadline: float | None
    ) -> None:
        """Connect again after a dropped connection, by the operation's ``deadline`` or the
        connect timeout, whichever comes first.  A silent server that uses up the operation's
        time raises :class:`StoreTimeout`; other failures :class:`StoreBroken`."""
        if self._closed:
            raise StoreClosed(op, repr(self))
        by = deadline_after(self.connect_timeout)
        cut_by_op = deadline is not None and (by is None or deadline <= by)
        try:
            self._connect(deadline if cut_by_op else by)
        except StoreBroken as exc:
            if cut_by_op and getattr(exc, "reason", "") == SILENT:
                elapsed = time.monotonic() - start
                detail = f"reconnecting, {SILENT_DETAIL}"
                raise StoreTimeout(op, _names(shown), elapsed, limit, self._where, detail) from exc
            raise

    def close(self) -> None:
        """Close the connection; a call blocked on it in another thread wakes (StoreClosed).

        Shutting the socket down wakes a thread asleep in recv or poll on it (closing the fd
        would not, and could hand its number to a new file under that thread); the fd itself is
        closed under the lock, once no call is using it.
        """
        self._closed = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self.lock.acquire(timeout=_CLOSE_WAIT):
            try:
                self._drop()
            finally:
                self.lock.release()

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf.clear()

    # ----------------------------------------------------------------- I/O

    def _send(self, payload: bytes | memoryview, deadline: float | None) -> None:
        """Send all of ``payload`` by ``deadline``, else raise :class:`_Unsent` (the server is
        not reading: its buffers and ours are full).  The socket stays blocking for the C path,
        so each send asks not to block and a full buffer is waited out with poll."""
        sock = self._sock
        assert sock is not None
        try:
            try:
                sent = sock.send(payload, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent == len(payload):
                return
            view = memoryview(payload)[sent:]
            writable = select.poll()
            writable.register(sock, select.POLLOUT)
            while view:
                left = None if deadline is None else (deadline - time.monotonic()) * 1000
                if (left is not None and left <= 0) or not writable.poll(left):
                    raise _Unsent
                with contextlib.suppress(BlockingIOError):
                    view = view[sock.send(view, socket.MSG_DONTWAIT) :]
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
        ``deadline`` (``None``: no limit), else raise ``TimeoutError`` (no reply) or
        :class:`_Unsent` (the request was not all taken).  ``may_block``: the server may hold
        the reply back (a wait), so a slow reply says nothing about how fast the server answers
        (see :class:`SpinPolicy`).

        Through the C speedups when the reply has a simple shape and nothing is buffered;
        a request or reply they leave incomplete (deadline passed, a signal arrived, a server
        not reading) is finished here.
        """
        shape = _SHAPES.get(parse)
        fast = self._fast
        if fast is None or shape is None or self._buf or len(payload) > _FAST_PAYLOAD:
            self._send(payload, deadline)
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
        if status == _UNSENT:  # the server stopped reading: wait for it here, by the deadline
            self._send(memoryview(payload)[value:], deadline)
            return None if parse is None else self._reply(parse, deadline, op)
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

    def _lost(self, op: str, exc: OSError) -> StoreBroken | StoreClosed:
        if self._closed:
            return StoreClosed(op, repr(self))
        what = f"TCPStore {self.endpoint}: {op} failed, connection lost ({exc.strerror})"
        return StoreBroken(what, host=self.host, port=self.port)

    def _closed_during(self, op: str) -> StoreBroken | StoreClosed:
        if self._closed:  # we closed it, from another thread: not the server's doing
            return StoreClosed(op, repr(self))
        what = (
            f"TCPStore {self.endpoint}: connection closed by the server during {op} "
            "(did the server shut down or crash, or reject the request?)"
        )
        return StoreBroken(what, host=self.host, port=self.port)

    def _reply(self, parse: Parser[_T], deadline: float | None, op: str) -> _T:
        """Read a reply, first the status byte on extended connections."""
        if not self.extended:
            return self._read(parse, deadline, op)
        status = self._read(parse_u8, deadline, op)
        if status == STATUS_ERROR:
            message = self._read(parse_bytes, deadline, op).decode("utf-8", "replace")
            raise StoreValueError(message)
        if status != STATUS_OK:
            self._drop()
            raise StoreBroken(f"TCPStore {self.endpoint}: unexpected status {status} in {op}")
        try:
            return self._read(parse, deadline, op)
        except TimeoutError:
            self._buf[0:0] = bytes([STATUS_OK])  # put back: a cancel then reads the reply whole
            raise

    def _silent(self, op: str, shown: Shown, start: float, limit: float, what: str) -> StoreTimeout:
        """The error for a server that went quiet mid-request (the connection is dropped)."""
        return StoreTimeout(
            op,
            _names(shown),
            time.monotonic() - start,
            limit,
            self._where,
            f"{what}; the connection was dropped, the next call reconnects "
            "(server stopped or hung, or traffic lost?)",
        )

    def call(
        self, op: str, payload: bytes, parse: Parser[_T] | None, shown: Shown = ()
    ) -> _T | None:
        """Send one request and read its reply (``parse=None``: the command has no reply), by
        the I/O timeout; ``shown``: the keys errors name.

        Raises :class:`StoreTimeout` when the server does not take the request or answer it
        in time (the connection is dropped), :class:`StoreBroken` when the connection breaks.
        """
        with self.lock:
            start = monotonic()
            limit = self._io_timeout
            deadline = None if limit == 0 else start + limit
            try:
                if self._sock is None:
                    self._reconnect(op, shown, start, limit, deadline)
                return self._exchange(payload, parse, deadline, op)
            except (StoreTimeout, StoreValueError):
                raise  # a timeout already handled, or an error reply: the stream is in step
            except (TimeoutError, _Unsent) as exc:
                self._drop()
                raise self._silent(op, shown, start, limit, _silence(exc)) from None
            except BaseException:
                self._drop()  # mid-request the stream position is unknown
                raise

    def blocking(
        self,
        op: str,
        payload: bytes,
        parse: Parser[Any],
        timeout: float,
        shown: Shown,
        *,
        start: float | None = None,
        then: tuple[bytes, Parser[Any]] | None = None,
        narrow: list[bytes] | None = None,
        counter: tuple[bytes, str] | None = None,
    ) -> Any:
        """A request the server answers when ready, by ``start + timeout`` (``start``: now;
        ``timeout=0``: no limit).  On time, cancel it and raise :class:`StoreTimeout`.

        ``then``: a request (and its parser) to send once the first is answered, by the same
        deadline or :func:`overtime` from then, whichever is later; its reply is the result
        (torch's ``WAIT`` then ``GET``).  After a timeout, within the overtime: ``narrow`` (the
        wire keys beside ``shown``) makes the error name only the keys still missing;
        ``counter`` (a wire key and a text with ``{}``) gives the counter's value in its detail.
        A server that does not acknowledge the cancel in that time costs the connection.
        """
        if start is None:
            start = monotonic()
        deadline = None if timeout == 0 else start + timeout
        with self.lock:
            try:
                if self._sock is None:
                    self._reconnect(op, shown, start, timeout, deadline)
                try:
                    value = self._exchange(payload, parse, deadline, op, True)
                except TimeoutError:
                    assert deadline is not None
                    until = deadline + overtime(timeout)
                    try:
                        value = self._cancel(parse, op, until)
                    except (TimeoutError, _Unsent):
                        self._drop()
                        what = (
                            "the server sent no reply and did not acknowledge the cancel "
                            f"within {until - deadline:.2f} s"
                        )
                        raise self._silent(op, shown, start, timeout, what) from None
                    if value is _NOTHING:
                        raise self._timed_out(
                            op, shown, start, timeout, until, narrow, counter
                        ) from None
                if then is None:
                    return value
                follow, parse_follow = then
                if deadline is not None:
                    deadline = max(deadline, monotonic() + overtime(timeout))
                return self._exchange(follow, parse_follow, deadline, op)
            except (StoreTimeout, StoreValueError):
                raise
            except (TimeoutError, _Unsent) as exc:
                self._drop()
                raise self._silent(op, shown, start, timeout, _silence(exc)) from None
            except BaseException:
                self._drop()
                raise

    def _cancel(self, parse: Parser[object], op: str, until: float) -> object:
        """Send CANCEL_WAIT and read up to its acknowledgement by ``until`` (torch's protocol).
        Returns the blocked request's reply if it raced the cancel (extended), else _NOTHING."""
        self._send(_CANCEL, until)
        if not self.extended:
            while self._read(parse_u8, until, op) != WAIT_CANCELED:
                pass  # a STOP_WAITING that raced the cancel
            return _NOTHING
        late: object = _NOTHING
        error: bytes | None = None
        while True:
            status = self._read(parse_u8, until, op)
            if status == STATUS_CANCELED:
                break
            if status == STATUS_OK:
                late = self._read(parse, until, op)
            elif status == STATUS_ERROR:
                error = self._read(parse_bytes, until, op)
            else:
                self._drop()
                raise StoreBroken(f"TCPStore {self.endpoint}: unexpected status {status} in {op}")
        if error is not None:  # the request failed after all; the stream is in step again
            raise StoreValueError(error.decode("utf-8", "replace"))
        return late

    def _timed_out(
        self,
        op: str,
        shown: Shown,
        start: float,
        timeout: float,
        until: float,
        narrow: list[bytes] | None,
        counter: tuple[bytes, str] | None,
    ) -> StoreTimeout:
        """The error for a cancelled request, with what the server says by ``until`` about the
        keys still missing and the counter (a server that does not answer costs the
        connection, and the error then names every key)."""
        names = _names(shown)
        count: object = "?"
        try:
            if narrow is not None:
                check = Query.CHECK
                missing = [
                    name
                    for key, name in dict(zip(narrow, names, strict=True)).items()
                    if self._exchange(encode_request(check, [key]), parse_u8, until, "check")
                    != CHECK_READY
                ]
                names = missing or names
            if counter is not None:
                # Read the counter, never write it: torch's servers release a barrier's
                # waiters on any write to its counter, add(key, 0) included.
                key = counter[0]
                exists = self._exchange(
                    encode_request(Query.CHECK, [key]), parse_u8, until, "check"
                )
                count = 0
                if exists == CHECK_READY:
                    raw = self._exchange(encode_request(Query.GET, key), parse_bytes, until, "get")
                    count = parse_counter(raw or b"", key.decode("utf-8", "replace"))
        except StoreValueError:
            pass  # the counter is not a number: the stream is still in step
        except (TimeoutError, _Unsent, StoreBroken):
            self._drop()
        detail = "" if counter is None else counter[1].format(count)
        return StoreTimeout(op, names, time.monotonic() - start, timeout, self._where, detail)


def _stop_waiting(buf: bytearray, pos: int) -> tuple[int, int]:
    value, pos = parse_u8(buf, pos)
    if value != STOP_WAITING:
        raise StoreBroken(f"TCPStore: expected STOP_WAITING, got {value}")
    return value, pos


#: Reply parsers the C fast path can stand in for, with its shape codes (see _speedups.c).
_SHAPES: dict[object, int] = {None: 0, parse_u8: 1, _stop_waiting: 1, parse_i64: 2, parse_bytes: 3}

"""The TCPStore server's state machine: data, queues, waiters, per-connection state.  No I/O.

Each connection is a :class:`Conn` whose ``send`` the transport provides.  ``handle`` applies one
decoded request and sends whatever replies it causes, to this connection or to waiters it wakes.

Waiting follows torch's server (TCP_PROTOCOL.md §3.4): a WAIT registers the connection under each
key missing at that moment with a counter; every write to a registered key consumes those
registrations and decrements the counters; a counter reaching zero answers the waiter.  So a write
wakes exactly the waiters it satisfies, and a key deleted after it appeared still counts.
"""

from __future__ import annotations

import hmac
import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from .._errors import StoreValueError
from .._types import compare_set_outcome, next_counter
from .codec import (
    CHECK_NOT_READY,
    CHECK_READY,
    EXT_ACK,
    EXT_AUTH,
    EXT_HELLO,
    MAGIC,
    STATUS_CANCELED,
    STATUS_OK,
    STOP_WAITING,
    WAIT_CANCELED,
    Limits,
    ProtocolError,
    Query,
    Request,
    reply_error,
    reply_i64,
    reply_u8,
    reply_u32,
    reply_values,
    string,
)

__all__ = ["Conn", "ServerState"]

log = logging.getLogger("storeharness.stores.tcp.server")


class Conn:
    """One client connection's protocol state.

    ``send`` writes one reply; ``sendv`` (default: ``send`` of the joined parts) writes one
    reply given in parts, so a transport can queue large stored values without copying them;
    ``close`` drops the connection (used when a reply for it cannot be produced).
    """

    __slots__ = (
        "authed", "close", "extended", "name", "pending", "send", "sendv", "validated", "woken",
    )  # fmt: skip

    def __init__(
        self,
        send: Callable[[bytes], None],
        name: str = "",
        sendv: Callable[[list[bytes]], None] | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.send = send
        self.sendv = sendv if sendv is not None else (lambda parts: send(b"".join(parts)))
        self.close = close if close is not None else (lambda: None)
        self.name = name
        self.validated = False
        #: Whether the token was given (or none is required; set on VALIDATE then).
        self.authed = False
        self.extended = False
        #: Outstanding blocked requests of this connection (normally at most one); a dict for
        #: O(1) removal, in arrival order.
        self.pending: dict[_Pending, None] = {}
        #: Queues whose push woke this connection's WAIT and that it has not popped since: if
        #: it goes away first (a consumer killed between its wake-up and its POP), the item
        #: it was woken for must wake the next waiter.
        self.woken: set[bytes] = set()


class _Pending:
    """A blocked request: who, what to answer, and how many keys it still misses."""

    __slots__ = ("conn", "keys", "kind", "missing", "target")

    def __init__(self, conn: Conn, kind: Query, keys: tuple[bytes, ...], target: int = 0) -> None:
        self.conn = conn
        self.kind = kind
        self.keys = keys
        self.missing = 0
        self.target = target  # WAIT_COUNT: the value to reach; BARRIER: the world size


#: Replies up to this size are sent joined (one write); larger ones in parts, so the stored
#: values they carry are queued by reference rather than copied.
_JOIN_MAX = 1 << 16
_U64_PACK = struct.Struct("<Q").pack


class ServerState:
    """Everything the server holds.  Not thread-safe: one event loop drives it.

    ``limits``: ``max_waits`` and ``max_reply`` are enforced here.  ``token``: when set, a
    connection must send it (extension ``AUTH``) before anything else is served.
    """

    def __init__(self, limits: Limits | None = None, token: str | None = None) -> None:
        if token is not None and not token:
            raise ValueError("token must not be empty (give None to serve without one)")
        self.limits = limits or Limits()
        self._token = None if token is None else token.encode("utf-8", "surrogateescape")
        self.data: dict[bytes, bytes] = {}
        self.queues: dict[bytes, deque[bytes]] = {}
        #: Registrations per key: dicts used as ordered sets (O(1) insertion and removal).
        self.waiters: dict[bytes, dict[_Pending, None]] = {}
        self.connections = 0

    @property
    def token_required(self) -> bool:
        return self._token is not None

    # ----------------------------------------------------------------- connection lifecycle

    def connect(self, conn: Conn) -> None:
        self.connections += 1

    def disconnect(self, conn: Conn) -> None:
        """Free everything ``conn`` was waiting on."""
        self.connections -= 1
        self._drop_pending(conn)
        for key in conn.woken:  # woken for an item it never popped: pass the wake-up on
            if self.queues.get(key):
                self._wake_queue_waiter(key)
        conn.woken.clear()

    def _drop_pending(self, conn: Conn) -> None:
        """O(keys of the dropped requests), whatever else waits on those keys."""
        waiters = self.waiters
        for pending in conn.pending:
            for key in pending.keys:
                line = waiters.get(key)
                if line is not None and line.pop(pending, 0) is None and not line:
                    del waiters[key]
        conn.pending.clear()

    # ----------------------------------------------------------------- dispatch

    def handle(self, conn: Conn, request: Request) -> None:
        """Apply one request.  Raises :class:`ProtocolError` when the connection must be dropped."""
        query, args = request
        if not conn.authed:
            self._handshake(conn, query, args)
            return
        handler = self._handlers.get(query)
        if handler is None:
            raise ProtocolError(f"{query.name} after the handshake")
        try:
            handler(self, conn, *args)
        except StoreValueError as exc:
            if not conn.extended:
                # A torch client has no error channel: like torch's server, drop the connection.
                raise ProtocolError(str(exc)) from exc
            conn.send(reply_error(str(exc)))

    def _handshake(self, conn: Conn, query: Query, args: tuple[object, ...]) -> None:
        """VALIDATE, then (with a token) PING ``EXT_HELLO`` and ``AUTH`` before anything else."""
        if not conn.validated:
            if query is Query.VALIDATE and args[0] == MAGIC:
                conn.validated = True
                conn.authed = self._token is None
                return
            raise ProtocolError(f"first message must be VALIDATE with the magic, got {query.name}")
        if query is Query.PING and args[0] == EXT_HELLO and not conn.extended:
            conn.send(reply_u32(EXT_AUTH))
            conn.extended = True
            return
        if query is Query.AUTH and conn.extended:
            given = args[0]
            assert isinstance(given, bytes) and self._token is not None
            if hmac.compare_digest(given, self._token):  # constant time
                conn.authed = True
                conn.send(reply_u8(STATUS_OK))
                return
            conn.send(reply_error("wrong token: this server requires another token"))
            raise ProtocolError("wrong token")  # the token itself is never logged
        why = "this server requires a token (token= or STOREHARNESS_TOKEN)"
        if conn.extended:
            conn.send(reply_error(f"{why}; send it first"))
            raise ProtocolError(f"{query.name} before the token: {why}")
        raise ProtocolError(f"{query.name} from a client that cannot send a token: {why}")

    def _check_reply(self, size: int, what: str) -> None:
        """Refuse a reply of ``size`` bytes over ``max_reply`` before building it."""
        limit = self.limits.max_reply
        if size > limit:
            raise StoreValueError(
                f"{what}: the reply would be {size} bytes, over the server's "
                f"max_reply={limit}; ask for fewer or smaller values at a time"
            )

    def _ok_values(self, conn: Conn, head: list[bytes], values: list[bytes], what: str) -> None:
        """Reply ``head`` then each value as a wire string, within ``max_reply``."""
        size = sum(len(v) for v in values) + 8 * len(values) + sum(len(h) for h in head)
        self._check_reply(size, what)
        if size <= _JOIN_MAX:
            self._ok(conn, b"".join(head) + reply_values(values))
            return
        parts = [reply_u8(STATUS_OK)] if conn.extended else []
        parts += head
        pack = _U64_PACK
        for value in values:
            parts.append(pack(len(value)))
            parts.append(value)
        conn.sendv(parts)

    def _ok(self, conn: Conn, payload: bytes) -> None:
        conn.send(reply_u8(STATUS_OK) + payload if conn.extended else payload)

    # ----------------------------------------------------------------- writes

    def _created(self, key: bytes) -> None:
        line = self.waiters.pop(key, None)
        if line is None:
            return
        for pending in line:
            pending.missing -= 1
            if pending.missing == 0:
                self._finish_safely(pending)

    def _finish_safely(self, pending: _Pending) -> None:
        """Answer a waiter; if that fails, drop *its* connection (never the writer's, never
        the other waiters): every waiter is answered or disconnected, none left hanging."""
        conn = pending.conn
        try:
            self._finish(pending)
        except StoreValueError as exc:  # a reply over max_reply, say: tell the waiter
            if conn.extended:
                conn.send(reply_error(str(exc)))
                return
            log.warning("dropping connection %s: %s", conn.name, exc)
            self._drop_pending(conn)
            conn.close()
        except Exception:
            log.exception("dropping connection %s: its blocked request failed", pending.conn.name)
            self._drop_pending(pending.conn)
            pending.conn.close()

    def _set(self, conn: Conn, key: bytes, value: bytes) -> None:
        self.data[key] = value
        if self.waiters:
            self._created(key)

    def _append(self, conn: Conn, key: bytes, value: bytes) -> None:
        self.data[key] = self.data.get(key, b"") + value
        if self.waiters:
            self._created(key)

    def _multi_set(self, conn: Conn, pairs: tuple[tuple[bytes, bytes], ...]) -> None:
        for key, value in pairs:
            self._set(conn, key, value)

    def _add(self, conn: Conn, key: bytes, amount: int) -> None:
        total = next_counter(self.data.get(key), amount, key.decode("utf-8", "replace"))
        self.data[key] = str(total).encode()
        self._ok(conn, reply_i64(total))
        if self.waiters:
            self._created(key)

    def _compare_set(self, conn: Conn, key: bytes, expected: bytes, desired: bytes) -> None:
        write, result = compare_set_outcome(self.data.get(key), expected, desired)
        if write:
            self.data[key] = desired
        self._ok(conn, string(result))
        if write and self.waiters:
            self._created(key)

    def _delete(self, conn: Conn, key: bytes) -> None:
        self._ok(conn, reply_i64(1 if self.data.pop(key, None) is not None else 0))

    # ----------------------------------------------------------------- reads

    def _get(self, conn: Conn, key: bytes) -> None:
        # missing: empty, as torch's libuv
        self._ok_values(conn, [], [self.data.get(key, b"")], "get")

    def _multi_get(self, conn: Conn, keys: tuple[bytes, ...]) -> None:
        get = self.data.get
        self._ok_values(conn, [], [get(k, b"") for k in keys], "multi_get")

    def _exists(self, key: bytes) -> bool:
        return key in self.data or bool(self.queues.get(key))

    def _check(self, conn: Conn, keys: tuple[bytes, ...]) -> None:
        ready = all(self._exists(k) for k in keys)
        self._ok(conn, reply_u8(CHECK_READY if ready else CHECK_NOT_READY))

    def _num_keys(self, conn: Conn) -> None:
        self._ok(conn, reply_i64(len(self.data)))

    def _list_keys(self, conn: Conn) -> None:
        self._ok_values(conn, [reply_i64(len(self.data))], list(self.data), "list_keys")

    def _auth(self, conn: Conn, token: bytes) -> None:
        raise ProtocolError("AUTH on a connection that needs none (or already gave it)")

    def _ping(self, conn: Conn, nonce: int) -> None:
        if nonce == EXT_HELLO and not conn.extended:
            conn.send(reply_u32(EXT_ACK))
            conn.extended = True  # every later reply carries a status byte
            return
        self._ok(conn, reply_u32(nonce))

    def _validate(self, conn: Conn, magic: int) -> None:
        raise ProtocolError("second VALIDATE on a validated connection")

    # ----------------------------------------------------------------- queues

    def _queue_push(self, conn: Conn, key: bytes, value: bytes) -> None:
        line = self.queues.get(key)
        if line is None:
            self.queues[key] = line = deque()
        line.append(value)
        self._wake_queue_waiter(key)

    def _wake_queue_waiter(self, key: bytes) -> None:
        """Like torch's libuv server: a queue item wakes only the first waiter it satisfies."""
        waiters = self.waiters.get(key)
        if not waiters:
            return
        for pending in list(waiters):
            if pending.kind is not Query.WAIT:
                continue  # gets, counts and barriers wait for values, not queues
            del waiters[pending]
            pending.missing -= 1
            if pending.missing == 0:
                pending.conn.woken.add(key)
                self._finish_safely(pending)
                break
        if not waiters:
            self.waiters.pop(key, None)

    def _queue_pop(self, conn: Conn, key: bytes) -> None:
        conn.woken.discard(key)
        line = self.queues.get(key)
        if not line:
            self._ok(conn, reply_i64(0))
            return
        size = len(line)
        value = line.popleft()
        if not line:
            del self.queues[key]
        self._ok_values(conn, [reply_i64(size)], [value], "queue_pop")

    def _queue_len(self, conn: Conn, key: bytes) -> None:
        line = self.queues.get(key)
        self._ok(conn, reply_i64(0 if line is None else len(line)))

    # ----------------------------------------------------------------- blocking requests

    def _admit(self, conn: Conn, what: Query) -> None:
        """Refuse one more blocked request past ``max_waits`` on this connection."""
        limit = self.limits.max_waits
        if len(conn.pending) >= limit:
            raise StoreValueError(
                f"{what.name.lower()}: this connection already has {len(conn.pending)} blocked "
                f"requests (the server's max_waits={limit}); cancel or finish one first"
            )

    def _register(self, pending: _Pending, present: Callable[[bytes], bool]) -> None:
        missing = [k for k in dict.fromkeys(pending.keys) if not present(k)]
        if not missing:
            self._finish(pending)
            return
        self._admit(pending.conn, pending.kind)
        pending.missing = len(missing)
        waiters = self.waiters
        for key in missing:
            line = waiters.get(key)
            if line is None:
                waiters[key] = {pending: None}
            else:
                line[pending] = None
        pending.conn.pending[pending] = None

    def _wait(self, conn: Conn, keys: tuple[bytes, ...]) -> None:
        self._register(_Pending(conn, Query.WAIT, keys), self._exists)

    def _wait_get(self, conn: Conn, key: bytes) -> None:
        self._register(_Pending(conn, Query.WAIT_GET, (key,)), self.data.__contains__)

    def _wait_multi_get(self, conn: Conn, keys: tuple[bytes, ...]) -> None:
        self._register(_Pending(conn, Query.WAIT_MULTI_GET, keys), self.data.__contains__)

    def _wait_count(self, conn: Conn, key: bytes, target: int) -> None:
        pending = _Pending(conn, Query.WAIT_COUNT, (key,), target)
        self._register(pending, lambda k: self._count_reached(k, target))

    def _count_reached(self, key: bytes, target: int) -> bool:
        raw = self.data.get(key)
        if raw is None:
            return False
        try:
            return next_counter(raw, 0, "") >= target
        except StoreValueError:
            return False

    def _barrier(self, conn: Conn, key: bytes, world_size: int) -> None:
        count = next_counter(self.data.get(key), 1, key.decode("utf-8", "replace"))
        if count < world_size:
            self._admit(conn, Query.BARRIER)  # before counting this caller in
        self.data[key] = str(count).encode()
        if count >= world_size:
            self._ok(conn, reply_u8(STOP_WAITING))
            self._created(key)  # releases every participant registered on the key
            return
        self._park(_Pending(conn, Query.BARRIER, (key,), world_size))

    def _park(self, pending: _Pending) -> None:
        """Register a barrier participant until its counter reaches the world size."""
        pending.missing = 1
        self.waiters.setdefault(pending.keys[0], {})[pending] = None
        pending.conn.pending[pending] = None

    def _cancel_wait(self, conn: Conn) -> None:
        self._drop_pending(conn)
        # Extended connections get the status byte alone; torch's answer is WAIT_CANCELED.
        conn.send(reply_u8(STATUS_CANCELED if conn.extended else WAIT_CANCELED))

    def _finish(self, pending: _Pending) -> None:
        """Answer a satisfied blocked request (or re-arm it if what it needs is gone again)."""
        conn = pending.conn
        conn.pending.pop(pending, None)
        kind = pending.kind
        if kind is Query.WAIT_GET:
            value = self.data.get(pending.keys[0])
            if value is None:  # written then deleted before we got here: keep waiting
                self._register(_Pending(conn, kind, pending.keys), self.data.__contains__)
                return
            self._ok_values(conn, [], [value], "get")
        elif kind is Query.WAIT_MULTI_GET:
            values = [self.data.get(k) for k in pending.keys]
            if None in values:
                self._register(_Pending(conn, kind, pending.keys), self.data.__contains__)
                return
            self._ok_values(conn, [], values, "multi_get")  # type: ignore[arg-type]
        elif kind is Query.WAIT_COUNT:
            key, target = pending.keys[0], pending.target
            if not self._count_reached(key, target):
                self._wait_count(conn, key, target)
                return
            self._ok(conn, reply_i64(next_counter(self.data[key], 0, "")))
        elif kind is Query.BARRIER and not self._count_reached(pending.keys[0], pending.target):
            # Any write to the counter wakes its waiters (an add of 0 by a participant that
            # timed out, say); a barrier ends only when the count reaches the world size.
            self._park(_Pending(conn, kind, pending.keys, pending.target))
        else:  # WAIT, or a BARRIER whose count is reached
            self._ok(conn, reply_u8(STOP_WAITING))

    _handlers: dict[Query, Callable[..., Any]] = {
        Query.VALIDATE: _validate,
        Query.PING: _ping,
        Query.SET: _set,
        Query.COMPARE_SET: _compare_set,
        Query.GET: _get,
        Query.ADD: _add,
        Query.CHECK: _check,
        Query.WAIT: _wait,
        Query.GETNUMKEYS: _num_keys,
        Query.DELETE_KEY: _delete,
        Query.APPEND: _append,
        Query.MULTI_GET: _multi_get,
        Query.MULTI_SET: _multi_set,
        Query.CANCEL_WAIT: _cancel_wait,
        Query.QUEUE_PUSH: _queue_push,
        Query.QUEUE_POP: _queue_pop,
        Query.QUEUE_LEN: _queue_len,
        Query.LIST_KEYS: _list_keys,
        Query.BARRIER: _barrier,
        Query.WAIT_GET: _wait_get,
        Query.WAIT_MULTI_GET: _wait_multi_get,
        Query.WAIT_COUNT: _wait_count,
        Query.AUTH: _auth,
    }

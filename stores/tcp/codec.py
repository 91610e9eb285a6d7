"""The c10d TCPStore wire protocol, sans I/O: encoders, a ``feed()`` request decoder, reply parsers.

Byte layout (``../shared/TCP_PROTOCOL.md``): a request is one command byte and its fields; strings
are ``u64 length + bytes``; integers little-endian; replies are unframed and shaped by the command.
Nothing here touches a socket: the asyncio server and the blocking client both call this module.

Extensions (only between our client and our server; torch peers never see them): a client that
sends ``PING`` with nonce :data:`EXT_HELLO` (above any Linux pid, so never sent by torch) gets
:data:`EXT_ACK` back from our server — torch's server just echoes the nonce.  On an extended
connection every reply starts with a status byte (:data:`STATUS_OK`, :data:`STATUS_ERROR` followed
by a message string, :data:`STATUS_CANCELED`), errors no longer cost the connection, and these
commands exist: ``WAIT_GET`` and ``WAIT_MULTI_GET`` (wait then read, one round trip),
``WAIT_COUNT`` (wait until a counter reaches a value) and ``AUTH`` (a token string; status reply).

A server started with a token answers :data:`EXT_HELLO` with :data:`EXT_AUTH` instead, and
serves nothing but ``AUTH`` until the right token arrived; a torch client (which cannot send
one) is refused at its ``PING``.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from dataclasses import dataclass, fields
from typing import Any, TypeAlias

__all__ = [
    "EXT_ACK",
    "EXT_AUTH",
    "EXT_HELLO",
    "MAGIC",
    "STATUS_CANCELED",
    "STATUS_ERROR",
    "STATUS_OK",
    "Incomplete",
    "Limits",
    "ProtocolError",
    "Query",
    "Request",
    "RequestDecoder",
    "encode_request",
    "parse_bytes",
    "parse_bytes_list",
    "parse_i64",
    "parse_popped",
    "parse_u8",
    "parse_u32",
    "string",
]

MAGIC = 0x3C85F7CE
EXT_HELLO = 0x5348_4558  # "SHEX": > 2**22 (PID_MAX_LIMIT), so no torch client sends it
EXT_ACK = 0x5348_4531  # "SHE1": extensions version 1 accepted
EXT_AUTH = 0x5348_4541  # "SHEA": extensions accepted, and a token is required (AUTH) first
STATUS_OK, STATUS_ERROR, STATUS_CANCELED = 0, 1, 2
CHECK_READY, CHECK_NOT_READY = 0, 1
STOP_WAITING, WAIT_CANCELED = 0, 1


class Query(enum.IntEnum):
    VALIDATE = 0
    SET = 1
    COMPARE_SET = 2
    GET = 3
    ADD = 4
    CHECK = 5
    WAIT = 6
    GETNUMKEYS = 7
    DELETE_KEY = 8
    APPEND = 9
    MULTI_GET = 10
    MULTI_SET = 11
    CANCEL_WAIT = 12
    PING = 13
    QUEUE_PUSH = 14
    QUEUE_POP = 15
    QUEUE_LEN = 16
    LIST_KEYS = 17
    BARRIER = 18
    # extensions (extended connections only)
    WAIT_GET = 0x40
    WAIT_MULTI_GET = 0x41
    WAIT_COUNT = 0x42
    AUTH = 0x43


EXTENSIONS = frozenset({Query.WAIT_GET, Query.WAIT_MULTI_GET, Query.WAIT_COUNT, Query.AUTH})

#: A decoded request: the command and its fields (bytes for strings, int for integers,
#: a tuple of bytes for key lists, a tuple of (key, value) pairs for MULTI_SET).
Field: TypeAlias = "bytes | int | tuple[bytes, ...] | tuple[tuple[bytes, bytes], ...]"
Request: TypeAlias = tuple[Query, tuple[Field, ...]]


class ProtocolError(Exception):
    """The peer sent something that is not the protocol (or exceeds a limit); drop it."""


class Incomplete(Exception):
    """More bytes are needed; ``need`` is the total size required from the start, if known."""

    def __init__(self, need: int) -> None:
        super().__init__(need)
        self.need = need


def _limit(default: float, unit: str, what: str) -> Any:
    """A :class:`Limits` field whose unit and meaning the standalone server's ``--help`` shows."""
    return dataclasses.field(default=default, metadata={"unit": unit, "help": what})


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's bounds, each checked *before* the memory it guards is taken.

    The defaults admit everything torch's servers accept; lower them for a server exposed to
    peers you do not trust.  Every field is also a ``--max-...`` option of the standalone server
    (``python -m storeharness.stores.tcp --help``), and :class:`ServerProcess` forwards them all.
    """

    max_key: int = _limit(1 << 20, "bytes", "of one key (torch libuv: 8192; legacy: unbounded)")
    max_value: int = _limit(1 << 30, "bytes", "of one value (torch libuv: 8 MiB; legacy: 64 MiB)")
    max_keys: int = _limit(1 << 20, "keys", "in one request (torch libuv: 131072)")
    max_request: int = _limit((1 << 30) + (1 << 24), "bytes", "buffered for one request")
    #: Bytes of one reply (a multi_get, list_keys, or a get of an appended value); a larger
    #: one is refused with an error reply (ours) or costs the connection (torch's client).
    max_reply: int = _limit(
        (1 << 30) + (1 << 24), "bytes", "of one reply (a larger one is refused)"
    )
    #: Blocked requests (wait, get, barrier...) one connection may have pending; a client of
    #: torch's or ours has at most one at a time.
    max_waits: int = _limit(1024, "requests", "blocked (wait, get...) per connection")
    #: Connections served at once; more are accepted and closed at once (logged), so they
    #: never hold a file descriptor the server needs.  Kept below RLIMIT_NOFILE at start.
    max_connections: int = _limit(1 << 16, "connections", "served at once; more are closed")
    #: Bytes buffered server-wide for requests being received and replies not yet sent (the
    #: store's own data is not counted); a request that would exceed it is refused.
    max_buffered: int = _limit(4 << 30, "bytes", "buffered server-wide for requests and replies")
    #: Seconds a new connection may take to complete its handshake (VALIDATE, and the token
    #: when one is required) before it is closed; torch's client sends it at once.
    handshake_timeout: float = _limit(30.0, "seconds", "for a new connection's handshake")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"Limits.{f.name} must be a number > 0, got {value!r}")


_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")


# --------------------------------------------------------------------------- encoding


def string(data: bytes) -> bytes:
    """A wire string: u64 length, then the bytes."""
    return _U64.pack(len(data)) + data


def _strings(items: list[bytes]) -> list[bytes]:
    pack = _U64.pack
    parts = []
    for item in items:
        parts.append(pack(len(item)))
        parts.append(item)
    return parts


def encode_request(query: Query, *fields: bytes | int | list[bytes]) -> bytes:
    """Encode one request.  ``bytes`` fields are strings; ``int`` fields are written as the
    command requires (u32 for VALIDATE/PING, i64 otherwise); a ``list`` is a key list (u64 count).
    """
    out = bytearray(_U8.pack(query))
    for field in fields:
        if isinstance(field, bytes):
            out += _U64.pack(len(field))
            out += field
        elif isinstance(field, int):
            out += (_U32 if query in (Query.VALIDATE, Query.PING) else _I64).pack(field)
        else:
            out += _U64.pack(len(field))
            out += b"".join(_strings(field))
    return bytes(out)


def encode_multi_set(pairs: list[tuple[bytes, bytes]]) -> bytes:
    pack = _U64.pack
    parts = [_U8.pack(Query.MULTI_SET), _I64.pack(len(pairs))]
    for key, value in pairs:
        parts += (pack(len(key)), key, pack(len(value)), value)
    return b"".join(parts)


def reply_u8(value: int) -> bytes:
    return _U8.pack(value)


def reply_i64(value: int) -> bytes:
    return _I64.pack(value)


def reply_u32(value: int) -> bytes:
    return _U32.pack(value)


def reply_values(values: list[bytes]) -> bytes:
    return b"".join(_strings(values))


def reply_error(message: str) -> bytes:
    return _U8.pack(STATUS_ERROR) + string(message.encode("utf-8", "replace"))


# --------------------------------------------------------------------------- reply parsing


def parse_u8(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    if len(buf) < pos + 1:
        raise Incomplete(pos + 1)
    return buf[pos], pos + 1


def parse_u32(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    if len(buf) < pos + 4:
        raise Incomplete(pos + 4)
    return _U32.unpack_from(buf, pos)[0], pos + 4


def parse_i64(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    if len(buf) < pos + 8:
        raise Incomplete(pos + 8)
    return _I64.unpack_from(buf, pos)[0], pos + 8


#: Strings longer than this are copied out of a buffer through a memoryview.
_VIEW_MIN = 1 << 16


def parse_bytes(buf: bytes | bytearray, pos: int, limit: int = 1 << 62) -> tuple[bytes, int]:
    if len(buf) < pos + 8:
        raise Incomplete(pos + 8)
    (size,) = _U64.unpack_from(buf, pos)
    if size > limit:
        raise ProtocolError(f"string of {size} bytes exceeds the limit of {limit}")
    end = pos + 8 + size
    if len(buf) < end:
        raise Incomplete(end)
    if size > _VIEW_MIN:  # one copy, not two (slicing a bytearray copies before bytes() does)
        with memoryview(buf) as view:
            return bytes(view[pos + 8 : end]), end
    return bytes(buf[pos + 8 : end]), end


def parse_popped(buf: bytes | bytearray, pos: int) -> tuple[bytes | None, int]:
    """QUEUE_POP's reply: the queue's length before the pop, then the value if it was > 0."""
    size, pos = parse_i64(buf, pos)
    if size <= 0:
        return None, pos
    return parse_bytes(buf, pos)


def parse_bytes_list(
    buf: bytes | bytearray, pos: int, count: int, limit: int = 1 << 62
) -> tuple[list[bytes], int]:
    """``count`` wire strings from ``pos`` (the per-key hot loop of multi-key requests)."""
    out: list[bytes] = []
    append = out.append
    unpack = _U64.unpack_from
    size_buf = len(buf)
    for _ in range(count):
        if size_buf < pos + 8:
            raise Incomplete(pos + 8)
        (size,) = unpack(buf, pos)
        if size > limit:
            raise ProtocolError(f"string of {size} bytes exceeds the limit of {limit}")
        pos += 8
        end = pos + size
        if size_buf < end:
            raise Incomplete(end)
        append(bytes(buf[pos:end]))
        pos = end
    return out, pos


# --------------------------------------------------------------------------- request decoding


#: Commands with a key count: their length is found by a resumable scan (strings per key).
_COUNTED = {
    Query.CHECK: 1, Query.WAIT: 1, Query.MULTI_GET: 1, Query.WAIT_MULTI_GET: 1, Query.MULTI_SET: 2,
}  # fmt: skip
_COUNTED_BYTES = frozenset(int(q) for q in _COUNTED)


class RequestDecoder:
    """Turns a byte stream into requests: ``feed(data)``, then ``next()`` until ``None``.

    Raises :class:`ProtocolError` on an unknown command or a length over :class:`Limits`;
    the connection should then be dropped.  Work is linear in the bytes received: a request
    is parsed once, when it is complete; until then a many-key request is only *scanned*
    (string lengths, from where the previous scan stopped), and a request of known length is
    not looked at again until that many bytes are buffered.
    """

    def __init__(self, limits: Limits | None = None, extended: bool = False) -> None:
        self.limits = limits or Limits()
        self.extended = extended
        self._buf = bytearray()
        self._need = 1
        #: A many-key request being scanned: [position, strings left, strings done, per key].
        self._scan: list[int] | None = None
        #: Offer a completed many-key request to the accelerated handler (see :attr:`ready`)
        #: before parsing it here; ``_offered``: it was offered and declined.
        self.defer = False
        self._offered = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def need(self) -> int:
        """Bytes the head request needs buffered before anything more can be done with it."""
        return self._need

    @property
    def buffer(self) -> bytearray:
        """The unconsumed bytes, for an accelerated handler; :meth:`consume` what it used."""
        return self._buf

    @property
    def ready(self) -> bool:
        """Whether an accelerated handler may look at the buffer: enough may be there for a
        request, and no partial scan is under way (which it would redo from the start)."""
        scan = self._scan
        return len(self._buf) >= self._need and (scan is None or not scan[1])

    def consume(self, count: int) -> None:
        """Drop ``count`` leading bytes that were handled outside :meth:`next`."""
        del self._buf[:count]
        self._reset()

    def _reset(self) -> None:
        self._need = 1
        self._scan = None
        self._offered = False

    def next(self) -> Request | None:
        buf = self._buf
        if len(buf) < self._need:
            return None
        if buf[0] in _COUNTED_BYTES:
            if not self._framed(buf):
                return None
            if self.defer and not self._offered:
                self._offered = True  # complete: :attr:`ready` offers it to the fast path first
                return None
        try:
            request, used = self._parse(buf)
        except Incomplete as inc:
            self._need_more(inc.need, len(buf))
            return None
        if used == len(buf):
            self._buf = bytearray()  # let a large request's buffer go at once
        else:
            del buf[:used]
        self._reset()
        return request

    def _need_more(self, need: int, have: int) -> None:
        if need > self.limits.max_request:
            raise ProtocolError(
                f"request of {need} bytes exceeds max_request={self.limits.max_request}"
            )
        self._need = max(need, have + 1)

    def _framed(self, buf: bytearray) -> bool:
        """Whether the many-key request at the head is complete; resumes the previous scan."""
        lim = self.limits
        scan = self._scan
        if scan is None:
            if len(buf) < 9:
                self._need = 9
                return False
            query = Query(buf[0])
            if query in EXTENSIONS and not self.extended:
                raise ProtocolError(f"extension command {query.name} on a plain connection")
            (count,) = _I64.unpack_from(buf, 1)
            if not 0 <= count <= lim.max_keys:
                raise ProtocolError(f"{query.name} with {count} keys (max_keys={lim.max_keys})")
            per = _COUNTED[query]
            scan = self._scan = [9, count * per, 0, per]
        pos, left, done, per = scan
        have = len(buf)
        unpack = _U64.unpack_from
        max_key, max_value = lim.max_key, lim.max_value
        need = 0
        while left:
            if have < pos + 8:
                need = pos + 8
                break
            (size,) = unpack(buf, pos)
            limit = max_value if per == 2 and done & 1 else max_key
            if size > limit:
                raise ProtocolError(f"string of {size} bytes exceeds the limit of {limit}")
            end = pos + 8 + size
            if have < end:
                need = end
                break
            pos = end
            left -= 1
            done += 1
        scan[0], scan[1], scan[2] = pos, left, done
        if left:
            self._need_more(need, have)
            return False
        return True

    def _parse(self, buf: bytearray) -> tuple[Request, int]:
        cmd = buf[0]
        try:
            query = Query(cmd)
        except ValueError:
            raise ProtocolError(f"unknown command byte 0x{cmd:02x}") from None
        if query in EXTENSIONS and not self.extended:
            raise ProtocolError(f"extension command {query.name} on a plain connection")
        lim = self.limits
        pos = 1
        if query in (Query.VALIDATE, Query.PING):
            number, pos = parse_u32(buf, pos)
            return (query, (number,)), pos
        if query in (Query.GETNUMKEYS, Query.CANCEL_WAIT, Query.LIST_KEYS):
            return (query, ()), pos
        if query in (Query.CHECK, Query.WAIT, Query.MULTI_GET, Query.WAIT_MULTI_GET):
            count, pos = parse_i64(buf, pos)
            if not 0 <= count <= lim.max_keys:
                raise ProtocolError(f"{query.name} with {count} keys (max_keys={lim.max_keys})")
            keys, pos = parse_bytes_list(buf, pos, count, lim.max_key)
            return (query, (tuple(keys),)), pos
        if query is Query.MULTI_SET:
            count, pos = parse_i64(buf, pos)
            if not 0 <= count <= lim.max_keys:
                raise ProtocolError(f"MULTI_SET with {count} keys (max_keys={lim.max_keys})")
            pairs = []
            for _ in range(count):
                key, pos = parse_bytes(buf, pos, lim.max_key)
                value, pos = parse_bytes(buf, pos, lim.max_value)
                pairs.append((key, value))
            return (query, (tuple(pairs),)), pos
        key, pos = parse_bytes(buf, pos, lim.max_key)
        if query in (Query.ADD, Query.BARRIER, Query.WAIT_COUNT):
            number, pos = parse_i64(buf, pos)
            return (query, (key, number)), pos
        if query in (Query.SET, Query.APPEND, Query.QUEUE_PUSH):
            value, pos = parse_bytes(buf, pos, lim.max_value)
            return (query, (key, value)), pos
        if query is Query.COMPARE_SET:
            expected, pos = parse_bytes(buf, pos, lim.max_value)
            desired, pos = parse_bytes(buf, pos, lim.max_value)
            return (query, (key, expected, desired)), pos
        # GET, DELETE_KEY, QUEUE_POP, QUEUE_LEN, WAIT_GET, AUTH
        return (query, (key,)), pos

"""The blocking TCPStore client: the store operations over one :class:`~._transport.Transport`.

Against our server it negotiates the extensions (one-round-trip ``get``, error replies that keep
the connection, server-side counter waits); against torch's server it speaks plain torch.  Keys
passed here are wire keys (the facade adds torch's ``/`` prefix); ``shown`` arguments are the
names that errors give them.  Time bounds, cancels, reconnects: see :mod:`._transport`.
"""

from __future__ import annotations

from typing import Any

from ._transport import (
    _ADD,
    _I64,
    _SET,
    _U64,
    _WAIT_GET,
    OVERTIME_MAX,
    Shown,
    Transport,
    _stop_waiting,
    overtime,
)
from .codec import (
    CHECK_READY,
    Query,
    encode_request,
    parse_bytes,
    parse_bytes_list,
    parse_i64,
    parse_popped,
    parse_u8,
)

__all__ = ["OVERTIME_MAX", "TCPClient", "overtime"]


class TCPClient(Transport):
    """A connection to a TCPStore server (ours or torch's), with the store's operations.

    ``connect_timeout`` bounds connecting, here and on each lazy reconnect; ``io_timeout``
    bounds each request the server answers at once (and may be changed later); ``0`` means no
    limit for either.  Raises :class:`StoreBroken` when it cannot connect in time, saying why.
    """

    def __repr__(self) -> str:
        """torch's shape, ``TCPClient(SocketImpl(fd=7, addr=127.0.0.1:50112, remote=...))``.

        Without a connection (closed, or broken until the next call reconnects; torch's client
        has neither state) it says which, with ``fd=-1`` and the server it is for.
        """
        sock = self._sock
        if sock is not None and not self._closed:
            try:
                local, remote = _address(sock.getsockname()), _address(sock.getpeername())
                return f"TCPClient(SocketImpl(fd={sock.fileno()}, addr={local}, remote={remote}))"
            except OSError:  # closed or disconnected meanwhile
                pass
        state = "closed" if self._closed else "broken"
        return f"TCPClient(SocketImpl(fd=-1, remote={self.endpoint}), {state})"

    def set(self, key: bytes, value: bytes, shown: Shown = ()) -> None:
        pack = _U64.pack
        payload = b"".join((_SET, pack(len(key)), key, pack(len(value)), value))
        self.call("set", payload, None, shown)

    def get(self, key: bytes, timeout: float, shown: str) -> bytes:
        if self.extended:
            payload = _WAIT_GET + _U64.pack(len(key)) + key
            value: bytes = self.blocking("get", payload, parse_bytes, timeout, shown)
            return value
        then = (encode_request(Query.GET, key), parse_bytes)
        payload = encode_request(Query.WAIT, [key])
        value = self.blocking("get", payload, _stop_waiting, timeout, shown, then=then)
        return value

    def add(self, key: bytes, amount: int, shown: Shown = ()) -> int:
        payload = _ADD + _U64.pack(len(key)) + key + _I64.pack(amount)
        result = self.call("add", payload, parse_i64, shown)
        assert result is not None
        return result

    def compare_set(self, key: bytes, expected: bytes, desired: bytes, shown: Shown = ()) -> bytes:
        payload = encode_request(Query.COMPARE_SET, key, expected, desired)
        result = self.call("compare_set", payload, parse_bytes, shown)
        assert result is not None
        return result

    def wait(
        self,
        keys: list[bytes],
        timeout: float,
        shown: list[str],
        op: str = "wait",
        start: float | None = None,
    ) -> None:
        """Block until every key exists; the error names only those still missing."""
        payload = encode_request(Query.WAIT, keys)
        self.blocking(op, payload, _stop_waiting, timeout, shown, start=start, narrow=keys)

    def check(self, keys: list[bytes], shown: Shown = ()) -> bool:
        return self.call("check", encode_request(Query.CHECK, keys), parse_u8, shown) == CHECK_READY

    def delete_key(self, key: bytes, shown: Shown = ()) -> bool:
        payload = encode_request(Query.DELETE_KEY, key)
        return bool(self.call("delete_key", payload, parse_i64, shown))

    def num_keys(self) -> int:
        result = self.call("num_keys", encode_request(Query.GETNUMKEYS), parse_i64)
        assert result is not None
        return result

    def append(self, key: bytes, value: bytes, shown: Shown = ()) -> None:
        self.call("append", encode_request(Query.APPEND, key, value), None, shown)

    def multi_get(self, keys: list[bytes], timeout: float, shown: list[str]) -> list[bytes]:
        n = len(keys)

        def values(buf: bytearray, pos: int) -> tuple[list[bytes], int]:
            return parse_bytes_list(buf, pos, n)

        result: list[bytes]
        if self.extended:
            payload = encode_request(Query.WAIT_MULTI_GET, keys)
            result = self.blocking("multi_get", payload, values, timeout, shown, narrow=keys)
            return result
        then = (encode_request(Query.MULTI_GET, keys), values)
        payload = encode_request(Query.WAIT, keys)
        result = self.blocking(
            "multi_get", payload, _stop_waiting, timeout, shown, then=then, narrow=keys
        )
        return result

    def multi_set(self, payload: bytes, shown: Shown = ()) -> None:
        """Send a MULTI_SET request (see :func:`.codec.encode_multi_set`)."""
        self.call("multi_set", payload, None, shown)

    def queue_push(self, key: bytes, value: bytes, shown: Shown = ()) -> None:
        self.call("queue_push", encode_request(Query.QUEUE_PUSH, key, value), None, shown)

    def queue_pop(self, key: bytes, shown: Shown = ()) -> bytes | None:
        """Pop without blocking: the value, or ``None`` on an empty queue."""
        return self.call("queue_pop", encode_request(Query.QUEUE_POP, key), parse_popped, shown)

    def wait_and_pop(self, key: bytes, timeout: float, shown: str, start: float) -> bytes | None:
        """Wait (by ``start + timeout``) for the queue to be non-empty, then pop: the value, or
        ``None`` when another consumer took it first."""
        then = (encode_request(Query.QUEUE_POP, key), parse_popped)
        payload = encode_request(Query.WAIT, [key])
        value: bytes | None = self.blocking(
            "queue_pop", payload, _stop_waiting, timeout, shown, start=start, then=then
        )
        return value

    def queue_len(self, key: bytes, shown: Shown = ()) -> int:
        result = self.call("queue_len", encode_request(Query.QUEUE_LEN, key), parse_i64, shown)
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
        """Block until ``world_size`` callers arrived; the error says how many did."""
        payload = encode_request(Query.BARRIER, key, world_size)
        arrived = f"{{}} of {world_size} participants arrived"
        self.blocking("barrier", payload, _stop_waiting, timeout, shown, counter=(key, arrived))

    def wait_count(self, key: bytes, target: int, timeout: float, detail: str = "{}") -> int:
        """Extension: block until the counter at ``key`` is at least ``target``.  ``detail``:
        the timeout error's detail, ``{}`` standing for the counter's value then."""
        payload = encode_request(Query.WAIT_COUNT, key, target)
        shown = key.decode("utf-8", "replace")
        count: int = self.blocking(
            "wait_count", payload, parse_i64, timeout, shown, counter=(key, detail)
        )
        return count


def _address(sockaddr: Any) -> str:
    """``host:port`` for IPv4, ``[host]:port`` for IPv6, as torch's ``SocketImpl`` prints them."""
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

"""TCPStore: torch's constructor and key naming over our client, with our server for masters."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from .._base import Capability, Store
from .._errors import (
    QueueEmpty,
    StoreBindError,
    StoreTimeout,
    StoreValueError,
    UnsupportedOperation,
)
from .._types import (
    DEFAULT_TIMEOUT,
    KeyLike,
    TimeoutLike,
    ValueLike,
    as_key,
    as_keys,
    as_seconds,
    as_value,
    check_amount,
    check_world_size,
)
from ._standalone import ServerProcess
from ._token import resolve_token
from .client import TCPClient
from .codec import Limits, encode_multi_set
from .server import TCPServer, adopt_listener, bind_listener

__all__ = ["TCPStore"]

#: torch's client prefixes every user key with "/"; the world-size counter has no prefix.
PREFIX = "/"
PREFIX_BYTES = PREFIX.encode()
INIT_KEY = b"init/"

log = logging.getLogger("storeharness.stores.tcp")

#: torchelastic's agent runs the job's store on MASTER_PORT; a rank-0 master then cannot bind.
AGENT_STORE_ENV = "TORCHELASTIC_USE_AGENT_STORE"
_TRUE = frozenset({"y", "yes", "1", "t", "true"})
_FALSE = frozenset({"n", "no", "0", "f", "false"})
_STOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")

_tenants_lock = threading.Lock()
_tenants: dict[int, tuple[TCPServer | ServerProcess, int]] = {}


def _enc(key: str) -> bytes:
    return (PREFIX + key).encode("utf-8", "surrogateescape")


def _enc_all(keys: list[str]) -> list[bytes]:
    return [(PREFIX + k).encode("utf-8", "surrogateescape") for k in keys]


def _release_server(server: TCPServer | ServerProcess, port: int, tenant: bool) -> None:
    if tenant:
        with _tenants_lock:
            entry = _tenants.get(port)
            if entry is None or entry[0] is not server:
                return
            if entry[1] > 1:
                _tenants[port] = (server, entry[1] - 1)
                return
            del _tenants[port]
    server.stop()


def _env_flag(name: str, bind_error: StoreBindError) -> bool:
    """torch's reading of a boolean variable (``getCvarBool``): unset is false; ``y``, ``yes``,
    ``1``, ``t``, ``true`` (any case) true; ``n``, ``no``, ``0``, ``f``, ``false`` false."""
    raw = os.environ.get(name)
    if raw is None or raw.lower() in _FALSE:
        return False
    if raw.lower() in _TRUE:
        return True
    raise _bad_env(name, raw, "1/true/yes/t/y or 0/false/no/f/n", bind_error) from bind_error


def _env_port(name: str, bind_error: StoreBindError) -> int:
    """torch's reading of an integer variable (``std::stoi``): unset is 0; leading whitespace
    and a sign accepted, trailing text ignored; no digits or outside int32 is invalid."""
    raw = os.environ.get(name)
    if raw is None:
        return 0
    found = _STOI.match(raw)
    if found is None or not -(2**31) <= int(found.group(1)) < 2**31:
        raise _bad_env(name, raw, "a port number", bind_error) from bind_error
    return int(found.group(1))


def _bad_env(name: str, raw: str, expected: str, bind_error: StoreBindError) -> StoreValueError:
    return StoreValueError(
        f"Invalid value for environment variable: {name} ({raw!r}; expected {expected}), read "
        f"because the master could not listen: {bind_error}",
        variable=name,
        value=raw,
    )


def _agent_store_serves(port: int, bind_error: StoreBindError) -> bool:
    """Whether a master that could not bind ``port`` is to be a client of torchelastic's agent
    store instead, as torch's is: ``TORCHELASTIC_USE_AGENT_STORE`` true and ``MASTER_PORT`` equal
    to ``port``.  Both are read (and an invalid value raised) whatever the other says."""
    use_agent = _env_flag(AGENT_STORE_ENV, bind_error)
    return _env_port("MASTER_PORT", bind_error) == port and use_agent


class TCPStore(Store):
    """A store served over TCP with torch's c10d wire protocol; torch clients can use it too.

    ``is_master=True`` starts a server (in a thread of this process, or with
    ``server_process=True`` in a process of its own); ``port=0`` binds an ephemeral port, read it
    from ``.port``.  With ``world_size`` set and ``wait_for_workers``, every participant counts
    itself in and the master's constructor returns once ``world_size`` have (itself included).
    ``accelerate``: use the C hot paths of the server and client (``None``: when built;
    ``False``: pure Python, the reference; ``True``: required).

    ``timeout`` is the limit for connecting, for each request and for each blocking call (the
    limits torch's client takes from it); a server that goes silent makes a call raise
    :class:`StoreTimeout` by its timeout plus :func:`.client.overtime` (at most 0.5 s).

    ``token`` (else the ``STOREHARNESS_TOKEN`` environment variable): a master's server then
    serves only clients that send it (ours do; torch's cannot and are refused), and this
    client sends it when a server asks.  Without one, anyone who reaches the port is served,
    as by torch's server.  The token travels in clear: it keeps out strangers, not eavesdroppers.

    Under torchelastic (``TORCHELASTIC_USE_AGENT_STORE`` true and ``MASTER_PORT`` equal to
    ``port``) a master that cannot bind, because the agent's store holds the port, becomes a
    client of that store, as torch's does: it counts itself in but does not wait for the others.

    Raises :class:`StoreBroken` when no server answers in time (saying whether nobody listened,
    the handshake went unanswered or the name did not resolve), :class:`StoreBindError` (a
    ``DistNetworkError``) when the port is in use, :class:`StoreTimeout` when workers are missing.
    """

    def __init__(
        self,
        host_name: str,
        port: int,
        world_size: int | None = None,
        is_master: bool = False,
        timeout: TimeoutLike = timedelta(seconds=DEFAULT_TIMEOUT),
        wait_for_workers: bool = True,
        multi_tenant: bool = False,
        master_listen_fd: int | None = None,
        use_libuv: bool = True,
        *,
        server_process: bool = False,
        limits: Limits | None = None,
        extensions: bool = True,
        accelerate: bool | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(timeout)
        if not isinstance(host_name, str) or not host_name:
            raise TypeError(f"TCPStore: host_name must be a non-empty str, got {host_name!r}")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"TCPStore: port must be an int in 0..65535, got {port!r}")
        if not isinstance(is_master, bool):
            raise TypeError(f"TCPStore: is_master must be a bool, got {is_master!r}")
        if world_size == 0:
            raise ValueError("TCPStore world size cannot be 0")
        if world_size is not None and world_size < 0:
            world_size = None
        self._host = host_name
        self._world_size = world_size
        self._use_libuv = bool(use_libuv)
        self._server: TCPServer | ServerProcess | None = None
        self._server_release: Any = None
        self._token = token = resolve_token(token)
        if is_master:
            try:
                self._server = self._start_server(
                    port, multi_tenant, master_listen_fd, server_process, limits, accelerate, token
                )
                port = self._server.port
            except StoreBindError as exc:
                if not _agent_store_serves(port, exc):
                    raise
                log.error(
                    "The server socket on %s has failed to bind. %s is enabled so ignoring the "
                    "error (this master is a client of the agent's store).",
                    port,
                    AGENT_STORE_ENV,
                )
        self._port = port
        try:
            self._client = TCPClient(
                host_name,
                port,
                connect_timeout=self._timeout,
                io_timeout=self._timeout,
                extensions=extensions,
                accelerate=accelerate,
                token=token,
            )
            if world_size is not None and wait_for_workers:
                self._client.add(INIT_KEY, 1, INIT_KEY.decode())
                if self._server is not None:  # not a master turned client (agent store)
                    self._wait_for_workers(world_size)
        except BaseException:
            self.close()
            raise

    def _start_server(
        self,
        port: int,
        multi_tenant: bool,
        listen_fd: int | None,
        in_process: bool,
        limits: Limits | None,
        accelerate: bool | None,
        token: str | None,
    ) -> TCPServer | ServerProcess:
        if multi_tenant and port > 0 and listen_fd is None:
            with _tenants_lock:
                entry = _tenants.get(port)
                if entry is not None:
                    _tenants[port] = (entry[0], entry[1] + 1)
                    self._server_release = weakref.finalize(
                        self, _release_server, entry[0], port, True
                    )
                    return entry[0]
        sock = adopt_listener(listen_fd, port) if listen_fd is not None else bind_listener(port)
        server: TCPServer | ServerProcess = (
            ServerProcess(sock, limits, accelerate, token)
            if in_process
            else TCPServer(sock, limits, accelerate=accelerate, token=token).start()
        )
        if multi_tenant:
            with _tenants_lock:
                _tenants[server.port] = (server, 1)
        self._server_release = weakref.finalize(
            self, _release_server, server, server.port, multi_tenant
        )
        return server

    def _wait_for_workers(self, world_size: int) -> None:
        joined = f"{{}}/{world_size} clients joined."  # the client fills in the count
        try:
            self._client.wait_count(INIT_KEY, world_size, self._timeout, joined)
        except StoreTimeout as exc:
            raise StoreTimeout(
                "init",
                [INIT_KEY.decode()],
                exc.elapsed,
                self._timeout,
                repr(self),
                f"Timed out after {exc.elapsed:.0f} seconds waiting for clients. "
                + getattr(exc, "detail", ""),
            ) from None

    # ----------------------------------------------------------------- properties

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def libuvBackend(self) -> bool:
        """The ``use_libuv`` flag given (torch reports the flag, not the server)."""
        return self._use_libuv

    @property
    def capabilities(self) -> frozenset[Capability]:  # type: ignore[override]
        caps = {Capability.LIST_KEYS, Capability.CROSS_PROCESS, Capability.CAS_WAKES}
        if self._use_libuv:
            caps.add(Capability.QUEUES)
        client = getattr(self, "_client", None)
        if client is not None and client.extended:
            caps.add(Capability.ADD_ERRORS)  # our server answers errors; torch's drops us
        return frozenset(caps)

    def _queues(self, op: str) -> TCPClient:
        if not self._use_libuv:  # as torch's client: the flag says the server has no queues
            raise UnsupportedOperation(
                repr(self),
                op,
                "queues not implemented on legacy TCPStore backend (use_libuv=False)",
            )
        return self._c(op)

    @property
    def world_size(self) -> int | None:
        return self._world_size

    @property
    def server(self) -> TCPServer | ServerProcess | None:
        """The server this store started or shares (``None`` for clients)."""
        return self._server

    def __repr__(self) -> str:
        """torch's shape: ``TCPStore(client=TCPClient(SocketImpl(...)), server=TCPServer(port=N))``,
        ``server=<nullptr>`` without a server of its own (as torch prints a null pointer)."""
        client = getattr(self, "_client", None)
        client_text = "<nullptr>" if client is None else repr(client)
        server = getattr(self, "_server", None)
        server_text = "<nullptr>" if server is None else repr(server)
        return f"TCPStore(client={client_text}, server={server_text})"

    # ----------------------------------------------------------------- operations

    def _c(self, op: str) -> TCPClient:
        self._check_open(op)
        return self._client

    def set(self, key: KeyLike, value: ValueLike) -> None:
        k = key if type(key) is str else as_key(key)
        self._c("set").set(_enc(k), value if type(value) is bytes else as_value(value), k)

    def get(self, key: KeyLike) -> bytes:
        k = key if type(key) is str else as_key(key)
        return self._c("get").get(_enc(k), self._timeout, k)

    def add(self, key: KeyLike, amount: int) -> int:
        k = key if type(key) is str else as_key(key)
        return self._c("add").add(_enc(k), check_amount(amount, k), k)

    def compare_set(self, key: KeyLike, expected: ValueLike, desired: ValueLike) -> bytes:
        k = as_key(key)
        exp, new = as_value(expected, "expected"), as_value(desired, "desired")
        return self._c("compare_set").compare_set(_enc(k), exp, new, k)

    def wait(self, keys: Sequence[KeyLike], timeout: TimeoutLike | None = None) -> None:
        names = as_keys(keys)
        limit = self._timeout if timeout is None else as_seconds(timeout)
        client = self._c("wait")
        if names:  # a timeout names only the keys still missing (the client asks the server)
            client.wait(_enc_all(names), limit, names)

    def check(self, keys: Sequence[KeyLike]) -> bool:
        names = as_keys(keys)
        return self._c("check").check(_enc_all(names), names)

    def delete_key(self, key: KeyLike) -> bool:
        k = as_key(key)
        return self._c("delete_key").delete_key(_enc(k), k)

    def num_keys(self) -> int:
        """Keys on the server, including the world-size counter ``init/`` (as torch counts)."""
        return self._c("num_keys").num_keys()

    def has_extended_api(self) -> bool:
        return True

    def append(self, key: KeyLike, value: ValueLike) -> None:
        k = as_key(key)
        self._c("append").append(_enc(k), as_value(value), k)

    def multi_get(self, keys: Sequence[KeyLike]) -> list[bytes]:
        names = as_keys(keys)
        client = self._c("multi_get")
        if not names:
            return []
        return client.multi_get(_enc_all(names), self._timeout, names)

    def multi_set(self, keys: Sequence[KeyLike], values: Sequence[ValueLike]) -> None:
        names, data = self._pairs(keys, values)
        client = self._c("multi_set")
        fast = client.speedups
        payload = fast.encode_multi_set(PREFIX_BYTES, names, data) if fast else None
        if payload is None:  # no speedups, or a key with lone surrogates
            payload = encode_multi_set(list(zip(_enc_all(names), data, strict=True)))
        client.multi_set(payload, names)

    def queue_push(self, key: KeyLike, value: ValueLike) -> None:
        k = as_key(key)
        self._queues("queue_push").queue_push(_enc(k), as_value(value), k)

    def queue_pop(self, key: KeyLike, block: bool = True) -> bytes:
        k = as_key(key)
        wire = _enc(k)
        client = self._queues("queue_pop")
        limit = self._timeout
        start = time.monotonic()  # one deadline, start + limit, for every round below
        value = client.queue_pop(wire, k)
        if value is not None:
            return value
        if not block:
            raise QueueEmpty(k, repr(self))
        while True:  # another consumer may win the race between WAIT and POP: wait again
            value = client.wait_and_pop(wire, limit, k, start)
            if value is not None:
                return value
            elapsed = time.monotonic() - start
            if limit and elapsed >= limit:
                raise StoreTimeout("queue_pop", [k], elapsed, limit, repr(self))

    def queue_len(self, key: KeyLike) -> int:
        k = as_key(key)
        return self._queues("queue_len").queue_len(_enc(k), k)

    def list_keys(self) -> list[str]:
        """User keys (those torch's client would show: ``/``-prefixed, prefix removed)."""
        raw = self._c("list_keys").list_keys()
        return [k[1:].decode("utf-8", "surrogateescape") for k in raw if k.startswith(b"/")]

    def barrier(self, key: KeyLike, world_size: int, timeout: TimeoutLike | None = None) -> None:
        k = as_key(key)
        check_world_size(k, world_size)
        limit = self._timeout if timeout is None else as_seconds(timeout)
        # A timeout says how many participants arrived (the client asks the server).
        self._c("barrier").barrier(_enc(k), world_size, limit, k)

    # ----------------------------------------------------------------- lifecycle

    def set_timeout(self, timeout: TimeoutLike) -> None:
        """Change the timeout of later blocking calls and of every request (the client's I/O
        timeout); reconnecting keeps the constructor's timeout, as torch connects only then."""
        super().set_timeout(timeout)
        self._client.io_timeout = self._timeout

    def clone(self) -> TCPStore:
        """A new connection to the same server (no world-size handshake), same timeout."""
        self._c("clone")
        return TCPStore(
            self._host,
            self._port,
            None,
            False,
            self._timeout,
            use_libuv=self._use_libuv,
            extensions=self._client.want_extensions,
            token=self._token,
        )

    def close(self) -> None:
        """Close the connection; a master also stops its server (unless tenants share it)."""
        if self._closed:
            return
        self._closed = True
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
        if self._server_release is not None:
            self._server_release()

"""The EtcdStore's only contact with etcd: a small transport over etcd-sdk-python's gRPC stubs.

The store builds etcd's own v3 request messages (``rpc``: the generated protobuf module) and
hands them here; this module sends them with an explicit per-call deadline, rotates between the
cluster's endpoints when one fails, keeps the run leases alive from one thread, and multiplexes
every watch of the process over one stream per endpoint.  Errors leave as three internal kinds:
:class:`Transient` (retry until the operation's own deadline), :class:`LeaseGone` (re-grant the
run lease) and :class:`Rejected` (the request itself is bad: too large, too many operations).

One :class:`Transport` per process and cluster (:func:`shared`): gRPC channels do not survive
``fork``, so a forked child builds its own on first use and never touches its parent's.  A JSON
gateway transport with the same five methods could replace this one without touching the store.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "MISSING_EXTRA",
    "LeaseGone",
    "Rejected",
    "Transient",
    "Transport",
    "release",
    "shared",
]

#: What to install when the client is missing (the error names it).
MISSING_EXTRA = "pip install 'storeharness[etcd]'"

#: gRPC's default 4 MiB receive limit is below what a range over a large store returns.
_MAX_MESSAGE = 256 * 1024 * 1024
#: Reconnect quickly to a member that comes back (gRPC's default backoff grows to 120 s).
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class Transient(Exception):
    """The cluster did not answer in time or has no leader now; the request may have applied."""


class LeaseGone(Exception):
    """A put named a lease etcd no longer has (every participant was gone longer than its TTL)."""


class Rejected(Exception):
    """etcd refused the request itself (too large, too many operations); retrying cannot help."""


def _import() -> tuple[Any, Any, Any]:
    try:
        import grpc
        from pyetcd import etcdrpc
        from pyetcd import watch as pywatch
    except ImportError as exc:
        from .._errors import StoreError

        raise StoreError(
            f"EtcdStore needs the etcd client (etcd-sdk-python, grpcio, protobuf): {exc}; "
            f"install it with: {MISSING_EXTRA}"
        ) from exc
    return grpc, etcdrpc, pywatch


class Transport:
    """gRPC stubs for one etcd cluster, owned by one process."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], rpc_timeout: float) -> None:
        self.grpc, self.rpc, self._pywatch = _import()
        self.endpoints = list(endpoints)
        self.rpc_timeout = rpc_timeout
        self.pid = os.getpid()
        self.users = 0
        self._lock = threading.Lock()
        self._current = 0
        self._channels: dict[int, Any] = {}
        self._watchers: dict[int, Any] = {}
        self._methods: dict[tuple[int, str, str], Any] = {}
        self._leases: dict[int, tuple[int, float]] = {}  # id -> (users, ttl)
        self._keeper: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def label(self) -> str:
        """The endpoints as a user wrote them: ``127.0.0.1:2379,127.0.0.1:2380``."""
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)

    # ----------------------------------------------------------------- channels

    def _channel(self) -> tuple[int, Any]:
        with self._lock:
            index = self._current
            channel = self._channels.get(index)
            if channel is None:
                host, port = self.endpoints[index]
                channel = self.grpc.insecure_channel(f"{host}:{port}", options=_CHANNEL_OPTIONS)
                self._channels[index] = channel
            return index, channel

    def _failed(self, index: int) -> None:
        """Move later calls to the next endpoint (this one refused or did not answer)."""
        with self._lock:
            if self._current == index and len(self.endpoints) > 1:
                self._current = (index + 1) % len(self.endpoints)

    def _translate(self, exc: Any, index: int) -> Exception:
        code = exc.code() if hasattr(exc, "code") else None
        text = exc.details() if hasattr(exc, "details") else str(exc)
        host, port = self.endpoints[index]
        where = f"{host}:{port}: {text}"
        codes = self.grpc.StatusCode
        if code == codes.NOT_FOUND and "lease" in (text or ""):
            return LeaseGone(where)
        if code in (codes.INVALID_ARGUMENT, codes.OUT_OF_RANGE, codes.FAILED_PRECONDITION):
            return Rejected(where)
        # UNAVAILABLE (refused, no leader, "request timed out"), DEADLINE_EXCEEDED, a member
        # shutting down (CANCELLED/UNKNOWN/INTERNAL): another try, possibly elsewhere, may work.
        self._failed(index)
        return Transient(where)

    def call(self, service: str, method: str, request: Any, time_limit: float) -> Any:
        """One unary RPC (``KV.Range``, ``KV.Txn``, ``Lease.LeaseGrant``...) within ``time_limit``.

        Raises :class:`Transient`, :class:`LeaseGone` or :class:`Rejected`.
        """
        index, channel = self._channel()
        rpc = self._methods.get((index, service, method))
        if rpc is None:  # a stub builds a callable per method: build each once per channel
            rpc = getattr(getattr(self.rpc, f"{service}Stub")(channel), method)
            self._methods[(index, service, method)] = rpc
        try:
            return rpc(request, timeout=max(time_limit, 0.001))
        except self.grpc.RpcError as exc:
            raise self._translate(exc, index) from exc

    # ----------------------------------------------------------------- watches

    def watch(
        self,
        key: bytes,
        range_end: bytes | None,
        start_revision: int,
        callback: Callable[[Any], None],
        time_limit: float,
    ) -> Callable[[], None]:
        """Watch PUTs on ``[key, range_end)`` from ``start_revision``; returns ``cancel()``.

        ``callback`` gets a list of put events, or an exception: ``Compacted`` (the revision is
        gone: re-read and watch again) or :class:`Transient` (the stream broke).
        """
        index, channel = self._channel()
        with self._lock:
            watcher = self._watchers.get(index)
            if watcher is None:
                stub = self.rpc.WatchStub(channel)
                watcher = self._pywatch.Watcher(stub, timeout=max(time_limit, 0.05))
                self._watchers[index] = watcher
        watcher.timeout = max(min(time_limit, self.rpc_timeout), 0.05)
        compacted = _compacted_class()

        def relay(update: Any) -> None:
            if isinstance(update, compacted):
                callback(Compacted(getattr(update, "compacted_revision", 0)))
            elif isinstance(update, BaseException):
                callback(self._translate(update, index))
            else:
                callback([e for e in update.events if type(e).__name__ == "PutEvent"])

        nodelete = self.rpc.WatchCreateRequest.NODELETE
        try:
            watch_id = watcher.add_callback(
                key, relay, range_end=range_end, start_revision=start_revision,
                filters=[nodelete],
            )  # fmt: skip
        except self.grpc.RpcError as exc:
            raise self._translate(exc, index) from exc
        except Exception as exc:  # WatchTimedOut, a stream that ended at creation
            self._failed(index)
            host, port = self.endpoints[index]
            raise Transient(f"{host}:{port}: watch not created: {exc!r}") from exc
        return lambda: watcher.cancel(watch_id)

    # ----------------------------------------------------------------- leases

    def keep(self, lease_id: int, ttl: float) -> None:
        """Keep ``lease_id`` alive (every ``ttl``/3 s) until :meth:`drop` is called as often."""
        with self._lock:
            users, _ = self._leases.get(lease_id, (0, ttl))
            self._leases[lease_id] = (users + 1, ttl)
            if self._keeper is None:
                self._keeper = threading.Thread(
                    target=self._keep_alive, name="etcd-lease-keepalive", daemon=True
                )
                self._keeper.start()

    def drop(self, lease_id: int) -> None:
        with self._lock:
            users, ttl = self._leases.get(lease_id, (0, 0.0))
            if users <= 1:
                self._leases.pop(lease_id, None)
            else:
                self._leases[lease_id] = (users - 1, ttl)

    def _keep_alive(self) -> None:
        # A periodic timer, not synchronisation: the TTL is etcd's, the period a third of it.
        while True:
            with self._lock:
                leases = dict(self._leases)
            period = min((ttl for _, ttl in leases.values()), default=3.0) / 3
            if self._stop.wait(period):
                return
            for lease_id in leases:
                request = self.rpc.LeaseKeepAliveRequest(ID=lease_id)
                try:
                    index, channel = self._channel()
                    stub = self.rpc.LeaseStub(channel)
                    for _ in stub.LeaseKeepAlive(iter([request]), timeout=self.rpc_timeout):
                        break
                except self.grpc.RpcError as exc:
                    self._translate(exc, index)  # rotate; the next tick tries elsewhere

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            watchers, self._watchers = list(self._watchers.values()), {}
            channels, self._channels = list(self._channels.values()), {}
            self._methods = {}
        for watcher in watchers:
            watcher.close()
        for channel in channels:
            channel.close()


class Compacted(Exception):
    """The watch's start revision was compacted away; re-read from ``revision`` and re-watch."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted up to {revision}")
        self.revision = revision


def _compacted_class() -> type[BaseException]:
    from pyetcd.exceptions import RevisionCompactedError

    cls: type[BaseException] = RevisionCompactedError
    return cls


_SHARED: dict[tuple[int, tuple[tuple[str, int], ...], float], Transport] = {}
_SHARED_LOCK = threading.Lock()


def shared(endpoints: Sequence[tuple[str, int]], rpc_timeout: float) -> Transport:
    """This process's transport to the cluster at ``endpoints`` (made on first use).

    Keyed by pid: a forked child never reuses its parent's channels.
    """
    key = (os.getpid(), tuple(endpoints), rpc_timeout)
    with _SHARED_LOCK:
        transport = _SHARED.get(key)
        if transport is None:
            transport = _SHARED[key] = Transport(endpoints, rpc_timeout)
        transport.users += 1
        return transport


def release(transport: Transport) -> None:
    """One user fewer; the last one closes the channels (in the process that opened them)."""
    key = (transport.pid, tuple(transport.endpoints), transport.rpc_timeout)
    with _SHARED_LOCK:
        transport.users -= 1
        if transport.users > 0 or transport.pid != os.getpid():
            return
        _SHARED.pop(key, None)
    transport.close()

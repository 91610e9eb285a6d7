"""The EtcdStore's only contact with etcd: a small transport over etcd-sdk-python's gRPC stubs.

The store builds etcd's own v3 request messages (``rpc``: the generated protobuf module) and
hands them here; this module sends them with an explicit per-call deadline, rotates between the
cluster's endpoints when one fails, keeps the run leases alive from one thread, and multiplexes
every watch of the process over one stream per endpoint.  Every call is given the operation's
deadline (an instant on the monotonic clock, computed once when the operation began) and bounds
its RPC by what is left of it, capped by ``rpc_timeout``.  Errors leave as four internal kinds:
:class:`OutOfTime` (the operation's own time ran out: no sign of a failing cluster),
:class:`Transient` (the cluster failed an attempt: retry until the deadline), :class:`LeaseGone`
(re-grant the run lease) and :class:`Rejected` (the request itself is bad: too large, too many
operations).

One :class:`Transport` per process and cluster (:func:`shared`): gRPC channels do not survive
``fork``, so a forked child builds its own on first use and never touches its parent's.  A JSON
gateway transport with the same five methods could replace this one without touching the store.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._watchstream import Creation, WatchStream

__all__ = [
    "MISSING_EXTRA",
    "LeaseGone",
    "OutOfTime",
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


class OutOfTime(Exception):
    """The operation's deadline passed, before or while etcd was asked; nothing says the cluster
    is failing (the call was cut by the operation's own time, not by ``rpc_timeout``)."""


class Transient(Exception):
    """The cluster did not answer in time or has no leader now; the request may have applied."""


class LeaseGone(Exception):
    """A put named a lease etcd no longer has (every participant was gone longer than its TTL)."""


class Rejected(Exception):
    """etcd refused the request itself (too large, too many operations); retrying cannot help."""


def _import() -> tuple[Any, Any, int]:
    try:
        import grpc
        from pyetcd import etcdrpc
        from pyetcd.etcdrpc import kv_pb2
    except ImportError as exc:
        from .._errors import StoreError

        raise StoreError(
            f"EtcdStore needs the etcd client (etcd-sdk-python, grpcio, protobuf): {exc}; "
            f"install it with: {MISSING_EXTRA}"
        ) from exc
    return grpc, etcdrpc, kv_pb2.Event.PUT


class Transport:
    """gRPC stubs for one etcd cluster, owned by one process."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], rpc_timeout: float) -> None:
        self.grpc, self.rpc, self._put_type = _import()
        self._nodelete = [self.rpc.WatchCreateRequest.NODELETE]
        self.endpoints = list(endpoints)
        self.rpc_timeout = rpc_timeout
        self.pid = os.getpid()
        self.users = 0
        self._lock = threading.Lock()
        self._current = 0
        self._channels: dict[int, Any] = {}
        self._streams: dict[int, WatchStream] = {}
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
        if code == codes.RESOURCE_EXHAUSTED and "larger than max" in (text or ""):
            return Rejected(where)  # beyond gRPC's message limit ("too many requests": retry)
        # UNAVAILABLE (refused, no leader, "request timed out"), DEADLINE_EXCEEDED, a member
        # shutting down (CANCELLED/UNKNOWN/INTERNAL): another try, possibly elsewhere, may work.
        self._failed(index)
        return Transient(where)

    def time_limit(self, deadline: float | None, patience: float = 1.0) -> tuple[float, bool]:
        """One RPC's time limit before ``deadline``, and whether the deadline (not the cap,
        ``rpc_timeout`` times ``patience``) set it.  Raises :class:`OutOfTime` once the
        deadline passed."""
        cap = self.rpc_timeout * patience
        if deadline is None:
            return cap, False
        left = deadline - time.monotonic()
        if left <= 0:
            raise OutOfTime("the operation's time ran out before etcd was asked")
        if left < cap:
            return left, True
        return cap, False

    def call(
        self,
        service: str,
        method: str,
        request: Any,
        deadline: float | None,
        patience: float = 1.0,
    ) -> Any:
        """One unary RPC (``KV.Range``, ``KV.Txn``, ``Lease.LeaseGrant``...) before ``deadline``,
        given at most ``rpc_timeout * patience`` seconds (a retry after an attempt that got no
        answer in time is given longer: a slow link's large reply must be able to arrive).

        Raises :class:`OutOfTime`, :class:`Transient`, :class:`LeaseGone` or :class:`Rejected`.
        """
        limit, by_deadline = self.time_limit(deadline, patience)
        index, channel = self._channel()
        rpc = self._methods.get((index, service, method))
        if rpc is None:  # a stub builds a callable per method: build each once per channel
            rpc = getattr(getattr(self.rpc, f"{service}Stub")(channel), method)
            self._methods[(index, service, method)] = rpc
        try:
            return rpc(request, timeout=limit)
        except self.grpc.RpcError as exc:
            if by_deadline and exc.code() == self.grpc.StatusCode.DEADLINE_EXCEEDED:
                host, port = self.endpoints[index]
                raise OutOfTime(f"{host}:{port}: the operation's time ran out") from exc
            raise self._translate(exc, index) from exc

    # ----------------------------------------------------------------- watches

    def watch(
        self,
        targets: Sequence[tuple[bytes, bytes | None]],
        start_revision: int,
        deliver: Callable[[Any], None],
        deadline: float | None,
    ) -> tuple[list[Callable[[], None]], int]:
        """Watch PUTs on every ``(key, range_end)`` of ``targets`` from ``start_revision``,
        created before ``deadline`` (all requests sent at once, then their answers awaited).

        Returns a ``cancel()`` per watch and the latest revision etcd was at when it created
        one.  ``deliver`` gets lists of put ``KeyValue``s, or an exception: :class:`Compacted`
        (the revision is gone: re-read and watch again) or :class:`Transient` (the stream
        broke).  Raises :class:`OutOfTime` or :class:`Transient` when a watch is not created in
        time (those created are cancelled).
        """
        self.time_limit(deadline)  # OutOfTime before anything is sent
        index, channel = self._channel()
        with self._lock:
            stream = self._streams.get(index)
            if stream is None or stream.broken is not None:
                host, port = self.endpoints[index]
                stream = WatchStream(
                    self.rpc, channel, f"etcd-watch-{host}:{port}",
                    on_error=lambda exc: self._translate(exc, index),
                    compacted=Compacted, put_type=self._put_type,
                )  # fmt: skip
                self._streams[index] = stream
        host, port = self.endpoints[index]
        creations: list[Creation] = []
        try:
            for key, end in targets:
                creations.append(stream.create(key, end, start_revision, deliver, self._nodelete))
        except Transient:
            self._abandon(stream, creations)
            raise
        except Exception as exc:  # the stream broke with another status
            self._abandon(stream, creations)
            raise Transient(f"{host}:{port}: watch stream broken: {exc}") from exc
        created_at = 0
        for creation in creations:
            try:
                limit, by_deadline = self.time_limit(deadline)
            except OutOfTime:
                self._abandon(stream, creations)
                raise
            if not creation.done.acquire(timeout=limit):
                self._abandon(stream, creations)
                if by_deadline:
                    raise OutOfTime(f"{host}:{port}: the operation's time ran out creating a watch")
                self._failed(index)
                raise Transient(f"{host}:{port}: no watch created within {limit:.2f} s")
            if creation.error is not None:
                self._abandon(stream, creations)
                if isinstance(creation.error, Transient):
                    raise creation.error
                raise Transient(f"{host}:{port}: watch not created: {creation.error}")
            created_at = max(created_at, creation.revision)
        return [_canceller(stream, c.watch_id) for c in creations], created_at

    @staticmethod
    def _abandon(stream: WatchStream, creations: list[Creation]) -> None:
        """Cancel every watch of a failed batch, now or once etcd creates it."""
        for creation in creations:
            stream.abandon(creation)

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
            streams, self._streams = list(self._streams.values()), {}
            channels, self._channels = list(self._channels.values()), {}
            self._methods = {}
        for stream in streams:
            stream.close()
        for channel in channels:
            channel.close()


def _canceller(stream: WatchStream, watch_id: int) -> Callable[[], None]:
    return lambda: stream.cancel(watch_id)


class Compacted(Exception):
    """The watch's start revision was compacted away; re-read from ``revision`` and re-watch."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted up to {revision}")
        self.revision = revision


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

"""EtcdStore: the whole Store contract on the etcd v3 API (see ``../shared/ETCD.md``).

Every operation is one etcd request or a retry loop of them, atomic by etcd's own guarantees
(a txn is one raft entry applied at one revision):

* ``add``/``append``: compare-and-swap on the key's ``mod_revision``; ``compare_set``: one txn
  (a nested one for the "absent or empty" case); ``multi_set``: one txn of puts per 128 keys;
* ``get``/``wait``/``multi_get`` and a blocking ``queue_pop``: a snapshot read at revision R,
  then watches from R + 1 (``_watch.py``): never polled, never missed;
* ``num_keys``/``queue_len``: count-only ranges; queues: one key per item, ordered by create
  revision, popped by a delete guarded on its ``mod_revision`` (exactly one consumer wins);
* every key carries the run's lease: when every participant has been gone for its TTL, etcd
  deletes the run.

Retries: an RPC that times out or finds no leader is retried (on the next endpoint) until the
operation's deadline (the store timeout), then :class:`StoreBroken` names the endpoints.  A
retried ``add``/``append``/``queue_pop`` cannot apply twice: its txn also writes a per-thread
marker, and a failed compare whose marker holds this attempt's number means it already applied.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from .._base import Capability, Store
from .._errors import QueueEmpty, StoreBroken, StoreClosed, StoreTimeout, StoreValueError
from .._types import (
    DEFAULT_TIMEOUT,
    KeyLike,
    TimeoutLike,
    ValueLike,
    as_key,
    as_value,
    check_amount,
    deadline_after,
    next_counter,
)
from . import _transport
from ._layout import Layout, parse_endpoints, range_end
from ._transport import LeaseGone, Rejected, Transient
from ._watch import CLOSED, Watch, is_restart
from .reads import Reads

__all__ = ["EtcdStore"]

#: etcd's default ``--max-txn-ops``.
MAX_TXN_OPS = 128


class EtcdStore(Reads, Store):
    """A store in an etcd (v3) cluster, shared by every process that names the same prefix.

    ``endpoints``: ``"host:port[,host:port]"`` or a list of ``host:port`` / ``(host, port)``.
    ``prefix``: the run's root in etcd's key space (keys live under ``<prefix>/k/``).
    ``timeout``: the store timeout (blocking operations, and how long any operation retries an
    unavailable cluster).  ``lease_ttl``: seconds the run's keys outlive its last participant.
    ``rpc_timeout``: the cap on one RPC before it is retried (on another endpoint).

    Raises :class:`StoreBroken` when no member answers within the timeout, and
    :class:`StoreError` naming ``pip install 'storeharness[etcd]'`` when the client is missing.
    """

    capabilities = frozenset(
        {Capability.QUEUES, Capability.LIST_KEYS, Capability.CROSS_PROCESS,
         Capability.ADD_ERRORS, Capability.CAS_WAKES}
    )  # fmt: skip

    def __init__(
        self,
        endpoints: object,
        prefix: str = "storeharness",
        timeout: TimeoutLike = DEFAULT_TIMEOUT,
        *,
        lease_ttl: float = 30.0,
        rpc_timeout: float = 1.0,
    ) -> None:
        super().__init__(timeout)
        if not isinstance(prefix, str) or not prefix.strip("/"):
            raise ValueError(f"EtcdStore prefix must be a non-empty str, got {prefix!r}")
        if not lease_ttl >= 1:
            raise ValueError(
                f"EtcdStore lease_ttl must be >= 1 s (etcd's minimum), got {lease_ttl}"
            )
        if not rpc_timeout > 0:
            raise ValueError(f"EtcdStore rpc_timeout must be > 0 s, got {rpc_timeout}")
        self._endpoints = parse_endpoints(endpoints)
        self._prefix, self._lease_ttl, self._rpc_timeout = prefix, float(lease_ttl), rpc_timeout
        self._layout = Layout(prefix)
        self._t = _transport.shared(self._endpoints, rpc_timeout)
        self.rpc: Any = self._t.rpc
        self._client = uuid.uuid4().hex[:16]
        self._seq = itertools.count(1)
        self._sleepers: set[queue.Queue[Any]] = set()
        self._sleepers_lock = threading.Lock()
        self._closing = threading.Event()
        self._lease_id = 0
        try:
            self._join_lease(deadline_after(self._timeout), time.monotonic())
        except BaseException:
            _transport.release(self._t)
            raise

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return f"EtcdStore({self._t.label!r}, prefix={self._prefix!r}{state})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self._t.label, self._prefix, self._timeout, self._lease_ttl,
                          self._rpc_timeout))  # fmt: skip

    @property
    def endpoints(self) -> str:
        """The cluster's endpoints, ``host:port[,host:port]``."""
        return self._t.label

    @property
    def prefix(self) -> str:
        return self._prefix

    # ------------------------------------------------------------------ requests

    def _put(self, key: bytes, value: bytes) -> Any:
        r = self.rpc
        return r.RequestOp(request_put=r.PutRequest(key=key, value=value, lease=self._lease_id))

    def _range(self, key: bytes, end: bytes | None = None, **kw: Any) -> Any:
        r = self.rpc
        return r.RequestOp(request_range=r.RangeRequest(key=key, range_end=end or b"", **kw))

    def _compare(self, key: bytes, target: str, result: str = "EQUAL", **value: Any) -> Any:
        c = self.rpc.Compare
        return c(key=key, target=getattr(c, target), result=getattr(c, result), **value)

    def _check_open(self, op: str) -> None:
        super()._check_open(op)
        if self._t.pid != os.getpid():
            # A handle inherited through fork: gRPC channels do not survive it, so this process
            # opens its own (and keeps the run lease alive from here too).
            self._t = _transport.shared(self._endpoints, self._rpc_timeout)
            self._sleepers = set()
            self._sleepers_lock = threading.Lock()
            if self._lease_id:
                self._t.keep(self._lease_id, self._lease_ttl)

    def _marker(self) -> bytes:
        return self._layout.ops + f"{self._client}-{threading.get_ident()}".encode()

    def _next_seq(self) -> bytes:
        """This handle's next operation number, zero-padded so that bytes compare as numbers."""
        return f"{next(self._seq):020d}".encode()

    def _not_yet(self, marker: bytes, seq: bytes) -> Any:
        """A compare that holds only while operation ``seq`` has not applied: a retry after a
        lost reply cannot apply it again, even once what it wrote was deleted or popped.  (etcd
        fails a value compare on a missing key, so the marker must exist: :meth:`_new_marker`.)"""
        return self._compare(marker, "VALUE", "LESS", value=seq)

    def _new_marker(
        self, op: str, keys: Sequence[str], marker: bytes, deadline: float | None, start: float
    ) -> None:
        """Create this thread's marker (it vanishes with the run's lease) if it is missing."""
        self._txn(
            op, keys,
            lambda: self.rpc.TxnRequest(
                compare=[self._compare(marker, "CREATE", create_revision=0)],
                success=[self._put(marker, b"0" * 20)]),
            deadline, start,
        )  # fmt: skip

    def _call(
        self,
        op: str,
        keys: Sequence[str],
        method: str,
        build: Callable[[], Any],
        deadline: float | None,
        start: float,
        service: str = "KV",
    ) -> Any:
        """Send ``build()`` until it answers or ``deadline`` passes.

        Then :class:`StoreBroken` if an attempt showed the cluster failing (refused, no leader,
        no answer within ``rpc_timeout``), else :class:`StoreTimeout`: the operation only ran out
        of its own time (a short timeout, or a process stopped past it).  ``build`` runs per
        attempt, so a re-granted lease is named by the retry.
        """
        attempt = 0
        last: Exception | None = None  # the last failure that shows the cluster failing
        while True:
            self._check_open(op)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise self._unavailable(op, keys, start, last)
            limit = self._rpc_timeout if left is None else min(left, self._rpc_timeout)
            sent = time.monotonic()
            try:
                return self._t.call(service, method, build(), limit)
            except Transient as exc:
                cut_by_deadline = (
                    limit < self._rpc_timeout and time.monotonic() - sent >= 0.9 * limit
                )
                if not cut_by_deadline:
                    last = exc
            except LeaseGone as exc:
                last = exc
                self._renew_lease(deadline, start)
                continue
            except Rejected as exc:
                raise StoreValueError(
                    f"{op}({', '.join(map(repr, keys))}) refused by etcd at {self._t.label}: {exc}",
                    keys=tuple(keys),
                ) from exc
            # An endpoint that refused at once: back off a little before the next one.
            attempt += 1
            self._closing.wait(min(0.01 * 2**attempt, 0.2))

    def _unavailable(
        self, op: str, keys: Sequence[str], start: float, last: Exception | None
    ) -> StoreBroken | StoreTimeout:
        """The error for an operation whose deadline passed while it asked etcd.

        Nothing failed (``last`` is ``None``: the time ran out before etcd was asked, a short
        timeout spent on earlier steps): a :class:`StoreTimeout` with the store's limit (a
        ``wait(keys, timeout)`` re-states its own).  Attempts failed: :class:`StoreBroken`
        naming the endpoints.
        """
        elapsed = time.monotonic() - start
        if last is None:
            return StoreTimeout(op, keys, elapsed, self._timeout, repr(self),
                                detail="the deadline passed before etcd answered")  # fmt: skip
        return StoreBroken(
            f"{op}({', '.join(map(repr, keys))}) on etcd at {self._t.label}: no answer in "
            f"{elapsed:.2f} s (last: {last}); is the cluster running, with a "
            "quorum of its members?",
            op=op,
            endpoints=self._t.label,
        )

    def _txn(
        self, op: str, keys: Sequence[str], build: Callable[[], Any], deadline: float | None,
        start: float,
    ) -> Any:  # fmt: skip
        return self._call(op, keys, "Txn", build, deadline, start)

    def _op_deadline(self) -> tuple[float | None, float]:
        return deadline_after(self._timeout), time.monotonic()

    # ------------------------------------------------------------------ the run lease

    def _join_lease(self, deadline: float | None, start: float) -> None:
        """Use the run's lease (granting it if there is none, or it expired) and keep it alive."""
        r, lease_key = self.rpc, self._layout.lease
        found = self._call("open", [], "Range", lambda: r.RangeRequest(key=lease_key),
                           deadline, start)  # fmt: skip
        old = found.kvs[0].value if found.kvs else None
        if old is not None:
            alive = self._call("open", [], "LeaseTimeToLive",
                               lambda: r.LeaseTimeToLiveRequest(ID=int(old)),
                               deadline, start, service="Lease")  # fmt: skip
            if alive.TTL >= 0:  # whole seconds left (0 < 1 s); -1: expired or unknown
                self._adopt(int(old))
                return
        ttl = max(1, round(self._lease_ttl))
        granted = self._call("open", [], "LeaseGrant", lambda: r.LeaseGrantRequest(TTL=ttl),
                             deadline, start, service="Lease")  # fmt: skip
        mine = granted.ID
        guard = (
            self._compare(lease_key, "CREATE", create_revision=0)
            if old is None
            else self._compare(lease_key, "VALUE", value=old)
        )
        put = r.RequestOp(
            request_put=r.PutRequest(key=lease_key, value=str(mine).encode(), lease=mine)
        )
        won = self._txn(
            "open", [],
            lambda: r.TxnRequest(compare=[guard], success=[put],
                                 failure=[self._range(lease_key)]),
            deadline, start,
        )  # fmt: skip
        if won.succeeded:
            self._adopt(mine)
            return
        kvs = won.responses[0].response_range.kvs
        self._call("open", [], "LeaseRevoke", lambda: r.LeaseRevokeRequest(ID=mine),
                   deadline, start, service="Lease")  # fmt: skip
        if not kvs:  # the winner's lease expired already: start over
            self._join_lease(deadline, start)
            return
        self._adopt(int(kvs[0].value))

    def _adopt(self, lease_id: int) -> None:
        if self._lease_id:
            self._t.drop(self._lease_id)
        self._lease_id = lease_id
        self._t.keep(lease_id, self._lease_ttl)

    def _renew_lease(self, deadline: float | None, start: float) -> None:
        self._join_lease(deadline, start)

    # ------------------------------------------------------------------ writes

    def set(self, key: KeyLike, value: ValueLike) -> None:
        k = key if type(key) is str else as_key(key)
        v = value if type(value) is bytes else as_value(value)
        self._check_open("set")
        stored = self._layout.key(k)
        deadline, start = self._op_deadline()
        self._call("set", [k], "Put", lambda: self._put(stored, v).request_put, deadline, start)

    def multi_set(self, keys: Sequence[KeyLike], values: Sequence[ValueLike]) -> None:
        """Set every key; all-or-nothing per 128 keys (etcd's txn limit), one revision each."""
        names, data = self._pairs(keys, values)
        self._check_open("multi_set")
        latest = dict(zip(names, data, strict=True))  # etcd rejects a key twice in one txn
        items = list(latest.items())
        deadline, start = self._op_deadline()
        for i in range(0, len(items), MAX_TXN_OPS):
            chunk = items[i : i + MAX_TXN_OPS]
            self._txn(
                "multi_set", [k for k, _ in chunk],
                lambda c=chunk: self.rpc.TxnRequest(  # type: ignore[misc]
                    success=[self._put(self._layout.key(k), v) for k, v in c]),
                deadline, start,
            )  # fmt: skip

    def _swap(self, op: str, k: str, update: Callable[[bytes | None], bytes]) -> bytes:
        """Replace ``k``'s value by ``update(old)`` atomically; returns the value written."""
        self._check_open(op)
        key, marker = self._layout.key(k), self._marker()
        deadline, start = self._op_deadline()
        got = self._call(op, [k], "Range", lambda: self.rpc.RangeRequest(key=key), deadline,
                         start)  # fmt: skip
        kv = got.kvs[0] if got.kvs else None
        while True:
            new = update(None if kv is None else kv.value)
            seen = 0 if kv is None else kv.mod_revision
            seq = self._next_seq()
            resp = self._txn(
                op, [k],
                lambda seen=seen, new=new, seq=seq: self.rpc.TxnRequest(  # type: ignore[misc]
                    compare=[self._compare(key, "MOD", mod_revision=seen),
                             self._not_yet(marker, seq)],
                    success=[self._put(key, new), self._put(marker, seq)],
                    failure=[self._range(key), self._range(marker)]),
                deadline, start,
            )  # fmt: skip
            if resp.succeeded:
                return new
            marks = resp.responses[1].response_range.kvs
            if marks and marks[0].value == seq:  # a retried attempt had applied
                return new
            if not marks:
                self._new_marker(op, [k], marker, deadline, start)
            kvs = resp.responses[0].response_range.kvs
            kv = kvs[0] if kvs else None

    def add(self, key: KeyLike, amount: int) -> int:
        k = key if type(key) is str else as_key(key)
        check_amount(amount, k)
        return int(self._swap("add", k, lambda old: str(next_counter(old, amount, k)).encode()))

    def append(self, key: KeyLike, value: ValueLike) -> None:
        k = as_key(key)
        tail = as_value(value)
        self._swap("append", k, lambda old: (old or b"") + tail)

    def has_extended_api(self) -> bool:
        return True

    def compare_set(self, key: KeyLike, expected: ValueLike, desired: ValueLike) -> bytes:
        k = as_key(key)
        exp = as_value(expected, "expected")
        new = as_value(desired, "desired")
        self._check_open("compare_set")
        stored = self._layout.key(k)
        r = self.rpc

        def build() -> Any:
            if exp:  # a VALUE compare on an absent key is false: nothing written, as torch
                return r.TxnRequest(compare=[self._compare(stored, "VALUE", value=exp)],
                                    success=[self._put(stored, new)],
                                    failure=[self._range(stored)])  # fmt: skip
            # "absent or empty": create, else (nested) overwrite an empty value, else read
            inner = r.TxnRequest(
                compare=[self._compare(stored, "VALUE", value=b"")],
                success=[self._put(stored, new)],
                failure=[self._range(stored)],
            )
            return r.TxnRequest(compare=[self._compare(stored, "CREATE", create_revision=0)],
                                success=[self._put(stored, new)],
                                failure=[r.RequestOp(request_txn=inner)])  # fmt: skip

        deadline, start = self._op_deadline()
        # Retry-safe: a retry after a lost success sees ``desired`` and returns it.
        resp = self._txn("compare_set", [k], build, deadline, start)
        if resp.succeeded:
            return new
        if not exp:
            inner_resp = resp.responses[0].response_txn
            if inner_resp.succeeded:
                return new
            resp = inner_resp
        kvs = resp.responses[0].response_range.kvs
        return kvs[0].value if kvs else exp

    def delete_key(self, key: KeyLike) -> bool:
        """Remove ``key``'s value; a retry after a lost reply answers ``False`` (documented)."""
        k = as_key(key)
        self._check_open("delete_key")
        stored = self._layout.key(k)
        deadline, start = self._op_deadline()
        resp = self._call("delete_key", [k], "DeleteRange",
                          lambda: self.rpc.DeleteRangeRequest(key=stored),
                          deadline, start)  # fmt: skip
        return bool(resp.deleted > 0)

    # ------------------------------------------------------------------ queues

    def queue_push(self, key: KeyLike, value: ValueLike) -> None:
        k = as_key(key)
        v = as_value(value)
        self._check_open("queue_push")
        # A fresh item key, created only if absent: a retry cannot push it twice, and producers
        # never contend (no shared tail counter).  FIFO order is the create revision.
        # The marker's compare keeps a retry after a lost reply from pushing it again once a
        # consumer has popped it (the item's absence alone would let it through).
        item = self._layout.queue(k) + f"{time.time_ns():020d}-{uuid.uuid4().hex}".encode()
        marker, seq = self._marker(), self._next_seq()
        deadline, start = self._op_deadline()
        while True:
            resp = self._txn(
                "queue_push", [k],
                lambda: self.rpc.TxnRequest(
                    compare=[self._compare(item, "CREATE", create_revision=0),
                             self._not_yet(marker, seq)],
                    success=[self._put(item, v), self._put(marker, seq)],
                    failure=[self._range(marker)]),
                deadline, start,
            )  # fmt: skip
            marks = [] if resp.succeeded else resp.responses[0].response_range.kvs
            if resp.succeeded or (marks and marks[0].value == seq):
                return
            if marks:  # the marker is older and the fresh item key exists: cannot happen
                raise StoreBroken(f"queue_push({k!r}): item {item!r} exists but was not ours",
                                  op="queue_push", endpoints=self._t.label)  # fmt: skip
            self._new_marker("queue_push", [k], marker, deadline, start)

    def queue_len(self, key: KeyLike) -> int:
        k = as_key(key)
        self._check_open("queue_len")
        prefix = self._layout.queue(k)
        deadline, start = self._op_deadline()
        resp = self._call("queue_len", [k], "Range",
                          lambda: self.rpc.RangeRequest(key=prefix, range_end=range_end(prefix),
                                                        count_only=True),
                          deadline, start)  # fmt: skip
        return int(resp.count)

    def queue_pop(self, key: KeyLike, block: bool = True) -> bytes:
        k = as_key(key)
        self._check_open("queue_pop")
        prefix = self._layout.queue(k)
        end = range_end(prefix)
        limit = self._timeout
        deadline, start = self._op_deadline()
        r = self.rpc
        oldest = r.RangeRequest(key=prefix, range_end=end, limit=1,
                                sort_order=r.RangeRequest.ASCEND,
                                sort_target=r.RangeRequest.CREATE)  # fmt: skip
        marker = self._marker()
        watch: Watch | None = None
        try:
            while True:
                got = self._call("queue_pop", [k], "Range", lambda: oldest, deadline, start)
                if got.kvs:
                    item = got.kvs[0]
                    seq = self._next_seq()
                    resp = self._txn(
                        "queue_pop", [k],
                        lambda i=item, s=seq: r.TxnRequest(  # type: ignore[misc]
                            compare=[self._compare(i.key, "MOD", mod_revision=i.mod_revision)],
                            success=[r.RequestOp(request_delete_range=r.DeleteRangeRequest(
                                key=i.key)), self._put(marker, s)],
                            failure=[self._range(marker)]),
                        deadline, start,
                    )  # fmt: skip
                    marks = [] if resp.succeeded else resp.responses[0].response_range.kvs
                    if resp.succeeded or (marks and marks[0].value == seq):
                        return bytes(item.value)
                    continue  # another consumer took it: the next oldest
                if not block:
                    raise QueueEmpty(k, repr(self))
                if watch is None:
                    watch = Watch(self._t, self._sleepers, self._sleepers_lock)
                    self._start_watch(watch, "queue_pop", [k], [(prefix, end)],
                                      got.header.revision + 1, deadline, start)  # fmt: skip
                    # Look once more: a push that raced the watch's creation is served by
                    # etcd's 100 ms "unsynced" sweep (see reads.py), the range answers now.
                    continue
                item_or_none = watch.next(deadline)
                if item_or_none is None:
                    raise StoreTimeout("queue_pop", [k], time.monotonic() - start, limit,
                                       repr(self))  # fmt: skip
                if item_or_none is CLOSED:
                    raise StoreClosed("queue_pop", repr(self))
                if is_restart(item_or_none):  # compacted or broken: look again, watch anew
                    watch.close()
                    watch = None
        finally:
            if watch is not None:
                watch.close()

    def _start_watch(
        self, watch: Watch, op: str, keys: Sequence[str], targets: list[tuple[bytes, bytes | None]],
        revision: int, deadline: float | None, start: float,
    ) -> None:  # fmt: skip
        """Create the watches, retrying a cluster that does not answer until ``deadline``."""
        last: Exception | None = None
        while True:
            self._check_open(op)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise self._unavailable(op, keys, start, last)
            try:
                watch.start(targets, revision, self._rpc_timeout if left is None else left)
                return
            except Transient as exc:
                if deadline is None or time.monotonic() < deadline:
                    last = exc  # failed within the time it had: the cluster is failing
                self._closing.wait(0.05)

    # ------------------------------------------------------------------ lifecycle

    def clone(self) -> EtcdStore:
        self._check_open("clone")
        return EtcdStore(self._t.label, self._prefix, self._timeout, lease_ttl=self._lease_ttl,
                         rpc_timeout=self._rpc_timeout)  # fmt: skip

    def close(self) -> None:
        """Release this handle and wake its blocked calls (``StoreClosed``).

        The run's keys stay until the lease expires after the last participant closes.
        """
        if self._closed:
            return
        super().close()
        if self._t.pid != os.getpid():
            return  # inherited through fork and never used here: the parent owns it
        self._closing.set()
        with self._sleepers_lock:
            for sleeper in self._sleepers:
                sleeper.put(CLOSED)
        if self._lease_id:
            self._t.drop(self._lease_id)
        _transport.release(self._t)

    def destroy(self) -> None:
        """Delete every key of this run (every participant's) and revoke its lease, then close.

        For whoever owns the run (a test's teardown); the others' later calls find no keys.
        """
        self._check_open("destroy")
        deadline, start = self._op_deadline()
        root = self._layout.root
        self._call("destroy", [], "DeleteRange",
                   lambda: self.rpc.DeleteRangeRequest(key=root, range_end=range_end(root)),
                   deadline, start)  # fmt: skip
        lease = self._lease_id
        if lease:
            self._call("destroy", [], "LeaseRevoke", lambda: self.rpc.LeaseRevokeRequest(ID=lease),
                       deadline, start, service="Lease")  # fmt: skip
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed and hasattr(self, "_t"):
                self.close()
        except Exception:  # interpreter shutdown
            pass


def _reopen(
    endpoints: str, prefix: str, timeout: float, lease_ttl: float, rpc_timeout: float
) -> EtcdStore:
    return EtcdStore(endpoints, prefix, timeout, lease_ttl=lease_ttl, rpc_timeout=rpc_timeout)

"""EtcdStore: the whole Store contract on the etcd v3 API (see ``../shared/ETCD.md``).

Every operation is one etcd request or a retry loop of them, atomic by etcd's own guarantees
(a txn is one raft entry applied at one revision):

* ``add``/``append``: compare-and-swap on the key's ``mod_revision``; ``compare_set``: one txn
  (a nested one for the "absent or empty" case); ``multi_set``: one txn of puts per 127 keys;
* ``get``/``wait``/``multi_get`` and a blocking ``queue_pop``: a snapshot read at revision R,
  then watches from R + 1 (``_watch.py``): never polled, never missed;
* ``num_keys``/``queue_len``: count-only ranges; queues: one key per item, ordered by create
  revision, popped by a delete guarded on its ``mod_revision`` (exactly one consumer wins);
* every key carries the run's lease: when every participant has been gone for its TTL, etcd
  deletes the run.

Retries: an RPC that fails (refused, no leader, no answer within ``rpc_timeout``) is retried, on
the next endpoint, until the operation's deadline, computed once when it starts (``_op.py``) and
passed down to every RPC; then :class:`StoreBroken` names the endpoints, or, when no attempt
showed the cluster failing, :class:`StoreTimeout` names the operation's own limit.  A resent
write cannot apply twice (``writes.py``, :meth:`EtcdStore._once`).
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from .._base import Capability, Store
from .._errors import StoreBroken, StoreValueError
from .._types import DEFAULT_TIMEOUT, TimeoutLike
from . import _transport
from ._layout import Layout, parse_endpoints, range_end
from ._op import Op
from ._transport import LeaseGone, OutOfTime, Rejected, Transient
from ._watch import CLOSED, Watch
from .queues import Queues
from .reads import Reads
from .writes import Writes

__all__ = ["EtcdStore"]

#: The longest one retried RPC may wait, in ``rpc_timeout``s (doubling from 1 per attempt).
_MAX_PATIENCE = 32.0


class EtcdStore(Writes, Queues, Reads, Store):
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
        self._sleepers: set[queue.SimpleQueue[Any]] = set()
        self._sleepers_lock = threading.Lock()
        self._closing = threading.Event()
        self._lease_id = 0
        try:
            self._join_lease(Op("open", [], self._timeout))
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
            # opens its own (and keeps the run lease alive from here too), and writes under a
            # client id of its own: the parent's threads continue the same op numbers.
            self._t = _transport.shared(self._endpoints, self._rpc_timeout)
            self._client = uuid.uuid4().hex[:16]
            self._sleepers = set()
            self._sleepers_lock = threading.Lock()
            if self._lease_id:
                self._t.keep(self._lease_id, self._lease_ttl)

    def _marker(self) -> bytes:
        return self._layout.ops + f"{self._client}-{threading.get_ident()}".encode()

    def _next_seq(self) -> bytes:
        """This handle's next operation number, zero-padded so that bytes compare as numbers."""
        return f"{next(self._seq):020d}".encode()

    def _op(self, name: str, keys: Sequence[str], time_limit: float | None = None) -> Op:
        """Start timing operation ``name`` (its limit: ``time_limit``, else the store's)."""
        self._check_open(name)
        return Op(name, keys, self._timeout if time_limit is None else time_limit)

    def _call(self, op: Op, method: str, build: Callable[[], Any], service: str = "KV") -> Any:
        """Send ``build()`` until it answers or ``op``'s deadline passes.

        The transport bounds every attempt by what is left of the deadline and says when the
        operation's own time ran out (:meth:`Op.out_of_time`: a :class:`StoreTimeout`, or
        :class:`StoreBroken` if an attempt showed the cluster failing).  ``build`` runs per
        attempt, so a re-granted lease is named by the retry.
        """
        attempt = 0
        patience = 1.0  # each attempt's cap, in rpc_timeouts
        while True:
            self._check_open(op.name)
            try:
                return self._t.call(service, method, build(), op.deadline, patience)
            except OutOfTime:
                raise op.out_of_time(repr(self), self._t.label) from None
            except Transient as exc:  # refused, no leader, no answer within rpc_timeout
                op.failing = exc
                # The next attempt may wait twice as long, whatever this one's failure was (a
                # refusal ends at once, so a longer cap costs it nothing): a member that hung
                # costs little more, and a reply that needs longer than rpc_timeout to cross a
                # slow link (1 MiB at 8 Mbit/s: ~1.05 s) is not cut and resent until the op
                # times out.  The op's deadline bounds every attempt either way.
                patience = min(patience * 2, _MAX_PATIENCE)
            except LeaseGone:
                self._join_lease(op)
                continue
            except Rejected as exc:
                raise StoreValueError(
                    f"{op.name}({', '.join(map(repr, op.keys))}) refused by etcd at "
                    f"{self._t.label}: {exc}",
                    keys=tuple(op.keys),
                ) from exc
            # An endpoint that refused at once: back off a little before the next one (the
            # next attempt says whether the deadline passed meanwhile).
            attempt += 1
            self._closing.wait(min(0.01 * 2**attempt, 0.2))

    def _txn(self, op: Op, build: Callable[[], Any]) -> Any:
        return self._call(op, "Txn", build)

    def _once(self, op: Op, body: Callable[[bytes], Any]) -> Any | None:
        """Run the txn ``body(seq)`` at most once, however often a lost reply makes us resend it.

        ``body`` must put this thread's marker to ``seq`` (:meth:`_mark`) in every branch that
        changes something.  etcd runs ``body`` only while the marker holds an older number, so
        a resent request that finds ``seq`` there runs nothing.  Returns ``body``'s response
        (the whole txn's for a body without compares, which is inlined), or ``None`` when an
        earlier attempt of this call applied it (and changed what it changes: the caller knows
        what that is).  A thread's first write creates its marker first (etcd's value compare
        fails on a missing key).
        """
        r, marker, seq = self.rpc, self._marker(), self._next_seq()

        def build() -> Any:
            txn = body(seq)
            # A body without compares of its own (set, multi_set, queue_push) is inlined: a
            # nested txn costs etcd more (a set 15-20 % slower, as measured once while this was
            # written; benchmarks/etcd_store.py measures only whole set+get).
            run = list(txn.success) if not txn.compare else [r.RequestOp(request_txn=txn)]
            return r.TxnRequest(compare=[self._compare(marker, "VALUE", "LESS", value=seq)],
                                success=run, failure=[self._range(marker)])  # fmt: skip

        while True:
            resp = self._txn(op, build)
            if resp.succeeded:
                nested = resp.responses[0].WhichOneof("response") == "response_txn"
                return resp.responses[0].response_txn if nested else resp
            marks = resp.responses[0].response_range.kvs
            if marks and marks[0].value == seq:  # an earlier attempt applied
                return None
            if marks:  # a newer number: another process writes under this handle's client id
                raise StoreBroken(
                    f"{op.name}({', '.join(map(repr, op.keys))}) on etcd at {self._t.label}: "
                    f"marker {marker!r} holds {marks[0].value!r}, newer than this call's {seq!r}",
                    op=op.name, endpoints=self._t.label,
                )  # fmt: skip
            self._txn(op, lambda: r.TxnRequest(
                compare=[self._compare(marker, "CREATE", create_revision=0)],
                success=[self._put(marker, b"0" * 20)]))  # fmt: skip

    def _mark(self, seq: bytes) -> Any:
        """The put of this thread's marker inside a :meth:`_once` body."""
        return self._put(self._marker(), seq)

    def _start_watch(
        self, watch: Watch, op: Op, targets: list[tuple[bytes, bytes | None]], revision: int
    ) -> bool:
        """Create the watches (``Watch.start``), retrying a cluster that fails until ``op``'s
        deadline; returns whether they were created before anything was written after
        ``revision - 1``."""
        while True:
            self._check_open(op.name)
            try:
                return watch.start(targets, revision, op.deadline)
            except OutOfTime:
                raise op.out_of_time(repr(self), self._t.label) from None
            except Transient as exc:
                op.failing = exc
                self._closing.wait(0.05)

    # ------------------------------------------------------------------ the run lease

    def _join_lease(self, op: Op) -> None:
        """Use the run's lease (granting it if there is none, or it expired) and keep it alive."""
        r, lease_key = self.rpc, self._layout.lease
        found = self._call(op, "Range", lambda: r.RangeRequest(key=lease_key))
        old = found.kvs[0].value if found.kvs else None
        if old is not None:
            alive = self._call(op, "LeaseTimeToLive", lambda: r.LeaseTimeToLiveRequest(ID=int(old)),
                               service="Lease")  # fmt: skip
            if alive.TTL >= 0:  # whole seconds left (0 < 1 s); -1: expired or unknown
                self._adopt(int(old))
                return
        ttl = max(1, round(self._lease_ttl))
        granted = self._call(op, "LeaseGrant", lambda: r.LeaseGrantRequest(TTL=ttl),
                             service="Lease")  # fmt: skip
        mine = granted.ID
        guard = (
            self._compare(lease_key, "CREATE", create_revision=0)
            if old is None
            else self._compare(lease_key, "VALUE", value=old)
        )
        put = r.RequestOp(
            request_put=r.PutRequest(key=lease_key, value=str(mine).encode(), lease=mine)
        )
        won = self._txn(op, lambda: r.TxnRequest(compare=[guard], success=[put],
                                                 failure=[self._range(lease_key)]))  # fmt: skip
        if won.succeeded:
            self._adopt(mine)
            return
        kvs = won.responses[0].response_range.kvs
        self._call(op, "LeaseRevoke", lambda: r.LeaseRevokeRequest(ID=mine), service="Lease")
        if not kvs:  # the winner's lease expired already: start over
            self._join_lease(op)
            return
        self._adopt(int(kvs[0].value))

    def _adopt(self, lease_id: int) -> None:
        if self._lease_id:
            self._t.drop(self._lease_id)
        self._lease_id = lease_id
        self._t.keep(lease_id, self._lease_ttl)

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
        op = self._op("destroy", [])
        root = self._layout.root
        everything = self.rpc.DeleteRangeRequest(key=root, range_end=range_end(root))
        self._call(op, "DeleteRange", lambda: everything)
        lease = self._lease_id
        if lease:
            self._call(op, "LeaseRevoke", lambda: self.rpc.LeaseRevokeRequest(ID=lease),
                       service="Lease")  # fmt: skip
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

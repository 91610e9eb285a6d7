"""EtcdStore's reads: snapshot reads in one txn, and blocking reads that watch from its revision.

``check``/``wait`` count a key that holds a value or names a non-empty queue; ``get`` and
``multi_get`` need values.  A read of many keys is one txn (one revision); past etcd's 128
operations per txn, the later chunks read at the first chunk's revision, so it stays one
snapshot.  A key counts for ``wait`` once it has existed at some moment during the wait: a put
event on it is enough, and a ``get`` returns the value that event carried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import StoreClosed, StoreTimeout
from .._types import KeyLike, TimeoutLike, as_key, as_keys, as_seconds, deadline_after
from ._layout import Layout, range_end
from ._watch import CLOSED, Watch, is_restart

if TYPE_CHECKING:
    import queue

    from ._transport import Transport

__all__ = ["Reads"]

#: Blocked calls on more keys than this watch whole key ranges instead of key by key.
PER_KEY_WATCHES = 8
#: Range operations per txn (etcd's default ``--max-txn-ops``).
MAX_TXN_OPS = 128


class Reads:
    """The read operations of :class:`EtcdStore` (a mixin over its request helpers)."""

    if TYPE_CHECKING:
        _layout: Layout
        _t: Transport
        _timeout: float
        _sleepers: set[queue.Queue[Any]]
        _sleepers_lock: threading.Lock
        rpc: Any

        def _check_open(self, op: str) -> None: ...
        def _range(self, key: bytes, end: bytes | None = None, **kw: Any) -> Any: ...
        def _call(
            self, op: str, keys: Sequence[str], method: str, build: Callable[[], Any],
            deadline: float | None, start: float, service: str = "KV",
        ) -> Any: ...  # fmt: skip
        def _start_watch(
            self, watch: Watch, op: str, keys: Sequence[str],
            targets: list[tuple[bytes, bytes | None]], revision: int, deadline: float | None,
            start: float,
        ) -> None: ...  # fmt: skip

    # ------------------------------------------------------------------ snapshots

    def _snapshot(
        self, op: str, ops: list[Any], keys: Sequence[str], deadline: float | None, start: float
    ) -> tuple[int, list[Any]]:
        """Run range ``ops`` at one revision; returns it and the range responses in order."""
        out: list[Any] = []
        revision = 0
        for i in range(0, max(len(ops), 1), MAX_TXN_OPS):
            chunk = ops[i : i + MAX_TXN_OPS]
            if revision:
                for each in chunk:
                    each.request_range.revision = revision
            resp = self._call(op, keys, "Txn", lambda c=chunk: self.rpc.TxnRequest(success=c),  # type: ignore[misc]
                              deadline, start)  # fmt: skip
            revision = revision or resp.header.revision
            out.extend(r.response_range for r in resp.responses)
        return revision, out

    def _present(
        self, op: str, names: list[str], deadline: float | None, start: float
    ) -> tuple[int, list[str]]:
        """The revision and which of ``names`` do not exist (no value, no queued item)."""
        lay = self._layout
        ops: list[Any] = []
        for k in names:
            q = lay.queue(k)
            ops.append(self._range(lay.key(k), count_only=True))
            ops.append(self._range(q, range_end(q), count_only=True, limit=1))
        rev, got = self._snapshot(op, ops, names, deadline, start)
        missing = [k for i, k in enumerate(names) if not (got[2 * i].count or got[2 * i + 1].count)]
        return rev, missing

    def _values(
        self, op: str, names: list[str], deadline: float | None, start: float
    ) -> tuple[int, list[bytes | None]]:
        if len(names) == 1:  # one range is a snapshot already, and cheaper than a txn
            stored = self._layout.key(names[0])
            resp = self._call(op, names, "Range", lambda: self.rpc.RangeRequest(key=stored),
                              deadline, start)  # fmt: skip
            return resp.header.revision, [bytes(resp.kvs[0].value) if resp.kvs else None]
        ops = [self._range(self._layout.key(k)) for k in names]
        rev, got = self._snapshot(op, ops, names, deadline, start)
        return rev, [bytes(r.kvs[0].value) if r.kvs else None for r in got]

    def _targets(self, names: list[str], queues: bool) -> list[tuple[bytes, bytes | None]]:
        lay = self._layout
        if len(names) > PER_KEY_WATCHES:
            whole: list[tuple[bytes, bytes | None]] = [(lay.data, lay.data_end)]
            return [*whole, (lay.queues, range_end(lay.queues))] if queues else whole
        out: list[tuple[bytes, bytes | None]] = [(lay.key(k), None) for k in names]
        if queues:
            out += [(lay.queue(k), range_end(lay.queue(k))) for k in names]
        return out

    def _named(self, key: bytes) -> str | None:
        lay = self._layout
        if key.startswith(lay.data):
            return lay.name(key)
        if key.startswith(lay.queues):
            return lay.queue_name(key)
        return None

    # ------------------------------------------------------------------ blocking

    def _block(
        self,
        op: str,
        names: list[str],
        limit: float,
        reread: Callable[[float | None, float], tuple[int, dict[str, bytes | None]]],
        queues: bool,
    ) -> dict[str, bytes | None]:
        """Until every key in ``names`` was seen: ``reread`` gives the revision and the keys
        still missing → their values (``None`` for a queue-only key); events fill them in."""
        deadline, start = deadline_after(limit), time.monotonic()
        try:
            return self._block_until(op, names, limit, reread, queues, deadline, start)
        except StoreTimeout as exc:
            if exc.timeout == limit:
                raise
            # Out of time before etcd answered: say the limit this call was given.
            detail = getattr(exc, "detail", "")
            raise StoreTimeout(op, exc.keys, exc.elapsed, limit, exc.store, detail) from None

    def _block_until(
        self,
        op: str,
        names: list[str],
        limit: float,
        reread: Callable[[float | None, float], tuple[int, dict[str, bytes | None]]],
        queues: bool,
        deadline: float | None,
        start: float,
    ) -> dict[str, bytes | None]:
        rev, found = reread(deadline, start)
        missing = [k for k in names if k not in found]
        if not missing:
            return found
        watch = Watch(self._t, self._sleepers, self._sleepers_lock)
        try:
            self._start_watch(watch, op, names, self._targets(missing, queues), rev + 1,
                              deadline, start)  # fmt: skip
            # etcd serves a watch whose start revision was already written when it was created
            # from its "unsynced" group, every 100 ms: read once more, so a write that raced the
            # watch's creation wakes us now, not at the next sweep.
            found.update(reread(deadline, start)[1])
            missing = [k for k in names if k not in found]
            while missing:
                item = watch.next(deadline)
                if item is None:
                    raise StoreTimeout(op, missing, time.monotonic() - start, limit, repr(self))
                if item is CLOSED:
                    raise StoreClosed(op, repr(self))
                if is_restart(item):  # compacted or a broken stream: re-read, watch again
                    watch.stop()
                    rev, again = reread(deadline, start)
                    found.update(again)
                    missing = [k for k in names if k not in found]
                    if missing:
                        self._start_watch(watch, op, names, self._targets(missing, queues),
                                          rev + 1, deadline, start)  # fmt: skip
                    continue
                for event in item:
                    name = self._named(bytes(event.key))
                    if name is None or name in found:
                        continue
                    is_data = bytes(event.key).startswith(self._layout.data)
                    if is_data or queues:
                        found[name] = bytes(event.value) if is_data else None
                missing = [k for k in names if k not in found]
            return found
        finally:
            watch.close()

    # ------------------------------------------------------------------ operations

    def get(self, key: KeyLike) -> bytes:
        k = key if type(key) is str else as_key(key)
        self._check_open("get")

        def reread(deadline: float | None, start: float) -> tuple[int, dict[str, bytes | None]]:
            rev, values = self._values("get", [k], deadline, start)
            return rev, ({} if values[0] is None else {k: values[0]})

        value = self._block("get", [k], self._timeout, reread, queues=False)[k]
        assert value is not None
        return value

    def multi_get(self, keys: Sequence[KeyLike]) -> list[bytes]:
        names = as_keys(keys)
        self._check_open("multi_get")
        if not names:
            return []
        unique = list(dict.fromkeys(names))

        def reread(deadline: float | None, start: float) -> tuple[int, dict[str, bytes | None]]:
            rev, values = self._values("multi_get", unique, deadline, start)
            return rev, {k: v for k, v in zip(unique, values, strict=True) if v is not None}

        found = self._block("multi_get", unique, self._timeout, reread, queues=False)
        return [found[k] or b"" for k in names]

    def wait(self, keys: Sequence[KeyLike], timeout: TimeoutLike | None = None) -> None:
        names = as_keys(keys)
        self._check_open("wait")
        limit = self._timeout if timeout is None else as_seconds(timeout)
        if not names:
            return
        unique = list(dict.fromkeys(names))

        def reread(deadline: float | None, start: float) -> tuple[int, dict[str, bytes | None]]:
            rev, missing = self._present("wait", unique, deadline, start)
            return rev, {k: None for k in unique if k not in missing}

        self._block("wait", unique, limit, reread, queues=True)

    def check(self, keys: Sequence[KeyLike]) -> bool:
        names = as_keys(keys)
        self._check_open("check")
        if not names:
            return True
        deadline, start = deadline_after(self._timeout), time.monotonic()
        return not self._present("check", list(dict.fromkeys(names)), deadline, start)[1]

    def num_keys(self) -> int:
        self._check_open("num_keys")
        lay = self._layout
        deadline, start = deadline_after(self._timeout), time.monotonic()
        resp = self._call("num_keys", [], "Range",
                          lambda: self.rpc.RangeRequest(key=lay.data, range_end=lay.data_end,
                                                        count_only=True),
                          deadline, start)  # fmt: skip
        return int(resp.count)

    def list_keys(self) -> list[str]:
        """Every key holding a value, read in pages of 1000 at one revision."""
        self._check_open("list_keys")
        lay = self._layout
        deadline, start = deadline_after(self._timeout), time.monotonic()
        out: list[str] = []
        begin, revision = lay.data, 0
        while True:
            resp = self._call("list_keys", [], "Range",
                              lambda b=begin, r=revision: self.rpc.RangeRequest(  # type: ignore[misc]
                                  key=b, range_end=lay.data_end, keys_only=True, limit=1000,
                                  revision=r),
                              deadline, start)  # fmt: skip
            revision = revision or resp.header.revision
            out.extend(lay.name(bytes(kv.key)) for kv in resp.kvs)
            if not resp.more:
                return out
            begin = bytes(resp.kvs[-1].key) + b"\x00"

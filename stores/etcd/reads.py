"""EtcdStore's reads: snapshot reads in one txn, and blocking reads that watch from its revision.

``check``/``wait`` count a key that holds a value or names a non-empty queue; ``get`` and
``multi_get`` need values.  A read of many keys is one txn (one revision); past etcd's 128
operations per txn, the later chunks read at the first chunk's revision, so it stays one
snapshot.  A key counts for ``wait`` once it has existed at some moment during the wait: a put
event on it is enough, and a ``get`` returns the value that event carried.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import StoreClosed, StoreTimeout
from .._types import KeyLike, TimeoutLike, as_key, as_keys, as_seconds
from ._layout import range_end
from ._requests import Requests
from ._watch import CLOSED, Watch, is_restart

if TYPE_CHECKING:
    from ._op import Op

__all__ = ["Reads"]

#: Blocked calls on more keys than this watch whole key ranges instead of key by key.
PER_KEY_WATCHES = 8
#: Range operations per txn (etcd's default ``--max-txn-ops``).
MAX_TXN_OPS = 128


class Reads(Requests):
    """The read operations of :class:`EtcdStore` (a mixin over its request helpers)."""

    # ------------------------------------------------------------------ snapshots

    def _snapshot(self, op: Op, ops: list[Any]) -> tuple[int, list[Any]]:
        """Run range ``ops`` at one revision; returns it and the range responses in order."""
        out: list[Any] = []
        revision = 0
        for i in range(0, max(len(ops), 1), MAX_TXN_OPS):
            chunk = ops[i : i + MAX_TXN_OPS]
            if revision:
                for each in chunk:
                    each.request_range.revision = revision
            resp = self._call(op, "Txn", lambda c=chunk: self.rpc.TxnRequest(success=c))  # type: ignore[misc]
            revision = revision or resp.header.revision
            out.extend(r.response_range for r in resp.responses)
        return revision, out

    def _present(self, op: Op, names: list[str]) -> tuple[int, list[str]]:
        """The revision and which of ``names`` do not exist (no value, no queued item)."""
        lay = self._layout
        ops: list[Any] = []
        for k in names:
            q = lay.queue(k)
            ops.append(self._range(lay.key(k), count_only=True))
            ops.append(self._range(q, range_end(q), count_only=True, limit=1))
        rev, got = self._snapshot(op, ops)
        missing = [k for i, k in enumerate(names) if not (got[2 * i].count or got[2 * i + 1].count)]
        return rev, missing

    def _values(self, op: Op, names: list[str]) -> tuple[int, list[bytes | None]]:
        if len(names) == 1:  # one range is a snapshot already, and cheaper than a txn
            request = self.rpc.RangeRequest(key=self._layout.key(names[0]))
            resp = self._call(op, "Range", lambda: request)
            return resp.header.revision, [bytes(resp.kvs[0].value) if resp.kvs else None]
        ops = [self._range(self._layout.key(k)) for k in names]
        rev, got = self._snapshot(op, ops)
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
        op: Op,
        names: list[str],
        reread: Callable[[Op], tuple[int, dict[str, bytes | None]]],
        queues: bool,
    ) -> dict[str, bytes | None]:
        """Until every key in ``names`` was seen: ``reread`` gives the revision and the keys
        still missing → their values (``None`` for a queue-only key); events fill them in."""
        rev, found = reread(op)
        missing = [k for k in names if k not in found]
        if not missing:
            return found
        watch = Watch(self._t, self._sleepers, self._sleepers_lock)
        try:
            if not self._start_watch(watch, op, self._targets(missing, queues), rev + 1):
                # Created after a write (etcd had moved on from rev): that write reaches the
                # watch only at etcd's next 100 ms sweep (_watch.py); a read answers now.
                found.update(reread(op)[1])
                missing = [k for k in names if k not in found]
            while missing:
                item = watch.next(op.deadline)
                if item is None:
                    raise StoreTimeout(op.name, missing, time.monotonic() - op.start,
                                       op.time_limit, repr(self))  # fmt: skip
                if item is CLOSED:
                    raise StoreClosed(op.name, repr(self))
                if is_restart(item):  # compacted or a broken stream: re-read, watch again
                    watch.stop()
                    rev, again = reread(op)
                    found.update(again)
                    missing = [k for k in names if k not in found]
                    if missing and not self._start_watch(
                        watch, op, self._targets(missing, queues), rev + 1
                    ):
                        found.update(reread(op)[1])
                        missing = [k for k in names if k not in found]
                    continue
                data = self._layout.data
                for kv in item:
                    stored = bytes(kv.key)
                    name = self._named(stored)
                    if name is None or name in found:
                        continue
                    is_data = stored.startswith(data)
                    if is_data or queues:
                        found[name] = bytes(kv.value) if is_data else None
                missing = [k for k in names if k not in found]
            return found
        finally:
            watch.close()

    # ------------------------------------------------------------------ operations

    def get(self, key: KeyLike) -> bytes:
        k = key if type(key) is str else as_key(key)
        op = self._op("get", [k])

        def reread(op: Op) -> tuple[int, dict[str, bytes | None]]:
            rev, values = self._values(op, [k])
            return rev, ({} if values[0] is None else {k: values[0]})

        value = self._block(op, [k], reread, queues=False)[k]
        assert value is not None
        return value

    def multi_get(self, keys: Sequence[KeyLike]) -> list[bytes]:
        names = as_keys(keys)
        op = self._op("multi_get", names)
        if not names:
            return []
        unique = list(dict.fromkeys(names))

        def reread(op: Op) -> tuple[int, dict[str, bytes | None]]:
            rev, values = self._values(op, unique)
            return rev, {k: v for k, v in zip(unique, values, strict=True) if v is not None}

        found = self._block(op, unique, reread, queues=False)
        return [found[k] or b"" for k in names]

    def wait(self, keys: Sequence[KeyLike], timeout: TimeoutLike | None = None) -> None:
        names = as_keys(keys)
        limit = None if timeout is None else as_seconds(timeout)
        op = self._op("wait", names, limit)
        if not names:
            return
        unique = list(dict.fromkeys(names))

        def reread(op: Op) -> tuple[int, dict[str, bytes | None]]:
            rev, missing = self._present(op, unique)
            return rev, {k: None for k in unique if k not in missing}

        self._block(op, unique, reread, queues=True)

    def check(self, keys: Sequence[KeyLike]) -> bool:
        names = as_keys(keys)
        op = self._op("check", names)
        if not names:
            return True
        return not self._present(op, list(dict.fromkeys(names)))[1]

    def num_keys(self) -> int:
        op = self._op("num_keys", [])
        lay = self._layout
        resp = self._call(op, "Range", lambda: self.rpc.RangeRequest(
            key=lay.data, range_end=lay.data_end, count_only=True))  # fmt: skip
        return int(resp.count)

    def list_keys(self) -> list[str]:
        """Every key holding a value, read in pages of 1000 at one revision."""
        op = self._op("list_keys", [])
        lay = self._layout
        out: list[str] = []
        begin, revision = lay.data, 0
        while True:
            resp = self._call(op, "Range",
                              lambda b=begin, r=revision: self.rpc.RangeRequest(  # type: ignore[misc]
                                  key=b, range_end=lay.data_end, keys_only=True, limit=1000,
                                  revision=r))  # fmt: skip
            revision = revision or resp.header.revision
            out.extend(lay.name(bytes(kv.key)) for kv in resp.kvs)
            if not resp.more:
                return out
            begin = bytes(resp.kvs[-1].key) + b"\x00"

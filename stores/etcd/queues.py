"""EtcdStore's queues: one key per item, FIFO by create revision, popped exactly once.

A push puts a fresh item key (``<time_ns>-<uuid>``): producers never contend, and the order is
the create revision, i.e. commit order.  A pop deletes the oldest item guarded on its
``mod_revision``, so one consumer wins each item; a blocking pop on an empty queue watches the
queue's range from the revision it read.  Both run inside
:meth:`EtcdStore._once`: a push resent after a lost reply is not pushed again (even once a
consumer took the item), a pop resent after a lost reply returns the item it took.
"""

from __future__ import annotations

import time
import uuid

from .._errors import QueueEmpty, StoreClosed, StoreTimeout
from .._types import KeyLike, ValueLike, as_key, as_value
from ._layout import range_end
from ._requests import Requests
from ._watch import CLOSED, Watch, is_restart

__all__ = ["Queues"]


class Queues(Requests):
    """The queue operations of :class:`EtcdStore` (a mixin over its request helpers)."""

    def queue_push(self, key: KeyLike, value: ValueLike) -> None:
        k = as_key(key)
        v = as_value(value)
        op = self._op("queue_push", [k])
        item = self._layout.queue(k) + f"{time.time_ns():020d}-{uuid.uuid4().hex}".encode()
        # The item key is fresh, and _once keeps a resend from putting it again.
        self._once(op, lambda seq: self.rpc.TxnRequest(success=[self._put(item, v),
                                                                 self._mark(seq)]))  # fmt: skip

    def queue_len(self, key: KeyLike) -> int:
        k = as_key(key)
        op = self._op("queue_len", [k])
        prefix = self._layout.queue(k)
        resp = self._call(op, "Range", lambda: self.rpc.RangeRequest(
            key=prefix, range_end=range_end(prefix), count_only=True))  # fmt: skip
        return int(resp.count)

    def queue_pop(self, key: KeyLike, block: bool = True) -> bytes:
        k = as_key(key)
        op = self._op("queue_pop", [k])
        prefix = self._layout.queue(k)
        end = range_end(prefix)
        r = self.rpc
        oldest = r.RangeRequest(key=prefix, range_end=end, limit=1,
                                sort_order=r.RangeRequest.ASCEND,
                                sort_target=r.RangeRequest.CREATE)  # fmt: skip
        watch: Watch | None = None
        look_again = True
        try:
            while True:
                if look_again:
                    got = self._call(op, "Range", lambda: oldest)
                    if got.kvs:
                        item = got.kvs[0]
                        resp = self._once(op, lambda seq, i=item: r.TxnRequest(  # type: ignore[misc]
                            compare=[self._compare(i.key, "MOD", mod_revision=i.mod_revision)],
                            success=[r.RequestOp(request_delete_range=r.DeleteRangeRequest(
                                key=i.key)), self._mark(seq)]))  # fmt: skip
                        if resp is None or resp.succeeded:
                            return bytes(item.value)
                        continue  # another consumer took it: the next oldest
                    if not block:
                        raise QueueEmpty(k, repr(self))
                if watch is None:
                    watch = Watch(self._t, self._sleepers, self._sleepers_lock)
                    synced = self._start_watch(watch, op, [(prefix, end)], got.header.revision + 1)
                    # Created after a push (etcd had moved on): that push reaches the watch only
                    # at etcd's next 100 ms sweep (_watch.py), the range answers now.
                    look_again = not synced
                    continue
                update = watch.next(op.deadline)
                if update is None:
                    raise StoreTimeout("queue_pop", [k], time.monotonic() - op.start,
                                       op.time_limit, repr(self))  # fmt: skip
                if update is CLOSED:
                    raise StoreClosed("queue_pop", repr(self))
                look_again = True
                if is_restart(update):  # compacted or broken: look again, watch anew
                    watch.close()
                    watch = None
        finally:
            if watch is not None:
                watch.close()

"""Joining an ``etcd://`` rendezvous: every rank counts itself in, rank 0 waits for the world.

As torch's ``tcp://`` rendezvous with a ``world_size``: every participant counts itself in, and
the master (rank 0) returns once ``world_size`` have, within the store timeout, else
``StoreTimeout`` in torch's words ("Timed out after N seconds waiting for clients. K/W clients
joined."), naming the ranks still missing.  Each rank puts its own key ``<prefix>/m/join/<rank>``
(beside the data, so ``num_keys``/``list_keys`` do not see it; under the run lease), so a rank
that joins twice counts once.  Rank 0 reads the join keys at revision R and watches them from
R + 1, like every blocking read of the store.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .._errors import StoreClosed, StoreTimeout
from ._layout import range_end
from ._watch import CLOSED, Watch, is_restart

if TYPE_CHECKING:
    from .store import EtcdStore

__all__ = ["join_world"]


def join_world(store: EtcdStore, rank: int, world_size: int) -> None:
    """Count ``rank`` in; rank 0 then waits until ranks ``0..world_size-1`` all did.

    Raises :class:`StoreTimeout` (rank 0, after the store timeout) naming the missing ranks.
    """
    op = store._op("init", [f"rank {rank} of {world_size}"])
    r, prefix = store.rpc, store._layout.joined
    mine = prefix + str(rank).encode()
    store._once(op, lambda seq: r.TxnRequest(success=[store._put(mine, b""), store._mark(seq)]))
    if rank != 0:
        return
    end = range_end(prefix)
    listing = r.RangeRequest(key=prefix, range_end=end, keys_only=True)

    def joined_at() -> tuple[int, set[int]]:
        got = store._call(op, "Range", lambda: listing)
        return got.header.revision, {_rank(kv.key, prefix) for kv in got.kvs}

    wanted = set(range(world_size))
    watch: Watch | None = None
    try:
        revision, joined = joined_at()
        while not wanted <= joined:
            if watch is None:
                watch = Watch(store._t, store._sleepers, store._sleepers_lock)
                if not store._start_watch(watch, op, [(prefix, end)], revision + 1):
                    joined |= joined_at()[1]  # etcd moved on before the watch: look again
                continue
            update = watch.next(op.deadline)
            if update is None:
                raise _timed_out(store, op.time_limit, time.monotonic() - op.start,
                                 world_size, joined & wanted)  # fmt: skip
            if update is CLOSED:
                raise StoreClosed("init", repr(store))
            if is_restart(update):  # compacted or broken: read again, watch anew
                watch.close()
                watch = None
                revision, again = joined_at()
                joined |= again
                continue
            joined |= {_rank(kv.key, prefix) for kv in update}
    finally:
        if watch is not None:
            watch.close()


def _rank(key: bytes, prefix: bytes) -> int:
    return int(key[len(prefix) :])


def _timed_out(
    store: EtcdStore, limit: float, elapsed: float, world_size: int, joined: set[int]
) -> StoreTimeout:
    missing = [f"rank {i}" for i in range(world_size) if i not in joined]
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return StoreTimeout(
        "init", missing, elapsed, limit, repr(store),
        f"Timed out after {elapsed:.0f} seconds waiting for clients. "
        f"{len(joined)}/{world_size} clients joined (missing: {shown})",
    )  # fmt: skip

"""One EtcdStore operation's time: its limit, and its deadline computed once when it starts.

Every request an operation sends (reads, txns, watch creations, a lease renewal) is given the
same :attr:`Op.deadline`, down to the transport, which bounds each RPC by what is left of it.
When the time is up the operation ends with :meth:`Op.out_of_time`: a :class:`StoreTimeout`
naming the operation's own limit, unless an attempt showed the cluster failing (refused, no
leader, no answer within the per-RPC cap: recorded in :attr:`Op.failing`), which makes it a
:class:`StoreBroken` naming the endpoints.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .._errors import StoreBroken, StoreTimeout

__all__ = ["Op"]


class Op:
    """What one call does (``name``, ``keys``) and until when (``time_limit`` s; 0: no limit)."""

    __slots__ = ("deadline", "failing", "keys", "name", "start", "time_limit")

    def __init__(self, name: str, keys: Sequence[str], time_limit: float) -> None:
        self.name = name
        self.keys = keys
        self.time_limit = time_limit
        self.start = time.monotonic()
        #: The instant the operation's time is up (``None``: never).
        self.deadline = None if time_limit == 0 else self.start + time_limit
        #: The last failure that showed the cluster failing (``None``: none did).
        self.failing: Exception | None = None

    def left(self) -> float | None:
        """Seconds until the deadline (``None``: no deadline; <= 0: the time is up)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def out_of_time(self, store: str, endpoints: str) -> StoreTimeout | StoreBroken:
        """The error for this operation once its deadline passed."""
        elapsed = time.monotonic() - self.start
        if self.failing is None:
            return StoreTimeout(self.name, self.keys, elapsed, self.time_limit, store,
                                detail="the time ran out before etcd answered")  # fmt: skip
        return StoreBroken(
            f"{self.name}({', '.join(map(repr, self.keys))}) on etcd at {endpoints}: no answer "
            f"in {elapsed:.2f} s (last: {self.failing}); is the cluster running, with a quorum "
            "of its members?",
            op=self.name,
            endpoints=endpoints,
        )

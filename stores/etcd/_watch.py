"""Blocking on etcd: watches from a known revision, delivered into one queue per blocked call.

A blocked call reads at revision ``R`` and watches from ``R + 1``: the read and the watch cover
every instant together, so a write between them is never missed, and nothing polls.  When the
watch is cancelled because ``R + 1`` was compacted away, or its stream breaks, the call re-reads
(covering the gap) and watches again from the new revision.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ._transport import Compacted, Transient, Transport

__all__ = ["CLOSED", "Watch"]

#: Put into a blocked call's queue by ``close()`` on its handle.
CLOSED = object()


class Watch:
    """Put events on some keys and key ranges, from a revision, into one queue.

    ``next(deadline)`` returns a list of put events, a :class:`Compacted` or :class:`Transient`
    (the caller re-reads and calls :meth:`restart`), :data:`CLOSED`, or ``None`` when the
    deadline passed.
    """

    def __init__(self, transport: Transport, sleepers: set[queue.Queue[Any]], lock: threading.Lock):
        self._t = transport
        self._q: queue.Queue[Any] = queue.Queue()
        self._cancels: list[Callable[[], None]] = []
        self._sleepers, self._lock = sleepers, lock
        with lock:
            sleepers.add(self._q)

    def start(
        self, targets: list[tuple[bytes, bytes | None]], revision: int, time_limit: float
    ) -> None:
        """Watch every ``(key, range_end)`` in ``targets`` from ``revision``.

        Raises :class:`Transient` when a watch cannot be created in ``time_limit``.
        """
        self.stop()
        # Events of the previous generation are stale once the caller re-read.
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is CLOSED:
                self._q.put(CLOSED)
                break
        for key, end in targets:
            self._cancels.append(self._t.watch(key, end, revision, self._q.put, time_limit))

    def next(self, deadline: float | None) -> Any:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        try:
            return self._q.get(timeout=left)
        except queue.Empty:
            return None

    def stop(self) -> None:
        cancels, self._cancels = self._cancels, []
        for cancel in cancels:
            with contextlib.suppress(Exception):  # a stream already gone: nothing to cancel
                cancel()

    def close(self) -> None:
        self.stop()
        with self._lock:
            self._sleepers.discard(self._q)


def is_restart(item: Any) -> bool:
    """Whether a watch item asks the caller to re-read and watch again."""
    return isinstance(item, Compacted | Transient)

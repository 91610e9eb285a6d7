"""Blocking on etcd: watches from a known revision, delivered into one queue per blocked call.

A blocked call reads at revision ``R`` and watches from ``R + 1``: the read and the watch cover
every instant together, so a write between them is never missed, and nothing polls.  When the
watch is cancelled because ``R + 1`` was compacted away, or its stream breaks, the call re-reads
(covering the gap) and watches again from the new revision.

A watch created while etcd was still at ``R`` (the revision its ``created`` response reports)
delivers every later write at once.  One created later (``R`` moved on meanwhile) is served the
writes in between by etcd's "unsynced" sweep, every 100 ms: then the caller reads once more
instead of waiting for the sweep (:meth:`Watch.start` says which case it is).  etcd reads that
revision just before it registers the watch, so a write landing in between (a window of
microseconds inside etcd) still waits for the sweep: late, never lost.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ._transport import Transport

__all__ = ["CLOSED", "Watch"]

#: Put into a blocked call's queue by ``close()`` on its handle.
CLOSED = object()


class Watch:
    """Put events on some keys and key ranges, from a revision, into one queue.

    ``next(deadline)`` returns a list of put ``KeyValue``s, an exception (:class:`Compacted`
    or :class:`Transient`: the caller re-reads and calls :meth:`start` again), :data:`CLOSED`,
    or ``None`` when the deadline passed.
    """

    def __init__(
        self, transport: Transport, sleepers: set[queue.SimpleQueue[Any]], lock: threading.Lock
    ) -> None:
        self._t = transport
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cancels: list[Callable[[], None]] = []
        self._sleepers, self._lock = sleepers, lock
        with lock:
            sleepers.add(self._q)

    def start(
        self, targets: list[tuple[bytes, bytes | None]], revision: int, deadline: float | None
    ) -> bool:
        """Watch every ``(key, range_end)`` in ``targets`` from ``revision``.

        Returns whether every watch was created while etcd was before ``revision`` (nothing
        written since the caller's read: no need to read again).  Raises the transport's
        ``OutOfTime`` or ``Transient`` when a watch is not created before ``deadline``.
        """
        self.stop()
        # Events of the previous generation are stale once the caller re-read.
        while not self._q.empty():
            if self._q.get_nowait() is CLOSED:
                self._q.put(CLOSED)
                break
        self._cancels, created_at = self._t.watch(targets, revision, self._q.put, deadline)
        return created_at < revision

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
    """Whether a watch item asks the caller to re-read and watch again (compacted, broken)."""
    return isinstance(item, Exception)

"""One etcd Watch stream (gRPC, bidirectional) carrying every watch of a process to one member.

Why not pyetcd's ``Watcher``: it lets one creation be pending at a time, keeps its creation
timeout in one attribute that concurrent creators overwrite, and drops the revision etcd
reports when it created the watch, which tells a blocked read whether it must look again
(see :meth:`WatchStream.create`).

etcd answers the create requests of one stream in the order they were sent, each with exactly
one ``created`` response (a refused one too, then also ``canceled``), and sends a watch's events
only after its ``created`` response: so creations are pipelined, and the ``created`` responses
are matched to a FIFO of pending creations.  One reader thread per stream delivers each watch's
put events (``mvccpb.KeyValue`` lists) through its ``deliver`` callable, or an exception:
:class:`~._transport.Compacted` (the start revision is gone: re-read, watch again) or
:class:`~._transport.Transient` (the stream broke).
"""

from __future__ import annotations

import _thread
import collections
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Creation", "WatchStream"]

Deliver = Callable[[Any], None]


class Creation:
    """A create request waiting for its ``created`` response (``done`` is released then)."""

    __slots__ = ("abandoned", "deliver", "done", "error", "revision", "watch_id")

    def __init__(self, deliver: Deliver) -> None:
        self.deliver = deliver
        self.done = _thread.allocate_lock()
        self.done.acquire()
        self.watch_id = -1
        self.revision = 0
        self.error: Exception | None = None
        self.abandoned = False


class WatchStream:
    """Watches on one channel: ``create`` them, ``cancel`` them; ``close`` ends the stream.

    ``on_error(exc)`` turns a gRPC error of the stream into the exception delivered to every
    watch (and raised to pending creators); ``compacted(revision)`` builds the one for a watch
    whose start revision was compacted away.
    """

    def __init__(
        self,
        rpc: Any,
        channel: Any,
        name: str,
        on_error: Callable[[BaseException], Exception],
        compacted: Callable[[int], Exception],
        put_type: int,
    ) -> None:
        self._rpc = rpc
        self._on_error, self._compacted = on_error, compacted
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: collections.deque[Creation] = collections.deque()
        self._watches: dict[int, Deliver] = {}
        self.broken: Exception | None = None
        self._put = put_type  # mvccpb.Event.PUT
        self._call = rpc.WatchStub(channel).Watch(iter(self._requests.get, None))
        self._reader = threading.Thread(target=self._read, name=name, daemon=True)
        self._reader.start()

    def create(
        self,
        key: bytes,
        range_end: bytes | None,
        start_revision: int,
        deliver: Deliver,
        filters: list[int],
    ) -> Creation:
        """Send a create request; wait on ``creation.done`` for etcd's answer.

        Raises the stream's error when it is broken already.
        """
        request = self._rpc.WatchRequest(
            create_request=self._rpc.WatchCreateRequest(
                key=key, range_end=range_end or b"", start_revision=start_revision,
                filters=filters,
            )
        )  # fmt: skip
        creation = Creation(deliver)
        with self._lock:  # the FIFO's order is the order on the wire
            if self.broken is not None:
                raise self.broken
            self._pending.append(creation)
            self._requests.put(request)
        return creation

    def abandon(self, creation: Creation) -> None:
        """The creator stopped waiting: cancel the watch when (if) etcd creates it."""
        with self._lock:
            creation.abandoned = True
            watch_id = creation.watch_id
        if watch_id >= 0:
            self.cancel(watch_id)

    def cancel(self, watch_id: int) -> None:
        with self._lock:
            if self._watches.pop(watch_id, None) is None or self.broken is not None:
                return
            self._requests.put(
                self._rpc.WatchRequest(
                    cancel_request=self._rpc.WatchCancelRequest(watch_id=watch_id)
                )
            )

    def close(self) -> None:
        """End the stream (every watch on it gets the stream's error)."""
        self._requests.put(None)
        self._call.cancel()

    # ----------------------------------------------------------------- the reader thread

    def _read(self) -> None:
        try:
            for response in self._call:
                self._handle(response)
            raise ConnectionError("the watch stream ended")
        except BaseException as exc:  # grpc.RpcError, or the end of the stream
            self._break(self._on_error(exc))

    def _handle(self, rs: Any) -> None:
        if rs.created:
            with self._lock:
                creation = self._pending.popleft()
                creation.revision = rs.header.revision
                if rs.canceled:  # refused (its watch_id names no watch of ours)
                    creation.error = self._on_error(ConnectionError(rs.cancel_reason))
                else:  # (an abandoned one too, so that the cancel below is sent)
                    creation.watch_id = rs.watch_id
                    self._watches[rs.watch_id] = creation.deliver
                abandoned = creation.abandoned
            creation.done.release()
            if abandoned and not rs.canceled:
                self.cancel(rs.watch_id)
            if not rs.events and not rs.compact_revision:
                return
        if rs.canceled or rs.compact_revision:
            with self._lock:
                deliver = self._watches.pop(rs.watch_id, None)
            if deliver is None:  # one we cancelled ourselves
                return
            if rs.compact_revision:
                deliver(self._compacted(rs.compact_revision))
            else:
                deliver(self._on_error(ConnectionError(rs.cancel_reason or "cancelled")))
            return
        if rs.events:
            deliver = self._watches.get(rs.watch_id)
            if deliver is not None:
                put = self._put
                deliver([e.kv for e in rs.events if e.type == put])

    def _break(self, error: Exception) -> None:
        with self._lock:
            self.broken = error
            pending, self._pending = list(self._pending), collections.deque()
            watches, self._watches = list(self._watches.values()), {}
        for creation in pending:
            creation.error = error
            creation.done.release()
        for deliver in watches:
            deliver(error)

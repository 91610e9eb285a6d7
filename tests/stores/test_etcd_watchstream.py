"""The etcd watch stream on a scripted server: etcd's real messages, no network.

etcd answers a stream's create requests in order, one ``created`` response each; the stream
matches them to its pending creations first-in first-out, so creations can be pipelined.
"""

from __future__ import annotations

import queue
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest

from storeharness.stores.etcd._transport import Compacted
from storeharness.stores.etcd._watchstream import WatchStream

from . import etcd_support

try:
    from pyetcd import etcdrpc
    from pyetcd.etcdrpc import kv_pb2
except ImportError as exc:  # skipped without the etcd extra, except in CI
    if etcd_support.in_ci():
        raise
    pytest.skip(f"the etcd client is not installed: {exc}", allow_module_level=True)


class ScriptedCall:
    """The bidirectional call: the test reads what the client sent and feeds what etcd says."""

    def __init__(self, requests: Iterator[Any]) -> None:
        self.requests = requests
        self.responses: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.cancelled = threading.Event()

    def __iter__(self) -> Iterator[Any]:
        while (response := self.responses.get(timeout=10)) is not None:
            yield response

    def cancel(self) -> None:
        self.cancelled.set()
        self.responses.put(None)


def _stream() -> tuple[WatchStream, ScriptedCall]:
    calls: list[ScriptedCall] = []

    def watch(requests: Iterator[Any]) -> ScriptedCall:
        calls.append(ScriptedCall(requests))
        return calls[0]

    rpc = types.SimpleNamespace(**{n: getattr(etcdrpc, n) for n in dir(etcdrpc)})
    rpc.WatchStub = lambda channel: types.SimpleNamespace(Watch=watch)
    stream = WatchStream(
        rpc, None, "test-watch", on_error=lambda exc: ConnectionError(f"broken: {exc}"),
        compacted=Compacted, put_type=kv_pb2.Event.PUT,
    )  # fmt: skip
    return stream, calls[0]


def _created(watch_id: int, revision: int) -> Any:
    return etcdrpc.WatchResponse(
        header=etcdrpc.ResponseHeader(revision=revision), watch_id=watch_id, created=True
    )


def _put(watch_id: int, key: bytes, value: bytes) -> Any:
    kv = kv_pb2.KeyValue(key=key, value=value)
    return etcdrpc.WatchResponse(watch_id=watch_id, events=[kv_pb2.Event(type=0, kv=kv)])


def test_created_answers_match_pipelined_creations_in_order_and_abandoned_ones_are_cancelled() -> (
    None
):
    stream, call = _stream()
    got_a: queue.SimpleQueue[Any] = queue.SimpleQueue()
    got_b: queue.SimpleQueue[Any] = queue.SimpleQueue()
    a = stream.create(b"a", None, 5, got_a.put, [])
    b = stream.create(b"b", b"c", 6, got_b.put, [])
    sent = [next(call.requests), next(call.requests)]
    assert [r.create_request.key for r in sent] == [b"a", b"b"]  # both out before any answer
    assert sent[1].create_request.range_end == b"c" and sent[1].create_request.start_revision == 6
    stream.abandon(a)  # its creator gave up waiting

    call.responses.put(_created(7, 4))
    call.responses.put(_created(8, 9))
    assert b.done.acquire(timeout=5)
    assert (b.watch_id, b.revision, b.error) == (8, 9, None)
    assert next(call.requests).cancel_request.watch_id == 7  # the abandoned one, once created

    call.responses.put(_put(7, b"a", b"late"))  # a cancelled watch's leftovers: dropped
    call.responses.put(_put(8, b"b1", b"v"))
    (kv,) = got_b.get(timeout=5)
    assert (kv.key, kv.value) == (b"b1", b"v")
    call.responses.put(
        etcdrpc.WatchResponse(watch_id=8, canceled=True, compact_revision=3)
    )  # history compacted: the watcher must read again
    compacted = got_b.get(timeout=5)
    assert isinstance(compacted, Compacted) and compacted.revision == 3
    assert got_a.empty()


def test_a_stream_that_ends_fails_its_watches_and_pending_creations() -> None:
    stream, call = _stream()
    got: queue.SimpleQueue[Any] = queue.SimpleQueue()
    first = stream.create(b"k", None, 2, got.put, [])
    call.responses.put(_created(1, 1))
    assert first.done.acquire(timeout=5)
    pending = stream.create(b"other", None, 2, got.put, [])
    call.responses.put(None)  # etcd (or the connection) ended the stream
    assert pending.done.acquire(timeout=5)
    assert isinstance(pending.error, ConnectionError)
    assert isinstance(got.get(timeout=5), ConnectionError)
    with pytest.raises(ConnectionError, match="broken"):
        stream.create(b"again", None, 2, got.put, [])
    stream.close()
    assert call.cancelled.is_set()

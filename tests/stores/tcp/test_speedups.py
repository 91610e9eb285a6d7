"""The C speedups against the Python reference: same replies, same state, same dropped peers.

Each example is one connection's byte stream (handshake, then random requests, some invalid),
cut into random chunks and fed to two servers' connection handlers -- one with the C fast
path, one pure Python -- through a recording transport.  Everything observable must match.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storeharness.stores import StoreError, TCPStore
from storeharness.stores.tcp import Limits, TCPServer
from storeharness.stores.tcp._accel import PURE_ENV, speedups
from storeharness.stores.tcp.codec import EXT_HELLO, MAGIC, Query, encode_multi_set, encode_request
from storeharness.stores.tcp.server import _Connection

from ._fakes import Recorder

pytestmark = pytest.mark.skipif(
    speedups(None, "test") is None,
    reason=f"the C speedups are not built (or {PURE_ENV} is set); pip install -e . builds them",
)

KEYS = [b"/a", b"/b", b"/c"]
VALUES = [b"", b"1", b"-5", b"007", b"12abc", b" 3", b"x", b"999999999999999999", b"9" * 19]
AMOUNTS = [0, 1, -1, 2**63 - 1, -(2**63), 7]
LIMITS = Limits(max_key=4, max_value=32, max_keys=3)
#: Requests that break the protocol or a limit: each ends the connection, so they come rarely.
INVALID = [
    b"\x63",  # unknown command
    b"\x01" + struct.pack("<Q", 2**63),  # a length of 2**63
    b"\x05\xff",  # truncated at the end of the stream
    encode_request(Query.GET, b"/long"),  # key over max_key
    encode_request(Query.SET, b"/a", b"v" * 33),  # value over max_value
    encode_request(Query.MULTI_GET, [b"/a"] * 4),  # over max_keys
    encode_multi_set([(b"/a", b"1")] * 4),
    encode_request(Query.WAIT_GET, b"/a"),  # an extension: a protocol error on plain ones
]


def run(stream: bytes, cuts: list[int], accelerate: bool) -> tuple[Any, ...]:
    with socket.socket() as sock:
        server = TCPServer(sock, LIMITS, accelerate=accelerate)
    assert (server.serve_fast is not None) is accelerate
    proto = _Connection(server)
    transport = Recorder()
    proto.connection_made(transport)  # type: ignore[arg-type]
    last = 0
    for cut in [*sorted(cuts), len(stream)]:
        if transport.aborted:
            break
        proto.data_received(stream[last:cut])
        last = cut
    state = server.state
    queues = {k: list(v) for k, v in state.queues.items()}
    return bytes(transport.out), transport.aborted, state.data, queues, sorted(state.waiters)


keys = st.sampled_from(KEYS)
values = st.sampled_from(VALUES)
key_lists = st.lists(keys, max_size=3)


def request(extended: bool) -> st.SearchStrategy[bytes]:
    writes = [
        st.builds(lambda k, v: encode_request(Query.SET, k, v), keys, values),
        st.builds(lambda k, n: encode_request(Query.ADD, k, n), keys, st.sampled_from(AMOUNTS)),
        st.builds(lambda kv: encode_multi_set(kv), st.lists(st.tuples(keys, values), max_size=3)),
        st.builds(lambda k, v: encode_request(Query.APPEND, k, v), keys, values),
        st.builds(lambda k, a, b: encode_request(Query.COMPARE_SET, k, a, b), keys, values, values),
        st.builds(lambda k: encode_request(Query.DELETE_KEY, k), keys),
    ]
    reads = [
        st.builds(lambda k: encode_request(Query.GET, k), keys),
        st.builds(lambda ks: encode_request(Query.CHECK, ks), key_lists),
        st.builds(lambda ks: encode_request(Query.WAIT, ks), key_lists),
        st.just(encode_request(Query.GETNUMKEYS)),
        st.builds(lambda ks: encode_request(Query.MULTI_GET, ks), key_lists),
        st.builds(lambda k, v: encode_request(Query.QUEUE_PUSH, k, v), keys, values),
        st.builds(lambda k: encode_request(Query.QUEUE_POP, k), keys),
        st.just(encode_request(Query.CANCEL_WAIT)),
    ]
    if extended:
        reads += [
            st.builds(lambda k: encode_request(Query.WAIT_GET, k), keys),
            st.builds(lambda ks: encode_request(Query.WAIT_MULTI_GET, ks), key_lists),
            st.builds(lambda k, n: encode_request(Query.WAIT_COUNT, k, n), keys, st.integers(0, 3)),
        ]
    # A wait on a key, then writes: the fast path must leave watched keys to Python, which
    # wakes the waiter (uniform picks rarely line these up).
    parked = st.builds(
        lambda k, w: encode_request(Query.WAIT, [k]) + b"".join(w),
        keys,
        st.lists(st.one_of(writes), min_size=1, max_size=3),
    )
    valid = st.one_of(*writes, *reads, parked)
    return st.one_of(valid, valid, valid, valid, st.sampled_from(INVALID))


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    extended = draw(st.booleans())
    head = encode_request(Query.VALIDATE, MAGIC)
    if extended:
        head += encode_request(Query.PING, EXT_HELLO)
    body = b"".join(draw(st.lists(request(extended), max_size=30)))
    stream = head + body
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=6))
    return stream, cuts


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_the_c_fast_path_answers_exactly_as_the_python_server(
    case: tuple[bytes, list[int]],
) -> None:
    stream, cuts = case
    assert run(stream, cuts, accelerate=True) == run(stream, cuts, accelerate=False)


def test_the_fast_path_really_answers_requests() -> None:
    """Guard against a differential test that passes because C never does anything."""
    stream = encode_request(Query.VALIDATE, MAGIC) + encode_request(Query.ADD, b"/a", 5)
    with socket.socket() as sock:
        server = TCPServer(sock, LIMITS, accelerate=True)
    seen: list[bytes] = []
    state, lim = server.state, server.limits
    args = (state.data, state.waiters, False, lim.max_key, lim.max_value, lim.max_keys)
    used = server.serve_fast(*args, seen.append, stream[5:])
    assert used == len(stream) - 5
    assert seen == [struct.pack("<q", 5)]
    assert server.state.data == {b"/a": b"5"}


@pytest.fixture
def pure_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(PURE_ENV, "1")
    yield


def test_the_environment_switches_to_pure_python_unless_asked_otherwise(pure_env: None) -> None:
    store = TCPStore("127.0.0.1", 0, is_master=True, timeout=10)
    try:
        assert store._client.speedups is None
        assert store._server is not None and store._server.serve_fast is None  # type: ignore[union-attr]
        assert store.add("k", 2) == 2
    finally:
        store.close()
    with socket.socket() as sock:  # an explicit argument outranks the environment
        assert TCPServer(sock, accelerate=True).serve_fast is not None


def test_asking_for_missing_speedups_says_how_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "storeharness.stores.tcp._speedups", None)  # import now fails
    with socket.socket() as sock, pytest.raises(StoreError, match=r"not built.*pip install"):
        TCPServer(sock, accelerate=True)
    with socket.socket() as sock:
        assert TCPServer(sock).serve_fast is None  # by default: the Python path, quietly


def test_call_waits_until_a_monotonic_deadline_and_never_blocks_in_send() -> None:
    """call()'s time bound is an instant of time.monotonic(), computed once by the caller; a
    peer that stops reading leaves the rest of the request to the caller (status -2)."""
    fast = speedups(None, "test")
    a, b = socket.socketpair()
    with a, b:
        start = time.monotonic()
        status, value, rest, _ = fast.call(a.fileno(), b"\x07", 2, False, 0.0, start + 0.05, 0.0)
        spent = time.monotonic() - start
        assert (status, value, rest) == (-1, None, b"")  # no reply by the deadline: paused
        assert 0.04 <= spent < 1.0
        assert b.recv(16) == b"\x07"
        big = b"x" * (64 << 20)  # more than the socket buffers hold; b never reads
        status, value, rest, _ = fast.call(a.fileno(), big, 0, False, 0.0, -1.0, 0.0)
        assert status == -2 and 0 <= value < len(big) and rest == b""

"""The server state machine, driven directly: no sockets, every reply observed."""

from __future__ import annotations

import pytest

from storeharness.stores.tcp._state import Conn, ServerState
from storeharness.stores.tcp.codec import (
    EXT_ACK,
    EXT_HELLO,
    MAGIC,
    STATUS_CANCELED,
    STATUS_ERROR,
    STATUS_OK,
    ProtocolError,
    Query,
    parse_bytes,
    parse_i64,
    parse_u8,
)


class Peer:
    def __init__(self, state: ServerState, extended: bool = False) -> None:
        self.out = bytearray()
        self.conn = Conn(self.out.extend, "peer")
        self.state = state
        state.connect(self.conn)
        state.handle(self.conn, (Query.VALIDATE, (MAGIC,)))
        if extended:
            state.handle(self.conn, (Query.PING, (EXT_HELLO,)))
            assert self.take(4) == EXT_ACK.to_bytes(4, "little")

    def __call__(self, query: Query, *args: object) -> None:
        self.state.handle(self.conn, (query, args))  # type: ignore[arg-type]

    def take(self, n: int | None = None) -> bytes:
        n = len(self.out) if n is None else n
        data = bytes(self.out[:n])
        del self.out[:n]
        return data


@pytest.fixture
def state() -> ServerState:
    return ServerState()


def test_handshake_required(state: ServerState) -> None:
    conn = Conn(lambda b: None)
    with pytest.raises(ProtocolError, match="VALIDATE"):
        state.handle(conn, (Query.SET, (b"k", b"v")))
    with pytest.raises(ProtocolError, match="VALIDATE"):
        state.handle(conn, (Query.VALIDATE, (MAGIC + 1,)))
    peer = Peer(state)
    with pytest.raises(ProtocolError, match="second VALIDATE"):
        peer(Query.VALIDATE, MAGIC)


def test_ping_echoes_and_negotiates(state: ServerState) -> None:
    torch_like = Peer(state)
    torch_like(Query.PING, 0x5388)
    assert torch_like.take() == (0x5388).to_bytes(4, "little")
    ours = Peer(state, extended=True)
    ours(Query.GETNUMKEYS)
    assert ours.take() == bytes([STATUS_OK]) + (0).to_bytes(8, "little")


def test_a_write_wakes_exactly_its_waiters(state: ServerState) -> None:
    on_a, on_b, on_ab = Peer(state), Peer(state), Peer(state)
    on_a(Query.WAIT, (b"a",))
    on_b(Query.WAIT, (b"b",))
    on_ab(Query.WAIT, (b"a", b"b", b"a"))  # duplicated keys work
    writer = Peer(state)
    writer(Query.SET, b"a", b"1")
    assert (on_a.take(), on_b.take(), on_ab.take()) == (b"\x00", b"", b"")
    writer(Query.DELETE_KEY, b"a")  # a deleted key still counted for the waiter
    writer(Query.ADD, b"b", 1)
    assert (on_b.take(), on_ab.take()) == (b"\x00", b"\x00")


def test_cancel_and_its_race_with_the_wake(state: ServerState) -> None:
    waiter, writer = Peer(state), Peer(state)
    waiter(Query.WAIT, (b"k",))
    waiter(Query.CANCEL_WAIT)
    assert waiter.take() == b"\x01"
    writer(Query.SET, b"k", b"v")
    assert waiter.take() == b"", "a cancelled wait must not be answered"
    waiter(Query.WAIT, (b"late",))
    writer(Query.SET, b"late", b"v")  # the wake lands first, then the cancel
    waiter(Query.CANCEL_WAIT)
    assert waiter.take() == b"\x00\x01"
    waiter(Query.CANCEL_WAIT)  # harmless without a pending wait
    assert waiter.take() == b"\x01"


def test_disconnect_frees_registrations(state: ServerState) -> None:
    gone = Peer(state)
    gone(Query.WAIT, (b"x", b"y"))
    gone(Query.BARRIER, b"bar", 3)
    state.disconnect(gone.conn)
    assert state.waiters == {}
    assert not gone.conn.pending
    Peer(state)(Query.SET, b"x", b"v")  # nothing left to wake
    assert gone.take() == b""


def test_compare_set_wakes_only_when_it_writes(state: ServerState) -> None:
    waiter, writer = Peer(state), Peer(state)
    waiter(Query.WAIT, (b"k",))
    writer(Query.COMPARE_SET, b"k", b"nope", b"y")  # absent + non-empty expected: no write
    assert waiter.take() == b""
    writer(Query.COMPARE_SET, b"k", b"", b"y")
    assert waiter.take() == b"\x00"


def test_queue_push_wakes_one_waiter(state: ServerState) -> None:
    first, second, writer = Peer(state), Peer(state), Peer(state)
    first(Query.WAIT, (b"q",))
    second(Query.WAIT, (b"q",))
    writer(Query.QUEUE_PUSH, b"q", b"x")
    assert (first.take(), second.take()) == (b"\x00", b"")
    writer(Query.QUEUE_POP, b"q")
    assert writer.take() == (1).to_bytes(8, "little") + (1).to_bytes(8, "little") + b"x"
    writer(Query.QUEUE_POP, b"q")
    assert writer.take() == (0).to_bytes(8, "little")


def test_a_consumer_gone_between_wake_up_and_pop_passes_the_item_on(state: ServerState) -> None:
    # A blocking queue_pop is WAIT then POP.  A consumer killed after its WAIT was answered
    # but before its POP must not take the wake-up with it: the next waiter gets it.
    dead, live, writer = Peer(state), Peer(state), Peer(state)
    dead(Query.WAIT, (b"q",))
    live(Query.WAIT, (b"q",))
    writer(Query.QUEUE_PUSH, b"q", b"x")
    assert (dead.take(), live.take()) == (b"\x00", b"")
    state.disconnect(dead.conn)
    assert live.take() == b"\x00"
    live(Query.QUEUE_POP, b"q")
    assert live.take() == (1).to_bytes(8, "little") + (1).to_bytes(8, "little") + b"x"
    # One that popped what it was woken for passes nothing on when it goes: the item left is
    # another woken consumer's.
    popper, other, third = Peer(state), Peer(state), Peer(state)
    for peer in (popper, other, third):
        peer(Query.WAIT, (b"r",))
    writer(Query.QUEUE_PUSH, b"r", b"y")  # wakes popper
    writer(Query.QUEUE_PUSH, b"r", b"z")  # wakes other
    assert (popper.take(), other.take(), third.take()) == (b"\x00", b"\x00", b"")
    popper(Query.QUEUE_POP, b"r")
    assert popper.take().endswith(b"y")
    state.disconnect(popper.conn)
    assert third.take() == b""
    other(Query.QUEUE_POP, b"r")
    assert other.take().endswith(b"z")


def test_barrier_counts_and_releases_everyone(state: ServerState) -> None:
    a, b, c = Peer(state), Peer(state), Peer(state)
    a(Query.BARRIER, b"/bk", 3)
    b(Query.BARRIER, b"/bk", 3)
    assert (a.take(), b.take()) == (b"", b"")
    c(Query.BARRIER, b"/bk", 3)
    assert (a.take(), b.take(), c.take()) == (b"\x00", b"\x00", b"\x00")
    assert state.data[b"/bk"] == b"3"


def test_a_write_to_the_barrier_counter_does_not_release_it_early(state: ServerState) -> None:
    # Found by the missing_clients scenario: a participant that timed out read the count with
    # add(key, 0), which woke every other participant although only 3 of 4 had arrived.
    a, b, c, d = Peer(state), Peer(state), Peer(state), Peer(state)
    a(Query.BARRIER, b"/bk", 4)
    b(Query.BARRIER, b"/bk", 4)
    c(Query.ADD, b"/bk", 0)
    assert c.take() == (2).to_bytes(8, "little")
    assert (a.take(), b.take()) == (b"", b"")
    d(Query.BARRIER, b"/bk", 3)  # a smaller world size is reached by this arrival
    assert d.take() == b"\x00"
    assert (a.take(), b.take()) == (b"", b""), "released before their world size of 4"
    c(Query.BARRIER, b"/bk", 4)
    assert (a.take(), b.take(), c.take()) == (b"\x00", b"\x00", b"\x00")


def test_get_of_a_missing_key_is_empty_like_libuv(state: ServerState) -> None:
    peer = Peer(state)
    peer(Query.GET, b"missing")
    assert peer.take() == (0).to_bytes(8, "little")


def test_add_on_junk_drops_a_torch_connection_but_answers_ours(state: ServerState) -> None:
    torch_like, ours = Peer(state), Peer(state, extended=True)
    torch_like(Query.SET, b"n", b"abc")
    with pytest.raises(ProtocolError, match="not an integer"):
        torch_like(Query.ADD, b"n", 1)
    ours(Query.ADD, b"n", 1)
    reply = ours.take()
    assert reply[0] == STATUS_ERROR
    assert b"not an integer" in parse_bytes(reply, 1)[0]
    ours(Query.ADD, b"m", 5)
    assert ours.take() == bytes([STATUS_OK]) + (5).to_bytes(8, "little")


def test_extended_wait_get_and_count(state: ServerState) -> None:
    ours, writer = Peer(state, extended=True), Peer(state)
    ours(Query.WAIT_GET, b"k")
    writer(Query.SET, b"k", b"v")
    assert ours.take() == bytes([STATUS_OK]) + (1).to_bytes(8, "little") + b"v"
    ours(Query.WAIT_COUNT, b"init/", 3)
    writer(Query.ADD, b"init/", 1)
    writer(Query.ADD, b"init/", 1)
    writer.take()
    assert ours.take() == b""
    writer(Query.ADD, b"init/", 1)
    status, _pos = parse_u8(ours.take(), 0)
    assert status == STATUS_OK
    ours(Query.WAIT_GET, b"never")
    ours(Query.CANCEL_WAIT)
    assert ours.take() == bytes([STATUS_CANCELED])


def test_wait_get_rearms_if_the_value_vanished(state: ServerState) -> None:
    ours, writer = Peer(state, extended=True), Peer(state)
    ours(Query.WAIT_MULTI_GET, (b"a", b"b"))
    writer(Query.SET, b"a", b"1")
    writer(Query.DELETE_KEY, b"a")
    writer.take()
    writer(Query.SET, b"b", b"2")  # all appeared once, but "a" is gone: keep waiting
    assert ours.take() == b""
    writer(Query.SET, b"a", b"3")
    reply = ours.take()
    assert reply[0] == STATUS_OK
    assert parse_i64(reply, 1)[0] == 1

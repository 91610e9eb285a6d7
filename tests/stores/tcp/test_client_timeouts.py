"""The client's time limits: connect and I/O timeouts apart, and a silent server bounded.

A server that goes silent (SIGSTOPped) costs each call its timeout plus the overtime, no more.
Those tests start our server in a process of its own, connect, stop the server with SIGSTOP and
call one operation twice: first on the open connection (the request is buffered by the kernel,
the reply never comes), then again, which has to reconnect to a listener that accepts but never
answers.  Both must raise :class:`StoreTimeout` naming the operation, its keys and the configured
limit, by ``T + overtime(T)`` (plus scheduling margin).  After SIGCONT the next call works, on a
new connection.  Both client paths run: the C speedups and pure Python.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from storeharness.stores import StoreTimeout, TCPStore
from storeharness.stores.tcp import ServerProcess, TCPClient, bind_listener
from storeharness.stores.tcp._accel import speedups
from storeharness.stores.tcp.client import OVERTIME_MAX, overtime

T = 0.5
#: What a loaded 2-CPU machine may add to a wake-up (the old code took 2T..3T: 1.0..1.5 s).
MARGIN = 0.2
#: A blocking call ends by this (timeout, then the cancel's overtime); one answered at once by T.
BLOCKING_BOUND = T + overtime(T) + MARGIN
PATHS = [
    pytest.param(
        None,
        id="C",
        marks=pytest.mark.skipif(speedups(None, "test") is None, reason="C speedups not built"),
    ),
    pytest.param(False, id="python"),
]


class Stoppable:
    """Our server in its own process, which the test can SIGSTOP; always resumed and stopped."""

    def __init__(self) -> None:
        self.server = ServerProcess(bind_listener(0))
        self.port = self.server.port
        self.pid = self.server.proc.pid

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


@pytest.fixture
def server() -> Iterator[Stoppable]:
    s = Stoppable()
    try:
        yield s
    finally:
        s.resume()  # a stopped process would not read its stop message
        s.server.stop()


def connect(port: int, timeout: float, accelerate: bool | None = None) -> TCPStore:
    """A store whose calls have ``timeout``, connected with time to spare: a server process
    just started answers handshakes only once it has imported everything."""
    store = TCPStore("127.0.0.1", port, timeout=30, accelerate=accelerate)
    store.set_timeout(timeout)
    return store


@pytest.fixture(params=PATHS)
def store(request: pytest.FixtureRequest, server: Stoppable) -> Iterator[TCPStore]:
    with connect(server.port, T, request.param) as s:
        assert (s._client.speedups is None) == (request.param is False)
        s.set("there", "1")
        yield s


# op -> (the call, the keys its error names, a bound on how long it may take)
CALLS: dict[str, tuple[Callable[[TCPStore], object], tuple[str, ...], float]] = {
    "get": (lambda s: s.get("missing"), ("missing",), BLOCKING_BOUND),
    "wait": (lambda s: s.wait(["there", "missing"]), ("there", "missing"), BLOCKING_BOUND),
    "multi_get": (lambda s: s.multi_get(["there", "x"]), ("there", "x"), BLOCKING_BOUND),
    "barrier": (lambda s: s.barrier("bar", 2), ("bar",), BLOCKING_BOUND),
    "add": (lambda s: s.add("n", 1), ("n",), T + MARGIN),
    "check": (lambda s: s.check(["there", "x"]), ("there", "x"), T + MARGIN),
    "queue_pop": (lambda s: s.queue_pop("q"), ("q",), BLOCKING_BOUND),
    "num_keys": (lambda s: s.num_keys(), (), T + MARGIN),
}


def timed(call: Callable[[], object]) -> tuple[StoreTimeout, float]:
    start = time.monotonic()
    with pytest.raises(StoreTimeout) as info:
        call()
    return info.value, time.monotonic() - start


@pytest.mark.parametrize("op", list(CALLS))
def test_each_call_ends_by_its_timeout_and_the_next_one_works(
    op: str, server: Stoppable, store: TCPStore
) -> None:
    call, keys, bound = CALLS[op]
    server.stop()
    try:
        for attempt in ("on the open connection", "reconnecting"):
            err, spent = timed(lambda: call(store))
            where = f"{op} {attempt}: {err}"
            assert spent < bound, f"{where}: took {spent:.3f} s, bound {bound:.3f} s"
            assert T <= err.elapsed <= spent, where
            assert (err.op, err.timeout, err.keys) == (op, T, keys), where
            assert "reconnect" in str(err), where  # says the connection went and comes back
    finally:
        server.resume()
    store.set("back", "yes")
    assert store.get("back") == b"yes"
    assert store.add("after", 1) == 1


@pytest.mark.parametrize("size", [60_000, 16 << 20], ids=["60kB", "16MiB"])
def test_a_set_the_server_does_not_read_ends_by_the_timeout(
    size: int, server: Stoppable, store: TCPStore
) -> None:
    """set has no reply: it returns once the kernel took it, or times out when it cannot.

    60 kB requests go through the C path (when built), which leaves a partly sent one to
    Python; 16 MiB ones are sent by Python alone.
    """
    server.stop()
    try:
        start = time.monotonic()
        store.set("small", "v")  # buffered by the kernel
        assert time.monotonic() - start < T
        value = b"x" * size
        for i in range(1000):  # until the buffers are full; each set is bounded
            start = time.monotonic()
            try:
                store.set(f"v{i}", value)
            except StoreTimeout as err:
                spent = time.monotonic() - start
                assert spent < T + MARGIN, f"took {spent:.3f} s"
                assert (err.op, err.keys, err.timeout) == ("set", (f"v{i}",), T)
                assert "stopped reading" in str(err)
                break
            assert time.monotonic() - start < T + MARGIN
        else:
            pytest.fail("sets to a stopped server never filled the buffers")
        late, spent = timed(lambda: store.set("small", "w"))  # reconnecting
        assert spent < T + MARGIN, f"took {spent:.3f} s"
        assert late.op == "set" and "never answered the handshake" in str(late)
    finally:
        server.resume()
    store.set("small", "again")
    assert store.get("small") == b"again"


def test_a_blocking_pop_that_waited_ends_by_its_timeout(server: Stoppable, store: TCPStore) -> None:
    """queue_pop's wait, cancel and pop share one deadline (a live server, an empty queue)."""
    err, spent = timed(lambda: store.queue_pop("empty"))
    assert spent < T + MARGIN, f"took {spent:.3f} s"  # the cancel is answered at once
    assert (err.op, err.keys, err.timeout) == ("queue_pop", ("empty",), T)
    store.queue_push("empty", "v")
    assert store.queue_pop("empty") == b"v"


def test_connect_and_io_timeouts_are_separate(server: Stoppable) -> None:
    client = TCPClient("127.0.0.1", server.port, connect_timeout=30, io_timeout=0.3)
    try:
        assert client.add(b"/n", 1, "n") == 1
        server.stop()
        try:
            err, spent = timed(lambda: client.add(b"/n", 1, "n"))
            assert spent < 0.3 + MARGIN, "the I/O timeout bounds a reply, not the connect one"
            assert (err.op, err.keys, err.timeout) == ("add", ("n",), 0.3)
            client.io_timeout = 0.1  # a reconnect is bounded by the call's deadline as well
            err, spent = timed(lambda: client.add(b"/n", 1, "n"))
            assert spent < 0.1 + MARGIN and err.timeout == 0.1
            assert "never answered the handshake" in str(err)
        finally:
            server.resume()
        # The add that timed out had reached the server's socket: it runs on resume.  A
        # timeout says the reply did not come, not that the request was not carried out.
        assert client.add(b"/n", 1, "n") == 3
    finally:
        client.close()


def test_set_timeout_changes_the_io_timeout_but_not_the_connect_timeout(
    server: Stoppable,
) -> None:
    with TCPStore("127.0.0.1", server.port, timeout=30) as s:
        s.set_timeout(0.25)
        assert (s._client.connect_timeout, s._client.io_timeout) == (30, 0.25)
        clone = s.clone()  # a new connection takes the current timeout for both
        assert (clone._client.connect_timeout, clone._client.io_timeout) == (0.25, 0.25)
        clone.close()


def test_overtime_is_bounded() -> None:
    assert overtime(0.01) == 0.25
    assert overtime(3.0) == pytest.approx(0.3)
    assert overtime(300.0) == OVERTIME_MAX == 0.5


def test_no_limit_outlasts_the_io_timeout_the_socket_had(server: Stoppable) -> None:
    """set_timeout(0) lifts the limit on the open connection too: its SO_RCVTIMEO (armed for
    the C path's one-syscall read) must not end a wait that has none."""
    with connect(server.port, 0.2) as s, connect(server.port, 5) as other:
        s.set_timeout(0)
        # The subject is a reply later than the old 0.2 s: a timer, not synchronisation.
        late = threading.Timer(0.6, other.set, ("late", "v"))
        late.start()
        try:
            assert s.multi_get(["late"]) == [b"v"]  # read by Python: no C reply shape
        finally:
            late.join()

"""The client's time limits: connect and I/O timeouts apart."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from storeharness.stores import StoreTimeout, TCPStore
from storeharness.stores.tcp import ServerProcess, TCPClient, bind_listener

#: What a loaded 2-CPU machine may add to a wake-up.
MARGIN = 0.2


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


def timed(call: Callable[[], object]) -> tuple[StoreTimeout, float]:
    start = time.monotonic()
    with pytest.raises(StoreTimeout) as info:
        call()
    return info.value, time.monotonic() - start


def test_connect_and_io_timeouts_are_separate(server: Stoppable) -> None:
    client = TCPClient("127.0.0.1", server.port, connect_timeout=30, io_timeout=0.3)
    try:
        assert client.add(b"/n", 1) == 1
        server.stop()
        try:
            err, spent = timed(lambda: client.add(b"/n", 1))
            assert spent < 0.3 + MARGIN, "the I/O timeout bounds a reply, not the connect one"
            assert (err.op, err.timeout) == ("add", 0.3)
        finally:
            server.resume()
        # The add that timed out had reached the server's socket: it runs on resume.  A
        # timeout says the reply did not come, not that the request was not carried out.
        assert client.add(b"/n", 1) == 3
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

"""TCPStore's constructor and lifecycle: torch's signature, with errors a person can act on."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from storeharness.stores import StoreBroken, StoreClosed, StoreError, StoreTimeout, TCPStore
from storeharness.stores.tcp import Limits, ServerProcess, bind_listener

from ..backends import torch_missing


def master(**kwargs: object) -> TCPStore:
    return TCPStore("127.0.0.1", 0, is_master=True, timeout=30, **kwargs)  # type: ignore[arg-type]


def test_port_zero_binds_an_ephemeral_port_and_reports_it() -> None:
    with master() as m:
        assert m.port > 0
        assert m.host == "127.0.0.1"
        assert f"port={m.port}" in repr(m)
        with TCPStore("localhost", m.port, timeout=10) as client:
            client.set("k", "v")
        assert m.get("k") == b"v"


def test_address_in_use_names_the_port() -> None:
    with master() as first:
        pattern = rf"^The server socket has failed to listen on any local .*{first.port}"
        with pytest.raises(StoreError, match=pattern):
            TCPStore("127.0.0.1", first.port, is_master=True, timeout=5)


def test_multi_tenant_masters_share_one_server() -> None:
    first = master(multi_tenant=True)
    second = TCPStore("127.0.0.1", first.port, is_master=True, multi_tenant=True, timeout=5)
    assert second.server is first.server
    first.set("from_first", "1")
    first.close()  # the other tenant keeps the server alive
    assert second.get("from_first") == b"1"
    second.close()
    with pytest.raises(StoreBroken):
        TCPStore("127.0.0.1", second.port, timeout=0.3)


def test_take_over_a_bound_socket_that_is_not_listening() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    with TCPStore("127.0.0.1", port, is_master=True, master_listen_fd=sock.detach()) as m:
        m.set("k", "v")
        assert m.get("k") == b"v"
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    with pytest.raises(StoreError, match=r"bound to port \d+, expected to be bound to port 1"):
        TCPStore("127.0.0.1", 1, is_master=True, master_listen_fd=other.detach())


def test_fixed_world_size_handshake_counts_every_participant() -> None:
    sock = bind_listener(0)
    port = sock.getsockname()[1]
    sock.close()
    joined: list[TCPStore] = []
    result: list[TCPStore] = []
    ready = threading.Event()

    def run_master() -> None:
        ready.set()
        result.append(TCPStore("127.0.0.1", port, world_size=3, is_master=True, timeout=30))

    t = threading.Thread(target=run_master)
    t.start()
    ready.wait(10)
    for _ in range(2):  # clients retry until the master's server is up
        joined.append(TCPStore("127.0.0.1", port, world_size=3, timeout=30))
    t.join(30)
    assert result, "the master's constructor did not return"
    m = result[0]
    assert m.num_keys() == 1, "init/ is counted, as torch counts it"
    assert m.list_keys() == [], "but hidden from list_keys"
    for s in [*joined, m]:
        s.close()


def test_missing_workers_time_out_saying_how_many_joined() -> None:
    start = time.monotonic()
    with pytest.raises(StoreTimeout) as info:
        TCPStore("127.0.0.1", 0, world_size=2, is_master=True, timeout=0.5)
    spent = time.monotonic() - start
    assert re.search(r"Timed out after \d+ seconds waiting for clients. 1/2 clients joined.",
                     str(info.value))  # fmt: skip
    assert spent < 2.0, f"took {spent:.1f} s for a 0.5 s timeout (torch: whole seconds, > 1.5 s)"
    TCPStore("127.0.0.1", 0, world_size=2, is_master=True, timeout=0.5, wait_for_workers=False)


@pytest.mark.parametrize(
    ("kwargs", "kind", "match"),
    [
        ({"world_size": 0}, ValueError, "world size cannot be 0"),
        ({"is_master": 1}, TypeError, "is_master must be a bool"),
        ({"port": -1}, ValueError, "port must be an int in 0..65535"),
        ({"port": 70000}, ValueError, "port must be an int in 0..65535"),
    ],
)
def test_bad_arguments_fail_before_any_io(
    kwargs: dict[str, Any], kind: type[BaseException], match: str
) -> None:
    args = {"host_name": "127.0.0.1", "port": 1, "timeout": 1, **kwargs}
    with pytest.raises(kind, match=match):
        TCPStore(**args)


def test_no_server_fails_in_time_naming_the_endpoint() -> None:
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = reserved.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(StoreBroken, match=rf"127\.0\.0\.1:{port} timed out after 0\.\d s") as info:
        TCPStore("127.0.0.1", port, timeout=0.5)
    assert time.monotonic() - start < 2.0
    assert str(info.value).endswith("(connection refused; no server listening?)")
    assert info.value.reason == "refused"  # type: ignore[attr-defined]
    reserved.close()


def test_unresolvable_host_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(StoreBroken, match=r"cannot resolve host 'dnsnotexist\.invalid'") as info:
        TCPStore("dnsnotexist.invalid", 29500, timeout=30)
    assert time.monotonic() - start < 10, "a name that cannot resolve must not wait out the timeout"
    assert str(info.value).endswith("(is the host name right?)")
    assert info.value.reason == "unresolved"  # type: ignore[attr-defined]


def test_a_listener_that_never_answers_the_handshake_is_named() -> None:
    """The kernel accepts connections on a listening socket nobody serves (a stopped server, an
    unrelated service): that is not "no server listening"."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(StoreBroken, match=rf"{port} timed out after 0\.\d s") as info:
            TCPStore("127.0.0.1", port, timeout=0.5)
        assert time.monotonic() - start < 1.0
    assert str(info.value).endswith(
        "(the listener accepted the connection but never answered the handshake; "
        "is the server stopped or hung, or is another service on this port?)"
    )
    assert info.value.reason == "silent"  # type: ignore[attr-defined]


@contextlib.contextmanager
def not_a_store(reply: bytes) -> Iterator[int]:
    """A listener that reads each connection's handshake (10 bytes), answers ``reply`` and
    hangs up; yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # shut down
            with conn:
                hello = b""
                while len(hello) < 10 and (chunk := conn.recv(10 - len(hello))):
                    hello += chunk
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept
        listener.close()
        thread.join(5)
        assert not thread.is_alive()


@pytest.mark.parametrize(
    ("reply", "reason", "what"),
    [
        (b"", "closed", "the listener closed the connection during the handshake"),
        (b"HTTP", "rejected", f"ping was answered with {int.from_bytes(b'HTTP', 'little')}"),
    ],
)
def test_a_listener_that_is_not_a_store_is_named(reply: bytes, reason: str, what: str) -> None:
    with not_a_store(reply) as port, pytest.raises(StoreBroken) as info:
        TCPStore("127.0.0.1", port, timeout=0.3)
    assert what in str(info.value)
    assert str(info.value).endswith("; is a TCPStore server on this port?)")
    assert info.value.reason == reason  # type: ignore[attr-defined]


def test_timeout_leaves_the_client_usable() -> None:
    with master() as m:
        with pytest.raises(StoreTimeout, match="nonexistent key"):
            m.wait(["nonexistent key"], timedelta(milliseconds=100))
        m.set("k", "v")
        assert m.get("k") == b"v"


def test_clone_is_a_new_connection_to_the_same_data() -> None:
    with master() as m:
        c = m.clone()
        assert c is not m and c.port == m.port and c.server is None
        c.set("k", "v")
        assert m.get("k") == b"v"
        c.close()
        assert m.get("k") == b"v"


def test_64_mib_values_work() -> None:
    with master(server_process=True) as m:
        big = bytes(range(256)) * (1 << 18)
        m.set("big", big)
        with TCPStore("127.0.0.1", m.port, timeout=30) as other:
            assert other.get("big") == big


def test_limits_drop_only_the_offender() -> None:
    with master(limits=Limits(max_value=1 << 20)) as m:
        offender = TCPStore("127.0.0.1", m.port, timeout=5)
        # The server resets the offender mid-send or right after: the error surfaces on this
        # fire-and-forget set or on the next call, whichever meets the reset first.
        with pytest.raises(StoreBroken, match=rf"127\.0\.0\.1:{m.port}: .*(closed|reset)"):
            offender.set("too-big", b"x" * (2 << 20))
            offender.get("anything")
        m.set("fine", b"x" * (1 << 20))
        assert m.get("fine") == b"x" * (1 << 20)
        offender.close()


def test_client_reconnects_after_a_server_restart_on_the_same_port() -> None:
    sock = bind_listener(0)
    port = sock.getsockname()[1]
    server = ServerProcess(sock)
    client = TCPStore("127.0.0.1", port, timeout=10)
    client.set("k", "v1")
    assert client.get("k") == b"v1"
    server.stop()
    with pytest.raises(StoreBroken):
        client.get("k")
    server = ServerProcess(bind_listener(port))
    try:
        client.set("k", "v2")  # a new connection to the restarted (empty) server
        assert client.get("k") == b"v2"
    finally:
        client.close()
        server.stop()


def test_server_in_its_own_process_stops_with_its_owner() -> None:
    m = master(server_process=True)
    proc = m.server.proc  # type: ignore[union-attr]
    m.set("k", "v")
    m.close()
    assert proc.poll() is not None, "the server process outlived its master"


def _torch_rank(port: int, rank: int, out: list[object]) -> None:
    from storeharness.stores.torch_adapter import dist

    store = dist.TCPStore("127.0.0.1", port, 5, False, timedelta(seconds=30))
    store.set(f"rank{rank}", f"torch {rank}")
    store.barrier("all", 5, timedelta(seconds=30))
    out.append(sorted(store.multi_get([f"rank{r}" for r in range(5)])))


def test_mixed_world_of_torch_and_our_clients() -> None:
    if why := torch_missing():
        pytest.skip(why)
    sock = bind_listener(0)
    port = sock.getsockname()[1]
    sock.close()
    out: list[object] = []
    masters: list[TCPStore] = []
    # torch's client holds the GIL in some calls: our server runs in a process of its own.
    t_master = threading.Thread(
        target=lambda: masters.append(
            TCPStore("127.0.0.1", port, 5, True, timeout=30, server_process=True)
        )
    )
    t_master.start()
    threads = [threading.Thread(target=_torch_rank, args=(port, r, out)) for r in (1, 2)]
    for t in threads:
        t.start()
    ours = [TCPStore("127.0.0.1", port, world_size=5, timeout=30) for _ in (3, 4)]
    t_master.join(30)
    assert masters, "the master never saw all 5 participants (torch's clients count too)"
    everyone = [masters[0], *ours]
    for rank, store in zip((0, 3, 4), everyone, strict=True):
        store.set(f"rank{rank}", f"ours {rank}")
    barrier = [threading.Thread(target=s.barrier, args=("all", 5, 30)) for s in everyone]
    for t in barrier:
        t.start()
    for t in barrier + threads:
        t.join(30)
    expected = sorted([b"ours 0", b"torch 1", b"torch 2", b"ours 3", b"ours 4"])
    assert out == [expected, expected]
    assert sorted(ours[0].multi_get([f"rank{r}" for r in range(5)])) == expected
    for s in everyone:
        s.close()


@pytest.mark.parametrize("accelerate", [None, False], ids=["c", "pure"])
def test_closing_a_handle_wakes_the_call_blocked_on_it(accelerate: bool | None) -> None:
    # What the harness does to a thread rank stuck past its time limit: it closes the rank's
    # handle, and the blocked call must end (with StoreClosed), not stay blocked in recv.
    master = TCPStore("127.0.0.1", 0, is_master=True, timeout=60, accelerate=accelerate)
    client = TCPStore("127.0.0.1", master.port, timeout=60, accelerate=accelerate)
    outcome: list[BaseException] = []
    blocked = threading.Event()

    def waiter() -> None:
        blocked.set()
        try:
            client.wait(["never-set"], timeout=0)  # no limit
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=waiter, daemon=True)
    try:
        thread.start()
        assert blocked.wait(10) and thread.native_id is not None
        _until_asleep_in_a_system_call(thread.native_id)  # inside the wait, not before it
        start = time.monotonic()
        client.close()
        thread.join(10)
        assert not thread.is_alive(), "the wait stayed blocked after close()"
        assert time.monotonic() - start < 5
        assert len(outcome) == 1 and isinstance(outcome[0], StoreClosed), outcome
    finally:
        client.close()
        master.close()


def _until_asleep_in_a_system_call(tid: int, limit: float = 10.0) -> None:
    """Wait until thread ``tid`` of this process sleeps in a system call (Linux /proc)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        with open(f"/proc/self/task/{tid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/self/task/{tid}/syscall") as f:
            call = f.read().split()[0]
        if state == "S" and call not in ("running", "-1"):
            return
        time.sleep(0.001)  # polling another thread's state; bounded by ``limit``
    raise AssertionError(f"thread {tid} never went to sleep in a system call")

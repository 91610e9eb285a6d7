"""A bad peer costs only its own connection; everyone else carries on, memory stays bounded."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import random
import resource
import socket
import threading
from collections.abc import Iterator

import pytest

from storeharness.harness._parties import process_parties
from storeharness.stores import StoreBroken, StoreError, TCPStore
from storeharness.stores.tcp import Limits, ServerProcess, TCPServer, bind_listener
from storeharness.stores.tcp.codec import EXT_HELLO, MAGIC, Query, encode_request

HELLO = encode_request(Query.VALIDATE, MAGIC)


@pytest.fixture
def server() -> Iterator[TCPServer]:
    srv = TCPServer(bind_listener(0)).start()
    yield srv
    srv.stop()


def raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    return sock


def closed_by_server(sock: socket.socket, within: float = 30.0) -> bool:
    """Drain ``sock``: True once the server closes or resets it, False if it is still open
    after ``within`` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(1 << 16):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


BAD_INPUTS = {
    "wrong magic": encode_request(Query.VALIDATE, MAGIC ^ 1) + encode_request(Query.PING, 1),
    "garbage": b"\xde\xad\xbe\xef" * 16,
    "no handshake": encode_request(Query.SET, b"/k", b"v"),
    "unknown command": HELLO + b"\x63",
    "length 2**63": HELLO + b"\x01" + (2**63).to_bytes(8, "little"),
    "key count 2**63": HELLO + b"\x05" + (2**63).to_bytes(8, "little"),
    "second validate": HELLO + HELLO,
    "extension unasked": HELLO + encode_request(Query.WAIT_GET, b"/k"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_costs_only_its_connection(
    server: TCPServer, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = TCPStore("127.0.0.1", server.port, timeout=30)
    good.set("before", "1")
    bad = raw(server.port)
    with caplog.at_level(logging.WARNING, "storeharness.stores.tcp.server"):
        bad.sendall(BAD_INPUTS[name])
        assert closed_by_server(bad)
    bad.close()
    assert "dropping connection" in caplog.text
    assert good.get("before") == b"1"
    assert good.add("after", 1) == 1
    good.close()


def test_truncated_idle_and_silent_clients_do_not_stall_others(server: TCPServer) -> None:
    silent = raw(server.port)
    half = raw(server.port)
    half.sendall(HELLO + encode_request(Query.SET, b"/k", b"x" * 100)[:20])  # never finished
    good = TCPStore("127.0.0.1", server.port, timeout=30)
    for i in range(100):
        assert good.add("n", 1) == i + 1
    half.close()  # a truncated frame, then gone: nothing is applied
    silent.close()
    assert not good.check(["k"])
    good.close()


# Every limit below its default, and a request just over each one (none over the defaults).
CHILD_LIMITS = Limits(
    max_key=16, max_value=64, max_keys=4, max_request=48, max_reply=4 * 72, max_waits=2,
    max_connections=3, max_buffered=40, handshake_timeout=0.5,
)  # fmt: skip
_SOME_KEYS = b"".join(encode_request(Query.SET, b"/key%04d" % i, b"") for i in range(20))
OVER_THE_LIMIT = {
    "max_key": [HELLO + encode_request(Query.GET, b"k" * 17)],
    "max_value": [HELLO + encode_request(Query.SET, b"k", b"v" * 65)],
    "max_keys": [HELLO + encode_request(Query.CHECK, [b"k"] * 5)],
    # 58 bytes announced, only the header sent: refused before the body is buffered
    "max_request": [HELLO + encode_request(Query.SET, b"k", b"v" * 40)[:-40]],
    # 20 keys listed: a reply of 8 + 20 * 16 bytes and more
    "max_reply": [HELLO + _SOME_KEYS + encode_request(Query.LIST_KEYS)],
    "max_waits": [HELLO + b"".join(encode_request(Query.WAIT, [b"/w%d" % i]) for i in range(3))],
    # with the good client: the fourth connection is refused
    "max_connections": [HELLO, HELLO, HELLO],
    # 48 bytes announced (within max_request), only the header sent
    "max_buffered": [HELLO + encode_request(Query.SET, b"k", b"v" * 30)[:-30]],
    "handshake_timeout": [b""],  # connects, says nothing
}


def test_a_server_process_enforces_every_limit_it_was_given() -> None:
    assert set(OVER_THE_LIMIT) == {f.name for f in dataclasses.fields(Limits)}, "a limit untested"
    server = ServerProcess(bind_listener(0), CHILD_LIMITS)
    try:
        good = TCPStore("127.0.0.1", server.port, timeout=30)
        good.set("k" * 15, b"v" * 64)  # "/" + 15: exactly max_key; exactly max_value
        # exactly max_keys, and a reply of exactly max_reply
        assert good.multi_get(["k" * 15] * 4) == [b"v" * 64] * 4
        ignored = []
        for name, sends in OVER_THE_LIMIT.items():
            opened = [raw(server.port) for _ in sends]
            try:
                for sock, data in zip(opened, sends, strict=True):
                    sock.sendall(data)
                if not closed_by_server(opened[-1], within=10):
                    ignored.append(name)
            finally:
                for sock in opened:
                    sock.close()
        assert ignored == [], f"the server process did not get these limits: {ignored}"
        assert good.get("k" * 15) == b"v" * 64  # the offenders cost only their connections
        good.close()
    finally:
        server.stop()


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def test_slow_reader_is_paused_and_memory_stays_bounded() -> None:
    server = ServerProcess(bind_listener(0))
    try:
        good = TCPStore("127.0.0.1", server.port, timeout=30)
        good.set("big", b"x" * (256 << 10))
        assert good.check(["big"])  # applied (a set has no reply) before the greedy asks
        baseline = _peak_rss_mib(server.proc.pid)
        greedy = raw(server.port)
        greedy.sendall(HELLO + encode_request(Query.PING, 1))
        request = encode_request(Query.GET, b"/big") * 20_000  # 5 GiB of replies, never read
        greedy.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            greedy.send(request)
        for i in range(200):  # everyone else carries on meanwhile
            assert good.add("still", 1) == i + 1
        assert good.get("big") == b"x" * (256 << 10)
        grown = _peak_rss_mib(server.proc.pid) - baseline
        assert grown < 64, f"server buffered {grown:.0f} MiB for a reader that never reads"
        greedy.close()
        good.close()
    finally:
        server.stop()


def malformed(rng: random.Random) -> bytes:
    """One malformed input: garbage, a broken handshake, or a request mutated to break it."""
    key = rng.choice([b"/k", b"/counter", b"x" * rng.randint(0, 40)])
    requests = [
        encode_request(Query.SET, key, b"v" * rng.randint(0, 30)),
        encode_request(Query.ADD, key, rng.randint(-5, 5)),
        encode_request(Query.WAIT, [key, b"/other"]),
        encode_request(Query.COMPARE_SET, key, b"a", b"b"),
        encode_request(Query.CHECK, [key]),
        encode_request(Query.MULTI_GET, [key, key]),
        encode_request(Query.BARRIER, key, rng.randint(1, 4)),
        encode_request(Query.QUEUE_PUSH, key, b"q"),
    ]
    body = rng.choice(requests)
    if rng.random() < 0.01:  # costly for the server by design: one input in a hundred
        return rng.choice(HOSTILE)
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randbytes(rng.randint(1, 64))
    if kind == 1:
        return encode_request(Query.VALIDATE, rng.getrandbits(32)) + body
    if kind == 2:  # truncated
        return HELLO + body[: rng.randint(1, max(1, len(body) - 1))]
    if kind == 3:  # a length or count field blown up
        data = bytearray(HELLO + body)
        at = len(HELLO) + 1
        data[at : at + 8] = rng.choice([2**63, 2**64 - 1, 2**40, 131073]).to_bytes(8, "little")
        return bytes(data)
    if kind == 4:  # bit flips
        data = bytearray(HELLO + body)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 5:
        return HELLO + bytes([rng.choice([19, 20, 63, 64, 65, 66, 200, 255])]) + body[1:]
    if kind == 6:
        return body  # no handshake
    return HELLO + encode_request(Query.PING, EXT_HELLO) + rng.randbytes(rng.randint(1, 32))


#: Well-formed but hostile: a counter too long for int64 under a barrier, a flood of parked
#: waits (past max_waits), a multi_get naming one large value many times (amplification).
HOSTILE = [
    HELLO
    + encode_request(Query.SET, b"/fuzz-bk", b"9" * 5000)
    + encode_request(Query.ADD, b"/fuzz-bk", 1),
    HELLO + encode_request(Query.BARRIER, b"/fuzz-bk", 1 << 40),
    HELLO + encode_request(Query.WAIT, [b"/fuzz-never"]) * 1030,
    HELLO + encode_request(Query.MULTI_GET, [b"/fuzz-big"] * 500),
    HELLO + encode_request(Query.SET, b"/fuzz-big", b"b" * (64 << 10)),
]


def _legit(opener: object, rank: int, port: int) -> tuple[int, int]:
    store = TCPStore("127.0.0.1", port, timeout=60)
    adds = errors = 0
    while not store.check(["fuzz-done"]):
        try:
            store.add(f"legit/{rank}", 1)
            adds += 1
            store.set(f"value/{rank}", str(adds))
            if store.get(f"value/{rank}") != str(adds).encode():
                errors += 1
        except Exception:
            errors += 1
    total = store.add(f"legit/{rank}", 0)
    store.close()
    return (adds if total == adds else -1), errors


FUZZ_INPUTS = int(os.environ.get("STOREHARNESS_FUZZ_INPUTS", "100000"))
TCP_SHARE = 2000  # through real TCP connects (the accept path); the rest through socketpairs


def test_fuzz_while_legitimate_clients_run(server: TCPServer) -> None:
    logging.getLogger("storeharness.stores.tcp.server").setLevel(
        logging.ERROR
    )  # 100k drop warnings
    port = server.port
    results: list[tuple[int, int]] = []
    legit = threading.Thread(
        target=lambda: results.extend(process_parties(_legit, 3, (None, port), timeout=600))
    )
    legit.start()
    rng = random.Random(20261122)
    window: collections.deque[object] = collections.deque()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        for i in range(FUZZ_INPUTS):
            data = malformed(rng)
            if i < TCP_SHARE:
                sock = raw(port)
            else:
                sock, theirs = socket.socketpair()
                window.append(server.adopt(theirs))
                if len(window) > 256:
                    window.popleft().result(30)  # type: ignore[attr-defined]
            with contextlib.suppress(OSError):  # the server may drop us mid-send
                sock.sendall(data)
            sock.close()
        while window:
            window.popleft().result(30)  # type: ignore[attr-defined]
    finally:
        done = TCPStore("127.0.0.1", port, timeout=30)
        done.set("fuzz-done", "1")
        legit.join(120)
        logging.getLogger("storeharness.stores.tcp.server").setLevel(logging.NOTSET)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert not legit.is_alive()
    assert len(results) == 3 and all(adds > 0 for adds, _ in results), results
    assert [errors for _, errors in results] == [0, 0, 0], "legitimate clients saw errors"
    assert done.add("legit/0", 0) == results[0][0]
    assert grown_mib < 256, f"memory grew {grown_mib:.0f} MiB during the fuzz"
    done.close()


def _adder(opener: object, rank: int, port: int, clients: int, adds: int) -> int:
    stores = [TCPStore("127.0.0.1", port, timeout=120) for _ in range(clients)]
    threads = [
        threading.Thread(target=lambda s=s: [s.add("total", 1) for _ in range(adds)])
        for s in stores
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    return clients


def test_1024_concurrent_clients_each_add_100() -> None:
    server = ServerProcess(bind_listener(0))
    try:
        clients = process_parties(_adder, 8, (None, server.port, 128, 100), timeout=600)
        assert sum(clients) == 1024
        check = TCPStore("127.0.0.1", server.port, timeout=30)
        assert check.add("total", 0) == 1024 * 100
        check.close()
    finally:
        server.stop()


def test_server_gone_mid_wait_is_reported(server: TCPServer) -> None:
    waiter = TCPStore("127.0.0.1", server.port, timeout=30)
    errors: list[BaseException] = []
    started = threading.Event()

    def wait() -> None:
        started.set()
        try:
            waiter.wait(["never"], 30)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    started.wait(10)
    server.stop()
    t.join(30)
    assert len(errors) == 1 and isinstance(errors[0], StoreBroken), errors
    assert "closed by the server" in str(errors[0]) or "connection lost" in str(errors[0])


def test_bind_listener_takes_a_host_and_keeps_torchs_every_interface_default() -> None:
    everywhere = bind_listener(0)
    assert everywhere.getsockname()[0] in ("::", "0.0.0.0")  # as a torch TCPStore master
    everywhere.close()
    loopback = bind_listener(0, host="127.0.0.1")
    assert loopback.getsockname()[0] == "127.0.0.1"
    with pytest.raises(StoreError, match=r"127\.0\.0\.1\]:\d+: Address already in use"):
        bind_listener(loopback.getsockname()[1], host="127.0.0.1")
    loopback.close()
    if socket.has_ipv6:
        try:
            v6 = bind_listener(0, host="::1")
        except StoreError as exc:
            pytest.skip(f"no IPv6 loopback here: {exc}")
        assert v6.getsockname()[0] == "::1"
        v6.close()
    with pytest.raises(StoreError, match=r"cannot listen on no-such-host\.invalid:0"):
        bind_listener(0, host="no-such-host.invalid")

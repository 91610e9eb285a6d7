"""The opt-in token, the standalone server's command line, and close() against a call in flight."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from storeharness.stores import StoreBroken, TCPStore
from storeharness.stores.tcp import ServerProcess, bind_listener
from storeharness.stores.tcp._token import TOKEN_ENV
from storeharness.stores.tcp.codec import (
    EXT_AUTH,
    EXT_HELLO,
    MAGIC,
    STATUS_ERROR,
    STATUS_OK,
    Limits,
    Query,
    encode_request,
    parse_bytes,
)

from ..backends import torch_missing
from .test_tcpstore import _until_asleep_in_a_system_call

SECRET = "correct horse battery staple"
PATHS = pytest.mark.parametrize("accelerate", [None, False], ids=["c", "pure"])


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


@contextlib.contextmanager
def guarded(accelerate: bool | None = None) -> Iterator[TCPStore]:
    with TCPStore(
        "127.0.0.1", 0, is_master=True, timeout=20, token=SECRET, accelerate=accelerate
    ) as master:
        yield master


@PATHS
def test_a_token_lets_our_clients_in_and_keeps_others_out(
    accelerate: bool | None, caplog: pytest.LogCaptureFixture
) -> None:
    with guarded(accelerate) as master, caplog.at_level(logging.DEBUG):
        master.set("k", "v")
        with TCPStore("127.0.0.1", master.port, timeout=20, token=SECRET) as friend:
            assert friend.get("k") == b"v"
            assert friend.add("n", 2) == 2
        with pytest.raises(StoreBroken, match="requires a token and none was given") as none:
            TCPStore("127.0.0.1", master.port, timeout=20, accelerate=accelerate)
        with pytest.raises(StoreBroken, match="refused our token") as wrong:
            TCPStore("127.0.0.1", master.port, timeout=20, token="guess")
        assert none.value.reason == wrong.value.reason == "token"  # type: ignore[attr-defined]
        for exc in (none.value, wrong.value):  # at once: retrying cannot help
            assert "timed out" not in str(exc)
        assert master.get("k") == b"v"
    assert SECRET not in caplog.text and "guess" not in caplog.text
    assert SECRET not in repr(master)


def test_the_environment_variable_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    with TCPStore("127.0.0.1", 0, is_master=True, timeout=20) as master:
        with TCPStore("127.0.0.1", master.port, timeout=20) as friend:
            friend.set("k", "v")
        monkeypatch.delenv(TOKEN_ENV)
        with pytest.raises(StoreBroken, match=TOKEN_ENV):
            TCPStore("127.0.0.1", master.port, timeout=20)
    with pytest.raises(ValueError, match="token= must not be empty"):
        TCPStore("127.0.0.1", 0, is_master=True, token="")


def test_a_guarded_server_serves_nothing_before_the_token() -> None:
    with guarded() as master, socket.create_connection(("127.0.0.1", master.port)) as raw:
        hello = encode_request(Query.VALIDATE, MAGIC) + encode_request(Query.PING, EXT_HELLO)
        raw.sendall(hello)
        assert _recv(raw, 4) == EXT_AUTH.to_bytes(4, "little")
        raw.sendall(encode_request(Query.LIST_KEYS))
        reply = _recv_all(raw)
        assert reply[0] == STATUS_ERROR
        assert b"requires a token" in parse_bytes(reply, 1)[0]
    with guarded() as master, socket.create_connection(("127.0.0.1", master.port)) as raw:
        raw.sendall(hello + encode_request(Query.AUTH, SECRET.encode()))
        assert _recv(raw, 5) == EXT_AUTH.to_bytes(4, "little") + bytes([STATUS_OK])
        raw.sendall(encode_request(Query.GETNUMKEYS))
        assert _recv(raw, 9)[0] == STATUS_OK


def _recv(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(20)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def _recv_all(sock: socket.socket) -> bytes:
    sock.settimeout(20)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


@pytest.mark.skipif(torch_missing() is not None, reason=str(torch_missing()))
def test_torch_clients_are_refused_only_while_a_token_is_set() -> None:
    from storeharness.stores.torch_adapter import dist

    with guarded() as master, pytest.raises(Exception, match=r"(?i)closed|reset|recv|connect"):
        dist.TCPStore("127.0.0.1", master.port, is_master=False, timeout=timedelta(seconds=1))
    with TCPStore("127.0.0.1", 0, is_master=True, timeout=20) as open_master:
        torch_client = dist.TCPStore(
            "127.0.0.1", open_master.port, is_master=False, timeout=timedelta(seconds=10)
        )
        torch_client.set("k", "v")
        assert open_master.get("k") == b"v"


def test_a_server_process_gets_the_token_but_not_on_its_command_line() -> None:
    server = ServerProcess(bind_listener(0, host="127.0.0.1"), token=SECRET)
    try:
        cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
        assert SECRET.encode() not in cmdline
        with TCPStore("127.0.0.1", server.port, timeout=20, token=SECRET) as friend:
            friend.set("k", "v")
        with pytest.raises(StoreBroken, match="requires a token"):
            TCPStore("127.0.0.1", server.port, timeout=20)
    finally:
        server.stop()


# --------------------------------------------------------------------------- the standalone server

SERVER = [sys.executable, "-m", "storeharness.stores.tcp"]


def test_help_names_the_program_as_it_is_run() -> None:
    out = subprocess.run([*SERVER, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.startswith("usage: python -m storeharness.stores.tcp ")
    assert "--host" in out.stdout and TOKEN_ENV in out.stdout
    # each limit says its unit and default: "--max-value BYTES ... (default: 1073741824)"
    assert "--max-value BYTES" in out.stdout and "--handshake-timeout SECONDS" in out.stdout
    assert out.stdout.count("(default:") >= len(dataclasses.fields(Limits)), out.stdout


def test_a_port_in_use_is_one_line_and_a_failure_status() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [*SERVER, "--port", str(port)], capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{port}: Address already in use" in lines[0], out.stderr
    # the hint is the command line's, not the Python API's (port=0, multi_tenant=True)
    assert "--port 0" in lines[0] and "multi_tenant" not in lines[0], lines[0]


def test_the_standalone_server_listens_on_loopback_by_default() -> None:
    proc = subprocess.Popen(
        [*SERVER, "--port", "0"], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving TCPStore on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        with TCPStore("127.0.0.1", port, timeout=20) as client:
            client.set("k", "v")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == 0


def test_a_tcpstore_master_still_listens_on_every_interface() -> None:
    with TCPStore("127.0.0.1", 0, is_master=True, timeout=20) as master:
        assert master.server is not None
        assert master.server.sock.getsockname()[0] in ("::", "0.0.0.0")  # type: ignore[union-attr]


# --------------------------------------------------------------------------- close()


@PATHS
def test_close_leaves_the_fd_to_the_call_that_holds_the_connection(
    accelerate: bool | None,
) -> None:
    """The C path reads the raw fd without the GIL: close() must not close that fd (whose
    number a new file could then take) until the call lets go of the client's lock."""
    with TCPStore("127.0.0.1", 0, is_master=True, timeout=20, accelerate=accelerate) as master:
        client = TCPStore("127.0.0.1", master.port, timeout=20, accelerate=accelerate)
        transport = client._client
        sock = transport._sock
        assert sock is not None
        transport.lock.acquire()  # as a call in flight holds it
        closer = threading.Thread(target=client.close, daemon=True)
        try:
            closer.start()
            assert closer.native_id is not None
            _until_asleep_in_a_system_call(closer.native_id)  # blocked on the lock
            assert closer.is_alive() and sock.fileno() != -1, "closed under a call in flight"
        finally:
            transport.lock.release()
        closer.join(10)
        assert not closer.is_alive() and sock.fileno() == -1

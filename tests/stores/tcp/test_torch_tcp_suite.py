"""torch's TCPStore tests (test_store.py's TCPStoreTest and kin) over every TCP pairing.

These cases are about TCPStore's constructor (masters, clients, world sizes, sockets), so they
run on the harness's TCP targets as pairings of a master kind and a client kind: ``tcp`` (ours
and ours), ``tcp-pure``, ``torch-tcp`` (torch's and torch's, the reference), ``torch-client``
(our master, torch's client), ``ours-on-torch`` and ``ours-on-torch-legacy`` (torch's master,
our client).  Assertions are torch's, in torch's terms (``RuntimeError`` and its messages).
Every master listens on a loopback socket handed to it, except where binding is the point.
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from storeharness.harness.targets import torch_missing
from storeharness.harness.targets.server import loopback_listener
from storeharness.stores import TCPStore

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Pair:
    """A TCP target as its master kind and its client kind."""

    target: str
    master: str  # "ours", "ours-pure", "torch", "torch-legacy"
    client: str  # "ours", "ours-pure", "torch"

    @property
    def torch(self) -> bool:
        return "torch" in (self.master, self.client)

    def __str__(self) -> str:
        return self.target


PAIRS = [
    Pair("tcp", "ours", "ours"),
    Pair("tcp-pure", "ours-pure", "ours-pure"),
    Pair("torch-tcp", "torch", "torch"),
    Pair("torch-client", "ours", "torch"),
    Pair("ours-on-torch", "torch", "ours"),
    Pair("ours-on-torch-legacy", "torch-legacy", "ours"),
]
#: One pairing per master kind (for the cases about the master alone).
MASTERS = [p for p in PAIRS if p.target in ("tcp", "tcp-pure", "torch-tcp", "ours-on-torch-legacy")]
#: One pairing per client kind (for the cases about the client alone).
CLIENTS = [p for p in PAIRS if p.target in ("tcp", "tcp-pure", "torch-tcp")]


def make(kind: str, port: int, **kwargs: Any) -> Any:
    """A TCPStore of ``kind`` (ours, ours-pure, torch, torch-legacy) with torch's signature."""
    kwargs.setdefault("timeout", timedelta(seconds=30))
    if kind.startswith("torch"):
        dist: Any = importlib.import_module("torch.distributed")
        return dist.TCPStore(HOST, port, use_libuv=kind == "torch", **kwargs)
    if kind == "ours-pure":
        kwargs["accelerate"] = False
    return TCPStore(HOST, port, **kwargs)


def close(*stores: Any) -> None:
    """Close ours; torch's close when their last reference goes."""
    for store in stores:
        if isinstance(store, TCPStore):
            store.close()


@contextmanager
def master(pair: Pair, **kwargs: Any) -> Iterator[tuple[Any, int]]:
    """``pair``'s master on a loopback socket (it takes the socket over), and its port."""
    if pair.torch and (why := torch_missing()):
        pytest.skip(why)
    sock = loopback_listener()
    port = sock.getsockname()[1]
    store = make(pair.master, port, is_master=True, master_listen_fd=sock.detach(), **kwargs)
    try:
        yield store, port
    finally:
        close(store)


def client(pair: Pair, port: int, **kwargs: Any) -> Any:
    if pair.client == "ours" and pair.master == "torch-legacy":
        kwargs["use_libuv"] = False
    return make(pair.client, port, **kwargs)


ids = str


# ----------------------------------------------------------------------------- the master


@pytest.mark.parametrize("pair", MASTERS, ids=ids)
def test_address_already_in_use(pair: Pair) -> None:
    with master(pair) as (_, port):
        pattern = rf"^The server socket has failed to listen on any local .*{port}"
        with pytest.raises(RuntimeError, match=pattern):
            make(pair.master, port, world_size=1, is_master=True)


@pytest.mark.parametrize("pair", MASTERS, ids=ids)
def test_multitenancy(pair: Pair) -> None:
    with master(pair, world_size=1, multi_tenant=True) as (first, port):
        second = make(pair.master, port, world_size=1, is_master=True, multi_tenant=True)
        try:
            first.set("from_first", "1")
            assert second.get("from_first") == b"1"
            assert second.libuvBackend == (pair.master != "torch-legacy")
        finally:
            close(second)


@pytest.mark.parametrize("pair", MASTERS, ids=ids)
def test_take_over_listen_socket(pair: Pair) -> None:
    if pair.torch and (why := torch_missing()):
        pytest.skip(why)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))  # bound, not listening: the master listens on it
    port = sock.getsockname()[1]
    store = make(pair.master, port, world_size=1, is_master=True, master_listen_fd=sock.detach())
    try:
        store.set("key", "value")
        assert store.get("key") == b"value"
    finally:
        close(store)


@pytest.mark.parametrize("pair", MASTERS, ids=ids)
def test_store_timeout_on_missing_clients(pair: Pair) -> None:
    if pair.torch and (why := torch_missing()):
        pytest.skip(why)
    message = r"Timed out after \d+ seconds waiting for clients. \d+/\d+ clients joined."
    for timeout in (timedelta(seconds=1),):  # torch counts whole seconds: it fires after ~2 s
        sock = loopback_listener()
        with pytest.raises(RuntimeError, match=message):
            make(pair.master, sock.getsockname()[1], world_size=2, is_master=True,
                 timeout=timeout, master_listen_fd=sock.detach())  # fmt: skip
    with master(pair, world_size=2, timeout=timedelta(seconds=1), wait_for_workers=False):
        pass  # not waiting for the workers: no error


@pytest.mark.parametrize("pair", MASTERS, ids=ids)
def test_agent_store(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    with master(pair, world_size=1) as (first, port):
        with pytest.raises(RuntimeError):
            make(pair.master, port, world_size=1, is_master=True)
        monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "1")
        monkeypatch.setenv("MASTER_PORT", str(port))
        agent = make(pair.master, port, world_size=1, is_master=True)  # a client, then
        try:
            assert agent.port == port
            agent.set("from_agent", "1")
            assert first.get("from_agent") == b"1"
        finally:
            close(agent)


# ------------------------------------------------------------------ master and clients


@pytest.mark.parametrize("pair", PAIRS, ids=ids)
def test_numkeys_delkeys(pair: Pair) -> None:
    with master(pair, world_size=1) as (_, port):
        fs = client(pair, port)
        try:
            assert fs.num_keys() == 1, "the master's init/ key"
            for amount in (1, 2, 3):
                fs.add("key", amount)
            fs.set("key0", "value0")
            fs.add("key3", 1)
            fs.set("key1", "value1")
            assert fs.num_keys() == 5
            fs.delete_key("key")
            assert fs.num_keys() == 4
            fs.set_timeout(timedelta(seconds=0.25))  # torch's test: 2 s
            with pytest.raises(RuntimeError):
                fs.get("key")
            fs.delete_key("key0")
            fs.delete_key("key3")
            assert fs.num_keys() == 2
            fs.set("key4", "value2")
            assert fs.num_keys() == 3
            assert fs.get("key1") == b"value1"
            assert fs.get("key4") == b"value2"
        finally:
            close(fs)


def _multi_worker(pair: Pair, world_size: int | None) -> None:
    with master(pair, world_size=world_size, wait_for_workers=False) as (server, port):
        server.set("key", "value")
        for i in range(world_size or 1):  # one after the other, as torch's test
            worker = client(pair, port, world_size=world_size, timeout=timedelta(seconds=10))
            try:
                assert worker.get("key") == b"value"
                worker.set(f"new_key{i}", f"new_value{i}")
                got = worker.compare_set(f"new_key{i}", f"new_value{i}", f"next_value{i}")
                assert got == f"next_value{i}".encode()
            finally:
                close(worker)


@pytest.mark.parametrize("pair", PAIRS, ids=ids)
def test_multi_worker_with_fixed_world_size(pair: Pair) -> None:
    _multi_worker(pair, 5)


@pytest.mark.parametrize("pair", PAIRS, ids=ids)
def test_multi_worker_with_nonfixed_world_size(pair: Pair) -> None:
    _multi_worker(pair, None)


@pytest.mark.parametrize("pair", PAIRS, ids=ids)
def test_repr(pair: Pair) -> None:
    # torch's regexes expect "localhost"; here reverse DNS gives numeric addresses.  torch prints
    # an IPv4 peer as [::ffff:127.0.0.1]; ours prints the socket's own 127.0.0.1
    # (docs/differences.md, repr).
    host = r"(\[[^\]]+\]|[0-9.]+)"
    connection = rf"TCPStore\(client=TCPClient\(SocketImpl\(fd=\d+, addr={host}:\d+, "
    with master(pair, world_size=1) as (server, port):
        peer = client(pair, port)
        try:
            remote = rf"remote={host}:{port}\)\), "
            master_shape = rf"{connection}{remote}server=TCPServer\(port={port}\)\)$"
            assert re.match(master_shape, repr(server)), repr(server)
            assert re.match(rf"{connection}{remote}server=<nullptr>\)$", repr(peer)), repr(peer)
        finally:
            close(peer)


# ------------------------------------------------------------------------- the client


@pytest.mark.parametrize("pair", CLIENTS, ids=ids)
def test_world_size_0_raises(pair: Pair) -> None:
    if pair.torch and (why := torch_missing()):
        pytest.skip(why)
    with pytest.raises(ValueError, match="TCPStore world size cannot be 0"):
        make(pair.client, 0, world_size=0, is_master=False)


#: torch's handshake: VALIDATE (opcode 0, magic 0x3C85F7CE), then PING (opcode 13) + a nonce.
VALIDATE = b"\x00" + struct.pack("<I", 0x3C85F7CE)


def _fake_server(listener: socket.socket, seen: dict[str, Any]) -> None:
    """Accept one client, read its handshake into ``seen``, echo the ping's nonce, hang up."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(10)
        data = b""
        while len(data) < 10 and (chunk := conn.recv(10 - len(data))):
            data += chunk
        seen["validate"], seen["ping"] = data[:5], data[5:6]
        seen["nonce"] = struct.unpack("<i", data[6:10])[0]
        conn.sendall(data[6:10])


@pytest.mark.parametrize(
    ("pair", "extensions"),
    [(p, None) for p in CLIENTS] + [(PAIRS[0], False)],
    ids=["tcp", "tcp-pure", "torch-tcp", "tcp-without-extensions"],
)
def test_client_connect(pair: Pair, extensions: bool | None) -> None:
    if pair.torch and (why := torch_missing()):
        pytest.skip(why)
    listener = loopback_listener()
    seen: dict[str, Any] = {}
    server = threading.Thread(target=_fake_server, args=(listener, seen), daemon=True)
    server.start()
    kwargs: dict[str, Any] = {} if extensions is None else {"extensions": extensions}
    try:
        store = make(pair.client, listener.getsockname()[1], world_size=2,
                     wait_for_workers=False, timeout=timedelta(seconds=2), **kwargs)  # fmt: skip
        close(store)
    finally:
        server.join(10)
        listener.close()
    assert seen["validate"] == VALIDATE
    assert seen["ping"] == b"\x0d"
    if pair.client == "torch" or extensions is False:
        assert seen["nonce"] == os.getpid()
    else:  # our client asks for its extensions with a nonce no pid can be (docs/differences.md)
        from storeharness.stores.tcp.codec import EXT_HELLO

        assert seen["nonce"] == EXT_HELLO

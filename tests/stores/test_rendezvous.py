"""rendezvous(url) over our stores: every case of torch's Rendezvous*Test, and the registry.

Endpoints are loopback only: a rank-0 master binds port 0 (from a ``tcp://…:0`` URL or a master
made first, that rendezvous ranks then share as multi-tenant), and ``dnsnotexist`` never
resolves.  Waits are bounded; nothing waits on a sleep.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import multiprocess
import pytest

from storeharness.stores import (
    HashStore,
    Store,
    StoreBroken,
    StoreError,
    StoreTimeout,
    TCPStore,
    _rendezvous,
    register_rendezvous_handler,
    rendezvous,
)

ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "USE_LIBUV")
AGENT = "TORCHELASTIC_USE_AGENT_STORE"
LIMIT = 30.0  # seconds: the bound on anything that should take milliseconds
SHORT = timedelta(seconds=2)  # a store timeout for cases that must not wait at all
FORK = multiprocess.get_context("forkserver")

# A broken rendezvous (a rank 0 that connects instead of serving) waits out the store timeout:
# cases that check the 30 min default cannot shorten it, so every case gets a time limit.
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*ENV, AGENT):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def registry() -> Iterator[None]:
    """Put our handler registry back as it was after a test that registers schemes."""
    saved = dict(_rendezvous._handlers)
    yield
    with _rendezvous._handlers_lock:
        _rendezvous._handlers.clear()
        _rendezvous._handlers.update(saved)


def first(url: str | bytes, *args: Any, **kwargs: Any) -> tuple[Store, int, int]:
    return next(rendezvous(url, *args, **kwargs))


def tcp(store: Store) -> TCPStore:
    assert isinstance(store, TCPStore), store
    return store


def server_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("tcpstore-")}


def exactly(text: str) -> str:
    return f"^{re.escape(text)}$"


def init_error(scheme: str, msg: str) -> str:
    return exactly(f"Error initializing torch.distributed using {scheme}:// rendezvous: {msg}")


# ----------------------------------------------------------------- RendezvousTest, the call


def test_unknown_handler() -> None:
    with pytest.raises(RuntimeError, match=exactly("No rendezvous handler for invalid://")):
        rendezvous("invalid://")


def test_url_with_node_params() -> None:
    url = "file://foo?rank=12&world_size=16"
    text = f"The url: {url} has node-specific arguments(rank, world_size) already."
    with pytest.raises(AssertionError, match=exactly(text)):
        rendezvous(url, 12, 16)
    for url, args in [("file://foo?world_size=2", (0,)), ("env://?rank=0", (-1, 2))]:
        with pytest.raises(AssertionError, match="has node-specific arguments"):
            rendezvous(url, *args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((5,), "`url` must be a string. <class 'int'>: 5"),
        (("tcp://127.0.0.1:1", "0"), "`rank` must be an integer. 0"),
        (("tcp://127.0.0.1:1", 0, 1.0), "`world_size` must be an integer. 1.0"),
        (("tcp://127.0.0.1:1", True), "`rank` must be an integer. True"),
    ],
)
def test_arguments_are_checked_at_the_call(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(RuntimeError, match=exactly(message)):
        rendezvous(*args)


def _recording(calls: list[tuple[str, dict[str, Any]]]) -> _rendezvous.RendezvousHandler:
    def handler(url: str, **kwargs: Any) -> Iterator[tuple[Store, int, int]]:
        calls.append((url, kwargs))
        yield (HashStore(), 0, 1)
        raise RuntimeError("Unable to perform re-rendezvous using rec:// method")

    return handler


@pytest.mark.parametrize(
    ("url", "rank", "world_size", "seen"),
    [
        ("rec://h/p", 2, 3, "rec://h/p?rank=2&world_size=3"),
        ("rec://h/p?x=1", 2, -1, "rec://h/p?x=1&rank=2"),
        ("rec://h/p?x=1", -1, 3, "rec://h/p?x=1&world_size=3"),
        ("rec://h/p?&x=1&&", 0, 1, "rec://h/p?x=1&rank=0&world_size=1"),
        ("rec://h/p?x=1&x=2", 0, 1, "rec://h/p?x=2&rank=0&world_size=1"),
        ("rec://h/p?tok=a=b", 0, 1, "rec://h/p?tok=a=b&rank=0&world_size=1"),
        ("REC://h/p?foo", -1, -1, "REC://h/p?foo"),  # untouched: parsed only when rewritten
    ],
)
def test_a_registered_handler_gets_the_rewritten_url_and_the_keywords(
    registry: None, url: str, rank: int, world_size: int, seen: str
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    register_rendezvous_handler("rec", _recording(calls))
    gen = rendezvous(url, rank, world_size, timeout=SHORT, extra="x")
    store, got_rank, got_size = next(gen)
    assert isinstance(store, HashStore) and (got_rank, got_size) == (0, 1)
    assert calls == [(seen, {"timeout": SHORT, "extra": "x"})]
    with pytest.raises(RuntimeError, match="re-rendezvous using rec://"):
        next(gen)
    with pytest.raises(StopIteration):
        next(gen)


def test_a_query_pair_without_a_value_is_named() -> None:
    pattern = init_error("tcp", "query parameter 'foo' has no value (expected name=value)")
    with pytest.raises(ValueError, match=pattern):
        rendezvous("tcp://127.0.0.1:23456?foo", 0, 1)  # while rewriting: at the call
    gen = rendezvous("tcp://127.0.0.1:23456?foo&rank=1&world_size=1")
    with pytest.raises(ValueError, match=pattern):
        next(gen)


def test_registering_a_scheme_twice(registry: None) -> None:
    with pytest.raises(
        RuntimeError, match=exactly("Rendezvous handler for tcp:// already registered")
    ):
        register_rendezvous_handler("tcp", _recording([]))
    register_rendezvous_handler("mem", _recording([]))
    with pytest.raises(
        RuntimeError, match=exactly("Rendezvous handler for mem:// already registered")
    ):
        register_rendezvous_handler("mem", _recording([]))


@pytest.mark.parametrize("scheme", ["Mem", "my_scheme", "1mem", "", "m em"])
def test_a_scheme_no_url_can_carry_is_refused(registry: None, scheme: str) -> None:
    with pytest.raises(ValueError, match="can never match a URL"):
        register_rendezvous_handler(scheme, _recording([]))
    assert scheme not in _rendezvous._handlers


def test_a_handler_must_be_callable(registry: None) -> None:
    with pytest.raises(TypeError, match="mem:// must be a generator function"):
        register_rendezvous_handler("mem", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="scheme must be a str"):
        register_rendezvous_handler(b"mem", _recording([]))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="No rendezvous handler for mem://"):
        rendezvous("mem://")


def test_bytes_urls_are_read_as_text(tmp_path: Path) -> None:
    store, rank, size = first(f"file://{tmp_path}/store?rank=0&world_size=1".encode())
    with store:
        assert (rank, size) == (0, 1)
        store.set("k", "v")
        assert store.get("k") == b"v"


def test_importing_the_stores_stays_cheap() -> None:
    code = (
        "import sys, storeharness.stores as s; assert s.rendezvous, s.register_rendezvous_handler;"
        "print([m for m in ('torch', 'multiprocess', 'storeharness.harness') if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


# ----------------------------------------------------------------- RendezvousFileTest


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?world_size=1", "rank parameter missing"),
        ("?rank=0", "world size parameter missing"),
    ],
)
def test_file_common_errors(tmp_path: Path, query: str, message: str) -> None:
    gen = rendezvous(f"file://{tmp_path}/store{query}")  # the handler checks on next()
    with pytest.raises(ValueError, match=init_error("file", message)):
        next(gen)
    assert not (tmp_path / "store").exists(), "an invalid URL must not create the store"
    with pytest.raises(ValueError, match=init_error("file", "path missing")):
        next(rendezvous("file://?rank=0&world_size=1"))


def test_file_nominal(tmp_path: Path) -> None:
    path = tmp_path / "store"
    url = f"file:///{path}?world_size=2"  # torch's test's form: four slashes
    store0, rank0, size0 = first(url + "&rank=0")
    store1, rank1, size1 = first(url + "&rank=1")
    assert (rank0, size0, rank1, size1) == (0, 2, 1, 2)
    assert store0.timeout == store1.timeout == timedelta(seconds=300)
    with store0, store1:
        store0.set("key0", "value0")
        store1.set("key1", "value1")
        assert store1.get("key0") == b"value0"
        assert store0.get("key1") == b"value1"
    assert not path.exists(), "the last of world_size participants removes the file"


def _file_rank1(url: str, conn: Any) -> None:
    store, rank, size = next(rendezvous(url + "&rank=1", timeout=timedelta(seconds=LIMIT)))
    with store:
        store.set("key1", "value1")
        conn.send((rank, size, store.get("key0")))


def test_file_nominal_across_processes(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}?world_size=2"
    mine, theirs = FORK.Pipe()
    child = FORK.Process(target=_file_rank1, args=(url, theirs))
    child.start()
    theirs.close()
    try:
        store0, rank0, size0 = first(url + "&rank=0", timeout=timedelta(seconds=LIMIT))
        with store0:
            assert (rank0, size0) == (0, 2)
            store0.set("key0", "value0")
            assert store0.get("key1") == b"value1"
            assert mine.poll(LIMIT), f"rank 1 reported nothing (exit code {child.exitcode})"
            assert mine.recv() == (1, 2, b"value0")
        child.join(LIMIT)
        assert child.exitcode == 0
    finally:
        mine.close()
        if child.is_alive():
            child.kill()
            child.join(5)


def test_file_timeout_keyword_is_the_stores(tmp_path: Path) -> None:
    store, _, _ = first(
        f"file://{tmp_path}/store?rank=0&world_size=1", timeout=timedelta(seconds=7)
    )
    with store:
        assert store.timeout == timedelta(seconds=7)


# ----------------------------------------------------------------- RendezvousTCPTest


@pytest.mark.parametrize(
    ("url", "error", "message"),
    [
        ("tcp://127.0.0.1?rank=0&world_size=1", ValueError, "port number missing"),
        ("tcp://127.0.0.1:23456?world_size=1", ValueError, "rank parameter missing"),
        ("tcp://127.0.0.1:23456?rank=0", ValueError, "world size parameter missing"),
        ("tcp://127.0.0.1:70000?rank=0&world_size=1", ValueError, "Port out of range 0-65535"),
        ("tcp://127.0.0.1:x?rank=0&world_size=1", ValueError, "Port could not be cast"),
        ("tcp://:23456?rank=1&world_size=1", AssertionError, "hostname cannot be None"),
        ("tcp://127.0.0.1:23456?rank=1&world_size=two", ValueError, "invalid literal for int"),
    ],
)
def test_tcp_common_errors(url: str, error: type[Exception], message: str) -> None:
    before = server_threads()
    gen = rendezvous(url, timeout=SHORT)
    with pytest.raises(error, match=re.escape(message)):
        next(gen)
    assert server_threads() == before


@pytest.mark.parametrize("rank", [0, 1])
def test_dns_timeout(rank: int) -> None:
    # Rank 0 first serves on an ephemeral port, then fails to connect to itself by that name.
    port = 0 if rank == 0 else 23456
    before = server_threads()
    start = time.monotonic()
    with pytest.raises(StoreBroken, match="cannot resolve host 'dnsnotexist'") as info:
        first(f"tcp://dnsnotexist:{port}?world_size=2&rank={rank}", timeout=timedelta(seconds=1))
    assert time.monotonic() - start < 10, "an unresolvable name must fail promptly"
    assert isinstance(info.value, StoreError) and isinstance(info.value, RuntimeError)
    assert server_threads() == before, "the failed master's server must be stopped"


def test_tcp_nominal() -> None:
    store, rank, size = first("tcp://127.0.0.1:0?world_size=1&rank=0")
    with tcp(store) as s:
        assert (rank, size) == (0, 1)
        assert s.server is not None and s.port > 0  # port 0: read the real one from the store
        assert s.timeout == timedelta(minutes=30)  # torch's default_pg_timeout
        s.set("key0", "value0")
        assert s.get("key0") == b"value0"


def test_tcp_nominal_two_ranks_share_a_multi_tenant_master() -> None:
    with TCPStore("127.0.0.1", 0, is_master=True, multi_tenant=True, timeout=LIMIT) as master:
        url = f"tcp://127.0.0.1:{master.port}?world_size=2"
        got: list[tuple[Store, int, int] | BaseException] = []

        def rank0() -> None:
            try:
                got.append(first(url + "&rank=0", timeout=timedelta(seconds=LIMIT)))
            except BaseException as exc:
                got.append(exc)

        thread = threading.Thread(target=rank0, daemon=True)
        thread.start()
        store1, rank1, size1 = first(url + "&rank=1", timeout=timedelta(seconds=LIMIT))
        thread.join(LIMIT)
        assert not thread.is_alive(), "rank 0 never saw rank 1 join"
        assert isinstance(got[0], tuple), got[0]
        store0, rank0_, size0 = got[0]
        with tcp(store0) as s0, tcp(store1) as s1:
            assert (rank0_, size0, rank1, size1) == (0, 2, 1, 2)
            assert s0.server is master.server, "rank 0 must be a tenant of the running server"
            assert s1.server is None
            s0.set("key0", "value0")
            s1.set("key1", "value1")
            assert s1.get("key0") == b"value0"
            assert s0.get("key1") == b"value1"


def test_tcp_rank0_waits_for_the_whole_world() -> None:
    before = server_threads()
    with pytest.raises(StoreTimeout, match=r"1/2 clients joined"):
        first("tcp://127.0.0.1:0?rank=0&world_size=2", timeout=timedelta(milliseconds=300))
    assert server_threads() == before


def test_tcp_other_ranks_only_connect() -> None:
    with socket.socket() as taken:  # bound, not listening: connecting is refused
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        pattern = f"connect to TCPStore 127.0.0.1:{port} timed out"
        with pytest.raises(StoreBroken, match=pattern):
            first(f"tcp://127.0.0.1:{port}?rank=1&world_size=2", timeout=timedelta(seconds=0.3))


def test_agent_store_makes_every_rank_a_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AGENT, "True")
    with TCPStore("127.0.0.1", 0, is_master=True, timeout=LIMIT) as agent:
        url = f"tcp://127.0.0.1:{agent.port}?rank=0&world_size=1&use_libuv=0"
        store, rank, _ = first(url, timeout=SHORT)
        with tcp(store) as s:
            assert rank == 0 and s.server is None
            assert s.libuvBackend, "torch passes no use_libuv to an agent-store client"
            s.set("k", "v")
            assert agent.get("k") == b"v"


@pytest.mark.parametrize("value", ["true", "TRUE", "1", ""])
def test_agent_store_needs_exactly_True(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(AGENT, value)
    store, _, _ = first("tcp://127.0.0.1:0?rank=0&world_size=1", timeout=SHORT)
    with tcp(store) as s:
        assert s.server is not None


@pytest.mark.parametrize(
    ("query", "env", "expected"),
    [
        ("&use_libuv=1", None, True),
        ("&use_libuv=0", None, False),
        ("", None, True),
        ("&use_libuv=yes", None, False),
        ("", "0", False),
        ("", "", False),
        ("&use_libuv=1", "0", True),
        ("&use_libuv=0", "1", False),
    ],
)
def test_tcp_store_url_with_libuv(
    monkeypatch: pytest.MonkeyPatch, query: str, env: str | None, expected: bool
) -> None:
    if env is not None:
        monkeypatch.setenv("USE_LIBUV", env)
    store, _, _ = first("tcp://127.0.0.1:0?world_size=1&rank=0" + query, timeout=SHORT)
    with tcp(store) as s:
        assert s.libuvBackend is expected


def test_with_url_param() -> None:  # torch's InitPgWithNonUvStore, without the process group
    store, _, _ = first("tcp://127.0.0.1:0?use_libuv=0", 0, 1, timeout=SHORT)
    with tcp(store) as s:
        assert not s.libuvBackend


def test_with_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in [("USE_LIBUV", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "0")]:
        monkeypatch.setenv(name, value)
    store, _, _ = first("env://", 0, 1, timeout=SHORT)
    with tcp(store) as s:
        assert not s.libuvBackend


def test_tcp_store_timeout_set() -> None:
    store, _, _ = first("tcp://127.0.0.1:0?world_size=1&rank=0", timeout=timedelta(seconds=10))
    with tcp(store) as s:
        assert s.timeout == timedelta(seconds=10)
        s.set_timeout(timedelta(seconds=0.1))
        start = time.monotonic()
        with pytest.raises(StoreTimeout, match="nonexistent key") as info:
            s.get("nonexistent key")
        assert time.monotonic() - start < 10
        assert info.value.timeout == pytest.approx(0.1)


def test_tcp_store_timeout_doesnt_break_client() -> None:
    store, _, _ = first("tcp://127.0.0.1:0?world_size=1&rank=0", timeout=timedelta(seconds=10))
    with tcp(store) as s:
        start = time.monotonic()
        with pytest.raises(StoreTimeout, match="nonexistent key"):
            s.wait(["nonexistent key"], timedelta(milliseconds=100))
        assert time.monotonic() - start < 10
        s.set("key", "value")
        assert s.get("key") == b"value"


def test_the_timeout_keyword_bounds_the_stores_calls() -> None:
    store, _, _ = first("tcp://127.0.0.1:0?world_size=1&rank=0", timeout=timedelta(seconds=0.1))
    with tcp(store) as s, pytest.raises(StoreTimeout) as info:
        s.get("nonexistent key")
    assert info.value.timeout == pytest.approx(0.1)


@pytest.mark.parametrize("scheme", ["tcp", "env", "file"])
def test_no_rerendezvous(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, scheme: str) -> None:
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "0")
    url = {"tcp": "tcp://127.0.0.1:0", "env": "env://", "file": f"file://{tmp_path}/s"}[scheme]
    gen = rendezvous(url, 0, 1, timeout=SHORT)
    store, _, _ = next(gen)
    with store:
        again = "rerendezvous" if scheme == "file" else "re-rendezvous"
        with pytest.raises(RuntimeError, match=f"^Unable to perform {again} using {scheme}://"):
            next(gen)


def test_world_size_zero(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    before = server_threads()
    zero = exactly("TCPStore world size cannot be 0")
    with pytest.raises(ValueError, match=zero):
        first("tcp://127.0.0.1:0?rank=0&world_size=0")
    with pytest.raises(ValueError, match=zero):
        first("tcp://127.0.0.1:0", 0, 0)
    for name, value in [("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "0"), ("WORLD_SIZE", "0")]:
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=zero):
        first("env://", 0)
    assert server_threads() == before, "no server may start for an empty world"
    # torch opens a FileStore for no one; ours refuses (docs/differences.md).
    with pytest.raises(ValueError, match="world_size must be a non-zero int"):
        first(f"file://{tmp_path}/store?rank=0&world_size=0")
    assert not (tmp_path / "store").exists()


# ----------------------------------------------------------------- RendezvousEnvTest


def _set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_env_nominal(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="0", RANK="0")
    store0, rank0, size0 = first("env://")
    with tcp(store0) as s:
        assert (rank0, size0) == (0, 1)
        assert s.server is not None and s.timeout == timedelta(minutes=30)
        s.set("key0", "value0")
        assert s.get("key0") == b"value0"


@pytest.mark.parametrize(("url", "args"), [("env://?rank=0&world_size=1", ()), ("env://", (0, 1))])
def test_env_query_and_arguments_take_precedence(
    monkeypatch: pytest.MonkeyPatch, url: str, args: tuple[int, ...]
) -> None:
    # Read from the environment, rank 3 of 4 would connect to port 0 and fail.
    _set_env(monkeypatch, RANK="3", WORLD_SIZE="4", MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
    store, rank, size = first(url, *args, timeout=SHORT)
    with tcp(store) as s:
        assert (rank, size) == (0, 1) and s.server is not None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "environment variable RANK expected, but not set"),
        ({"RANK": ""}, "environment variable RANK expected, but not set"),
        ({"RANK": "0"}, "environment variable WORLD_SIZE expected, but not set"),
        (
            {"RANK": "0", "WORLD_SIZE": "1"},
            "environment variable MASTER_ADDR expected, but not set",
        ),
        (
            {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": ""},
            "environment variable MASTER_PORT expected, but not set",
        ),
    ],
)
def test_env_common_errors(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    _set_env(monkeypatch, **env)
    gen = rendezvous("env://")
    with pytest.raises(ValueError, match=init_error("env", message)):
        next(gen)


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ("70000", "port must have value from 0 to 65535 but was 70000."),
        ("-1", "port must have value from 0 to 65535 but was -1."),
        ("x", "invalid literal for int() with base 10: 'x'"),
    ],
)
def test_env_bad_master_port(monkeypatch: pytest.MonkeyPatch, port: str, message: str) -> None:
    _set_env(monkeypatch, RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    with pytest.raises(ValueError, match=exactly(message)):
        first("env://")

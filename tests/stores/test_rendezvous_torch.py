"""Our rendezvous beside torch 2.13's own: the same calls, the same errors.

Each case runs through ``torch.distributed.rendezvous`` and ours in this process, under the same
environment, and records where it stopped (at the call, at the first ``next()``, or at the
second, re-rendezvous one), the exception's exact type and its message.  They must be equal,
except for the documented differences (``docs/differences.md``, *Rendezvous*), which are pinned
here on both sides so a change in either shows.  Cases that succeed only bind port 0 or use
files under the test's directory; the rest fail before any store is made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from storeharness.stores import (
    HashStore,
    StoreBroken,
    TCPStore,
    _rendezvous,
    register_rendezvous_handler,
    rendezvous,
)

from .backends import torch_missing

ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "USE_LIBUV")
AGENT = "TORCHELASTIC_USE_AGENT_STORE"
SHORT = timedelta(seconds=5)

pytestmark = pytest.mark.timeout(60)

Rendezvous = Callable[..., Iterator[tuple[Any, int, int]]]
#: (where it stopped, exception type, message, (rank, world_size) of a successful first next)
Outcome = tuple[str, type[BaseException] | None, str, tuple[int, int] | None]


@pytest.fixture(scope="module")
def torch_rendezvous() -> Rendezvous:
    reason = torch_missing()
    if reason:
        pytest.skip(reason)
    import torch
    import torch.distributed as dist

    if not torch.__version__.startswith("2.13."):
        pytest.skip(f"torch's messages were measured on 2.13; this is torch {torch.__version__}")
    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed")
    from torch.distributed.rendezvous import rendezvous as theirs

    fn: Rendezvous = theirs
    return fn


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*ENV, AGENT):
        monkeypatch.delenv(name, raising=False)


@dataclass(frozen=True)
class Call:
    """One rendezvous call; ``{tmp}`` in the URL is a fresh directory per implementation."""

    url: Any
    rank: Any = -1
    world_size: Any = -1
    env: dict[str, str] = field(default_factory=dict)
    as_bytes: bool = False


def outcome(fn: Rendezvous, call: Call, tmp: Path) -> Outcome:
    url = call.url.format(tmp=tmp) if isinstance(call.url, str) else call.url
    if call.as_bytes:
        url = url.encode()
    try:
        gen = fn(url, call.rank, call.world_size, timeout=SHORT)
    except Exception as exc:
        return ("call", type(exc), str(exc), None)
    try:
        store, rank, size = next(gen)
    except Exception as exc:
        return ("next", type(exc), str(exc), None)
    try:
        next(gen)
    except Exception as exc:
        return ("again", type(exc), str(exc), (rank, size))
    finally:
        close = getattr(store, "close", None)  # ours; torch's close when collected
        if close is not None:
            close()
        del store
    return ("yielded twice", None, "", (rank, size))


def both(
    torch_rendezvous: Rendezvous, call: Call, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Outcome, Outcome]:
    for name, value in call.env.items():
        monkeypatch.setenv(name, value)
    (tmp / "torch").mkdir()
    (tmp / "ours").mkdir()
    return outcome(torch_rendezvous, call, tmp / "torch"), outcome(rendezvous, call, tmp / "ours")


_MASTER = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0"}
_NODE = {"RANK": "0", "WORLD_SIZE": "1"}

SAME: dict[str, Call] = {
    "unknown_scheme": Call("invalid://"),
    "unknown_scheme_with_args": Call("invalid://", 0, 1),
    "empty_url": Call(""),
    "url_not_a_string": Call(5),
    "rank_not_an_integer": Call("tcp://127.0.0.1:23456", "0"),
    "world_size_not_an_integer": Call("tcp://127.0.0.1:23456", 0, 1.0),
    "node_params_twice": Call("file://foo?rank=12&world_size=16", 12, 16),
    "node_params_url_rank_arg_size": Call("file://foo?rank=12", -1, 16),
    "node_params_url_size_arg_rank": Call("file://foo?world_size=2", 0),
    "node_params_env": Call("env://?rank=0", 0, 1),
    "file_path_missing": Call("file://?rank=0&world_size=1"),
    "file_rank_missing": Call("file://{tmp}/s?world_size=1"),
    "file_world_size_missing": Call("file://{tmp}/s?rank=0"),
    "file_world_size_missing_args": Call("file://{tmp}/s", 0),
    "file_rank_not_a_number": Call("file://{tmp}/s?rank=x&world_size=1"),
    "tcp_port_missing": Call("tcp://127.0.0.1?rank=0&world_size=1"),
    "tcp_rank_missing": Call("tcp://127.0.0.1:23456?world_size=1"),
    "tcp_world_size_missing": Call("tcp://127.0.0.1:23456?rank=0"),
    "tcp_world_size_missing_args": Call("tcp://127.0.0.1:23456", 0, -1),
    "tcp_port_out_of_range": Call("tcp://127.0.0.1:70000?rank=0&world_size=1"),
    "tcp_port_not_a_number": Call("tcp://127.0.0.1:abc?rank=0&world_size=1"),
    "tcp_hostname_missing": Call("tcp://:23456?rank=1&world_size=1"),
    "tcp_world_size_not_a_number": Call("tcp://127.0.0.1:23456?rank=1&world_size=x"),
    "tcp_world_size_zero": Call("tcp://127.0.0.1:0?rank=0&world_size=0"),
    "tcp_world_size_zero_args": Call("tcp://127.0.0.1:0", 0, 0),
    "env_rank_unset": Call("env://"),
    "env_rank_empty": Call("env://", env={"RANK": ""}),
    "env_world_size_unset": Call("env://", env={"RANK": "0"}),
    "env_master_addr_unset": Call("env://", env=_NODE),
    "env_master_port_unset": Call("env://", env={**_NODE, "MASTER_ADDR": "127.0.0.1"}),
    "env_master_port_out_of_range": Call(
        "env://", env={**_NODE, **_MASTER, "MASTER_PORT": "70000"}
    ),
    "env_master_port_negative": Call("env://", env={**_NODE, **_MASTER, "MASTER_PORT": "-1"}),
    "env_master_port_not_a_number": Call("env://", env={**_NODE, **_MASTER, "MASTER_PORT": "x"}),
    "env_world_size_zero": Call("env://", env={**_MASTER, "RANK": "0", "WORLD_SIZE": "0"}),
    # Successes, ending at the second next(): the re-rendezvous refusal.
    "file_again": Call("file://{tmp}/again?rank=0&world_size=1"),
    "tcp_again": Call("tcp://127.0.0.1:0?rank=0&world_size=1"),
    "tcp_again_dynamic_world": Call("tcp://127.0.0.1:0?rank=0&world_size=-1"),
    "env_again": Call("env://", env={**_NODE, **_MASTER}),
    "env_query_over_env": Call("env://?rank=0&world_size=1", env={"RANK": "3", **_MASTER}),
    "env_args_over_env": Call("env://", 0, 1, env={"RANK": "3", "WORLD_SIZE": "4", **_MASTER}),
}


@pytest.mark.parametrize("case", list(SAME))
def test_same_as_torch(
    torch_rendezvous: Rendezvous, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    theirs, ours = both(torch_rendezvous, SAME[case], tmp_path, monkeypatch)
    assert theirs[0] != "yielded twice", theirs
    assert ours == theirs


_INT = "invalid literal for int() with base 10: "
_FILE_AGAIN = "Unable to perform rerendezvous using file:// method"
_NO_EQ = (
    "Error initializing torch.distributed using tcp:// rendezvous: "
    "query parameter 'foo' has no value (expected name=value)"
)

#: case -> (call, torch's outcome, ours): each a row of docs/differences.md.
DIFFERENT: dict[str, tuple[Call, Outcome, Outcome]] = {
    "bytes_url": (
        Call("file://{tmp}/b?rank=0&world_size=1", as_bytes=True),
        ("call", RuntimeError, "No rendezvous handler for b'file'://", None),
        ("again", RuntimeError, _FILE_AGAIN, (0, 1)),
    ),
    "bytes_url_with_args": (
        Call("file://{tmp}/b", 0, 1, as_bytes=True),
        ("call", TypeError, "a bytes-like object is required, not 'str'", None),
        ("again", RuntimeError, _FILE_AGAIN, (0, 1)),
    ),
    "query_pair_without_value": (
        Call("tcp://127.0.0.1:23456?foo&rank=1&world_size=1"),
        ("next", IndexError, "list index out of range", None),
        ("next", ValueError, _NO_EQ, None),
    ),
    "query_pair_without_value_rewritten": (
        Call("tcp://127.0.0.1:23456?foo", 1, 1),
        ("call", IndexError, "list index out of range", None),
        ("call", ValueError, _NO_EQ, None),
    ),
    "value_with_equals": (
        Call("file://{tmp}/eq?rank=0=1&world_size=1"),
        ("again", RuntimeError, _FILE_AGAIN, (0, 1)),
        ("next", ValueError, _INT + "'0=1'", None),
    ),
    "rank_bool": (
        Call("file://{tmp}/bool", True, 1),
        ("next", ValueError, _INT + "'True'", None),
        ("call", RuntimeError, "`rank` must be an integer. True", None),
    ),
    "file_world_size_zero": (
        Call("file://{tmp}/zero?rank=0&world_size=0"),
        ("again", RuntimeError, _FILE_AGAIN, (0, 0)),
        (
            "next",
            ValueError,
            "FileStore: world_size must be a non-zero int (negative = never remove the file), "
            "got 0",
            None,
        ),
    ),
}


@pytest.mark.parametrize("case", list(DIFFERENT))
def test_documented_differences(
    torch_rendezvous: Rendezvous, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    call, expected_theirs, expected_ours = DIFFERENT[case]
    theirs, ours = both(torch_rendezvous, call, tmp_path, monkeypatch)
    assert theirs == expected_theirs, "torch changed: update docs/differences.md"
    assert ours == expected_ours


def test_file_timeout_keyword(torch_rendezvous: Rendezvous, tmp_path: Path) -> None:
    seven = timedelta(seconds=7)
    url = f"file://{tmp_path}/{{}}?rank=0&world_size=1"
    theirs, _, _ = next(torch_rendezvous(url.format("torch"), timeout=seven))
    ours, _, _ = next(rendezvous(url.format("ours"), timeout=seven))
    with ours:
        assert theirs.timeout == timedelta(seconds=300), "torch ignores timeout= for file://"
        assert ours.timeout == seven
    del theirs


@pytest.mark.parametrize(
    ("query", "use_libuv", "timeout"),
    [
        ("", None, None),
        ("&use_libuv=0", None, None),
        ("&use_libuv=yes", None, SHORT),
        ("", "0", SHORT),
        ("&use_libuv=1", "0", None),
    ],
)
def test_tcp_stores_agree_with_torch(
    torch_rendezvous: Rendezvous,
    monkeypatch: pytest.MonkeyPatch,
    query: str,
    use_libuv: str | None,
    timeout: timedelta | None,
) -> None:
    if use_libuv is not None:
        monkeypatch.setenv("USE_LIBUV", use_libuv)
    kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    url = "tcp://127.0.0.1:0?rank=0&world_size=1" + query
    theirs, rank_t, size_t = next(torch_rendezvous(url, **kwargs))
    ours, rank_o, size_o = next(rendezvous(url, **kwargs))
    assert isinstance(ours, TCPStore)
    with ours:
        seen = [(s.libuvBackend, s.timeout, s.port > 0) for s in (theirs, ours)]
        assert seen[0] == seen[1]
        assert (rank_t, size_t) == (rank_o, size_o) == (0, 1)
    del theirs


def test_an_unresolvable_host_fails_in_both_and_faster_in_ours(
    torch_rendezvous: Rendezvous,
) -> None:
    # Rank 1 only connects: torch's rank 0 would also serve on the fixed port 23456.
    url = "tcp://dnsnotexist:23456?world_size=2&rank=1"
    one = timedelta(seconds=1)
    errors: list[Exception] = []
    took: list[float] = []
    for fn in (torch_rendezvous, rendezvous):
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="dnsnotexist") as info:
            next(fn(url, timeout=one))
        took.append(time.monotonic() - start)
        errors.append(info.value)
    assert type(errors[0]).__name__ == "DistNetworkError"
    assert "client socket has timed out after 1000ms" in str(errors[0])
    assert isinstance(errors[1], StoreBroken)  # ours: a StoreError, RuntimeError, ConnectionError
    assert "cannot resolve host 'dnsnotexist'" in str(errors[1])
    assert took[1] < 10, f"ours took {took[1]:.1f} s (torch: {took[0]:.1f} s)"


def test_the_registries_are_separate(torch_rendezvous: Rendezvous) -> None:
    def handler(url: str, **kwargs: Any) -> Iterator[tuple[Any, int, int]]:
        yield (HashStore(), 0, 1)

    register_rendezvous_handler("sep", handler)
    try:
        with pytest.raises(RuntimeError, match="No rendezvous handler for sep://"):
            torch_rendezvous("sep://")
        assert isinstance(next(rendezvous("sep://"))[0], HashStore)
    finally:
        with _rendezvous._handlers_lock:
            del _rendezvous._handlers["sep"]
    with pytest.raises(RuntimeError, match="No rendezvous handler for sep://"):
        rendezvous("sep://")

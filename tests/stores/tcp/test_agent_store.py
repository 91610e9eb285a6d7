"""TORCHELASTIC_USE_AGENT_STORE: a master that cannot bind becomes a client of the agent's store.

torchrun's agent runs the job's store on MASTER_PORT and tells the ranks so; rank 0's
``TCPStore(is_master=True)`` then finds the port taken and must use the agent's store instead.
One table of environments runs on our TCPStore (C and pure-Python clients) and, where torch is
installed, on torch 2.13's, which the expected outcomes were measured on.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from storeharness.stores import DistNetworkError, StoreBindError, StoreValueError, TCPStore
from storeharness.stores.tcp._accel import speedups

from ..backends import torch_missing

FLAG, PORT = "TORCHELASTIC_USE_AGENT_STORE", "MASTER_PORT"

#: (TORCHELASTIC_USE_AGENT_STORE, MASTER_PORT with {p} for the taken port, outcome): "client"
#: (became a client of the agent's store), "bind" (the bind error), or "invalid:<variable>".
ENVIRONMENTS: list[tuple[str | None, str | None, str]] = [
    *[(flag, "{p}", "client") for flag in ["1", "True", "true", "TRUE", "yes", "Y", "t"]],
    *[(flag, "{p}", "bind") for flag in ["0", "False", "no", "N", "f", None]],
    *[(flag, "{p}", f"invalid:{FLAG}") for flag in ["", "on", " 1", "2"]],
    *[("1", port, "client") for port in [" {p}", "+{p}", "0{p}", "{p}x", "\t{p}"]],
    *[("1", port, "bind") for port in [None, "0", "-{p}", "{p65536}"]],
    *[("1", port, f"invalid:{PORT}") for port in ["junk", "", "99999999999", "x{p}"]],
    ("junk", "junk", f"invalid:{FLAG}"),  # the flag is read first
    ("No", "junk", f"invalid:{PORT}"),  # and both are read, whatever the flag says
    (None, "junk", f"invalid:{PORT}"),
]
IDS = [f"{flag!r}-{port!r}" for flag, port, _ in ENVIRONMENTS]


@pytest.fixture
def agent() -> Iterator[TCPStore]:
    """The agent's store, holding the port."""
    with TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=30) as store:
        yield store


def _environ(monkeypatch: pytest.MonkeyPatch, flag: str | None, port: str | None, p: int) -> None:
    for name, value in ((FLAG, flag), (PORT, port)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value.format(p=p, p65536=p + 65536))


def _outcome(make: Callable[[], Any], network_error: type[BaseException]) -> tuple[str, Any]:
    try:
        store = make()
    except network_error as exc:
        assert "failed to listen" in str(exc), exc
        return "bind", None
    except RuntimeError as exc:
        text = str(exc)
        assert text.startswith("Invalid value for environment variable: "), text
        return "invalid:" + text.split(": ", 1)[1].split(" ", 1)[0], None
    return "client", store


@pytest.mark.parametrize("accelerate", [True, False], ids=["c", "pure"])
@pytest.mark.parametrize(("flag", "port", "want"), ENVIRONMENTS, ids=IDS)
def test_ours(
    agent: TCPStore,
    monkeypatch: pytest.MonkeyPatch,
    flag: str | None,
    port: str | None,
    want: str,
    accelerate: bool,
) -> None:
    if accelerate and speedups(None, "test") is None:
        pytest.skip("the C speedups are not built (or STOREHARNESS_PURE_PYTHON is set)")
    _environ(monkeypatch, flag, port, agent.port)

    def make() -> TCPStore:
        return TCPStore("127.0.0.1", agent.port, is_master=True, wait_for_workers=False,
                        timeout=10, accelerate=accelerate)  # fmt: skip

    got, store = _outcome(make, StoreBindError)
    assert got == want
    if store is not None:
        with store:
            assert "server=<nullptr>" in repr(store)
            store.set("from-rank0", "1")
            assert agent.get("from-rank0") == b"1"


@pytest.mark.skipif(torch_missing() is not None, reason=str(torch_missing()))
@pytest.mark.parametrize(("flag", "port", "want"), ENVIRONMENTS, ids=IDS)
def test_torchs(
    agent: TCPStore, monkeypatch: pytest.MonkeyPatch, flag: str | None, port: str | None, want: str
) -> None:
    dist: Any = importlib.import_module("torch.distributed")
    _environ(monkeypatch, flag, port, agent.port)

    def make() -> Any:
        return dist.TCPStore("127.0.0.1", agent.port, is_master=True, wait_for_workers=False,
                             timeout=timedelta(seconds=10))  # fmt: skip

    got, store = _outcome(make, dist.DistNetworkError)
    assert got == want
    if store is not None:
        store.set("from-torch", "1")
        assert agent.get("from-torch") == b"1"


@pytest.mark.parametrize("accelerate", [True, False], ids=["c", "pure"])
def test_the_former_master_counts_itself_in_without_waiting(
    agent: TCPStore, monkeypatch: pytest.MonkeyPatch, accelerate: bool
) -> None:
    # torch's former master adds itself to init/ and returns: it has no server to keep up
    # until everyone arrived.  Measured on torch 2.13 with world_size=3 and one participant.
    if accelerate and speedups(None, "test") is None:
        pytest.skip("the C speedups are not built (or STOREHARNESS_PURE_PYTHON is set)")
    _environ(monkeypatch, "1", "{p}", agent.port)
    before = agent.num_keys()
    start = time.monotonic()
    with TCPStore("127.0.0.1", agent.port, world_size=3, is_master=True, timeout=5,
                  accelerate=accelerate) as rank0:  # fmt: skip
        assert time.monotonic() - start < 5  # a master's wait for 3 would time out at 5 s
        assert agent.num_keys() == before + 1  # init/ (num_keys counts it, as torch's does)
        with TCPStore("127.0.0.1", agent.port, world_size=3, timeout=5) as rank1:
            assert rank1.add("seen", 1) == 1 and rank0.add("seen", 1) == 2


def test_an_invalid_value_says_which_and_why_it_was_read(
    agent: TCPStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environ(monkeypatch, "on", "{p}", agent.port)
    with pytest.raises(StoreValueError) as info:
        TCPStore("127.0.0.1", agent.port, is_master=True, timeout=5)
    text = str(info.value)
    assert f"{FLAG} ('on'; expected 1/true/yes/t/y or 0/false/no/f/n)" in text
    assert "could not listen" in text and str(agent.port) in text
    assert isinstance(info.value.__cause__, DistNetworkError)


def test_without_the_variables_a_taken_port_is_a_network_error(
    agent: TCPStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environ(monkeypatch, None, None, agent.port)
    with pytest.raises(DistNetworkError, match="failed to listen"):
        TCPStore("127.0.0.1", agent.port, is_master=True, timeout=5)

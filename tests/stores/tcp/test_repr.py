"""TCPStore's repr has torch's shape; the same pattern matches torch 2.13's own repr."""

from __future__ import annotations

import importlib
import re
from datetime import timedelta
from typing import Any

import pytest

from storeharness.stores import TCPStore
from storeharness.stores.tcp._accel import speedups

from ..backends import torch_missing

#: torch 2.13 prints e.g. TCPStore(client=TCPClient(SocketImpl(fd=13,
#: addr=[::ffff:127.0.0.1]:45210, remote=[::ffff:127.0.0.1]:42963)), server=TCPServer(port=42963))
SHAPE = re.compile(
    r"TCPStore\(client=TCPClient\(SocketImpl\(fd=(?P<fd>\d+), addr=(?P<addr>\S+):(?P<lport>\d+), "
    r"remote=(?P<remote>\S+):(?P<rport>\d+)\)\), "
    r"server=(?P<server>TCPServer\(port=\d+\)|<nullptr>)\)"
)


def _shape(text: str) -> dict[str, str]:
    found = SHAPE.fullmatch(text)
    assert found, text
    return found.groupdict()


@pytest.mark.parametrize("accelerate", [True, False], ids=["c", "pure"])
def test_repr_has_torchs_shape(accelerate: bool) -> None:
    if accelerate and speedups(None, "test") is None:
        pytest.skip("the C speedups are not built (or STOREHARNESS_PURE_PYTHON is set)")
    master = TCPStore("127.0.0.1", 0, is_master=True, timeout=10, accelerate=accelerate)
    client = TCPStore("127.0.0.1", master.port, timeout=10, accelerate=accelerate)
    with master, client:
        for store, server in ((master, f"TCPServer(port={master.port})"), (client, "<nullptr>")):
            parts = _shape(repr(store))
            sock = store._client._sock
            assert sock is not None
            assert parts["fd"] == str(sock.fileno())
            assert (parts["addr"], int(parts["lport"])) == sock.getsockname()[:2]
            assert (parts["remote"], parts["rport"]) == ("127.0.0.1", str(master.port))
            assert parts["server"] == server
    # Without a connection it says so (torch's client has no such state).
    assert repr(client) == (
        f"TCPStore(client=TCPClient(SocketImpl(fd=-1, remote=127.0.0.1:{master.port}), closed), "
        "server=<nullptr>)"
    )


def test_ipv6_addresses_are_bracketed() -> None:
    master = TCPStore("::1", 0, is_master=True, timeout=10)
    with master:
        parts = _shape(repr(master))
        assert (parts["addr"], parts["remote"]) == ("[::1]", "[::1]")


@pytest.mark.skipif(torch_missing() is not None, reason=str(torch_missing()))
def test_the_shape_is_torchs() -> None:
    dist: Any = importlib.import_module("torch.distributed")
    master = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                           timeout=timedelta(seconds=10))  # fmt: skip
    client = dist.TCPStore("127.0.0.1", master.port, timeout=timedelta(seconds=10))
    assert _shape(repr(master))["server"] == f"TCPServer(port={master.port})"
    assert _shape(repr(client))["server"] == "<nullptr>"
    assert _shape(repr(client))["rport"] == str(master.port)

"""What the harness exposes: every server it starts listens on loopback, never on the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storeharness.harness import targets
from storeharness.harness.proxy import ProxyProcess
from storeharness.harness.targets.server import ServerEndpoint
from storeharness.stores import Store

from .procs import listening

LOOPBACK = {"127.0.0.1", "::1"}


def _on_loopback(pid: int, port: int) -> None:
    bound = [address for address, p in listening(pid) if p == port]
    assert bound, f"pid {pid} listens on nothing at port {port}: {listening(pid)}"
    assert set(bound) <= LOOPBACK, f"pid {pid} listens on {bound} at port {port}"


@pytest.mark.parametrize("name", ["tcp", "tcp-pure", "torch-tcp", "torch-client"])
def test_a_runs_server_and_its_fault_proxy_listen_on_loopback(name: str, tmp_path: Path) -> None:
    target = targets.get(name)
    if target.unavailable():
        pytest.skip(str(target.unavailable()))
    with target.start(tmp_path, timeout=30, proxy=True) as endpoint:
        assert isinstance(endpoint, ServerEndpoint) and endpoint.server is not None
        _on_loopback(endpoint.server.proc.pid, endpoint.port)
        assert endpoint.proxy is not None and isinstance(endpoint.proxy, ProxyProcess)
        _on_loopback(endpoint.proxy.proc.pid, endpoint.proxy.port)
        store = endpoint.opener()()  # and ranks still reach it, through the proxy
        try:
            store.set("k", "v")
            assert store.get("k") == b"v"
        finally:
            store.close()


@pytest.mark.parametrize(
    "name", ["tcp", "tcp-pure", "torch-client", "ours-on-torch", "ours-on-torch-legacy"]
)
def test_the_conformance_suites_servers_listen_on_loopback(name: str, tmp_path: Path) -> None:
    target = targets.get(name)
    if target.unavailable():
        pytest.skip(str(target.unavailable()))
    backend = target.backend(tmp_path)
    store: Store = backend.make()
    try:
        port = int(getattr(store, "port", 0) or store.torch_store.port)  # type: ignore[attr-defined]
        holders = [os.getpid(), *_children()]
        bound = [a for pid in holders for a, p in listening(pid) if p == port]
        assert bound and set(bound) <= LOOPBACK, bound
    finally:
        store.close()


def _children() -> list[int]:
    found = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            found += [int(pid) for pid in f.read().split()]
    return found

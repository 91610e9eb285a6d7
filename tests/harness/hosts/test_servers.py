"""The agent's store servers (``_servers.ServerHost``) on loopback, without namespaces or execnet:
torch's master killed and restarted on the port it keeps, an etcd member's data and its end."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storeharness.harness.hosts._servers import ServerHost
from storeharness.harness.targets import forkserver, get
from storeharness.stores import StoreError, TCPStore

from ...stores.etcd_support import require

LOOPBACK = "127.0.0.1"


def _spawn(argv: list[str], pass_fds: tuple[int, ...] = (), stdin: Any = subprocess.DEVNULL,
           stdout: Any = None, stderr: Any = None, env: dict[str, str] | None = None,
           ) -> subprocess.Popen[bytes]:  # fmt: skip
    """As the agent's ``_Owned.popen`` starts a process (without its death signal and tag)."""
    return subprocess.Popen(argv, pass_fds=pass_fds, stdin=stdin, stdout=stdout, stderr=stderr,
                            env=env)  # fmt: skip


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerHost]:
    host = ServerHost(_spawn, tmp_path)
    try:
        yield host
    finally:
        host.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture(params=["template", "fresh"])
def how(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """torch's master forked from the agent's template, or (``STOREHARNESS_FORKSERVER=0``, as
    where pidfds are missing) started as a fresh interpreter."""
    if request.param == "fresh":
        monkeypatch.setenv(forkserver.ENV, "0")
    return str(request.param)


def test_torchs_master_restarts_on_the_port_the_agent_keeps(servers: ServerHost, how: str) -> None:
    if (why := get("torch-tcp").unavailable()) is not None:
        pytest.skip(why)
    server, port, pid = servers.start(LOOPBACK, "torch")
    assert servers.mark(LOOPBACK, port, "run/mark", "token", 30.0)
    with TCPStore(LOOPBACK, port, timeout=10) as store:
        assert store.get("run/mark") == b"token"
    assert servers.kill(server) == pid and _gone(pid)
    new = servers.restart(server)
    assert new != pid
    with TCPStore(LOOPBACK, port, timeout=10) as store:  # the same port, a fresh store
        assert not store.check(["run/mark"])
    servers.stop(server)
    assert _gone(new)
    with pytest.raises(ConnectionRefusedError), socket.create_connection((LOOPBACK, port), 5):
        pass


def test_a_master_that_cannot_start_is_an_error_naming_it(tmp_path: Path, how: str) -> None:
    def no_torch(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        return _spawn([argv[0], "-c", "import sys; sys.exit(3)"], **kw)

    host = ServerHost(no_torch, tmp_path)
    expected = r"torch's TCPStore server \(libuv\) on 127\.0\.0\.1:\d+ did not start"
    with pytest.raises(StoreError, match=expected):
        host.start(LOOPBACK, "torch")
    assert host.served == {}


def _etcd_get(endpoint: str, key: bytes) -> bytes | None:
    body = json.dumps({"key": base64.b64encode(key).decode()}).encode()
    request = urllib.request.Request(f"http://{endpoint}/v3/kv/range", data=body)
    with urllib.request.urlopen(request, timeout=10) as reply:
        kvs = json.loads(reply.read()).get("kvs", [])
    return base64.b64decode(kvs[0]["value"]) if kvs else None


def test_an_etcd_member_keeps_its_data_in_the_workdir_until_it_stops(
    servers: ServerHost, tmp_path: Path
) -> None:
    require(get("etcd").unavailable())
    from storeharness.stores.etcd._layout import Layout

    server, port, pid = servers.etcd(LOOPBACK, False)
    data = tmp_path / f"etcd-{server}"
    assert data.is_dir() and any(data.iterdir())
    assert servers.etcd_mark(server, "root", "run/mark", "token", False, 30.0)
    assert _etcd_get(f"{LOOPBACK}:{port}", Layout("root").key("run/mark")) == b"token"
    servers.stop(server)
    assert _gone(pid) and not data.exists()

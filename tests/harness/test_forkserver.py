"""The fork server: each server forked from the template is its own process with its own store,
stopped by the usual ladder, reaped (no zombie, no orphan), and a dead template is replaced."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import asdict

import pytest

from storeharness.harness.targets import forkserver, torch_missing
from storeharness.harness.targets.server import loopback_listener
from storeharness.stores import TCPStore
from storeharness.stores._process import stop_process
from storeharness.stores.tcp.codec import Limits

pytestmark = pytest.mark.skipif(not forkserver.available(), reason="needs Linux pidfds")


@pytest.fixture
def template() -> Iterator[forkserver.ForkServer]:
    fs = forkserver.ForkServer()
    try:
        yield fs
    finally:
        pid = fs.pid
        fs.close()
        if pid is not None:
            assert not _alive(pid), "the template outlived its close()"


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _spawn(fs: forkserver.ForkServer) -> tuple[forkserver.ForkedProcess, int]:
    sock = loopback_listener()
    port = sock.getsockname()[1]
    return fs.spawn(sock, limits=asdict(Limits()), accelerate=None), port


def test_each_forked_server_is_its_own_process_with_its_own_empty_store(
    template: forkserver.ForkServer,
) -> None:
    (a, port_a), (b, port_b) = _spawn(template), _spawn(template)
    try:
        assert a.pid != b.pid and template.pid not in (a.pid, b.pid)
        with TCPStore("127.0.0.1", port_a, timeout=10) as one:
            one.set("key", "on a")
        with TCPStore("127.0.0.1", port_b, timeout=10) as two:
            assert not two.check(["key"]), "a second server saw the first one's key"
            two.set("key", "on b")
        with TCPStore("127.0.0.1", port_a, timeout=10) as one:
            assert one.get("key") == b"on a"
    finally:
        for proc in (a, b):
            stop_process(proc)
    assert a.returncode == 0 and b.returncode == 0, "closing stdin stops a server cleanly"
    assert not _alive(a.pid) and not _alive(b.pid), "the template reaps what it forked"


def test_a_killed_server_reports_the_signal_and_is_reaped(
    template: forkserver.ForkServer,
) -> None:
    proc, _ = _spawn(template)
    assert proc.poll() is None
    proc.kill()
    assert proc.wait(10) == -signal.SIGKILL
    assert not _alive(proc.pid)
    proc.kill()  # signalling an ended server is harmless (a pidfd: never a reused pid)


def test_wait_times_out_on_a_running_server(template: forkserver.ForkServer) -> None:
    proc, _ = _spawn(template)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(0.05)
    finally:
        stop_process(proc)


def test_a_dead_template_is_replaced_on_the_next_fork(template: forkserver.ForkServer) -> None:
    first, _ = _spawn(template)
    stop_process(first)
    old = template.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    second, port = _spawn(template)
    try:
        assert template.pid not in (None, old)
        with TCPStore("127.0.0.1", port, timeout=10) as store:
            store.set("k", "v")
    finally:
        stop_process(second)


def test_a_server_outlives_its_template_only_until_its_owner_lets_go(
    template: forkserver.ForkServer,
) -> None:
    proc, port = _spawn(template)
    template.close()  # the template goes; the server is its owner's to stop
    assert proc.poll() is None, "the server ended with its template"
    with TCPStore("127.0.0.1", port, timeout=10) as store:
        store.set("k", "v")
    assert proc.stdin is not None
    proc.stdin.close()  # the owner lets go: the server stops serving and exits
    assert proc.wait(10) == forkserver.LOST  # it ended; its exit code died with the template
    assert not _alive(proc.pid)


def test_endpoints_of_our_tcp_target_use_the_template(tmp_path: object) -> None:
    from pathlib import Path

    from storeharness.harness import targets

    with targets.start("tcp", Path(str(tmp_path)), timeout=10) as endpoint:
        server = endpoint.server  # type: ignore[attr-defined]
        assert isinstance(server, forkserver.ForkedServer)
        with open(f"/proc/{server.proc.pid}/stat", encoding="ascii") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
        assert parent == forkserver.template().pid, "not forked from this process's template"
        with endpoint.opener()() as store:
            store.set("k", "v")


@pytest.mark.skipif(torch_missing() is not None, reason="needs torch")
def test_the_torch_template_forks_torchs_own_server() -> None:
    fs = forkserver.ForkServer("torch")
    try:
        sock = loopback_listener()
        port = sock.getsockname()[1]
        proc = fs.spawn(sock, use_libuv=True)
        try:
            with TCPStore("127.0.0.1", port, timeout=30) as store:
                store.set("k", "v")
                assert store.get("k") == b"v"
                assert store.libuvBackend  # torch's libuv server answered our client
        finally:
            stop_process(proc)
        assert proc.returncode == 0
    finally:
        fs.close()


def test_a_bad_kind_is_named() -> None:
    with pytest.raises(ValueError, match=r"kind='java'; use one of ours, torch"):
        forkserver.ForkServer("java")


def test_the_fault_proxy_is_forked_from_the_template_and_answers_commands() -> None:
    from storeharness.harness.proxy import ProxyProcess

    sock = loopback_listener()
    server = forkserver.ForkedServer(sock)
    proxy = ProxyProcess("127.0.0.1", server.port)
    try:
        with open(f"/proc/{proxy.proc.pid}/stat", encoding="ascii") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
        assert parent == forkserver.template().pid
        assert proxy.command("heal") == "ok"
        with TCPStore("127.0.0.1", proxy.port, timeout=10) as store:
            store.set("through", "the proxy")
            assert proxy.command("drop").startswith("ok ")
        with pytest.raises(RuntimeError, match="unknown command 'fly'"):
            proxy.command("fly")
    finally:
        proxy.close()
        server.stop()
    assert proxy.proc.returncode == 0 and not _alive(proxy.proc.pid)


def test_turned_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(forkserver.ENV, "0")
    assert not forkserver.available()
    server = forkserver.forked_server(loopback_listener())
    try:
        assert not isinstance(server, forkserver.ForkedServer)  # a fresh interpreter instead
        with TCPStore("127.0.0.1", server.port, timeout=30) as store:
            store.set("k", "v")
    finally:
        server.stop()

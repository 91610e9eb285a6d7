"""Namespaces as hosts: built, reachable from each other, torn down without a trace."""

from __future__ import annotations

import ipaddress
import json
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storeharness.harness.cli import main
from storeharness.harness.hosts import netns

NEEDS = netns.missing()
needs_netns = pytest.mark.skipif(NEEDS is not None, reason=f"netns hosts: {NEEDS}")
pytestmark = pytest.mark.multihost


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True)
    return {str(link["ifname"]) for link in json.loads(out.stdout)}


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first line ``proc`` prints, waited for up to ``timeout`` s (no sleeping)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(deadline - time.monotonic()):
                return proc.stdout.readline()
    raise AssertionError(f"no line from {proc.args!r} in {timeout} s")


@pytest.fixture
def net3() -> Iterator[netns.NetnsNetwork]:
    net = netns.build(3)
    try:
        yield net
    finally:  # a failing test still leaves nothing behind
        netns.teardown(net.tag)


def test_bad_arguments_are_refused_before_anything_is_built() -> None:
    with pytest.raises(ValueError, match=r"number of hosts must be 1\.\.64, got 0"):
        netns.build(0)
    with pytest.raises(ValueError, match="run tag 'a-b' must be"):
        netns.build(2, tag="a-b")
    with pytest.raises(ValueError, match="needs the run tag"):
        netns.teardown("")


@needs_netns
def test_a_subnet_routed_in_the_root_namespace_is_refused() -> None:
    netns.check_subnet_unrouted()  # the test subnet is free here
    with pytest.raises(netns.NetnsError, match=r"127\.0\.0\.0/8 is routed in the root namespace"):
        netns.check_subnet_unrouted(ipaddress.IPv4Network("127.0.0.0/8"))


@needs_netns
def test_three_hosts_are_built_inside_namespaces_only(net3: netns.NetnsNetwork) -> None:
    assert netns.namespaces(net3.tag) == sorted(net3.namespaces())
    assert [h.address for h in net3.hosts] == ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
    for h in net3.hosts:
        out = subprocess.run(
            ["ip", "-n", h.namespace, "-j", "-4", "addr", "show", "eth0"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert [a["local"] for a in json.loads(out.stdout)[0]["addr_info"]] == [h.address]
    # the root namespace gained no route or address in the subnet
    netns.check_subnet_unrouted()


@needs_netns
def test_a_tcpstore_in_one_host_serves_the_others(net3: netns.NetnsNetwork) -> None:
    server_host, *clients = net3.hosts
    server = subprocess.Popen(
        [*server_host.exec_argv(), sys.executable, "-m", "storeharness.stores.tcp",
         "--host", server_host.address, "--port", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = _first_line(server, 15.0)
        assert line.startswith(f"serving TCPStore on {server_host.address}:"), line
        port = int(line.split(":")[-1])
        code = (
            "import sys; from storeharness.stores.tcp import TCPStore\n"
            f"s = TCPStore({server_host.address!r}, {port}, timeout=10)\n"
            "s.add('seen', 1)\n"
            "print(s.get('seen').decode() if sys.argv[1] == 'last' else 'ok')\n"
        )
        first = subprocess.run(
            [*clients[0].exec_argv(), sys.executable, "-c", code, "first"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert first.returncode == 0, first.stderr
        last = subprocess.run(
            [*clients[1].exec_argv(), sys.executable, "-c", code, "last"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert last.returncode == 0, last.stderr
        assert last.stdout.strip() == "2"  # both hosts reached the one server
    finally:
        server.kill()
        server.wait(10)


@needs_netns
def test_teardown_removes_namespaces_links_and_processes_left_inside() -> None:
    links_before = _root_links()
    net = netns.build(3)
    try:
        assert len(netns.namespaces(net.tag)) == 4
        assert _root_links() == links_before  # every veth lives inside the namespaces
        # a process still running inside a host (an interrupted run's rank, say)
        stray = subprocess.Popen(
            [*net.hosts[0].exec_argv(), sys.executable, "-c", "import sys; sys.stdin.read()"],
            stdin=subprocess.PIPE,
        )
    finally:
        removed = netns.teardown(net.tag)
    assert sorted(removed) == sorted(net.namespaces())
    assert stray.wait(10) == -9  # killed by pid, found through its namespace
    assert netns.namespaces(net.tag) == []
    assert _root_links() == links_before


@needs_netns
def test_a_failing_block_still_tears_down() -> None:
    tag = ""
    with pytest.raises(ZeroDivisionError), netns.netns_hosts(2) as net:
        tag = net.tag
        assert len(netns.namespaces(tag)) == 3
        _ = 1 / 0
    assert tag and netns.namespaces(tag) == []


@needs_netns
def test_a_failed_build_removes_what_it_had_built() -> None:
    tag = netns.new_tag()
    # a namespace in the way of host 1: the build fails half-way through (recorded as ours,
    # so a concurrent clean_stale leaves it alone)
    netns._write_owner(tag)
    subprocess.run(["ip", "netns", "add", f"storeharness-{tag}-h1"], check=True)
    try:
        with pytest.raises(netns.NetnsError, match=f"netns add storeharness-{tag}-h1.*exists"):
            netns.build(3, tag=tag)
    finally:
        left = netns.namespaces(tag)
        netns.teardown(tag)
    assert left == []  # the switch, h0 and the one in the way are all gone


BUILDER = """
import sys
from storeharness.harness.cli import main
from storeharness.harness.hosts import netns
print(netns.build(2).tag, flush=True)
sys.stdin.read()
"""


@needs_netns
def test_a_killed_runs_namespaces_are_stale_and_cleaned(
    net3: netns.NetnsNetwork, capsys: pytest.CaptureFixture[str]
) -> None:
    builder = subprocess.Popen(
        [sys.executable, "-c", BUILDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        tag = _first_line(builder, 30).strip()
        assert len(netns.namespaces(tag)) == 3
        assert tag not in netns.stale_tags()  # its builder is alive
    finally:
        builder.kill()  # as a SIGKILLed test run: no teardown
        builder.wait(10)
    assert len(netns.namespaces(tag)) == 3
    assert tag in netns.stale_tags()
    assert net3.tag not in netns.stale_tags()  # ours is live
    assert main(["hosts", "clean", "netns"]) == 0
    out = capsys.readouterr().out
    assert all(
        f"  {ns}\n" in out
        for ns in (f"storeharness-{tag}-switch", f"storeharness-{tag}-h0", f"storeharness-{tag}-h1")
    )
    assert netns.namespaces(tag) == []
    assert not (netns.OWNERS / tag).exists()
    assert len(netns.namespaces(net3.tag)) == 4


def test_hosts_clean_refuses_what_it_cannot_clean(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "hosts.toml"
    assert main(["hosts", "clean", str(missing)]) == 4
    assert f"cannot read hosts file {str(missing)!r}" in capsys.readouterr().err
    assert main(["hosts", "clean", "nothing"]) == 4
    assert "expected local, ssh:HOST[,HOST...], netns:N or a hosts.toml path" in (
        capsys.readouterr().err
    )

"""The host agent over execnet into namespaces: versions, probes, clock, and its lease."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from storeharness.harness.cli import main
from storeharness.harness.hosts import control, netns
from storeharness.harness.hosts._cli import check_command
from storeharness.harness.hosts.inventory import Host, netns_hosts

from ..procs import exits_within
from .test_netns import _first_line

pytest.importorskip("execnet")
NEEDS = netns.missing()
pytestmark = [
    pytest.mark.multihost,
    pytest.mark.skipif(NEEDS is not None, reason=f"netns hosts: {NEEDS}"),
]


@pytest.fixture
def host() -> Iterator[Host]:
    """One namespace host, torn down after the test (whatever it left inside)."""
    net = netns.build(1)
    try:
        yield netns_hosts(1, net.tag)[0]
    finally:
        netns.teardown(net.tag)


def _ns_pids(h: Host) -> list[int]:
    assert h.namespace is not None
    out = subprocess.run(["ip", "netns", "pids", h.namespace], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_check_reports_versions_tools_and_one_clock(host: Host) -> None:
    found = control.check(host)
    assert found.host == "h0"
    assert found.python == "{}.{}.{}".format(*sys.version_info[:3])
    assert found.storeharness == version("storeharness")
    assert (found.euid, found.net_admin) == (0, True)
    assert found.tc == shutil.which("tc")  # a namespace shares this machine's files
    assert found.netem in (True, False, None) and found.netem_detail
    # one machine, one clock: the host's time lies inside our round trip
    assert 0 < found.rtt < 1.0
    assert abs(found.clock_offset) <= found.rtt / 2 + 1e-6
    assert _ns_pids(host) == []  # the agent and its interpreter are gone


def test_a_version_mismatch_is_refused_naming_host_and_install_command(host: Host) -> None:
    with pytest.raises(control.HostError) as err:
        control.check(host, expect_version="9.9.9")
    assert str(err.value) == (
        f"host h0: storeharness {version('storeharness')} but the controller runs 9.9.9; "
        f"install the same version there: {sys.executable} -m pip install 'storeharness==9.9.9'"
    )
    assert _ns_pids(host) == []


def test_a_python_without_storeharness_is_refused(host: Host) -> None:
    bare = "/usr/bin/python3"
    probe = subprocess.run([bare, "-c", "import storeharness"], cwd="/", capture_output=True)
    if not os.path.exists(bare) or probe.returncode == 0:
        pytest.skip(f"needs a Python without storeharness at {bare}")
    other = Host("bare", f"popen//python=ip netns exec {host.namespace} {bare}//chdir=/",
                 host.address)  # fmt: skip
    with pytest.raises(control.HostError, match=(
        f"^host bare: storeharness is not installed for {bare}; install it there: {bare} -m pip "
        "install 'storeharness=="
    )):  # fmt: skip
        control.check(other)
    assert _ns_pids(host) == []


def test_heartbeats_hold_the_lease_and_silence_ends_it(host: Host) -> None:
    lease = 0.6
    agent = control.connect(host, lease=lease)
    try:
        rank = agent.request("spawn", [sys.executable, "-c", "import signal; signal.pause()"])
        # The property is "alive after several lease periods with heartbeats": a duration.
        assert not exits_within(rank, 3 * lease)
        assert agent.request("time") > 0  # the agent still answers
        agent.pause_heartbeat()
        started = time.monotonic()
        assert exits_within(rank, lease + 10)
        assert time.monotonic() - started >= lease / 2  # ended by the lease, not at once
        assert exits_within(agent.info["pid"], 10)
    finally:
        agent.close()
    assert _ns_pids(host) == []


CONTROLLER = """
import sys
from storeharness.harness.hosts import control
from storeharness.harness.hosts.inventory import Host
host = Host("h0", sys.argv[1], "198.18.0.1")
agent = control.connect(host, lease=float(sys.argv[2]))
rank = agent.request("spawn", [sys.executable, "-c", "import signal; signal.pause()"])
print(agent.info["pid"], rank, flush=True)
sys.stdin.read()
"""


def test_a_stopped_controller_leaves_nothing_after_the_lease(host: Host) -> None:
    """SIGSTOP the controller: its pipes stay open but silent, as a cut link's would."""
    lease = 1.0
    ctl = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, host.gateway, str(lease)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        agent_pid, rank = map(int, _first_line(ctl, 30).split())
        assert set(_ns_pids(host)) >= {agent_pid, rank}
        os.kill(ctl.pid, signal.SIGSTOP)
        assert exits_within(rank, lease + 10)
        assert exits_within(agent_pid, 10)
        assert _ns_pids(host) == []
    finally:
        ctl.kill()
        ctl.wait(10)


def test_the_cli_checks_netns_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hosts", "check", "netns:2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["h0", "h1"]
    assert all(f"storeharness {version('storeharness')}" in line for line in lines)


def test_a_check_removes_its_namespaces() -> None:
    tag, said = netns.new_tag(), list[str]()
    assert check_command("netns:2", said.append, tag=tag)
    assert len(said) == 2
    assert netns.namespaces(tag) == []


def test_a_refused_host_fails_the_check(host: Host, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(
        f'[hosts.good]\ngateway = "{host.gateway}"\naddress = "198.18.0.1"\n'
        f'[hosts.nothere]\ngateway = "popen//python=/nonexistent/python"\naddress = "198.18.0.2"\n'
    )
    said: list[str] = []
    assert not check_command(str(hosts), said.append)
    assert said[0].startswith("good: python ")
    assert said[1].startswith("nothere: REFUSED: host nothere: cannot open gateway")
    assert _ns_pids(host) == []


def test_the_cli_refuses_a_bad_hosts_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hosts", "check", "netns:0"]) == 4
    assert "expected netns:N with N a number of hosts 1..64" in capsys.readouterr().err


def test_heartbeat_thread_stops_with_the_agent(host: Host) -> None:
    agent = control.connect(host, lease=0.4)
    agent.close()
    names = {t.name for t in threading.enumerate()}
    assert "heartbeat-h0" not in names
    agent.close()  # idempotent

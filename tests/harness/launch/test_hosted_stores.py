"""torch's TCPStore and etcd served from a namespace host, through its agent.

A world spread over three hosts meets on them; the servers are processes the agent owns (its
run tag, counted on the host), gone when the endpoint closes and when the agent's lease runs out.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from storeharness.harness import scenario, targets
from storeharness.harness.hosts import _hostprocs, control, netns
from storeharness.harness.hosts.inventory import Host, netns_hosts
from storeharness.harness.launch.session import HostSession
from storeharness.harness.run import run_case

from ..procs import exits_within
from . import remote_ranks

pytest.importorskip("execnet")
NEEDS = netns.missing()
pytestmark = [
    pytest.mark.multihost,
    pytest.mark.skipif(NEEDS is not None, reason=f"netns hosts: {NEEDS}"),
]
_everywhere = scenario(world_size=6, name="everywhere_hosted")(remote_ranks.where_am_i)


def _store(name: str) -> str:
    why = targets.get(name).unavailable()
    if why is not None:
        pytest.skip(f"{name}: {why}")
    return name


@pytest.fixture(scope="module")
def hosts() -> Iterator[HostSession]:
    with HostSession("netns:3") as session:
        yield session


def _ns_pids(h: Host) -> set[int]:
    assert h.namespace is not None
    out = subprocess.run(["ip", "netns", "pids", h.namespace], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e]
    return {k.decode(): v.decode(errors="replace") for k, v in pairs}


def _meet(hosts: HostSession, store: str) -> None:
    """Six ranks spread over the three hosts meet on ``store``, served from h0."""
    result = run_case(_everywhere.cases([store], spanning=True)[0], hosts=hosts)
    values = remote_ranks.met_everywhere(result)
    if store == "etcd":  # its handle names the member it reached: h0's data address
        assert all("198.18.0.1:" in v[3] for v in values)


def _owned(hosts: HostSession, store: str, workdir: Path) -> None:
    """``store``'s server on h0 is one more process there, the agent's (its run tag), on h0's
    data address; closing the endpoint ends it and removes etcd's data."""
    h0 = hosts.hosts()[0]
    agent = hosts.agent(h0)
    before = _ns_pids(h0)
    endpoint = targets.get(store).start_on(agent, workdir, timeout=30)
    with endpoint:
        pid = endpoint.pid  # type: ignore[attr-defined]
        # one process more on the host: the server, and for torch's the template it was forked
        # from, unless an earlier call started it (once per agent, it lives as long as the agent)
        template = {_parent(pid)} - {agent.info["pid"]}
        assert _ns_pids(h0) - before == {pid, *template} - before
        before |= template
        owned = agent.request("procs", "list")
        for each in (pid, *template):
            assert each in owned
            assert _environ(each)[_hostprocs.RUN_ENV] == hosts.run
        data = _hostprocs.workdir(hosts.run, h0.name)
        etcd_dirs = list(data.glob("etcd-*"))
        assert bool(etcd_dirs) == store.endswith("etcd")  # etcd keeps its data there
        port = endpoint.port  # type: ignore[attr-defined]
        listening = subprocess.run(
            ["ip", "netns", "exec", str(h0.namespace), "ss", "-Htln", f"sport = :{port}"],
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        assert f"{h0.address}:{port}" in listening  # on the host's data address, not loopback
    assert exits_within(pid, 10)
    assert _ns_pids(h0) == before
    assert pid not in agent.request("procs", "list")
    assert not any(d.exists() for d in etcd_dirs)


# One test per store, each doing several things on the module's hosts: under xdist, tests of a
# module spread over the workers, and each worker's agents would import torch again.


def test_torch_tcp_across_hosts(hosts: HostSession, tmp_path: Path) -> None:
    """Six ranks meet on torch's master on h0; it is the agent's and goes with its endpoint;
    killed on its host, it restarts on the same port (the library's scenario)."""
    _meet(hosts, _store("torch-tcp"))
    _owned(hosts, "torch-tcp", tmp_path)
    from storeharness.scenarios.server import server_killed_mid_wait_then_restarted as sc

    case = next(c for c in sc.cases(["torch-tcp"], spanning=True))
    result = run_case(case, hosts=hosts)
    assert result.passed, result.report()
    assert result.world is not None
    texts = [e.text for e in result.world.events]
    assert any("killed with SIGKILL" in t and "on host h0" in t for t in texts), texts
    assert any(t.startswith("server restarted") and "same port" in t for t in texts), texts


def test_etcd_across_hosts(hosts: HostSession, tmp_path: Path) -> None:
    """Six ranks meet on an etcd member on h0; it is the agent's, keeps its data in the agent's
    workdir, and both go with the endpoint; it has no server faults, and says so."""
    _meet(hosts, _store("etcd"))
    _owned(hosts, "etcd", tmp_path)
    from storeharness.scenarios.server import server_killed_mid_wait_then_restarted as sc

    assert sc.cases(["etcd"], spanning=True) == []
    assert "etcd has no server process to kill or restart" in sc.why_no_case("etcd", True)


def test_torch_etcd_is_served_from_the_store_host_with_v2(
    hosts: HostSession, tmp_path: Path
) -> None:
    _owned(hosts, _store("torch-etcd"), tmp_path)


def test_the_lease_ends_hosted_servers_and_removes_their_data(tmp_path: Path) -> None:
    """A controller gone silent: the agent's lease stops torch's master and etcd, and the
    run's workdir (etcd's data) goes with them."""
    names = [_store("torch-tcp"), _store("etcd")]
    net = netns.build(1)
    try:
        host = netns_hosts(1, net.tag)[0]
        agent = control.connect(host, lease=1.0)
        try:
            endpoints = [targets.get(n).start_on(agent, tmp_path / n, timeout=30) for n in names]
            pids = [e.pid for e in endpoints]  # type: ignore[attr-defined]
            pids += {_parent(p) for p in pids} - {agent.info["pid"]}  # torch's template
            workdir = _hostprocs.workdir(agent.run, host.name)
            assert _ns_pids(host) == {agent.info["pid"], *pids}
            assert list(workdir.glob("etcd-*"))
            agent.pause_heartbeat()
            for pid in (agent.info["pid"], *pids):
                assert exits_within(pid, agent.lease + 10), f"pid {pid} outlived the lease"
            assert _ns_pids(host) == set()
            assert not workdir.exists()
        finally:
            agent.close()
    finally:
        netns.teardown(net.tag)

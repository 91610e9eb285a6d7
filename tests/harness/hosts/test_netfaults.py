"""Host-level faults on namespace hosts: cut, thinned and slowed links, killed and paused hosts.

Three hosts (``netns:3``), one agent each, all of one run.  Traffic is measured with sockets
the test process opens inside the namespaces (:mod:`._netns_io`); every test heals, and the
last ones count that nothing — table, qdisc, process, workdir, namespace — is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storeharness.harness import faults as F
from storeharness.harness.hosts import _hostprocs, control, netfaults, netns
from storeharness.harness.hosts.inventory import netns_hosts

from ..procs import exits_within
from ._netns_io import connects, listener, transfer_seconds, udp_delivered, udp_socket

pytest.importorskip("execnet")
NEEDS = netns.missing() or (
    None if shutil.which("nft") else "nft is not installed: apt-get install nftables"
)
pytestmark = [
    pytest.mark.multihost,
    pytest.mark.skipif(NEEDS is not None, reason=f"host network faults: {NEEDS}"),
]
AT = F.after(0, "go")
CUT = 0.4  # seconds a connect may take before a cut link counts as cut (local: ~1 ms)
SLEEPER = [sys.executable, "-c", "import signal; signal.pause()"]
# a rank that starts a child of its own: the tag reaches it through the environment
PARENT = [sys.executable, "-c",
          "import signal, subprocess, sys\n"
          "subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()'])\n"
          "signal.pause()"]  # fmt: skip


class World:
    def __init__(self, net: netns.NetnsNetwork, run: str) -> None:
        self.net, self.run = net, run
        self.hosts = netns_hosts(len(net.hosts), net.tag)
        self.ns = {h.name: h.namespace or "" for h in self.hosts}
        self.addr = {h.name: h.address for h in self.hosts}
        self.agents = {h.name: control.connect(h, run=run) for h in self.hosts}

    def apply(self, fault: F.HostFault, ports: list[int]) -> str:
        return netfaults.apply(self.agents, fault, self.run, ports)

    def counts(self) -> dict[str, dict[str, list[str]]]:
        return {name: a.request("net", "counts") for name, a in self.agents.items()}

    def listener(self, host: str) -> socket.socket:
        return listener(self.ns[host], self.addr[host])


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    net = netns.build(3)
    w = None
    try:
        w = World(net, f"t{net.tag}")
        yield w
    finally:
        for agent in w.agents.values() if w else ():
            agent.close()
        netns.teardown(net.tag)


@pytest.fixture
def w(world: World) -> Iterator[World]:
    """The module's world, healed after each test (whatever the test left applied)."""
    yield world
    netfaults.heal(world.agents, world.run)


def _empty(counts: dict[str, dict[str, list[str]]]) -> bool:
    return all(not c["tables"] and not c["qdiscs"] for c in counts.values())


def test_a_partition_cuts_two_named_hosts_and_heal_restores(w: World) -> None:
    to_h1, to_h2 = w.listener("h1"), w.listener("h2")
    ports = [to_h1.getsockname()[1], to_h2.getsockname()[1]]
    with to_h1, to_h2:
        assert connects(w.ns["h0"], to_h1, CUT) and connects(w.ns["h0"], to_h2, CUT)
        event = w.apply(F.Partition([["h0"], ["h1"]], AT), ports)
        assert event.startswith("Partition(h0 | h1 when rank 0 at 'go'): dropped h0→h1 h1→h0")
        counts = w.counts()
        assert counts["h0"]["tables"] == counts["h1"]["tables"] == [f"storeharness_{w.run}"]
        assert counts["h2"]["tables"] == []  # named in no group: untouched
        assert not connects(w.ns["h0"], to_h1, CUT)  # silent: a timeout, not a refusal
        assert connects(w.ns["h0"], to_h2, CUT)
        assert connects(w.ns["h1"], to_h2, CUT)
        assert "healed" in netfaults.heal(w.agents, w.run)
        assert connects(w.ns["h0"], to_h1, CUT)
    assert _empty(w.counts())


def test_rules_match_only_the_stores_ports(w: World) -> None:
    store, other = w.listener("h1"), w.listener("h1")
    with store, other:
        assert connects(w.ns["h0"], store, CUT)  # reachable before: the rule is what cuts it
        w.apply(F.Partition([["h0"], ["h1"]], AT), [store.getsockname()[1]])
        assert not connects(w.ns["h0"], store, CUT)
        assert connects(w.ns["h0"], other, CUT)  # e.g. the control path: never matched


def test_isolate_cuts_one_host_from_all_others(w: World) -> None:
    socks = {h: w.listener(h) for h in ("h0", "h1", "h2")}
    ports = [s.getsockname()[1] for s in socks.values()]
    try:
        assert connects(w.ns["h0"], socks["h2"], CUT) and connects(w.ns["h2"], socks["h0"], CUT)
        w.apply(F.Isolate("h2", AT), ports)
        assert not connects(w.ns["h0"], socks["h2"], CUT)
        assert not connects(w.ns["h1"], socks["h2"], CUT)
        assert not connects(w.ns["h2"], socks["h0"], CUT)
        assert connects(w.ns["h0"], socks["h1"], CUT)
        assert connects(w.ns["h1"], socks["h0"], CUT)
    finally:
        for s in socks.values():
            s.close()


def test_loss_drops_about_p_of_the_packets_between_two_hosts_only(w: World) -> None:
    n, p = 400, 0.3
    data1, mark1 = udp_socket(w.ns["h1"], w.addr["h1"]), udp_socket(w.ns["h1"], w.addr["h1"])
    data2, mark2 = udp_socket(w.ns["h2"], w.addr["h2"]), udp_socket(w.ns["h2"], w.addr["h2"])
    ports = [data1.getsockname()[1], data2.getsockname()[1]]
    try:
        event = w.apply(F.Loss(p, AT, between=("h0", "h1")), ports)
        assert "h0→h1 h1→h0" in event
        lost = n - udp_delivered(w.ns["h0"], w.ns["h1"], w.addr["h1"], data1, n, mark1)
        # 30 % of 400 is 120, sd ~9: a loss not applied (0) or applied twice (~200) fails
        assert 0.15 * n < lost < 0.45 * n, f"{lost} of {n} lost with p={p}"
        kept = udp_delivered(w.ns["h0"], w.ns["h2"], w.addr["h2"], data2, n, mark2)
        assert kept == n  # h0→h2 is not between the two hosts
    finally:
        for s in (data1, mark1, data2, mark2):
            s.close()


def test_rate_limits_one_destination_and_not_another(w: World) -> None:
    size, bps = 256 * 1024, 2_000_000  # ~1.05 s at the limit
    to_h1, to_h2 = w.listener("h1"), w.listener("h2")
    with to_h1, to_h2:
        ports = [to_h1.getsockname()[1], to_h2.getsockname()[1]]
        event = w.apply(F.Rate(bps, AT, between=("h0", "h1")), ports)
        assert "2000000 bit/s" in event and "h0→h1" in event
        assert w.counts()["h0"]["qdiscs"] == ["eth0"]
        limited = transfer_seconds(w.ns["h0"], to_h1, size, 10)
        free = transfer_seconds(w.ns["h0"], to_h2, size, 10)
    expected = size * 8 / bps
    assert 0.6 * expected < limited < 4 * expected, (limited, expected)
    assert free < 0.3, free


def _probes(w: World) -> dict[str, dict[str, object]]:
    return {name: a.request("probe") for name, a in w.agents.items()}


def test_latency_is_refused_with_the_netem_reason_when_the_kernel_lacks_it(w: World) -> None:
    probes = _probes(w)
    if probes["h0"]["netem"]:
        pytest.skip("this kernel has netem: latency is applied, not refused")
    fault = F.Latency(0.05, AT, between=("h0", "h1"))
    why = netfaults.unsupported(fault, probes)
    assert why is not None and why.startswith(
        "Latency(0.05 s ± 0, h0↔h1 when rank 0 at 'go') cannot run on host h0: latency needs "
        "the kernel's netem qdisc (sch_netem), which it lacks: "
    )
    assert why.endswith(str(probes["h0"]["netem_detail"]))
    with pytest.raises(control.HostError) as err:
        w.apply(fault, [5000])
    assert str(err.value).endswith(why)
    assert _empty(w.counts())  # refused before anything was touched


def test_latency_delays_a_connect_where_netem_works(w: World) -> None:
    probes = _probes(w)
    why = netfaults.unsupported(F.Latency(0.2, AT), probes)
    if why is not None:
        pytest.skip(why)
    to_h1 = w.listener("h1")
    with to_h1:
        w.apply(F.Latency(0.2, AT, between=("h0", "h1")), [to_h1.getsockname()[1]])
        assert not connects(w.ns["h0"], to_h1, 0.3)  # SYN and SYN-ACK: 0.4 s
        assert connects(w.ns["h0"], to_h1, 2.0)


def test_unsupported_names_a_missing_tool_or_privilege() -> None:
    probe = {"euid": 0, "net_admin": True, "nft": "/usr/sbin/nft", "tc": None, "netem": False,
             "netem_detail": "Error: Specified qdisc kind is unknown."}  # fmt: skip
    probes = {"h0": probe, "h1": {**probe, "net_admin": False, "euid": 1000}}
    assert netfaults.unsupported(F.Rate(8000, AT, between=("h0", "h1")), {"h0": probe}) == (
        "Rate(8000 bit/s, h0↔h1 when rank 0 at 'go') names host 'h1', which is not among the "
        "world's hosts (h0); use one of those names"
    )
    assert netfaults.unsupported(F.Rate(8000, AT), {"h0": probe, "h1": probe}) == (
        "Rate(8000 bit/s when rank 0 at 'go') cannot run on host h0: `tc` is not installed "
        "there (apt-get install iproute2)"
    )
    assert netfaults.unsupported(F.Isolate("h0", AT), probes) == (
        "Isolate(h0 when rank 0 at 'go') cannot run on host h1: it needs CAP_NET_ADMIN (root) "
        "for nft and tc; the agent runs as uid 1000 without it"
    )
    assert netfaults.unsupported(F.PauseHost("h1", AT), probes) is None


def test_a_fault_naming_an_unknown_host_is_refused(w: World) -> None:
    with pytest.raises(ValueError, match="names host 'h7', which is not among the world's hosts"):
        w.apply(F.Isolate("h7", AT), [5000])
    with pytest.raises(ValueError, match=r"serve run .* not 'other'; connect them with run="):
        netfaults.apply(w.agents, F.Isolate("h0", AT), "other", [5000])
    with pytest.raises(control.HostError, match=r"network faults need the store's ports"):
        w.apply(F.Isolate("h0", AT), [])


def _state(pid: int) -> str:
    """A process's state letter from /proc (``T`` stopped, ``Z`` ended, ``-`` gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "-"


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _started(w: World, host: str, argv: list[str]) -> int:
    return int(w.agents[host].request("spawn", argv))


def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``cond()`` holds (a process forked, say: no event announces that)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{cond} did not hold within {timeout} s")
        time.sleep(0.005)


def test_pause_and_kill_host_act_on_exactly_the_runs_processes_there(w: World) -> None:
    parent = _started(w, "h1", PARENT)
    sleeper = _started(w, "h1", SLEEPER)
    elsewhere = _started(w, "h2", SLEEPER)
    # not the run's: inside h1's namespace too, but not started by the agent
    stray = subprocess.Popen(["ip", "netns", "exec", w.ns["h1"], *SLEEPER])
    to_h1 = w.listener("h1")
    try:
        want = {parent, sleeper}
        _until(lambda: len(_children(parent)) == 1)
        # the parent's child is tagged too, through its environment
        listed = set(w.agents["h1"].request("procs", "list"))
        grandchildren = listed - want
        assert len(grandchildren) == 1 and grandchildren <= set(_children(parent))
        run = want | grandchildren

        event = w.apply(F.PauseHost("h1", AT), [to_h1.getsockname()[1]])
        assert event.startswith("PauseHost(h1 when rank 0 at 'go'): SIGSTOP to 3 process(es)")
        _until(lambda: all(_state(pid) == "T" for pid in run))  # a stop lands when scheduled
        assert _state(elsewhere) != "T" and _state(stray.pid) != "T"
        w.apply(F.ResumeHost("h1", AT), [to_h1.getsockname()[1]])
        _until(lambda: all(_state(pid) not in "T-Z" for pid in run))

        assert connects(w.ns["h0"], to_h1, CUT)
        event = w.apply(F.KillHost("h1", AT), [to_h1.getsockname()[1]])
        assert "SIGKILL to 3 process(es)" in event and "link dropped" in event
        assert all(exits_within(pid, 10) for pid in run)
        assert not connects(w.ns["h0"], to_h1, CUT)  # its data link is down too
        assert _state(elsewhere) not in "T-Z" and stray.poll() is None
        assert w.agents["h1"].request("procs", "list") == []
    finally:
        to_h1.close()
        stray.kill()
        stray.wait(10)
        os.kill(elsewhere, signal.SIGKILL)


def _tagged(run: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes() if entry.isdigit() else b""
        except OSError:
            continue
        if f"STOREHARNESS_RUN={run}".encode() in env.split(b"\0"):
            pids.append(int(entry))
    return pids


def _ns_tables(namespace: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", namespace, "nft", "list", "tables"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout


def _ns_qdiscs(namespace: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "show"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout


def test_heal_close_and_teardown_leave_nothing() -> None:
    net = netns.build(3)
    try:
        w = World(net, f"c{net.tag}")
        try:
            for host in ("h0", "h1", "h2"):
                parent = _started(w, host, PARENT)
                _until(lambda: len(_children(parent)) == 1)  # noqa: B023 - used at once
            assert len(_tagged(w.run)) == 6
            w.apply(F.Partition([["h0"], ["h1", "h2"]], AT), [5000])
            w.apply(F.Rate(1_000_000, AT), [5000])
            w.apply(F.Loss(0.5, AT), [5001])
            counts = w.counts()
            assert sum(len(c["tables"]) for c in counts.values()) == 3
            assert sum(len(c["qdiscs"]) for c in counts.values()) == 3
            netfaults.heal(w.agents, w.run)
            assert _empty(w.counts())
            assert all(_hostprocs.workdir(w.run, h).is_dir() for h in ("h0", "h1", "h2"))
        finally:
            for agent in w.agents.values():
                agent.close()
        assert _tagged(w.run) == []
        assert not (_hostprocs.RUNS / w.run).exists()
    finally:
        netns.teardown(net.tag)
    assert netns.namespaces(net.tag) == []


def test_an_agent_whose_lease_ends_removes_its_rules_and_processes() -> None:
    net = netns.build(2)
    try:
        hosts = netns_hosts(2, net.tag)
        run = f"l{net.tag}"
        agents = {h.name: control.connect(h, run=run, lease=0.6) for h in hosts}
        try:
            pid = int(agents["h0"].request("spawn", PARENT))
            netfaults.apply(agents, F.Rate(1_000_000, AT), run, [5000])
            netfaults.apply(agents, F.Isolate("h1", AT), run, [5000])
            assert f"storeharness_{run}" in _ns_tables(hosts[0].namespace or "")
            assert "5348:" in _ns_qdiscs(hosts[0].namespace or "")  # so its absence below counts
            agents["h0"].pause_heartbeat()
            assert exits_within(agents["h0"].info["pid"], 10)
            assert exits_within(pid, 1)
            assert f"storeharness_{run}" not in _ns_tables(hosts[0].namespace or "")
            assert "5348:" not in _ns_qdiscs(hosts[0].namespace or "")
            assert not _hostprocs.workdir(run, "h0").exists()
            assert [p for p in _tagged(run) if _state(p) != "Z"] == []
            assert f"storeharness_{run}" in _ns_tables(hosts[1].namespace or "")  # h1's agent lives
        finally:
            for agent in agents.values():
                agent.close()
    finally:
        netns.teardown(net.tag)


def test_hosts_clean_removes_what_a_killed_run_left_and_spares_a_live_one(
    tmp_path: Path,
) -> None:
    net = netns.build(2)
    try:
        hosts = netns_hosts(2, net.tag)
        toml = tmp_path / "hosts.toml"
        toml.write_text("".join(
            f'[hosts.{h.name}]\ngateway = "{h.gateway}"\naddress = "{h.address}"\n' for h in hosts
        ))  # fmt: skip
        dead, live = f"d{net.tag}", f"v{net.tag}"
        gone = {h.name: control.connect(h, run=dead) for h in hosts}
        alive = {h.name: control.connect(h, run=live) for h in hosts}
        try:
            parent = int(gone["h0"].request("spawn", PARENT))
            _until(lambda: len(_children(parent)) == 1)
            orphan = set(_tagged(dead)) - {parent}
            netfaults.apply(gone, F.Isolate("h0", AT), dead, [5000])
            netfaults.apply(gone, F.Rate(1_000_000, AT), dead, [5000])
            ours = int(alive["h0"].request("spawn", SLEEPER))
            netfaults.apply(alive, F.Loss(0.1, AT), live, [5002])
            assert "5348:" in _ns_qdiscs(hosts[1].namespace or "")  # so its absence below counts
            # the interrupted run: its agents SIGKILLed, so nothing of theirs tears down
            for agent in gone.values():
                os.kill(agent.info["pid"], signal.SIGKILL)
                assert exits_within(agent.info["pid"], 10)
            assert exits_within(parent, 10)  # died with its agent (PR_SET_PDEATHSIG) ...
            assert len(orphan) == 1 and _state(next(iter(orphan))) == "S"  # ... its child did not
            said: list[str] = []
            from storeharness.harness.hosts._cli import clean_command

            assert clean_command(str(toml), said.append), said
            # (a clean running meanwhile elsewhere — another xdist worker — may have killed the
            # orphan first: namespaces share one /proc; the tables are h0's alone)
            assert said[0].startswith("h0: killed ")
            assert f"removed nft tables ['storeharness_{dead}'], qdiscs on ['eth0']" in said[0]
            assert all(exits_within(p, 10) for p in orphan)
            assert _tagged(dead) == []
            assert not (_hostprocs.RUNS / dead).exists()
            assert f"storeharness_{dead}" not in _ns_tables(hosts[1].namespace or "")
            assert "5348:" not in _ns_qdiscs(hosts[1].namespace or "")
            # the live run keeps its process, table and workdir
            assert _state(ours) == "S"
            assert f"storeharness_{live}" in _ns_tables(hosts[0].namespace or "")
            assert _hostprocs.workdir(live, "h0").is_dir()
        finally:
            for agent in [*gone.values(), *alive.values()]:
                agent.close()
    finally:
        netns.teardown(net.tag)


def test_the_cli_cleans_netns_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    from storeharness.harness.cli import main

    assert main(["hosts", "clean", "netns:2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("removed ")  # the namespaces of killed runs, first
    assert [line.split(":")[0] for line in lines[1:]] == ["h0", "h1"]
    assert all(" killed " in line and " workdirs " in line for line in lines[1:])

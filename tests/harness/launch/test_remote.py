"""Ranks on namespace hosts through their agents: the runner's features, the same as locally."""

from __future__ import annotations

import functools
import glob
import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storeharness.harness import Fate, Signal, after
from storeharness.harness.hosts import control, netns
from storeharness.harness.hosts.control import Agent
from storeharness.harness.hosts.inventory import netns_hosts
from storeharness.harness.world import WorldResult, run_world
from storeharness.stores import FileStore

from ..hosts.test_netns import _first_line
from ..procs import TAG, exits_within, tagged
from . import remote_ranks as rr

ROOT = str(Path(__file__).parents[3])

pytest.importorskip("execnet")
NEEDS = netns.missing()
pytestmark = [
    pytest.mark.multihost,
    pytest.mark.skipif(NEEDS is not None, reason=f"netns hosts: {NEEDS}"),
]


@pytest.fixture(scope="module")
def agents() -> Iterator[list[Agent]]:
    """Three namespace hosts with an agent each, for the whole module (connecting costs)."""
    net = netns.build(3)
    connected: list[Agent] = []
    try:
        connected += [control.connect(h) for h in netns_hosts(3, net.tag)]
        yield connected
    finally:
        for agent in connected:
            agent.close()
        netns.teardown(net.tag)


def _world(agents: list[Agent], tmp_path: Path, fn: Any, n: int, **kw: Any) -> WorldResult:
    from storeharness.harness.launch.remote import RemoteLauncher

    opener = functools.partial(FileStore, str(tmp_path / "store"), -1, 10.0)
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    return run_world(fn, n, opener, time_limit=30, log_dir=str(logs),
                     launcher=RemoteLauncher(agents), **kw)  # fmt: skip


def test_six_ranks_on_three_hosts_meet_through_the_store(
    agents: list[Agent], tmp_path: Path
) -> None:
    world = _world(agents, tmp_path, rr.exchange, 6, history=True)
    assert world.ok, [r.describe() for r in world]
    values = world.values()
    assert [v[0] for v in values] == list(range(6))
    assert len({v[2].__repr__() for v in values}) == 1  # everyone saw every key
    # spread: rank r on host r mod 3, each host its own network namespace, not ours
    spaces = [v[1] for v in values]
    assert spaces[:3] == spaces[3:] and len(set(spaces)) == 3
    assert os.readlink("/proc/self/ns/net") not in spaces
    assert [c.host for c in world.clocks] == ["h0", "h1", "h2"]
    for clock in world.clocks:  # one machine, one monotonic clock: within the round trip
        assert 0 < clock.rtt < 0.5 and abs(clock.offset) <= clock.rtt / 2 + 1e-6
    assert world.history is not None
    assert {op.rank for op in world.history.ops} == set(range(6))
    assert (tmp_path / "logs" / "rank-5.log").exists()  # fetched from its host


def test_a_signal_lands_while_the_rank_is_blocked_on_its_host(
    agents: list[Agent], tmp_path: Path
) -> None:
    fault = Signal(signal.SIGUSR1, 0, after(0, "waiting"), blocked=True)
    world = _world(agents, tmp_path, rr.interrupted_wait, 2, faults=[fault])
    assert world.ok, [r.describe() for r in world]
    assert world.values() == ["woke after 1 signal(s)", "set"]
    sent = [e.text for e in world.events if e.kind == "signal"]
    assert len(sent) == 1 and sent[0].startswith("SIGUSR1 sent to rank 0 while blocked in ")


def test_sigstop_then_sigcont(agents: list[Agent], tmp_path: Path) -> None:
    faults = [
        Signal(signal.SIGSTOP, 0, after(0, "waiting"), blocked=True),
        Signal(signal.SIGCONT, 0, after(1, "go set")),
    ]
    world = _world(agents, tmp_path, rr.stopped_and_continued, 2, faults=faults)
    assert world.ok, [r.describe() for r in world]
    assert world.values() == ["continued", "set"]
    texts = [e.text for e in world.events]
    assert texts[0].startswith("SIGSTOP sent to rank 0 while blocked in")
    assert texts[1] == "SIGCONT sent to rank 0"


def test_sigkill_kills_the_remote_rank(agents: list[Agent], tmp_path: Path) -> None:
    world = _world(agents, tmp_path, rr.killed, 2,
                   faults=[Signal(signal.SIGKILL, 0, after(0, "doomed"))])  # fmt: skip
    assert world[0].fate is Fate.DIED and world[0].signal is signal.SIGKILL
    assert world[0].points == ("doomed", "SIGKILL sent")
    assert world[1].value == "saw it end"


def test_a_rank_over_its_budget_is_dumped_where_it_is_stuck(
    agents: list[Agent], tmp_path: Path
) -> None:
    world = _world(agents, tmp_path, rr.stuck, 2, rank_budget=1.0)
    assert world[1].fate is Fate.RETURNED
    stuck = world[0]
    assert stuck.fate is Fate.TIMED_OUT and stuck.error.startswith("rank budget 1 s")
    line = next(i for i, text in enumerate(Path(rr.__file__).read_text().splitlines(), 1)
                if "# STUCK HERE" in text)  # fmt: skip
    assert f'File "{rr.__file__}", line {line} in stuck' in stuck.where
    assert "Current thread" in stuck.log or "most recent call first" in stuck.log


CONTROLLER = """
import pathlib, sys
from storeharness.harness import targets
from storeharness.harness.hosts import control
from storeharness.harness.hosts.inventory import netns_hosts
from storeharness.harness.launch.remote import RemoteLauncher
from storeharness.harness.world import run_world
from tests.harness.launch import remote_ranks

from storeharness.harness.faults import Loss, Rate, after

tag, workdir, lease = sys.argv[1], pathlib.Path(sys.argv[2]), float(sys.argv[3])
agents = [control.connect(h, lease=lease, run=tag) for h in netns_hosts(3, tag)]
endpoint = targets.get("tcp").start_on(agents[0], workdir, timeout=30)  # a server on h0
launcher = RemoteLauncher(agents, own_agents=True, ports=[endpoint.port])
# rules and shaping between h1 and h2 (the store's traffic, on h0, is untouched by them)
launcher.host_fault(Loss(0.01, after(0, "x"), between=("h1", "h2")))
launcher.host_fault(Rate(10**9, after(0, "x"), between=("h1", "h2")))
print(launcher.token, endpoint.pid, *(a.info["pid"] for a in agents), flush=True)
run_world(remote_ranks.announce_and_block, 6, endpoint.opener(), time_limit=60,
          launcher=launcher)
"""


@pytest.fixture
def net3() -> Iterator[netns.NetnsNetwork]:
    net = netns.build(3)
    try:
        yield net
    finally:
        netns.teardown(net.tag)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP])
def test_a_killed_or_silent_controller_leaves_nothing_after_the_lease(
    net3: netns.NetnsNetwork, tmp_path: Path, how: signal.Signals
) -> None:
    """SIGKILL closes the control links; SIGSTOP leaves them open and silent (as a cut link
    does), so only the agents' lease can end the ranks and the store's server."""
    lease, run_tag = 1.0, uuid.uuid4().hex
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    env = {**os.environ, TAG: run_tag, "RANK_FIFO": str(fifo)}
    ctl = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, net3.tag, str(tmp_path / "work"), str(lease)],
        stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    keep = os.open(fifo, os.O_WRONLY)  # a writer of our own: no end-of-file between ranks
    agent_pids: list[str] = []
    try:
        token, server, *agent_pids = _first_line(ctl, 30).split()
        ranks = _ranks_announced(reader, 6, 30)
        hosted = [int(server), *map(int, agent_pids), *ranks]
        assert set(tagged(run_tag)) >= {ctl.pid, *hosted}
        assert len(glob.glob(f"/tmp/storeharness-{token}-*")) == 3  # each host's work dir
        assert _our_rules(net3) == {"tables": 2, "qdiscs": 2}  # nft on h1, h2; tc on h1, h2
        os.kill(ctl.pid, how)
        for pid in hosted:
            assert exits_within(pid, lease + 10), f"pid {pid} outlived the lease"
        assert set(tagged(run_tag)) <= {ctl.pid}
        assert all(_ns_pids(ns) == [] for ns in net3.namespaces())
        assert glob.glob(f"/tmp/storeharness-{token}-*") == []
        assert _our_rules(net3) == {"tables": 0, "qdiscs": 0}
        assert sorted(netns.namespaces(net3.tag)) == sorted(net3.namespaces())  # ours, intact
    finally:
        os.close(keep)
        os.close(reader)
        ctl.kill()
        ctl.wait(10)
        for agent in agent_pids:  # on a failure: let the agents clean up before netns teardown
            exits_within(int(agent), 10)


def _ranks_announced(reader: int, n: int, timeout: float) -> list[int]:
    """The pids ``n`` ranks write into the FIFO, waited for up to ``timeout`` s in total."""
    deadline, data = time.monotonic() + timeout, b""
    while data.count(b"\n") < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(data.split())} of {n} ranks started in {timeout} s"
        if select.select([reader], [], [], left)[0]:
            data += os.read(reader, 4096)
    return [int(line) for line in data.split()]


def _our_rules(net: netns.NetnsNetwork) -> dict[str, int]:
    """How many of our nft tables and root qdiscs the namespace hosts hold, in total."""
    found = {"tables": 0, "qdiscs": 0}
    for ns in net.namespaces():
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c",
             "import json; from storeharness.harness.hosts._hostnet import counts; "
             "print(json.dumps(counts()))"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        counted = json.loads(out.stdout)
        found["tables"] += len(counted["tables"])
        found["qdiscs"] += len(counted["qdiscs"])
    return found


def _ns_pids(namespace: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]

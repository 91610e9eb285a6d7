"""Worlds that span namespace hosts through the user surface: run_case, pytest and the CLI."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from storeharness.harness import scenario
from storeharness.harness.hosts import netns
from storeharness.harness.launch.session import HostSession
from storeharness.harness.run import run_case

from . import remote_ranks

pytest.importorskip("execnet")
NEEDS = netns.missing()
pytestmark = [
    pytest.mark.multihost,
    pytest.mark.skipif(NEEDS is not None, reason=f"netns hosts: {NEEDS}"),
]
ROOT = Path(__file__).parents[3]

_everywhere = scenario(world_size=6, name="everywhere")(remote_ranks.where_am_i)
_placed = scenario(world_size=3, hosts=2, placement={0: 1, 2: "h1"}, name="placed")(
    remote_ranks.where_am_i
)


@pytest.fixture(scope="module")
def hosts() -> Iterator[HostSession]:
    with HostSession("netns:3") as session:
        yield session


def test_six_ranks_spread_over_three_hosts_meet_on_the_store_hosts_server(
    hosts: HostSession,
) -> None:
    result = run_case(_everywhere.cases(["tcp"], spanning=True)[0], hosts=hosts)
    values = remote_ranks.met_everywhere(result)
    assert result.world is not None
    # the server runs on h0 (the store role) at its data address: every rank reached it there
    assert all("198.18.0.1:" in v[3] for v in values)
    assert [c.host for c in result.world.clocks] == ["h0", "h1", "h2"]


def test_a_placement_puts_ranks_on_the_hosts_it_names(hosts: HostSession) -> None:
    result = run_case(_placed.cases(["prefix"], spanning=True)[0], hosts=hosts)
    assert result.passed, result.report()
    assert result.world is not None
    assert [v[0] for v in result.world.values()] == ["h1", "h1", "h1"]


def _stale() -> set[str]:
    return set(netns.stale_tags())


def test_pytest_and_the_cli_run_the_library_across_namespaces() -> None:
    before = _stale()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "0",
         "scenarios/basics.py", "scenarios/crashes.py", "-m", "multihost", "--hosts", "netns:3",
         "--store", "tcp"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
    cli = subprocess.run(
        [sys.executable, "-m", "storeharness", "run", "--hosts", "netns:2", "--store", "tcp",
         "scenarios/election.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-2000:]
    assert "4 passed" in cli.stdout
    assert _stale() <= before  # both removed the namespaces they built

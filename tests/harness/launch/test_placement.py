"""Placement, the scenario surface for hosts, and the --hosts setting: pure parts, no hosts."""

from __future__ import annotations

from typing import Any

import pytest

from storeharness.harness import ScenarioError, scenario
from storeharness.harness._settings import SettingError, resolve
from storeharness.harness.hosts.inventory import Host
from storeharness.harness.launch._placement import place

from . import remote_ranks

HOSTS = [Host("a", "popen", "198.18.0.1", slots=2), Host("b", "popen", "198.18.0.2", slots=3),
         Host("c", "popen", "198.18.0.3", slots=1)]  # fmt: skip


def test_spread_goes_round_robin_and_pack_fills_slots_in_order() -> None:
    assert place(5, HOSTS, "spread") == {0: "a", 1: "b", 2: "c", 3: "a", 4: "b"}
    assert place(5, HOSTS, "pack") == {0: "a", 1: "a", 2: "b", 3: "b", 4: "b"}


def test_an_explicit_placement_names_hosts_by_name_or_index_and_spreads_the_rest() -> None:
    assert place(4, HOSTS, {0: "c", 1: 0}) == {0: "c", 1: "a", 2: "c", 3: "a"}


@pytest.mark.parametrize(
    ("n", "placement", "message"),
    [
        (7, "pack", r"pack: 7 ranks do not fit the hosts' slots \(a: 2, b: 3, c: 1\)"),
        (2, {0: "z"}, r"placement\[0\] = 'z', not among hosts \['a', 'b', 'c'\]"),
        (2, {0: 3}, r"placement\[0\] = 3; the world has hosts 0\.\.2"),
        (2, "round", "placement='round'; use 'spread', 'pack' or a dict of rank -> host"),
    ],
)
def test_what_does_not_fit_is_refused_by_name(n: int, placement: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        place(n, HOSTS, placement)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hosts": 0}, "hosts=0; give the number of hosts its ranks span"),
        ({"hosts": 2, "placement": "round"}, "placement='round'; use 'spread', 'pack'"),
        ({"placement": {0: 1}}, "placement names hosts; say how many with hosts=N"),
        ({"hosts": 2, "placement": {0: 2}}, r"placement\[0\] = 2; the world has hosts 0\.\.1"),
        ({"hosts": 2, "workers": "both"}, "ranks on hosts are processes; set workers='process'"),
    ],
)
def test_bad_host_options_are_refused_at_definition(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        scenario(**options)(remote_ranks.where_am_i)


def test_which_stores_span_hosts() -> None:
    sc = scenario(world_size=2)(remote_ranks.where_am_i)
    spanning = sc.cases(["hash", "file", "tcp", "prefix", "prefix-file"], spanning=True)
    assert [c.target for c in spanning] == ["tcp", "prefix"]
    assert sc.why_no_case("hash", spanning=True) == "hash cannot span hosts"
    assert sc.why_no_case("file", spanning=True) == (
        "file cannot span hosts (a file store would need a directory every host shares)"
    )
    both = scenario(world_size=2, workers="both")(remote_ranks.where_am_i)
    assert [c.workers for c in both.cases(["tcp"], spanning=True)] == ["process"]


def test_a_scenario_that_spans_hosts_needs_them() -> None:
    sc = scenario(world_size=2, hosts=2)(remote_ranks.where_am_i)
    assert sc.cases(["tcp"]) == []
    assert sc.why_no_case("tcp") == (
        "it spans hosts=2: run it with --hosts (netns:2 builds them on this machine)"
    )


def test_hosts_resolve_with_one_precedence_and_bad_values_name_their_source() -> None:
    env = {"STOREHARNESS_HOSTS": "netns:2"}
    assert resolve(env=env).hosts == "netns:2"
    assert resolve(cli={"hosts": ("--hosts", "local")}, env=env).hosts == "local"
    with pytest.raises(SettingError, match=r"^STOREHARNESS_HOSTS='netns:0' \(environment\): "):
        resolve(env={"STOREHARNESS_HOSTS": "netns:0"})
    with pytest.raises(SettingError, match=r"^--hosts='bogus' \(command line\): --hosts 'bogus'"):
        resolve(cli={"hosts": ("--hosts", "bogus")}, env={})

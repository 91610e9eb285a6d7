"""Scenario definitions: checked at import with a message that says how to fix them."""

from __future__ import annotations

import signal

import pytest

from storeharness.harness import (
    Fate,
    NonFixed,
    RankResult,
    ScenarioError,
    Signal,
    after,
    killed,
    never_starts,
    raises,
    returns,
    scenario,
    targets,
    times_out,
)
from storeharness.harness.faults import KillServer, Missing
from storeharness.stores import StoreTimeout


def _fn(ctx: object) -> None:
    return None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"world_size": 0}, "every world size must be >= 1"),
        ({"world_size": []}, "give an int, a list of ints"),
        ({"world_size": "8"}, "give an int, a list of ints"),
        ({"workers": "fibers"}, "use 'process', 'thread' or 'both'"),
        ({"needs": ["teleport"]}, "not a capability; use one of"),
        ({"stores": ["redis"]}, "known stores are"),
        ({"faults": ["SIGINT at 3"]}, "is not a fault"),
        ({"world_size": 2, "faults": [Missing(5)]}, "with world size 2: .*outside a world of 2"),
        (
            {"workers": "thread", "faults": [Signal(signal.SIGINT, 0, after(0, "x"))]},
            "signal faults need process ranks",
        ),
        ({"expect": {9: returns()}}, "outside a world of 4"),
        ({"expect": {0: "returns"}}, "use returns\\(\\), raises\\(Error\\)"),
        ({"expect": {"first": returns()}}, "use a rank number"),
        ({"time_limit": 0}, "time_limit=0; give a number of seconds > 0"),
        ({"op_timeout": -1}, "op_timeout=-1"),
        ({"stores": ["file"], "faults": [KillServer(after(0, "x"))]}, "no server process"),
        ({"world_size": NonFixed(0)}, "slots must be an int >= 1"),
    ],
)
def test_bad_definitions_are_rejected_with_a_fix(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError, match=f"scenario '_fn': .*{message}"):
        scenario(**kwargs)(_fn)  # type: ignore[call-overload]


def test_the_function_must_take_the_context() -> None:
    with pytest.raises(ScenarioError, match="exactly one argument"):
        scenario(lambda: None)  # type: ignore[arg-type, misc]


def test_cases_expand_in_a_fixed_order_and_skip_what_cannot_run() -> None:
    sc = scenario(
        world_size=[2, 8], workers="both", faults=[Signal(signal.SIGINT, 1, after(1, "p"))]
    )(_fn)
    ids = [c.id for c in sc.cases(["hash", "file", "tcp"])]
    # hash takes only threads and signals need processes: no hash case, no thread case.
    assert ids == ["file-process-2", "file-process-8", "tcp-process-2", "tcp-process-8"]
    assert sc.cases(["hash", "file", "tcp"]) == sc.cases(["hash", "file", "tcp"])
    assert sc.why_not(targets.get("hash").spec, "thread") == "signals cannot target thread ranks"


def test_expectations_default_and_negative_ranks() -> None:
    sc = scenario(world_size=4, faults=[Missing(2)], expect={-1: raises(StoreTimeout, "k")})(_fn)
    plan = sc.plan(4, 0)
    assert str(sc.expectation(0, 4, plan)) == "returns"
    assert str(sc.expectation(2, 4, plan)) == "never starts"
    assert str(sc.expectation(3, 4, plan)) == "raises StoreTimeout matching 'k'"


def _result(fate: Fate, **kw: object) -> RankResult:
    return RankResult(0, fate, **kw)  # type: ignore[arg-type]


def test_each_expectation_says_how_a_result_falls_short() -> None:
    assert returns(3).problem(_result(Fate.RETURNED, value=3)) is None
    assert "expected to return 3, but returned 4" in str(
        returns(3).problem(_result(Fate.RETURNED, value=4))
    )
    timeout = StoreTimeout("wait", ["k"], 1.0, 1.0)
    assert (
        raises(StoreTimeout, "'k'").problem(
            _result(Fate.RAISED, exception=timeout, error="StoreTimeout")
        )
        is None
    )
    wrong = raises(KeyError).problem(_result(Fate.RAISED, exception=timeout, error="StoreTimeout"))
    assert wrong == "expected to raise KeyError, but raised StoreTimeout"
    assert killed(signal.SIGKILL).problem(_result(Fate.DIED, exitcode=-9)) is None
    assert "SIGKILL" in str(killed(signal.SIGKILL).problem(_result(Fate.DIED, exitcode=-15)))
    assert times_out().problem(_result(Fate.TIMED_OUT)) is None
    assert "never start" in str(never_starts().problem(_result(Fate.RETURNED)))


def test_a_world_size_override_keeps_only_the_cases_it_fits() -> None:
    sc = scenario(world_size=8, faults=[Signal(signal.SIGINT, 3, after(3, "p"))])(_fn)
    assert [c.world_size for c in sc.cases(["file"], world_sizes=[2, 4])] == [4]
    elastic = scenario(world_size=NonFixed(3))(_fn)
    assert [c.world_size for c in elastic.cases(["file"], world_sizes=[5])] == []

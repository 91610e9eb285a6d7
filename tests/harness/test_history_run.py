"""Histories through the harness: recorded by every rank, judged with the case, drawn on failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from storeharness import RankContext, ScenarioError, scenario
from storeharness.harness import Fate, run_world, targets
from storeharness.harness.faults import Drop, after
from storeharness.harness.history import TIMELINE, History, check
from storeharness.harness.run import CaseResult, load_package, load_scenarios, run_case
from storeharness.stores import StoreError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stale_cache"


def recorded(result: CaseResult) -> History:
    """The run's history (the case must have run and recorded)."""
    assert result.world is not None and result.world.history is not None, result.report()
    return result.world.history


@pytest.fixture
def library() -> dict[str, Any]:
    return {sc.name: sc for sc in load_package("storeharness.scenarios")}


def test_a_failing_check_writes_the_timeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    (sc,) = load_scenarios([str(EXAMPLE / "scenario_config.py")])
    (case,) = sc.cases(["cachingstore:make"])
    result = run_case(case, log_dir=str(tmp_path))
    assert not result.passed
    recorded(result)
    assert all(r.fate.value == "returned" for r in result.world or ())  # only the history says
    (problem,) = result.world_problems
    assert "NOT linearizable" in problem and "<-- contradiction" in problem
    page = Path(result.timeline)
    assert page.name == TIMELINE and page.parent.parent == tmp_path
    html = page.read_text()
    assert 'class="op part bad"' in html and "rank 3 starts" in html  # the Late fault's mark
    assert f"history timeline (HTML): {page}" in result.report()


def test_killed_rank_operations_are_in_the_history(library: dict[str, Any]) -> None:
    sc = library["leader_killed_after_winning"]
    case = sc.cases(["file"], workers="process", world_sizes=[4])[0]
    result = run_case(case)
    assert result.passed, result.report()
    history = recorded(result)
    first = result.world.rank_of("first") if result.world else -1
    mine = [o for o in history if o.rank == first]
    assert [(o.name, o.keys) for o in mine] == [("compare_set", ("leader/term-1",))]
    assert history.verdict.ok is True and history.verdict.ops == len(history)
    assert any("SIGKILL" in text for _, text in history.events)


def test_history_flag_records_and_checks_any_scenario(library: dict[str, Any]) -> None:
    sc = library["leader_election"]
    case = sc.cases(["hash"], workers="thread", world_sizes=[4])[0]
    assert sc.history  # linearizable() turns recording on
    result = run_case(case)
    assert len(recorded(result)) == 4
    sc2 = library["leader_election"]
    assert "--history" not in result.replay()  # the scenario records by itself
    assert sc2 is sc


def test_torch_store_histories_check(library: dict[str, Any]) -> None:
    pytest.importorskip("torch")
    sc = library["leader_election"]
    case = sc.cases(["torch-tcp"], workers="process", world_sizes=[4])[0]
    result = run_case(case)
    assert result.passed, result.report()
    assert recorded(result).verdict.ok is True
    assert {o.name for o in recorded(result)} == {"compare_set"}


def _publish(ctx: RankContext) -> bytes:
    ctx.store.set(f"k{ctx.rank}", "v")
    return ctx.store.get(f"k{ctx.rank}")


def test_history_option_records_a_scenario_that_does_not_ask() -> None:
    sc = scenario(world_size=2, workers="thread", name="publish")(_publish)
    (case,) = sc.cases(["hash"])
    plain = run_case(case)
    assert plain.world is not None and plain.world.history is None  # not asked: not recorded
    result = run_case(case, history=True)
    assert result.passed and recorded(result).verdict.ok is True
    assert len(recorded(result)) == 4
    assert result.replay().endswith("--history")  # a replay records too


def test_history_must_be_a_bool() -> None:
    with pytest.raises(ScenarioError, match="history='yes'; give True"):
        scenario(history="yes")(_publish)  # type: ignore[call-overload]


def _adds(ctx: RankContext) -> list[object]:
    got: list[object] = []
    for i in range(20):
        if i == 1:
            ctx.point("connected")  # its store is open: the reset cannot hit its setup
        if i == 10 and ctx.rank == 0:
            ctx.wait_for(1, "connected")
            ctx.point("drop")  # the proxy resets every connection here
        try:
            got.append(ctx.store.add("n", 1))
        except StoreError as exc:
            got.append(type(exc).__name__)
    return got


def test_broken_connections_give_unknown_outcomes_that_still_check(tmp_path: Path) -> None:
    with targets.start("tcp", tmp_path, timeout=5, proxy=True) as endpoint:
        world = run_world(
            _adds, 2, endpoint.opener(), "process", faults=[Drop(after(0, "drop"))],
            controls=endpoint, history=True,
        )  # fmt: skip
    assert all(r.fate is Fate.RETURNED for r in world), [r.describe() + r.traceback for r in world]
    assert world.history is not None and len(world.history) == 40
    lost = [o for o in world.history if o.unknown]
    assert lost and all("StoreBroken" in o.error for o in lost)
    assert check(world.history).ok is True
    assert any("reset" in text for _, text in world.history.events)

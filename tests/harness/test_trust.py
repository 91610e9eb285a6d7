"""Nothing passes by accident: unfired faults, failed ranks and world checks fail the case;
known failures are marked; expectations can say what a single value cannot."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from storeharness import (
    ANY,
    AnyRank,
    Point,
    RankContext,
    Signal,
    WorldFailed,
    after,
    all_agree,
    exactly_one,
    killed,
    raises,
    returns,
    scenario,
)
from storeharness.harness import Fate, report, run_world
from storeharness.harness.report import Style
from storeharness.harness.run import load_package, run_case
from storeharness.stores import HashStore, StoreTimeout

WAITING = Point("waiting")


def _wait_a_little(ctx: RankContext) -> int:
    if ctx.rank == 1:
        ctx.point(WAITING)
        try:
            ctx.store.wait(["never"], 0.2)
        except StoreTimeout:
            return 1
    return 0


def _case(sc: object, store: str = "file") -> object:
    cases = sc.cases([store])  # type: ignore[attr-defined]
    assert cases
    return cases[0]


def test_a_fault_whose_trigger_never_fires_fails_the_case() -> None:
    misspelled = scenario(
        world_size=2, faults=[Signal(signal.SIGINT, 1, after(1, "waitng"))], name="misspelled"
    )(_wait_a_little)
    result = run_case(_case(misspelled))  # type: ignore[arg-type]
    assert not result.passed
    assert result.world_problems == (
        "fault Signal(SIGINT → rank 1 at 'waitng') never fired; rank 1 reached points "
        "['waiting'] (if that can legitimately happen, give the fault optional=True)",
    )
    assert "never fired" in result.report()
    optional = scenario(
        world_size=2,
        faults=[Signal(signal.SIGINT, 1, after(1, "waitng"), optional=True)],
        name="optional",
    )(_wait_a_little)
    assert run_case(_case(optional)).passed  # type: ignore[arg-type]


def test_a_signal_held_for_a_block_that_never_comes_did_not_fire() -> None:
    never_blocks = scenario(
        world_size=2,
        faults=[Signal(signal.SIGINT, 0, after(0, "go"), blocked=True)],
        name="never_blocks",
    )(lambda ctx: ctx.point("go"))
    result = run_case(_case(never_blocks))  # type: ignore[arg-type]
    assert not result.passed
    assert "rank 0 reached 'go', but rank 0 ended before it blocked" in result.world_problems[0]


def test_killed_reads_as_english_and_names_what_happened() -> None:
    sc = scenario(world_size=1, expect={0: killed(signal.SIGKILL)}, name="k")(lambda ctx: 1)
    result = run_case(_case(sc))  # type: ignore[arg-type]
    assert result.problems[0].startswith("expected to be killed by SIGKILL, but returned 1")


def _one_raises(ctx: RankContext) -> int:
    assert ctx.rank != 1, "rank one objects"
    return ctx.rank


def test_world_results_say_whether_every_rank_returned() -> None:
    result = run_world(_one_raises, 3, HashStore().clone, "thread")
    assert not result.ok
    with pytest.raises(WorldFailed, match=r"1 of 3 ranks did not return:\n  rank 1: raised"):
        result.check()
    fine = run_world(lambda ctx: ctx.rank, 2, HashStore().clone, "thread")
    assert fine.ok and fine.check() is fine


def test_the_world_fixture_raises_unless_told_not_to(tmp_path: Path) -> None:
    (tmp_path / "test_w.py").write_text(
        "def _raise(ctx):\n"
        "    assert ctx.rank != 1, 'rank one objects'\n\n"
        "def test_raises(world):\n"
        "    world(_raise, 2, workers='thread')\n\n"
        "def test_opt_out(world):\n"
        "    result = world(_raise, 2, workers='thread', check=False)\n"
        "    assert [r.fate.value for r in result] == ['returned', 'raised']\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "--rootdir", str(tmp_path), "--store", "hash", str(tmp_path / "test_w.py")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout
    assert "WorldFailed: 1 of 2 ranks did not return" in proc.stdout
    assert "rank one objects" in proc.stdout


def test_expectations_take_predicates_and_tagged_ranks() -> None:
    winner = AnyRank("winner")

    def fn(ctx: RankContext) -> str:
        if ctx.rank == ctx.rank_of(winner):
            raise KeyError("the winner raises")
        return f"rank-{ctx.rank}"

    sc = scenario(
        world_size=4,
        workers="thread",
        expect={
            winner: raises(KeyError, match=lambda exc: "winner" in str(exc)),
            "*": returns(lambda value: value.startswith("rank-")),
        },
        check=exactly_one(lambda r: r.fate is Fate.RAISED, "rank raising"),
        name="tagged",
    )(fn)
    result = run_case(_case(sc, "hash"))  # type: ignore[arg-type]
    assert result.passed, result.report()
    assert result.world is not None
    picked = result.world.rank_of("winner")
    assert result.world[picked].fate is Fate.RAISED
    assert str(result.expected[picked]) == "raises KeyError satisfying a lambda"
    bad = scenario(world_size=2, workers="thread", expect={"*": returns(lambda v: v > 5)},
                   name="bad")(lambda ctx: ctx.rank)  # fmt: skip
    result = run_case(_case(bad, "hash"))  # type: ignore[arg-type]
    assert result.problems[1] == "expected to return a value satisfying a lambda, but returned 1"


def test_world_checks_see_every_rank() -> None:
    disagree = scenario(world_size=3, workers="thread", check=all_agree(), name="disagree")(
        lambda ctx: ctx.rank % 2
    )
    result = run_case(_case(disagree, "hash"))  # type: ignore[arg-type]
    assert not result.passed and not result.problems
    assert result.world_problems == (
        "expected every rank to agree, but got 0 from ranks [0, 2]; 1 from ranks [1]",
    )
    none_win = scenario(
        world_size=2, workers="thread", check=exactly_one(lambda r: r.value, "winner"),
        name="none_win",
    )(lambda ctx: False)  # fmt: skip
    result = run_case(_case(none_win, "hash"))  # type: ignore[arg-type]
    assert result.world_problems == ("expected exactly one winner, found 0 (none)",)


def test_the_library_elects_one_leader_and_a_successor_when_it_is_killed() -> None:
    library = {sc.name: sc for sc in load_package("storeharness.scenarios")}
    for name in ("leader_election", "leader_killed_after_winning"):
        case = library[name].cases(["file"], workers="process", world_sizes=[4])[0]
        result = run_case(case)
        assert result.passed, result.report()
        assert not result.world_problems
    assert result.world is not None
    first = result.world.rank_of("first")
    assert result.world[first].signal is signal.SIGKILL
    roles = sorted(r.value[0] for r in result.world if r.rank != first)
    assert roles == ["follower", "follower", "leader"]


def test_known_failures_are_marked_in_the_cli(tmp_path: Path) -> None:
    (tmp_path / "scenario_known.py").write_text(
        "from storeharness import scenario\n\n"
        "@scenario(world_size=1, workers='thread', xfail={'hash': 'hash is known to fail'})\n"
        "def fails_on_hash(ctx):\n"
        "    assert False, 'known'\n\n"
        "@scenario(world_size=1, workers='thread', xfail='fixed since')\n"
        "def passes_now(ctx):\n"
        "    return 1\n"
    )
    run = [sys.executable, "-m", "storeharness", "run", "scenario_known.py", "--store", "hash"]
    proc = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "XFAIL " in proc.stdout and "XPASS " in proc.stdout
    assert "1 xfailed, 1 xpassed" in proc.stdout
    strict = subprocess.run(
        [*run, "--xfail-strict"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert strict.returncode == 1, strict.stdout + strict.stderr


def test_pytest_marks_above_or_below_scenario_apply(tmp_path: Path) -> None:
    (tmp_path / "scenario_marks.py").write_text(
        "import pytest\n"
        "from storeharness import scenario\n\n"
        "@pytest.mark.xfail(reason='above')\n"
        "@scenario(world_size=1, workers='thread')\n"
        "def above(ctx):\n"
        "    assert False\n\n"
        "@scenario(world_size=1, workers='thread')\n"
        "@pytest.mark.xfail(reason='below')\n"
        "def below(ctx):\n"
        "    assert False\n\n"
        "@scenario(world_size=1, workers='thread', xfail={'hash': 'dict'})\n"
        "def by_store(ctx):\n"
        "    assert False\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "addopts=",
         "--rootdir", str(tmp_path), "--store", "hash", "scenario_marks.py"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert "3 xfailed" in proc.stdout, proc.stdout + proc.stderr
    cli = subprocess.run(
        [sys.executable, "-m", "storeharness", "run", "scenario_marks.py", "--store", "hash"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert cli.stdout.count("XFAIL ") == 3 and "3 xfailed" in cli.stdout


def test_any_in_expect_needs_a_tag() -> None:
    from storeharness import ScenarioError

    with pytest.raises(ScenarioError, match="give it a tag"):
        scenario(expect={ANY: returns()})(lambda ctx: None)


def test_a_skip_mark_skips_in_the_cli_too(tmp_path: Path) -> None:
    (tmp_path / "scenario_skip.py").write_text(
        "import pytest\n"
        "from storeharness import scenario\n\n"
        "@pytest.mark.skip(reason='not on this machine')\n"
        "@scenario(world_size=1, workers='thread')\n"
        "def skipped(ctx):\n"
        "    assert False\n\n"
        "@scenario(world_size=1, workers='thread')\n"
        "def runs(ctx):\n"
        "    return 1\n"
    )
    cli = subprocess.run(
        [sys.executable, "-m", "storeharness", "run", "scenario_skip.py", "--store", "hash"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "skipped skipped (not on this machine)" in cli.stderr
    assert " 1 passed, 1 skipped in " in cli.stdout  # counted as pytest counts it


def _blocks_forever(ctx: RankContext) -> None:
    ctx.store.wait(["never-set"], 0)


@pytest.mark.parametrize("store", ["tcp", "prefix", "tcp-pure"])
def test_a_stuck_thread_rank_on_tcp_is_woken_at_its_time_limit(store: str, tmp_path: Path) -> None:
    from storeharness.harness import targets

    with targets.start(store, tmp_path, timeout=30) as endpoint:
        result = run_world(
            _blocks_forever, 2, endpoint.opener(), "thread", time_limit=1.0, controls=endpoint
        )
    assert [r.fate for r in result] == [Fate.TIMED_OUT] * 2
    for rank in result:
        assert "still blocked" not in rank.error, rank.error  # the thread did not leak
    assert result.elapsed < 4.5, result.elapsed  # a leaked thread costs 6 s; 3.75 s seen loaded


def user_hash_store(workdir: Path) -> HashStore:
    """A user's store factory (``--store tests.harness.test_trust:user_hash_store``)."""
    return HashStore()


def _hits_a_gap(ctx: RankContext) -> None:
    from storeharness.stores import UnsupportedOperation

    raise UnsupportedOperation("SomeStore", "compare_set")


def test_a_gap_is_unsupported_only_in_a_store_not_ours() -> None:
    # A store of torch's or a user's may lack an operation (the case is reported as a skip
    # naming it); ours claim the whole contract, so the same gap there is a plain failure.
    gap = scenario(world_size=2, workers="thread", name="gap")(_hits_a_gap)
    ours = run_case(_case(gap, "hash"))  # type: ignore[arg-type]
    assert not ours.passed and ours.unsupported == ""
    theirs = run_case(_case(gap, "tests.harness.test_trust:user_hash_store"))  # type: ignore[arg-type]
    assert not theirs.passed
    assert theirs.unsupported == "rank 0: SomeStore does not support compare_set()"
    # The CLI counts it as pytest does: skipped, and the run still succeeds.
    assert (ours.outcome, ours.ok) == ("FAIL", False)
    assert (theirs.outcome, theirs.ok) == ("skip", True)
    assert report.status(theirs) == "skipped"
    assert "1 skipped" in report.summary([theirs], 0.1, Style(False))
    line = report.case_line(theirs, [theirs.case], Style(False))
    assert line.startswith("SKIP") and line.endswith("(rank 0: SomeStore does not support "
                                                     "compare_set())"), line  # fmt: skip


def test_a_case_the_hosts_cannot_run_is_a_skip_naming_why_even_when_expected_to_fail() -> None:
    from storeharness.harness.run import CaseResult

    gap = scenario(world_size=2, workers="thread", name="gap", xfail="known")(_hits_a_gap)
    case = _case(gap, "hash")
    why = "Latency(...) cannot run on host h0: no netem"
    result = CaseResult(case, False, 0, 0.0, cannot_run=why, xfail="known")  # type: ignore[arg-type]
    assert (result.outcome, result.ok, result.unsupported) == ("skip", True, why)
    assert report.status(result) == "skipped" and "1 skipped" in report.summary(
        [result], 0.1, Style(False)
    )
    assert report.case_line(result, [case], Style(False)).endswith(f"({why})")  # type: ignore[list-item]

"""The report a person reads, from results built by hand: frames, grouping, summary, hooks."""

from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from storeharness import harness, stores
from storeharness.harness import (
    Event,
    EventKind,
    Fate,
    RankContext,
    RankResult,
    WorldResult,
    returns,
    scenario,
)
from storeharness.harness import report as R
from storeharness.harness.run import CaseResult
from storeharness.harness.scenario import Case


@scenario(world_size=[2, 8], expect={0: returns(0)})
def _saw(ctx: RankContext) -> int:
    return ctx.rank


@scenario(world_size=2)
def _other(ctx: RankContext) -> int:
    return ctx.rank


# Real locations of the harness and the stores: frames are told apart by where they live.
HARNESS = os.path.dirname(os.path.abspath(harness.__file__))
STORES = os.path.dirname(os.path.abspath(stores.__file__))
HELPER_TB = f"""\
Traceback (most recent call last):
  File "{HARNESS}/context.py", line 122, in run_rank
    value = fn(RankContext(conn, rank, world_size, store, log, seed))
            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/home/me/proj/scenario_saw.py", line 12, in saw
    helpers.check(ctx, value)
  File "/home/me/proj/helpers.py", line 5, in check
    assert value == 0, f"rank {{ctx.rank}} saw {{value}}"
           ^^^^^^^^^^
AssertionError: rank 1 saw 1
"""


def _rank(rank: int, problem: bool, tb: str = "", log: str = "") -> RankResult:
    if not problem:
        return RankResult(rank, Fate.RETURNED, rank)
    return RankResult(rank, Fate.RAISED, error="AssertionError: saw", traceback=tb, log=log)


def _result(
    sc: object, store: str, size: int, problem: str = "", tb: str = "", log: str = ""
) -> CaseResult:
    assert isinstance(sc, type(_saw))
    case = Case(sc, store, "process", size)
    ranks = tuple(_rank(r, bool(problem) and r > 0, tb, log) for r in range(size))
    problems = {r: problem.format(rank=r, size=size) for r in range(1, size)} if problem else {}
    events = (Event(at=0.25, kind=EventKind.SIGNAL, text="SIGINT sent to rank 1", rank=1),)
    world = WorldResult(ranks, events, 1.0)
    return CaseResult(
        case, not problems, 7, 0.5, world, {r: returns() for r in range(size)}, problems
    )


def test_a_helpers_assertion_names_the_helpers_file_and_line() -> None:
    frames, exception = R.last_frames(HELPER_TB)
    assert [(f.filename, f.lineno) for f in frames if isinstance(f, R.Frame)] == [
        ("/home/me/proj/scenario_saw.py", 12),
        ("/home/me/proj/helpers.py", 5),
    ]  # the harness's own frame left out, carets dropped
    assert exception == ["AssertionError: rank 1 saw 1"]
    assert R.raised_at(HELPER_TB) == "at /home/me/proj/helpers.py:5 in check"


def test_deep_store_frames_keep_the_scenario_line_first() -> None:
    store_frames = "".join(
        f'  File "{STORES}/m{i}.py", line {i}, in f{i}\n    call()\n' for i in range(6)
    )
    tb = (
        "Traceback (most recent call last):\n"
        '  File "/home/me/scenario_x.py", line 3, in x\n    ctx.store.wait(["k"])\n'
        f"{store_frames}StoreTimeout: wait timed out\n"
    )
    frames, _ = R.last_frames(tb)
    first = frames[0]
    assert isinstance(first, R.Frame) and first.filename == "/home/me/scenario_x.py"
    assert frames[1] == 3  # frames elided between the scenario's line and the innermost three
    assert len(frames) == 5
    assert R.raised_at(tb) == "from /home/me/scenario_x.py:3 in x"


def test_the_log_tail_leaves_out_the_traceback_and_stack_dump_shown_apart() -> None:
    log = (
        "t rank 1 INFO hello\nt rank 1 INFO about to check\n"
        "t rank 1 ERROR rank 1 raised Traceback (most recent call last):\n  File ...\n"
    )
    assert R.log_tail(_rank(1, True, log=log)) == [
        "t rank 1 INFO hello",
        "t rank 1 INFO about to check",
    ]
    dumped = "t rank 1 INFO stuck\nCurrent thread 0x00007f (most recent call first):\n  File x\n"
    assert R.log_tail(_rank(1, True, log=dumped)) == ["t rank 1 INFO stuck"]


def test_a_failure_tells_every_rank_the_events_and_the_exact_replay() -> None:
    result = _result(_saw, "file", 2, "expected to return, but raised X", HELPER_TB,
                     "t rank 1 INFO hello\n")  # fmt: skip
    text = R.render(result)
    assert "_saw[file-process-2]: FAILED in 0.50 s (seed 7)" in text
    assert "✓ rank 0: returned 0" in text and "✗ rank 1: raised AssertionError" in text
    assert "raised at /home/me/proj/helpers.py:5 in check" in text
    assert "/home/me/proj/scenario_saw.py:12 in saw\n            helpers.check(ctx, value)" in text
    assert "log:\n        | t rank 1 INFO hello" in text
    assert "0.250 s  SIGINT sent to rank 1" in text
    assert f"replay: storeharness run '{_saw.file}::_saw[file-process-2]' --store file " in text
    assert text.endswith("--harness-seed 7")
    # Under pytest the replay hint is the node id (and a store outside the defaults).
    assert R.replay_command(result, "t.py::_saw[file-process-2]") == (
        "pytest 't.py::_saw[file-process-2]' --harness-seed 7"
    )
    torch = _result(_saw, "torch-tcp", 2, "boom")
    assert R.replay_command(torch, "t.py::x") == "pytest t.py::x --store torch-tcp --harness-seed 7"
    assert "--world-size 3" in R.replay_command(_result(_saw, "file", 3, "boom"))


def test_identical_failures_across_sizes_and_stores_are_shown_once() -> None:
    problem = "expected to return, but raised AssertionError: rank {rank} of {size} saw 1.25 s"
    results = [
        _result(_saw, "file", 2, problem),
        _result(_saw, "tcp", 8, problem),
        _result(_saw, "file", 8, "expected to return, but timed out"),
        _result(_other, "file", 2, problem),
        _result(_saw, "hash", 2),  # passed
    ]
    groups = R.group_failures(results)
    assert [(g.case.nodeid, [o.case.id for o in alike]) for g, alike in groups] == [
        ("_saw[file-process-2]", ["tcp-process-8"]),
        ("_saw[file-process-8]", []),
        ("_other[file-process-2]", []),
    ]


def test_the_summary_counts_as_pytest_does_leaving_out_zeros() -> None:
    results = [_result(_saw, "file", 2), _result(_saw, "tcp", 2, "boom")]
    line = R.summary(results, 1.234, R.Style())
    assert " 1 passed, 1 failed in 1.23 s " in line and line.startswith("==")
    assert "\x1b[" not in line
    assert "\x1b[31;1m" in R.summary(results, 1.0, R.Style(True))  # red: something failed
    assert "(interrupted)" in R.summary(results[:1], 1.0, R.Style(), "SIGTERM")


def test_xfail_outcomes_and_world_problems() -> None:
    base = _result(_saw, "file", 2)
    judged: dict[str, Any] = {"case": base.case, "seed": 7, "elapsed": 0.5,
                              "world": base.world, "expected": base.expected}  # fmt: skip
    xfailed = CaseResult(passed=False, problems={0: "saw 1"}, xfail="known", **judged)
    xpassed = CaseResult(passed=True, xfail="known", **judged)
    strict = CaseResult(passed=True, xfail="known", xfail_strict=True, **judged)
    unfired = CaseResult(
        passed=False,
        world_problems=("fault SIGINT to rank 1 never fired; rank 1 reached points []",),
        **judged,
    )
    assert [R.status(r) for r in (xfailed, xpassed, strict, unfired)] == [
        "xfailed", "xpassed", "failed", "failed"
    ]  # fmt: skip
    assert [r.ok for r in (xfailed, xpassed, strict, unfired)] == [True, True, False, False]
    assert R.case_line(xfailed, [base.case], R.Style()).startswith("XFAIL ")
    assert "1 xfailed, 1 xpassed" in R.summary([xfailed, xpassed], 1.0, R.Style())
    assert "✗ fault SIGINT to rank 1 never fired" in R.render(unfired)
    assert "✗ XPASS(strict): expected to fail (known), but it passed" in R.render(strict)
    assert "replay: " in R.render(strict)
    assert R.json_row(unfired)["world_problems"] == [unfired.world_problems[0]]
    suite = R.junit([xfailed, unfired], 1.0).getroot()
    skipped = suite.find("testcase/skipped")
    assert skipped is not None and skipped.get("message") == "known"
    failure = suite.find("testcase/failure")
    assert failure is not None and "never fired" in failure.get("message", "")
    assert (suite.get("skipped"), suite.get("failures")) == ("1", "1")


def test_junit_classnames_are_module_paths() -> None:
    result = _result(_saw, "file", 2)
    suite = R.junit([result], 1.0).getroot()
    case = suite.find("testcase")
    assert case is not None and case.get("classname") == __name__
    assert case.get("name") == "_saw[file-process-2]"
    assert isinstance(ET.tostring(suite), bytes)


def test_a_load_error_is_one_located_line() -> None:
    try:
        compile("def broken(:\n", "/home/me/scenario_bad.py", "exec")
    except SyntaxError as exc:
        assert R.located(exc) == "/home/me/scenario_bad.py:1: SyntaxError: invalid syntax"
    try:
        exec(compile("raise RuntimeError('no config')", "/home/me/scenario_cfg.py", "exec"))
    except RuntimeError as exc:
        assert R.located(exc) == "/home/me/scenario_cfg.py:1: RuntimeError: no config"


@pytest.mark.parametrize(
    ("choice", "env", "tty", "color"),
    [
        ("auto", {}, True, True),
        ("auto", {}, False, False),
        ("auto", {"NO_COLOR": "1"}, True, False),
        ("auto", {"FORCE_COLOR": "1"}, False, True),
        ("auto", {"TERM": "dumb"}, True, False),
        ("yes", {"NO_COLOR": "1"}, False, True),
        ("no", {}, True, False),
    ],
)
def test_colour_on_a_terminal_never_when_piped_or_with_no_color(
    choice: str, env: dict[str, str], tty: bool, color: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    assert R.Style.choose(Stream(), choice).color is color

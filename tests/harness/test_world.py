"""The world runner: every rank's fate, named points, stack dumps on deadlines, no survivors."""

from __future__ import annotations

import functools
import os
import signal
import threading
from pathlib import Path

import pytest

from storeharness.harness import ANY, EventKind, Fate, RankContext, RankStopped, run_world
from storeharness.harness.faults import Late, Missing, Signal, after, resolve
from storeharness.stores import FileStore, HashStore, StoreTimeout


def _alive(pid: int | None) -> bool:
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _mixed(ctx: RankContext) -> int:
    if ctx.rank == 1:
        raise KeyError("rank one fails")
    if ctx.rank == 2:
        ctx.point("about-to-die")
        os.kill(os.getpid(), signal.SIGKILL)
    if ctx.rank == 3:
        ctx.point("stuck")
        ctx.store.wait(["never-set"], 0)  # blocks until the runner's deadline stops it
    return ctx.rank * 10


def test_every_fate_is_reported_and_no_child_survives(tmp_path: Path) -> None:
    opener = functools.partial(FileStore, str(tmp_path / "fs"))
    result = run_world(_mixed, 5, opener, "process", time_limit=3.0, faults=[Missing(4)])
    fates = [r.fate for r in result]
    assert fates == [Fate.RETURNED, Fate.RAISED, Fate.DIED, Fate.TIMED_OUT, Fate.MISSING]
    assert result[0].value == 0
    assert isinstance(result[1].exception, KeyError)
    assert "rank one fails" in result[1].traceback
    assert result[2].signal is signal.SIGKILL and result[2].points == ("about-to-die",)
    assert "killed by SIGKILL" in result[2].describe()
    stuck = result[3]
    assert stuck.points == ("stuck",)
    # The faulthandler dump names the scenario line the rank was stuck on.
    assert "test_world.py" in stuck.where and "_mixed" in stuck.where, stuck.where
    assert "line " in stuck.log and "in _mixed" in stuck.log  # the dump is in its log
    assert "never started" in result[4].describe()
    for rank in result.ranks[:4]:
        assert rank.exitcode is not None and not _alive(rank.pid)


def _sum(ctx: RankContext) -> int:
    assert ctx.world_size is not None
    ctx.store.add("total", ctx.rank)
    ctx.store.barrier("b", ctx.world_size, 30)
    return ctx.store.add("total", 0)


@pytest.mark.parametrize("workers", ["process", "thread"])
def test_world_shares_one_store(tmp_path: Path, workers: str) -> None:
    opener = functools.partial(FileStore, str(tmp_path / "fs"))
    assert run_world(_sum, 6, opener, workers).values() == [15] * 6


def test_thread_world_on_hash_store() -> None:
    assert run_world(_sum, 5, HashStore().clone, "thread").values() == [10] * 5


def _waits_for_points(ctx: RankContext) -> str:
    if ctx.rank == 0:
        ctx.point("first")
        return "first"
    ctx.wait_for(ctx.rank - 1, "first" if ctx.rank == 1 else f"after-{ctx.rank - 1}")
    ctx.point(f"after-{ctx.rank}")
    return f"after {ctx.rank - 1}"


@pytest.mark.parametrize("workers", ["process", "thread"])
def test_ranks_coordinate_through_points(workers: str) -> None:
    result = run_world(_waits_for_points, 4, HashStore().clone if workers == "thread" else
                       functools.partial(HashStore), workers)  # fmt: skip
    assert result.values() == ["first", "after 0", "after 1", "after 2"]


def _awaits_the_missing(ctx: RankContext) -> None:
    ctx.wait_for(1, "never")


def test_waiting_for_a_rank_that_ends_stops_the_waiter() -> None:
    result = run_world(_awaits_the_missing, 2, HashStore, "thread", faults=[Missing(1)])
    assert result[0].fate is Fate.RAISED
    assert "rank 1 ended without reaching 'never'" in result[0].error


def _late(ctx: RankContext) -> tuple[int | None, bool]:
    if ctx.rank == 0:
        ctx.store.set("zero-was-here", "1")
        ctx.point("ready")
    return ctx.world_size, ctx.store.check(["zero-was-here"])


def test_late_ranks_start_on_their_trigger_and_untriggered_ones_never(tmp_path: Path) -> None:
    opener = functools.partial(FileStore, str(tmp_path / "fs"))
    faults = [Late(1, after(0, "ready")), Late(2, after(0, "no-such-point"))]
    result = run_world(_late, 3, opener, "process", fixed=False, faults=faults)
    assert result[1].fate is Fate.RETURNED and result[1].value == (None, True)
    assert result[2].fate is Fate.MISSING
    assert "rank 0 at 'no-such-point'" in result[2].error
    assert any("rank 1 starts" in e.text for e in result.events)


def _after_an_ended_rank(ctx: RankContext) -> str:
    if ctx.rank == 1:
        try:
            ctx.wait_for(0, "a point rank 0 never reaches")
        except RankStopped:  # answered once rank 0 has ended and its pipe is closed
            ctx.point("zero-gone")
    return "ran"


def test_a_late_rank_launches_after_others_have_ended(tmp_path: Path) -> None:
    # Found by the xdist reliability run: launching collected the fds of every rank's pipe,
    # including pipes already closed, and failed with "handle is closed".
    opener = functools.partial(FileStore, str(tmp_path / "fs"))
    result = run_world(_after_an_ended_rank, 3, opener, faults=[Late(2, after(1, "zero-gone"))])
    assert result.values() == ["ran"] * 3


def _stops(ctx: RankContext) -> None:
    if ctx.rank == 1:
        ctx.point("paused")
        ctx.store.set("one", "resumed")
        return
    ctx.wait_for(1, "paused")
    ctx.point("checked")  # SIGCONT is sent here, so rank 1 resumes only after this
    ctx.store.wait(["one"], 10)


def test_sigstop_and_sigcont_at_points(tmp_path: Path) -> None:
    faults = [
        Signal(signal.SIGSTOP, 1, after(1, "paused")),
        Signal(signal.SIGCONT, 1, after(0, "checked")),
    ]
    opener = functools.partial(FileStore, str(tmp_path / "fs"))
    result = run_world(_stops, 2, opener, "process", faults=faults)
    assert [r.fate for r in result] == [Fate.RETURNED, Fate.RETURNED]
    sent = [e.text for e in result.events]
    assert sent == ["SIGSTOP sent to rank 1", "SIGCONT sent to rank 1"]
    assert [(e.kind, e.rank) for e in result.events] == [(EventKind.SIGNAL, 1)] * 2
    first, second = result.events
    assert 0 <= first.at <= second.at <= result.elapsed
    assert str(first) == f"{first.at:8.3f} s  SIGSTOP sent to rank 1"  # as reports print it


USR1 = Signal(signal.SIGUSR1, 1, after(1, "waiting"), blocked=True)


def _acts_once_signalled(ctx: RankContext) -> int:
    if ctx.rank == 1:
        handled: list[int] = []
        signal.signal(signal.SIGUSR1, lambda signum, frame: handled.append(signum))
        ctx.point("waiting")
        ctx.store.wait(["go"], 30)  # nobody sets it before the signal is sent
        return len(handled)
    ctx.wait_for(1, USR1.sent)
    ctx.store.set("go", "1")
    return 0


def test_a_rank_can_wait_until_a_signal_is_sent(tmp_path: Path) -> None:
    opener = functools.partial(FileStore, str(tmp_path / "fs"))
    result = run_world(_acts_once_signalled, 2, opener, "process", faults=[USR1])
    assert result.values() == [0, 1]
    assert USR1.sent == "SIGUSR1 sent" and USR1.sent in result[1].points
    assert [e.text.split(" while")[0] for e in result.events] == ["SIGUSR1 sent to rank 1"]


def _forever(ctx: RankContext) -> None:
    ctx.point("waiting")
    ctx.store.wait(["never"], 0)


def test_rank_budget_stops_only_the_slow_rank(tmp_path: Path) -> None:
    def fn(ctx: RankContext) -> str:
        if ctx.rank == 0:
            _forever(ctx)
        return "quick"

    opener = functools.partial(FileStore, str(tmp_path / "fs"))
    result = run_world(fn, 2, opener, "process", time_limit=30, rank_budget=0.5)
    assert result[0].fate is Fate.TIMED_OUT and "rank budget 0.5 s" in result[0].error
    assert result[1].value == "quick"
    assert result.elapsed < 10


def test_thread_ranks_past_the_deadline_lose_their_store() -> None:
    result = run_world(_forever, 2, HashStore().clone, "thread", time_limit=0.5)
    assert [r.fate for r in result] == [Fate.TIMED_OUT] * 2
    assert "_forever" in result[0].where
    assert not [t for t in threading.enumerate() if t.name.startswith("rank-")]


def _deaf_forever(release: threading.Event, ctx: RankContext) -> None:
    release.wait(30)  # blocked where neither the stop message nor a closed store reaches


def test_a_thread_that_outlives_its_stop_is_abandoned_once_not_joined_again() -> None:
    release = threading.Event()
    try:
        result = run_world(functools.partial(_deaf_forever, release), 1, HashStore, "thread",
                           time_limit=0.3)  # fmt: skip
        assert result[0].fate is Fate.TIMED_OUT
        assert "the thread is still blocked" in result[0].error
        # the time limit, the stop message's wait and one last join (0.5 s each); joining it
        # again at teardown cost 2 s more
        assert result.elapsed < 2.0, result.elapsed
    finally:
        release.set()


def _times_out(ctx: RankContext) -> None:
    ctx.store.wait(["absent"], 0.2)


def test_op_timeout_applies_to_every_operation() -> None:
    result = run_world(lambda ctx: ctx.store.wait(["absent"]), 1, HashStore, "thread",
                       op_timeout=0.2)  # fmt: skip
    assert isinstance(result[0].exception, StoreTimeout)
    assert result[0].exception.timeout == 0.2


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="world_size"):
        run_world(_sum, 0, HashStore)
    with pytest.raises(ValueError, match="workers"):
        run_world(_sum, 1, HashStore, "fiber")
    with pytest.raises(ValueError, match="time_limit"):
        run_world(_sum, 1, HashStore, time_limit=0)
    with pytest.raises(ValueError, match="cannot target a thread"):
        run_world(_sum, 1, HashStore, "thread", faults=[Signal(signal.SIGINT, 0, after(0, "x"))])
    with pytest.raises(ValueError, match="outside a world of 2"):
        run_world(_sum, 2, HashStore, faults=[Missing(5)])
    with pytest.raises(ValueError, match="not a fault"):
        run_world(_sum, 2, HashStore, faults=["SIGINT"])  # type: ignore[list-item]


def _one_stuck_one_asking(ctx: RankContext) -> None:
    if ctx.rank == 0:
        ctx.point("stuck")
        ctx.store.wait(["never"], 0)
    ctx.wait_for(0, "a point rank 0 never reaches")


def test_the_stop_message_ends_a_rank_that_listens_before_any_signal() -> None:
    result = run_world(_one_stuck_one_asking, 2, HashStore, "process", time_limit=0.5)
    assert [r.fate for r in result] == [Fate.TIMED_OUT, Fate.TIMED_OUT]
    # Rank 1 was reading its pipe: the stop message ended it (RankStopped), so only rank 0,
    # asleep in the store, needed SIGTERM.
    assert [e.text for e in result.events if "SIGTERM" in e.text] == ["SIGTERM sent to rank(s) 0"]
    assert result[1].exitcode == 0


def _ignores_sigterm(ctx: RankContext) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx.point("deaf")
    ctx.store.wait(["never"], 0)


def test_a_rank_that_ignores_sigterm_is_killed_by_the_ladder() -> None:
    result = run_world(_ignores_sigterm, 1, HashStore, "process", time_limit=0.5)
    assert result[0].fate is Fate.TIMED_OUT and result[0].exitcode == -signal.SIGKILL
    assert "world time limit" in result[0].error
    assert [(e.kind, e.text) for e in result.events] == [
        (EventKind.STUCK, "rank 0 stuck at the world time limit; collecting its stack"),
        (EventKind.ESCALATED, "SIGTERM sent to rank(s) 0"),
        (EventKind.ESCALATED, "SIGKILL sent to rank(s) 0"),
    ]
    assert not _alive(result[0].pid)


def _fate_of_any(ctx: RankContext) -> int:
    return ctx.rank


def test_the_result_carries_the_plan_its_seed_resolved() -> None:
    faults = [Missing(ANY)]
    for seed in range(4):
        result = run_world(_fate_of_any, 4, HashStore().clone, "thread", faults=faults, seed=seed)
        assert result.plan == resolve(faults, 4, seed)
        (missing,) = result.plan
        assert isinstance(missing, Missing) and isinstance(missing.rank, int)
        assert result[missing.rank].fate is Fate.MISSING
        assert [(e.kind, e.rank) for e in result.events] == [(EventKind.HELD_BACK, missing.rank)]

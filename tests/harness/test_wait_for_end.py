"""ctx.wait_for_end(rank): a rank waits until another has ended (returned, raised, died, or never
started); a killed process rank is reaped by then.  Bad requests are refused by name."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from pathlib import Path

from storeharness.harness import Fate, RankContext, run_world
from storeharness.harness.faults import Missing, Signal, after
from storeharness.stores import FileStore, HashStore, StoreTimeout


def _outlives_the_victim(ctx: RankContext) -> object:
    if ctx.rank == 1:
        ctx.store.set("victim-pid", str(os.getpid()))
        ctx.point("die")  # SIGKILLed here
        return "survived"
    ctx.wait_for_end(1)
    pid = int(ctx.store.get("victim-pid"))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    return "still there"


def test_waits_until_a_killed_rank_is_gone(tmp_path: Path) -> None:
    result = run_world(
        _outlives_the_victim, 2, functools.partial(FileStore, str(tmp_path / "fs")), "process",
        faults=[Signal(signal.SIGKILL, 1, after(1, "die"))],
    )  # fmt: skip
    assert result[1].fate is Fate.DIED
    assert result[0].value == "gone"  # reaped: not even a zombie is left to signal


def _order(ctx: RankContext) -> object:
    if ctx.rank == 0:
        ctx.wait_for_end(1)
        return ctx.store.get("one-was-here")  # set before rank 1 returned
    if ctx.rank == 1:
        ctx.store.set("one-was-here", "yes")
        return None
    ctx.wait_for_end(3)  # never started: at once
    return "missing is ended"


def test_returns_for_an_ended_and_a_missing_rank() -> None:
    store = HashStore()
    result = run_world(_order, 4, store.clone, "thread", faults=[Missing(3)])
    assert result.values()[:3] == [b"yes", None, "missing is ended"]


def _bad(ctx: RankContext) -> None:
    ctx.wait_for_end(ctx.rank if ctx.rank == 0 else 7)


def test_refuses_itself_and_ranks_outside_the_world() -> None:
    store = HashStore()
    result = run_world(_bad, 2, store.clone, "thread")
    assert result[0].fate is Fate.RAISED and "cannot wait for its own end" in result[0].error
    assert result[1].fate is Fate.RAISED and "no rank 7 in a world of 2" in result[1].error


def _stop_then_cont(ctx: RankContext) -> str:
    if ctx.rank == 1:
        ctx.point("frozen")  # SIGSTOP is held until this rank blocks in a system call
        while not ctx.store.check(["cont-fired"]):  # busy, never blocked: the SIGSTOP waits
            pass
        with contextlib.suppress(StoreTimeout):
            ctx.store.wait(["never-set"], 0.2)  # blocks: SIGSTOP lands here, then SIGCONT
        return "ran on"
    ctx.wait_for(1, "frozen")
    ctx.point("cont")  # fires SIGCONT while the SIGSTOP is still held
    ctx.store.set("cont-fired", "1")
    return "sent"


def test_a_signal_behind_a_held_one_waits_its_turn(tmp_path: Path) -> None:
    result = run_world(
        _stop_then_cont, 2, functools.partial(FileStore, str(tmp_path / "fs")), "process",
        time_limit=20,
        faults=[Signal(signal.SIGSTOP, 1, after(1, "frozen"), blocked=True),
                Signal(signal.SIGCONT, 1, after(0, "cont"))],
    )  # fmt: skip
    assert result.values() == ["sent", "ran on"], [r.describe() for r in result]
    sent = [e.text for e in result.events if "sent to rank 1" in e.text]
    assert sent[0].startswith("SIGSTOP") and sent[1].startswith("SIGCONT"), sent

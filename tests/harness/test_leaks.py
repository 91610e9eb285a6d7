"""Hundreds of runs leave nothing behind: no process, fd, listening port or temporary file."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from storeharness.harness import RankContext, scenario
from storeharness.harness.faults import KillServer, Missing, RestartServer, Signal, after
from storeharness.harness.run import run_case
from storeharness.harness.scenario import Case, killed, never_starts, raises, returns, times_out
from storeharness.harness.targets import forkserver
from storeharness.stores import StoreBroken, StoreTimeout

RUNS = 200


def _children(of: int | None = None) -> set[int]:
    me = str(os.getpid() if of is None else of)
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it ended while we looked
            if fields[1] == me and fields[0] != "Z":
                found.add(int(entry))
    return found


def _listening_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        inodes |= {row.split()[9] for row in rows if row.split()[3] == "0A"}
    return inodes


def _my_listeners() -> int:
    listening = _listening_inodes()
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in listening:
            count += 1
    return count


@scenario(world_size=3, workers="both")
def _exchange(ctx: RankContext) -> int:
    ctx.store.set(f"k{ctx.rank}", "v")
    ctx.store.barrier("b", 3)
    return len(ctx.store.multi_get(["k0", "k1", "k2"]))


@scenario(
    world_size=3,
    time_limit=0.3,
    faults=[Missing(2)],
    expect={0: times_out(), 1: raises(StoreTimeout), 2: never_starts()},
)
def _stuck(ctx: RankContext) -> None:
    if ctx.rank == 0:
        ctx.store.wait(["never"], 0)
    ctx.store.wait(["never"], 0.05)


@scenario(
    world_size=2,
    faults=[Signal(signal.SIGKILL, 1, after(1, "die"))],
    expect={1: killed(signal.SIGKILL)},
)
def _killed(ctx: RankContext) -> int:
    ctx.point("die")
    return ctx.rank


@scenario(
    world_size=1,
    stores=["tcp"],
    faults=[KillServer(after(0, "kill")), RestartServer(after(0, "restart"))],
    expect={0: returns(b"again")},
)
def _restarted(ctx: RankContext) -> bytes:
    ctx.point("kill")
    with contextlib.suppress(StoreBroken):  # the killed server's connection is gone
        ctx.store.get("gone")
    ctx.point("restart")
    ctx.store.set("k", "again")
    return ctx.store.get("k")


def _mix() -> list[Case]:
    cases = [
        *_exchange.cases(["hash", "file", "tcp"]),
        *_stuck.cases(["file", "tcp"]),
        *_killed.cases(["file", "tcp"]),
        *_restarted.cases(["tcp"]),
    ]
    return [cases[i % len(cases)] for i in range(RUNS)]


def test_hundreds_of_runs_leave_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    # The server templates are started once per process and kept (as multiprocessing's fork
    # server is): start them first, so that what is counted below is what the runs leave.
    warm = run_case(_restarted.cases(["tcp"])[0], tmp_root=str(root))
    assert warm.passed, warm.report()
    template = forkserver.template().pid
    assert template is not None
    fds_before = len(os.listdir("/proc/self/fd"))
    children_before = _children()
    listeners_before = _my_listeners()
    rank_pids: set[int] = set()
    failures = []
    for case in _mix():
        result = run_case(case, tmp_root=str(root))
        if not result.passed:
            failures.append(result.report())
        assert result.world is not None
        rank_pids |= {r.pid for r in result.world if r.pid is not None}
    assert not failures, failures[0]
    assert _children() - children_before == set(), "a child process outlived its run"
    assert _children(of=template) == set(), "a server forked from the template outlived its run"
    still = [pid for pid in rank_pids if os.path.exists(f"/proc/{pid}")]
    assert not still, f"rank processes still exist: {still}"
    assert len(os.listdir("/proc/self/fd")) <= fds_before, "file descriptors leaked"
    assert _my_listeners() == listeners_before, "a listening socket stayed open"
    assert list(root.iterdir()) == [], "temporary files were left behind"

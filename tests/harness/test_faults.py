"""Server and network faults against real endpoints, and seeded plans that replay."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from storeharness.harness import ANY, AnyRank, Fate, RankContext, run_world, targets
from storeharness.harness.faults import (
    Blackhole,
    Delay,
    Drop,
    Fault,
    Heal,
    KillServer,
    Missing,
    RestartServer,
    Signal,
    after,
    resolve,
)
from storeharness.harness.targets import open_checked
from storeharness.harness.targets.server import ServerEndpoint
from storeharness.stores import StoreBroken, StoreError, StoreTimeout


def _survives_a_restart(ctx: RankContext) -> tuple[str, bool, bytes]:
    ctx.store.set("before", "x")
    ctx.point("kill")  # the server is SIGKILLed here
    try:
        ctx.store.get("before")
        seen = "answered"
    except StoreBroken:
        seen = "broken"
    ctx.point("restart")  # a fresh server takes over the same listening socket
    ctx.store.set("after", "y")
    return seen, ctx.store.check(["before"]), ctx.store.get("after")


@pytest.mark.parametrize("target", ["tcp", "prefix"])
def test_server_killed_and_restarted_on_the_same_endpoint(tmp_path: Path, target: str) -> None:
    with targets.start(target, tmp_path, timeout=10) as endpoint:
        assert isinstance(endpoint, ServerEndpoint)
        port = endpoint.port
        faults: list[Fault] = [KillServer(after(0, "kill")), RestartServer(after(0, "restart"))]
        result = run_world(
            _survives_a_restart, 1, endpoint.opener(), "process", faults=faults,
            controls=endpoint,
        )  # fmt: skip
        assert endpoint.port == port
    assert result[0].fate is Fate.RETURNED, result[0].describe()
    # The old connection broke; the restarted server has none of the old data.
    assert result[0].value == ("broken", False, b"y")
    assert [e.text.split(" (")[0] for e in result.events] == [
        "server",
        "server restarted",
    ]


def _through_the_proxy(ctx: RankContext) -> dict[str, object]:
    seen: dict[str, object] = {}
    ctx.store.set("k", "v")
    ctx.point("slow")  # from here every chunk waits 0.1 s each way
    start = time.monotonic()
    ctx.store.get("k")
    seen["delayed"] = time.monotonic() - start
    ctx.point("hole")  # from here nothing gets through
    try:
        ctx.store.get("k")
    except StoreTimeout as exc:
        seen["blackholed"] = "no reply" in str(exc)
    ctx.point("heal")
    seen["healed"] = ctx.store.get("k")
    ctx.point("drop")  # every proxied connection is reset
    try:
        ctx.store.add("n", 1)
        seen["dropped"] = "still connected"
    except StoreBroken:
        seen["dropped"] = "reset"
    seen["after"] = ctx.store.add("n", 1)  # a new connection through the healed proxy
    return seen


def test_proxy_delays_blackholes_heals_and_drops(tmp_path: Path) -> None:
    faults: list[Fault] = [
        Delay(0.1, after(0, "slow")),
        Blackhole(after(0, "hole")),
        Heal(after(0, "heal")),
        Drop(after(0, "drop")),
    ]
    # 1 s per operation: the delayed get (0.2 s of held bytes) keeps 0.8 s of slack for a loaded
    # machine; the black-holed get must still end by its timeout.
    with targets.start("tcp", tmp_path, timeout=1.0, proxy=True) as endpoint:
        result = run_world(
            _through_the_proxy, 1, endpoint.opener(), "process", faults=faults,
            controls=endpoint,
        )  # fmt: skip
    assert result[0].fate is Fate.RETURNED, result[0].describe() + result[0].traceback
    seen = result[0].value
    assert seen["delayed"] >= 0.2  # request and reply each held 0.1 s
    assert seen["blackholed"] is True
    assert seen["healed"] == b"v"
    assert seen["dropped"] == "reset"
    assert seen["after"] == 1


def test_a_rank_that_reaches_another_runs_store_fails_fast(tmp_path: Path) -> None:
    with (
        targets.start("tcp", tmp_path / "a", timeout=5) as mine,
        targets.start("tcp", tmp_path / "b", timeout=5) as theirs,
    ):
        # This run's token and namespace, but the other run's address (a stale port, say).
        with pytest.raises(StoreError, match="is not the store this run set up"):
            open_checked(theirs.raw(), mine.token, mine.namespace)
        with mine.opener()() as store:  # the right address passes
            store.set("k", "v")


def test_seeded_plans_replay_and_negative_ranks_wrap() -> None:
    faults: list[Fault] = [Signal(signal.SIGINT, ANY, after(AnyRank("t"), "p")), Missing(-1)]
    first = resolve(faults, 8, seed=7)
    assert resolve(faults, 8, seed=7) == first
    assert first[1] == Missing(7)
    picks = {getattr(resolve(faults, 8, seed)[0], "rank") for seed in range(40)}  # noqa: B009
    assert len(picks) > 1  # the seed matters
    tagged: list[Fault] = [Missing(AnyRank("x")), Missing(AnyRank("x"))]
    a, b = resolve(tagged, 8, seed=3)
    assert a == b  # one tag, one pick
    with pytest.raises(ValueError, match="no rank left"):
        resolve([Missing(AnyRank(exclude=(0, 1)))], 2, 0)


def test_network_faults_need_a_proxy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="network faults need a store reached over TCP"):
        targets.start("file", tmp_path, timeout=5, proxy=True)
    with (
        targets.start("file", tmp_path, timeout=5) as endpoint,
        pytest.raises(ValueError, match="no server to kill"),
    ):
        endpoint.kill_server()

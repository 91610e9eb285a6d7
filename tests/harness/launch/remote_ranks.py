"""Rank functions for the remote launcher tests: a module with no relative imports, so that it
travels to a host as source and imports there under its own name."""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import TYPE_CHECKING

from storeharness.harness import RankContext
from storeharness.harness.faults import sent

if TYPE_CHECKING:  # not imported on the hosts this module travels to
    from storeharness.harness.run import CaseResult


def exchange(ctx: RankContext) -> tuple[int, str, list[bytes]]:
    """Every rank sets its key and reads everyone's: a rendezvous across hosts."""
    ctx.store.set(f"rank{ctx.rank}", socket.gethostname() + str(os.getpid()))
    assert ctx.world_size is not None
    ctx.store.wait([f"rank{r}" for r in range(ctx.world_size)])
    values = [ctx.store.get(f"rank{r}") for r in range(ctx.world_size)]
    return ctx.rank, _netns(), values


def _netns() -> str:
    return os.readlink("/proc/self/ns/net")


def interrupted_wait(ctx: RankContext) -> str:
    """Rank 0 blocks in a wait that only a signal ends; rank 1 sets the key after SIGUSR1 came."""
    if ctx.rank == 0:
        hit: list[int] = []
        signal.signal(signal.SIGUSR1, lambda signum, frame: hit.append(signum))
        ctx.point("waiting")
        ctx.store.wait(["go"])  # SIGUSR1 lands while this blocks; the wait carries on
        return f"woke after {len(hit)} signal(s)"
    ctx.wait_for(0, sent(signal.SIGUSR1))
    ctx.store.set("go", "1")
    return "set"


def stopped_and_continued(ctx: RankContext) -> str:
    """Rank 0 is stopped while it waits, rank 1 sees it stopped, then it is continued."""
    if ctx.rank == 0:
        ctx.point("waiting")
        ctx.store.wait(["go"])
        return "continued"
    ctx.wait_for(0, sent(signal.SIGSTOP))
    ctx.store.set("go", "1")
    ctx.point("go set")
    return "set"


def killed(ctx: RankContext) -> str:
    """Rank 0 is SIGKILLed at a point; rank 1 waits for its end."""
    if ctx.rank == 0:
        ctx.point("doomed")
        time.sleep(60)  # never ends by itself: the SIGKILL fault ends it
        return "survived"
    ctx.wait_for_end(0)
    return "saw it end"


def stuck(ctx: RankContext) -> str:
    """Rank 0 waits for a key nobody sets (the per-rank budget stops it); rank 1 returns."""
    if ctx.rank == 0:
        ctx.store.wait(["never set"])  # STUCK HERE
    return "done"


def announce_and_block(ctx: RankContext) -> None:
    """Tell the test this rank runs (its pid into the FIFO the test reads), then block."""
    with open(os.environ["RANK_FIFO"], "w") as fifo:
        fifo.write(f"{os.getpid()}\n")
    ctx.store.wait(["never set"])


def where_am_i(ctx: RankContext) -> tuple[str, str, str, str]:
    """A rendezvous over the store: each rank publishes where it runs, and reads everyone's
    (and says which store it reached)."""
    ctx.store.set(f"at/{ctx.rank}", f"{ctx.host} {ctx.address}")
    assert ctx.world_size is not None
    keys = [f"at/{r}" for r in range(ctx.world_size)]
    ctx.store.wait(keys)
    seen = ",".join(v.decode() for v in ctx.store.multi_get(keys))
    return ctx.host, ctx.address, seen, repr(ctx.store)


def met_everywhere(result: CaseResult) -> list[tuple[str, str, str, str]]:
    """``where_am_i``'s six ranks ran round-robin on h0..h2, each at its host's data address,
    and every rank saw every rank's key; their values, for what a test checks further."""
    assert result.passed, result.report()
    assert result.world is not None
    values = result.world.values()
    expected = [(f"h{r % 3}", f"198.18.0.{r % 3 + 1}") for r in range(6)]
    assert [v[:2] for v in values] == expected
    seen = ",".join(f"{h} {a}" for h, a in expected)
    assert all(v[2] == seen for v in values)  # everyone saw every rank's key
    return values

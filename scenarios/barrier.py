"""Barriers: everyone arrives before anyone leaves, at scale, and round after round.

A barrier's promise is that no caller leaves it before the last one has entered.  Each scenario
here counts arrivals with ``add`` *before* entering, so a rank that leaves the barrier and reads
the count sees every rank of the world (or, for a reused barrier, of its round): a barrier that
let anyone out early shows up as a short count.
"""

from __future__ import annotations

from storeharness import RankContext, all_agree, scenario


def _everyone_arrives(ctx: RankContext) -> int:
    """Count this rank in, pass the barrier, and return how many had arrived by then."""
    n = ctx.world_size
    assert n is not None
    ctx.store.add("arrived", 1)
    ctx.store.barrier("everyone", n)
    arrived = int(ctx.store.get("arrived"))
    assert arrived == n, f"rank {ctx.rank} left the barrier when only {arrived} of {n} had come"
    return arrived


@scenario(
    world_size=256,
    workers="process",
    needs=["cross_process"],
    slow=True,
    time_limit=600,
    op_timeout=300,
    check=all_agree(),
)
def barrier_256_processes(ctx: RankContext) -> int:
    """256 process ranks meet at one barrier; none leaves before all 256 have arrived."""
    return _everyone_arrives(ctx)


@scenario(
    world_size=1024,
    workers="thread",
    slow=True,
    time_limit=600,
    op_timeout=300,
    check=all_agree(),
)
def barrier_1024_threads(ctx: RankContext) -> int:
    """1024 thread ranks, each with its own handle, meet at one barrier; none leaves early."""
    return _everyone_arrives(ctx)


#: How many times the world passes the reusable barrier.
ROUNDS = 5


def reusable_barrier(ctx: RankContext, key: str, n: int) -> int:
    """A barrier one key can serve round after round (``store.barrier`` is single use).

    Every arrival takes a ticket from one counter; tickets ``r*n+1 .. (r+1)*n`` make round
    ``r``.  The ticket that completes a round opens that round's gate; the others wait for it.
    Returns the round this caller passed.
    """
    ticket = ctx.store.add(f"{key}/tickets", 1)
    round_ = (ticket - 1) // n
    if ticket % n == 0:
        ctx.store.set(f"{key}/gate/{round_}", "open")
    ctx.store.wait([f"{key}/gate/{round_}"])
    return round_


@scenario(world_size=[4, 8], workers="both", check=all_agree())
def barrier_reused_across_rounds(ctx: RankContext) -> list[int]:
    """The world passes one reusable barrier five times; in each round, every rank's write of
    that round is visible to every rank once it is through, and no rank runs a round ahead."""
    n = ctx.world_size
    assert n is not None
    passed = []
    for expected in range(ROUNDS):
        ctx.store.set(f"round/{expected}/rank/{ctx.rank}", str(expected))
        passed.append(reusable_barrier(ctx, "sync", n))
        seen = ctx.store.multi_get([f"round/{expected}/rank/{r}" for r in range(n)])
        assert seen == [str(expected).encode()] * n, f"round {expected}: rank {ctx.rank} saw {seen}"
        ahead = [r for r in range(n) if ctx.store.check([f"round/{expected + 2}/rank/{r}"])]
        assert not ahead, (
            f"ranks {ahead} reached round {expected + 2} while {ctx.rank} is in {expected}"
        )
    assert passed == list(range(ROUNDS)), f"rank {ctx.rank} passed rounds {passed}"
    return passed

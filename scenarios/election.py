"""Leader election with ``compare_set``: exactly one winner, and a successor when it dies.

The pattern many rendezvous implementations use: every candidate tries to create the leader
key with ``compare_set(key, "", my_id)``; the store's atomicity alone decides, and whatever
``compare_set`` returns is the winner's id, so every rank learns the same leader.
"""

from __future__ import annotations

import signal

from storeharness import (
    AnyRank,
    Point,
    RankContext,
    Signal,
    after,
    all_agree,
    exactly_one,
    killed,
    linearizable,
    returns,
    scenario,
)

#: Point names as constants: a typo is a NameError, not a fault that never fires.
WON = Point("won")

#: The rank the seeded plan picks to win the first round (and to be killed for winning it).
FIRST = AnyRank("first")


def _elect(ctx: RankContext, key: str) -> tuple[str, int]:
    """Try to become leader of ``key``; return the role and the leader every rank agrees on."""
    leader = ctx.store.compare_set(key, "", str(ctx.rank))
    return ("leader" if leader == str(ctx.rank).encode() else "follower"), int(leader)


@scenario(
    world_size=[4, 8],
    workers="both",
    check=[
        exactly_one(lambda r: r.value[0] == "leader", "leader"),
        all_agree(lambda r: r.value[1]),
        linearizable(),
    ],
)
def leader_election(ctx: RankContext) -> tuple[str, int]:
    """Every rank races to create the leader key at once: exactly one wins, all agree on it."""
    return _elect(ctx, "leader")


@scenario(
    world_size=[4, 8],
    faults=[Signal(signal.SIGKILL, FIRST, after(FIRST, WON))],
    expect={FIRST: killed(signal.SIGKILL), "*": returns()},
    check=[
        exactly_one(lambda r: r.value is not None and r.value[0] == "leader", "successor"),
        all_agree(lambda r: r.value[1]),
        linearizable(),
    ],
)
def leader_killed_after_winning(ctx: RankContext) -> tuple[str, int]:
    """The first round's winner is SIGKILLed as it takes office; the rest elect one successor.

    The rank the plan picks tries first (the others wait until it has), so it must win round
    one; were the store to let another rank win, the kill would never fire and the case fails.
    """
    first = ctx.rank_of(FIRST)
    if ctx.rank == first:
        role, _ = _elect(ctx, "leader/term-1")
        if role == "leader":
            ctx.point(WON)  # SIGKILLed here
        return role, -1
    ctx.wait_for(first, WON)  # it won and is dead: elect its successor
    role, successor = _elect(ctx, "leader/term-2")
    assert ctx.store.get("leader/term-1") == str(first).encode()
    return role, successor

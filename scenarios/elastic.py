"""Elastic worlds: members come and go, and after a death the survivors form a new world.

Two patterns torchelastic-style launchers rely on:

- **membership**: a member registers (``add`` hands out ids, ``set`` publishes who holds one)
  and deregisters when it leaves; whoever computes the live set from the store must see
  exactly the members that joined and have not left;
- **re-rendezvous**: when a member dies mid-round, the survivors notice (a barrier that times
  out), agree on the next round number with ``compare_set`` (whoever is first moves it on, the
  rest read the same value), and form a new world from the members still alive, each taking a
  new rank in it.
"""

from __future__ import annotations

import signal

from storeharness import (
    AnyRank,
    NonFixed,
    Point,
    RankContext,
    Signal,
    WorldResult,
    after,
    all_agree,
    killed,
    returns,
    scenario,
)
from storeharness.stores import StoreTimeout

JOINED, LEFT = Point("joined"), Point("left")


@scenario(
    # ranks 0, 1, 2 start; 3 joins once 0 is in; 4 joins once 2 has left
    world_size=NonFixed(5, late={3: after(0, JOINED), 4: after(2, LEFT)}),
    workers="both",
    expect={0: returns([0, 1, 3, 4]), 2: returns("left")},
    check=all_agree(among=lambda r: r.rank != 2),
)
def members_join_late_and_leave(ctx: RankContext) -> object:
    """Members join late and one leaves mid-scenario; the live set read from the store is exact.

    Every member registers; rank 2 deregisters and leaves before rank 4 joins.  The fifth to
    register announces the world complete, and rank 0 publishes the live set (registered minus
    deregistered), which every member still present reads.
    """
    member = ctx.store.add("members", 1)
    ctx.store.set(f"member/{member}", str(ctx.rank))
    ctx.point(JOINED)
    if ctx.rank == 2:
        ctx.store.set(f"left/{ctx.rank}", "1")
        ctx.point(LEFT)
        return "left"
    if member == 5:
        ctx.store.set("all-registered", "1")
    if ctx.rank == 0:
        ctx.store.wait(["all-registered"])
        ranks = [int(r) for r in ctx.store.multi_get([f"member/{i}" for i in range(1, 6)])]
        live = sorted(r for r in ranks if not ctx.store.check([f"left/{r}"]))
        ctx.store.set("live", ",".join(map(str, live)))
    ctx.store.wait(["live"])
    return [int(r) for r in ctx.store.get("live").decode().split(",")]


#: The rank the seeded plan kills in round 0 (never rank 0, so the report reads simply).
VICTIM = AnyRank("victim", exclude=(0,))
WORKING = Point("working")
#: How long a step's barrier waits for a missing member: the failure detector.
DETECT = 1.0
#: How much longer a survivor then waits for each heartbeat.  A live member sets its heartbeat
#: before it enters the barrier, so by now it has had DETECT + GRACE to do so; the dead one's
#: never comes, and waiting for it is what reading the members costs.
GRACE = 0.5


def _live_members(ctx: RankContext, round_: int, n: int) -> list[int]:
    """The members of ``round_`` still alive: those whose heartbeat key appears in time."""
    alive = []
    for r in range(n):
        try:
            ctx.store.wait([f"round/{round_}/alive/{r}"], GRACE)
            alive.append(r)
        except StoreTimeout:
            pass
    return alive


def new_world_is_consistent(world: WorldResult) -> str | None:
    """A world check: survivors agree on round and members, and took ranks 0..size-1 once each."""
    views = [r.value for r in world if r.value is not None]
    if len({(v["round"], tuple(v["members"])) for v in views}) != 1:
        return f"survivors disagree on the new world: {views}"
    new_ranks = sorted(v["new_rank"] for v in views)
    if new_ranks != list(range(len(views))):
        return f"new ranks {new_ranks}: expected each of 0..{len(views) - 1} once"
    return None


@scenario(
    world_size=4,
    workers="process",
    needs=["cross_process"],
    faults=[Signal(signal.SIGKILL, VICTIM, after(VICTIM, WORKING))],
    expect={VICTIM: killed(signal.SIGKILL), "*": returns(lambda v: v["round"] == 1)},
    check=new_world_is_consistent,
)
def re_rendezvous_after_a_rank_dies(ctx: RankContext) -> dict[str, object]:
    """A rank is SIGKILLed mid-round; the survivors detect it, move to round 1, form a new world.

    Round 0: every member sends a heartbeat and meets at the step's barrier, except the victim,
    killed as it starts working.  The barrier times out for the survivors; they read who is
    alive, agree on round 1 with ``compare_set`` and take new ranks in a world of the survivors,
    where a barrier of the new size completes.
    """
    n = ctx.world_size
    assert n is not None
    ctx.point(WORKING)  # the victim dies here
    ctx.store.set(f"round/0/alive/{ctx.rank}", "1")
    try:
        ctx.store.barrier("round/0/step", n, timeout=DETECT)
        raise AssertionError("round 0's step completed without the dead rank")
    except StoreTimeout:
        pass  # a member is missing: re-rendezvous
    members = _live_members(ctx, 0, n)
    # The first survivor moves the round on (round 0 is the key's absence: compare_set with
    # expected "" creates it); every later survivor is handed the value it found, the same 1.
    round_ = int(ctx.store.compare_set("round", "", "1"))
    new_rank = members.index(ctx.rank)
    ctx.store.set(f"round/{round_}/rank/{new_rank}", str(ctx.rank))
    ctx.store.barrier(f"round/{round_}/start", len(members))
    return {"round": round_, "members": members, "new_rank": new_rank}

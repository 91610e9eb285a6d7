"""A rank dies or freezes in the middle of a store operation; the others and the store go on.

- SIGKILL while blocked in ``wait`` or in a blocking ``queue_pop``: the dead rank's pending
  request must not hold anything up.  The others carry on, a key it waited for wakes the
  others who wait for it, and an item pushed after its death goes to a live consumer (a store
  that handed it to the dead rank's abandoned pop would lose it).
- SIGSTOP past everyone else's timeout, then SIGCONT: the frozen rank's own operation times
  out as soon as it runs again (it does not hang, and it does not report success), and the
  store serves everyone as before.
"""

from __future__ import annotations

import signal
import time

from storeharness import Point, RankContext, Signal, after, killed, returns, scenario
from storeharness.stores import StoreTimeout

WAITING, POPPING = Point("waiting"), Point("popping")


@scenario(
    world_size=[3, 4],
    faults=[Signal(signal.SIGKILL, 1, after(1, WAITING), blocked=True)],
    expect={1: killed(signal.SIGKILL), "*": returns()},
)
def rank_killed_mid_wait(ctx: RankContext) -> int:
    """Rank 1 is SIGKILLed inside ``wait``; the key it waited for still wakes rank 2's wait,
    and every survivor can still count, write and read."""
    n = ctx.world_size
    assert n is not None
    if ctx.rank in (1, 2):
        ctx.point(WAITING)  # rank 1 dies here, once blocked in the wait below
        ctx.store.wait(["go"])
    if ctx.rank == 0:
        ctx.wait_for_end(1)  # it died inside its wait (and was reaped)
        ctx.wait_for(2, WAITING)
        ctx.store.set("go", "1")
    count = ctx.store.add("survivors", 1)
    ctx.store.barrier("after", n - 1)
    assert int(ctx.store.get("survivors")) == n - 1
    return count


@scenario(
    world_size=3,
    needs=["queues"],
    faults=[Signal(signal.SIGKILL, 1, after(1, POPPING), blocked=True)],
    expect={1: killed(signal.SIGKILL), 2: returns(b"the only item"), 0: returns()},
    # Found by this scenario (intermittently, under load): a blocking pop is a WAIT on the
    # queue's key, then a POP, and a push wakes only the first waiter (as torch's libuv server
    # does).  When our server read the push before the dead consumer's end of connection, it
    # woke the dead waiter and the live one slept on; now a woken connection that ends before
    # its POP passes the wake-up on (tests/stores/tcp/test_state.py pins it).
)
def rank_killed_mid_queue_pop(ctx: RankContext) -> bytes | None:
    """Rank 1 is SIGKILLed inside a blocking ``queue_pop``; the one item pushed afterwards goes
    to rank 2, the live consumer, and no other item appears."""
    if ctx.rank == 1:
        ctx.point(POPPING)  # dies here, once blocked in the pop below
        ctx.store.queue_pop("jobs")
    if ctx.rank == 0:
        ctx.wait_for_end(1)  # it died inside its pop (and was reaped)
        ctx.store.queue_push("jobs", "the only item")
        ctx.wait_for(2, "popped")
        assert ctx.store.queue_len("jobs") == 0
        return None
    item = ctx.store.queue_pop("jobs")
    ctx.point("popped")
    return item


FROZEN = Point("frozen")
#: The frozen rank's own wait; everyone else's lasts twice as long, so it has run out by their
#: end (rank 1 starts its wait as the others start theirs, when it passes FROZEN).
OWN_TIMEOUT = 0.25
OTHERS_TIMEOUT = 0.5


@scenario(
    world_size=[3, 4],
    faults=[
        Signal(signal.SIGSTOP, 1, after(1, FROZEN), blocked=True),
        Signal(signal.SIGCONT, 1, after(0, "others-timed-out")),
    ],
    expect={1: returns("timed out")},
)
def rank_stopped_past_timeout(ctx: RankContext) -> str:
    """Rank 1 is SIGSTOPped in a wait until everyone else has timed out waiting for it, then
    SIGCONTed: its wait reports a timeout at once, and the store serves all of them after."""
    n = ctx.world_size
    assert n is not None
    if ctx.rank == 1:
        ctx.point(FROZEN)  # stopped here, once blocked in the wait below
        start = time.monotonic()
        try:
            ctx.store.wait(["never-set"], OWN_TIMEOUT)
            outcome = "woke"
        except StoreTimeout:
            outcome = "timed out"
        spent = time.monotonic() - start
        assert spent >= OWN_TIMEOUT, f"its wait ended after {spent:.2f} s, before its timeout"
    else:
        ctx.wait_for(1, FROZEN)
        try:  # rank 1 cannot arrive while frozen
            ctx.store.barrier("with-rank-1", n, timeout=OTHERS_TIMEOUT)
            outcome = "passed"
        except StoreTimeout:
            outcome = "timed out"
        ctx.point("timed-out")
        if ctx.rank == 0:
            for r in range(2, n):
                ctx.wait_for(r, "timed-out")
            ctx.point("others-timed-out")  # rank 1 runs again from here
    ctx.store.set(f"after/{ctx.rank}", outcome)
    ctx.store.barrier("all-after", n)
    seen = ctx.store.multi_get([f"after/{r}" for r in range(n)])
    assert seen == [b"timed out"] * n, f"rank {ctx.rank} saw {seen}"
    return outcome

"""torch's own store tests (``test/distributed/test_store.py``) that need several ranks.

Each scenario mirrors one of torch's cases and says which; it runs on every store whose
capabilities fit (``docs/scenarios.md`` maps every case of torch's file to where we cover it).
The single-handle cases are in the conformance suite (``stores/conformance/_torch_suite.py``).
"""

from __future__ import annotations

import signal

from storeharness import Point, RankContext, Signal, after, returns, scenario

WAITING = Point("waiting")

#: SIGUSR1 for rank 1 once it is asleep inside ``wait`` (not merely past the point).
USR1 = Signal(signal.SIGUSR1, 1, after(1, WAITING), blocked=True)


@scenario(world_size=2, workers="thread", expect={0: returns(b"value1"), 1: returns(None)})
def wait_for_a_key_another_rank_sets(ctx: RankContext) -> bytes | None:
    """Rank 0 blocks in ``wait`` on a key; rank 1 sets it; rank 0 wakes and reads it.

    torch's ``TestMultiThreadedWait.test_wait_*`` (one per store kind: hash, file, prefix over
    file, TCP, prefix over TCP); here on every store, with thread ranks as torch's (process
    ranks wait in other scenarios).  Rank 1 sets the key only once rank 0 is about to wait
    (torch's test leaves that to chance), so the wait is in progress or about to be.
    """
    if ctx.rank == 0:
        ctx.point(WAITING)
        ctx.store.wait(["key1"])
        return ctx.store.get("key1")
    ctx.wait_for(0, WAITING)
    ctx.store.set("key1", "value1")
    return None


@scenario(
    world_size=2,
    workers="process",
    faults=[USR1],
    expect={0: returns(None), 1: returns(1)},
)
def interrupt_doesnt_break_wait(ctx: RankContext) -> int | None:
    """A signal whose Python handler returns lands mid-``wait``; the wait goes on and succeeds.

    torch's ``TimeoutTest.test_interrupt_doesnt_break_wait``: rank 1 waits, SIGUSR1 interrupts
    the system call it sleeps in, and its handler runs (during the wait, or once it returns:
    both are correct here).  Rank 0 sets the key only once the signal is pending on rank 1, so
    the wait cannot have returned before the interruption.
    """
    if ctx.rank == 1:
        handled: list[int] = []
        signal.signal(signal.SIGUSR1, lambda signum, frame: handled.append(signum))
        ctx.point(WAITING)
        ctx.store.wait(["foo"])
        assert ctx.store.get("foo") == b"bar"
        return len(handled)
    ctx.wait_for(1, USR1.sent)  # the harness sent SIGUSR1 while rank 1 slept in wait
    ctx.store.set("foo", "bar")
    return None


@scenario(world_size=2, workers="thread", needs=["queues"])
def queues_bidirectional(ctx: RankContext) -> list[bytes]:
    """Two ranks ping-pong over two queues with blocking pops: each sees the other's items.

    torch's ``StoreTestBase.test_queues_bidirectional``: two threads, each with its own handle
    on one store (a copy of this file with ``workers="process"`` runs it across processes).
    """
    mine, theirs = ("a", "b") if ctx.rank == 0 else ("b", "a")
    got = []
    for i in range(10):
        if ctx.rank == 0:
            ctx.store.queue_push(theirs, str(i))
            got.append(ctx.store.queue_pop(mine))
        else:
            got.append(ctx.store.queue_pop(mine))
            ctx.store.queue_push(theirs, str(i))
    assert got == [str(i).encode() for i in range(10)], f"rank {ctx.rank} popped {got!r}"
    assert ctx.store.queue_len(mine) == 0
    return got

"""Producer/consumer work queues across processes: every item delivered exactly once, in order.

Producers push numbered items onto one shared queue; consumers pop until they receive a stop
item.  The last producer to finish pushes one stop item per consumer, after every item (the
queue is FIFO, so no consumer stops while work is left).  The world check then holds the
queue to its promises: every item consumed exactly once (none lost, none duplicated), and each
producer's items reaching any one consumer in the order that producer pushed them.
"""

from __future__ import annotations

from collections import Counter

from storeharness import RankContext, WorldResult, scenario

#: Items each producer pushes.
ITEMS = 40
STOP = b"stop"


def _roles(ctx: RankContext) -> tuple[int, int]:
    """(producers, consumers): the first half of the world produces, the rest consumes."""
    n = ctx.world_size
    assert n is not None
    return n // 2, n - n // 2


def every_item_exactly_once_fifo_per_producer(world: WorldResult) -> str | None:
    """A world check: each item ``p:i`` consumed exactly once, each producer's in FIFO order."""
    consumed = [item for r in world if r.value for item in r.value]
    producers = {int(item.split(":")[0]) for item in consumed}
    expected = {f"{p}:{i}" for p in producers for i in range(ITEMS)}
    counts = Counter(consumed)
    lost = sorted(expected - counts.keys())
    twice = sorted(item for item, k in counts.items() if k > 1)
    if lost or twice:
        return f"lost {lost[:5]} ({len(lost)} in all); delivered twice {twice[:5]}"
    for r in world:
        for p in producers:
            order = [int(item.split(":")[1]) for item in r.value or [] if item.startswith(f"{p}:")]
            if order != sorted(order):
                return f"rank {r.rank} got producer {p}'s items out of order: {order}"
    return None


@scenario(
    world_size=[4, 6],
    workers="both",
    needs=["queues"],
    check=every_item_exactly_once_fifo_per_producer,
)
def producer_consumer_queue(ctx: RankContext) -> list[str]:
    """Half the ranks push numbered items onto one queue, the rest pop them until told to stop."""
    producers, consumers = _roles(ctx)
    if ctx.rank < producers:
        for i in range(ITEMS):
            ctx.store.queue_push("work", f"{ctx.rank}:{i}")
        if ctx.store.add("producers-done", 1) == producers:  # the last one: all work is queued
            for _ in range(consumers):
                ctx.store.queue_push("work", STOP)
        return []
    got = []
    while (item := ctx.store.queue_pop("work")) != STOP:
        got.append(item.decode())
    return got

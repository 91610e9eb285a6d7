"""A scenario of the store author's own, next to the library's: every rank counts in, once."""

from storeharness import RankContext, scenario


@scenario(world_size=[2, 6], workers="both")
def everyone_counts_in(ctx: RankContext) -> int:
    """Each rank adds 1 to a counter, then waits until all have; each sees the same total."""
    assert ctx.world_size is not None
    ctx.store.add("arrived", 1)
    if ctx.store.add("arrived", 0) == ctx.world_size:
        ctx.store.set("all-in", "1")
    ctx.store.wait(["all-in"])
    return ctx.store.add("arrived", 0)

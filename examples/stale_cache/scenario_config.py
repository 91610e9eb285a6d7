"""Ranks read a published configuration, rank 0 publishes a new version, everyone re-reads.

Each rank returns the version it read last; every check on values alone passes on
``CachingStore`` (each rank returns *a* version), but ``linearizable()`` sees that a rank read
version 1 after version 2 had been written and read.  Run it with::

    cd examples/stale_cache
    storeharness run scenario_config.py --store cachingstore:make --log-dir logs

and open ``logs/<case>/history.html``.
"""

from __future__ import annotations

from storeharness import NonFixed, RankContext, after, linearizable, scenario


@scenario(
    world_size=NonFixed(4, late={3: after(0, "v2")}),
    workers="thread",
    check=linearizable(),
)
def config_reload(ctx: RankContext) -> bytes:
    """Rank 0 publishes v1, all read it; rank 0 publishes v2 (rank 3 joins), all read again."""
    store = ctx.store
    if ctx.rank == 0:
        store.set("config", "v1")
        ctx.point("v1")
    elif ctx.rank < 3:
        ctx.wait_for(0, "v1")
    if ctx.rank < 3:
        store.get("config")
        ctx.point("read-v1")
    if ctx.rank == 0:
        for other in (1, 2):
            ctx.wait_for(other, "read-v1")
        store.set("config", "v2")
        ctx.point("v2")
    elif ctx.rank < 3:
        ctx.wait_for(0, "v2")
    latest = store.get("config")
    store.add("readers", 1)
    return latest

"""A client that reached the wrong store (another run's) fails fast instead of joining it.

Stale addresses happen: a port reused by the next job, a MASTER_ADDR left over from yesterday,
two jobs sharing one server.  The guard is a token: whoever creates the store writes the run's
token under a known key, and every client checks it on connect.  The harness does exactly this
for every run (:func:`storeharness.harness.targets.open_checked`); here one rank plays a client
of *another* run, whose token is not the one in the store: it must be refused at once, by a
clear error, not after its operation timeout, while this run's ranks carry on undisturbed.
"""

from __future__ import annotations

import time

from storeharness import RankContext, raises, scenario
from storeharness.harness.targets import open_checked
from storeharness.stores import PrefixStore, StoreError

#: Well under the ranks' operation timeout (10 s): a refusal, not a timeout.
FAST = 2.0


@scenario(
    world_size=[2, 3],
    workers="both",
    expect={-1: raises(StoreError, match=r"is not the store this run set up")},
)
def client_of_another_run_fails_fast(ctx: RankContext) -> int:
    """The last rank connects with another run's token and is refused within 2 s; the other
    ranks, this run's, carry on."""
    n = ctx.world_size
    assert n is not None
    if ctx.rank == n - 1:
        namespace = ctx.store
        assert isinstance(namespace, PrefixStore)
        start = time.monotonic()
        try:  # a new connection to the same store, expecting another run's token
            open_checked(namespace.underlying_store.clone, "another-run", namespace.prefix)
        except StoreError:
            spent = time.monotonic() - start
            assert spent < FAST, f"the refusal took {spent:.1f} s"
            raise
        raise AssertionError("a client of another run was let in")
    ctx.store.set(f"rank/{ctx.rank}", "here")
    ctx.store.barrier("this-run", n - 1)
    return len(ctx.store.multi_get([f"rank/{r}" for r in range(n - 1)]))

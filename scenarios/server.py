"""The store's server dies mid-``wait`` and comes back on the same endpoint.

What a client must do when its server is SIGKILLed under it: fail, with a clear error, within
its timeout (never hang, never report success), and work again once a server is back, by
reconnecting where its API allows (our TCPStore client reconnects on the next call; a client
that does not is replaced by a ``clone()``, a new connection to the same address).  The new
server starts empty: whatever the old one held is gone, and the clients must not believe
otherwise.
"""

from __future__ import annotations

import contextlib
import time

from storeharness import KillServer, Point, RankContext, RestartServer, after, scenario
from storeharness.stores import Store, StoreError, StoreTimeout

WAITING, KILL, RESTART = Point("waiting"), Point("kill"), Point("restart")
#: Every store operation's timeout in this scenario: the bound on noticing the server's death.
OP_TIMEOUT = 5.0


def _reconnected(store: Store) -> Store:
    """A handle on new connections, once a server is back on the endpoint.

    The old handle answers or fails (``StoreBroken``, once for each connection it lost; ours
    reconnects on its next call, torch's does not), never hangs; a ``clone()`` starts afresh.
    """
    with contextlib.suppress(StoreError):
        store.check(["anything"])
    return store.clone()


@scenario(
    world_size=3,
    workers="both",
    faults=[KillServer(after(0, KILL)), RestartServer(after(0, RESTART))],
    op_timeout=OP_TIMEOUT,
)
def server_killed_mid_wait_then_restarted(ctx: RankContext) -> str:
    """Ranks 1 and 2 wait on a key; the server is SIGKILLed; both get an error well within their
    timeout; a new server starts on the same endpoint; all three reconnect and meet there."""
    n = ctx.world_size
    assert n is not None
    ctx.store.set("before", "the old server's data")
    if ctx.rank == 0:
        for r in range(1, n):
            ctx.wait_for(r, WAITING)
        ctx.point(KILL)  # the server dies here
        for r in range(1, n):
            ctx.wait_for(r, "errored")
        ctx.point(RESTART)  # a fresh server on the same port
        outcome = "killed it"
    else:
        ctx.point(WAITING)
        start = time.monotonic()
        try:
            ctx.store.wait(["never-set"])
            raise AssertionError("wait returned on a server that was killed")
        except StoreTimeout as exc:  # a timeout is an error, but it took the whole timeout
            raise AssertionError(f"the server's death went unnoticed: {exc}") from exc
        except StoreError as exc:
            spent = time.monotonic() - start
            assert spent < OP_TIMEOUT, f"the error took {spent:.1f} s: {exc}"
            outcome = type(exc).__name__
        ctx.point("errored")
        ctx.wait_for(0, RESTART)
    store = _reconnected(ctx.store)
    try:
        assert not store.check(["before"]), "the new server holds the old one's data"
        store.barrier("on-the-new-server", n)
    finally:
        store.close()
    return outcome

"""The first five scenarios: fixed and non-fixed worlds, timeouts, a signal mid-wait, missing ranks.

Each records its store operations and requires them to be linearizable (``linearizable()``).

Each runs on every store that can take it; ``storeharness list`` shows them and
``storeharness run`` runs them.
"""

from __future__ import annotations

import signal

from storeharness import NonFixed, Signal, after, linearizable, raises, returns, scenario
from storeharness.harness.context import RankContext
from storeharness.harness.faults import Missing
from storeharness.stores import StoreTimeout


@scenario(world_size=[2, 8], workers="both", check=linearizable())
def fixed_world_size(ctx: RankContext) -> int:
    """N ranks rendezvous, each publishes a key, and every rank reads every key."""
    n = ctx.world_size
    assert n is not None
    ctx.store.set(f"rank/{ctx.rank}", f"hello from {ctx.rank}")
    ctx.store.barrier("published", n)
    got = ctx.store.multi_get([f"rank/{r}" for r in range(n)])
    expected = [f"hello from {r}".encode() for r in range(n)]
    assert got == expected, f"rank {ctx.rank} read {got!r}"
    return len(got)


@scenario(
    world_size=NonFixed(4, late={2: after(0, "joined"), 3: after(1, "left")}),
    workers="both",
    expect={0: returns([0, 1, 2, 3])},
    check=linearizable(),
)
def non_fixed_world_size(ctx: RankContext) -> object:
    """Ranks join late and leave early, taking ids from the store; rank 0 sees every member.

    Ranks 0 and 1 start; rank 2 starts once rank 0 has joined, rank 3 once rank 1 has left.
    """
    assert ctx.world_size is None, "a non-fixed world has no world size"
    member = ctx.store.add("ids", 1)  # ids come from the store, 1, 2, ...
    ctx.store.set(f"member/{member}", str(ctx.rank))
    if member == 4:
        ctx.store.set("all-joined", "1")
    ctx.point("joined")
    if ctx.rank == 1:
        ctx.store.set("left/1", "1")
        ctx.point("left")
        return member  # leaves before rank 3 exists
    if ctx.rank == 3:
        assert ctx.store.check(["left/1"]), "rank 3 started before rank 1 left"
    ctx.store.wait(["all-joined"])
    if ctx.rank != 0:
        return member
    slots = ctx.store.multi_get([f"member/{i}" for i in range(1, 5)])
    return sorted(int(s) for s in slots)


@scenario(
    world_size=[2, 4],
    workers="both",
    # the key as this scenario wrote it: not the run's namespace, not a prefix store's
    expect={-1: raises(StoreTimeout, match=r"for keys \['nobody-sets-this'\]")},
    check=linearizable(),
)
def wait_timeout_names_the_key(ctx: RankContext) -> int:
    """The last rank waits on a key nobody sets and gets StoreTimeout naming it; others go on."""
    assert ctx.world_size is not None
    last = ctx.world_size - 1
    if ctx.rank == last:
        try:
            ctx.store.wait(["nobody-sets-this"], 0.1)  # nobody sets it: any timeout will do
        finally:
            ctx.point("timed-out")
    ctx.wait_for(last, "timed-out")
    total = ctx.store.add("after-the-timeout", 1)
    ctx.store.barrier("others", last)
    return total


#: Rank 3's wait in sigint_during_wait.  A correct store's wait ends as soon as rank 0 sets the
#: key, within a few hundred ms of the signal even on a loaded machine; torch's known failure
#: waits out the whole timeout, so the timeout is what that failure costs.
SIGINT_WAIT = 1.5
TORCH_WAIT_RETRIES_EINTR = (
    "torch's C++ wait (its TCP client, its FileStore) retries the interrupted system call, so "
    "the Python handler runs only when the wait times out (docs/differences.md)"
)


@scenario(
    world_size=[4, 8],
    workers="process",
    faults=[Signal(signal.SIGINT, 3, after(3, "waiting"), blocked=True)],
    expect={3: returns(1)},
    check=linearizable(),
    # torch's v2 EtcdStore (torch-etcd) waits in Python (python-etcd): it passes
    xfail=dict.fromkeys(("torch-tcp", "torch-client", "torch-file"), TORCH_WAIT_RETRIES_EINTR),
)
def sigint_during_wait(ctx: RankContext) -> int:
    """SIGINT lands on rank 3 while it is blocked in wait: its handler runs, then the wait ends.

    Rank 0 sets the key only after rank 3's handler has run, so the wait must survive the signal.
    """
    if ctx.rank == 3:
        handled = []

        def on_sigint(signum: int, frame: object) -> None:
            handled.append(signum)
            ctx.point("sigint-handled")

        signal.signal(signal.SIGINT, on_sigint)
        ctx.point("waiting")
        ctx.store.wait(["go"], SIGINT_WAIT)
        return len(handled)
    if ctx.rank == 0:
        ctx.wait_for(3, "sigint-handled")
        ctx.store.set("go", "now")
    return 0


@scenario(
    world_size=[2, 4],
    workers="both",
    faults=[Missing(-1)],
    expect={"*": raises(StoreTimeout, match=r"\d+ of \d+ participants arrived")},
    check=linearizable(),
)
def missing_clients(ctx: RankContext) -> None:
    """The last rank never starts; the rendezvous fails saying how many joined of how many."""
    n = ctx.world_size
    assert n is not None
    try:
        ctx.store.barrier("rendezvous", n, timeout=0.5)
    except StoreTimeout as exc:
        assert f"{n - 1} of {n} participants arrived" in str(exc), str(exc)
        raise

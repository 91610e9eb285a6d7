"""Faults between hosts: a partition, a lossy link, a rate-limited link, a host that dies.

These scenarios span three hosts named ``h0``, ``h1`` and ``h2`` (as ``--hosts netns:3``
builds them; ``h0`` has the ``store`` role, so the store's server runs there), with ranks spread
round-robin: rank ``r`` runs on host ``h(r mod 3)``.  Without ``--hosts`` they are skipped,
saying so; on hosts that lack what a fault needs (nftables, tc, ``CAP_NET_ADMIN``) likewise,
naming what is missing.  Every fault matches only the store's traffic (its data addresses and
port), so the ranks' link to the runner is never cut.  What each scenario proves:

- cut one host off: its ranks' operations end with :class:`StoreTimeout` within their timeout
  (no hang, no false success) while the other hosts carry on; healed, everyone works again and
  the data written meanwhile is there;
- lose packets between two hosts: TCP retransmits (the host's own counters show it), and every
  count is still exact;
- limit one link's rate: a large value crosses it no faster than the limit allows while it
  crosses an unlimited link quickly; healed, it is quick on both;
- kill a host: its ranks die in their waits, and the others carry on: they meet, set the key
  the dead ranks waited for (their vanished waits must not trouble the server), and a timed
  wait still ends by its timeout.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from storeharness import (
    HealNetwork,
    KillHost,
    Loss,
    Partition,
    Point,
    RankContext,
    Rate,
    after,
    killed,
    returns,
    scenario,
)
from storeharness.stores import Store, StoreTimeout

from .network import reconnected

CUT, TIMED_OUT, HEALED = Point("cut"), Point("timed_out"), Point("healed")
#: The timeout of the operation a cut-off rank attempts, in seconds.
CUT_TIMEOUT = 1.0


def _hosts(ctx: RankContext, store: Store) -> dict[int, str]:
    """Every rank's host, as each rank wrote it before the fault (a rendezvous too)."""
    n = ctx.world_size
    assert n is not None
    store.set(f"host/{ctx.rank}", ctx.host)
    store.wait([f"host/{r}" for r in range(n)])
    return {r: store.get(f"host/{r}").decode() for r in range(n)}


def _within(store: Store, key: str, timeout: float) -> float:
    """Seconds a ``wait`` for ``key`` took to raise :class:`StoreTimeout` (it must raise)."""
    start = time.monotonic()
    try:
        store.wait([key], timeout)
    except StoreTimeout:
        return time.monotonic() - start
    raise AssertionError(f"a wait for {key!r} returned: the store answered")


@scenario(
    world_size=6,
    hosts=3,
    placement="spread",
    faults=[Partition([["h0", "h2"], ["h1"]], after(0, CUT)), HealNetwork(after(0, HEALED))],
    time_limit=40.0,
    xfail={
        **dict.fromkeys(
            ["torch-tcp", "torch-client"],
            "torch's TCP client, cut off, does not return from wait(keys, timeout=1.0): still "
            "blocked in its C++ wait at the world's limit (docs/production-scenarios.md)",
        ),
        "torch-etcd": "torch's v2 EtcdStore, cut off, raises python-etcd's EtcdConnectionFailed "
        "after its own 5 s connect timeout, not a timeout of the 1 s wait, and its ranks on the "
        "other hosts time out in the barrier after it (docs/production-scenarios.md)",
    },
)
def partition_cuts_a_host_off_then_heals(ctx: RankContext) -> str:
    """h1 is cut off from h0 (the store's host) and h2: h1's ranks time out within their
    timeout while the others write and meet; healed, all six meet and see what was written."""
    n = ctx.world_size
    assert n is not None
    where = _hosts(ctx, ctx.store)
    cut = [r for r, host in where.items() if host == "h1"]
    assert cut, f"no rank runs on h1 ({where}): nobody would be cut off"
    ctx.store.barrier("before", n)
    if ctx.rank == 0:
        ctx.point(CUT)  # returns once the rules are in place on every host
    else:
        ctx.wait_for(0, CUT)
    if ctx.rank in cut:
        # the key exists: connected, this wait would return at once
        spent = _within(ctx.store, f"host/{ctx.rank}", CUT_TIMEOUT)
        # a client may spend a second timeout cancelling its wait (torch's does): two at most
        assert spent < 2 * CUT_TIMEOUT + 1.0, f"a {CUT_TIMEOUT} s wait took {spent:.2f} s"
        ctx.point(TIMED_OUT)
        ctx.wait_for(0, HEALED)
        outcome = "cut off, then back"
    else:
        ctx.store.add("adds during", 1)  # the connected hosts carry on while h1 is cut off
        ctx.store.barrier("during", n - len(cut))
        if ctx.rank == 0:
            for r in cut:
                ctx.wait_for(r, TIMED_OUT)
            ctx.point(HEALED)
        outcome = "carried on"
    store = reconnected(ctx.store)  # a connection may not have survived the cut
    try:
        store.barrier("after", n)
        during = int(store.get("adds during"))
        assert during == n - len(cut), f"during the cut: {during} adds, not {n - len(cut)}"
    finally:
        store.close()
    return outcome


def _retransmitted() -> int:
    """TCP segments this host (its network namespace) has retransmitted, from its counters."""
    lines = Path("/proc/self/net/snmp").read_text().splitlines()
    tcp = [line.split() for line in lines if line.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("RetransSegs")])


LOSSY, CLEAR = Point("lossy"), Point("clear")
ADDS = 40


@scenario(
    world_size=6,
    hosts=3,
    placement="spread",
    faults=[Loss(0.15, after(0, LOSSY), between=("h0", "h1")), HealNetwork(after(0, CLEAR))],
    op_timeout=20.0,
    time_limit=60.0,
)
def lossy_link_keeps_counts_exact(ctx: RankContext) -> int:
    """15 % of the packets between h0 (the store's host) and h1 are lost: h1 retransmits, and
    each of the six ranks' 40 adds is counted exactly once."""
    n = ctx.world_size
    assert n is not None
    where = _hosts(ctx, ctx.store)
    ctx.store.barrier("before", n)
    if ctx.rank == 0:
        ctx.point(LOSSY)
    else:
        ctx.wait_for(0, LOSSY)
    before = _retransmitted()
    for _ in range(ADDS):
        ctx.store.add("count", 1)
    if ctx.host == "h1":
        more = _retransmitted() - before
        assert more > 0, f"{ADDS} adds over a lossy link, yet h1 retransmitted nothing"
    ctx.store.barrier("added", n)
    if ctx.rank == 0:
        ctx.point(CLEAR)
    total = int(ctx.store.get("count"))
    assert total == n * ADDS, f"count is {total}, not {n * ADDS}: an add was lost or doubled"
    assert "h1" in where.values()
    return total


SHAPED, UNSHAPED = Point("shaped"), Point("unshaped")
#: The rate limit between h0 and h2, and the value that crosses it.
RATE_BPS = 8_000_000
BIG = 1 << 20


def _fetch(store: Store) -> float:
    start = time.monotonic()
    assert len(store.get("big")) == BIG
    return time.monotonic() - start


@scenario(
    world_size=3,
    hosts=3,
    placement="spread",
    faults=[
        Rate(RATE_BPS, after(0, SHAPED), between=("h0", "h2")),
        HealNetwork(after(0, UNSHAPED)),
    ],
    op_timeout=20.0,
    time_limit=40.0,
)
def rate_limited_link(ctx: RankContext) -> float:
    """h0 → h2 is limited to 8 Mbit/s: 1 MiB takes h2 at least ~1 s to read while h1, on an
    unlimited link, reads it at once; healed, h2 reads it quickly too."""
    floor = 0.8 * BIG * 8 / RATE_BPS  # seconds the limit allows at the very least
    if ctx.rank == 0:
        ctx.store.set("big", b"x" * BIG)
        ctx.point(SHAPED)
        ctx.wait_for(1, "read")
        ctx.wait_for(2, "read")
        ctx.point(UNSHAPED)
        return 0.0
    ctx.wait_for(0, SHAPED)
    spent = _fetch(ctx.store)
    ctx.store.set(f"spent/{ctx.host}", f"{spent:.6f}")
    ctx.point("read")
    if ctx.host == "h2":
        assert spent >= floor, f"1 MiB crossed an 8 Mbit/s link in {spent:.3f} s (< {floor:.2f})"
        ctx.wait_for(0, UNSHAPED)
        again = min(_fetch(ctx.store) for _ in range(2))
        assert again < floor / 2, f"still limited once healed: {again:.3f} s"
    else:
        ctx.store.wait(["spent/h2"])
        limited = float(ctx.store.get("spent/h2"))
        assert spent < limited / 2, f"h1 (unlimited) took {spent:.3f} s, h2 {limited:.3f} s"
    return spent


DOOMED = Point("doomed")


@scenario(
    world_size=6,
    hosts=3,
    placement="spread",
    faults=[KillHost("h2", after(0, DOOMED))],
    expect={2: killed(signal.SIGKILL), 5: killed(signal.SIGKILL), "*": returns(4)},
    time_limit=40.0,
)
def killed_host_others_carry_on(ctx: RankContext) -> int:
    """Host h2 dies (its ranks SIGKILLed, its link cut) while its ranks wait; the ranks on h0
    and h1 carry on: they meet, set the key the dead waited for, and a timed wait still ends
    by its timeout."""
    n = ctx.world_size
    assert n is not None
    where = _hosts(ctx, ctx.store)
    doomed = [r for r, host in where.items() if host == "h2"]
    if ctx.rank in doomed:
        ctx.point("waiting")
        ctx.store.wait(["never set"])  # killed here, with its host
        raise AssertionError("a rank on the killed host woke up")
    if ctx.rank == 0:
        for r in doomed:
            ctx.wait_for(r, "waiting")
        ctx.point(DOOMED)
    for r in doomed:
        ctx.wait_for_end(r)
    survivors = ctx.store.add("survivors", 1)
    ctx.store.barrier("after", n - len(doomed))
    if ctx.rank == 0:  # wakes the dead ranks' waits on the server: it must not trip on them
        ctx.store.set("never set", "now set")
    assert ctx.store.get("never set") == b"now set"
    spent = _within(ctx.store, "from h2", 0.5)  # a timed wait still ends by its timeout
    assert spent < 3.0, f"a 0.5 s wait took {spent:.2f} s"
    assert survivors <= n - len(doomed)
    return int(ctx.store.get("survivors"))

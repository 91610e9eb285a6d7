"""SpinPolicy keeps whichever way of waiting for replies has been faster, and re-checks."""

from __future__ import annotations

import itertools

from storeharness.stores.tcp._spin import PROBE, STINT, STINT_MAX, SpinPolicy

SPIN = 50e-6


def feed(policy: SpinPolicy, spinning: float, sleeping: float, replies: int) -> list[bool]:
    """Record ``replies`` round trips costing what the current mode costs; the modes used."""
    modes = []
    for _ in range(replies):
        modes.append(bool(policy.budget))
        policy.record(spinning if policy.budget else sleeping)
    return modes


def test_it_starts_spinning_and_stays_when_spinning_is_faster() -> None:
    policy = SpinPolicy(SPIN)
    modes = feed(policy, spinning=30e-6, sleeping=100e-6, replies=STINT + PROBE + 10)
    assert modes[:STINT] == [True] * STINT
    assert modes[STINT : STINT + PROBE] == [False] * PROBE  # the probe of sleeping
    assert all(modes[STINT + PROBE :])  # spinning won: back to it
    assert policy.budget == SPIN


def test_it_switches_to_sleeping_when_spinning_only_delays_the_reply() -> None:
    policy = SpinPolicy(SPIN)
    modes = feed(policy, spinning=17e-6, sleeping=12e-6, replies=STINT + 2 * PROBE + 3 * STINT)
    # the sleeping probe won: a stint of sleeping, a spinning probe (lost), a doubled stint
    assert not any(modes[STINT : 2 * STINT + PROBE])
    assert all(modes[2 * STINT + PROBE : 2 * STINT + 2 * PROBE])
    assert not any(modes[2 * STINT + 2 * PROBE :])


def test_losing_probes_come_ever_more_rarely_and_a_change_is_noticed() -> None:
    policy = SpinPolicy(SPIN)
    modes = feed(policy, spinning=17e-6, sleeping=12e-6, replies=50_000)
    probes = sum(1 for a, b in itertools.pairwise(modes) if not a and b)
    doublings = (STINT_MAX // STINT).bit_length()
    assert probes <= doublings + len(modes) // STINT_MAX + 1  # stints double up to STINT_MAX
    assert sum(modes) < 0.01 * len(modes)  # under 1 % of replies pay for the losing way
    # the placement changes: spinning becomes the faster way; found within one long stint
    modes = feed(policy, spinning=30e-6, sleeping=100e-6, replies=STINT_MAX + 2 * PROBE)
    assert modes[-1] is True


def test_when_round_trips_are_long_either_way_it_sleeps() -> None:
    """Many client processes per CPU: spinning misses and only burns the server's CPU."""
    policy = SpinPolicy(SPIN)
    modes = feed(policy, spinning=2.4e-3, sleeping=2.4e-3, replies=STINT + PROBE + 1)
    assert modes[-1] is False


def test_spin_zero_never_spins() -> None:
    off = SpinPolicy(0.0)
    feed(off, spinning=1e-6, sleeping=1e-3, replies=1000)
    assert off.budget == 0.0

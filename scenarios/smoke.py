"""Smoke scenario: all ranks rendezvous, exchange a key each, count themselves, and agree."""

from __future__ import annotations

from stores import Store


def rendezvous_exchange(store: Store, rank: int, world_size: int) -> str:
    """Each rank publishes a key, meets the others at a barrier, and reads every key."""
    store.set(f"rank/{rank}", f"hello from {rank}")
    store.add("arrived", 1)
    store.barrier("all-published", world_size, timeout=30)
    keys = [f"rank/{r}" for r in range(world_size)]
    got = store.multi_get(keys)
    expected = [f"hello from {r}".encode() for r in range(world_size)]
    if got != expected:
        raise AssertionError(f"rank {rank} read {got!r}, expected {expected!r}")
    total = store.add("arrived", 0)
    if total != world_size:
        raise AssertionError(f"rank {rank} counted {total} arrivals of {world_size}")
    return f"saw {world_size} keys"


SCENARIOS = {"rendezvous_exchange": rendezvous_exchange}

"""Which host each rank runs on: ``"spread"`` (round robin), ``"pack"`` (fill each host's slots
in inventory order) or an explicit ``{rank: host}`` (a host's name or its index; ranks not named
are spread over the hosts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from ..hosts.inventory import Host

__all__ = ["PLACEMENTS", "Placement", "check_placement", "place"]

PLACEMENTS = ("spread", "pack")
Placement: TypeAlias = str | Mapping[int, str | int]


def check_placement(placement: Any, hosts: int | None = None) -> str | None:
    """What is wrong with ``placement`` (for ``hosts`` hosts, when known), or ``None``."""
    if isinstance(placement, str):
        if placement not in PLACEMENTS:
            return f"placement={placement!r}; use 'spread', 'pack' or a dict of rank -> host"
        return None
    if not isinstance(placement, Mapping):
        return f"placement={placement!r}; use 'spread', 'pack' or a dict of rank -> host"
    for rank, host in placement.items():
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
            return f"placement key {rank!r}; keys are rank numbers >= 0"
        if isinstance(host, bool) or not isinstance(host, int | str):
            return f"placement[{rank}] = {host!r}; give a host's name or its index"
        if isinstance(host, int) and hosts is not None and not 0 <= host < hosts:
            return f"placement[{rank}] = {host}; the world has hosts 0..{hosts - 1}"
    return None


def place(
    world_size: int, hosts: Sequence[Host], placement: Placement = "spread"
) -> dict[int, str]:
    """Every rank's host name.  Raises ``ValueError`` naming what does not fit."""
    if not hosts:
        raise ValueError("placing ranks needs at least one host")
    problem = check_placement(placement, len(hosts))
    if problem:
        raise ValueError(problem)
    names = [h.name for h in hosts]
    if placement == "pack":
        if world_size > sum(h.slots for h in hosts):
            raise ValueError(
                f"pack: {world_size} ranks do not fit the hosts' slots "
                f"({', '.join(f'{h.name}: {h.slots}' for h in hosts)})"
            )
        order = [h.name for h in hosts for _ in range(h.slots)]
        return {rank: order[rank] for rank in range(world_size)}
    out = {rank: names[rank % len(names)] for rank in range(world_size)}
    if isinstance(placement, Mapping):
        for rank, host in placement.items():
            if rank >= world_size:
                continue  # a placement written for a bigger world
            if isinstance(host, int):
                out[rank] = names[host]
            elif host in names:
                out[rank] = host
            else:
                raise ValueError(f"placement[{rank}] = {host!r}, not among hosts {names}")
    return out

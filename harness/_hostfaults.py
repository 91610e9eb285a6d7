"""Host-level faults as data: network faults between hosts, and whole hosts killed or paused.

They follow the shape of :mod:`.faults`: frozen records, each fired by an ``at`` trigger (a rank
reaching a point), re-exported from :mod:`.faults` and checked by :func:`.faults.check`, whose
messages say how to fix a bad definition.  Hosts are named as in the inventory
(``hosts.toml`` tables, or ``h0``, ``h1``... for ``--hosts netns:N``); whether a name exists is
known only once the hosts are (:func:`unknown_hosts`).

What they do, on the hosts themselves (:mod:`.hosts.netfaults` on the controller,
``hosts/_hostnet.py`` in each host's agent): one nftables table per run drops or thins the
store's traffic — matched by the hosts' data-plane addresses *and* the store's ports, never the
control path — and tc shapes rate and latency.  ``between=None`` means every pair of hosts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, TypeAlias

if TYPE_CHECKING:  # .faults re-exports this module: a runtime import would be circular
    from .faults import Trigger

__all__ = [
    "HOST_FAULTS",
    "NETWORK_FAULTS",
    "HealNetwork",
    "HostFault",
    "Isolate",
    "KillHost",
    "Latency",
    "Loss",
    "Partition",
    "PauseHost",
    "Rate",
    "ResumeHost",
    "check_host_fault",
    "describe_host_fault",
    "hosts_named",
    "unknown_hosts",
]

Pair: TypeAlias = tuple[str, str]


@dataclass(frozen=True)
class Partition:
    """From ``at`` on, traffic between hosts of different ``groups`` is dropped.

    ``groups``: two or more disjoint lists of host names (``[["h0"], ["h1", "h2"]]``); hosts
    named in no group keep talking to everyone.
    """

    groups: Sequence[Sequence[str]]  # stored as tuples of tuples
    at: Trigger
    optional: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:  # lists are natural to write; records stay hashable
        if isinstance(self.groups, list | tuple):
            groups = tuple(tuple(g) if isinstance(g, list | tuple) else g for g in self.groups)
            object.__setattr__(self, "groups", groups)

    def __str__(self) -> str:
        return f"partition {' | '.join(','.join(g) for g in self.groups)} when {self.at}"


@dataclass(frozen=True)
class _OneHost:
    """The shape of a fault on one ``host``, fired when ``at`` happens."""

    host: str
    at: Trigger
    optional: bool = field(default=False, kw_only=True)
    #: What the fault does, as a report says it (``kill host``).
    _verb: ClassVar[str]

    def __str__(self) -> str:
        return f"{self._verb} {self.host} when {self.at}"


@dataclass(frozen=True)
class Isolate(_OneHost):
    """From ``at`` on, ``host`` exchanges no store traffic with any other host."""

    _verb = "isolate"


def _pair(between: object) -> object:
    return tuple(between) if isinstance(between, list) else between


@dataclass(frozen=True)
class Loss:
    """From ``at`` on, each packet of store traffic between ``between`` (both ways; every pair
    when ``None``) is dropped with probability ``p`` (0 < p <= 1, steps of 0.0001)."""

    p: float
    at: Trigger
    between: Pair | None = None
    optional: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "between", _pair(self.between))

    def __str__(self) -> str:
        return f"lose {self.p:.0%} of packets {_between(self.between)} when {self.at}"


@dataclass(frozen=True)
class Rate:
    """From ``at`` on, store traffic from each host of ``between`` to the other (every pair
    when ``None``) is limited to ``bps`` bits per second, each direction on its own."""

    bps: int
    at: Trigger
    between: Pair | None = None
    optional: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "between", _pair(self.between))

    def __str__(self) -> str:
        return f"limit traffic {_between(self.between)} to {self.bps} bit/s when {self.at}"


@dataclass(frozen=True)
class Latency:
    """From ``at`` on, store traffic leaving each host of ``between`` for the other (every pair
    when ``None``) is held ``seconds`` (± ``jitter``); needs the kernel's netem qdisc — where it
    is missing the fault is refused with that reason, never faked."""

    seconds: float
    at: Trigger
    jitter: float = 0.0
    between: Pair | None = None
    optional: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "between", _pair(self.between))

    def __str__(self) -> str:
        jit = f" ± {self.jitter:g} s" if self.jitter else ""
        return f"delay packets {_between(self.between)} by {self.seconds:g} s{jit} when {self.at}"


@dataclass(frozen=True)
class HealNetwork:
    """When ``at`` happens, remove every network fault of the run (rules and shaping)."""

    at: Trigger
    optional: bool = field(default=False, kw_only=True)

    def __str__(self) -> str:
        return f"heal the hosts' network when {self.at}"


@dataclass(frozen=True)
class KillHost(_OneHost):
    """When ``at`` happens, SIGKILL every process of the run on ``host`` and cut its store
    traffic with every other host (as if its link went down; :class:`HealNetwork` restores the
    link, not the processes)."""

    _verb = "kill host"


@dataclass(frozen=True)
class PauseHost(_OneHost):
    """When ``at`` happens, SIGSTOP every process of the run on ``host``."""

    _verb = "pause host"


@dataclass(frozen=True)
class ResumeHost(_OneHost):
    """When ``at`` happens, SIGCONT every process of the run on ``host``."""

    _verb = "resume host"


HostFault: TypeAlias = (
    Partition | Isolate | Loss | Rate | Latency | HealNetwork | KillHost | PauseHost | ResumeHost
)
HOST_FAULTS = (Partition, Isolate, Loss, Rate, Latency, HealNetwork, KillHost, PauseHost,
               ResumeHost)  # fmt: skip
#: The faults that change the network (rules or shaping), as opposed to processes.
NETWORK_FAULTS = (Partition, Isolate, Loss, Rate, Latency, HealNetwork)


def _between(between: Pair | None) -> str:
    return "between every pair of hosts" if between is None else f"between {between[0]} and " \
        f"{between[1]}"  # fmt: skip


def _is_name(value: object) -> bool:
    return isinstance(value, str) and bool(value) and value == value.strip()


def _number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _check_between(fault: HostFault, between: object) -> list[str]:
    if between is None:
        return []
    if not (isinstance(between, tuple) and len(between) == 2 and all(map(_is_name, between))):
        return [f"{fault!r}: between must be two host names, between=('h0', 'h1'), or None "
                "for every pair of hosts"]  # fmt: skip
    if between[0] == between[1]:
        return [f"{fault!r}: between names {between[0]!r} twice; name two different hosts"]
    return []


def check_host_fault(fault: HostFault) -> list[str]:
    """Problems with one host fault, each saying how to fix it (empty when it is fine)."""
    if isinstance(fault, Partition):
        groups = fault.groups
        if not (
            isinstance(groups, tuple)
            and len(groups) >= 2
            and all(isinstance(g, tuple) and g and all(map(_is_name, g)) for g in groups)
        ):
            return [f"{fault!r}: groups must be two or more non-empty lists of host names, "
                    "e.g. Partition([['h0'], ['h1', 'h2']], at=...)"]  # fmt: skip
        seen: dict[str, int] = {}
        for index, group in enumerate(groups):
            for name in group:
                if name in seen:
                    return [f"{fault!r}: host {name!r} is in groups {seen[name]} and {index}; "
                            "a host belongs to one side of a partition"]  # fmt: skip
                seen[name] = index
        return []
    if isinstance(fault, _OneHost):
        if not _is_name(fault.host):
            return [f"{fault!r}: host must be a host name such as 'h1', got {fault.host!r}"]
        return []
    problems = []
    if isinstance(fault, Loss):
        if not (_number(fault.p) and 0 < fault.p <= 1):
            problems.append(f"{fault!r}: p is a probability, 0 < p <= 1 (0.3 drops 30 %)")
        elif round(fault.p * 10000) == 0:
            problems.append(f"{fault!r}: p={fault.p} rounds to 0 at the rule's 0.0001 steps")
    elif isinstance(fault, Rate):
        if not (isinstance(fault.bps, int) and not isinstance(fault.bps, bool)
                and fault.bps >= 8):  # fmt: skip
            problems.append(f"{fault!r}: bps is an integer number of bits per second >= 8 "
                            "(1_000_000 for 1 Mbit/s)")  # fmt: skip
    elif isinstance(fault, Latency):
        if not (_number(fault.seconds) and fault.seconds > 0):
            problems.append(f"{fault!r}: seconds must be > 0")
        if not (_number(fault.jitter) and fault.jitter >= 0):
            problems.append(f"{fault!r}: jitter must be >= 0 seconds")
    if isinstance(fault, Loss | Rate | Latency):
        problems += _check_between(fault, fault.between)
    return problems


def hosts_named(fault: HostFault) -> tuple[str, ...]:
    """The host names ``fault`` mentions, in order."""
    if isinstance(fault, Partition):
        return tuple(name for group in fault.groups for name in group)
    if isinstance(fault, _OneHost):
        return (fault.host,)
    if isinstance(fault, Loss | Rate | Latency) and fault.between is not None:
        return tuple(fault.between)
    return ()


def unknown_hosts(fault: HostFault, known: list[str] | tuple[str, ...]) -> str | None:
    """Why ``fault`` names a host the world does not have, or None when every name is known."""
    missing = [name for name in hosts_named(fault) if name not in known]
    if not missing:
        return None
    return (f"{describe_host_fault(fault)} names host {missing[0]!r}, which is not among the "
            f"world's hosts ({', '.join(known) or 'none'}); use one of those names")  # fmt: skip


def describe_host_fault(fault: HostFault) -> str:
    """``Partition(h0 | h1,h2 when rank 0 at 'ready')``: a report line."""
    at = f" when rank {fault.at.rank} at {fault.at.name!r}"
    between = getattr(fault, "between", None)
    pair = f", {between[0]}↔{between[1]}" if between else ""
    if isinstance(fault, Partition):
        what = " | ".join(",".join(g) for g in fault.groups)
    elif isinstance(fault, _OneHost):
        what = fault.host
    elif isinstance(fault, Loss):
        what = f"{fault.p:g}{pair}"
    elif isinstance(fault, Rate):
        what = f"{fault.bps} bit/s{pair}"
    elif isinstance(fault, Latency):
        what = f"{fault.seconds:g} s ± {fault.jitter:g}{pair}"
    else:
        return f"{type(fault).__name__}({at.strip()})"
    return f"{type(fault).__name__}({what}{at})"

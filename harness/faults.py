"""Faults as data: what to do to whom, triggered when a rank reaches a named point.

A scenario lists faults; the runner applies them as ranks announce points with
``ctx.point(name)``.  Nothing here sleeps or guesses: every fault fires on an event (a rank
reaching a point, or a rank reaching a point *and* then blocking in a system call).  Ranks may be
given as ``ANY`` (or ``AnyRank("tag")``), which a seeded plan resolves, so that a failing run
replays exactly with the same seed.  Negative ranks count from the end (``-1`` is the last rank),
so one fault list fits every world size.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Protocol, TypeAlias

__all__ = [
    "ANY",
    "HOST_FAULTS",
    "AnyRank",
    "Blackhole",
    "Delay",
    "Drop",
    "Fault",
    "Heal",
    "HealNetwork",
    "HostFault",
    "Isolate",
    "KillHost",
    "KillServer",
    "Late",
    "Latency",
    "Loss",
    "Missing",
    "Partition",
    "PauseHost",
    "Point",
    "Rate",
    "RestartServer",
    "ResumeHost",
    "Signal",
    "Trigger",
    "after",
    "describe",
    "resolve",
    "resolve_plan",
    "sent",
]


@dataclass(frozen=True)
class AnyRank:
    """A rank the seeded plan picks; equal tags pick the same rank within one plan."""

    tag: str = ""
    exclude: tuple[int, ...] = ()

    def __repr__(self) -> str:
        return f"AnyRank({self.tag!r})" if self.tag else "ANY"


ANY = AnyRank()
RankRef: TypeAlias = int | AnyRank


class Point(str):
    """A named point, as a constant: ``WAITING = Point("waiting")``.

    ``ctx.point(WAITING)`` and ``after(3, WAITING)`` then name the same point, and a typo is a
    ``NameError`` at import instead of a fault that silently never fires.  A plain string works
    wherever a point is named, too.
    """

    __slots__ = ()

    def __new__(cls, name: str) -> Point:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a point needs a non-empty name, got {name!r}")
        return super().__new__(cls, name)


@dataclass(frozen=True)
class Trigger:
    """Rank ``rank`` has called ``ctx.point(name)``: the moment a fault fires."""

    rank: RankRef
    name: str

    def __str__(self) -> str:
        return f"rank {self.rank} at {self.name!r}"


def after(rank: RankRef, name: str) -> Trigger:
    """The moment rank ``rank`` reaches the point ``name`` (a str, or a :class:`Point`)."""
    return Trigger(rank, str(name))


def sent(sig: signal.Signals) -> str:
    """The point a rank reaches, in the runner's books, once a :class:`Signal` fault sent it
    ``sig`` (``ctx.wait_for(rank, sent(sig))``: act once the signal is pending on that rank)."""
    return f"{sig.name} sent"


@dataclass(frozen=True)
class Signal:
    """Send ``sig`` to rank ``rank`` (a process) when ``at`` happens.

    With ``blocked=True`` the signal is held until the rank, past ``at``, is asleep in a
    system call other than the harness's own pipe (e.g. inside ``store.wait``), so it lands
    mid-call rather than before the call.  Signals to one rank land in the order they fire: one
    that fires while an earlier one to the same rank is held (a SIGCONT behind such a SIGSTOP)
    is sent right after it.
    """

    sig: signal.Signals
    rank: RankRef
    at: Trigger
    blocked: bool = False
    #: Not firing is legitimate here: do not fail the case when its trigger never fires.
    optional: bool = field(default=False, kw_only=True)

    @property
    def sent(self) -> str:
        """The point the target rank reaches, in the harness's books, once the signal is sent.

        Another rank can ``ctx.wait_for(rank, fault.sent)`` to act only once the signal is
        pending on that rank (it lands before anything that rank does next).
        """
        return sent(self.sig)

    def __str__(self) -> str:
        how = " once blocked" if self.blocked else ""
        return f"{self.sig.name} to rank {self.rank} when {self.at}{how}"


@dataclass(frozen=True)
class Missing:
    """Rank ``rank`` never starts."""

    rank: RankRef

    def __str__(self) -> str:
        return f"rank {self.rank} never starts"


@dataclass(frozen=True)
class Late:
    """Rank ``rank`` starts only once ``after`` happens (never, if it never does)."""

    rank: RankRef
    after: Trigger
    #: Not firing is legitimate here: do not fail the case when its trigger never fires.
    optional: bool = field(default=False, kw_only=True)

    def __str__(self) -> str:
        return f"rank {self.rank} starts when {self.after}"


@dataclass(frozen=True)
class KillServer:
    """SIGKILL the store's server process when ``at`` happens (its data is lost)."""

    at: Trigger
    #: Not firing is legitimate here: do not fail the case when its trigger never fires.
    optional: bool = field(default=False, kw_only=True)

    def __str__(self) -> str:
        return f"kill the server when {self.at}"


@dataclass(frozen=True)
class RestartServer:
    """Start a fresh server on the same endpoint (the same listening socket) when ``at`` happens."""

    at: Trigger
    #: Not firing is legitimate here: do not fail the case when its trigger never fires.
    optional: bool = field(default=False, kw_only=True)

    def __str__(self) -> str:
        return f"restart the server when {self.at}"


@dataclass(frozen=True)
class Delay:
    """From ``at`` on, the proxy holds every chunk for ``seconds`` before passing it on."""

    seconds: float
    at: Trigger
    #: Not firing is legitimate here: do not fail the case when its trigger never fires.
    optional: bool = field(default=False, kw_only=True)

    def __str__(self) -> str:
        return f"delay traffic by {self.seconds:g} s when {self.at}"


@dataclass(frozen=True)
class Drop:
    """Reset every proxied connection when ``at`` happens; new connections still pass."""

    at: Trigger
    #: Not firing is legitimate here: do not fail the case when its trigger never fires.
    optional: bool = field(default=False, kw_only=True)

    def __str__(self) -> str:
        return f"drop every connection when {self.at}"


@dataclass(frozen=True)
class Blackhole:
    """From ``at`` on, the proxy swallows all traffic (connections stay open, nothing arrives)."""

    at: Trigger
    #: Not firing is legitimate here: do not fail the case when its trigger never fires.
    optional: bool = field(default=False, kw_only=True)

    def __str__(self) -> str:
        return f"black-hole traffic when {self.at}"


@dataclass(frozen=True)
class Heal:
    """Undo delay and black-holing when ``at`` happens."""

    at: Trigger
    #: Not firing is legitimate here: do not fail the case when its trigger never fires.
    optional: bool = field(default=False, kw_only=True)

    def __str__(self) -> str:
        return f"heal the network when {self.at}"


# Host-level faults (worlds across hosts) live in their own module; imported here, after
# Trigger exists, so that `from storeharness.harness.faults import Partition` works.
from ._hostfaults import (  # noqa: E402
    HOST_FAULTS,
    HealNetwork,
    HostFault,
    Isolate,
    KillHost,
    Latency,
    Loss,
    Partition,
    PauseHost,
    Rate,
    ResumeHost,
    check_host_fault,
    describe_host_fault,
)

Fault: TypeAlias = (
    Signal
    | Missing
    | Late
    | KillServer
    | RestartServer
    | Delay
    | Drop
    | Blackhole
    | Heal
    | HostFault
)
FAULT_TYPES = (
    Signal, Missing, Late, KillServer, RestartServer, Delay, Drop, Blackhole, Heal, *HOST_FAULTS
)  # fmt: skip
SERVER_FAULTS = (KillServer, RestartServer)
PROXY_FAULTS = (Delay, Drop, Blackhole, Heal)


def trigger(fault: Fault) -> Trigger | None:
    """The point that fires ``fault`` (``None`` for a missing rank)."""
    if isinstance(fault, Missing):
        return None
    if isinstance(fault, Late):
        return fault.after
    return fault.at


def resolve(faults: Sequence[Fault], world_size: int, seed: int) -> tuple[Fault, ...]:
    """Concrete faults for a world of ``world_size``: ANY picked from ``seed``, negatives wrapped.

    Raises ``ValueError`` naming the fault when a rank is outside the world.
    """
    return resolve_plan(faults, world_size, seed)[0]


def resolve_plan(
    faults: Sequence[Fault], world_size: int, seed: int, tags: Iterable[str] = ()
) -> tuple[tuple[Fault, ...], dict[str, int]]:
    """:func:`resolve`, and the rank each ``AnyRank`` tag resolved to.

    ``tags`` names more tags to resolve (an ``expect`` keyed on ``AnyRank("winner")`` when no
    fault uses the tag); they are picked after the faults' from the same seeded sequence.
    """
    rng = random.Random(seed)
    chosen: dict[str, int] = {}

    def pick(ref: RankRef, fault: Fault) -> int:
        if isinstance(ref, AnyRank):
            if ref.tag and ref.tag in chosen:
                return chosen[ref.tag]
            options = [r for r in range(world_size) if r not in ref.exclude]
            if not options:
                raise ValueError(f"{fault}: no rank left to pick in a world of {world_size}")
            rank = rng.choice(options)
            if ref.tag:
                chosen[ref.tag] = rank
            return rank
        if not -world_size <= ref < world_size:
            raise ValueError(
                f"{fault}: rank {ref} is outside a world of {world_size} "
                f"(use 0..{world_size - 1}, or -1 for the last rank)"
            )
        return ref % world_size

    out = []
    for fault in faults:
        changes: dict[str, object] = {}
        for f in fields(fault):
            value = getattr(fault, f.name)
            if f.name == "rank":
                changes["rank"] = pick(value, fault)
            elif isinstance(value, Trigger):
                changes[f.name] = Trigger(pick(value.rank, fault), value.name)
        out.append(replace(fault, **changes))  # type: ignore[arg-type]
    for tag in tags:
        if tag not in chosen:
            chosen[tag] = rng.randrange(world_size)
    return tuple(out), chosen


def check(faults: Iterable[object]) -> list[str]:
    """Problems with a fault list, each saying how to fix it (empty when it is fine)."""
    problems = []
    for fault in faults:
        if not isinstance(fault, FAULT_TYPES):
            names = ", ".join(t.__name__ for t in FAULT_TYPES)
            problems.append(
                f"{fault!r} is not a fault; use one of {names} from storeharness.harness.faults"
            )
            continue
        point = trigger(fault)
        if point is not None and not (isinstance(point, Trigger) and point.name):
            problems.append(f"{fault!r}: its trigger must be after(rank, 'point-name')")
        sig: object = getattr(fault, "sig", signal.SIGINT)  # typed, but data can come from anywhere
        if not isinstance(sig, signal.Signals):
            problems.append(f"{fault!r}: sig must be a signal.Signals member such as SIGINT")
        if isinstance(fault, Delay) and not fault.seconds > 0:
            problems.append(f"{fault!r}: the delay must be > 0 seconds")
        if isinstance(fault, HOST_FAULTS):
            problems += check_host_fault(fault)
    return problems


def describe(fault: Fault) -> str:
    """``Signal(SIGINT → rank 1 at 'waiting')``: what a fault is, for a report line."""
    point = trigger(fault)
    target = getattr(fault, "rank", None)
    if point is None:
        at = ""
    elif point.rank == target:
        at = f" at {point.name!r}"
    else:
        at = f" when rank {point.rank} is at {point.name!r}"
    if isinstance(fault, Signal):
        how = ", once blocked" if fault.blocked else ""
        return f"Signal({fault.sig.name} → rank {fault.rank}{at}{how})"
    if isinstance(fault, Missing | Late):
        return f"{type(fault).__name__}(rank {fault.rank}{at})"
    if isinstance(fault, Delay):
        return f"Delay({fault.seconds:g} s{at})"
    if isinstance(fault, HOST_FAULTS):
        return describe_host_fault(fault)
    return f"{type(fault).__name__}(rank {point.rank} at {point.name!r})" if point else repr(fault)


# ------------------------------------------------------------------ what faults act on


class Controls(Protocol):
    """What server and network faults act on (the endpoint of the store under test)."""

    def kill_server(self) -> str: ...
    def restart_server(self) -> str: ...
    def network(self, fault: Fault) -> str: ...
    def inherited_fds(self) -> list[int]: ...


class _NoControls:
    def _refuse(self, what: str) -> str:
        raise ValueError(f"a {what} fault needs a store endpoint with a server; none was given")

    def kill_server(self) -> str:
        return self._refuse("server")

    def restart_server(self) -> str:
        return self._refuse("server")

    def network(self, fault: Fault) -> str:
        return self._refuse("network")

    def inherited_fds(self) -> list[int]:
        return []

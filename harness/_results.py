"""What a world run reports: each rank's fate, the runner's event log, and the fault plan."""

from __future__ import annotations

import enum
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import faults as F
from ._messages import Event
from .history._ops import History

__all__ = [
    "Fate",
    "HostClock",
    "RankResult",
    "WorldFailed",
    "WorldResult",
]


class Fate(enum.StrEnum):
    RETURNED = "returned"
    RAISED = "raised"
    DIED = "died"
    TIMED_OUT = "timed out"
    MISSING = "missing"


@dataclass(frozen=True)
class RankResult:
    """What became of one rank."""

    rank: int
    fate: Fate
    value: Any = None
    error: str = ""
    exception: BaseException | None = None
    traceback: str = ""
    exitcode: int | None = None
    elapsed: float = 0.0
    points: tuple[str, ...] = ()
    where: str = ""
    log: str = ""
    pid: int | None = None

    @property
    def signal(self) -> signal.Signals | None:
        """The signal that killed the process, if one did."""
        code = self.exitcode
        return signal.Signals(-code) if code is not None and code < 0 else None

    def describe(self) -> str:
        """One line saying what became of this rank."""
        if self.fate is Fate.RETURNED:
            return f"rank {self.rank}: returned {self.value!r} in {self.elapsed:.3f} s"
        if self.fate is Fate.RAISED:
            return f"rank {self.rank}: raised {self.error}"
        if self.fate is Fate.MISSING:
            return f"rank {self.rank}: never started ({self.error})"
        if self.fate is Fate.DIED:
            sig = self.signal
            how = f"killed by {sig.name}" if sig else f"exited with code {self.exitcode}"
            last = f" after point {self.points[-1]!r}" if self.points else ""
            return f"rank {self.rank}: {how} without a result{last}"
        last = f", last point {self.points[-1]!r}" if self.points else ", no point reached"
        where = f"; stuck in {self.where}" if self.where else ""
        return f"rank {self.rank}: timed out ({self.error}{last}){where}"


@dataclass(frozen=True)
class HostClock:
    """A host's ``time.monotonic()`` against the controller's, in seconds, measured at the
    world's start and end: ``offset`` is the host's clock minus ours (from the fastest of a few
    round trips), ``rtt`` that round trip."""

    host: str
    offset: float
    rtt: float
    offset_end: float
    rtt_end: float

    @property
    def uncertainty(self) -> float:
        """How far a time the host stamped may be from ours after subtracting ``offset``: half
        the slower round trip, plus how far the offset moved during the world."""
        return max(self.rtt, self.rtt_end) / 2 + abs(self.offset_end - self.offset)


@dataclass(frozen=True)
class WorldResult(Sequence[RankResult]):
    """Every rank's fate, what the runner did (in order), the time taken, and the fault plan.

    ``plan`` is the faults as this run resolved them from its seed (``ANY`` ranks made
    concrete), so a judge reads the very plan that ran instead of resolving it again.
    """

    ranks: tuple[RankResult, ...]
    events: tuple[Event, ...] = ()
    elapsed: float = 0.0
    plan: tuple[F.Fault, ...] = ()
    #: Indices into ``plan`` of the faults that took effect (a signal sent, a server killed).
    fired: frozenset[int] = frozenset()
    #: Each ``AnyRank`` tag and the rank the seeded plan picked for it.
    tags: tuple[tuple[str, int], ...] = ()
    #: Every store operation of every rank, when the run recorded them (``history=True``).
    history: History | None = None
    #: Each host's clock against the controller's, when ranks ran on hosts.
    clocks: tuple[HostClock, ...] = ()

    def rank_of(self, tag: str) -> int:
        """The rank the plan picked for ``AnyRank(tag)``; ``KeyError`` if it has no such tag."""
        return dict(self.tags)[tag]

    def __getitem__(self, index: int) -> RankResult:  # type: ignore[override]
        return self.ranks[index]

    def __len__(self) -> int:
        return len(self.ranks)

    def __iter__(self) -> Iterator[RankResult]:
        return iter(self.ranks)

    def values(self) -> list[Any]:
        """Every rank's return value, in rank order (``None`` for a rank that did not return)."""
        return [r.value for r in self.ranks]

    @property
    def ok(self) -> bool:
        """Whether every rank returned (none raised, died, timed out or never started)."""
        return all(r.fate is Fate.RETURNED for r in self.ranks)

    def check(self) -> WorldResult:
        """Return ``self`` if every rank returned; raise :class:`WorldFailed` saying which not."""
        if not self.ok:
            raise WorldFailed(self)
        return self

    def unfired(self) -> list[str]:
        """Why each fault of the plan that never took effect did not (optional ones excepted)."""
        problems = []
        for index, fault in enumerate(self.plan):
            point = F.trigger(fault)
            if index in self.fired or point is None or getattr(fault, "optional", False):
                continue
            rank = int(point.rank)  # type: ignore[arg-type]
            reached = list(self.ranks[rank].points) if 0 <= rank < len(self.ranks) else []
            if point.name in reached:
                why = f"rank {rank} reached {point.name!r}, but {_not_applied(fault, self)}"
            else:
                why = f"rank {rank} reached points {reached}"
            problems.append(
                f"fault {F.describe(fault)} never fired; {why} (if that can legitimately "
                "happen, give the fault optional=True)"
            )
        return problems


def _not_applied(fault: F.Fault, world: WorldResult) -> str:
    target = getattr(fault, "rank", None)
    if isinstance(fault, F.Signal) and isinstance(target, int):
        fate = world.ranks[target]
        if fault.blocked and fate.fate is not Fate.MISSING:
            return f"rank {target} ended before it blocked in a system call"
        return f"rank {target} was {fate.fate.value} when it was due"
    if isinstance(fault, F.HOST_FAULTS):
        return "a host fault is applied by the hosts' agents, and this world ran on no hosts"
    return "it was not applied"


class WorldFailed(AssertionError):
    """A world in which some rank raised, died, timed out or never started."""

    def __init__(self, world: WorldResult) -> None:
        bad = [r for r in world.ranks if r.fate is not Fate.RETURNED]
        lines = [f"{len(bad)} of {len(world.ranks)} ranks did not return:"]
        for rank in bad:
            lines.append(f"  {rank.describe()}")
            tail = rank.traceback.strip().splitlines()[-3:]
            lines.extend(f"      {line}" for line in tail)
        lines.append("(world(..., check=False) returns the result without raising)")
        super().__init__("\n".join(lines))
        self.world = world

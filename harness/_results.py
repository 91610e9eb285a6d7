"""What a world run reports: each rank's fate, the runner's event log, and the fault plan."""

from __future__ import annotations

import enum
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import faults as F
from ._messages import Event

__all__ = ["Fate", "RankResult", "WorldResult"]


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
class WorldResult(Sequence[RankResult]):
    """Every rank's fate, what the runner did (in order), the time taken, and the fault plan.

    ``plan`` is the faults as this run resolved them from its seed (``ANY`` ranks made
    concrete), so a judge reads the very plan that ran instead of resolving it again.
    """

    ranks: tuple[RankResult, ...]
    events: tuple[Event, ...] = ()
    elapsed: float = 0.0
    plan: tuple[F.Fault, ...] = ()

    def __getitem__(self, index: int) -> RankResult:  # type: ignore[override]
        return self.ranks[index]

    def __len__(self) -> int:
        return len(self.ranks)

    def __iter__(self) -> Iterator[RankResult]:
        return iter(self.ranks)

    def values(self) -> list[Any]:
        return [r.value for r in self.ranks]

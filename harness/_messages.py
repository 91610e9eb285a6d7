"""What ranks and the runner say to each other over each rank's pipe.

The messages travel pickled over each rank's duplex pipe (h11's events are the model: one small
frozen class per message, dispatched with ``match``).  A rank asks, the runner answers:

rank → runner (:data:`RankMessage`)
    :class:`PipeFd` once at start (process ranks), :class:`AtPoint` and :class:`AwaitPoint`
    (each answered by one runner message), :class:`Finished` last.
runner → rank (:data:`RunnerMessage`)
    :class:`Go` after the faults a point triggers were applied, :class:`Reached` when an awaited
    point was reached, :class:`Never` when it cannot be, :class:`Stop` when the runner is
    stopping the rank (its time is up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "AtPoint",
    "AwaitPoint",
    "Finished",
    "Go",
    "Never",
    "PipeFd",
    "RankMessage",
    "Reached",
    "RunnerMessage",
    "Stop",
]

# ------------------------------------------------------------------------ rank → runner


@dataclass(frozen=True, slots=True)
class PipeFd:
    """The number of the rank's end of its pipe in its own process (to tell its reads apart)."""

    fd: int


@dataclass(frozen=True, slots=True)
class AtPoint:
    """The rank reached the named point; it waits for :class:`Go` (or :class:`Stop`)."""

    name: str


@dataclass(frozen=True, slots=True)
class AwaitPoint:
    """The rank waits until ``rank`` reaches ``name``: :class:`Reached` or :class:`Never`."""

    rank: int
    name: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The rank's function returned (``ok``) or raised; the rank's last message.

    ``exception`` is ``None`` when it did not pickle; ``error`` and ``traceback`` are its text.
    """

    ok: bool
    value: Any
    exception: BaseException | None
    error: str
    traceback: str
    elapsed: float


RankMessage: TypeAlias = PipeFd | AtPoint | AwaitPoint | Finished

# ------------------------------------------------------------------------ runner → rank


@dataclass(frozen=True, slots=True)
class Go:
    """Carry on past the point: every fault it triggered has been applied."""


@dataclass(frozen=True, slots=True)
class Reached:
    """The awaited rank has reached the awaited point."""


@dataclass(frozen=True, slots=True)
class Never:
    """The awaited point will never be reached, and ``why``."""

    why: str


@dataclass(frozen=True, slots=True)
class Stop:
    """The runner is stopping this rank: raise :class:`~.context.RankStopped`."""


RunnerMessage: TypeAlias = Go | Reached | Never | Stop

"""What ranks and the runner say to each other, and what the runner's event log records.

The messages travel pickled over each rank's duplex pipe (h11's events are the model: one small
frozen class per message, dispatched with ``match``).  A rank asks, the runner answers:

rank → runner (:data:`RankMessage`)
    :class:`PipeFd` once at start (process ranks), :class:`AtPoint`, :class:`AwaitPoint` and
    :class:`AwaitEnd` (each answered by one runner message), :class:`Finished` last.
runner → rank (:data:`RunnerMessage`)
    :class:`Go` after the faults a point triggers were applied, :class:`Reached` when an awaited
    point was reached, :class:`Never` when it cannot be, :class:`Stop` when the runner is
    stopping the rank (its time is up).

:class:`Event` is one line of the runner's log (``WorldResult.events``): when, what kind, which
rank, and the text a report prints.  Later records (histories of store operations) extend it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "AtPoint",
    "AwaitEnd",
    "AwaitPoint",
    "Event",
    "EventKind",
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
class AwaitEnd:
    """The rank waits until ``rank`` has ended (or never started): :class:`Reached` or
    :class:`Never`."""

    rank: int


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


RankMessage: TypeAlias = PipeFd | AtPoint | AwaitPoint | AwaitEnd | Finished

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

# -------------------------------------------------------------------------- the event log


class EventKind(enum.StrEnum):
    """What the runner's own events are about (records that extend :class:`Event` add kinds)."""

    HELD_BACK = "held back"  # a Missing fault kept a rank from starting
    LAUNCHED = "launched"  # a Late rank started on its trigger
    SIGNAL = "signal"  # a signal fault was sent (or could not be)
    SERVER = "server"  # the store's server was killed or restarted
    NETWORK = "network"  # the proxy changed mode
    STUCK = "stuck"  # a rank was still running at its time limit or budget
    ESCALATED = "escalated"  # the stop ladder signalled stuck ranks


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One entry of a world's event log; ``str()`` is the line a report prints.

    ``at`` is seconds since the world started (``time.monotonic()`` based); ``rank`` is the rank
    it is about, if exactly one.  Keyword-only, so records extending it may add required fields.
    """

    at: float
    kind: str
    text: str
    rank: int | None = None

    def __str__(self) -> str:
        return f"{self.at:8.3f} s  {self.text}"

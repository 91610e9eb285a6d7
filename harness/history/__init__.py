"""Histories: record every store operation of a run, and check that they are linearizable.

``@scenario(history=True)`` (or ``--history``) records; ``check=linearizable()`` records and
holds the run to it: every operation must appear to take effect at one instant between its
invocation and completion, in an order the sequential model of the Store contract accepts.  A
failure names the smallest failing part, per rank, and (with ``--log-dir``) writes an HTML
timeline beside the rank logs.  See ``docs/histories.md``.
"""

from __future__ import annotations

from typing import Any

from ._html import timeline, write_timeline
from ._ops import TIMEOUT, UNKNOWN, History, Op
from ._record import Recorder, RecordingStore, load
from .check import Failure, Verdict, check

__all__ = [
    "TIMEOUT",
    "UNKNOWN",
    "Failure",
    "History",
    "Op",
    "Recorder",
    "RecordingStore",
    "Verdict",
    "check",
    "linearizable",
    "load",
    "timeline",
    "write_timeline",
]

#: The file, in a case's log directory, that holds the timeline of a failed check.
TIMELINE = "history.html"


def linearizable(budget: float = 10.0) -> Any:
    """A world check: the run's store operations form a linearizable history.

    Turns recording on for the scenario.  ``budget`` bounds the check in seconds; a check not
    decided by then fails saying so (raise the budget), it never hangs.
    """

    def check_world(world: Any) -> str | None:
        history = getattr(world, "history", None)
        if history is None:
            return "linearizable() needs the run's history, but none was recorded"
        verdict = check(history, budget)
        if verdict.ok:
            return None
        if verdict.ok is None:
            return str(verdict)
        assert verdict.failure is not None
        detail = verdict.failure.text(history.t0).replace("\n", "\n    ")
        return f"{verdict}: {detail}"

    check_world.__name__ = "linearizable"
    check_world.needs_history = True  # type: ignore[attr-defined]
    return check_world


def wants_history(checks: Any) -> bool:
    """Whether any of a scenario's world checks needs the history recorded."""
    return any(getattr(c, "needs_history", False) for c in checks)

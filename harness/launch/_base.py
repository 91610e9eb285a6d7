"""The launcher seam: where ranks run, behind one small protocol (pytest-xdist's ``scheduler/*``).

The world runner (:mod:`..world`) keeps everything global — points, ``wait_for``, faults, budgets,
the event log, judging, the stop ladder's policy — and touches a rank only through a
:class:`Handle` its :class:`Launcher` returned.  A launcher does the per-process work: start a
rank, relay messages to it, signal it (checking "blocked in a system call" where the rank runs),
say where a stuck rank is, stop and reap it, and hand back its log and history.

Messages from ranks reach the runner through the runner's one selector: a launcher registers
file objects with it (:meth:`Launcher.bind`) whose ``data`` is a :data:`Reader`: called when its
file object is readable, it returns what arrived as :data:`Delivery` records.  Work a launcher
must poll for (a signal armed to go once its rank blocks, checked in ``/proc`` on this machine)
is done in :meth:`Launcher.poll`, which also says how soon it wants to be called again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from signal import Signals
from typing import Any, Protocol, TypeAlias

from .._messages import RankMessage, RunnerMessage
from .._results import HostClock

__all__ = [
    "KILL_TIMEOUT",
    "REAP_TIMEOUT",
    "Arrival",
    "Delivery",
    "Handle",
    "Launcher",
    "RankSpec",
    "Reader",
    "Signalled",
    "history_path",
]

#: Seconds each rank process gets to exit at teardown before SIGKILL (on every launcher).
REAP_TIMEOUT = 2.0
#: Seconds a SIGKILLed rank process gets to be gone.
KILL_TIMEOUT = 5.0


def history_path(log_path: str) -> str:
    """Where a rank records its operations: beside its log (on every launcher and host)."""
    return log_path.removesuffix(".log") + ".history"


@dataclass(frozen=True)
class RankSpec:
    """What one rank runs and where its files go (paths as seen by the runner).

    ``history``: whether the rank records its store operations (next to its log).
    """

    rank: int
    fn: Callable[..., Any]
    open_store: Callable[[], Any]
    world_size: int | None
    log_path: str
    token: str
    seed: int
    op_timeout: float | None
    tags: Mapping[str, int] = field(default_factory=dict)
    history: bool = False

    @property
    def history_path(self) -> str:
        """Where the rank records its operations: beside its log."""
        return history_path(self.log_path)


@dataclass(frozen=True, slots=True)
class Signalled:
    """An armed signal (:meth:`Handle.arm`) went out: ``how`` says when (for the event log)."""

    sig: Signals
    how: str


#: What arrives from a rank: its message, a :class:`Signalled`, or ``None`` when its pipe closed.
Arrival: TypeAlias = RankMessage | Signalled | None
#: What a reader hands the runner: a rank and what arrived from it.
Delivery: TypeAlias = tuple[int, Arrival]
#: Registered as a selector key's ``data``: reads what is ready, returns it.
Reader: TypeAlias = Callable[[], list[Delivery]]


class Handle(Protocol):
    """One started rank, as the runner sees it."""

    rank: int

    @property
    def pid(self) -> int | None:
        """Its process id on its host, ``None`` for a thread rank."""

    @property
    def signalable(self) -> bool:
        """Whether signals reach it (a process rank; a thread cannot be signalled)."""

    @property
    def is_thread(self) -> bool:
        """A thread rank: it hears a stop only through its store being closed."""

    def send(self, msg: RunnerMessage) -> None:
        """Answer the rank; a rank that is gone is not an error (its end arrives next)."""

    def signal(self, sig: Signals) -> bool:
        """Send ``sig`` now; ``False`` if its process is gone."""

    def arm(self, sig: Signals) -> None:
        """Send ``sig`` once the rank sleeps in a system call other than reading its pipe;
        a :class:`Signalled` delivery says when it went."""

    def close_store(self) -> None:
        """Take a thread rank's store away (the only stop a thread hears)."""

    def reap(self, timeout: float) -> None:
        """Its pipe closed without a result: wait (bounded) for its exit code."""

    def abandon(self, timeout: float) -> bool:
        """A last bounded join of a thread rank; whether it is still running."""

    def close(self) -> None:
        """Stop reading its messages (it ended, or the runner gave up on it)."""

    def exitcode(self) -> int | None:
        """Its exit code once reaped (negative: the signal that killed it)."""

    def log_tail(self) -> str:
        """The end of its log."""

    def history_file(self) -> str:
        """A local file with its recorded operations (fetched from its host if need be)."""


class Launcher(Protocol):
    """Starts ranks and does the per-process work for the runner."""

    def bind(
        self, register: Callable[[Any, Reader], None], unregister: Callable[[Any], object]
    ) -> None:
        """How to (un)register file objects with the runner's selector; before any start."""

    def start(self, spec: RankSpec) -> Handle:
        """Start one rank."""

    def poll(self) -> tuple[list[Delivery], float | None]:
        """Polled work that completed, and the seconds until it wants polling again."""

    def stacks(self, handles: list[Handle], timeout: float) -> dict[int, str]:
        """Dump each rank's stack into its log; where each is stuck (``file:line → ...``)."""

    def teardown(self, handles: list[Handle], running: list[Handle]) -> None:
        """The runner is done: kill ``running`` (it was interrupted), reap ``handles``."""

    def clocks(self) -> tuple[HostClock, ...]:
        """Each host's clock against ours, measured at start and end (none on one machine)."""

    def host_fault(self, fault: Any) -> str:
        """Apply a host-level network fault; the event log's text (hosts only)."""

    def close(self) -> None:
        """Release what the launcher holds (agents, self-pipes); idempotent."""

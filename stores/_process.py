"""Stopping what we started: one escalation ladder, ask → SIGTERM → SIGKILL, each step bounded.

Every owner of a child process stops it the same way (conventions, "processes are owned"):
ask it to stop, wait a bounded time for it, then SIGTERM the ones still alive, wait again, then
SIGKILL, and wait once more.  :func:`escalate` is that shape with the steps and the waiting
passed in, so the world runner (many ranks at once, a stop message first, reading their pipes
while it waits) and :func:`stop_process` (one helper that exits when its stdin closes) run the
very same ladder.  It lives in ``stores`` because a store server is such a helper and ``stores``
imports nothing from ``harness``.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Generic, Protocol, TypeAlias, TypeVar

__all__ = ["STOP_TIMEOUT", "Child", "Step", "escalate", "stop_process"]

T = TypeVar("T")


class Child(Protocol):
    """What :func:`stop_process` needs of a child: ``subprocess.Popen``'s shape (or a process
    a fork server made for us, which is not our child but is stopped the same way)."""

    @property
    def pid(self) -> int: ...
    @property
    def stdin(self) -> IO[Any] | None: ...
    @property
    def stdout(self) -> IO[Any] | None: ...
    @property
    def stderr(self) -> IO[Any] | None: ...
    @property
    def returncode(self) -> int | Any: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...


_Proc: TypeAlias = Child

#: How long :func:`stop_process` waits after each step, unless told otherwise (seconds).
STOP_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Step(Generic[T]):
    """One rung of the ladder: what to do to the targets still alive, and how long to wait.

    ``act`` receives the targets still alive and returns the ones worth waiting for (a stop
    message, say, reaches only the targets listening for it; a target that cannot act on a step
    is not waited for, so the ladder goes on to the next step at once).
    """

    name: str
    act: Callable[[list[T]], Sequence[T]]
    timeout: float


def escalate(
    targets: Sequence[T],
    steps: Sequence[Step[T]],
    *,
    alive: Callable[[T], bool],
    wait: Callable[[list[T], float], None],
) -> list[T]:
    """Apply each step to the targets still alive, then ``wait`` (bounded) for those it names.

    ``wait(targets, timeout)`` must return once every one of them has ended or ``timeout``
    seconds have passed, whichever is first.  Returns the targets still alive after the last
    step (normally none: only a process stuck in the kernel survives SIGKILL's wait).
    """
    for step in steps:
        left = [t for t in targets if alive(t)]
        if not left:
            return []
        waiting = [t for t in step.act(left) if alive(t)]
        if waiting:
            wait(waiting, step.timeout)
    return [t for t in targets if alive(t)]


# ------------------------------------------------------------------ one child process


def stop_process(proc: Child, timeout: float = STOP_TIMEOUT) -> int | None:
    """Stop a child that exits when its stdin closes: close it, then SIGTERM, then SIGKILL.

    Each step is followed by a wait of at most ``timeout`` seconds for the child to exit (a
    child started without a stdin pipe goes straight to SIGTERM).  Our ends of its pipes are
    closed in any case.  Returns the child's exit code, or ``None`` if it outlived SIGKILL's
    wait (stuck in the kernel); never raises for a child that is already gone.
    """
    steps: list[Step[_Proc]] = [
        Step("close stdin", _close_stdin, timeout),
        Step("SIGTERM", _send(signal.SIGTERM), timeout),
        Step("SIGKILL", _send(signal.SIGKILL), timeout),
    ]
    try:
        escalate([proc], steps, alive=_running, wait=_wait_all)
    finally:
        _close_pipes(proc)
    return proc.returncode


def _running(proc: _Proc) -> bool:
    return proc.poll() is None


def _close_stdin(procs: list[_Proc]) -> list[_Proc]:
    """Close our end of each child's stdin (and read pipes, so no child blocks writing to us)."""
    asked = [p for p in procs if p.stdin is not None and not p.stdin.closed]
    for proc in procs:
        _close_pipes(proc)
    return asked


def _close_pipes(proc: _Proc) -> None:
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None and not stream.closed:
            with contextlib.suppress(OSError):  # a flush into a pipe whose reader is gone
                stream.close()


def _send(sig: signal.Signals) -> Callable[[list[_Proc]], Sequence[_Proc]]:
    def act(procs: list[_Proc]) -> list[_Proc]:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):  # it exited just now
                proc.send_signal(sig)
        return procs

    return act


def _wait_all(procs: list[_Proc], timeout: float) -> None:
    """Wait until every one of ``procs`` has exited, or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))

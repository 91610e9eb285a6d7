"""Run one function on every rank of a world, as processes or threads, and report each fate.

The runner owns every rank it starts.  It reads all ranks' pipes through one selector with
bounded waits (the pytest-xdist controller's shape), applies faults as ranks announce named
points, and when the world's time limit (or a rank's budget) runs out it collects a stack dump
from each stuck rank (faulthandler), then stops it with the one stop ladder
(``stores._process.escalate``): a stop message, SIGTERM, SIGKILL, each followed by a bounded wait
during which it keeps reading every pipe.  Process ranks also die with the runner
(``PR_SET_PDEATHSIG``), so not even a killed runner leaves one behind.  The messages on the
pipes and the records of the event log are in ``_messages``.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import selectors
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import multiprocess

from ..stores import Store
from ..stores._process import Step, escalate
from . import _inspect as I
from . import faults as F
from ._messages import (
    AtPoint,
    AwaitEnd,
    AwaitPoint,
    Event,
    EventKind,
    Finished,
    Go,
    Never,
    PipeFd,
    Reached,
    RunnerMessage,
    Stop,
)
from ._results import Fate, RankResult, WorldResult
from .context import (
    DUMP_SIGNAL,
    RankContext,
    process_main,
    rank_logger,
    release_logger,
    run_rank,
)
from .faults import Controls, _NoControls
from .history import History
from .history import load as load_history

__all__ = ["Controls", "Fate", "RankFn", "RankResult", "WorldResult", "run_world"]

#: What every rank runs; its return value must pickle (for process ranks).
RankFn = Callable[[RankContext], Any]

_STOP_TIMEOUT = 0.5  # seconds a stuck rank gets after the stop message, and after SIGTERM
_KILL_TIMEOUT = 5.0  # seconds to wait for SIGKILLed ranks to be gone
_DUMP_TIMEOUT = 1.0  # seconds to wait for a faulthandler dump to land in the rank's log
_BLOCKED_POLL = 0.002  # while a signal waits for its target to block in a system call


@dataclass(eq=False)
class _Slot:
    rank: int
    state: str = "waiting"  # waiting → running → done, or missing
    conn: Any = None
    proc: Any = None
    thread: threading.Thread | None = None
    store: Store | None = None
    started: float = 0.0
    reply: Finished | None = None
    points: list[str] = field(default_factory=list)
    timed_out: str = ""
    where: str = ""
    why_missing: str = ""
    log_path: str = ""
    control_fd: int = -1  # the rank's end of its pipe, numbered as in the rank's process
    asking: bool = False  # it sent a point or an await and reads its pipe for the answer
    abandoned: bool = False  # a thread rank still blocked after its stop: not joined again


def run_world(
    fn: RankFn,
    world_size: int,
    open_store: Callable[[], Store],
    workers: str = "process",
    time_limit: float = 60.0,
    *,
    fixed: bool = True,
    faults: Sequence[F.Fault] = (),
    seed: int = 0,
    rank_budget: float | None = None,
    op_timeout: float | None = None,
    tags: Sequence[str] = (),
    controls: Controls | None = None,
    log_dir: str | None = None,
    start_method: str = "fork",
    history: bool = False,
) -> WorldResult:
    """Run ``fn(ctx)`` on ``world_size`` ranks, each with its own store from ``open_store()``.

    ``workers`` is ``"process"`` (``open_store`` and ``fn`` must pickle unless the start method
    is fork) or ``"thread"``.  ``fixed=False`` makes a non-fixed world: ``ctx.world_size`` is
    ``None`` and ranks that ``Late`` faults hold back join when their trigger fires.  Durations in
    seconds: ``time_limit`` bounds the whole world, ``rank_budget`` each rank from its start,
    ``op_timeout`` every store operation; ``tags`` names more ``AnyRank`` tags to resolve from
    the seed (``ctx.rank_of(tag)``).  ``history`` records every store operation of every rank
    (``WorldResult.history``, see :mod:`.history`).  Raises ``ValueError`` for a bad argument,
    naming it.
    """
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if workers not in ("process", "thread"):
        raise ValueError(f"workers must be 'process' or 'thread', got {workers!r}")
    if not time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit!r}")
    problems = F.check(faults)
    if problems:
        raise ValueError("; ".join(problems))
    plan, picked = F.resolve_plan(faults, world_size, seed, tags)
    if workers == "thread" and any(isinstance(f, F.Signal) for f in plan):
        raise ValueError("signal faults need process ranks (a signal cannot target a thread)")
    own_dir = log_dir is None
    logs = tempfile.mkdtemp(prefix="storeharness-logs-") if log_dir is None else log_dir
    try:
        world = _World(fn, world_size, open_store, workers, time_limit, fixed, plan, seed, logs)
        world.rank_budget, world.op_timeout, world.tags = rank_budget, op_timeout, picked
        world.controls = controls or _NoControls()
        world.history = history
        if workers == "process":
            world.mp = multiprocess.get_context(start_method)
        return world.run()
    finally:
        if own_dir:
            shutil.rmtree(logs, ignore_errors=True)


class _World:
    def __init__(
        self,
        fn: RankFn,
        n: int,
        open_store: Callable[[], Store],
        workers: str,
        time_limit: float,
        fixed: bool,
        plan: tuple[F.Fault, ...],
        seed: int,
        log_dir: str,
    ) -> None:
        self.fn, self.open_store, self.workers = fn, open_store, workers
        self.time_limit, self.fixed, self.plan, self.seed = time_limit, fixed, plan, seed
        self.n = n
        self.slots = [_Slot(r, log_path=os.path.join(log_dir, f"rank-{r}.log")) for r in range(n)]
        self.rank_budget: float | None = None
        self.op_timeout: float | None = None
        self.controls: Controls = _NoControls()
        self.mp: Any = None  # the multiprocess context, for process ranks
        self.token = uuid.uuid4().hex[:12]
        self.events: list[Event] = []
        self.awaiting: list[tuple[_Slot, int, str]] = []
        self.ending: list[tuple[_Slot, int]] = []  # (waiter, the rank whose end it awaits)
        self.blocked_signals: list[tuple[int, F.Signal, _Slot]] = []
        self.fired: set[int] = set()  # indices into the plan of the faults that took effect
        self.tags: dict[str, int] = {}  # AnyRank tag -> the rank the plan picked
        self.selector = selectors.DefaultSelector()
        self.t0 = 0.0
        self.t0_ns = 0
        self.history = False  # record each rank's store operations into rank-N.history

    # --------------------------------------------------------------------------- the loop

    def run(self) -> WorldResult:
        self.t0, self.t0_ns = time.monotonic(), time.monotonic_ns()
        deadline = self.t0 + self.time_limit
        try:
            late = {f.rank for f in self.plan if isinstance(f, F.Late)}
            for fault in self.plan:
                if isinstance(fault, F.Missing):
                    slot = self.slots[int(fault.rank)]  # type: ignore[arg-type]
                    slot.state, slot.why_missing = "missing", "a Missing fault held it back"
                    self._event(EventKind.HELD_BACK, f"rank {slot.rank} held back (Missing)", slot)
            for slot in self.slots:
                if slot.state == "waiting" and slot.rank not in late:
                    self._launch(slot)
            while self._running():
                now = time.monotonic()
                if now >= deadline:
                    self._stop([s for s in self.slots if s.state == "running"], "world time limit")
                    break
                wake = min([deadline, *self._budget_deadlines()])
                if self.blocked_signals:
                    wake = min(wake, now + _BLOCKED_POLL)
                for key, _ in self.selector.select(max(0.0, wake - now)):
                    self._receive(key.data)
                self._deliver_blocked()
                self._enforce_budgets()
        finally:
            self._teardown()
        for slot in self.slots:
            if slot.state == "waiting":
                slot.state = "missing"
                slot.why_missing = f"its start trigger never fired ({self._late_trigger(slot)})"
        return WorldResult(
            tuple(self._result(s) for s in self.slots),
            tuple(self.events),
            time.monotonic() - self.t0,
            self.plan,
            frozenset(self.fired),
            tuple(sorted(self.tags.items())),
            self._history(),
        )

    def _history(self) -> History | None:
        """Every rank's recorded operations, with the runner's events on the same clock."""
        if not self.history:
            return None
        files = [(s.rank, _history_file(s)) for s in self.slots]
        events = [(self.t0_ns + int(e.at * 1e9), e.text) for e in self.events]
        return load_history(files, self.t0_ns, events)

    def _running(self) -> bool:
        return any(s.state == "running" for s in self.slots)

    def _budget_deadlines(self) -> list[float]:
        if self.rank_budget is None:
            return []
        return [s.started + self.rank_budget for s in self.slots if s.state == "running"]

    def _enforce_budgets(self) -> None:
        if self.rank_budget is None:
            return
        now = time.monotonic()
        over = [
            s
            for s in self.slots
            if s.state == "running" and not s.timed_out and now >= s.started + self.rank_budget
        ]
        if over:
            self._stop(over, f"rank budget {self.rank_budget:g} s")

    def _event(self, kind: EventKind, text: str, about: _Slot | None = None) -> None:
        rank = None if about is None else about.rank
        self.events.append(Event(at=time.monotonic() - self.t0, kind=kind, text=text, rank=rank))

    # ------------------------------------------------------------------------- launching

    def _launch(self, slot: _Slot) -> None:
        world_size = self.n if self.fixed else None
        slot.started = time.monotonic()
        slot.state = "running"
        if self.mp is not None:
            ours, theirs = self.mp.Pipe(duplex=True)
            inherited = [s.conn.fileno() for s in self.slots if s.conn and not s.conn.closed]
            inherited += [ours.fileno(), *self.controls.inherited_fds()]
            args = (
                theirs, self.fn, self.open_store, slot.rank, world_size, slot.log_path,
                self.token, self.seed, self.op_timeout, inherited, os.getpid(), self.tags,
                _history_file(slot) if self.history else None,
            )  # fmt: skip
            proc = self.mp.Process(target=process_main, args=args, name=f"rank-{slot.rank}")
            # A forked child must not garbage-collect what it inherited (objects whose threads
            # did not survive the fork can crash when collected): freeze it first.
            gc.freeze()
            try:
                proc.start()
            finally:
                gc.unfreeze()
            theirs.close()
            slot.proc = proc
        else:
            ours, theirs = multiprocess.Pipe(duplex=True)
            log = rank_logger(slot.rank, slot.log_path, self.token)

            def main() -> None:
                try:
                    run_rank(
                        theirs, self.fn, self.open_store, slot.rank, world_size, log,
                        self.seed, self.op_timeout, on_open=lambda s: setattr(slot, "store", s),
                        tags=self.tags, history=_history_file(slot) if self.history else None,
                    )  # fmt: skip
                finally:
                    release_logger(log)

            slot.thread = threading.Thread(target=main, name=f"rank-{slot.rank}", daemon=True)
            slot.thread.start()
        slot.conn = ours
        self.selector.register(ours, selectors.EVENT_READ, slot)

    def _late_trigger(self, slot: _Slot) -> str:
        for fault in self.plan:
            if isinstance(fault, F.Late) and fault.rank == slot.rank:
                return str(fault.after)
        return "none"

    # -------------------------------------------------------------------------- messages

    def _receive(self, slot: _Slot) -> None:
        try:
            msg = slot.conn.recv()
        except (EOFError, OSError):
            self._finish(slot)
            return
        match msg:
            case PipeFd(fd):
                slot.control_fd = fd
            case AtPoint(name):
                slot.asking = True
                self._reached(slot, name)
            case AwaitPoint(rank, name):
                slot.asking = True
                self._await(slot, rank, name)
            case AwaitEnd(rank):
                slot.asking = True
                self._await_end(slot, rank)
            case Finished():
                slot.reply = msg
            case _:  # our own rank code sends only the above: a bug, so say so loudly
                raise TypeError(f"rank {slot.rank} sent {msg!r}, which is not a rank message")

    def _reply(self, slot: _Slot, msg: RunnerMessage) -> None:
        if slot.state != "running":
            return
        slot.asking = False
        with contextlib.suppress(OSError):  # it died (perhaps by our own fault); EOF is next
            slot.conn.send(msg)

    def _reached(self, slot: _Slot, name: str) -> None:
        slot.points.append(name)
        for index, fault in enumerate(self.plan):
            if F.trigger(fault) == F.Trigger(slot.rank, name):
                self._apply(index, fault)
        self._reply(slot, Go())
        self._wake_awaiting(slot, name)

    def _wake_awaiting(self, slot: _Slot, name: str) -> None:
        for waiting in [w for w in self.awaiting if (w[1], w[2]) == (slot.rank, name)]:
            self.awaiting.remove(waiting)
            self._reply(waiting[0], Reached())

    def _await(self, slot: _Slot, rank: int, name: str) -> None:
        if not 0 <= rank < self.n:
            self._reply(slot, Never(f"there is no rank {rank} in a world of {self.n}"))
            return
        target = self.slots[rank]
        if name in target.points:
            self._reply(slot, Reached())
        elif target.state in ("done", "missing"):
            self._reply(slot, Never(f"rank {rank} ended without reaching {name!r}"))
        else:
            self.awaiting.append((slot, rank, name))

    def _await_end(self, slot: _Slot, rank: int) -> None:
        if not 0 <= rank < self.n:
            self._reply(slot, Never(f"there is no rank {rank} in a world of {self.n}"))
        elif rank == slot.rank:
            self._reply(slot, Never("a rank cannot wait for its own end"))
        elif self.slots[rank].state in ("done", "missing"):
            self._reply(slot, Reached())
        else:
            self.ending.append((slot, rank))

    def _finish(self, slot: _Slot) -> None:
        self.selector.unregister(slot.conn)
        slot.conn.close()
        slot.state = "done"
        if slot.reply is None and slot.proc is not None:
            slot.proc.join(5)  # it closed its pipe without a result: it is dying; get its code
        for waiter, _, name in [w for w in self.awaiting if w[1] == slot.rank]:
            self.awaiting.remove((waiter, slot.rank, name))
            self._reply(waiter, Never(f"rank {slot.rank} ended without reaching {name!r}"))
        for waiter, _ in [w for w in self.ending if w[1] == slot.rank]:
            self.ending.remove((waiter, slot.rank))
            self._reply(waiter, Reached())
        self.blocked_signals = [b for b in self.blocked_signals if b[2] is not slot]

    # ---------------------------------------------------------------------------- faults

    def _apply(self, index: int, fault: F.Fault) -> None:
        """Apply plan entry ``index``; it counts as fired once it has taken effect."""
        if isinstance(fault, F.Signal):
            target = self.slots[int(fault.rank)]  # type: ignore[arg-type]
            # Signals to one rank land in the order they fired: one behind a held signal (a
            # SIGCONT behind a SIGSTOP that waits for its rank to block) waits its turn.
            if fault.blocked or any(held[2] is target for held in self.blocked_signals):
                self.blocked_signals.append((index, fault, target))
            elif self._signal(target, fault.sig, ""):
                self.fired.add(index)
            return
        elif isinstance(fault, F.Late):
            target = self.slots[int(fault.rank)]  # type: ignore[arg-type]
            if target.state == "waiting":
                self._event(
                    EventKind.LAUNCHED, f"rank {target.rank} starts ({fault.after} reached)", target
                )
                self._launch(target)
                self.fired.add(index)
            return
        if isinstance(fault, F.KillServer):
            self._event(EventKind.SERVER, self.controls.kill_server())
        elif isinstance(fault, F.RestartServer):
            self._event(EventKind.SERVER, self.controls.restart_server())
        elif isinstance(fault, F.PROXY_FAULTS):
            self._event(EventKind.NETWORK, self.controls.network(fault))
        else:
            return
        self.fired.add(index)

    def _signal(self, slot: _Slot, sig: signal.Signals, how: str) -> bool:
        """Send ``sig`` to a running rank; whether it was sent."""
        if slot.state != "running" or slot.proc is None:
            text = f"{sig.name} to rank {slot.rank} not sent: the rank is {slot.state}"
            self._event(EventKind.SIGNAL, text, slot)
            return False
        try:
            os.kill(slot.proc.pid, sig)
        except ProcessLookupError:
            text = f"{sig.name} to rank {slot.rank} not sent: its process is gone"
            self._event(EventKind.SIGNAL, text, slot)
            return False
        self._event(EventKind.SIGNAL, f"{sig.name} sent to rank {slot.rank}{how}", slot)
        # The signal is pending on the rank now: others may act on it (F.Signal.sent).
        slot.points.append(F.sent(sig))
        self._wake_awaiting(slot, F.sent(sig))
        return True

    def _deliver_blocked(self) -> None:
        """Send each held signal that may go now: the first held for its rank, and (if it
        waits for one) once the rank is blocked in a system call."""
        for held in list(self.blocked_signals):
            index, fault, slot = held
            if next(h for h in self.blocked_signals if h[2] is slot) is not held:
                continue  # an earlier signal to this rank is still held
            if not fault.blocked:
                how = " (after the signal held before it)"
            else:
                syscall = I.blocked_in(slot.proc.pid, slot.control_fd) if slot.proc else None
                if syscall is None:
                    continue
                how = f" while blocked in system call {syscall}"
            self.blocked_signals.remove(held)
            if self._signal(slot, fault.sig, how):
                self.fired.add(index)

    # ------------------------------------------------------------------- stopping ranks

    def _stop(self, stuck: list[_Slot], why: str) -> None:
        """Stop ranks still running at a time limit: mark them, dump their stacks, stop them."""
        stuck = [s for s in stuck if s.reply is None]  # the others are exiting with a result
        self._mark_timed_out(stuck, why)
        self._collect_stacks(stuck)
        self._escalate(stuck)
        self._abandon_threads(stuck)

    def _mark_timed_out(self, stuck: list[_Slot], why: str) -> None:
        for slot in stuck:
            slot.timed_out = why
            text = f"rank {slot.rank} stuck at the {why}; collecting its stack"
            self._event(EventKind.STUCK, text, slot)

    def _collect_stacks(self, stuck: list[_Slot]) -> None:
        """Where each rank is stuck: a faulthandler dump from a process, the frames of a thread."""
        procs = [s for s in stuck if s.proc is not None]
        sizes = {s.rank: I.size(s.log_path) for s in procs}
        for slot in procs:
            I.kill(slot.proc.pid, DUMP_SIGNAL)
        for slot in stuck:
            if slot.thread is not None:
                slot.where = I.thread_stack(slot.thread, slot.rank, slot.log_path)
        I.wait_for_dumps({s.log_path: sizes[s.rank] for s in procs}, _DUMP_TIMEOUT)
        for slot in procs:
            slot.where = I.where(I.read_from(slot.log_path, sizes[slot.rank]))

    def _escalate(self, stuck: list[_Slot]) -> None:
        """The stop ladder: stop message, SIGTERM, SIGKILL, reading every pipe after each."""
        steps = [
            Step("stop message", self._send_stop, _STOP_TIMEOUT),
            Step("SIGTERM", functools.partial(self._send_signal, signal.SIGTERM), _STOP_TIMEOUT),
            Step("SIGKILL", functools.partial(self._send_signal, signal.SIGKILL), _KILL_TIMEOUT),
        ]
        escalate(stuck, steps, alive=_alive, wait=self._drain)

    def _send_stop(self, slots: list[_Slot]) -> list[_Slot]:
        """Send the stop message, take thread ranks' stores away; return who can act on it."""
        # Only a rank reading its pipe for an answer, or a thread whose store we close, can.
        listening = [s for s in slots if s.asking or s.thread is not None]
        for slot in slots:
            self._reply(slot, Stop())
            if slot.store is not None:  # a thread cannot be killed: take its store away
                with contextlib.suppress(Exception):
                    slot.store.close()
        return listening

    def _send_signal(self, sig: signal.Signals, slots: list[_Slot]) -> list[_Slot]:
        """Signal the process ranks among ``slots`` (threads cannot be signalled); return them."""
        procs = [s for s in slots if s.proc is not None]
        for slot in procs:
            I.kill(slot.proc.pid, sig)
        if procs:
            text = f"{sig.name} sent to rank(s) {', '.join(str(s.rank) for s in procs)}"
            self._event(EventKind.ESCALATED, text, procs[0] if len(procs) == 1 else None)
        return procs

    def _abandon_threads(self, stuck: list[_Slot]) -> None:
        """Give each thread rank still running a last bounded join, then stop tracking it."""
        for slot in stuck:
            if slot.state == "running" and slot.thread is not None:
                slot.thread.join(_STOP_TIMEOUT)
                if slot.thread.is_alive():
                    slot.timed_out += "; the thread is still blocked (threads cannot be killed)"
                    slot.abandoned = True
                self.selector.unregister(slot.conn)
                slot.conn.close()
                slot.state = "done"

    def _drain(self, slots: list[_Slot], timeout: float) -> None:
        """Read every pipe until each of ``slots`` has closed its own or ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        while any(_alive(s) for s in slots):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for key, _ in self.selector.select(left):
                self._receive(key.data)

    def _teardown(self) -> None:
        for slot in self.slots:
            if slot.state == "running":  # only on an exception out of the loop
                slot.timed_out = slot.timed_out or "the runner was interrupted"
                if slot.proc is not None:
                    I.kill(slot.proc.pid, signal.SIGKILL)
        joins_deadline = time.monotonic() + 2.0  # one bound for all threads, however many
        for slot in self.slots:
            # Past its pipe's end a thread only releases its logger; one still blocked after
            # its stop had its chance (it ends once its endpoint closes, after the world).
            if slot.thread is not None and not slot.abandoned:
                slot.thread.join(max(0.0, joins_deadline - time.monotonic()))
            if slot.proc is not None:
                slot.proc.join(2)
                if slot.proc.is_alive():
                    slot.proc.kill()
                    slot.proc.join(5)
            if slot.conn is not None and not slot.conn.closed:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(slot.conn)
                slot.conn.close()
            if slot.state == "running":
                slot.state = "done"
        self.selector.close()

    # --------------------------------------------------------------------------- results

    def _result(self, slot: _Slot) -> RankResult:
        pid = slot.proc.pid if slot.proc is not None else None
        exitcode = slot.proc.exitcode if slot.proc is not None else None
        common: dict[str, Any] = {
            "points": tuple(slot.points),
            "pid": pid,
            "exitcode": exitcode,
            "log": I.tail(slot.log_path),
        }
        if slot.state == "missing":
            return RankResult(slot.rank, Fate.MISSING, error=slot.why_missing, **common)
        if slot.timed_out:  # whatever it sent after being stopped is the stop's doing
            return RankResult(
                slot.rank, Fate.TIMED_OUT, error=slot.timed_out, where=slot.where, **common
            )
        if slot.reply is None:
            return RankResult(slot.rank, Fate.DIED, **common)
        reply = slot.reply
        return RankResult(
            slot.rank,
            Fate.RETURNED if reply.ok else Fate.RAISED,
            reply.value,
            reply.error,
            reply.exception,
            reply.traceback,
            elapsed=reply.elapsed,
            where=slot.where,
            **common,
        )


def _history_file(slot: _Slot) -> str:
    """Where a rank records its operations: beside its log."""
    return slot.log_path.removesuffix(".log") + ".history"


def _alive(slot: _Slot) -> bool:
    """Still running, as far as the runner knows (its pipe has not closed)."""
    return slot.state == "running"

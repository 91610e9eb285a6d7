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

import functools
import os
import selectors
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import multiprocess

from ..stores import Store
from ..stores._process import Step, escalate
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
    Reached,
    RunnerMessage,
    Stop,
)
from ._results import Fate, RankResult, WorldResult
from .context import RankContext
from .faults import Controls, _NoControls
from .history import History
from .history import load as load_history
from .hosts.control import HostError
from .hosts.inventory import Host
from .launch import Arrival, Handle, Launcher, LocalLauncher, RankSpec, Reader, Signalled
from .launch._base import history_path
from .launch._placement import Placement, place
from .launch.remote import remote_launcher

if TYPE_CHECKING:
    from .hosts.control import Agent

__all__ = ["Controls", "Fate", "RankFn", "RankResult", "WorldResult", "run_world"]

#: What every rank runs; its return value must pickle (for process ranks).
RankFn = Callable[[RankContext], Any]

_STOP_TIMEOUT = 0.5  # seconds a stuck rank gets after the stop message, and after SIGTERM
_KILL_TIMEOUT = 5.0  # seconds to wait for SIGKILLed ranks to be gone
_DUMP_TIMEOUT = 1.0  # seconds to wait for a faulthandler dump to land in the rank's log


@dataclass(eq=False)
class _Slot:
    rank: int
    state: str = "waiting"  # waiting → running → done, or missing
    handle: Handle | None = None  # once started: the launcher's handle on it
    started: float = 0.0
    reply: Finished | None = None
    points: list[str] = field(default_factory=list)
    timed_out: str = ""
    where: str = ""
    why_missing: str = ""
    log_path: str = ""
    asking: bool = False  # it sent a point or an await and reads its pipe for the answer


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
    launcher: Launcher | None = None,
    hosts: Sequence[Host] | None = None,
    placement: Placement = "spread",
    connect: Callable[[Host], Agent] | None = None,
    store_ports: Sequence[int] = (),
) -> WorldResult:
    """Run ``fn(ctx)`` on ``world_size`` ranks, each with its own store from ``open_store()``.

    ``workers`` is ``"process"`` (``open_store`` and ``fn`` must pickle unless the start method
    is fork) or ``"thread"``.  ``fixed=False`` makes a non-fixed world: ``ctx.world_size`` is
    ``None`` and ranks that ``Late`` faults hold back join when their trigger fires.  Durations in
    seconds: ``time_limit`` bounds the whole world, ``rank_budget`` each rank from its start,
    ``op_timeout`` every store operation; ``tags`` names more ``AnyRank`` tags to resolve from
    the seed (``ctx.rank_of(tag)``).  ``history`` records every store operation of every rank
    (``WorldResult.history``, see :mod:`.history`).  ``launcher`` says where ranks run (default:
    this machine, :class:`~.launch.LocalLauncher`; the world closes it).  ``hosts``: run the
    ranks on these hosts instead (``placement``: ``"spread"``, ``"pack"`` or ``{rank: host}``),
    through agents from ``connect(host)`` (kept by the caller) or connected for this world;
    ``store_ports`` are the store's data ports, which host-level network faults match.
    Raises ``ValueError`` for a bad argument, naming it, and ``HostError`` for a host that
    cannot be reached.
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
    controls = controls or _NoControls()
    if hosts and launcher is None:
        if workers != "process":
            raise ValueError("ranks on hosts are processes: workers must be 'process'")
        where = place(world_size, hosts, placement)
        launcher = remote_launcher(hosts, where, connect, store_ports)
    if launcher is None:
        mp = multiprocess.get_context(start_method) if workers == "process" else None
        launcher = LocalLauncher(mp, controls.inherited_fds)
    try:
        world = _World(fn, world_size, open_store, launcher, time_limit, fixed, plan, seed, logs)
        world.rank_budget, world.op_timeout, world.tags = rank_budget, op_timeout, picked
        world.controls = controls
        world.history = history
        return world.run()
    finally:
        launcher.close()
        if own_dir:
            shutil.rmtree(logs, ignore_errors=True)


class _World:
    def __init__(
        self,
        fn: RankFn,
        n: int,
        open_store: Callable[[], Store],
        launcher: Launcher,
        time_limit: float,
        fixed: bool,
        plan: tuple[F.Fault, ...],
        seed: int,
        log_dir: str,
    ) -> None:
        self.fn, self.open_store, self.launcher = fn, open_store, launcher
        self.time_limit, self.fixed, self.plan, self.seed = time_limit, fixed, plan, seed
        self.n = n
        self.slots = [_Slot(r, log_path=os.path.join(log_dir, f"rank-{r}.log")) for r in range(n)]
        self.rank_budget: float | None = None
        self.op_timeout: float | None = None
        self.controls: Controls = _NoControls()
        self.token = uuid.uuid4().hex[:12]
        self.events: list[Event] = []
        self.awaiting: list[tuple[_Slot, int, str]] = []
        self.ending: list[tuple[_Slot, int]] = []  # (waiter, the rank whose end it awaits)
        self.blocked_signals: list[tuple[int, F.Signal, _Slot]] = []
        self.armed: set[int] = set()  # plan indices of held signals the launcher was given
        self.poll_again: float | None = None  # when the launcher wants polling again
        self.fired: set[int] = set()  # indices into the plan of the faults that took effect
        self.tags: dict[str, int] = {}  # AnyRank tag -> the rank the plan picked
        self.selector = selectors.DefaultSelector()
        launcher.bind(self._register, self.selector.unregister)
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
                self._pump(max(0.0, wake - now))
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
            self.launcher.clocks(),
        )

    def _history(self) -> History | None:
        """Every rank's recorded operations, with the runner's events on the same clock."""
        if not self.history:
            return None
        files = [(s.rank, _history_file(s)) for s in self.slots]
        events = [(self.t0_ns + int(e.at * 1e9), e.text) for e in self.events]
        return load_history(files, self.t0_ns, events)

    def _register(self, fileobj: Any, reader: Reader) -> None:
        self.selector.register(fileobj, selectors.EVENT_READ, reader)

    def _pump(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s, less while the launcher polls) for the selector, deliver
        what arrived, then what the launcher's polled work produced."""
        if self.poll_again is not None:
            timeout = min(timeout, self.poll_again)
        for key, _ in self.selector.select(timeout):
            for rank, msg in key.data():
                self._deliver(rank, msg)
        self._poll()

    def _poll(self) -> None:
        done, self.poll_again = self.launcher.poll()
        for rank, msg in done:
            self._deliver(rank, msg)

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
        slot.started = time.monotonic()
        slot.state = "running"
        spec = RankSpec(
            slot.rank, self.fn, self.open_store, self.n if self.fixed else None, slot.log_path,
            self.token, self.seed, self.op_timeout, self.tags, self.history,
        )  # fmt: skip
        slot.handle = self.launcher.start(spec)

    def _late_trigger(self, slot: _Slot) -> str:
        for fault in self.plan:
            if isinstance(fault, F.Late) and fault.rank == slot.rank:
                return str(fault.after)
        return "none"

    # -------------------------------------------------------------------------- messages

    def _deliver(self, rank: int, msg: Arrival) -> None:
        slot = self.slots[rank]
        match msg:
            case None:  # its pipe closed
                self._finish(slot)
            case Signalled(sig, how):
                self._signalled(slot, sig, how)
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
        if slot.state != "running" or slot.handle is None:
            return
        slot.asking = False
        slot.handle.send(msg)

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
        assert slot.handle is not None
        slot.handle.close()
        slot.state = "done"
        if slot.reply is None:
            slot.handle.reap(5)  # it closed its pipe without a result: it is dying; get its code
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
        elif isinstance(fault, F.HOST_FAULTS):  # between hosts: nftables/tc on the hosts
            try:
                self._event(EventKind.NETWORK, self.launcher.host_fault(fault))
            except (HostError, ValueError) as exc:  # not applied: it never fires, and says why
                self._event(EventKind.NETWORK, f"{F.describe(fault)} not applied: {exc}")
                return
        else:
            return
        self.fired.add(index)

    def _signal(self, slot: _Slot, sig: signal.Signals, how: str) -> bool:
        """Send ``sig`` to a running rank; whether it was sent."""
        if slot.state != "running" or slot.handle is None or not slot.handle.signalable:
            text = f"{sig.name} to rank {slot.rank} not sent: the rank is {slot.state}"
            self._event(EventKind.SIGNAL, text, slot)
            return False
        if not slot.handle.signal(sig):
            text = f"{sig.name} to rank {slot.rank} not sent: its process is gone"
            self._event(EventKind.SIGNAL, text, slot)
            return False
        self._sent(slot, sig, how)
        return True

    def _sent(self, slot: _Slot, sig: signal.Signals, how: str) -> None:
        self._event(EventKind.SIGNAL, f"{sig.name} sent to rank {slot.rank}{how}", slot)
        # The signal is pending on the rank now: others may act on it (F.Signal.sent).
        slot.points.append(F.sent(sig))
        self._wake_awaiting(slot, F.sent(sig))

    def _signalled(self, slot: _Slot, sig: signal.Signals, how: str) -> None:
        """The launcher sent a signal armed for when ``slot`` blocked (the first held for it)."""
        held = next(h for h in self.blocked_signals if h[2] is slot)
        self.blocked_signals.remove(held)
        self.armed.discard(held[0])
        self.fired.add(held[0])
        self._sent(slot, sig, how)

    def _deliver_blocked(self) -> None:
        """Send each held signal that may go now: the first held for its rank, and (if it
        waits for one) arm it with the launcher, which sends it once the rank blocks in a
        system call (checked where the rank runs)."""
        for held in list(self.blocked_signals):
            index, fault, slot = held
            if held not in self.blocked_signals:
                continue  # sent meanwhile (an armed one, by the poll below)
            if next(h for h in self.blocked_signals if h[2] is slot) is not held:
                continue  # an earlier signal to this rank is still held
            if fault.blocked:
                if index not in self.armed and slot.handle is not None and slot.handle.signalable:
                    self.armed.add(index)
                    slot.handle.arm(fault.sig)
                    self._poll()  # it may be blocked already (re-enters only to deliver)
                continue
            self.blocked_signals.remove(held)
            if self._signal(slot, fault.sig, " (after the signal held before it)"):
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
        found = self.launcher.stacks([s.handle for s in stuck if s.handle], _DUMP_TIMEOUT)
        for slot in stuck:
            slot.where = found.get(slot.rank, "")

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
        listening = [s for s in slots if s.asking or (s.handle and s.handle.is_thread)]
        for slot in slots:
            self._reply(slot, Stop())
            if slot.handle is not None:  # a thread cannot be killed: take its store away
                slot.handle.close_store()
        return listening

    def _send_signal(self, sig: signal.Signals, slots: list[_Slot]) -> list[_Slot]:
        """Signal the process ranks among ``slots`` (threads cannot be signalled); return them."""
        procs = [s for s in slots if s.handle is not None and s.handle.signalable]
        for slot in procs:
            if slot.handle is not None:
                slot.handle.signal(sig)  # gone already: its end arrives through its pipe
        if procs:
            text = f"{sig.name} sent to rank(s) {', '.join(str(s.rank) for s in procs)}"
            self._event(EventKind.ESCALATED, text, procs[0] if len(procs) == 1 else None)
        return procs

    def _abandon_threads(self, stuck: list[_Slot]) -> None:
        """Give each thread rank still running a last bounded join, then stop tracking it."""
        for slot in stuck:
            if slot.state == "running" and slot.handle is not None and slot.handle.is_thread:
                if slot.handle.abandon(_STOP_TIMEOUT):
                    slot.timed_out += "; the thread is still blocked (threads cannot be killed)"
                slot.handle.close()
                slot.state = "done"

    def _drain(self, slots: list[_Slot], timeout: float) -> None:
        """Read every pipe until each of ``slots`` has closed its own or ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        while any(_alive(s) for s in slots):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._pump(left)

    def _teardown(self) -> None:
        running = []
        for slot in self.slots:
            if slot.state == "running":  # only on an exception out of the loop
                slot.timed_out = slot.timed_out or "the runner was interrupted"
                running.append(slot.handle)
                slot.state = "done"
        handles = [s.handle for s in self.slots if s.handle is not None]
        try:
            self.launcher.teardown(handles, [h for h in running if h is not None])
        finally:
            self.selector.close()

    # --------------------------------------------------------------------------- results

    def _result(self, slot: _Slot) -> RankResult:
        handle = slot.handle
        common: dict[str, Any] = {
            "points": tuple(slot.points),
            "pid": handle.pid if handle is not None else None,
            "exitcode": handle.exitcode() if handle is not None else None,
            "log": handle.log_tail() if handle is not None else "",
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
    """Where a rank's recorded operations are, here (fetched from its host if need be)."""
    if slot.handle is not None:
        return slot.handle.history_file()
    return history_path(slot.log_path)


def _alive(slot: _Slot) -> bool:
    """Still running, as far as the runner knows (its pipe has not closed)."""
    return slot.state == "running"

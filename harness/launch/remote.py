"""Ranks on other hosts: each host's agent (:mod:`..hosts.agent`) forks and relays them.

The runner's loop is the same for remote ranks as for local ones.  What a host's agent relays
arrives as callbacks on execnet's receiver thread; they go into one queue and write a byte to a
self-pipe that the runner's selector watches, so the runner wakes for them as it wakes for a
local pipe — no polling.  Messages travel as the very pickled bytes a rank's pipe carries
(:mod:`..hosts._ranks`), so the rank↔agent protocol is the rank↔runner one.

Events are stamped on the controller's clock when messages arrive here.  Ranks stamp their
recorded operations with their host's ``time.monotonic()``: each host's offset and round trip
are measured at the start and the end of the world (:class:`~.._results.HostClock`, in the
``WorldResult``), and a remote history is moved onto the controller's clock with its intervals
widened by the uncertainty, so a linearizability check never trusts an order the clocks cannot
tell.  A scenario's module travels as source and is imported on the host under its own name.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import signal
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from signal import Signals
from typing import Any

from multiprocess.reduction import ForkingPickler

from .. import _inspect as I
from .._messages import RunnerMessage
from .._results import HostClock
from ..history._record import rebase
from ..hosts.control import Agent, HostError
from ..hosts.inventory import Host
from ._base import KILL_TIMEOUT, REAP_TIMEOUT, Delivery, Handle, RankSpec, Reader, Signalled

__all__ = ["RemoteHandle", "RemoteLauncher", "remote_launcher", "shipped_modules"]

_GONE = ("gone",)  # a world channel's end marker: its host's link closed


def remote_launcher(
    hosts: Sequence[Host],
    placement: Mapping[int, str],
    connect: Callable[[Host], Agent] | None = None,
    ports: Sequence[int] = (),
) -> RemoteLauncher:
    """A launcher for ``placement`` over ``hosts``: agents from ``connect`` (the caller's, kept
    open, all of one run tag), or connected here under a new run tag and closed with the
    launcher.  Every host gets an agent, ranks or not: host faults may act on any of them.
    ``ports``: the store's data ports, the only ones host-level network faults match."""
    if connect is not None:
        return RemoteLauncher([connect(h) for h in hosts], placement, ports=ports)
    from ..hosts.control import connect as connect_agent

    run = uuid.uuid4().hex[:12]
    agents: list[Agent] = []
    try:
        for host in hosts:
            agents.append(connect_agent(host, run=run))
    except BaseException:
        for agent in agents:
            agent.close()
        raise
    return RemoteLauncher(agents, placement, own_agents=True, ports=ports)


def shipped_modules(*objs: Any) -> list[tuple[str, str, str]]:
    """``(module name, file, source)`` of each module defining ``objs`` that a host cannot be
    assumed to have: not ours (storeharness is installed there), not ``__main__`` (pickled by
    value), not the standard library's."""
    found: dict[str, tuple[str, str, str]] = {}
    for obj in objs:
        while isinstance(obj, functools.partial):
            obj = obj.func
        name = str(getattr(obj, "__module__", None) or type(obj).__module__)
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if (
            module is None
            or not path
            or not path.endswith(".py")
            or name == "__main__"
            or name.split(".")[0] in ("storeharness", *sys.stdlib_module_names)
            or name in found
        ):
            continue
        with open(path, encoding="utf-8") as f:
            found[name] = (name, path, f.read())
    return list(found.values())


class RemoteHandle:
    """A rank on a host, reached through its agent."""

    signalable = True
    is_thread = False

    def __init__(self, launcher: RemoteLauncher, spec: RankSpec, host: str, pid: int) -> None:
        self.rank, self.spec, self.host, self._pid = spec.rank, spec, host, pid
        self._launcher = launcher
        self._exit: int | None = None
        self.ended = False  # its pipe closed (or its host's link did)

    @property
    def pid(self) -> int:
        """Its process id on its host."""
        return self._pid

    def _request(self, kind: str, *args: Any) -> Any:
        return self._launcher.agents[self.host].request(kind, self._launcher.token, *args)

    def send(self, msg: RunnerMessage) -> None:
        self._launcher.send(self.host, ("to", self.rank, bytes(ForkingPickler.dumps(msg))))

    def signal(self, sig: Signals) -> bool:
        try:
            return bool(self._request("rank-signal", self.rank, int(sig)))
        except HostError:
            return False

    def arm(self, sig: Signals) -> None:
        self._launcher.send(self.host, ("arm", self.rank, int(sig)))

    def close_store(self) -> None:
        pass  # a process: the stop ladder's signals reach it

    def reap(self, timeout: float) -> None:
        with contextlib.suppress(HostError):
            self._exit = self._request("rank-reap", self.rank, timeout)

    def abandon(self, timeout: float) -> bool:
        return False

    def close(self) -> None:
        self.ended = True

    def exitcode(self) -> int | None:
        return self._exit

    def log_tail(self) -> str:
        return I.tail(self.spec.log_path)  # fetched from its host at teardown

    def history_file(self) -> str:
        return self.spec.history_path  # fetched and rebased at teardown


class RemoteLauncher:
    """Ranks on ``agents``' hosts; ``placement`` maps a rank to a host name (default: spread,
    rank ``r`` on host ``r mod n``).  ``own_agents``: close the agents with the launcher."""

    def __init__(
        self,
        agents: Sequence[Agent],
        placement: Mapping[int, str] | None = None,
        *,
        own_agents: bool = False,
        ports: Sequence[int] = (),
    ) -> None:
        if not agents:
            raise ValueError("a remote launcher needs at least one connected host agent")
        # host faults act under the agents' one run tag (netfaults refuses a mix, naming it)
        self.run = agents[0].run
        self.ports = tuple(ports)
        self._faulted = False  # a host fault was applied: heal before the world ends
        self.agents = {a.host.name: a for a in agents}
        self.names = list(self.agents)
        unknown = sorted({h for h in (placement or {}).values() if h not in self.agents})
        if unknown:
            raise ValueError(f"placement names hosts {unknown} not among {self.names}")
        self.placement = dict(placement or {})
        self.own_agents = own_agents
        self.token = uuid.uuid4().hex[:12]
        self.handles: list[RemoteHandle] = []
        self._channels: dict[str, Any] = {}
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._unregister: Callable[[Any], object] = lambda fileobj: None
        self._start_clocks: dict[str, tuple[float, float]] = {}
        self._clocks: tuple[HostClock, ...] = ()
        self._closed = False

    def host_of(self, rank: int) -> str:
        """The host rank ``rank`` runs on."""
        return self.placement.get(rank) or self.names[rank % len(self.names)]

    # ----------------------------------------------------------------------- the protocol

    def bind(
        self, register: Callable[[Any, Reader], None], unregister: Callable[[Any], object]
    ) -> None:
        register(self._wake_r, self._read)
        self._unregister = unregister
        self._start_clocks = {n: a.clock(monotonic=True) for n, a in self.agents.items()}

    def start(self, spec: RankSpec) -> Handle:
        host = self.host_of(spec.rank)
        if host not in self._channels:
            self._open(host, spec)
        where = (host, self.agents[host].host.address)
        payload = ForkingPickler.dumps(
            (spec.fn, spec.open_store, spec.world_size, spec.seed, spec.op_timeout,
             dict(spec.tags), spec.history, where)
        )  # fmt: skip
        pid = self.agents[host].request("rank-start", self.token, spec.rank, bytes(payload))
        handle = RemoteHandle(self, spec, host, int(pid))
        self.handles.append(handle)
        return handle

    def poll(self) -> tuple[list[Delivery], float | None]:
        return [], None  # armed signals are watched on their hosts

    def stacks(self, handles: list[Handle], timeout: float) -> dict[int, str]:
        found: dict[int, str] = {}
        for host, ours in self._by_host(handles).items():
            with contextlib.suppress(HostError):
                found.update(
                    self.agents[host].request(
                        "rank-stacks", self.token, [h.rank for h in ours], timeout
                    )
                )
        return found

    def teardown(self, handles: list[Handle], running: list[Handle]) -> None:
        """Kill ``running``, reap every rank, measure the clocks again, fetch logs and
        histories onto the controller's clock, and close the world on each host."""
        self._heal()  # first: a cut link must not keep what follows from reaching a host
        for handle in running:
            handle.signal(signal.SIGKILL)
        ours = [h for h in self.handles if h in handles]
        for handle in ours:
            if handle.exitcode() is None:
                handle.reap(REAP_TIMEOUT)
            if handle.exitcode() is None:
                handle.signal(signal.SIGKILL)
                handle.reap(KILL_TIMEOUT)
        self._clocks = tuple(self._measure_end())
        clocks = {c.host: c for c in self._clocks}
        for handle in ours:
            self._fetch(handle, clocks.get(handle.host))
        for host in list(self._channels):
            with contextlib.suppress(HostError):
                self.agents[host].request("world-close", self.token, [])
            self._channels.pop(host).close()

    def clocks(self) -> tuple[HostClock, ...]:
        return self._clocks

    def host_fault(self, fault: Any) -> str:
        """Apply a host-level fault through the agents (:func:`..hosts.netfaults.apply`): rules
        on the store's data ports between the hosts, or signals to a host's processes."""
        from ..hosts import netfaults

        if not self.ports:
            raise ValueError("this world's store has no data port for network faults to match")
        self._faulted = True
        return netfaults.apply(self.agents, fault, self.run, self.ports)

    def _heal(self) -> None:
        """Remove the world's network faults from every host (the agents outlive the world)."""
        if self._faulted:
            from ..hosts import netfaults

            self._faulted = False
            with contextlib.suppress(HostError, ValueError):
                netfaults.heal(self.agents, self.run)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(KeyError, ValueError):
            self._unregister(self._wake_r)
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.own_agents:
            for agent in self.agents.values():
                agent.close()
        self.handles = []
        self._unregister = lambda fileobj: None

    # ---------------------------------------------------------------------------- inside

    def send(self, host: str, msg: tuple[Any, ...]) -> None:
        """Send on ``host``'s world channel; a closed link is not an error (its end arrives)."""
        channel = self._channels.get(host)
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.send(msg)

    def _open(self, host: str, spec: RankSpec) -> None:
        agent = self.agents[host]
        channel = agent.open_channel()
        channel.setcallback(functools.partial(self._arrive, host), endmarker=_GONE)
        modules = shipped_modules(spec.fn, spec.open_store)
        agent.request("world-open", self.token, channel, modules)
        self._channels[host] = channel

    def _arrive(self, host: str, msg: Any) -> None:
        """On execnet's receiver thread: queue it and wake the runner's selector."""
        self._inbox.put((host, msg))
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe wakes it already
            os.write(self._wake_w, b"!")

    def _read(self) -> list[Delivery]:
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self._wake_r, 65536)
        out: list[Delivery] = []
        while True:
            try:
                host, msg = self._inbox.get_nowait()
            except queue.Empty:
                return out
            if msg == _GONE:  # the link closed: every rank there has ended, as we can tell
                out += [(h.rank, None) for h in self.handles if h.host == host and not h.ended]
                continue
            kind, rank = msg[0], msg[1]
            if kind == "from":
                out.append((rank, ForkingPickler.loads(msg[2])))
            elif kind == "eof":
                out.append((rank, None))
            elif kind == "signalled":
                out.append((rank, Signalled(signal.Signals(msg[2]), msg[3])))

    def _by_host(self, handles: list[Handle]) -> dict[str, list[RemoteHandle]]:
        groups: dict[str, list[RemoteHandle]] = {}
        for handle in self.handles:
            if handle in handles:
                groups.setdefault(handle.host, []).append(handle)
        return groups

    def _measure_end(self) -> list[HostClock]:
        out = []
        for name, agent in self.agents.items():
            offset, rtt = self._start_clocks.get(name, (0.0, 0.0))
            try:
                end, end_rtt = agent.clock(monotonic=True)
            except HostError:
                end, end_rtt = offset, float("inf")
            out.append(HostClock(name, offset, rtt, end, end_rtt))
        return out

    def _fetch(self, handle: RemoteHandle, clock: HostClock | None) -> None:
        """Bring the rank's log and history from its host into the runner's log directory."""
        try:
            log, history = self.agents[handle.host].request("rank-files", self.token, handle.rank)
        except HostError as exc:
            log, history = f"(its log could not be fetched: {exc})\n".encode(), None
        with open(handle.spec.log_path, "ab") as f:
            f.write(log)
        if history is not None:
            shift = widen = 0
            if clock is not None:
                shift = int(clock.offset * 1e9)
                widen = int(clock.uncertainty * 1e9) if clock.uncertainty != float("inf") else 0
            with open(handle.spec.history_path, "wb") as f:
                f.write(rebase(history, shift, widen))

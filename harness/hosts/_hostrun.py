"""On a host: the agent's side of one run — its tag, workdir, processes and network faults.

The agent (:mod:`.agent`) hands these requests here, one reply each (an error is answered as
``("error", text)``, as every agent request is):

- ``("net", action, params)``: ``drop``/``loss``/``shape`` add a fault
  (:class:`._hostnet.HostNet`), ``heal`` removes the run's faults, ``counts`` lists our tables
  and qdiscs in this network namespace; replies a line saying what was done;
- ``("procs", "list")`` / ``("procs", "signal", SIGNAME)``: the run's processes on this host
  (by their environment tag), and signalling them; replies the pids;
- ``("clean",)``: remove what runs with no live agent here left: their processes (SIGKILL, by
  pid), nft tables, our qdiscs (when no live run shapes this namespace) and workdirs.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable
from typing import Any

from . import _hostnet, _hostprocs

__all__ = ["KINDS", "RunOnHost"]

#: The request kinds :meth:`RunOnHost.handle` answers.
KINDS = ("net", "procs", "clean")
_SIGNALS = ("SIGKILL", "SIGSTOP", "SIGCONT", "SIGTERM", "SIGINT")


class RunOnHost:
    """Run ``run`` on host ``host`` (data address ``address``), as this agent sees it."""

    def __init__(self, run: str, host: str, address: str) -> None:
        self.run, self.host = run, host
        self.net = _hostnet.HostNet(run, address)
        self.workdir = _hostprocs.claim(run, host)
        #: More pids of the run here that carry no tag: ranks the agent forks (a fork keeps
        #: the agent's own environment, which ``/proc/PID/environ`` shows).
        self.also: Callable[[], list[int]] = list

    def env(self) -> dict[str, str]:
        """The environment of a process this agent starts: ours plus the run tag."""
        return {**os.environ, **_hostprocs.tagged(self.run, self.host)}

    def handle(self, msg: tuple[Any, ...]) -> Any:
        """Answer one request of :data:`KINDS`."""
        try:
            if msg[0] == "net":
                return self._net(str(msg[1]), dict(msg[2]) if len(msg) > 2 else {})
            if msg[0] == "procs":
                pids = sorted({*_hostprocs.run_pids(self.run, self.host), *self.also()})
                if msg[1] == "list":
                    return pids
                if msg[1] == "signal" and msg[2] in _SIGNALS:
                    return _hostprocs.signal_pids(pids, signal.Signals[msg[2]])
                return ("error", f"procs: unknown action {msg[1:]!r} (list, or signal with one "
                                 f"of {', '.join(_SIGNALS)})")  # fmt: skip
            if msg[0] == "clean":
                return clean()
        except (_hostnet.NetError, OSError) as exc:
            return ("error", f"{msg[0]} {msg[1] if len(msg) > 1 else ''}: {exc}")
        return ("error", f"unknown request {msg[0]!r}")

    def _net(self, action: str, p: dict[str, Any]) -> Any:
        if action == "drop":
            return self.net.drop(list(p["peers"]), list(p["ports"]))
        if action == "loss":
            return self.net.loss(list(p["peers"]), list(p["ports"]), float(p["p"]))
        if action == "shape":
            done = self.net.shape(list(p["peers"]), list(p["ports"]), p.get("bps"),
                                  p.get("delay"), float(p.get("jitter", 0.0)))  # fmt: skip
            # so that `hosts clean` leaves our root qdisc alone while this run is alive
            _hostprocs.note(self.run, self.host, shaping=self.net.shaped)
            return done
        if action == "heal":
            healed = self.net.heal()
            _hostprocs.note(self.run, self.host, shaping=None)
            return healed
        if action == "counts":
            return _hostnet.counts()
        return ("error", f"net: unknown action {action!r} (drop, loss, shape, heal, counts)")

    def teardown(self) -> None:
        """Kill the run's processes here, remove its network faults and workdir (best effort:
        each step runs even when one before it failed, and failures go to stderr)."""
        pids = {*_hostprocs.run_pids(self.run, self.host), *self.also()}
        _hostprocs.signal_pids(sorted(pids), signal.SIGKILL)
        try:
            self.net.heal()
        except _hostnet.NetError as exc:
            print(f"storeharness agent {os.getpid()}: heal failed: {exc}", file=sys.stderr)
        _hostprocs.release(self.run, self.host)


def clean() -> dict[str, list[Any]]:
    """Remove what runs without a live agent on this host left; what was removed.

    Our root qdisc is not named per run: it stays while a live run shapes this namespace.
    """
    stale = _hostprocs.stale_pids()
    killed = _hostprocs.signal_pids(sorted(stale), signal.SIGKILL)
    shaping = _hostprocs.live_runs(shaping_here=True)
    removed = _hostnet.clean_stale(_hostprocs.live_runs(), shaping_live=bool(shaping))
    dirs = []
    for path in _hostprocs.stale_workdirs():
        shutil.rmtree(path, ignore_errors=True)
        dirs.append(str(path))
    return {"processes": killed, **removed, "workdirs": dirs}

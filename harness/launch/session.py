"""The hosts of a test session or a command-line run: a ``--hosts`` value made real.

``netns:N`` builds the namespaces once (:func:`..hosts.netns.build`) and removes them at
:meth:`HostSession.close`; any other value (``local``, ``ssh:h1,h2``, a ``hosts.toml``) names
hosts that exist already.  Agents are connected on first use and kept for the session, so each
world only pays for its ranks.  :attr:`HostSession.unavailable` says why the hosts cannot be had
here (neither root nor unprivileged user namespaces for ``netns:N``, no iproute2, a host
refused), so callers can skip with it.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Sequence
from typing import Any

from ..hosts import netns
from ..hosts.inventory import Host, parse_hosts

__all__ = ["HostSession"]


class HostSession:
    """Hosts from a ``--hosts`` value, built and connected lazily, released by :meth:`close`."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._hosts: list[Host] | None = None
        self._net: netns.NetnsNetwork | None = None
        self._agents: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._probes: dict[str, dict[str, Any]] = {}
        #: The run tag of every agent of the session: their processes carry it, and their
        #: network faults are named after it.
        self.run = secrets.token_hex(6)
        self.unavailable: str | None = None
        if spec.startswith("netns:"):
            self.unavailable = netns.missing()
            if self.unavailable is not None:
                self.unavailable = f"--hosts {spec}: {self.unavailable}"
        if self.unavailable is None:
            try:
                import execnet  # noqa: F401
            except ImportError:
                self.unavailable = (
                    "worlds across hosts need execnet: pip install 'storeharness[multihost]'"
                )

    def hosts(self) -> list[Host]:
        """The hosts (building namespaces on first call).  Raises what building raised."""
        with self._lock:
            if self._hosts is None:
                if self.spec.startswith("netns:"):
                    self._net = netns.build(int(self.spec[6:]))
                    self._hosts = parse_hosts(self.spec, tag=self._net.tag)
                else:
                    self._hosts = parse_hosts(self.spec)
            return list(self._hosts)

    def agent(self, host: Host) -> Any:
        """``host``'s connected agent (connected on first use).  Raises ``HostError``."""
        from ..hosts.control import connect

        with self._lock:
            agent = self._agents.get(host.name)
            if agent is None:
                agent = self._agents[host.name] = connect(host, run=self.run)
            return agent

    def cannot_apply(self, faults: Sequence[Any], hosts: Sequence[Host]) -> str | None:
        """Why one of ``faults`` (host-level ones) cannot run on ``hosts`` — a tool, a
        privilege or a kernel feature missing there — or None.  Probes are made once a host."""
        from .. import faults as F
        from ..hosts import netfaults

        wanted = [f for f in faults if isinstance(f, F.HOST_FAULTS)]
        if not wanted:
            return None
        for host in hosts:
            if host.name not in self._probes:
                self._probes[host.name] = self.agent(host).request("probe")
        probes = {h.name: self._probes[h.name] for h in hosts}
        for fault in wanted:
            why = netfaults.unsupported(fault, probes)
            if why is not None:
                return why
        return None

    def close(self) -> None:
        """Close every agent, and remove the namespaces this session built; idempotent."""
        with self._lock:
            agents, self._agents = list(self._agents.values()), {}
            net, self._net = self._net, None
            self._hosts = None
        for agent in agents:
            with contextlib.suppress(Exception):
                agent.close()
        if net is not None:
            netns.teardown(net.tag)

    def __enter__(self) -> HostSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

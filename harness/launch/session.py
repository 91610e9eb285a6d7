"""The hosts of a test session or a command-line run: a ``--hosts`` value made real.

``netns:N`` builds the namespaces once (:func:`..hosts.netns.build`) and removes them at
:meth:`HostSession.close`; any other value (``local``, ``ssh:h1,h2``, a ``hosts.toml``) names
hosts that exist already.  Agents are connected on first use and kept for the session, so each
world only pays for its ranks.  :attr:`HostSession.unavailable` says why the hosts cannot be had
here (no root for namespaces, no iproute2, a host refused), so callers can skip with it.
"""

from __future__ import annotations

import contextlib
import threading
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
                agent = self._agents[host.name] = connect(host)
            return agent

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

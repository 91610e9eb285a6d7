"""Store servers on a host of a world that spans hosts, started through that host's agent.

- :class:`HostedServerEndpoint`: a TCPStore server — ours (``tcp``, ``tcp-pure``, ``prefix``,
  ``torch-client``) or torch's master (``torch-tcp``, ``ours-on-torch``,
  ``ours-on-torch-legacy``).  The agent (:mod:`..hosts._servers`) binds the host's data-plane
  address and keeps the socket, so kills and restarts serve the same endpoint.
- :class:`HostedEtcdEndpoint`: an etcd member of the run's own (``etcd``, ``torch-etcd``), its
  client and peer URLs on the data address, its data under the agent's workdir.

Ranks on every host connect to that address.  The controller may not reach the data plane at
all (namespaces, a cluster network), so it never opens the store itself: the run's mark is
written by the agent, on the host.  Both are processes the agent owns: they end with the
endpoint, with the agent, and when the agent's lease runs out.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...stores import Store
from ._base import MARK, SETUP_TIMEOUT, Endpoint

if TYPE_CHECKING:
    from .etcd import EtcdTarget
    from .server import ServerTarget

__all__ = ["HostedEtcdEndpoint", "HostedServerEndpoint"]

#: How long the agent may take to start a server (torch's import, etcd's election) and answer.
_START_TIMEOUT = SETUP_TIMEOUT + 10


class _HostedEndpoint(Endpoint):
    """What both hosted endpoints share: a server the agent started (``server_id``) at the
    agent's host's data address, its mark written there, and its stop."""

    def __init__(
        self,
        target: Any,
        agent: Any,
        workdir: Path,
        *,
        timeout: float,
        prefix: str | None = None,
    ) -> None:
        self.agent = agent
        self.address: str = agent.host.address
        self.server_id: int | None = None
        self.port = 0
        self.pid = 0
        super().__init__(target, workdir, timeout=timeout, proxy=False, prefix=prefix)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.spec.name!r}, {self.address}:{self.port} on host "
            f"{self.agent.host.name})"
        )

    def _mark_key(self) -> tuple[str, float]:
        """The run's mark key (under the endpoint's prefix) and how long writing it may take."""
        key = f"{self.namespace}/{MARK}"
        if self.prefix is not None:
            key = f"{self.prefix}/{key}"
        return key, max(self.timeout, SETUP_TIMEOUT)

    def _stop(self) -> None:
        if self.server_id is not None:
            server, self.server_id = self.server_id, None
            # the host may be gone: then its agent's lease ends the server
            with contextlib.suppress(Exception):
                self.agent.request("server-stop", server)


class HostedServerEndpoint(_HostedEndpoint):
    """A server of ``target`` (ours) on ``agent``'s host, at that host's data address."""

    target: ServerTarget

    def _start(self) -> None:
        # only built by ServerTarget.start_on, for a target that names its hosted server
        self.server_id, self.port, self.pid = self.agent.request(
            "server-start", self.address, self.target.hosted, timeout=_START_TIMEOUT
        )

    def _raw(self, address: tuple[str, int] | None, timeout: float) -> Callable[[], Store]:
        host, port = address or (self.address, self.port)
        return functools.partial(self.target.client, host, port, timeout)

    def _mark(self) -> None:
        key, timeout = self._mark_key()
        self.agent.request("server-mark", self.address, self.port, key, self.token, timeout,
                           timeout=timeout + 5)  # fmt: skip

    def kill_server(self) -> str:
        pid = self.agent.request("server-kill", self.server_id)
        return (
            f"server (pid {pid} on host {self.agent.host.name}) killed with SIGKILL; "
            f"port {self.port} stays bound"
        )

    def restart_server(self) -> str:
        self.pid = self.agent.request("server-restart", self.server_id, timeout=_START_TIMEOUT)
        self._mark()
        return (
            f"server restarted (pid {self.pid} on host {self.agent.host.name}) on the same "
            f"port {self.port}"
        )


class HostedEtcdEndpoint(_HostedEndpoint):
    """An etcd member of this run's own on ``agent``'s host, at that host's data address; the
    run's keys live under a root of its own (as on one machine), and go with the member.
    ``port`` is etcd's client port: what host-level network faults match."""

    target: EtcdTarget

    def __init__(
        self,
        target: EtcdTarget,
        agent: Any,
        workdir: Path,
        *,
        timeout: float,
        prefix: str | None = None,
    ) -> None:
        self.root = f"storeharness-run/{uuid.uuid4().hex}"
        super().__init__(target, agent, workdir, timeout=timeout, prefix=prefix)

    def _start(self) -> None:
        self.server_id, self.port, self.pid = self.agent.request(
            "server-etcd", self.address, self.target.v2, timeout=_START_TIMEOUT
        )

    def _raw(self, address: tuple[str, int] | None, timeout: float) -> Callable[[], Store]:
        host, port = address or (self.address, self.port)
        return self.target.client(f"{host}:{port}", self.root, timeout)

    def _mark(self) -> None:
        key, timeout = self._mark_key()
        self.agent.request("server-etcd-mark", self.server_id, self.root, key, self.token,
                           self.target.v2, timeout, timeout=timeout + 5)  # fmt: skip

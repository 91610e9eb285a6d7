"""Our TCPStore server on a host of a world that spans hosts, started through that host's agent.

The agent (:mod:`..hosts._servers`) binds the host's data-plane address and keeps the socket,
so kills and restarts serve the same endpoint; ranks on every host connect to that address.
The controller may not reach the data plane at all (namespaces, a cluster network), so it never
opens the store itself: the run's mark is written by the agent, on the host.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...stores import Store
from ._base import MARK, SETUP_TIMEOUT, Endpoint

if TYPE_CHECKING:
    from .server import ServerTarget

__all__ = ["HostedServerEndpoint"]


class HostedServerEndpoint(Endpoint):
    """A server of ``target`` (ours) on ``agent``'s host, at that host's data address."""

    target: ServerTarget

    def __init__(
        self,
        target: ServerTarget,
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
            f"HostedServerEndpoint({self.spec.name!r}, {self.address}:{self.port} on host "
            f"{self.agent.host.name})"
        )

    def _start(self) -> None:
        accelerate = self.target.hosted or "auto"
        self.server_id, self.port, self.pid = self.agent.request(
            "server-start", self.address, accelerate
        )

    def _raw(self, address: tuple[str, int] | None, timeout: float) -> Callable[[], Store]:
        host, port = address or (self.address, self.port)
        return functools.partial(self.target.client, host, port, timeout)

    def _mark(self) -> None:
        key = f"{self.namespace}/{MARK}"
        if self.prefix is not None:
            key = f"{self.prefix}/{key}"
        timeout = max(self.timeout, SETUP_TIMEOUT)
        self.agent.request("server-mark", self.address, self.port, key, self.token, timeout,
                           timeout=timeout + 5)  # fmt: skip

    def kill_server(self) -> str:
        pid = self.agent.request("server-kill", self.server_id)
        return (
            f"server (pid {pid} on host {self.agent.host.name}) killed with SIGKILL; "
            f"port {self.port} stays bound"
        )

    def restart_server(self) -> str:
        self.pid = self.agent.request("server-restart", self.server_id)
        self._mark()
        return (
            f"server restarted (pid {self.pid} on host {self.agent.host.name}) on the same "
            f"port {self.port}"
        )

    def _stop(self) -> None:
        if self.server_id is not None:
            server, self.server_id = self.server_id, None
            # the host may be gone: then its agent's lease ends the server
            with contextlib.suppress(Exception):
                self.agent.request("server-stop", server)

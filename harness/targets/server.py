"""Targets with a server process: our TCPStore server (or torch's) on a socket the endpoint bound.

The endpoint binds port 0 once and keeps the socket, so a killed server's port stays bound and a
restarted server serves the very same endpoint; the server itself runs in a process of its own
(forked ranks must not share it, and a fault can SIGKILL it).  Our server's process is forked
from a pre-imported template (:mod:`.forkserver`), so a case does not pay for an interpreter's
start-up and imports.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ...stores import Capability, Store, TCPStore
from ...stores._process import Child
from ...stores.conformance import Backend
from ...stores.tcp import bind_listener
from .._parties import process_parties
from ._base import Endpoint, Target, TargetSpec
from .forkserver import forked_server

__all__ = [
    "LOOPBACK",
    "TCP_CAPABILITIES",
    "ServerEndpoint",
    "ServerTarget",
    "loopback_listener",
    "our_tcp_client",
    "tcp_targets",
]

#: Where every server the harness starts listens: ranks, the proxy and the conformance suite
#: all run on this machine, so nothing the harness serves is reachable from the network.
LOOPBACK = "127.0.0.1"

TCP_CAPABILITIES = frozenset(
    {Capability.CROSS_PROCESS, Capability.QUEUES, Capability.LIST_KEYS, Capability.CAS_WAKES}
)

#: Our client and server negotiate error replies, so a bad ``add`` keeps the connection.
OUR_TCP_CAPABILITIES = TCP_CAPABILITIES | {Capability.ADD_ERRORS}


def loopback_listener() -> socket.socket:
    """A listening socket on an ephemeral loopback port (see :data:`LOOPBACK`)."""
    return bind_listener(0, host=LOOPBACK)


class ServerChild(Child, Protocol):
    """A server's process: a ``subprocess.Popen``, or one the fork server made."""

    @property
    def pid(self) -> int: ...
    def kill(self) -> None: ...


class Server(Protocol):
    """A store server in a child process; ``stop()`` also tidies up after a killed one."""

    @property
    def proc(self) -> ServerChild: ...

    def stop(self) -> None: ...


#: ``serve(sock)`` starts a server on a listening socket it takes over (and closes here).
Serve = Callable[[socket.socket], Server]
#: ``client(host, port, timeout)`` opens a client handle; picklable as a ``partial``.
Client = Callable[[str, int, float], Store]
#: ``fresh()`` → a new, empty store with its own in-process server (for the conformance suite);
#: ``peer(store)`` → how another party opens a handle on that store.
Fresh = Callable[[], Store]
Peer = Callable[[Store], Callable[[], Store]]


class ServerTarget(Target):
    """A store served over TCP by a server process the endpoint owns."""

    def __init__(
        self,
        spec: TargetSpec,
        serve: Serve,
        client: Client,
        conformance: tuple[Fresh, Peer] | None = None,
        unavailable: Callable[[], str | None] = lambda: None,
        hosted: str | None = None,
    ) -> None:
        """``hosted``: the server a host's agent runs when a world spans hosts — our
        standalone server's ``--accelerate`` (``auto``, ``no``), or ``torch`` / ``torch-legacy``
        for torch's master (``None``: it cannot be started on a host)."""
        self.spec, self.serve, self.client = spec, serve, client
        self.hosted = hosted
        self._conformance = conformance
        self._unavailable = unavailable

    def unavailable(self) -> str | None:
        return self._unavailable()

    def start(
        self, workdir: Path, *, timeout: float, proxy: bool = False, prefix: str | None = None
    ) -> Endpoint:
        return ServerEndpoint(self, workdir, timeout=timeout, proxy=proxy, prefix=prefix)

    def start_on(
        self, agent: Any, workdir: Path, *, timeout: float, prefix: str | None = None
    ) -> Endpoint:
        if self.hosted is None:
            return super().start_on(agent, workdir, timeout=timeout, prefix=prefix)
        from .hosted import HostedServerEndpoint

        return HostedServerEndpoint(self, agent, workdir, timeout=timeout, prefix=prefix)

    def backend(self, workdir: Path) -> Backend:
        if self._conformance is None:
            return super().backend(workdir)
        fresh, peer = self._conformance
        return Backend(
            self.spec.name,
            fresh,
            peer,
            process_parties,
            lacks=frozenset(Capability) - self.spec.capabilities,
        )


class ServerEndpoint(Endpoint):
    target: ServerTarget
    sock: socket.socket | None = None
    server: Server | None = None

    @property
    def port(self) -> int:
        assert self.sock is not None, "the endpoint is closed"
        port: int = self.sock.getsockname()[1]
        return port

    def __repr__(self) -> str:
        return f"ServerEndpoint({self.spec.name!r}, port={self.port if self.sock else None})"

    def _start(self) -> None:
        # Bound once, here, and kept: a restarted server takes over the same socket.
        self.sock = loopback_listener()
        self._serve()

    def _serve(self) -> None:
        assert self.sock is not None
        self.server = self.target.serve(self.sock.dup())

    def _raw(self, address: tuple[str, int] | None, timeout: float) -> Callable[[], Store]:
        host, port = address or (LOOPBACK, self.port)
        return functools.partial(self.target.client, host, port, timeout)

    def _upstream(self) -> tuple[str, int]:
        return LOOPBACK, self.port

    def kill_server(self) -> str:
        if self.server is None:
            raise ValueError(f"store {self.spec.name!r}: its server is not running")
        server, self.server = self.server, None
        server.proc.kill()
        server.proc.wait(10)
        server.stop()  # closes our end of its pipes
        return f"server (pid {server.proc.pid}) killed with SIGKILL; port {self.port} stays bound"

    def restart_server(self) -> str:
        if self.server is not None:
            self.kill_server()
        self._serve()
        self._mark()
        assert self.server is not None
        return f"server restarted (pid {self.server.proc.pid}) on the same port {self.port}"

    def inherited_fds(self) -> list[int]:
        return [self.sock.fileno()] if self.sock is not None else []

    def _stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# ------------------------------------------------------------------------ our TCPStore


def our_tcp_client(host: str, port: int, timeout: float, accelerate: bool | None = None) -> Store:
    """Our TCPStore client (no world-size handshake)."""
    return TCPStore(host, port, timeout=timeout, accelerate=accelerate)


def _our_master(accelerate: bool | None) -> Store:
    # A master would listen on every interface (torch's behaviour): hand it a loopback socket.
    sock = loopback_listener()
    port = sock.getsockname()[1]
    return TCPStore(LOOPBACK, port, is_master=True, timeout=60, accelerate=accelerate,
                    master_listen_fd=sock.detach())  # fmt: skip


def _our_peer(accelerate: bool | None, store: Store) -> Callable[[], Store]:
    assert isinstance(store, TCPStore)
    return functools.partial(our_tcp_client, LOOPBACK, store.port, 60.0, accelerate)


def tcp_targets() -> list[ServerTarget]:
    """Our server and client, with the C speedups where built (``tcp``) and without them."""
    kinds = (
        ("tcp", None, "our TCPStore server in its own process, our client"),
        ("tcp-pure", False, "our TCPStore server and client in pure Python (no C speedups)"),
    )
    return [
        ServerTarget(
            TargetSpec(name, help, ("process", "thread"), OUR_TCP_CAPABILITIES, server=True,
                       network=True, spans_hosts=True),
            functools.partial(forked_server, accelerate=accelerate),
            functools.partial(our_tcp_client, accelerate=accelerate),
            (functools.partial(_our_master, accelerate), functools.partial(_our_peer, accelerate)),
            hosted="auto" if accelerate is None else "no",
        )
        for name, accelerate, help in kinds
    ]  # fmt: skip

"""A c10d TCPStore server someone else runs: ``--store tcp://HOST:PORT`` (ours or torch's).

The harness owns no server here, so faults that kill or restart one are skipped with that
reason; the fault proxy still works (it runs here, in front of the server).  Every run still gets
its own key namespace (with its mark), so runs sharing the server do not see each other's keys.
"""

from __future__ import annotations

import functools
import socket
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from ...stores import Store
from ._base import Endpoint, Target, TargetSpec
from .server import TCP_CAPABILITIES, our_tcp_client

__all__ = ["RemoteTarget", "parse_address"]

#: How long the up-front probe of a running server may take.
_PROBE_TIMEOUT = 5.0


def parse_address(url: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` (``[v6]:PORT`` too) → ``(host, port)``; ``ValueError`` otherwise."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ValueError(
            f"--store {url!r}: a running server is given as tcp://HOST:PORT, "
            "e.g. tcp://127.0.0.1:29500"
        )
    return parts.hostname, port


class RemoteTarget(Target):
    """Our TCPStore client against a running server at ``url``."""

    def __init__(self, url: str) -> None:
        self.address = parse_address(url)
        self.spec = TargetSpec(
            url,
            f"the TCPStore server already running at {self.address[0]}:{self.address[1]}",
            ("process", "thread"),
            TCP_CAPABILITIES,
            server=False,  # not ours to kill or restart
            network=True,
            kind="remote",
        )

    def unavailable(self) -> str | None:
        """Refused at once when nothing listens there (rather than every case waiting it out)."""
        try:
            socket.create_connection(self.address, timeout=_PROBE_TIMEOUT).close()
        except OSError as exc:
            host, port = self.address
            return (
                f"cannot connect to the TCPStore server at {host}:{port} "
                f"({exc.strerror or exc}); start it first, or check the address"
            )
        return None

    def start(
        self, workdir: Path, *, timeout: float, proxy: bool = False, prefix: str | None = None
    ) -> Endpoint:
        return RemoteEndpoint(self, workdir, timeout=timeout, proxy=proxy, prefix=prefix)


class RemoteEndpoint(Endpoint):
    target: RemoteTarget

    def _raw(self, address: tuple[str, int] | None, timeout: float) -> Callable[[], Store]:
        host, port = address or self.target.address
        return functools.partial(our_tcp_client, host, port, timeout)

    def _upstream(self) -> tuple[str, int]:
        return self.target.address

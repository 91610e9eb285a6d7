"""The agent's side of a store server for a world that spans hosts.

The agent binds a listening socket on its host's data-plane address (port 0) and keeps it, then
runs our standalone TCPStore server on it (``python -m storeharness.stores.tcp --listen-fd``): the
port is bound before the server starts, so no client races the server's start, and a killed
server's port stays bound for the restart (as :mod:`..targets.server` does on one machine).
The controller cannot reach the data plane (namespaces, a cluster's own network), so the run's
mark is written from here.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from typing import Any

from ...stores.tcp import TCPStore, bind_listener

__all__ = ["ServerHost"]

_STOP_TIMEOUT = 5.0


class _Served:
    def __init__(self, sock: Any, accelerate: str) -> None:
        self.sock, self.accelerate = sock, accelerate
        self.proc: subprocess.Popen[bytes] | None = None


class ServerHost:
    """The store servers this agent runs, by id; ``spawn`` starts processes the agent owns."""

    def __init__(self, spawn: Any) -> None:
        self._spawn = spawn
        self.served: dict[int, _Served] = {}
        self._next = 0

    def start(self, address: str, accelerate: str) -> tuple[int, int, int]:
        """Serve on ``address`` (a free port); ``(server id, port, pid)``."""
        sock = bind_listener(0, host=address)
        served = _Served(sock, accelerate)
        self._next += 1
        self.served[self._next] = served
        self._run(served)
        assert served.proc is not None
        return self._next, int(sock.getsockname()[1]), served.proc.pid

    def _run(self, served: _Served) -> None:
        fd = served.sock.fileno()
        argv = [sys.executable, "-m", "storeharness.stores.tcp", "--listen-fd", str(fd),
                "--accelerate", served.accelerate]  # fmt: skip
        # It serves until its stdin closes: a pipe from us, so it also ends with this agent.
        served.proc = self._spawn(argv, pass_fds=(fd,), stdin=subprocess.PIPE)

    def kill(self, server: int) -> int:
        """SIGKILL the server (its port stays bound); its pid."""
        served = self.served[server]
        assert served.proc is not None
        served.proc.send_signal(signal.SIGKILL)
        served.proc.wait(_STOP_TIMEOUT)
        return served.proc.pid

    def restart(self, server: int) -> int:
        """Start the server again on the same socket; its new pid."""
        served = self.served[server]
        if served.proc is not None and served.proc.poll() is None:
            self.kill(server)
        self._run(served)
        assert served.proc is not None
        return served.proc.pid

    def mark(self, address: str, port: int, key: str, value: str, timeout: float) -> bool:
        """Write the run's mark (``key = value``) through a client on this host."""
        with TCPStore(address, port, timeout=timeout) as store:
            store.set(key, value)
        return True

    def stop(self, server: int) -> bool:
        served = self.served.pop(server)
        if served.proc is not None and served.proc.poll() is None:
            served.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                served.proc.wait(_STOP_TIMEOUT)
        served.sock.close()
        return True

    def close(self) -> None:
        for server in list(self.served):
            self.stop(server)

"""The agent's side of a store server for a world that spans hosts.

Two kinds of server, each a process the agent owns (its run tag in the environment, killed with
the agent and when its lease runs out, by :meth:`ServerHost.close` at teardown):

- **A TCPStore server** (``start``): the agent binds a listening socket on its host's data-plane
  address (port 0) and keeps it, then runs our standalone server on it (``python -m
  storeharness.stores.tcp --listen-fd``) or torch's TCPStore master (libuv or legacy), forked
  from a template that imported torch once (:class:`~..targets.forkserver.ForkServer`, itself
  a process the agent owns; its forks carry the run tag and stop when the agent's end of their
  stdin closes), or where that cannot run a fresh interpreter
  (:data:`~..targets.torch.TORCH_SERVER`).  The port is bound before the server starts, so no
  client races the server's start, and a killed server's port stays bound for the restart (as
  :mod:`..targets.server` does on one machine).
- **An etcd member** (``etcd``): one member whose client and peer URLs are on the data address,
  its data dir under the agent's workdir (removed when it stops), v2 API enabled for torch's
  store (:class:`~..targets._etcd_server.EtcdCluster`, given the agent's way to start a process).

The controller cannot reach the data plane (namespaces, a cluster's own network), so the run's
mark is written from here.
"""

from __future__ import annotations

import contextlib
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ...stores import StoreError
from ...stores.tcp import TCPStore, bind_listener

__all__ = ["ServerHost"]

_STOP_TIMEOUT = 5.0
#: How long torch's master may take to import torch and start serving (a loaded machine).
_READY_TIMEOUT = 60.0
#: ``server`` values that run torch's master instead of ours (the rest are our ``--accelerate``).
_TORCH = {"torch": "libuv", "torch-legacy": "legacy"}


class _Served:
    def __init__(self, sock: Any, server: str) -> None:
        self.sock, self.server = sock, server
        self.proc: Any = None  # a subprocess.Popen, or a ForkedProcess of the torch template


class ServerHost:
    """The store servers this agent runs, by id; ``spawn`` starts processes the agent owns
    (``_Owned.popen``), ``workdir`` is where etcd keeps its data."""

    def __init__(self, spawn: Any, workdir: str | Path = "") -> None:
        self._spawn = spawn
        self.workdir = Path(workdir) if workdir else None
        self.served: dict[int, _Served] = {}
        self.etcds: dict[int, Any] = {}  # id -> EtcdCluster
        self._torch: Any = None  # the torch template (a ForkServer), once one is asked for
        self._next = 0

    # ------------------------------------------------------------------ TCPStore servers

    def start(self, address: str, server: str) -> tuple[int, int, int]:
        """Serve on ``address`` (a free port); ``(server id, port, pid)``.

        ``server``: ``torch`` or ``torch-legacy`` for torch's master, else our server's
        ``--accelerate`` (``auto``, ``yes``, ``no``).
        """
        sock = bind_listener(0, host=address)
        served = _Served(sock, server)
        try:
            self._run(served)
        except BaseException:
            sock.close()
            raise
        self._next += 1
        self.served[self._next] = served
        assert served.proc is not None
        return self._next, int(sock.getsockname()[1]), served.proc.pid

    def _run(self, served: _Served) -> None:
        fd = served.sock.fileno()
        if served.server in _TORCH:
            self._run_torch(served, fd)
            return
        argv = [sys.executable, "-m", "storeharness.stores.tcp", "--listen-fd", str(fd),
                "--accelerate", served.server]  # fmt: skip
        # It serves until its stdin closes: a pipe from us, so it also ends with this agent.
        served.proc = self._spawn(argv, pass_fds=(fd,), stdin=subprocess.PIPE)

    def _run_torch(self, served: _Served, fd: int) -> None:
        """torch's master on the kept socket: forked from the torch template where that works
        here, else in a fresh interpreter (which pays torch's import every time)."""
        from ..targets import forkserver

        if not forkserver.available():
            self._run_torch_fresh(served, fd)
            return
        if self._torch is None:
            self._torch = forkserver.ForkServer("torch", popen=self._spawn)
        try:
            served.proc = self._torch.spawn(
                served.sock.dup(), use_libuv=_TORCH[served.server] == "libuv"
            )
        except forkserver.ForkServerError as exc:
            address, port = served.sock.getsockname()[:2]
            raise StoreError(
                f"torch's TCPStore server ({_TORCH[served.server]}) on {address}:{port} did not "
                f"start: {exc}; is torch installed for {sys.executable}? (its stderr is the "
                "agent's)"
            ) from exc

    def _run_torch_fresh(self, served: _Served, fd: int) -> None:
        """torch's master in a fresh interpreter; returns once it serves."""
        from ..targets.torch import TORCH_SERVER

        address, port = served.sock.getsockname()[:2]
        argv = [sys.executable, "-c", TORCH_SERVER, str(port), str(fd), _TORCH[served.server],
                address]  # fmt: skip
        proc = served.proc = self._spawn(
            argv, pass_fds=(fd,), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + _READY_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                break
            chunk = proc.stdout.read1(64)
            if not chunk:
                break
            line += chunk
        proc.stdout.close()
        if line.strip() != b"ready":
            proc.kill()
            code = proc.wait(_STOP_TIMEOUT)
            raise StoreError(
                f"torch's TCPStore server ({_TORCH[served.server]}) on {address}:{port} did not "
                f"start within {_READY_TIMEOUT:g} s (exit {code}, said {line[-200:]!r}); is "
                f"torch installed for {sys.executable}? (its stderr is the agent's)"
            )

    def kill(self, server: int) -> int:
        """SIGKILL the server (its port stays bound); its pid."""
        served = self.served[server]
        assert served.proc is not None
        served.proc.send_signal(signal.SIGKILL)
        served.proc.wait(_STOP_TIMEOUT)
        _close_stdin(served.proc)
        return int(served.proc.pid)

    def restart(self, server: int) -> int:
        """Start the server again on the same socket; its new pid."""
        served = self.served[server]
        if served.proc is not None and served.proc.poll() is None:
            self.kill(server)
        self._run(served)
        assert served.proc is not None
        return int(served.proc.pid)

    def mark(self, address: str, port: int, key: str, value: str, timeout: float) -> bool:
        """Write the run's mark (``key = value``) through a client on this host (ours: it
        speaks torch's wire protocol too, so torch's master takes it)."""
        with TCPStore(address, port, timeout=timeout) as store:
            store.set(key, value)
        return True

    # ------------------------------------------------------------------ etcd

    def etcd(self, address: str, enable_v2: bool) -> tuple[int, int, int]:
        """Start a single etcd member on ``address``; ``(server id, client port, pid)``."""
        from ..targets._etcd_server import EtcdCluster

        if self.workdir is None:
            raise StoreError("this agent has no workdir to keep etcd's data in")
        self._next += 1
        where = self.workdir / f"etcd-{self._next}"
        cluster = EtcdCluster(where, enable_v2=enable_v2, host=address, popen=self._spawn)
        self.etcds[self._next] = cluster
        member = cluster.members[0]
        assert member.proc is not None
        return self._next, member.client_port, member.proc.pid

    def etcd_mark(
        self, server: int, root: str, key: str, value: str, v2: bool, timeout: float
    ) -> bool:
        """Write the run's mark under ``root``: through etcd's JSON gateway for our EtcdStore
        (no gRPC in this process, which forks ranks), through torch's store for its v2 keys."""
        endpoint = self.etcds[server].members[0].endpoint
        if v2:
            from ..targets.etcd import torch_etcd_store

            with torch_etcd_store(endpoint, root, timeout) as store:
                store.set(key, value)
            return True
        from ..targets.etcd import put_under

        put_under(endpoint, root, key, value)
        return True

    # ------------------------------------------------------------------ teardown

    def stop(self, server: int) -> bool:
        cluster = self.etcds.pop(server, None)
        if cluster is not None:
            cluster.close()
            shutil.rmtree(cluster.workdir, ignore_errors=True)
            return True
        served = self.served.pop(server)
        if served.proc is not None:
            if served.proc.poll() is None:
                served.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    served.proc.wait(_STOP_TIMEOUT)
            _close_stdin(served.proc)
        served.sock.close()
        return True

    def close(self) -> None:
        """Stop every server (each one, even when stopping another failed), then the template."""
        for server in [*self.served, *self.etcds]:
            try:
                self.stop(server)
            except Exception as exc:  # the agent's teardown goes on: its pids are killed next
                print(f"storeharness agent: stopping server {server} failed: {exc!r}",
                      file=sys.stderr)  # fmt: skip
        if self._torch is not None:
            self._torch.close()
            self._torch = None


def _close_stdin(proc: Any) -> None:
    """Close our end of a server's stdin (its "serve until this closes" pipe)."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()

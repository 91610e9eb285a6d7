"""The stores a world can run against, and the live endpoint that serves one for one run.

An :class:`Endpoint` is set up by the runner's process and torn down by it: a TCP server in a
process of its own on a socket the endpoint bound (kept open across a server kill, so a restart
serves the very same endpoint), a file under the run's own temporary directory, or an in-memory
store for thread ranks.  Every run gets its own key namespace, and a rank that reaches a store
that is not its run's fails at once, naming what it found.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ..stores import Capability, FileStore, HashStore, PrefixStore, Store, StoreError, TCPStore
from ..stores._process import stop_process
from ..stores.tcp import ServerProcess, bind_listener
from . import faults as F
from .proxy import ProxyProcess

__all__ = ["DEFAULT_TARGETS", "TARGETS", "Endpoint", "TargetSpec", "open_checked"]

MARK = "storeharness/endpoint"

_C = Capability


@dataclass(frozen=True)
class TargetSpec:
    """What a target is and what it can take (known without starting or importing anything)."""

    name: str
    help: str
    workers: tuple[str, ...]
    capabilities: frozenset[Capability]
    server: bool = False  # a server process that faults can kill and restart
    network: bool = False  # ranks can reach it through the fault proxy
    torch: bool = False

    def lacks(self, needs: frozenset[Capability]) -> frozenset[Capability]:
        return needs - self.capabilities


_TCP_CAPS = frozenset({_C.CROSS_PROCESS, _C.QUEUES, _C.LIST_KEYS, _C.CAS_WAKES})
TARGETS: dict[str, TargetSpec] = {
    t.name: t
    for t in (
        TargetSpec("hash", "our HashStore (in memory; thread ranks)", ("thread",),
                   HashStore.capabilities),
        TargetSpec("file", "our FileStore in the run's temporary directory",
                   ("process", "thread"), FileStore.capabilities),
        TargetSpec("tcp", "our TCPStore server in its own process, our client",
                   ("process", "thread"), _TCP_CAPS, server=True, network=True),
        TargetSpec("prefix", "a PrefixStore over our TCPStore", ("process", "thread"),
                   _TCP_CAPS, server=True, network=True),
        TargetSpec("torch-tcp", "torch's libuv TCPStore server and client (needs torch)",
                   ("process", "thread"), _TCP_CAPS,
                   server=True, network=True, torch=True),
        TargetSpec("torch-file", "torch's FileStore (needs torch)", ("process", "thread"),
                   frozenset({_C.CROSS_PROCESS, _C.LIST_KEYS, _C.ADD_ERRORS, _C.CAS_WAKES}),
                   torch=True),
        TargetSpec("torch-hash", "torch's HashStore (needs torch; thread ranks)", ("thread",),
                   frozenset({_C.QUEUES, _C.LIST_KEYS, _C.ADD_ERRORS, _C.CAS_WAKES}),
                   torch=True),
    )
}  # fmt: skip
#: What runs when nothing is asked for: our own stores.
DEFAULT_TARGETS = ("hash", "file", "tcp", "prefix")


def torch_missing() -> str | None:
    """Why torch targets cannot run here, or ``None``."""
    try:
        import torch.distributed  # noqa: F401
    except ImportError:
        return "torch is not installed (pip install 'storeharness[torch]')"
    return None


# ------------------------------------------------------------------ openers (picklable)


def open_checked(raw: Callable[[], Store], token: str, namespace: str) -> Store:
    """Open the raw store, prove it is this run's, and return this run's namespace in it.

    Raises :class:`StoreError` when the store answers but is not the one the run set up.
    """
    store = raw()
    try:
        found = store.get(MARK) if store.check([MARK]) else None
    except BaseException:
        store.close()
        raise
    if found != token.encode():
        store.close()
        what = "has no endpoint mark" if found is None else f"belongs to run {found.decode()!r}"
        raise StoreError(
            f"{store!r} is not the store this run set up: it {what}, this run is {token!r} "
            "(a stale address, or a port another run reused?)"
        )
    return PrefixStore(namespace, store, _owns_store=True)


def _tcp_client(port: int, timeout: float) -> Store:
    return TCPStore("127.0.0.1", port, timeout=timeout)


def _prefixed_tcp_client(port: int, timeout: float) -> Store:
    return PrefixStore("user", TCPStore("127.0.0.1", port, timeout=timeout), _owns_store=True)


def _torch_tcp_client(port: int, timeout: float) -> Store:
    from ..stores.torch_adapter import torch_tcp_client

    return torch_tcp_client("127.0.0.1", port, timeout)


def _torch_file(path: str, timeout: float) -> Store:
    from datetime import timedelta

    from ..stores.torch_adapter import TorchStore, dist

    def reopen() -> Any:
        store = dist.FileStore(path, -1)
        store.set_timeout(timedelta(seconds=timeout))
        return store

    return TorchStore(reopen(), reopen=reopen)


_TORCH_SERVER = """
import sys, datetime, torch.distributed as dist
store = dist.TCPStore("127.0.0.1", int(sys.argv[1]), None, True,
                      datetime.timedelta(seconds=3600), wait_for_workers=False,
                      master_listen_fd=int(sys.argv[2]), use_libuv=True)
print("ready", flush=True)
sys.stdin.read()
"""


class _TorchServer:
    """torch's libuv TCPStore master in a process of its own, on a socket we bound."""

    def __init__(self, sock: socket.socket) -> None:
        self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TORCH_SERVER, str(self.port), str(sock.fileno())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=[sock.fileno()],
            text=True,
        )
        sock.close()
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.stop()
            raise StoreError(f"torch's TCPStore server on port {self.port} failed to start")

    def stop(self) -> None:
        stop_process(self.proc)


# ------------------------------------------------------------------------------ endpoint


class Endpoint:
    """A live store of target ``name`` for one run, with the controls its faults act on.

    ``workdir`` must be the run's own (temporary) directory; ``proxy=True`` puts the fault
    proxy between ranks and the server.  Raises ``ValueError`` for an unknown target and
    :class:`StoreError` when its server cannot start.
    """

    def __init__(self, name: str, workdir: str, *, timeout: float, proxy: bool = False) -> None:
        if name not in TARGETS:
            raise ValueError(f"unknown store {name!r}; choose from {', '.join(TARGETS)}")
        self.spec = TARGETS[name]
        if proxy and not self.spec.network:
            raise ValueError(f"network faults need a TCP target, not {name!r}")
        self.name, self.workdir, self.timeout = name, workdir, timeout
        os.makedirs(workdir, exist_ok=True)
        self.token = uuid.uuid4().hex
        self.namespace = f"run-{self.token[:8]}"
        self.sock: socket.socket | None = None
        self.server: ServerProcess | _TorchServer | None = None
        self.proxy: ProxyProcess | None = None
        self._local: Store | None = None  # the in-process store of hash/file targets
        try:
            self._start(proxy)
            self._mark()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, port={self.port})"

    @property
    def port(self) -> int | None:
        return None if self.sock is None else self.sock.getsockname()[1]

    def _start(self, proxy: bool) -> None:
        if self.spec.torch and (why := torch_missing()):
            raise StoreError(f"store {self.name!r} needs torch: {why}")
        if self.spec.server:
            # Bound once, here, and kept: a restarted server takes over the same socket.
            self.sock = bind_listener(0)
            self._serve()
            if proxy:
                self.proxy = ProxyProcess("127.0.0.1", self.sock.getsockname()[1])
        elif self.name == "hash":
            self._local = HashStore(timeout=self.timeout)
        elif self.name == "torch-hash":
            from ..stores.torch_adapter import TorchStore, dist

            self._local = TorchStore(dist.HashStore())
        elif self.name == "file":
            self._local = FileStore(os.path.join(self.workdir, "store"), timeout=self.timeout)
        elif self.name == "torch-file":
            self._local = _torch_file(os.path.join(self.workdir, "store"), self.timeout)

    def _serve(self) -> None:
        assert self.sock is not None
        if self.name == "torch-tcp":
            self.server = _TorchServer(self.sock.dup())
        else:
            self.server = ServerProcess(self.sock.dup())

    def _raw(self, port: int | None = None) -> Callable[[], Store]:
        """How to open the store under test, without the namespace; ``port`` overrides."""
        port = port or self.port or 0
        if self.name == "tcp":
            return functools.partial(_tcp_client, port, self.timeout)
        if self.name == "prefix":
            return functools.partial(_prefixed_tcp_client, port, self.timeout)
        if self.name == "torch-tcp":
            return functools.partial(_torch_tcp_client, port, self.timeout)
        if self.name == "file":
            return functools.partial(
                FileStore, os.path.join(self.workdir, "store"), -1, self.timeout
            )
        if self.name == "torch-file":
            return functools.partial(_torch_file, os.path.join(self.workdir, "store"), self.timeout)
        local = self._local
        assert local is not None
        if self.name == "torch-hash":
            from ..stores.torch_adapter import TorchStore

            return functools.partial(TorchStore, local.torch_store)  # type: ignore[attr-defined]
        return local.clone

    def _mark(self) -> None:
        with self._raw()() as store:
            store.set(MARK, self.token)

    def opener(self) -> Callable[[], Store]:
        """What each rank calls to open its store (picklable for cross-process targets)."""
        port = self.proxy.port if self.proxy is not None else None
        return functools.partial(open_checked, self._raw(port), self.token, self.namespace)

    # ------------------------------------------------------------------- fault controls

    def kill_server(self) -> str:
        if not self.spec.server or self.server is None:
            raise ValueError(f"store {self.name!r} has no server to kill")
        proc = self.server.proc
        proc.kill()
        proc.wait(10)
        if isinstance(self.server, ServerProcess) and proc.stdin is not None:
            proc.stdin.close()
        self.server = None
        return f"server (pid {proc.pid}) killed with SIGKILL; port {self.port} stays bound"

    def restart_server(self) -> str:
        if not self.spec.server:
            raise ValueError(f"store {self.name!r} has no server to restart")
        if self.server is not None:
            self.kill_server()
        self._serve()
        self._mark()
        assert self.server is not None
        return f"server restarted (pid {self.server.proc.pid}) on the same port {self.port}"

    def network(self, fault: F.Fault) -> str:
        if self.proxy is None:
            raise ValueError(f"{fault}: this run has no proxy (network faults need a TCP store)")
        if isinstance(fault, F.Delay):
            self.proxy.command(f"delay {fault.seconds}")
            return f"network: delay {fault.seconds:g} s"
        if isinstance(fault, F.Drop):
            dropped = self.proxy.command("drop").split()[1]
            return f"network: {dropped} connection(s) reset"
        if isinstance(fault, F.Blackhole):
            self.proxy.command("blackhole")
            return "network: black hole (traffic swallowed)"
        self.proxy.command("heal")
        return "network: healed"

    def inherited_fds(self) -> list[int]:
        """The endpoint's fds that forked ranks must close (the listening socket)."""
        return [self.sock.fileno()] if self.sock is not None else []

    # -------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Stop the proxy and the server, close the listener and the local store."""
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self._local is not None:
            self._local.close()
            self._local = None

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

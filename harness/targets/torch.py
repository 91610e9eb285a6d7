"""torch's own stores as targets, and the interop pairings of torch's client and server with ours.

Nothing here imports torch until a target starts: ``unavailable()`` says why a torch target
cannot run (torch not installed) without importing more than ``torch.distributed``'s finder.
"""

from __future__ import annotations

import functools
import importlib.util
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from ...stores import Capability, Store, StoreError, TCPStore
from ...stores._process import stop_process
from ...stores.tcp import ServerProcess
from ._base import TargetSpec
from .forkserver import ForkedTorchServer, available, forked_server
from .local import LocalTarget
from .server import LOOPBACK, TCP_CAPABILITIES, ServerTarget, loopback_listener, our_tcp_client

__all__ = ["TORCH_SERVER", "TorchClient", "torch_missing", "torch_targets"]

_C = Capability


def torch_missing() -> str | None:
    """Why torch targets cannot run here, or ``None``."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install 'storeharness[torch]')"
    return None


#: torch's TCPStore master as a script: ``PORT FD libuv|legacy [HOST]`` (the address its own
#: client connects to: the one ``FD`` is bound to).  It prints ``ready``, then serves until its
#: stdin closes.
TORCH_SERVER = """
import sys, datetime, torch.distributed as dist
host = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"
store = dist.TCPStore(host, int(sys.argv[1]), None, True,
                      datetime.timedelta(seconds=3600), wait_for_workers=False,
                      master_listen_fd=int(sys.argv[2]), use_libuv=sys.argv[3] == "libuv")
print("ready", flush=True)
sys.stdin.read()
"""


class TorchServer:
    """torch's TCPStore master (libuv or legacy) in a process of its own, on a socket we bound."""

    def __init__(self, sock: socket.socket, use_libuv: bool = True) -> None:
        self.port = sock.getsockname()[1]
        backend = "libuv" if use_libuv else "legacy"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TORCH_SERVER, str(self.port), str(sock.fileno()), backend],
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


def torch_server(sock: socket.socket, use_libuv: bool = True) -> TorchServer | ForkedTorchServer:
    """torch's master forked from a template that imported torch once, where that works here;
    else a fresh interpreter (which pays torch's import, seconds, for every server)."""
    if available():
        return ForkedTorchServer(sock, use_libuv)
    return TorchServer(sock, use_libuv)


class TorchClient:
    """Opens torch's TCPStore client: ``TorchClient()(host, port, timeout)``.

    Creating one imports nothing (the registry holds one); *unpickling* one imports torch.  A
    host's agent unpickles each rank's opener before it forks the rank, so torch is imported
    once per agent and every rank forked after inherits it, instead of each rank paying for
    the import itself (seconds of CPU per rank on a small machine).  On one machine the runner
    imported torch already (writing the run's mark), so its forked ranks inherit it likewise.
    """

    def __call__(self, host: str, port: int, timeout: float) -> Store:
        from ...stores.torch_adapter import torch_tcp_client

        return torch_tcp_client(host, port, timeout)

    def __reduce__(self) -> tuple[Callable[[], TorchClient], tuple[()]]:
        return _torch_imported, ()

    def __repr__(self) -> str:
        return "TorchClient()"


def _torch_imported() -> TorchClient:
    importlib.import_module("torch.distributed")
    return TorchClient()


_torch_client = TorchClient()


def _torch_file(path: str, timeout: float) -> Store:
    from ...stores.torch_adapter import TorchStore, dist

    def reopen() -> Any:
        store = dist.FileStore(path, -1)
        store.set_timeout(timedelta(seconds=timeout))
        return store

    return TorchStore(reopen(), reopen=reopen)


def _make_torch_file(workdir: Path, timeout: float) -> Store:
    return _torch_file(str(workdir / "store"), timeout)


def _reopen_torch_file(store: Store, workdir: Path, timeout: float) -> Callable[[], Store]:
    return functools.partial(_torch_file, str(workdir / "store"), timeout)


def _make_torch_hash(workdir: Path, timeout: float) -> Store:
    from ...stores.torch_adapter import TorchStore, dist

    return TorchStore(dist.HashStore())


def _reopen_torch_hash(store: Store, workdir: Path, timeout: float) -> Callable[[], Store]:
    from ...stores.torch_adapter import TorchStore

    return functools.partial(TorchStore, store.torch_store)  # type: ignore[attr-defined]


# ------------------------------------------------------------- conformance (in process)


def _torch_client_on_ours() -> Store:
    from ...stores.torch_adapter import torch_tcp_client

    # Our server in its own process: torch's client holds the GIL during list_keys/queue_len.
    server = ServerProcess(loopback_listener())
    try:
        return torch_tcp_client(LOOPBACK, server.port, 60, on_close=server.stop)
    except BaseException:
        server.stop()
        raise


def _torch_client_peer(store: Store) -> Callable[[], Store]:
    return functools.partial(_torch_client, LOOPBACK, store.torch_store.port, 60.0)  # type: ignore[attr-defined]


def _ours_on_torch(use_libuv: bool, keep: list[object]) -> Store:
    from ...stores.torch_adapter import dist

    # torch's master listens on every interface unless handed a socket: hand it a loopback one
    # (torch owns the descriptor from here on).
    sock = loopback_listener()
    port = sock.getsockname()[1]
    master = dist.TCPStore(LOOPBACK, port, None, True, timedelta(seconds=60),
                           use_libuv=use_libuv, master_listen_fd=sock.detach())  # fmt: skip
    keep.append(master)  # torch's server lives as long as this object
    return TCPStore(LOOPBACK, master.port, timeout=60, use_libuv=use_libuv)


def _ours_peer(store: Store) -> Callable[[], Store]:
    assert isinstance(store, TCPStore)
    return functools.partial(
        TCPStore, LOOPBACK, store.port, timeout=60, use_libuv=store.libuvBackend
    )


def torch_targets() -> list[LocalTarget | ServerTarget]:
    """torch's TCP (libuv), file and hash stores; torch's client on our server; ours on torch's."""
    masters: list[object] = []
    return [
        ServerTarget(
            TargetSpec("torch-tcp", "torch's libuv TCPStore server and client (needs torch)",
                       ("process", "thread"), TCP_CAPABILITIES, server=True, network=True,
                       kind="torch", spans_hosts=True),
            torch_server, _torch_client, unavailable=torch_missing, hosted="torch",
        ),
        LocalTarget(
            TargetSpec("torch-file", "torch's FileStore (needs torch)", ("process", "thread"),
                       frozenset({_C.CROSS_PROCESS, _C.LIST_KEYS, _C.ADD_ERRORS, _C.CAS_WAKES}),
                       kind="torch"),
            _make_torch_file, _reopen_torch_file, unavailable=torch_missing,
        ),
        LocalTarget(
            TargetSpec("torch-hash", "torch's HashStore (needs torch; thread ranks)", ("thread",),
                       frozenset({_C.QUEUES, _C.LIST_KEYS, _C.ADD_ERRORS, _C.CAS_WAKES}),
                       kind="torch"),
            _make_torch_hash, _reopen_torch_hash, unavailable=torch_missing,
        ),
        ServerTarget(
            TargetSpec("torch-client", "torch's TCPStore client on our server (needs torch)",
                       ("process", "thread"), TCP_CAPABILITIES, server=True, network=True,
                       kind="interop", spans_hosts=True),
            forked_server, _torch_client, (_torch_client_on_ours, _torch_client_peer),
            unavailable=torch_missing, hosted="auto",
        ),
        ServerTarget(
            TargetSpec("ours-on-torch", "our client on torch's libuv TCPStore server (needs torch)",
                       ("process", "thread"), TCP_CAPABILITIES, server=True, network=True,
                       kind="interop", spans_hosts=True),
            torch_server, our_tcp_client,
            (functools.partial(_ours_on_torch, True, masters), _ours_peer),
            unavailable=torch_missing, hosted="torch",
        ),
        ServerTarget(
            # torch's legacy server has no queues and does not wake waiters on compare_set
            TargetSpec("ours-on-torch-legacy",
                       "our client on torch's legacy TCPStore server (needs torch)",
                       ("process", "thread"), frozenset({_C.CROSS_PROCESS, _C.LIST_KEYS}),
                       server=True, network=True, kind="interop", spans_hosts=True),
            functools.partial(torch_server, use_libuv=False), our_tcp_client,
            (functools.partial(_ours_on_torch, False, masters), _ours_peer),
            unavailable=torch_missing, hosted="torch-legacy",
        ),
    ]  # fmt: skip

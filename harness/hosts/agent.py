"""The host agent: what runs on each host, inside the interpreter an execnet gateway started.

The controller (:mod:`.control`) first sends :data:`BOOTSTRAP`, which imports nothing of
storeharness: it reports the host's Python and the storeharness version installed there, so a
mismatch is refused before any of our code runs on the host.  Only then does the controller ask
it to import this module (the storeharness *installed on that host*) and call :func:`serve`.

:func:`serve` answers requests, one reply each, in order:

- ``("probe",)``: tools and privileges (:func:`probe`);
- ``("time",)``: this host's ``time.time()``, for the controller's clock offset and round trip;
- ``("monotonic",)``: this host's ``time.monotonic()``, to map its ranks' timestamps;
- ``("spawn", argv)``: start a process the agent owns, with the run tag in its environment
  (``STOREHARNESS_RUN``, ``STOREHARNESS_HOST``: how ``hosts clean`` finds it later); replies
  its pid;
- ``("net", ...)``, ``("procs", ...)``, ``("clean",)``: the run's network faults and
  processes on this host (ranks and servers included), and cleaning up after interrupted
  runs (:mod:`._hostrun`);
- ``("world-open", token, channel, modules)``: host ranks of world ``token`` (:mod:`._ranks`),
  their traffic on ``channel``; ``modules`` are scenario sources to import first;
- ``("rank-start" | "rank-signal" | "rank-stacks" | "rank-reap" | "rank-files", token, ...)``:
  per-rank work of that world (:class:`._ranks.RankHost`); ``("world-close", token, kill)``;
- ``("server-start" | "server-kill" | "server-restart" | "server-mark" | "server-stop", ...)``:
  a store server (ours, or torch's TCPStore master) on this host's data address;
  ``("server-etcd" | "server-etcd-mark", ...)``: an etcd member there
  (:class:`._servers.ServerHost`);
- ``("close",)``: tear down and reply ``"closed"``.

An error is answered as ``("error", text)``.

It first sends ``("ready", pid)``, so the controller knows the agent imported and started.

``("heartbeat",)`` gets no reply.  The agent holds a *lease*: every message renews it, and an
agent that hears nothing for ``lease`` seconds (a controller killed, stopped, or cut off by a
link that is silent but not closed) tears down what it started and ends its interpreter.  The
processes it starts also die with it (``PR_SET_PDEATHSIG``, set from the agent's own thread,
which lives as long as the agent).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from . import _hostprocs
from ._hostrun import KINDS, RunOnHost

__all__ = ["BOOTSTRAP", "probe", "serve"]

#: Sent first over a new gateway: it reports versions using only the standard library, then
#: waits for ``"serve"`` (import this module and call :func:`serve`) or anything else (stop).
BOOTSTRAP = """
import sys
try:
    from importlib.metadata import version, PackageNotFoundError
    try:
        installed = version("storeharness")
    except PackageNotFoundError:
        installed = None
except ImportError:
    installed = None
channel.send({
    "python": "%d.%d.%d" % sys.version_info[:3],
    "executable": sys.executable,
    "storeharness": installed,
    "pid": __import__("os").getpid(),
})
order = channel.receive()
if isinstance(order, tuple) and order[0] == "serve":
    from storeharness.harness.hosts.agent import serve
    serve(channel, *order[1:])
"""

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _which(name: str) -> str | None:
    """``name``'s path, also in the sbin directories an unprivileged user's PATH lacks."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _capabilities() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _netem_works() -> tuple[bool | None, str]:
    """Whether a netem qdisc can be created, tried in a private, throwaway network namespace.

    Never on this host's own interfaces: ``unshare -n`` gives the ``tc`` command a namespace of
    its own (``-rn`` through a user namespace when not root), gone when it exits.
    """
    tc, unshare = _which("tc"), _which("unshare")
    if tc is None or unshare is None:
        return None, "cannot try: needs tc and unshare"
    flags = "-n" if os.geteuid() == 0 else "-rn"
    cmd = [unshare, flags, tc, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None, "tc did not answer in 10 s"
    if done.returncode == 0:
        return True, "netem qdisc created"
    return False, (done.stderr.strip() or f"exit {done.returncode}").splitlines()[-1]


def _outer_uid() -> int | None:
    """This process's uid outside its user namespace, or None in the machine's own (whose
    ``uid_map`` maps every uid to itself): a ``netns:N`` host built without root is root of
    a user namespace that is an ordinary user outside."""
    try:
        with open("/proc/self/uid_map") as f:
            rows = [line.split() for line in f]
    except OSError:
        return None
    if rows == [["0", "0", "4294967295"]]:
        return None
    uid = os.getuid()
    for inside, outside, count in ((int(a), int(b), int(c)) for a, b, c in rows):
        if inside <= uid < inside + count:
            return outside + uid - inside
    return None


def probe() -> dict[str, Any]:
    """Tools and privileges of this host, as builtins (they travel over an execnet channel)."""
    netem, why = _netem_works()
    net_admin = bool(_capabilities() & (1 << 12))  # CAP_NET_ADMIN
    return {
        "euid": os.geteuid(),
        "outer_uid": _outer_uid(),
        "net_admin": net_admin,
        "nft": _which("nft"),
        "iptables": _which("iptables"),
        "tc": _which("tc"),
        "netem": netem,
        "netem_detail": why,
    }


class _Owned:
    """The processes and worlds this agent started, killed by pid at teardown."""

    def __init__(
        self, env: dict[str, str], tag: dict[str, str] | None = None, workdir: str = ""
    ) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env, self.tag = env, tag or {}
        self.workdir = workdir  # the run's workdir on this host (servers keep data there)
        self.worlds: dict[str, Any] = {}  # token -> _ranks.RankHost
        self.servers: Any = None  # _servers.ServerHost, once a server was asked for

    def pids(self) -> list[int]:
        """Every live process this agent started: spawned ones (servers too) and world ranks."""
        live = [p.pid for p in self.procs if p.poll() is None]
        for world in self.worlds.values():
            live += [r.pid for r in world.ranks.values() if r.proc.exitcode is None]
        return live

    def spawn(self, argv: list[str]) -> int:
        return self.popen(argv).pid

    def popen(
        self,
        argv: list[str],
        pass_fds: tuple[int, ...] = (),
        stdin: Any = subprocess.DEVNULL,
        stdout: Any = None,
        stderr: Any = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a process this agent owns; ``env`` replaces the agent's environment (the run
        tag is added to it all the same)."""
        proc = subprocess.Popen(
            argv, stdin=stdin, stdout=stdout, stderr=stderr, preexec_fn=_die_with_parent,
            close_fds=True, pass_fds=pass_fds,
            env=self.env if env is None else {**env, **self.tag},
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def teardown(self) -> None:
        if self.servers is not None:
            self.servers.close()
        for token, world in list(self.worlds.items()):
            world.close(list(world.ranks))
            del self.worlds[token]
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.procs.clear()


def _world_request(owned: _Owned, msg: tuple[Any, ...]) -> Any:
    """A request about a world's ranks; an ``("error", text)`` reply when it fails."""
    kind, token, args = msg[0], msg[1], msg[2:]
    try:
        if kind == "world-open":
            from ._ranks import RankHost

            world = owned.worlds[token] = RankHost(token, *args)
            return world.dir
        world = owned.worlds[token]
        if kind == "world-close":
            world.close(*args)
            del owned.worlds[token]
            return "closed"
        method = {"rank-start": world.start, "rank-signal": world.signal,
                  "rank-stacks": world.stacks, "rank-reap": world.reap,
                  "rank-files": world.files}[kind]  # fmt: skip
        return method(*args)
    except Exception as exc:
        import traceback

        return ("error", f"{kind} for world {token} failed on pid {os.getpid()}: "
                f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")  # fmt: skip


def _server_request(owned: _Owned, msg: tuple[Any, ...]) -> Any:
    """A request about a store server on this host (:mod:`._servers`)."""
    kind, args = msg[0], msg[1:]
    try:
        if owned.servers is None:
            from ._servers import ServerHost

            owned.servers = ServerHost(owned.popen, owned.workdir)
        servers = owned.servers
        method = {"server-start": servers.start, "server-kill": servers.kill,
                  "server-restart": servers.restart, "server-mark": servers.mark,
                  "server-stop": servers.stop, "server-etcd": servers.etcd,
                  "server-etcd-mark": servers.etcd_mark}[kind]  # fmt: skip
        return method(*args)
    except Exception as exc:
        return ("error", f"{kind} failed on pid {os.getpid()}: {type(exc).__name__}: {exc}")


def serve(channel: Any, lease: float, ident: dict[str, str] | None = None) -> None:
    """Answer the controller on ``channel`` until it closes us or the lease runs out.

    ``ident``: ``run`` (the run tag), ``host`` (this host's inventory name) and ``address``
    (its data-plane address); a run tag of our own when not given.
    """
    ident = ident or {}
    run = RunOnHost(ident.get("run") or secrets.token_hex(4), ident.get("host") or "local",
                    ident.get("address") or "127.0.0.1")  # fmt: skip
    owned = _Owned(run.env(), _hostprocs.tagged(run.run, run.host), str(run.workdir))
    run.also = owned.pids
    channel.send(("ready", os.getpid()))
    try:
        while True:
            try:
                msg = channel.receive(timeout=lease)
            except channel.TimeoutError:
                print(f"storeharness agent {os.getpid()}: no word from the controller for "
                      f"{lease} s; tearing down", file=sys.stderr)  # fmt: skip
                break
            except EOFError:  # the controller closed the channel: the run is over
                break
            kind = msg[0]
            if kind == "heartbeat":
                continue
            if kind == "time":
                channel.send(time.time())
            elif kind == "probe":
                channel.send(probe())
            elif kind == "monotonic":
                channel.send(time.monotonic())
            elif kind == "spawn":
                channel.send(owned.spawn(list(msg[1])))
            elif kind in KINDS:
                channel.send(run.handle(msg))
            elif kind.startswith(("world-", "rank-")):
                channel.send(_world_request(owned, msg))
            elif kind.startswith("server-"):
                channel.send(_server_request(owned, msg))
            elif kind == "close":
                owned.teardown()
                run.teardown()
                channel.send("closed")
                return
            else:
                channel.send(("error", f"unknown request {kind!r}"))
    finally:
        owned.teardown()
        run.teardown()
    # The lease ran out or the link closed: end this interpreter, whatever execnet does next.
    os._exit(0)

"""The host agent: what runs on each host, inside the interpreter an execnet gateway started.

The controller (:mod:`.control`) first sends :data:`BOOTSTRAP`, which imports nothing of
storeharness: it reports the host's Python and the storeharness version installed there, so a
mismatch is refused before any of our code runs on the host.  Only then does the controller ask
it to import this module (the storeharness *installed on that host*) and call :func:`serve`.

:func:`serve` answers requests, one reply each, in order:

- ``("probe",)``: tools and privileges (:func:`probe`);
- ``("time",)``: this host's ``time.time()``, for the controller's clock offset and round trip;
- ``("spawn", argv)``: start a process the agent owns, with the run tag in its environment
  (``STOREHARNESS_RUN``, ``STOREHARNESS_HOST``: how ``hosts clean`` finds it later); replies
  its pid;
- ``("net", ...)``, ``("procs", ...)``, ``("clean",)``: the run's network faults and
  processes on this host, and cleaning up after interrupted runs (:mod:`._hostrun`);
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
    tc, unshare = shutil.which("tc"), shutil.which("unshare")
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


def probe() -> dict[str, Any]:
    """Tools and privileges of this host, as builtins (they travel over an execnet channel)."""
    netem, why = _netem_works()
    net_admin = bool(_capabilities() & (1 << 12))  # CAP_NET_ADMIN
    return {
        "euid": os.geteuid(),
        "net_admin": net_admin,
        "nft": shutil.which("nft"),
        "iptables": shutil.which("iptables"),
        "tc": shutil.which("tc"),
        "netem": netem,
        "netem_detail": why,
    }


class _Owned:
    """The processes this agent started, killed by pid at teardown."""

    def __init__(self, env: dict[str, str]) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = env

    def spawn(self, argv: list[str]) -> int:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, close_fds=True,
            env=self.env,
        )  # fmt: skip
        self.procs.append(proc)
        return proc.pid

    def teardown(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.procs.clear()


def serve(channel: Any, lease: float, ident: dict[str, str] | None = None) -> None:
    """Answer the controller on ``channel`` until it closes us or the lease runs out.

    ``ident``: ``run`` (the run tag), ``host`` (this host's inventory name) and ``address``
    (its data-plane address); a run tag of our own when not given.
    """
    ident = ident or {}
    run = RunOnHost(ident.get("run") or secrets.token_hex(4), ident.get("host") or "local",
                    ident.get("address") or "127.0.0.1")  # fmt: skip
    owned = _Owned(run.env())
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
            elif kind == "spawn":
                channel.send(owned.spawn(list(msg[1])))
            elif kind in KINDS:
                channel.send(run.handle(msg))
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

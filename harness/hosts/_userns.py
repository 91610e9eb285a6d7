"""Namespaces as hosts without root: a keeper process in a user namespace of its own.

Without ``CAP_SYS_ADMIN`` and ``CAP_NET_ADMIN`` a user cannot add network namespaces to the
machine, but (where the kernel allows unprivileged user namespaces) can make a *user* namespace
in which it is root, with a mount and a network namespace owned by it.  The keeper is that:
``unshare -Urmn sh``, which mounts a private tmpfs on ``/run`` (so ``ip netns add`` has a
``/run/netns`` of its own that no one else sees) and then waits on its stdin.  Everything else
enters it through ``nsenter -t KEEPER -U -m -n --preserve-credentials`` — the ``ip`` commands
that build the switch and hosts inside it, and the execnet gateways that start host agents
(``... ip netns exec NS python``), which run as root of that user namespace: ``nft`` and ``tc``
work there on the namespaces' own interfaces, and nothing of the machine is reachable.

Lifetime: the keeper's stdin is a pipe whose only writer is the building process (Python opens
pipes non-inheritable, so children it *executes* do not hold it), so the keeper ends when its
builder ends, however that happens — a process merely *forked* from the builder holds the pipe
too and keeps the keeper until it ends (the harness's forked ranks die with their controller).
Not ``PR_SET_PDEATHSIG``: it fires when the building *thread* ends, not the process.  The
keeper's mount namespace, and with it the ``/run/netns`` names, goes with it; namespaces held
by processes still inside (an agent waiting out its lease, the ranks it started) go when those
end.  Those processes are found by their user namespace (the inode of
``/proc/PID/ns/user``, the keeper's) and the run's tag in their environment (:data:`ENV`, which
the command prefix of :func:`enter_argv` sets) — by pid, never by name.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import selectors
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ENV", "Keeper", "KeeperError", "enter_argv", "kill", "members", "missing", "start",
    "start_time",
]  # fmt: skip

#: Set (to the run tag) in the environment of the keeper and of everything that enters it.
ENV = "STOREHARNESS_NETNS"
#: Runs in the keeper: a private ``/run``, then "ready", then wait for the builder to end.
_KEEPER = "mount -t tmpfs -o mode=0755 storeharness /run || exit 3; echo ready; read -r _ || :"
_PROBE_TIMEOUT = 10.0
#: ``sysctl`` switches that turn unprivileged user namespaces off: the value meaning "off", what
#: it means, and a value that turns them on.
_SWITCHES = (
    ("kernel/unprivileged_userns_clone", "0", "unprivileged user namespaces are disabled", "1"),
    ("user/max_user_namespaces", "0", "no user namespaces may be created", "15000"),
    ("kernel/apparmor_restrict_unprivileged_userns", "1",
     "AppArmor restricts unprivileged user namespaces", "0"),
)  # fmt: skip
_PROC_SYS = Path("/proc/sys")


class KeeperError(RuntimeError):
    """The keeper could not be started; the message names the command and what it said."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def _switch_off(proc_sys: Path = _PROC_SYS) -> str | None:
    """The sysctl that keeps unprivileged user namespaces off here, described, or None."""
    for name, off, what, on in _SWITCHES:
        try:
            value = (proc_sys / name).read_text().strip()
        except OSError:
            continue  # this kernel does not have that switch
        if value == off:
            setting = name.replace("/", ".")
            return (
                f"{what} (sysctl {setting} = {value}): as root, `sysctl -w {setting}={on}`; "
                "or run as root"
            )
    return None


@functools.cache
def missing() -> str | None:
    """Why a keeper cannot be made here (a reason to skip with), or None when it can.

    Tried, not guessed: ``unshare -Urmn mount -t tmpfs ... /run`` is what the keeper does first.
    """
    tools = {name: _which(name) for name in ("unshare", "nsenter", "mount")}
    absent = [name for name, path in tools.items() if path is None]
    if absent:
        return f"`{'`, `'.join(absent)}` not found: apt-get install util-linux mount"
    cmd = [str(tools["unshare"]), "-Urmn", str(tools["mount"]), "-t", "tmpfs", "probe", "/run"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(cmd)}` did not finish in {_PROBE_TIMEOUT} s"
    if done.returncode == 0:
        return None
    said = (done.stderr.strip() or f"exit {done.returncode}").splitlines()[-1]
    return (
        _switch_off() or f"an unprivileged user namespace cannot be made: `{' '.join(cmd)}`: {said}"
    )


def enter_argv(tag: str, keeper: int) -> list[str]:
    """The command prefix that runs a program as root of run ``tag``'s keeper ``keeper``'s user
    namespace, in its mount and network namespaces, with the run tag in its environment."""
    env, nsenter = _which("env"), _which("nsenter")
    if env is None or nsenter is None:
        raise KeeperError(
            "`env` and `nsenter` are needed to enter a keeper: apt-get install util-linux"
        )
    return [env, f"{ENV}={tag}", nsenter, "-t", str(keeper), "-U", "-m", "-n",
            "--preserve-credentials"]  # fmt: skip


def start_time(pid: int) -> str | None:
    """Process ``pid``'s start time in clock ticks since boot; None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


@dataclass(slots=True)
class Keeper:
    """A running keeper this process started: its process, the pipe that keeps it alive, and
    the inode of its user namespace (what :func:`members` matches)."""

    tag: str
    proc: subprocess.Popen[bytes]
    lifeline: int
    userns: int
    started: str

    @property
    def pid(self) -> int:
        """The keeper's pid (what ``nsenter -t`` enters)."""
        return self.proc.pid

    def stop(self, timeout: float) -> None:
        """Kill the keeper and reap it (bounded by ``timeout``); idempotent."""
        if self.lifeline >= 0:
            os.close(self.lifeline)
            self.lifeline = -1
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout)
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


def start(tag: str, timeout: float) -> Keeper:
    """Start run ``tag``'s keeper and wait (up to ``timeout`` s) until its ``/run`` is private.

    Raises :class:`KeeperError` naming the command and what it printed.
    """
    unshare, sh = _which("unshare"), _which("sh")
    if unshare is None or sh is None:
        raise KeeperError("`unshare` (util-linux) and `sh` are needed: apt-get install util-linux")
    cmd = [unshare, "-Urmn", sh, "-c", _KEEPER]
    read_end, lifeline = os.pipe()
    try:
        # a session of its own: a Ctrl-C meant for the test run does not end it under the
        # teardown; the builder's end of the pipe does
        proc = subprocess.Popen(
            cmd, stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, ENV: tag}, start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        os.close(lifeline)
        raise KeeperError(f"cannot start the keeper `{' '.join(cmd)}`: {exc}") from exc
    finally:
        os.close(read_end)
    keeper = Keeper(tag, proc, lifeline, 0, "")
    try:
        line = _first_line(proc, timeout)
        if line != b"ready\n":
            proc.kill()
            err = proc.communicate(timeout=timeout)[1].decode(errors="replace").strip()
            raise KeeperError(
                f"the keeper `unshare -Urmn sh -c '{_KEEPER}'` did not start (exit "
                f"{proc.returncode}): {err or 'no output'}; `storeharness hosts check netns:1` "
                "says what this machine lacks"
            )
        keeper.userns = os.stat(f"/proc/{proc.pid}/ns/user").st_ino
        keeper.started = start_time(proc.pid) or ""
    except BaseException:
        keeper.stop(timeout)
        raise
    return keeper


def _first_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return b""
            if sel.select(left):
                return proc.stdout.readline()


def _tagged(pid: int, tag: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{ENV}={tag}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def members(userns: int, tag: str) -> list[int]:
    """Live processes in the user namespace with inode ``userns``, provided one of them carries
    run ``tag`` in its environment (an inode is reused once its namespace is gone: without a
    tagged member, matching processes belong to someone else)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            inode = os.stat(f"/proc/{pid}/ns/user").st_ino
        except OSError:  # gone, or not ours to look at
            continue
        if inode == userns and start_time(pid) is not None:
            found.append(pid)
    return found if any(_tagged(pid, tag) for pid in found) else []


def kill(pids: list[int], deadline: float) -> list[int]:
    """SIGKILL ``pids`` and wait (until ``deadline``, monotonic) for them to end; the ones left.

    Waits on pidfds (readable once a process has exited), not on a sleep.
    """
    fds = {}
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        fds[pid] = fd
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile: its pidfd says so
            signal.pidfd_send_signal(fd, signal.SIGKILL)  # this very process, even if pids wrap
    try:
        waiting = dict(fds)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(waiting.values()), [], [], left)
            for pid in [p for p, fd in waiting.items() if fd in ready]:
                del waiting[pid]
        return sorted(waiting)
    finally:
        for fd in fds.values():
            os.close(fd)

"""On a host: the run's processes, found by the run tag in their environment, and its workdir.

Runs in the agent.  Every process an agent starts carries ``STOREHARNESS_RUN=<run>`` and
``STOREHARNESS_HOST=<host>`` in its environment, and so does everything *it* starts, so the
run's processes on a host are found from ``/proc/PID/environ`` — by pid, never by name — even
after the agent that started them is gone.  (Namespaces as hosts share one ``/proc``: the host
name in the tag tells their processes apart.)

Each agent also claims a workdir, ``<tmp>/storeharness-runs/<run>/<host>/``, holding a record
of the agent (pid and start time, to tell a reused pid apart, and its network namespace).  A run
with no live agent record is *stale*: an interrupted run whose leftovers
``storeharness hosts clean`` may remove.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

__all__ = [
    "HOST_ENV",
    "RUNS",
    "RUN_ENV",
    "claim",
    "live_runs",
    "note",
    "release",
    "run_pids",
    "signal_pids",
    "stale_pids",
    "stale_workdirs",
    "tagged",
    "workdir",
]

RUN_ENV = "STOREHARNESS_RUN"
HOST_ENV = "STOREHARNESS_HOST"
#: Where agents keep their workdirs (on this host's own file system).
RUNS = Path(tempfile.gettempdir()) / "storeharness-runs"
_RECORD = "agent.json"


def tagged(run: str, host: str) -> dict[str, str]:
    """The environment entries that mark a process as run ``run``'s on ``host``."""
    return {RUN_ENV: run, HOST_ENV: host}


def _start_time(pid: int) -> str | None:
    """Process ``pid``'s start time in clock ticks since boot (tells a reused pid apart); None
    when it is gone or has ended (a zombie its parent has not reaped yet: an agent SIGKILLed
    under a controller that is still running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def workdir(run: str, host: str) -> Path:
    """The workdir of run ``run``'s agent for ``host`` on this host."""
    return RUNS / run / host


def claim(run: str, host: str) -> Path:
    """Create this agent's workdir and record the agent in it; returns the workdir."""
    path = workdir(run, host)
    path.mkdir(parents=True, exist_ok=True)
    me = os.getpid()
    record = {"pid": me, "start": _start_time(me), "netns": _netns_inode()}
    part = path / f".{_RECORD}.{me}"
    part.write_text(json.dumps(record))
    os.replace(part, path / _RECORD)  # whole or absent: a torn record would read as dead
    return path


def note(run: str, host: str, **fields: object) -> None:
    """Add ``fields`` to this agent's record (e.g. ``shaping``: the device it shapes)."""
    record = workdir(run, host) / _RECORD
    data = json.loads(record.read_text())
    data.update(fields)
    part = record.with_name(f".{_RECORD}.{os.getpid()}")
    part.write_text(json.dumps(data))
    os.replace(part, record)


def release(run: str, host: str) -> None:
    """Remove this agent's workdir (and the run's directory once no host is left in it)."""
    shutil.rmtree(workdir(run, host), ignore_errors=True)
    with contextlib.suppress(OSError):  # another host (or run) may still be there
        (RUNS / run).rmdir()
        RUNS.rmdir()


def _alive(record: Path) -> dict[str, object] | None:
    try:
        data = json.loads(record.read_text())
        pid = int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data if _start_time(pid) == data.get("start") else None


def live_runs(shaping_here: bool = False) -> set[str]:
    """Runs with an agent alive on this host (only those shaping traffic with tc in this
    network namespace, with ``shaping_here``)."""
    live = set()
    here = _netns_inode()
    for record in RUNS.glob(f"*/*/{_RECORD}"):
        data = _alive(record)
        if data is None:
            continue
        if not shaping_here or (data.get("netns") == here and data.get("shaping")):
            live.add(record.parent.parent.name)
    return live


def _environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:  # gone, or not ours to read
        return {}
    env = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key in (b"STOREHARNESS_RUN", b"STOREHARNESS_HOST"):
            env[key.decode()] = value.decode(errors="replace")
    return env


def _uid(pid: int) -> int | None:
    """Process ``pid``'s real uid (as this user namespace sees it), None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
    except (OSError, StopIteration, ValueError):
        return None


def _tagged_pids() -> list[tuple[int, dict[str, str]]]:
    """Tagged processes of this user: another user's runs keep their workdirs (the records
    of which runs are live) under their own temporary directory, so a run of theirs would
    look stale from here; they are theirs to clean (root included)."""
    me, uid = os.getpid(), os.getuid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            env = _environ(int(entry))
            if RUN_ENV in env and _uid(int(entry)) == uid:
                found.append((int(entry), env))
    return found


def run_pids(run: str, host: str) -> list[int]:
    """The pids of run ``run``'s processes on ``host``, found by their environment tag."""
    return sorted(
        pid for pid, env in _tagged_pids() if env[RUN_ENV] == run and env.get(HOST_ENV) == host
    )


def signal_pids(pids: list[int], sig: signal.Signals) -> list[int]:
    """Send ``sig`` to each of ``pids``; the pids it reached (some may have ended meanwhile)."""
    reached = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            reached.append(pid)
    return reached


def stale_pids() -> dict[int, str]:
    """Tagged processes of runs that have no live agent on this host: pid → run."""
    live = live_runs()
    return {pid: env[RUN_ENV] for pid, env in _tagged_pids() if env[RUN_ENV] not in live}


def stale_workdirs() -> list[Path]:
    """Workdirs of runs that have no live agent on this host."""
    live = live_runs()
    if not RUNS.is_dir():
        return []
    return sorted(p for p in RUNS.iterdir() if p.is_dir() and p.name not in live)

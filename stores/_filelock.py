"""``flock`` with a deadline, and who holds a lock (for the timeout's message).

POSIX offers no ``flock`` with a timeout.  The ways around it that library code must not use:
``SIGALRM`` to interrupt a blocking ``flock`` (the process's one alarm and its handler belong to
the application), and a helper thread blocked in ``flock`` (it cannot be cancelled, so it would
take the lock after we gave up and hold it).  Lock release is not an inotify event either.  So:

* the uncontended case is one ``LOCK_NB`` call, as cheap as the blocking call it replaces;
* with no deadline (timeout 0 = no limit), a plain blocking ``flock``: the kernel queues us;
* otherwise ``LOCK_NB`` retries with exponential backoff, 50 µs doubling to 5 ms, until the
  deadline.  Live holders keep the lock for microseconds (one append), so a waiter usually gets
  it within the first few retries; a stopped or stuck holder costs a waiter at most 200 cheap
  system calls a second, and the deadline is overshot by at most one step (5 ms).

When the deadline passes, ``/proc/locks`` (Linux) names the process holding the lock on the
file's inode; ``holder`` adds its command line and whether it is stopped.
"""

from __future__ import annotations

import fcntl
import os
import time

__all__ = ["LockBusy", "acquire", "holder"]

_FIRST_DELAY = 50e-6
_MAX_DELAY = 5e-3


class LockBusy(Exception):
    """The lock was not acquired by the deadline; ``detail`` says who holds it, if known."""

    def __init__(self, detail: str, waited: float) -> None:
        super().__init__(detail)
        self.detail = detail
        self.waited = waited  # seconds spent waiting for this lock


def acquire(fd: int, exclusive: bool, deadline: float | None, path: str) -> None:
    """``flock`` ``fd`` (exclusive or shared) by ``deadline`` (``time.monotonic``), or raise
    ``LockBusy``; ``deadline=None`` waits as long as it takes."""
    kind = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        if deadline is None:
            fcntl.flock(fd, kind)
            return
    delay = _FIRST_DELAY
    start = time.monotonic()
    while True:
        now = time.monotonic()
        left = deadline - now
        if left <= 0:
            raise LockBusy(holder(fd, path), now - start)
        time.sleep(min(delay, left))
        delay = min(delay * 2, _MAX_DELAY)
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            continue


def release(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)


def holder(fd: int, path: str) -> str:
    """Describe who holds a ``flock`` on ``fd``'s file, as far as the OS tells."""
    what = f"the lock on {path!r} is held by "
    pids = _lock_pids(fd, path)
    if not pids:
        return what + "another process (the OS does not say which)"
    return what + "; ".join(_describe(pid) for pid in pids)


def _lock_pids(fd: int, path: str) -> list[int]:
    """Pids ``/proc/locks`` shows holding (not awaiting) a flock on ``fd``'s inode."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
        st = os.fstat(fd)
    except OSError:
        return []
    exact: list[int] = []
    same_inode: list[int] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":  # "->" in fields[1]: a waiter
            continue
        try:
            pid = int(fields[4])
            major, minor, ino = fields[5].split(":")
            if int(ino) != st.st_ino:
                continue
            dev = (int(major, 16), int(minor, 16))
        except ValueError:
            continue
        if dev == (os.major(st.st_dev), os.minor(st.st_dev)):
            exact.append(pid)
        else:  # overlay filesystems report the lower device: confirm the pid has our file open
            same_inode.append(pid)
    if exact:
        return exact
    real = os.path.realpath(path)
    return [pid for pid in same_inode if _has_open(pid, real)]


def _has_open(pid: int, real: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == real:
                return True
        except OSError:
            continue
    return False


def _describe(pid: int) -> str:
    if pid == os.getpid():
        return f"pid {pid} (this process: another handle on the same file)"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        command = " ".join(" ".join(a.decode(errors="replace").split()) for a in argv if a)
        command = (command[:100] + "...") if len(command) > 100 else command or "?"
    except OSError:
        return f"pid {pid} (no longer visible)"
    state = ""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        code = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]
        if code in (b"T", b"t"):
            state = f", which is stopped (resume it with kill -CONT {pid}, or end it)"
    except (OSError, ValueError):
        pass
    return f"pid {pid} ({command}){state}"

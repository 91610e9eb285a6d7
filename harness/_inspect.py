"""Processes seen from outside: system calls they sleep in, stack dumps, log tails."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback

import multiprocess

from .context import DUMP_SIGNAL

__all__ = [
    "blocked_in",
    "kill",
    "read_from",
    "size",
    "tail",
    "thread_stack",
    "wait_for_dumps",
    "where",
]

_LOG_TAIL = 8000
_X86_64 = os.uname().machine == "x86_64"
# The blocking system calls a store client sleeps in, by x86-64 number (for reports only).
_SYSCALLS = {
    "0": "read", "7": "poll", "23": "select", "35": "nanosleep", "45": "recvfrom",
    "47": "recvmsg", "61": "wait4", "202": "futex", "230": "clock_nanosleep",
    "232": "epoll_wait", "270": "pselect6", "271": "ppoll", "281": "epoll_pwait",
}  # fmt: skip


def kill(pid: int, sig: int) -> bool:
    """Send ``sig`` to ``pid``; whether it went (``False``: no such process)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def blocked_in(pid: int, control_fd: int) -> str | None:
    """The system call ``pid`` sleeps in, unless it is reading the harness's own pipe."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return None
    if state != "S" or not fields or fields[0] in ("running", "-1"):
        return None
    # The rank reads its go-ahead with read(2) on its end of the pipe; that is not the call
    # the scenario means.
    if fields[0] == "0" and int(fields[1], 16) == control_fd:
        return None
    return _SYSCALLS.get(fields[0], f"#{fields[0]}") if _X86_64 else f"#{fields[0]}"


def size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, size(path) - _LOG_TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def wait_for_dumps(logs: dict[str, int], timeout: float) -> None:
    """Wait (at most ``timeout`` s) until a whole faulthandler dump is in each log past its offset.

    faulthandler writes a dump in many small writes from inside its signal handler, and the dump
    has no end marker (threads are separated by a blank line; the last one just ends), so the
    text alone cannot say it is complete.  The kernel can: while a handler runs, its signal is
    in the handling thread's blocked mask (``SigBlk`` in ``/proc``), and once the handler
    returns it is not.  A dump is whole when its header is in the log (the handler started) and
    no thread of the process that writes the log still has the signal pending or blocked for
    the handler.  The writer is found as our child process whose stderr is the log.
    """
    deadline = time.monotonic() + timeout
    watches = [_DumpWatch(path, offset, _writer_of(path)) for path, offset in logs.items()]
    while watches and time.monotonic() < deadline:
        watches = [w for w in watches if not w.done()]
        if watches:
            time.sleep(0.002)  # polling another process's state; bounded by ``timeout``


class _DumpWatch:
    """One log's dump in progress (see :func:`wait_for_dumps`)."""

    def __init__(self, path: str, offset: int, pid: int | None) -> None:
        self.path, self.offset, self.pid = path, offset, pid
        # What the first look saw, to tell threads that block the signal for good (a C
        # library's worker, say) from the one running the handler.
        self.first: tuple[bool, frozenset[int]] | None = None

    def done(self) -> bool:
        state = _signal_state(self.pid, DUMP_SIGNAL) if self.pid is not None else None
        if self.first is None and state is not None:
            self.first = state
        text = read_from(self.path, self.offset)
        if "most recent call first" not in text:
            return state is None and self.pid is not None  # the writer is gone: nothing comes
        if self.pid is None:  # not our child (or no /proc): the old guess, a whole last line
            return text.endswith("\n")
        if state is None:
            return True  # the writer is gone (or a zombie): whatever it wrote is all there is
        pending, blocked = state
        if pending or self.first is None:
            return False
        first_pending, first_blocked = self.first
        if first_pending:  # seen before delivery: those blocking it then block it for good
            return blocked <= first_blocked
        return not blocked or blocked < first_blocked


def _writer_of(log_path: str) -> int | None:
    """The pid of our child process whose stderr is ``log_path`` (a process rank), if any."""
    want = os.path.realpath(log_path)
    for child in _children():
        try:
            if os.readlink(f"/proc/{child}/fd/2") == want:
                return child
        except OSError:
            continue
    return None


def _children() -> list[int]:
    """This process's child pids (each thread's children: a rank is forked by the runner's)."""
    found: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                found += [int(pid) for pid in f.read().split()]
        except OSError:
            continue
    return found


def _signal_state(pid: int, sig: signal.Signals) -> tuple[bool, frozenset[int]] | None:
    """``(pending, threads blocking it)`` for ``sig`` in process ``pid``; ``None`` once it is gone.

    A handler without ``SA_NODEFER`` (faulthandler's, with ``chain=False``) runs with its own
    signal blocked, so the thread running it shows the signal in ``SigBlk`` until it returns.
    """
    bit = 1 << (sig - 1)
    pending = False
    blocked: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if fields.get("State", "").split()[:1] in (["Z"], ["X"]):
                return None
            if any(int(fields.get(k, "0"), 16) & bit for k in ("SigPnd", "ShdPnd")):
                pending = True
            if int(fields.get("SigBlk", "0"), 16) & bit:
                blocked.add(int(task))
    except (OSError, ValueError):
        return None
    return pending, frozenset(blocked)


def _package_dirs() -> tuple[str, ...]:
    from .. import stores

    dirs = [os.path.dirname(os.path.abspath(m.__file__ or "")) for m in (stores, multiprocess)]
    dirs.append(os.path.dirname(os.path.abspath(__file__)))
    return tuple(d + os.sep for d in dirs)


# Frames that are the harness's or the store's own, not the scenario's.
_INTERNAL = (*_package_dirs(), f"{os.sep}threading.py", "<frozen")


def where(dump: str) -> str:
    """Where a dumped rank was: the innermost frame, and the innermost frame of scenario code."""
    blocks: list[tuple[str, list[str]]] = []
    lines = dump.splitlines()
    if lines and not dump.endswith("\n"):
        lines.pop()  # a line still being written
    for line in lines:
        if "most recent call first" in line:
            blocks.append((line, []))
        elif blocks and line.strip().startswith("File "):
            blocks[-1][1].append(line.strip())
    current = [frames for header, frames in blocks if header.startswith("Current thread")]
    frames = current[0] if current and current[0] else (blocks[0][1] if blocks else [])
    if not frames:
        return ""
    innermost = frames[0]
    user = next((f for f in frames if not internal(f)), "")
    return innermost if not user or user == innermost else f"{user} → {innermost}"


def internal(frame: str) -> bool:
    """Is this frame (a faulthandler line or a file name) inside harness, stores or stdlib glue?"""
    return any(x in frame for x in _INTERNAL)


def thread_stack(thread: threading.Thread, rank: int, log_path: str) -> str:
    """Write a thread rank's stack to its log; return where it is (as :func:`where`)."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return ""
    stack = traceback.format_stack(frame)
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(f"Stack of rank {rank} (thread) at its deadline:\n{''.join(stack)}")
    summary = traceback.extract_stack(frame)
    inner = summary[-1]
    user = next((fs for fs in reversed(summary) if not internal(fs.filename)), None)
    here = f'File "{inner.filename}", line {inner.lineno} in {inner.name}'
    if user is None or user is inner:
        return here
    return f'File "{user.filename}", line {user.lineno} in {user.name} → {here}'

"""Processes seen from outside: system calls they sleep in, stack dumps, log tails."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback

import multiprocess

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


def kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


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
    """Wait (at most ``timeout`` s) until a faulthandler dump lands in each log past its offset."""
    deadline = time.monotonic() + timeout
    waiting = dict(logs)
    while waiting and time.monotonic() < deadline:
        waiting = {
            path: offset
            for path, offset in waiting.items()
            if "most recent call first" not in read_from(path, offset)
        }
        if waiting:
            time.sleep(0.005)  # polling a file another process writes; bounded by ``timeout``


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
    for line in dump.splitlines():
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

"""Looking into processes from outside: whole stack dumps, never half-written ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from storeharness.harness import _inspect as I
from storeharness.harness.context import DUMP_SIGNAL

# A process whose dump is long (60 threads, 150 frames deep: thousands of small writes), with its
# stderr on a log file as a process rank's is.  BLOCKER also starts a thread that blocks the
# dump signal for good, as a C library's worker thread may.
DEEP = """
import faulthandler, os, signal, sys, threading
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
os.dup2(fd, 2)
faulthandler.register(signal.SIGUSR2, file=2, all_threads=True, chain=False)
go, blocking = threading.Event(), threading.Event()
def deep(n):
    return deep(n - 1) if n else go.wait()
def blocker():
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
    blocking.set()
    go.wait()
if sys.argv[2] == "blocker":
    threading.Thread(target=blocker, daemon=True).start()
    blocking.wait()
for _ in range(60):
    threading.Thread(target=deep, args=(150,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def _dump(tmp_path: Path, mode: str) -> str:
    log = str(tmp_path / "rank.log")
    proc = subprocess.Popen(
        [sys.executable, "-c", DEEP, log, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        offset = I.size(log)
        I.kill(proc.pid, DUMP_SIGNAL)
        I.wait_for_dumps({log: offset}, timeout=60)
        return I.read_from(log, offset)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


def test_a_dump_is_read_once_whole_not_while_it_is_written(tmp_path: Path) -> None:
    dump = _dump(tmp_path, "plain")
    # Every thread's block, the main thread's last (it is the oldest), ending in its outermost
    # frame: nothing of the dump was still to come.
    assert dump.count("(most recent call first):") == 61, dump[-300:]
    assert dump.endswith("\n") and dump.splitlines()[-1].endswith("in <module>"), dump[-300:]


def test_a_thread_blocking_the_dump_signal_for_good_does_not_hold_up_the_wait(
    tmp_path: Path,
) -> None:
    dump = _dump(tmp_path, "blocker")
    assert dump.count("(most recent call first):") == 62, dump[-300:]
    assert dump.splitlines()[-1].endswith("in <module>")


def test_where_ignores_a_line_still_being_written() -> None:
    header = "Current thread 0x1 (most recent call first):\n"
    frame = '  File "/x/scenario_a.py", line 7 in f\n'
    assert I.where(header + frame) == 'File "/x/scenario_a.py", line 7 in f'
    assert I.where(header + frame[:20]) == ""  # not 'File "/x/scenario_a'

"""A FileStore participant stopped (SIGSTOP) while it holds the file lock.

The holder is a real FileStore in a child process that stops itself inside ``Log.transact``,
after taking the exclusive lock and before writing; the parent learns that it stopped from
``waitpid(WUNTRACED)``, so the lock is certainly held, with no sleep.  Writers, new handles and
``close`` must give up after their timeout with ``StoreTimeout`` naming the holder; lock-free
reads go on; once the holder continues or dies, everything works again.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storeharness.harness._parties import process_parties
from storeharness.stores import FileStore, StoreTimeout

T = 0.5
SLACK = 2.5  # generous for a loaded 2-core machine; the defect was "forever"

HOLDER = """
import os, signal, sys
from storeharness.stores import FileStore
from storeharness.stores._fileformat import OP_SET

store = FileStore(sys.argv[1])
log = store._log

def decide():
    os.kill(os.getpid(), signal.SIGSTOP)  # stopped while holding the exclusive lock
    return [(OP_SET, "from_holder", b"1")], None

with log.mutex:
    log.transact(decide)
store.close()
"""


class Holder:
    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)])
        _, status = os.waitpid(self.proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), f"holder did not stop (wait status {status:#x})"
        self.pid = self.proc.pid

    def resume(self) -> int:
        os.kill(self.pid, signal.SIGCONT)
        return self.proc.wait(30)

    def kill(self) -> int:
        os.kill(self.pid, signal.SIGKILL)
        return self.proc.wait(30)


class World:
    """Handles opened before the holder stopped, and the stopped holder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.early = FileStore(path, timeout=T)
        self.early.set("before", "1")
        self.participant = FileStore(path, world_size=5, timeout=T)
        self.holder = Holder(path)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "fs")
    try:
        yield w
    finally:
        if w.holder.proc.poll() is None:
            w.holder.kill()


def timed(call: Callable[[], object]) -> tuple[float, StoreTimeout]:
    start = time.monotonic()
    with pytest.raises(StoreTimeout) as info:
        call()
    return time.monotonic() - start, info.value


def check_names_holder(err: StoreTimeout, pid: int) -> None:
    text = str(err)
    assert f"pid {pid}" in text, text
    assert "which is stopped" in text, text
    assert f"kill -CONT {pid}" in text, text
    assert err.timeout == T


@pytest.mark.timeout(60)
def test_writers_constructor_and_close_time_out_naming_the_stopped_holder(world: World) -> None:
    pid, early = world.holder.pid, world.early
    fresh = FileStore.__new__(FileStore)
    elapsed, err = timed(lambda: FileStore.__init__(fresh, world.path, timeout=T))
    assert T <= elapsed < T + SLACK, elapsed
    check_names_holder(err, pid)
    assert err.op == "FileStore"

    writes: dict[str, Callable[[], object]] = {
        "set": lambda: early.set("k", "v"),
        "add": lambda: early.add("n", 1),
        "multi_set": lambda: early.multi_set(["x", "y"], ["1", "2"]),
        "append": lambda: early.append("k", "w"),
        "compare_set": lambda: early.compare_set("k", "", "v"),
        "delete_key": lambda: early.delete_key("before"),
        "queue_push": lambda: early.queue_push("q", "v"),
        "queue_pop": lambda: early.queue_pop("q", block=False),
    }
    for op, call in writes.items():
        elapsed, err = timed(call)
        assert T <= elapsed < T + SLACK, (op, elapsed)
        assert err.op == op
        check_names_holder(err, pid)
    # Reads take no lock: they still answer.
    assert early.get("before") == b"1"
    assert early.check(["before"]) and early.num_keys() == 1
    # Leaving a world_size store updates its reference count, under the lock: it times out too.
    elapsed, err = timed(world.participant.close)
    assert T <= elapsed < T + SLACK
    assert err.op == "close"
    check_names_holder(err, pid)
    assert world.participant.closed

    assert world.holder.resume() == 0
    # Continued, the holder finishes its write; everything works again.
    assert early.get("from_holder") == b"1"
    early.set("k", "after")
    assert early.add("n", 2) == 2
    assert FileStore(world.path, timeout=T).get("k") == b"after"


@pytest.mark.timeout(60)
def test_a_killed_holder_releases_the_lock_and_its_write_never_happened(world: World) -> None:
    _, err = timed(lambda: world.early.set("k", "v"))
    check_names_holder(err, world.holder.pid)
    assert world.holder.kill() == -signal.SIGKILL
    world.early.set("k", "v")  # the kernel dropped the dead holder's lock
    assert FileStore(world.path, timeout=T).get("k") == b"v"
    assert not world.early.check(["from_holder"]), "the holder was killed before it wrote"


def _writer_under_stopped_holder(early: FileStore, rank: int, pid: int) -> float:
    """Even ranks open a new handle, odd ranks write through the inherited one."""
    start = time.monotonic()
    try:
        if rank % 2:
            early.set(f"r{rank}", "v")
        else:
            FileStore(early.path, timeout=T)
    except StoreTimeout as err:
        if f"pid {pid}" not in str(err):
            raise
        return time.monotonic() - start
    raise AssertionError("a write succeeded while the lock holder was stopped")


@pytest.mark.timeout(120)
def test_load_eight_writer_processes_behind_a_stopped_holder(world: World) -> None:
    path, holder = world.path, world.holder
    started = time.monotonic()
    times = process_parties(_writer_under_stopped_holder, 8, (world.early, holder.pid))
    wall = time.monotonic() - started
    print(
        f"\n8 processes (4 writing, 4 opening), timeout {T} s, holder stopped: StoreTimeout "
        f"after median "
        f"{statistics.median(times):.3f} s, max {max(times):.3f} s; all 8 in {wall:.2f} s"
    )
    assert all(T <= t < T + SLACK for t in times), times
    assert holder.resume() == 0
    # The holder continued: all eight can now write, concurrently.
    assert process_parties(_write_after, 8, (str(path),)) == list(range(8))
    assert FileStore(path).get("from_holder") == b"1"


def _write_after(path: str, rank: int) -> int:
    store = FileStore(path, timeout=T * 20)
    store.set(f"r{rank}", "v")
    store.close()
    return rank


@pytest.mark.timeout(60)
def test_threads_sharing_a_handle_each_time_out_by_their_own_deadline(world: World) -> None:
    """The second thread first waits for the handle's mutex, held by the first one's lock wait:
    its deadline counts from its call, so it ends by T too (not T for the mutex, then T again
    for the file lock)."""
    outcomes: list[tuple[float, BaseException | None]] = []

    def write(key: str) -> None:
        start = time.monotonic()
        try:
            world.early.set(key, "v")
        except BaseException as exc:
            outcomes.append((time.monotonic() - start, exc))
        else:
            outcomes.append((time.monotonic() - start, None))

    threads = [threading.Thread(target=write, args=(f"t{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(outcomes) == 2
    for elapsed, exc in outcomes:
        assert isinstance(exc, StoreTimeout), exc
        assert T <= elapsed < 2 * T - 0.1, f"{elapsed:.3f} s: waited out two timeouts?"
    assert any(f"pid {world.holder.pid}" in str(exc) for _, exc in outcomes)

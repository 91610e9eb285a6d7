"""Kill FileStore writers mid-stream: no reader may ever see a corrupt value.

Every value written is a run of self-checking chunks ``wid.seq.crc;``, so a reader can tell a
whole value from a torn or mixed one.  Writers are SIGKILLed at arbitrary points (large values
make a kill inside ``write`` likely); a reader process validates everything it reads meanwhile.
"""

from __future__ import annotations

import os
import random
import signal
import zlib
from pathlib import Path
from typing import Any

import multiprocess
import pytest

from storeharness.stores import FileStore, QueueEmpty
from storeharness.stores._filelog import Log

# Writers fork from a small forkserver, not from the test worker: forking a worker that has
# imported torch (the interop tests) costs far more per child here, and we fork 200 of them.
FORK = multiprocess.get_context("forkserver")
KILLS = 200
KEYS = [f"k{i}" for i in range(6)]


def chunk(wid: int, seq: int) -> bytes:
    body = f"{wid}.{seq}".encode()
    return body + b"." + f"{zlib.crc32(body):08x}".encode() + b";"


def valid(value: bytes) -> bool:
    if not value.endswith(b";"):
        return False
    for piece in value[:-1].split(b";"):
        parts = piece.split(b".")
        if len(parts) != 3 or f"{zlib.crc32(parts[0] + b'.' + parts[1]):08x}".encode() != parts[2]:
            return False
    return True


def _writer(path: str, wid: int, ready: Any, warmup: int) -> None:
    store = FileStore(path)
    rng = random.Random(wid)
    seq = 0
    while True:
        seq += 1
        token = chunk(wid, seq)
        op = rng.randrange(6)
        key = rng.choice(KEYS)
        if op == 0:
            store.set(key, token * rng.choice([1, 8, 16384]))  # up to ~256 KiB
        elif op == 1:
            store.append(key, token)
        elif op == 2:
            store.multi_set([key, rng.choice(KEYS)], [token, token * 64])
        elif op == 3:
            store.add("counter", 1)
        elif op == 4:
            store.queue_push("q", token * rng.choice([1, 4096]))
        else:
            store.compare_set(key, b"", token)
        if seq == warmup:
            ready.set()


def _reader(path: str, stop: Any, conn: Any) -> None:
    store = FileStore(path)
    reads = corrupt = 0
    examples: list[bytes] = []
    while not stop.is_set():
        for key in KEYS:
            if store.check([key]):
                value = store.get(key)
                reads += 1
                if not valid(value):
                    corrupt += 1
                    examples.append(value[:80])
        try:
            value = store.queue_pop("q", block=False)
            reads += 1
            if not valid(value):
                corrupt += 1
                examples.append(value[:80])
        except QueueEmpty:
            pass
        if store.check(["counter"]):
            counter = store.get("counter")
            reads += 1
            if not counter.isdigit():
                corrupt += 1
                examples.append(counter[:80])
    conn.send((reads, corrupt, examples[:5]))


def _torn_tail(path: str) -> bool:
    log = Log(path)
    try:
        log.sync()
        return log.offset != os.path.getsize(path)
    finally:
        log.close()


@pytest.mark.timeout(600)
def test_killed_writers_never_corrupt_reads(tmp_path: Path) -> None:
    path = str(tmp_path / "fs")
    FileStore(path).set("k0", chunk(0, 0))
    stop = FORK.Event()
    results, sink = FORK.Pipe(duplex=False)
    reader = FORK.Process(target=_reader, args=(path, stop, sink), daemon=True)
    reader.start()
    rng = random.Random(1234)
    torn = 0
    try:
        for wid in range(1, KILLS + 1):
            ready = FORK.Event()
            writer = FORK.Process(
                target=_writer, args=(path, wid, ready, rng.randint(1, 40)), daemon=True
            )
            writer.start()
            assert ready.wait(30), f"writer {wid} made no progress"
            os.kill(writer.pid, signal.SIGKILL)
            writer.join(30)
            assert writer.exitcode == -signal.SIGKILL
            torn += _torn_tail(path)
    finally:
        stop.set()
    assert results.poll(60), "reader did not report"
    reads, corrupt, examples = results.recv()
    reader.join(30)
    survivor = FileStore(path)  # replays the whole log and repairs the tail on its first write
    survivor.set("final", chunk(0, 1))
    values = [survivor.get(k) for k in KEYS if survivor.check([k])]
    print(f"\n{KILLS} kills, {torn} left a torn record, {reads} reads checked, {corrupt} corrupt")
    assert corrupt == 0, f"{corrupt} corrupt reads, e.g. {examples}"
    assert reads > KILLS, "the reader barely ran"
    assert all(valid(v) for v in values)
    assert not _torn_tail(path)

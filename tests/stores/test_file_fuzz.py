"""Fuzz: FileStore logs holding a record with valid checksums around random content.

Every public operation, on a handle that met the record lock-free and on a new handle, either
works or raises ``StoreCorrupt`` naming the record's offset: never another exception, never a
hang, and the log is never truncated.
"""

from __future__ import annotations

import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from storeharness.stores import FileStore, StoreCorrupt
from storeharness.stores._fileformat import (
    MAGIC,
    MAGIC_V1,
    OP_APPEND,
    OP_DELETE,
    OP_META,
    OP_QPOP,
    OP_QPUSH,
    OP_SET,
    encode,
    encode_v1,
)

OPS = [OP_SET, OP_DELETE, OP_APPEND, OP_QPUSH, OP_QPOP, OP_META]
KEYS = [b"k", b"q", b"refcount", b"cleanup", b"\xff\xfe", b""]
VALUES = [b"", b"1", b"-3", b"12345678901234567890", b"x" * 9, b"\x80"]

# Our own keys are longer than any key the fuzzer makes, so its records cannot touch them.
MINE = "fuzz-own-key-"

entries = st.tuples(
    st.one_of(st.sampled_from(OPS), st.integers(0, 255)),
    st.one_of(st.sampled_from(KEYS), st.binary(max_size=8)),
    st.one_of(st.sampled_from(VALUES), st.binary(max_size=8)),
    st.one_of(st.just(0), st.integers(-3, 3), st.integers(0, 2**32 - 1)),  # key_len error
)
prefix_records = st.lists(
    st.tuples(st.sampled_from([OP_SET, OP_QPUSH, OP_APPEND]), st.sampled_from(["k", "q"])),
    max_size=4,
)


def entry_bytes(op: int, key: bytes, value: bytes, delta: int) -> bytes:
    klen = max(0, min(2**32 - 1, len(key) + delta)) if delta < 2**31 else delta
    return struct.pack("<BII", op, klen, len(value)) + key + value


def hostile(version: int, body_entries: list[tuple[int, bytes, bytes, int]], junk: bytes) -> bytes:
    """One record whose checksums are valid, whatever its content."""
    if version == 1:  # a v1 record is one entry whose lengths frame it
        op, key, value, _ = body_entries[0] if body_entries else (OP_SET, b"", b"", 0)
        body = struct.pack("<BII", op & 0xFF, len(key), len(value)) + key + value
        return struct.pack("<I", zlib.crc32(body)) + body
    body = b"".join(entry_bytes(*e) for e in body_entries) + junk
    head = struct.pack("<QI", len(body), zlib.crc32(body))
    return head + struct.pack("<I", zlib.crc32(head)) + body


def run_every_operation(path: Path, store: FileStore, at: int) -> list[str]:
    """Each call works or raises StoreCorrupt at ``at``; returns the names that worked."""
    mine = [f"{MINE}{i}" for i in range(4)]
    calls: list[tuple[str, Callable[[], object]]] = [
        ("check", lambda: store.check(["k"])),
        ("num_keys", store.num_keys),
        ("list_keys", store.list_keys),
        ("queue_len", lambda: store.queue_len("q")),
        ("set", lambda: store.set(mine[0], "1")),
        ("get", lambda: store.get(mine[0]) == b"1" or pytest.fail("get lost the set")),
        ("add", lambda: store.add(mine[1], 2) == 2 or pytest.fail("add miscounted")),
        ("compare_set", lambda: store.compare_set(mine[0], "1", "2")),
        ("append", lambda: store.append(mine[0], "3")),
        ("multi_set", lambda: store.multi_set(mine[2:], ["a", "b"])),
        ("multi_get", lambda: store.multi_get(mine[2:]) == [b"a", b"b"] or pytest.fail("mget")),
        ("wait", lambda: store.wait(mine[2:])),
        ("delete_key", lambda: store.delete_key(mine[0])),
        ("queue_push", lambda: store.queue_push(mine[3], "v")),
        ("queue_pop", lambda: store.queue_pop(mine[3], block=False) == b"v" or pytest.fail("pop")),
        ("new handle", lambda: FileStore(path, timeout=0.05).close()),
        ("close", store.close),
    ]
    worked = []
    for name, call in calls:
        try:
            call()
        except StoreCorrupt as err:
            assert err.offset == at, f"{name}: {err}"
            assert f"corrupt at byte {at}:" in str(err)
            if name == "close":
                store._log.close()
        else:
            worked.append(name)
    return worked


@pytest.mark.timeout(300)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from([1, 2]),
    before=prefix_records,
    body=st.lists(entries, max_size=4),
    junk=st.one_of(st.just(b""), st.binary(max_size=5)),
    after=st.booleans(),
)
def test_hostile_records_work_or_raise_store_corrupt(
    version: int,
    before: list[tuple[int, str]],
    body: list[tuple[int, bytes, bytes, int]],
    junk: bytes,
    after: bool,
) -> None:
    encoder = encode_v1 if version == 1 else encode
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fs"
        records = [(op, key, b"v") for op, key in before]
        path.write_bytes(
            (MAGIC_V1 if version == 1 else MAGIC) + (encoder(records) if records else b"")
        )
        store = FileStore(path, timeout=0.05)  # replays the sane part; meets the rest lock-free
        at = path.stat().st_size
        tail = hostile(version, body, junk)
        if after:
            tail += encoder([(OP_SET, "k", b"later")])
        with open(path, "ab") as f:
            f.write(tail)
        original = path.read_bytes()
        worked = run_every_operation(path, store, at)
        assert path.read_bytes()[: len(original)] == original, "the log was truncated"
        if "set" in worked:  # the record was sane after all: everything must have worked
            assert len(worked) == 17, worked
        event("sane record: everything worked" if "set" in worked else "StoreCorrupt")

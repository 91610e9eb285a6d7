"""FileStore specifics: reference counting, torn tails, incremental replay, bad files, fork."""

from __future__ import annotations

import os
from pathlib import Path

import multiprocess
import pytest

from storeharness.harness._parties import process_parties
from storeharness.stores import FileStore, StoreBroken, StoreCorrupt, StoreError
from storeharness.stores._fileformat import MAGIC, OP_SET, encode

FORK = multiprocess.get_context("fork")


def test_refcount_world_size_1_two_instances(tmp_path: Path) -> None:
    path = tmp_path / "fs"
    a, b = FileStore(path, 1), FileStore(path, 1)
    a.close()
    assert path.exists(), "removed while a participant is still open"
    b.close()
    assert not path.exists()


def test_refcount_removed_by_garbage_collection(tmp_path: Path) -> None:
    path = tmp_path / "fs"
    a, b = FileStore(path, 2), FileStore(path, 2)
    del a
    assert path.exists()
    del b
    assert not path.exists()


@pytest.mark.parametrize(("world_size", "handles"), [(-1, 2), (3, 1)])
def test_file_kept(tmp_path: Path, world_size: int, handles: int) -> None:
    path = tmp_path / "fs"
    stores = [FileStore(path, world_size) for _ in range(handles)]
    for s in stores:
        s.close()
    assert path.exists()


def test_clone_is_a_participant(tmp_path: Path) -> None:
    path = tmp_path / "fs"
    a = FileStore(path, 2, timeout=7)
    c = a.clone()
    assert c.timeout.total_seconds() == 7
    a.close()
    assert path.exists()
    c.close()
    assert not path.exists()


def _adder(opener: object, rank: int) -> int:
    s = FileStore(str(opener), 8)
    for _ in range(100):
        s.add("c", 1)
    s.barrier("done", 8, 60)
    total = s.add("c", 0)
    s.close()
    return total


def test_eight_processes_hundred_adds_then_file_removed(tmp_path: Path) -> None:
    path = tmp_path / "fs"
    assert process_parties(_adder, 8, (str(path),)) == [800] * 8
    assert not path.exists(), "the last of 8 participants removes the file"


def test_missing_directory_fails_fast_and_names_it(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        FileStore(tmp_path / "no" / "such" / "fs")


def test_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fs"
    path.write_bytes(b"\x09\x00\x00\x00refcount/\x01\x00\x00\x001")  # torch's format
    with pytest.raises(StoreBroken, match="not a storeharness FileStore log"):
        FileStore(path)


@pytest.mark.parametrize("bad", [0, "2", True])
def test_bad_world_size(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="world_size"):
        FileStore(tmp_path / "fs", bad)  # type: ignore[arg-type]


def test_torn_tail_at_every_byte_is_invisible_then_repaired(tmp_path: Path) -> None:
    path = tmp_path / "fs"
    store = FileStore(path)
    store.set("before", "ok")
    record = encode([(OP_SET, "torn", b"x" * 40)])
    for cut in range(1, len(record)):
        with open(path, "ab") as f:  # a writer that died after writing `cut` bytes
            f.write(record[:cut])
        reader = FileStore(path)
        assert not reader.check(["torn"]), f"torn record visible at cut {cut}"
        assert reader.get("before") == b"ok"
        reader.set(f"after{cut}", "v")  # a writer repairs the tail before appending
        assert store.get(f"after{cut}") == b"v"
        assert not store.check(["torn"])
        reader.close()
    assert path.read_bytes().startswith(MAGIC)
    fresh = FileStore(path)
    assert fresh.num_keys() == len(record)  # "before" + after1..after{n-1}
    assert fresh._log.offset == path.stat().st_size, "torn bytes left in the file"


def test_corruption_inside_the_log_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "fs"
    store = FileStore(path)
    store.set("a", "1")
    store.set("b", "2")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip a bit in the last record's value
    path.write_bytes(bytes(data))
    fresh = FileStore.__new__(FileStore)
    with pytest.raises(StoreCorrupt, match="corrupt at byte"):
        FileStore.__init__(fresh, path)


def test_replay_reads_only_new_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fs"
    reader, writer = FileStore(path), FileStore(path)
    for i in range(2000):
        writer.set(f"k{i}", "v" * 50)
    assert reader.get("k0") == b"v" * 50
    size = path.stat().st_size
    read_bytes: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        read_bytes.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", counting_pread)  # the module's os is this os
    for _ in range(100):
        assert reader.get("k1999") == b"v" * 50
    assert sum(read_bytes) == 0, "unchanged file was read again"
    writer.set("new", "x")
    assert reader.get("new") == b"x"
    assert 0 < sum(read_bytes) < 100, f"read {sum(read_bytes)} bytes of a {size}-byte file"


def _use_inherited(store: FileStore, conn: object) -> None:
    store.set("from_child", "1")
    store.close()  # an inherited handle never joined: closing it must not drop a reference
    conn.send(store.closed)  # type: ignore[attr-defined]


def test_handle_inherited_across_fork(tmp_path: Path) -> None:
    path = tmp_path / "fs"
    store = FileStore(path, 1)
    reader, writer = FORK.Pipe(duplex=False)
    child = FORK.Process(target=_use_inherited, args=(store, writer))
    child.start()
    assert reader.recv() is True
    child.join(30)
    assert child.exitcode == 0
    assert path.exists(), "child's close of an inherited handle removed the file"
    assert store.get("from_child") == b"1"
    store.close()
    assert not path.exists()

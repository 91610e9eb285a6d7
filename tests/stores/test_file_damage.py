"""A FileStore log damaged in the middle, a torn multi-record operation, hostile records, v1 files.

Only the last record of a log can be torn (a writer killed mid-``write``); the next writer
truncates it.  Anything else that does not decode is damage: ``StoreCorrupt`` naming the
record's byte offset, from readers and writers alike, and the file is never truncated.
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import multiprocess
import pytest

from storeharness.stores import FileStore, StoreCorrupt, StoreError
from storeharness.stores._fileformat import MAGIC_V1, OP_META, encode_v1
from storeharness.stores._filelog import OP_DELETE, OP_QPOP, OP_QPUSH, OP_SET, encode

FORK = multiprocess.get_context("forkserver")


def offsets_of_three(path: Path) -> tuple[FileStore, FileStore, int, int]:
    """A reader that has applied up to ``a``, a writer; records a, b, c; b's offset and c's."""
    writer = FileStore(path)
    writer.set("a", "1")
    reader = FileStore(path)
    assert reader.get("a") == b"1"
    b_at = path.stat().st_size
    writer.set("b", "2" * 30)
    c_at = path.stat().st_size
    writer.set("c", "3")
    return reader, writer, b_at, c_at


# Damage to b's length field: u64 body_len at the start of the record's header.
LENGTH_DAMAGE: dict[str, Callable[[int], int]] = {
    "past_eof": lambda n: n + 10_000,
    "one_more": lambda n: n + 1,
    "one_less": lambda n: n - 1,
    "into_next": lambda n: n + 20,
    "zero": lambda n: 0,
}


@pytest.mark.parametrize("damage", LENGTH_DAMAGE)
def test_damaged_length_in_the_middle_raises_and_truncates_nothing(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "fs"
    reader, writer, b_at, _ = offsets_of_three(path)
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack_from("<Q", data, b_at)
    struct.pack_into("<Q", data, b_at, LENGTH_DAMAGE[damage](length))
    path.write_bytes(bytes(data))
    # A lock-free reader meets it: it must not stop there silently.
    for read in (lambda: reader.get("c"), lambda: reader.check(["c"]), reader.num_keys):
        with pytest.raises(StoreCorrupt, match=f"corrupt at byte {b_at}:") as info:
            read()
        assert info.value.offset == b_at
    # Writing (from a handle that has not read past b) and new handles too; no truncation.
    with pytest.raises(StoreCorrupt, match=f"corrupt at byte {b_at}:"):
        reader.set("d", "4")
    with pytest.raises(StoreCorrupt, match=f"corrupt at byte {b_at}:"):
        FileStore(path)
    assert path.read_bytes() == bytes(data), "the damaged log was modified"
    abandon(reader, writer)


def abandon(*stores: FileStore) -> None:
    """Drop handles on a corrupt file without leaving (their close would raise StoreCorrupt)."""
    for store in stores:
        store._finalizer.detach()
        store._log.close()


def test_damaged_last_record_header_is_damage_not_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "fs"
    reader, writer, _, c_at = offsets_of_three(path)
    data = bytearray(path.read_bytes())
    data[c_at + 3] ^= 0x40  # a high byte of c's length: the record now "runs past the end"
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match=f"byte {c_at}: record header checksum mismatch"):
        FileStore(path)
    assert path.read_bytes() == bytes(data)
    abandon(reader, writer)


def multi_record(n: int = 3) -> bytes:
    return encode([(OP_SET, f"m{i}", f"value-{i}".encode() * 3) for i in range(n)])


def test_torn_multi_set_at_every_byte_is_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "fs"
    store = FileStore(path)
    store.set("before", "ok")
    blob = multi_record()
    keys = ["m0", "m1", "m2"]
    for cut in range(1, len(blob) + 1):
        with open(path, "ab") as f:  # a multi_set whose writer died after `cut` bytes
            f.write(blob[:cut])
        seen = [store.check([k]) for k in keys]  # a lock-free reader
        assert seen in ([False] * 3, [True] * 3), f"cut {cut}: partly visible {seen}"
        assert all(seen) == (cut == len(blob)), f"cut {cut}"
        other = FileStore(path)  # joining writes: a torn tail is truncated, a whole record kept
        assert [other.check([k]) for k in keys] == seen, f"cut {cut}"
        assert other._log.offset == path.stat().st_size, f"cut {cut}: torn bytes left"
        if all(seen):
            other.multi_set(keys, ["", "", ""])
            for k in keys:
                other.delete_key(k)
        other.close()
    assert store.get("before") == b"ok"


def _multi_set_until_killed(path: str, cut: int) -> None:
    store = FileStore(path)
    size = os.path.getsize(path)
    # The file may grow only `cut` bytes: write(2) stops there and the next write delivers
    # SIGXFSZ, whose default action kills the process inside multi_set.
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python starts with it ignored
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + cut, resource.RLIM_INFINITY))
    store.multi_set(["m0", "m1", "m2"], [f"value-{i}".encode() * 3 for i in range(3)])
    os._exit(3)  # not reached when cut < the record's length


@pytest.mark.timeout(120)
def test_multi_set_killed_inside_its_write_commits_nothing(tmp_path: Path) -> None:
    path = tmp_path / "fs"
    store = FileStore(path)
    store.set("before", "ok")
    record = len(multi_record())
    for cut in sorted({1, 8, 15, 16, 17, 20, record // 2, record - 10, record - 1}):
        child = FORK.Process(target=_multi_set_until_killed, args=(str(path), cut))
        child.start()
        child.join(60)
        assert child.exitcode == -signal.SIGXFSZ, f"cut {cut}: exit {child.exitcode}"
        assert [store.check([k]) for k in ("m0", "m1", "m2")] == [False] * 3, f"cut {cut}"
        store.set(f"after{cut}", "v")  # repairs the torn tail
        assert FileStore(path).get(f"after{cut}") == b"v"
    assert FileStore(path).get("before") == b"ok"


def frame_v2(body: bytes) -> bytes:
    head = struct.pack("<QI", len(body), zlib.crc32(body))
    return head + struct.pack("<I", zlib.crc32(head)) + body


def entry(op: int, key: bytes, value: bytes, klen: int | None = None) -> bytes:
    return struct.pack("<BII", op, len(key) if klen is None else klen, len(value)) + key + value


HOSTILE = {
    "unknown_op": entry(99, b"k", b"v"),
    "op_zero": entry(0, b"k", b"v"),
    "key_len_past_record": entry(OP_SET, b"k", b"v", klen=1000),
    "entry_cut_short": entry(OP_SET, b"k", b"v") + b"\x01\x00",
    "meta_not_decimal": entry(OP_META, b"refcount", b"\xff\xfe"),
    "meta_unknown_key": entry(OP_META, b"\xc3\x28", b"1"),
    "pop_of_empty_queue": entry(OP_QPOP, b"q", b""),
    "pop_more_than_pushed": entry(OP_QPUSH, b"q", b"x") + entry(OP_QPOP, b"q", b"") * 2,
    "delete_with_value": entry(OP_DELETE, b"k", b"junk"),
}


def fits_v1(body: bytes) -> bool:
    """A v1 record is one entry whose lengths are its frame: no room for inconsistent ones."""
    _, klen, vlen = struct.unpack_from("<BII", body)
    return bool(9 + klen + vlen == len(body))


@pytest.mark.parametrize(
    ("name", "version"),
    [(name, 2) for name in HOSTILE]
    + [(name, 1) for name, body in HOSTILE.items() if fits_v1(body)],
)
def test_hostile_record_with_valid_crc_raises_corrupt_naming_its_offset(
    tmp_path: Path, name: str, version: int
) -> None:
    body = HOSTILE[name]
    if version == 1:
        record = struct.pack("<I", zlib.crc32(body)) + body
        path = tmp_path / "fs"
        path.write_bytes(MAGIC_V1 + encode_v1([(OP_SET, "a", b"1")]))
    else:
        record = frame_v2(body)
        path = tmp_path / "fs"
        FileStore(path).set("a", "1")
    reader = FileStore(path)
    at = path.stat().st_size
    with open(path, "ab") as f:
        f.write(record)
        later = [(OP_SET, "later", b"1")]
        f.write(encode_v1(later) if version == 1 else encode(later))
    data = path.read_bytes()
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: reader.get("a"),
        "check": lambda: reader.check(["a"]),
        "list_keys": reader.list_keys,
        "queue_len": lambda: reader.queue_len("q"),
        "set": lambda: reader.set("x", "1"),
        "add": lambda: reader.add("n", 1),
        "new handle": lambda: FileStore(path),
    }
    for call_name, call in calls.items():
        with pytest.raises(StoreCorrupt) as info:
            call()
        assert info.value.offset == at, call_name
        assert f"corrupt at byte {at}" in str(info.value)
    assert path.read_bytes() == data, "the damaged log was modified"
    abandon(reader)


def test_version_1_files_are_read_and_appended_in_their_own_framing(tmp_path: Path) -> None:
    path = tmp_path / "fs"
    legacy = [(OP_META, "refcount", b"1"), (OP_SET, "a", b"1"), (OP_QPUSH, "q", b"x")]
    path.write_bytes(MAGIC_V1 + encode_v1(legacy))
    store = FileStore(path)
    assert store.get("a") == b"1" and store.queue_len("q") == 1
    before = path.stat().st_size
    store.set("b", "2")
    tail = path.read_bytes()[before:]
    # The appended record is v1's: crc32(body) | op | key_len | value_len | key | value.
    assert tail == encode_v1([(OP_SET, "b", b"2")])
    assert FileStore(path).get("b") == b"2"


def test_a_reader_racing_a_tail_repair_confirms_under_the_lock_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lock-free, a reader can read a torn tail's bytes, then the repairer's new record: the
    mix fails its checksum.  It must re-read under the lock, not report corruption."""
    path = tmp_path / "fs"
    writer = FileStore(path)
    reader = FileStore(path, timeout=5)  # one that stopped at the mix would time out
    at = path.stat().st_size
    writer.set("k", "fresh")
    real_pread = os.pread
    mixed = bytearray(real_pread(reader._log.fd, 1 << 16, at))
    mixed[5] ^= 0xFF  # what the first read saw: a torn record's header bytes
    served: list[int] = []

    def racing_pread(fd: int, n: int, offset: int) -> bytes:
        if not served and offset == at:
            served.append(offset)
            return bytes(mixed)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", racing_pread)
    assert reader.get("k") == b"fresh"
    assert served == [at], "the race was not staged"


def test_store_corrupt_is_a_store_error_and_pickles_whole() -> None:
    err = StoreCorrupt("/x/fs", 123, "record checksum mismatch")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is StoreCorrupt and isinstance(back, StoreError)
    assert (back.path, back.offset, back.reason) == ("/x/fs", 123, "record checksum mismatch")
    assert str(back) == str(err) and "corrupt at byte 123: record checksum mismatch" in str(err)

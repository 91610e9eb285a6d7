"""Recording: a store wrapper that writes every operation of a rank to a memory-mapped file.

Each rank records into its own file (``rank-N.history`` beside its log).  A record is a pickled
tuple behind a 4-byte length, written into a shared memory map: no system call per operation,
and what a rank wrote survives its being SIGKILLed (the pages belong to the file).  The length
goes in last, so a record cut short by a kill reads as the end of the file.  The invocation is
written before the operation starts, so an operation a rank never finished shows up as
*unknown* rather than vanishing.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from ...stores import QueueEmpty, Store, StoreTimeout
from ...stores._types import as_key, as_keys, as_value
from ...stores.conformance._model import QUEUE_EMPTY, VALUE_ERROR
from ._ops import TIMEOUT, UNKNOWN, History, Op

__all__ = ["Recorder", "RecordingStore", "load", "rebase"]

_LEN = struct.Struct("<I")
_INITIAL = 1 << 20
_DUMPS = pickle.dumps
_NOW = time.monotonic_ns


class Recorder:
    """Appends records to one rank's memory-mapped history file."""

    def __init__(self, path: str | os.PathLike[str], rank: int) -> None:
        self.rank = rank
        self.path = str(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self._fd, _INITIAL)
        self._map = mmap.mmap(self._fd, _INITIAL)
        self._pos = 0
        self._seq = 0
        self._clients = 0

    def new_client(self) -> int:
        self._clients += 1
        return self._clients - 1

    def _write(self, record: tuple[Any, ...]) -> None:
        data = _DUMPS(record, 5)
        pos, size = self._pos, len(data)
        end = pos + 4 + size
        if end + 4 > len(self._map):
            self._map.resize(max(2 * len(self._map), end + 4 + _INITIAL))
        self._map[pos + 4 : end] = data
        self._map[pos : pos + 4] = _LEN.pack(size)  # last: a record is whole once it has a length
        self._pos = end

    def invoke(self, client: int, name: str, keys: tuple[str, ...], args: tuple[Any, ...]) -> int:
        seq = self._seq
        self._seq += 1
        self._write((seq, client, name, keys, args, _NOW()))
        return seq

    def complete(self, seq: int, result: Any, error: str = "") -> None:
        self._write((seq, _NOW(), result, error))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._map.flush()
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _records(data: bytes) -> Iterator[tuple[Any, ...]]:
    """The records of a history file's bytes, in order, up to its end mark (or a torn tail)."""
    pos = 0
    while pos + 4 <= len(data):
        (size,) = _LEN.unpack_from(data, pos)
        if size == 0 or pos + 4 + size > len(data):
            return
        yield pickle.loads(data[pos + 4 : pos + 4 + size])
        pos += 4 + size


def read_file(path: str | os.PathLike[str], rank: int) -> list[Op]:
    """The operations in one rank's history file (those never completed as unknown)."""
    data = Path(path).read_bytes()
    calls: dict[int, tuple[Any, ...]] = {}
    done: dict[int, tuple[int, Any, str]] = {}
    for record in _records(data):
        if len(record) == 6:
            calls[record[0]] = record
        else:
            done[record[0]] = (record[1], record[2], record[3])
    ops = []
    for seq, (_, client, name, keys, args, call) in sorted(calls.items()):
        ret, result, error = done.get(seq, (None, UNKNOWN, "the rank never finished it"))
        if result == UNKNOWN:
            ret = None
        ops.append(Op(seq, rank, client, name, keys, args, call, ret, result, error))
    return ops


def rebase(data: bytes, shift_ns: int, widen_ns: int = 0) -> bytes:
    """A history file's bytes moved onto another clock: every time minus ``shift_ns`` (the
    recording host's clock minus ours), each operation widened by ``widen_ns`` on both sides
    (the clocks' uncertainty), so no order the clocks cannot tell is taken as known."""
    out = bytearray()
    for record in _records(data):
        if len(record) == 6:  # an invocation: (seq, client, name, keys, args, at)
            record = (*record[:5], record[5] - shift_ns - widen_ns)
        else:  # a completion: (seq, at, result, error)
            record = (record[0], record[1] - shift_ns + widen_ns, *record[2:])
        blob = _DUMPS(record, 5)
        out += _LEN.pack(len(blob)) + blob
    return bytes(out + _LEN.pack(0))


def load(
    files: Sequence[tuple[int, str]], t0: int = 0, events: Sequence[tuple[int, str]] = ()
) -> History:
    """The history of a run from each rank's file (``(rank, path)``; missing files skipped)."""
    ops: list[Op] = []
    for rank, path in files:
        if os.path.exists(path):
            ops += read_file(path, rank)
    return History.build(ops, t0, events)


def _outcome(name: str, exc: BaseException) -> tuple[Any, str]:
    """What an exception says about the operation: a modelled error, or unknown."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, StoreTimeout):
        return TIMEOUT, text
    if isinstance(exc, QueueEmpty) and name == "queue_pop":
        return QUEUE_EMPTY, text
    if isinstance(exc, ValueError) and name == "add":
        return VALUE_ERROR, text
    return UNKNOWN, text


class RecordingStore(Store):
    """Forwards every operation to ``inner`` and records it (its clones record too)."""

    def __init__(self, inner: Store, recorder: Recorder) -> None:
        self._inner = inner
        self._rec = recorder
        self._client = recorder.new_client()
        try:
            self._atomic = bool(inner.has_extended_api())
        except Exception:
            self._atomic = False

    def __repr__(self) -> str:
        return f"RecordingStore({self._inner!r})"

    @property
    def capabilities(self) -> Any:  # type: ignore[override]
        return self._inner.capabilities

    def _do(
        self, name: str, keys: tuple[str, ...], args: tuple[Any, ...], call: Callable[[], Any]
    ) -> Any:
        seq = self._rec.invoke(self._client, name, keys, args)
        try:
            result = call()
        except BaseException as exc:
            outcome, text = _outcome(name, exc)
            self._rec.complete(seq, outcome, text)
            raise
        self._rec.complete(seq, result)
        return result

    # -------------------------------------------------------------- the recorded operations

    def set(self, key: Any, value: Any) -> None:
        k, v = as_key(key), as_value(value)
        self._do("set", (k,), (v,), lambda: self._inner.set(k, v))

    def get(self, key: Any) -> bytes:
        k = as_key(key)
        return self._do("get", (k,), (), lambda: self._inner.get(k))  # type: ignore[no-any-return]

    def add(self, key: Any, amount: int) -> int:
        k = as_key(key)
        return self._do("add", (k,), (amount,), lambda: self._inner.add(k, amount))  # type: ignore[no-any-return]

    def compare_set(self, key: Any, expected: Any, desired: Any) -> bytes:
        k, e, d = as_key(key), as_value(expected), as_value(desired)
        return self._do("compare_set", (k,), (e, d), lambda: self._inner.compare_set(k, e, d))  # type: ignore[no-any-return]

    def wait(self, keys: Sequence[Any], timeout: Any = None) -> None:
        ks = tuple(as_keys(keys))
        shown = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        self._do("wait", ks, (shown,), lambda: self._inner.wait(list(ks), timeout))

    def check(self, keys: Sequence[Any]) -> bool:
        ks = tuple(as_keys(keys))
        return self._do("check", ks, (), lambda: self._inner.check(list(ks)))  # type: ignore[no-any-return]

    def delete_key(self, key: Any) -> bool:
        k = as_key(key)
        return self._do("delete_key", (k,), (), lambda: self._inner.delete_key(k))  # type: ignore[no-any-return]

    def num_keys(self) -> int:
        return self._do("num_keys", (), (), self._inner.num_keys)  # type: ignore[no-any-return]

    def append(self, key: Any, value: Any) -> None:
        k, v = as_key(key), as_value(value)
        self._do("append", (k,), (v,), lambda: self._inner.append(k, v))

    def multi_get(self, keys: Sequence[Any]) -> list[bytes]:
        ks = tuple(as_keys(keys))
        got = self._do("multi_get", ks, (self._atomic,), lambda: self._inner.multi_get(list(ks)))
        return got  # type: ignore[no-any-return]

    def multi_set(self, keys: Sequence[Any], values: Sequence[Any]) -> None:
        ks, vs = self._pairs(keys, values)
        run = lambda: self._inner.multi_set(ks, vs)  # noqa: E731
        self._do("multi_set", tuple(ks), (tuple(vs), self._atomic), run)

    def queue_push(self, key: Any, value: Any) -> None:
        k, v = as_key(key), as_value(value)
        self._do("queue_push", (k,), (v,), lambda: self._inner.queue_push(k, v))

    def queue_pop(self, key: Any, block: bool = True) -> bytes:
        k = as_key(key)
        return self._do("queue_pop", (k,), (bool(block),), lambda: self._inner.queue_pop(k, block))  # type: ignore[no-any-return]

    def queue_len(self, key: Any) -> int:
        k = as_key(key)
        return self._do("queue_len", (k,), (), lambda: self._inner.queue_len(k))  # type: ignore[no-any-return]

    def list_keys(self) -> list[str]:
        return self._do("list_keys", (), (), self._inner.list_keys)  # type: ignore[no-any-return]

    def barrier(self, key: Any, world_size: int, timeout: Any = None) -> None:
        k = as_key(key)
        run = lambda: self._inner.barrier(k, world_size, timeout)  # noqa: E731
        self._do("barrier", (k,), (world_size,), run)

    # ------------------------------------------------------------------ forwarded as is

    def has_extended_api(self) -> bool:
        return self._inner.has_extended_api()

    @property
    def timeout(self) -> timedelta:
        return self._inner.timeout

    def set_timeout(self, timeout: Any) -> None:
        self._inner.set_timeout(timeout)

    def clone(self) -> Store:
        return RecordingStore(self._inner.clone(), self._rec)

    def close(self) -> None:
        self._inner.close()

    @property
    def closed(self) -> bool:
        return self._inner.closed

    def __getattr__(self, name: str) -> Any:  # a backend's own extras (port, path, ...)
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

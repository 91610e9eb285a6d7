"""The FileStore log: an append-only file of CRC-framed records, replayed incrementally.

File layout: the 8-byte magic ``SHFSLOG1``, then records::

    u32 crc32(body) | body = u8 op | u32 key_len | u32 value_len | key | value      (little-endian)

Why it is crash-consistent:

* Only a holder of the exclusive ``flock`` appends, one ``write`` per batch of records, so live
  writers never interleave.
* A writer killed mid-write leaves a *torn tail*: bytes after the last whole record.  Readers
  never apply a record unless its full length is present and its CRC matches, so a torn tail is
  invisible; the next writer (holding the lock, so no write is in flight) truncates it away
  before appending.  A CRC mismatch seen while holding the lock is real corruption and raises.
* Readers take no lock: a record whose write has returned is entirely in the file, and a record
  still being written is incomplete or fails its CRC, i.e. not yet there (it is not linearized
  until its writer returns), so reading stays one ``pread`` when nothing changed.

Each handle keeps the offset of the first byte it has not applied and reads only what is new.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar

from ._errors import StoreBroken, StoreError

__all__ = ["OP_APPEND", "OP_DELETE", "OP_META", "OP_QPOP", "OP_QPUSH", "OP_SET", "Log"]

MAGIC = b"SHFSLOG1"
OP_SET, OP_DELETE, OP_APPEND, OP_QPUSH, OP_QPOP, OP_META = 1, 2, 3, 4, 5, 6
_OPS = frozenset({OP_SET, OP_DELETE, OP_APPEND, OP_QPUSH, OP_QPOP, OP_META})

_CRC = struct.Struct("<I")
_BODY = struct.Struct("<BII")
_HEADER = _CRC.size + _BODY.size
_CHUNK = 1 << 16
_U32_MAX = 2**32 - 1

Record = tuple[int, str, bytes]
_T = TypeVar("_T")


def encode(records: Iterable[Record]) -> bytes:
    """Encode ``(op, key, value)`` records; raises ``StoreError`` past the u32 length limit."""
    out = bytearray()
    for op, key, value in records:
        kb = key.encode("utf-8", "surrogateescape")
        if len(kb) > _U32_MAX or len(value) > _U32_MAX:
            raise StoreError(
                f"FileStore: key or value of {max(len(kb), len(value))} bytes exceeds the "
                "4 GiB record limit"
            )
        body = _BODY.pack(op, len(kb), len(value)) + kb + value
        out += _CRC.pack(zlib.crc32(body))
        out += body
    return bytes(out)


class Log:
    """One handle's view of the shared log: an open fd, a replay offset and the replayed state.

    Not thread-safe by itself: ``mutex`` serialises the threads using this handle.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.mutex = threading.Lock()
        self.data: dict[str, bytes] = {}
        self.queues: dict[str, deque[bytes]] = {}
        self.meta: dict[str, int] = {}
        #: Sets of keys some blocked caller still misses; replay discards keys as they appear.
        self.observers: list[set[str]] = []
        self.offset = 0
        self.fd = self._open()

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except FileNotFoundError as exc:
            directory = os.path.dirname(os.path.abspath(self.path))
            raise StoreError(
                f"FileStore: cannot create {self.path!r}: directory {directory!r} does not "
                "exist (create it first; torch would block for its whole timeout here)"
            ) from exc
        except OSError as exc:
            raise StoreError(f"FileStore: cannot open {self.path!r}: {exc.strerror}") from exc

    def reopen_after_fork(self) -> None:
        """Give a forked child its own open file description (``flock`` is per description)."""
        os.close(self.fd)
        self.mutex = threading.Lock()
        self.fd = self._open()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # ----------------------------------------------------------------- replay

    def sync(self, exclusive: bool = False) -> None:
        """Apply every whole record past ``offset``.  With the lock held, repair a torn tail."""
        fd = self.fd
        start = self.offset
        buf = os.pread(fd, _CHUNK, start)
        if not buf:
            return
        view = memoryview(buf)
        pos = 0
        if start == 0:
            if len(buf) < len(MAGIC):
                return self._short_header(exclusive, buf)
            if buf[: len(MAGIC)] != MAGIC:
                raise StoreBroken(
                    f"FileStore: {self.path!r} is not a storeharness FileStore log "
                    f"(starts with {buf[:8]!r}); was it written by another program?",
                    path=self.path,
                )
            pos = len(MAGIC)
        while True:
            size = len(buf)
            if size - pos >= _HEADER:
                (crc,) = _CRC.unpack_from(buf, pos)
                op, klen, vlen = _BODY.unpack_from(buf, pos + 4)
                end = pos + _HEADER + klen + vlen
                if end <= size:
                    if zlib.crc32(view[pos + 4 : end]) != crc or op not in _OPS:
                        if exclusive:
                            raise StoreBroken(
                                f"FileStore: {self.path!r} is corrupt at byte {start + pos} "
                                "(record checksum mismatch)",
                                path=self.path,
                                offset=start + pos,
                            )
                        break  # a write in flight; it is not there yet
                    key = bytes(view[pos + _HEADER : pos + _HEADER + klen]).decode(
                        "utf-8", "surrogateescape"
                    )
                    self._apply(op, key, bytes(view[end - vlen : end]))
                    pos = end
                    continue
                need = end - size
            else:
                need = _HEADER - (size - pos)
            more = os.pread(fd, max(_CHUNK, need), start + size)
            if not more:
                break
            buf = buf[pos:] + more
            view = memoryview(buf)
            start += pos
            pos = 0
        self.offset = start + pos
        if exclusive and pos < len(buf):
            # Holding the lock, nobody is writing: the leftover is a dead writer's torn record.
            os.ftruncate(fd, self.offset)

    def _short_header(self, exclusive: bool, buf: bytes) -> None:
        if not MAGIC.startswith(buf):
            raise StoreBroken(
                f"FileStore: {self.path!r} is not a storeharness FileStore log", path=self.path
            )
        if exclusive:
            os.ftruncate(self.fd, 0)  # a creator died while writing the magic

    def _apply(self, op: int, key: str, value: bytes) -> None:
        if op == OP_SET:
            self.data[key] = value
        elif op == OP_APPEND:
            self.data[key] = self.data.get(key, b"") + value
        elif op == OP_DELETE:
            self.data.pop(key, None)
            return
        elif op == OP_QPUSH:
            line = self.queues.get(key)
            if line is None:
                self.queues[key] = line = deque()
            line.append(value)
        elif op == OP_QPOP:
            line = self.queues[key]
            line.popleft()
            if not line:
                del self.queues[key]
            return
        else:  # OP_META
            self.meta[key] = int(value)
            return
        if self.observers:
            for missing in self.observers:
                missing.discard(key)

    # ----------------------------------------------------------------- writing

    def transact(self, decide: Callable[[], tuple[list[Record], _T]]) -> _T:
        """Under the exclusive lock: replay to the end, ``decide`` what to append, append it.

        ``decide`` sees the up-to-date state and returns ``(records, result)``; the records are
        written in one ``write`` and applied locally.  Call with ``mutex`` held.
        """
        fd = self.fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            self.sync(exclusive=True)
            records, result = decide()
            if records:
                blob = encode(records)
                if self.offset == 0:
                    blob = MAGIC + blob
                written = os.write(fd, blob)
                while written < len(blob):  # short writes happen on full disks and signals
                    written += os.write(fd, blob[written:])
                self.offset += len(blob)
                for op, key, value in records:
                    self._apply(op, key, value)
            return result
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

"""The FileStore log: an append-only file of checksummed records, replayed incrementally.

The format is in ``_fileformat`` (version 2: one record per operation, a checksummed header).

Why it is crash-consistent:

* Only a holder of the exclusive ``flock`` appends, one record per operation in one ``write``,
  so live writers never interleave and an operation's entries commit together or not at all.
* A writer killed mid-write leaves a *torn tail*: a prefix of its record, at the end of the
  file.  Readers never apply a record unless its full length is present and its checksums hold,
  so a torn tail is invisible; the next writer (holding the lock, so no write is in flight)
  truncates it away before appending.  Hence only the last record can ever be torn.
* Anything else that does not decode (a header or body failing its CRC, a valid CRC around
  nonsense) is *damage*: ``StoreCorrupt`` naming the byte offset, raised by every call that
  reaches it, and nothing is truncated.  A lock-free reader that meets it first re-reads under a
  shared lock, since a torn-tail repair racing its reads can show it a mix of old and new bytes.
* Readers take no lock otherwise: a record whose write has returned is entirely in the file,
  and one still being written is incomplete (not linearized until its writer returns), so
  reading stays one ``pread`` when nothing changed.
* Locks are taken with a deadline (``_filelock``): a stopped holder makes writers, new handles
  and ``close`` raise ``StoreTimeout`` naming it, instead of blocking them forever.

Each handle keeps the offset of the first byte it has not applied and reads only what is new.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from ._errors import StoreBroken, StoreCorrupt, StoreError
from ._fileformat import (
    MAGIC,
    MAGIC_V1,
    OP_APPEND,
    OP_DELETE,
    OP_META,
    OP_QPOP,
    OP_QPUSH,
    OP_SET,
    V1,
    V2,
    Damage,
    Framing,
    Record,
    encode,
)
from ._filelock import acquire, release

__all__ = [
    "OP_APPEND",
    "OP_DELETE",
    "OP_META",
    "OP_QPOP",
    "OP_QPUSH",
    "OP_SET",
    "Log",
    "Record",
    "encode",
]

_CHUNK = 1 << 16
_T = TypeVar("_T")

# How ``_replay`` may treat what it reads: lock-free, under a shared lock, or as the writer.
READ, SHARED, EXCLUSIVE = 0, 1, 2


class Log:
    """One handle's view of the shared log: an open fd, a replay offset and the replayed state.

    Not thread-safe by itself: ``mutex`` serialises the threads using this handle.  ``timeout``
    (seconds, 0 = no limit) bounds the lock a reader takes to confirm damage.
    """

    def __init__(self, path: str, timeout: float = 0.0) -> None:
        self.path = path
        self.timeout = timeout
        self.mutex = threading.Lock()
        self.data: dict[str, bytes] = {}
        self.queues: dict[str, deque[bytes]] = {}
        self.meta: dict[str, int] = {}
        #: Sets of keys some blocked caller still misses; replay discards keys as they appear.
        self.observers: list[set[str]] = []
        self.offset = 0
        self.framing: Framing = V2
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

    def lock(self, exclusive: bool, deadline: float | None) -> None:
        """``flock`` this handle's file by ``deadline``, else ``_filelock.LockBusy``."""
        acquire(self.fd, exclusive, deadline, self.path)

    def unlock(self) -> None:
        release(self.fd)

    # ----------------------------------------------------------------- replay

    def sync(self, mode: int = READ) -> None:
        """Apply every whole record past ``offset``; raise ``StoreCorrupt`` on damage.

        As the writer (``EXCLUSIVE``: the exclusive lock is held) truncate a torn tail.
        """
        try:
            self._replay(mode)
        except Damage as damage:
            if mode == READ:
                self._confirm()  # raises StoreCorrupt if the damage is still there
                return
            raise StoreCorrupt(self.path, self.offset, damage.reason) from None

    def _confirm(self) -> None:
        """Re-read under a shared lock: no write or repair can be in flight meanwhile."""
        deadline = None if self.timeout == 0 else time.monotonic() + self.timeout
        self.lock(False, deadline)
        try:
            self.sync(SHARED)
        finally:
            self.unlock()

    def _replay(self, mode: int) -> None:
        fd = self.fd
        start = self.offset
        buf = os.pread(fd, _CHUNK, start)
        if not buf:
            return
        pos = 0
        if start == 0:
            if len(buf) < len(MAGIC):
                return self._short_header(mode, buf)
            self.framing = self._framing(buf)
            pos = len(MAGIC)
        framing = self.framing
        hsize = framing.header_size
        view = memoryview(buf)
        try:
            while True:
                size = len(buf)
                if size - pos >= hsize:
                    end = pos + hsize + framing.body_length(buf, pos)
                    if end <= size:
                        records = framing.decode(view, pos, end)
                        self._check(records)
                        self._apply_all(records)
                        pos = end
                        continue
                    need = end - size
                    if need > _CHUNK and start + end > os.fstat(fd).st_size:
                        break  # incomplete: a write in flight or a torn tail; don't read it
                else:
                    need = hsize - (size - pos)
                more = os.pread(fd, max(_CHUNK, need), start + size)
                if not more:
                    break
                view.release()
                buf = buf[pos:] + more
                view = memoryview(buf)
                start += pos
                pos = 0
        except Damage:
            self.offset = start + pos
            raise
        finally:
            view.release()
        self.offset = start + pos
        if mode == EXCLUSIVE and pos < len(buf):
            # Holding the lock, nobody is writing: the leftover is a dead writer's torn record.
            os.ftruncate(fd, self.offset)

    def _framing(self, buf: bytes) -> Framing:
        head = buf[: len(MAGIC)]
        if head == MAGIC:
            return V2
        if head == MAGIC_V1:
            return V1
        raise StoreBroken(
            f"FileStore: {self.path!r} is not a storeharness FileStore log "
            f"(starts with {head!r}); was it written by another program?",
            path=self.path,
        )

    def _short_header(self, mode: int, buf: bytes) -> None:
        if not (MAGIC.startswith(buf) or MAGIC_V1.startswith(buf)):
            raise StoreBroken(
                f"FileStore: {self.path!r} is not a storeharness FileStore log", path=self.path
            )
        if mode == EXCLUSIVE:
            os.ftruncate(self.fd, 0)  # a creator died while writing the magic

    def _check(self, records: list[Record]) -> None:
        """Refuse a record that cannot apply to the current state (before applying any of it)."""
        if len(records) == 1 and records[0][0] != OP_QPOP:
            return
        lengths: dict[str, int] = {}
        for op, key, _ in records:
            if op in (OP_QPUSH, OP_QPOP):
                n = lengths.get(key)
                if n is None:
                    n = len(self.queues.get(key, ()))
                if op == OP_QPOP and n == 0:
                    raise Damage(f"a queue pop from queue {key!r}, which is empty")
                lengths[key] = n + 1 if op == OP_QPUSH else n - 1

    def _apply_all(self, records: list[Record]) -> None:
        for op, key, value in records:
            self._apply(op, key, value)

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

    def transact(
        self, decide: Callable[[], tuple[list[Record], _T]], deadline: float | None = None
    ) -> _T:
        """Under the exclusive lock: replay to the end, ``decide`` what to append, append it.

        ``decide`` sees the up-to-date state and returns ``(records, result)``; the records are
        written as one record in one ``write`` and applied locally.  Call with ``mutex`` held.
        Raises ``_filelock.LockBusy`` if the lock is not had by ``deadline``.
        """
        fd = self.fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            acquire(fd, True, deadline, self.path)
        try:
            self.sync(EXCLUSIVE)
            records, result = decide()
            if records:
                if self.offset == 0:
                    self.framing = V2
                    blob = MAGIC + encode(records)
                else:
                    blob = self.framing.encode(records)
                self._append(blob)
                for op, key, value in records:
                    self._apply(op, key, value)
            return result
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _append(self, blob: bytes) -> None:
        fd = self.fd
        try:
            written = os.write(fd, blob)
            while written < len(blob):  # short writes happen on full disks and signals
                written += os.write(fd, blob[written:])
        except BaseException as exc:  # a full disk, a file size limit, a signal's exception
            os.ftruncate(fd, self.offset)  # we hold the lock: take our partial record back
            if isinstance(exc, OSError):
                raise StoreError(
                    f"FileStore: writing {len(blob)} bytes to {self.path!r} failed: {exc.strerror}"
                ) from exc
            raise
        self.offset += len(blob)

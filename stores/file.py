"""FileStore: one file shared by many processes (see ``_filelog`` for the format and why it holds).

Blocked calls sleep on inotify and wake when the file changes; where inotify is unavailable they
fall back to a bounded backoff (1 ms doubling to 50 ms).  ``world_size`` participants are
reference-counted and the last one to close removes the file, as in torch.
"""

from __future__ import annotations

import fcntl
import functools
import os
import select
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ._base import Capability, Store
from ._errors import QueueEmpty, StoreError, StoreTimeout
from ._filelog import (
    OP_APPEND,
    OP_DELETE,
    OP_META,
    OP_QPOP,
    OP_QPUSH,
    OP_SET,
    Log,
    Record,
)
from ._types import (
    DEFAULT_TIMEOUT,
    KeyLike,
    TimeoutLike,
    ValueLike,
    as_key,
    as_keys,
    as_seconds,
    as_value,
    check_amount,
    compare_set_outcome,
    next_counter,
)

try:  # Linux only; elsewhere blocked calls back off instead.
    from inotify_simple import INotify
    from inotify_simple import flags as _inotify_flags
except ImportError:  # pragma: no cover - exercised on non-Linux hosts
    INotify = None

__all__ = ["FileStore"]

_T = TypeVar("_T")
_LIVE_LOGS: weakref.WeakSet[Log] = weakref.WeakSet()


def _reopen_after_fork() -> None:
    for log in list(_LIVE_LOGS):
        if log.fd >= 0:
            log.reopen_after_fork()


os.register_at_fork(after_in_child=_reopen_after_fork)


class _Watch:
    """Sleeps until the file changes (inotify) or a bounded backoff elapses (fallback)."""

    def __init__(self, path: str) -> None:
        self._inotify: Any = None
        self._delay = 0.001
        if INotify is not None:
            try:
                self._inotify = INotify()
                self._inotify.add_watch(path, _inotify_flags.MODIFY)
            except OSError:  # out of watches/instances: degrade, don't fail the wait
                self.close()

    def sleep(self, seconds: float | None) -> None:
        if self._inotify is not None:
            ready, _, _ = select.select([self._inotify.fd], [], [], seconds)
            if ready:
                self._inotify.read(timeout=0)
            return
        step = self._delay if seconds is None else min(self._delay, seconds)
        self._delay = min(self._delay * 2, 0.05)
        time.sleep(step)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None


def _release(log: Log, world_size: int, owner_pid: int) -> None:
    """Leave the store: drop our reference; the last participant removes the file."""
    try:
        if os.getpid() != owner_pid or log.fd < 0:
            return  # a handle inherited across fork never joined, so it has nothing to drop
        with log.mutex:

            def leave() -> tuple[list[Record], bool]:
                cleanup = log.meta.get("cleanup", 0) + 1
                refs = log.meta.get("refcount", 0) - 1
                records = [
                    (OP_META, "cleanup", str(cleanup).encode()),
                    (OP_META, "refcount", str(refs).encode()),
                ]
                last = refs <= 0 and world_size >= 0 and cleanup >= world_size
                if last:
                    os.unlink(log.path)  # under the lock: joiners re-check the link count
                return ([] if last else records), last

            log.transact(leave)
    finally:
        log.close()


class FileStore(Store):
    """A store in one file, shared by every process (and thread) that opens the same path.

    ``world_size >= 0``: the file is removed when ``world_size`` handles have closed and none
    remains open; negative (default): never removed.  A handle inherited through ``fork`` works
    in the child but does not count as a participant.

    Raises :class:`StoreError` if the directory does not exist or the file is not a FileStore log.
    """

    capabilities = frozenset(
        {
            Capability.QUEUES,
            Capability.LIST_KEYS,
            Capability.CROSS_PROCESS,
            Capability.ADD_ERRORS,
            Capability.CAS_WAKES,
        }
    )

    def __init__(
        self,
        file_name: str | os.PathLike[str],
        world_size: int = -1,
        timeout: TimeoutLike = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(timeout)
        if not isinstance(file_name, str | os.PathLike):
            raise TypeError(f"FileStore: file_name must be a path, got {type(file_name).__name__}")
        if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size == 0:
            raise ValueError(
                f"FileStore: world_size must be a non-zero int (negative = never remove the "
                f"file), got {world_size!r}"
            )
        self._path = os.fspath(file_name)
        self._world_size = world_size
        self._log = log = self._join(self._path)
        self._finalizer = weakref.finalize(self, _release, log, world_size, os.getpid())

    @staticmethod
    def _join(path: str) -> Log:
        """Open the log and count ourselves in, on a file that is still linked at ``path``."""
        while True:
            log = Log(path)
            fcntl.flock(log.fd, fcntl.LOCK_EX)
            try:
                linked = os.fstat(log.fd).st_nlink > 0
            finally:
                fcntl.flock(log.fd, fcntl.LOCK_UN)
            if not linked:  # the last participant removed it as we opened it: start anew
                log.close()
                continue
            with log.mutex:
                log.transact(functools.partial(_count_in, log))
            _LIVE_LOGS.add(log)
            return log

    @property
    def path(self) -> str:
        return self._path

    @property
    def world_size(self) -> int:
        return self._world_size

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return f"FileStore({self._path!r}, world_size={self._world_size}{state})"

    # ----------------------------------------------------------------- plumbing

    def _log_for(self, op: str) -> Log:
        self._check_open(op)
        return self._log

    def _write(self, op: str, records: list[Record]) -> None:
        log = self._log_for(op)
        with log.mutex:
            log.transact(lambda: (records, None))

    def _read(self, op: str, read: Callable[[Log], _T]) -> _T:
        log = self._log_for(op)
        with log.mutex:
            log.sync()
            return read(log)

    def _blocking(
        self,
        op: str,
        limit: float,
        read: Callable[[Log], _T | None],
        missing: Callable[[Log], list[str]],
        observe: set[str] | None = None,
    ) -> _T:
        """Return ``read(log)`` once it is not ``None``, sleeping on file changes meanwhile."""
        log = self._log_for(op)
        start = time.monotonic()
        deadline = None if limit == 0 else start + limit
        watch: _Watch | None = None
        if observe is not None:
            with log.mutex:
                log.observers.append(observe)
        try:
            while True:
                with log.mutex:
                    self._check_open(op)
                    log.sync()
                    result = read(log)
                    if result is not None:
                        return result
                    absent = missing(log)
                if watch is None:
                    # Armed before the next check, so no write can slip in unnoticed.
                    watch = _Watch(self._path)
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise StoreTimeout(op, absent, time.monotonic() - start, limit, repr(self))
                watch.sleep(left)
        finally:
            if watch is not None:
                watch.close()
            if observe is not None:
                with log.mutex:
                    log.observers.remove(observe)

    # ----------------------------------------------------------------- writes

    def set(self, key: KeyLike, value: ValueLike) -> None:
        k = key if type(key) is str else as_key(key)
        v = value if type(value) is bytes else as_value(value)
        self._write("set", [(OP_SET, k, v)])

    def append(self, key: KeyLike, value: ValueLike) -> None:
        self._write("append", [(OP_APPEND, as_key(key), as_value(value))])

    def multi_set(self, keys: Sequence[KeyLike], values: Sequence[ValueLike]) -> None:
        names, data = self._pairs(keys, values)
        self._write("multi_set", [(OP_SET, k, v) for k, v in zip(names, data, strict=True)])

    def queue_push(self, key: KeyLike, value: ValueLike) -> None:
        self._write("queue_push", [(OP_QPUSH, as_key(key), as_value(value))])

    def add(self, key: KeyLike, amount: int) -> int:
        k = key if type(key) is str else as_key(key)
        check_amount(amount, k)
        log = self._log_for("add")

        def decide() -> tuple[list[Record], int]:
            total = next_counter(log.data.get(k), amount, k)
            return [(OP_SET, k, str(total).encode())], total

        with log.mutex:
            return log.transact(decide)

    def compare_set(self, key: KeyLike, expected: ValueLike, desired: ValueLike) -> bytes:
        k = as_key(key)
        exp = as_value(expected, "expected")
        new = as_value(desired, "desired")
        log = self._log_for("compare_set")

        def decide() -> tuple[list[Record], bytes]:
            write, result = compare_set_outcome(log.data.get(k), exp, new)
            return ([(OP_SET, k, new)] if write else []), result

        with log.mutex:
            return log.transact(decide)

    def delete_key(self, key: KeyLike) -> bool:
        k = as_key(key)
        log = self._log_for("delete_key")

        def decide() -> tuple[list[Record], bool]:
            present = k in log.data
            return ([(OP_DELETE, k, b"")] if present else []), present

        with log.mutex:
            return log.transact(decide)

    # ----------------------------------------------------------------- reads

    def get(self, key: KeyLike) -> bytes:
        k = key if type(key) is str else as_key(key)
        log = self._log_for("get")
        with log.mutex:
            log.sync()
            value = log.data.get(k)
        if value is not None:
            return value
        return self._blocking("get", self._timeout, lambda lg: lg.data.get(k), lambda lg: [k])

    def multi_get(self, keys: Sequence[KeyLike]) -> list[bytes]:
        names = as_keys(keys)

        def read(log: Log) -> list[bytes] | None:
            values = [log.data.get(k) for k in names]
            return None if None in values else values  # type: ignore[return-value]

        return self._blocking(
            "multi_get",
            self._timeout,
            read,
            lambda log: [k for k in names if k not in log.data],
        )

    def check(self, keys: Sequence[KeyLike]) -> bool:
        names = as_keys(keys)
        return self._read("check", lambda log: all(_exists(log, k) for k in names))

    def wait(self, keys: Sequence[KeyLike], timeout: TimeoutLike | None = None) -> None:
        names = as_keys(keys)
        if not names:
            return
        limit = self._timeout if timeout is None else as_seconds(timeout)
        pending = set(names)

        def read(log: Log) -> bool | None:
            pending.difference_update([k for k in pending if _exists(log, k)])
            return True if not pending else None

        self._blocking("wait", limit, read, lambda log: sorted(pending), observe=pending)

    def num_keys(self) -> int:
        return self._read("num_keys", lambda log: len(log.data))

    def list_keys(self) -> list[str]:
        return self._read("list_keys", lambda log: list(log.data))

    def queue_len(self, key: KeyLike) -> int:
        k = as_key(key)
        return self._read("queue_len", lambda log: len(log.queues.get(k, ())))

    def queue_pop(self, key: KeyLike, block: bool = True) -> bytes:
        k = as_key(key)
        log = self._log_for("queue_pop")

        def take() -> tuple[list[Record], bytes | None]:
            line = log.queues.get(k)
            if not line:
                return [], None
            return [(OP_QPOP, k, b"")], line[0]

        start = time.monotonic()
        limit = self._timeout
        while True:
            with log.mutex:
                value = log.transact(take)
            if value is not None:
                return value
            if not block:
                raise QueueEmpty(k, repr(self))
            left = 0.0 if limit == 0 else limit - (time.monotonic() - start)
            if limit != 0 and left <= 0:
                raise StoreTimeout("queue_pop", [k], time.monotonic() - start, limit, repr(self))
            # Sleep until the queue has something, then race the other poppers for it.
            try:
                self._blocking(
                    "queue_pop",
                    left,
                    lambda lg: True if lg.queues.get(k) else None,
                    lambda lg: [k],
                )
            except StoreTimeout:  # it timed out on what was left: report the whole limit
                spent = time.monotonic() - start
                raise StoreTimeout("queue_pop", [k], spent, limit, repr(self)) from None

    # ----------------------------------------------------------------- lifecycle

    def clone(self) -> FileStore:
        """A new participant on the same file (counts toward ``world_size``), same timeout."""
        self._log_for("clone")
        return FileStore(self._path, self._world_size, self._timeout)

    def close(self) -> None:
        """Leave the store; the last of ``world_size`` participants removes the file."""
        if self._closed:
            return
        self._closed = True
        try:
            self._finalizer()
        except OSError as exc:
            raise StoreError(f"FileStore: closing {self._path!r} failed: {exc}") from exc


def _count_in(log: Log) -> tuple[list[Record], None]:
    return [(OP_META, "refcount", str(log.meta.get("refcount", 0) + 1).encode())], None


def _exists(log: Log, key: str) -> bool:
    return key in log.data or key in log.queues

"""A store of your own, in about a hundred lines: SQLite in the run's working directory.

This is what a store author writes to put their store through storeharness::

    storeharness run --store sqlitestore:SQLiteStore      # the scenario library, our report
    pytest --store sqlitestore:make                       # the same, plus your own tests

The harness calls the factory (here the class itself, or ``make``) in every rank with the run's
working directory, a ``pathlib.Path`` shared by every rank of the run and empty at the start.
The class declares ``cross_process`` (every process that opens the file sees the same data), so
the harness runs it with process ranks as well as thread ranks.

Blocking calls (``get`` of a missing key, ``wait``) poll the database with a short, growing
interval: a production store would sleep on a change notification instead.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from storeharness.stores import Capability, Store, StoreTimeout

Text = str | bytes


def _text(item: Text) -> str:
    return item.decode() if isinstance(item, bytes) else item


def _bytes(item: Text) -> bytes:
    return item.encode() if isinstance(item, str) else bytes(item)


def _seconds(timeout: float | timedelta) -> float:
    return timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)


class SQLiteStore(Store):
    """Keys and values in one SQLite table; every handle opens its own connection."""

    capabilities = frozenset({Capability.CROSS_PROCESS})

    def __init__(self, workdir: Path | str, timeout: float | timedelta = 300.0) -> None:
        super().__init__(timeout)
        self.path = Path(workdir) / "store.sqlite3"
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB)")

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # --------------------------------------------------------------------------- helpers

    def _read(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def _write(self, key: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))

    def _until(self, op: str, keys: list[str], timeout: float) -> None:
        """Return once every key exists; raise StoreTimeout after ``timeout`` (0: never)."""
        start = time.monotonic()
        pause = 0.001
        while True:
            self._check_open(op)
            if all(self._read(k) is not None for k in keys):
                return
            elapsed = time.monotonic() - start
            if timeout and elapsed >= timeout:
                raise StoreTimeout(op, keys, elapsed, timeout, repr(self))
            time.sleep(min(pause, max(0.0, timeout - elapsed) if timeout else pause))
            pause = min(pause * 2, 0.05)

    # ------------------------------------------------------------------- the core
    def set(self, key: Text, value: Text) -> None:
        self._check_open("set")
        self._write(_text(key), _bytes(value))

    def get(self, key: Text) -> bytes:
        name = _text(key)
        self._until("get", [name], self._timeout)
        value = self._read(name)
        assert value is not None
        return value

    def add(self, key: Text, amount: int) -> int:
        self._check_open("add")
        name = _text(key)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            current = self._read(name)
            total = (int(current) if current else 0) + amount
            self._write(name, str(total).encode())
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return total

    def compare_set(self, key: Text, expected: Text, desired: Text) -> bytes:
        self._check_open("compare_set")
        name, want, new = _text(key), _bytes(expected), _bytes(desired)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            current = self._read(name)
            if (current is None and want == b"") or (current is not None and current == want):
                self._write(name, new)
                result = new
            else:
                result = want if current is None else current
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return result

    def wait(self, keys: Sequence[Text], timeout: float | timedelta | None = None) -> None:
        limit = self._timeout if timeout is None else _seconds(timeout)
        self._until("wait", [_text(k) for k in keys], limit)

    def check(self, keys: Sequence[Text]) -> bool:
        self._check_open("check")
        return all(self._read(k) is not None for k in [_text(k) for k in keys])

    def delete_key(self, key: Text) -> bool:
        self._check_open("delete_key")
        return self._db.execute("DELETE FROM kv WHERE key = ?", (_text(key),)).rowcount > 0

    def num_keys(self) -> int:
        self._check_open("num_keys")
        (count,) = self._db.execute("SELECT COUNT(*) FROM kv").fetchone()
        return int(count)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._db.close()


def make(workdir: Path) -> SQLiteStore:
    """A factory, for ``--store sqlitestore:make`` (the class itself works too)."""
    return SQLiteStore(workdir)

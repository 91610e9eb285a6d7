"""A store of your own, in about a hundred lines: SQLite in the run's working directory.

This is what a store author writes to put their store through storeharness::

    storeharness run --store sqlitestore:SQLiteStore      # the scenario library, our report
    pytest --store sqlitestore:make                       # the same, plus your own tests

The harness calls the factory (here the class itself, or ``make``) in every rank with the run's
working directory, a ``pathlib.Path`` shared by every rank of the run and empty at the start.
The class declares ``cross_process`` (every process that opens the file sees the same data), so
the harness runs it with process ranks as well as thread ranks.  ``as_key``, ``next_counter``
and friends are torch's rules for keys, values, counters and compare_set, so this store reads
them exactly as torch's stores do (and passes the contract's conformance suite).

Blocking calls (``get`` of a missing key, ``wait``) poll the database with a short, growing
interval: a production store would sleep on a change notification instead.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from storeharness.stores import (
    Capability,
    KeyLike,
    Store,
    StoreTimeout,
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


def _blob(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")  # any key, binary ones included


class SQLiteStore(Store):
    """Keys and values in one SQLite table; every handle opens its own connection."""

    # other processes see the data; a bad add raises ValueError and leaves the store usable
    capabilities = frozenset({Capability.CROSS_PROCESS, Capability.ADD_ERRORS})

    def __init__(self, workdir: Path | str, timeout: TimeoutLike = 300.0) -> None:
        super().__init__(timeout)
        self.workdir = Path(workdir)
        self._db = sqlite3.connect(self.workdir / "store.sqlite3", timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB)")

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.workdir)!r})"

    # --------------------------------------------------------------------------- helpers

    def _read(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (_blob(key),)).fetchone()
        return None if row is None else bytes(row[0])

    def _write(self, key: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (_blob(key), value))

    def _until(self, op: str, keys: list[str], timeout: float) -> None:
        """Return once every key exists; raise StoreTimeout after ``timeout`` (0: never)."""
        start, pause = time.monotonic(), 0.001
        while True:
            self._check_open(op)
            missing = [k for k in keys if self._read(k) is None]
            if not missing:
                return
            elapsed = time.monotonic() - start
            if timeout and elapsed >= timeout:
                raise StoreTimeout(op, missing, elapsed, timeout, repr(self))
            time.sleep(min(pause, timeout - elapsed) if timeout else pause)
            pause = min(pause * 2, 0.05)

    def _transaction(self, op: str, key: str, decide: Callable[[bytes | None], bytes]) -> bytes:
        self._check_open(op)
        self._db.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes
        try:
            result = decide(self._read(key))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return result

    # -------------------------------------------------------------------------- the core

    def set(self, key: KeyLike, value: ValueLike) -> None:
        name, data = as_key(key), as_value(value)
        self._check_open("set")
        self._write(name, data)

    def get(self, key: KeyLike) -> bytes:
        name = as_key(key)
        self._until("get", [name], self._timeout)
        value = self._read(name)
        assert value is not None
        return value

    def add(self, key: KeyLike, amount: int) -> int:
        name = as_key(key)
        check_amount(amount, name)

        def decide(old: bytes | None) -> bytes:
            new = str(next_counter(old, amount, name)).encode()
            self._write(name, new)
            return new

        return int(self._transaction("add", name, decide))

    def compare_set(self, key: KeyLike, expected: ValueLike, desired: ValueLike) -> bytes:
        name, want, new = as_key(key), as_value(expected, "expected"), as_value(desired, "desired")

        def decide(old: bytes | None) -> bytes:
            write, result = compare_set_outcome(old, want, new)
            if write:
                self._write(name, new)
            return result

        return self._transaction("compare_set", name, decide)

    def wait(self, keys: Sequence[KeyLike], timeout: TimeoutLike | None = None) -> None:
        names = as_keys(keys)
        self._until("wait", names, self._timeout if timeout is None else as_seconds(timeout))

    def check(self, keys: Sequence[KeyLike]) -> bool:
        names = as_keys(keys)
        self._check_open("check")
        return all(self._read(k) is not None for k in names)

    def delete_key(self, key: KeyLike) -> bool:
        name = as_key(key)
        self._check_open("delete_key")
        return self._db.execute("DELETE FROM kv WHERE key = ?", (_blob(name),)).rowcount > 0

    def num_keys(self) -> int:
        self._check_open("num_keys")
        (count,) = self._db.execute("SELECT COUNT(*) FROM kv").fetchone()
        return int(count)

    # ------------------------------------------------------------------------ lifecycle

    def clone(self) -> SQLiteStore:
        self._check_open("clone")
        return SQLiteStore(self.workdir, self._timeout)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._db.close()


def make(workdir: Path) -> SQLiteStore:
    """A factory, for ``--store sqlitestore:make`` (the class itself works too)."""
    return SQLiteStore(workdir)

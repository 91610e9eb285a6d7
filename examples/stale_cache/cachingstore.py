"""A store with a bug many real ones have had: each handle caches what it read, forever.

Every single-handle test passes (a handle sees its own writes), and so does every scenario that
only checks return values; a history shows the stale read at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from storeharness.stores import HashStore, Store
from storeharness.stores._types import as_key


class CachingStore(Store):
    """A HashStore behind a read cache that is never invalidated (the bug)."""

    def __init__(self, inner: HashStore) -> None:
        super().__init__()
        self.inner = inner
        self.cache: dict[str, bytes] = {}

    def get(self, key: Any) -> bytes:
        k = as_key(key)
        if k not in self.cache:
            self.cache[k] = self.inner.get(k)
        return self.cache[k]

    def set(self, key: Any, value: Any) -> None:
        self.inner.set(key, value)
        self.cache.pop(as_key(key), None)  # our own writes are seen; everyone else's are not

    def add(self, key: Any, amount: int) -> int:
        return self.inner.add(key, amount)

    def compare_set(self, key: Any, expected: Any, desired: Any) -> bytes:
        return self.inner.compare_set(key, expected, desired)

    def wait(self, keys: Sequence[Any], timeout: Any = None) -> None:
        self.inner.wait(keys, timeout)

    def check(self, keys: Sequence[Any]) -> bool:
        return self.inner.check(keys)

    def delete_key(self, key: Any) -> bool:
        return self.inner.delete_key(key)

    def num_keys(self) -> int:
        return self.inner.num_keys()

    def set_timeout(self, timeout: Any) -> None:
        super().set_timeout(timeout)
        self.inner.set_timeout(timeout)

    def clone(self) -> CachingStore:
        return CachingStore(self.inner)


def make(workdir: Path) -> CachingStore:
    """The factory ``--store cachingstore:make`` calls."""
    return CachingStore(HashStore())

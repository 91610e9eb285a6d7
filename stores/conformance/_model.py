"""A reference model of the contract's non-blocking behaviour, for model-based testing.

Plain dictionaries, no locking, no waiting: what a correct store must answer for each operation
given the same history.  Blocking calls are modelled only where they would return at once.  The
decisions (compare_set, add) are written out again here on purpose: a model that called the
stores' own helpers could not catch a bug in them.
"""

from __future__ import annotations

import builtins
from collections import deque

from .._types import parse_counter, wrap_int64

__all__ = ["ReferenceModel"]


class ReferenceModel:
    """What a store holds after a sequence of operations, and what each one returns."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.queues: dict[str, deque[bytes]] = {}

    def set(self, key: str, value: bytes) -> None:
        self.data[key] = value

    def get(self, key: str) -> bytes | None:
        """The value, or ``None`` where a store would block."""
        return self.data.get(key)

    def add(self, key: str, amount: int) -> int:
        """The new total; raises ``ValueError`` where a store must (non-integer text)."""
        old = self.data.get(key)
        total = amount if old is None else wrap_int64(parse_counter(old, key) + amount)
        self.data[key] = str(total).encode()
        return total

    def compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        current = self.data.get(key)
        if current is None:
            if expected:
                return expected
        elif current != expected:
            return current
        self.data[key] = desired
        return desired

    def append(self, key: str, value: bytes) -> None:
        self.data[key] = self.data.get(key, b"") + value

    def multi_set(self, keys: list[str], values: list[bytes]) -> None:
        self.data.update(zip(keys, values, strict=True))

    def delete_key(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    def check(self, keys: list[str]) -> bool:
        return all(k in self.data or self.queues.get(k) for k in keys)

    def num_keys(self) -> int:
        return len(self.data)

    def list_keys(self) -> builtins.set[str]:
        return set(self.data)

    def queue_push(self, key: str, value: bytes) -> None:
        self.queues.setdefault(key, deque()).append(value)

    def queue_pop(self, key: str) -> bytes | None:
        """The popped value, or ``None`` where a non-blocking pop raises ``QueueEmpty``."""
        line = self.queues.get(key)
        return line.popleft() if line else None

    def queue_len(self, key: str) -> int:
        return len(self.queues.get(key, ()))

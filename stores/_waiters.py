"""Per-key waiter bookkeeping for in-process blocking (HashStore; reusable by servers).

A blocked caller registers a :class:`Waiter` under each key it still misses.  When a key is
created, the registrations under that key are consumed and each waiter's pending count drops;
a waiter is woken only when its count reaches zero, so a change wakes exactly the waiters it
satisfies (no herd, no polling).  A key counts once it existed at some moment during the wait,
even if deleted again before the waiter runs (torch's TCP server has the same rule).

All methods must be called with the owning lock held; waiters sleep on conditions built on it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

__all__ = ["Waiter", "WaiterTable"]


class Waiter:
    """One blocked call: a condition on the owner's lock and the number of keys still missing."""

    __slots__ = ("cond", "data_only", "keys", "pending")

    def __init__(self, lock: threading.Lock, keys: Iterable[str], data_only: bool) -> None:
        self.cond = threading.Condition(lock)
        self.keys = tuple(dict.fromkeys(keys))
        self.pending = len(self.keys)
        #: Satisfied only by a value being written, not by a queue push (``get`` waits this way).
        self.data_only = data_only


class WaiterTable:
    """Registrations of key waiters and queue poppers, keyed by name."""

    __slots__ = ("_keys", "_poppers")

    def __init__(self) -> None:
        self._keys: dict[str, list[Waiter]] = {}
        self._poppers: dict[str, deque[Waiter]] = {}

    def __bool__(self) -> bool:
        return bool(self._keys) or bool(self._poppers)

    def add_key_waiter(self, waiter: Waiter) -> None:
        for key in waiter.keys:
            self._keys.setdefault(key, []).append(waiter)

    def remove_key_waiter(self, waiter: Waiter) -> None:
        for key in waiter.keys:
            registered = self._keys.get(key)
            if registered is not None and waiter in registered:
                registered.remove(waiter)
                if not registered:
                    del self._keys[key]

    def created(self, key: str, via_queue: bool = False) -> None:
        """``key`` came into existence (a value written, or a queue push when ``via_queue``)."""
        registered = self._keys.get(key)
        if registered is None:
            return
        if via_queue:
            fire = [w for w in registered if not w.data_only]
            if not fire:
                return
            keep = [w for w in registered if w.data_only]
            if keep:
                self._keys[key] = keep
            else:
                del self._keys[key]
        else:
            fire = registered
            del self._keys[key]
        for waiter in fire:
            waiter.pending -= 1
            if waiter.pending == 0:
                waiter.cond.notify()

    def add_popper(self, key: str, waiter: Waiter) -> None:
        self._poppers.setdefault(key, deque()).append(waiter)

    def remove_popper(self, key: str, waiter: Waiter) -> None:
        line = self._poppers.get(key)
        if line is not None and waiter in line:
            line.remove(waiter)
            if not line:
                del self._poppers[key]

    def pushed(self, key: str) -> None:
        """One value was pushed to queue ``key``: wake the longest-waiting popper (only one)."""
        line = self._poppers.get(key)
        if line:
            waiter = line.popleft()
            if not line:
                del self._poppers[key]
            waiter.pending = 0  # consumed: the popper re-registers if another took the value
            waiter.cond.notify()

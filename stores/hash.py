"""HashStore: an in-memory store shared by the threads of one process."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

from ._base import Capability, Store
from ._errors import QueueEmpty, StoreClosed, StoreTimeout
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
    deadline_after,
    next_counter,
)
from ._waiters import Waiter, WaiterTable

__all__ = ["HashStore"]

_T = TypeVar("_T")


class _State:
    """The data every handle of one HashStore shares, guarded by one lock."""

    __slots__ = ("data", "lock", "queues", "waiters")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.data: dict[str, bytes] = {}
        self.queues: dict[str, deque[bytes]] = {}
        self.waiters = WaiterTable()


class HashStore(Store):
    """In-memory store, safe across threads; blocked calls sleep until the change they need.

    ``clone()`` returns a new handle on the same data (closing one handle leaves the others
    usable); torch returns the very same object.
    """

    capabilities = frozenset(
        {Capability.QUEUES, Capability.LIST_KEYS, Capability.ADD_ERRORS, Capability.CAS_WAKES}
    )

    def __init__(self, timeout: TimeoutLike = DEFAULT_TIMEOUT, *, _state: _State | None = None):
        super().__init__(timeout)
        self._state = _State() if _state is None else _state
        self._asleep: set[Waiter] = set()  # calls blocked through this handle (lock held)

    def __repr__(self) -> str:
        return f"HashStore(keys={len(self._state.data)}{', closed' if self._closed else ''})"

    def _open(self, op: str) -> _State:
        self._check_open(op)
        return self._state

    # ----------------------------------------------------------------- writes

    def set(self, key: KeyLike, value: ValueLike) -> None:
        k = key if type(key) is str else as_key(key)
        v = value if type(value) is bytes else as_value(value)
        st = self._open("set")
        with st.lock:
            st.data[k] = v
            if st.waiters:
                st.waiters.created(k)

    def add(self, key: KeyLike, amount: int) -> int:
        k = key if type(key) is str else as_key(key)
        check_amount(amount, k)
        st = self._open("add")
        with st.lock:
            total = next_counter(st.data.get(k), amount, k)
            st.data[k] = str(total).encode()
            if st.waiters:
                st.waiters.created(k)
        return total

    def compare_set(self, key: KeyLike, expected: ValueLike, desired: ValueLike) -> bytes:
        k = as_key(key)
        exp = as_value(expected, "expected")
        new = as_value(desired, "desired")
        st = self._open("compare_set")
        with st.lock:
            write, result = compare_set_outcome(st.data.get(k), exp, new)
            if write:
                st.data[k] = new
                if st.waiters:
                    st.waiters.created(k)
            return result

    def append(self, key: KeyLike, value: ValueLike) -> None:
        k = as_key(key)
        v = as_value(value)
        st = self._open("append")
        with st.lock:
            st.data[k] = st.data.get(k, b"") + v
            if st.waiters:
                st.waiters.created(k)

    def multi_set(self, keys: Sequence[KeyLike], values: Sequence[ValueLike]) -> None:
        names, data = self._pairs(keys, values)
        st = self._open("multi_set")
        with st.lock:
            st.data.update(zip(names, data, strict=True))
            if st.waiters:
                for k in names:
                    st.waiters.created(k)

    def delete_key(self, key: KeyLike) -> bool:
        k = as_key(key)
        st = self._open("delete_key")
        with st.lock:
            return st.data.pop(k, None) is not None

    # ----------------------------------------------------------------- reads

    def get(self, key: KeyLike) -> bytes:
        k = key if type(key) is str else as_key(key)
        st = self._open("get")
        with st.lock:
            value = st.data.get(k)
            if value is not None:
                return value
            return self._blocking_read("get", [k], lambda: st.data.get(k))

    def multi_get(self, keys: Sequence[KeyLike]) -> list[bytes]:
        names = as_keys(keys)
        st = self._open("multi_get")

        def read_all() -> list[bytes] | None:
            values = [st.data.get(k) for k in names]
            return None if None in values else values  # type: ignore[return-value]

        with st.lock:
            ready = read_all()
            if ready is not None:
                return ready
            return self._blocking_read("multi_get", names, read_all)

    def check(self, keys: Sequence[KeyLike]) -> bool:
        names = as_keys(keys)
        st = self._open("check")
        with st.lock:
            data, queues = st.data, st.queues
            return all(k in data or k in queues for k in names)

    def wait(self, keys: Sequence[KeyLike], timeout: TimeoutLike | None = None) -> None:
        names = as_keys(keys)
        st = self._open("wait")
        limit = self._timeout if timeout is None else as_seconds(timeout)
        with st.lock:
            missing = [k for k in names if k not in st.data and k not in st.queues]
            if missing:
                waiter = Waiter(st.lock, missing, data_only=False)
                self._sleep(waiter, "wait", time.monotonic(), limit, deadline_after(limit))

    def num_keys(self) -> int:
        st = self._open("num_keys")
        with st.lock:
            return len(st.data)

    def list_keys(self) -> list[str]:
        st = self._open("list_keys")
        with st.lock:
            return list(st.data)

    # ----------------------------------------------------------------- queues

    def queue_push(self, key: KeyLike, value: ValueLike) -> None:
        k = as_key(key)
        v = as_value(value)
        st = self._open("queue_push")
        with st.lock:
            line = st.queues.get(k)
            if line is None:
                st.queues[k] = line = deque()
            line.append(v)
            if st.waiters:
                st.waiters.created(k, via_queue=True)
                st.waiters.pushed(k)

    def queue_pop(self, key: KeyLike, block: bool = True) -> bytes:
        k = as_key(key)
        st = self._open("queue_pop")
        with st.lock:
            if k in st.queues:
                return self._pop_locked(st, k)
            if not block:
                raise QueueEmpty(k, repr(self))
            limit = self._timeout
            start = time.monotonic()
            deadline = deadline_after(limit)
            waiter = Waiter(st.lock, [k], data_only=False)
            st.waiters.add_popper(k, waiter)
            self._asleep.add(waiter)
            try:
                while k not in st.queues:
                    self._check_open("queue_pop")
                    if waiter.pending == 0:  # woken, but another caller took the value
                        waiter.pending = 1
                        st.waiters.add_popper(k, waiter)
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise StoreTimeout(
                            "queue_pop", [k], time.monotonic() - start, limit, repr(self)
                        )
                    waiter.cond.wait(left)
            finally:
                self._asleep.discard(waiter)
                st.waiters.remove_popper(k, waiter)
            return self._pop_locked(st, k)

    @staticmethod
    def _pop_locked(st: _State, key: str) -> bytes:
        line = st.queues[key]
        value = line.popleft()
        if not line:
            del st.queues[key]
        return value

    def queue_len(self, key: KeyLike) -> int:
        k = as_key(key)
        st = self._open("queue_len")
        with st.lock:
            line = st.queues.get(k)
            return 0 if line is None else len(line)

    # ----------------------------------------------------------------- lifecycle

    def has_extended_api(self) -> bool:
        return True

    def clone(self) -> HashStore:
        self._open("clone")
        return HashStore(self._timeout, _state=self._state)

    def close(self) -> None:
        """Close this handle; calls blocked through it wake and raise :class:`StoreClosed`."""
        with self._state.lock:
            self._closed = True
            for waiter in self._asleep:
                waiter.cond.notify()

    # ----------------------------------------------------------------- blocking core

    def _blocking_read(self, op: str, keys: list[str], read: Callable[[], _T | None]) -> _T:
        """Sleep until ``read()`` (called with the lock held) returns a value; lock held."""
        st = self._state
        limit = self._timeout
        start = time.monotonic()
        deadline = deadline_after(limit)
        while True:
            missing = [k for k in keys if k not in st.data]
            if missing:
                waiter = Waiter(st.lock, missing, data_only=True)
                self._sleep(waiter, op, start, limit, deadline)
            result = read()
            if result is not None:
                return result

    def _sleep(
        self, waiter: Waiter, op: str, start: float, limit: float, deadline: float | None
    ) -> None:
        """Register ``waiter`` and sleep until all its keys appeared or ``deadline`` passes.

        ``deadline=None`` means no limit.  Raises :class:`StoreTimeout` naming the keys that
        never appeared.  Lock held on entry and exit.
        """
        table = self._state.waiters
        table.add_key_waiter(waiter)
        self._asleep.add(waiter)
        try:
            while waiter.pending:
                if self._closed:  # closed by another thread while we slept
                    raise StoreClosed(op, repr(self))
                wait_for = None if deadline is None else deadline - time.monotonic()
                if wait_for is not None and wait_for <= 0:
                    st = self._state
                    missing = [k for k in waiter.keys if k not in st.data and k not in st.queues]
                    spent = time.monotonic() - start
                    raise StoreTimeout(op, missing or list(waiter.keys), spent, limit, repr(self))
                waiter.cond.wait(wait_for)
        finally:
            self._asleep.discard(waiter)
            if waiter.pending:
                table.remove_key_waiter(waiter)

"""The Store contract: one base class, with the extended operations built on the core.

The API mirrors ``torch.distributed.Store`` (names, arguments, return types) so that code moves
between the two; ``../docs/differences.md`` lists every place where we deliberately do better.

A subclass implements the *core* — ``set``, ``get``, ``add``, ``compare_set``, ``wait``,
``check``, ``delete_key``, ``num_keys`` — and inherits the rest.  As with torch's ``Store``, it
may implement only some of them (a store with ``set``/``get``/``add``/``compare_set`` only is
legal): a core method it lacks raises :class:`UnsupportedOperation` naming the class and the
method when called, and the conformance suite's ``core_operations`` case lists every one missing.

* ``append``, ``multi_get``, ``multi_set`` and ``barrier`` are built from the core here, each
  from no more than torch's fallback needs: ``append`` from ``compare_set`` alone,
  ``multi_get`` from ``get`` (and ``wait``, for one deadline, when the class has it),
  ``multi_set`` from ``set``, ``barrier`` from ``add``, ``set`` and ``wait``;
* ``queue_push``/``queue_pop``/``queue_len`` and ``list_keys`` raise
  :class:`UnsupportedOperation` (naming the class and the method) unless overridden: neither can
  be built soundly from the core (no key enumeration; a FIFO pop from set/add/compare_set needs
  either unbounded tombstones or polling), so we refuse rather than fake them;
* ``clone`` raises :class:`UnsupportedOperation` unless overridden.

Conventions shared by every operation:

* keys are ``str`` (``bytes`` accepted; see :func:`storeharness.stores.as_key`); values are
  ``str`` or ``bytes`` in and always ``bytes`` out;
* a timeout is a ``datetime.timedelta`` or seconds; ``None`` means the store's default
  (``store.timeout``, 300 s unless set) and ``0`` means no limit;
* a key *exists* when it holds a value **or** names a non-empty queue (torch's rule for
  ``check``/``wait``);
* after ``close()`` every operation raises :class:`StoreClosed`.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Sequence
from datetime import timedelta
from types import TracebackType
from typing import ClassVar, Self

from ._errors import StoreClosed, StoreTimeout, StoreValueError, UnsupportedOperation
from ._types import (
    DEFAULT_TIMEOUT,
    KeyLike,
    TimeoutLike,
    ValueLike,
    as_key,
    as_keys,
    as_seconds,
    as_value,
    check_world_size,
)

__all__ = ["Capability", "Store"]


class Capability(enum.StrEnum):
    """What a backend can do beyond the core; the conformance suite skips by these."""

    #: ``queue_push``/``queue_pop``/``queue_len`` work.
    QUEUES = "queues"
    #: ``list_keys`` works.
    LIST_KEYS = "list_keys"
    #: Handles opened in other processes share the data (FileStore, TCPStore).
    CROSS_PROCESS = "cross_process"
    #: ``add`` on a non-integer value raises ``ValueError`` and the store stays usable (torch's
    #: TCP protocol has no error reply: its servers drop the connection instead).
    ADD_ERRORS = "add_errors"
    #: A ``compare_set`` that writes wakes waiters (torch's legacy TCP server does not).
    CAS_WAKES = "cas_wakes"


class Store:
    """A key-value store for rendezvous between the ranks of a distributed job.

    Subclasses may call ``super().__init__(timeout)``; if they do not, the default timeout is
    300 s, as in torch.
    """

    #: What this backend offers beyond the core (see :class:`Capability`).
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    _timeout: float = DEFAULT_TIMEOUT
    _closed: bool = False

    def __init__(self, timeout: TimeoutLike = DEFAULT_TIMEOUT) -> None:
        self._timeout = as_seconds(timeout)

    # ----------------------------------------------------------------- core (override)

    def set(self, key: KeyLike, value: ValueLike) -> None:
        """Insert or overwrite ``key``; wakes every ``wait``/``get`` that needed it.

        Never blocks on other clients.  Raises ``TypeError`` for a non-str/bytes key or value.
        """
        raise _missing(self, "set")

    def get(self, key: KeyLike) -> bytes:
        """Return the value of ``key``, first waiting (store timeout) for it to exist.

        Raises :class:`StoreTimeout` if it does not appear in time.
        """
        raise _missing(self, "get")

    def add(self, key: KeyLike, amount: int) -> int:
        """Atomically add ``amount`` to the integer counter at ``key`` and return the new value.

        An absent key starts at 0; an empty value counts as 0; stored text is read like C++
        ``std::stoll`` (whitespace and sign accepted, trailing text ignored) and the result wraps
        at int64.  Wakes waiters on ``key``.  Raises :class:`StoreValueError` (a ``ValueError``)
        if the stored value is not a number, ``TypeError`` if ``amount`` is not an int64.
        """
        raise _missing(self, "add")

    def compare_set(self, key: KeyLike, expected: ValueLike, desired: ValueLike) -> bytes:
        """Atomically replace ``key``'s value with ``desired`` if it equals ``expected``.

        Four cases (torch's): absent and ``expected == b""`` -> create, return ``desired``;
        absent and ``expected`` non-empty -> write nothing, return ``expected``; present and
        equal -> write, return ``desired``; present and different -> return the current value.
        A write wakes waiters on ``key``; no write wakes nobody.
        """
        raise _missing(self, "compare_set")

    def wait(self, keys: Sequence[KeyLike], timeout: TimeoutLike | None = None) -> None:
        """Block until every key in ``keys`` exists (``wait([])`` returns at once).

        A key counts once it has existed at some moment during the wait.  ``timeout=None`` uses
        the store timeout; ``0`` waits without limit.  Raises :class:`StoreTimeout` naming the
        keys, the limit and the time waited.
        """
        raise _missing(self, "wait")

    def check(self, keys: Sequence[KeyLike]) -> bool:
        """Return whether every key in ``keys`` exists now (``check([])`` is ``True``)."""
        raise _missing(self, "check")

    def delete_key(self, key: KeyLike) -> bool:
        """Remove ``key``'s value; return whether there was one.  Queues are untouched."""
        raise _missing(self, "delete_key")

    def num_keys(self) -> int:
        """Return how many keys hold a value (queues not counted)."""
        raise _missing(self, "num_keys")

    # ----------------------------------------------------------------- extended (fallbacks)

    def has_extended_api(self) -> bool:
        """Whether ``append``/``multi_get``/``multi_set`` are native rather than built on the core.

        Kept for torch compatibility; it says nothing about whether they work (they always do).
        """
        return False

    def append(self, key: KeyLike, value: ValueLike) -> None:
        """Append ``value`` to ``key``'s value, creating the key if absent; wakes its waiters.

        Fallback: ``compare_set`` alone, as torch's.  Unlike torch's, it first reads the current
        value with a ``compare_set`` that cannot write (a random ``expected`` echoed back for an
        absent key), so appending ``x`` to ``x`` gives ``xx``.  ``compare_set`` cannot tell "I
        wrote X" from "X was already there", so a concurrent writer storing exactly the value
        this append would produce makes the append look done; native implementations have no
        such window.
        """
        k = as_key(key)
        tail = as_value(value)
        probe = _PROBE + os.urandom(16)
        read = self.compare_set(k, probe, probe)
        current: bytes | None = None if read == probe else read
        while True:
            if current is None:
                result = self.compare_set(k, b"", tail)
                if result == tail:
                    return
            else:
                desired = current + tail
                result = self.compare_set(k, current, desired)
                if result == desired:
                    return
                if result == current:
                    # Only an absent key echoes ``expected`` back: it was deleted meanwhile.
                    current = None
                    continue
            current = result

    def multi_get(self, keys: Sequence[KeyLike]) -> list[bytes]:
        """Return the values of ``keys`` in order, first waiting (one deadline) for all of them.

        Raises :class:`StoreTimeout` naming the keys still missing.  Fallback: ``get`` per key,
        after one ``wait`` for all of them when the class implements ``wait``.
        """
        names = as_keys(keys)
        if type(self).wait is not Store.wait:  # one deadline, naming every key still missing
            self.wait(names)
        return [self.get(k) for k in names]

    def multi_set(self, keys: Sequence[KeyLike], values: Sequence[ValueLike]) -> None:
        """Set each key to the value at the same position.

        Raises :class:`StoreValueError` before writing anything if the lengths differ.
        """
        names, data = self._pairs(keys, values)
        for k, v in zip(names, data, strict=True):
            self.set(k, v)

    @staticmethod
    def _pairs(
        keys: Sequence[KeyLike], values: Sequence[ValueLike]
    ) -> tuple[list[str], list[bytes]]:
        names = as_keys(keys)
        data = [v if type(v) is bytes else as_value(v, "values[]") for v in values]
        if len(names) != len(data):
            raise StoreValueError(
                f"multi_set: {len(names)} keys but {len(data)} values; pass one value per key",
                keys=len(names),
                values=len(data),
            )
        return names, data

    def queue_push(self, key: KeyLike, value: ValueLike) -> None:
        """Push ``value`` onto the FIFO queue ``key``; wakes one blocked ``queue_pop``.

        Queues live beside the key-value map: the same name may hold a value and a queue.
        """
        raise UnsupportedOperation(type(self).__name__, "queue_push", _NO_QUEUES)

    def queue_pop(self, key: KeyLike, block: bool = True) -> bytes:
        """Pop the oldest value of queue ``key``.

        ``block=True`` waits up to the store timeout for a value (:class:`StoreTimeout`);
        ``block=False`` raises :class:`QueueEmpty` at once on an empty queue.
        """
        raise UnsupportedOperation(type(self).__name__, "queue_pop", _NO_QUEUES)

    def queue_len(self, key: KeyLike) -> int:
        """Return the length of queue ``key`` (0 for a queue never pushed to)."""
        raise UnsupportedOperation(type(self).__name__, "queue_len", _NO_QUEUES)

    def list_keys(self) -> list[str]:
        """Return every key that holds a value, in no particular order."""
        raise UnsupportedOperation(
            type(self).__name__,
            "list_keys",
            "key enumeration cannot be built from the core operations; override list_keys",
        )

    def barrier(self, key: KeyLike, world_size: int, timeout: TimeoutLike | None = None) -> None:
        """Block until ``world_size`` callers have entered the barrier ``key``.

        Single use per key, as in torch: a later barrier on the same key returns at once.  Uses
        ``key/num_members`` and ``key/last_member``.  Raises :class:`StoreTimeout` saying how
        many participants arrived, ``ValueError`` for ``world_size < 1``.
        """
        k = as_key(key)
        check_world_size(k, world_size)
        limit = self._timeout if timeout is None else as_seconds(timeout)
        start = time.monotonic()
        arrived = self.add(f"{k}/num_members", 1)
        if arrived == world_size:
            self.set(f"{k}/last_member", b"1")
        try:
            self.wait([f"{k}/last_member"], limit)
        except StoreTimeout as exc:
            now_arrived = self.add(f"{k}/num_members", 0)
            raise StoreTimeout(
                "barrier",
                [k],
                time.monotonic() - start,
                limit,
                store=exc.store,
                detail=f"{now_arrived} of {world_size} participants arrived",
            ) from exc

    # ----------------------------------------------------------------- lifecycle and settings

    @property
    def timeout(self) -> timedelta:
        """The default timeout of blocking operations (``timedelta(0)`` = no limit)."""
        return timedelta(seconds=self._timeout)

    def set_timeout(self, timeout: TimeoutLike) -> None:
        """Change the default timeout used by later blocking operations."""
        self._timeout = as_seconds(timeout)

    def clone(self) -> Store:
        """Return another handle on the same data, for use from another thread."""
        raise UnsupportedOperation(type(self).__name__, "clone", "override clone() to share data")

    def close(self) -> None:
        """Release this handle; later operations on it raise :class:`StoreClosed`.  Idempotent."""
        self._closed = True

    def _check_open(self, op: str) -> None:
        """Raise :class:`StoreClosed` naming ``op`` if this handle was closed."""
        if self._closed:
            raise StoreClosed(op, repr(self))

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called on this handle."""
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


#: The start of the value ``append``'s read-only ``compare_set`` expects (then 16 random bytes).
_PROBE = b"\x00storeharness-append-probe\x00"


def _missing(store: Store, method: str) -> UnsupportedOperation:
    """The error for a core method ``store``'s class does not implement."""
    return UnsupportedOperation(
        type(store).__name__,
        method,
        f"the class does not implement it; define {method}() in {type(store).__qualname__} "
        "(the conformance suite's core_operations case lists every core method a store lacks)",
    )


_NO_QUEUES = (
    "queues cannot be built from the core operations without polling or unbounded "
    "tombstones; override queue_push/queue_pop/queue_len"
)

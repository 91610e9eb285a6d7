"""The store error tree: one root, a few branches, attributes that survive pickling.

``StoreError`` is a ``RuntimeError`` (torch's ``DistStoreError`` is one too), so code that
catches torch's errors by their builtin base keeps working.  Branches also subclass the builtin
that best names what happened (``TimeoutError``, ``ValueError``, ``NotImplementedError``,
``ConnectionError``) so that callers can catch them without importing us.

Every error is built from keyword attributes and pickles with them (``__reduce__``): errors
cross process boundaries in the harness and must arrive whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "QueueEmpty",
    "StoreBroken",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreTimeout",
    "StoreValueError",
    "UnsupportedOperation",
]


class StoreError(RuntimeError):
    """Root of every error a store raises on purpose."""

    def __init__(self, message: str, **attrs: Any) -> None:
        super().__init__(message)
        self.message = message
        self._attrs = attrs
        for name, value in attrs.items():
            setattr(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self._attrs))

    def __str__(self) -> str:
        return self.message


_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: set on classes defined in Python


def _rebuild(cls: type[StoreError], message: str, attrs: dict[str, Any]) -> StoreError:
    # Bypass subclass __init__ signatures: the message and attributes are already final.  The
    # allocation must go through the builtin that lays the object out (OSError for
    # StoreTimeout/StoreBroken), which is the first non-Python class along ``__base__``.
    base: Any = cls
    while base.__flags__ & _HEAPTYPE:
        base = base.__base__
    err: StoreError = base.__new__(cls, message)
    StoreError.__init__(err, message, **attrs)
    return err


class StoreTimeout(StoreError, TimeoutError):
    """A blocking operation ran out of time.

    Attributes: ``op`` (the operation), ``keys`` (what it waited for), ``elapsed`` and
    ``timeout`` (seconds; ``timeout`` is the limit that applied), ``store`` (a description).
    """

    op: str
    keys: tuple[str, ...]
    elapsed: float
    timeout: float
    store: str

    def __init__(
        self,
        op: str,
        keys: Sequence[str],
        elapsed: float,
        timeout: float,
        store: str = "",
        detail: str = "",
    ) -> None:
        shown = ", ".join(repr(k) for k in keys)
        where = f" on {store}" if store else ""
        message = (
            f"{op} timeout after {timeout:g} s{where} (waited {elapsed:.3f} s) for keys [{shown}]"
        )
        if detail:
            message += f": {detail}"
        StoreError.__init__(
            self,
            message,
            op=op,
            keys=tuple(keys),
            elapsed=elapsed,
            timeout=timeout,
            store=store,
            detail=detail,
        )


class QueueEmpty(StoreError):
    """A non-blocking ``queue_pop`` found the queue empty (torch: ``QueueEmptyError``)."""

    key: str

    def __init__(self, key: str, store: str = "") -> None:
        where = f" on {store}" if store else ""
        super().__init__(f"queue {key!r} is empty{where}", key=key, store=store)


class StoreClosed(StoreError):
    """The store was closed by this side (``close()``) and then used."""

    op: str
    store: str

    def __init__(self, op: str, store: str) -> None:
        super().__init__(
            f"{op}() called on {store} after close(); open a new store or clone() before closing",
            op=op,
            store=store,
        )


class StoreBroken(StoreError, ConnectionError):
    """The other side broke: a server went away, a shared file vanished or became unreadable."""

    def __init__(self, message: str, **attrs: Any) -> None:
        super().__init__(message, **attrs)


class StoreValueError(StoreError, ValueError):
    """A value or argument the store cannot use (``add`` on non-integer text, length mismatch)."""

    def __init__(self, message: str, **attrs: Any) -> None:
        super().__init__(message, **attrs)


class UnsupportedOperation(StoreError, NotImplementedError):
    """The store class cannot provide this operation (names the class and the method)."""

    store: str
    method: str

    def __init__(self, store: str, method: str, reason: str = "") -> None:
        message = f"{store} does not support {method}()"
        if reason:
            message += f": {reason}"
        super().__init__(message, store=store, method=method, reason=reason)


class StoreCorrupt(StoreError):
    """A store's persistent data is damaged (FileStore: a record that is neither whole nor a torn
    tail).  Attributes: ``path``, ``offset`` (byte offset of the bad record), ``reason``."""

    path: str
    offset: int
    reason: str

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(
            f"FileStore: {path!r} is corrupt at byte {offset}: {reason}; nothing was repaired or "
            "truncated (keep the file for inspection and start the store on a new path)",
            path=path,
            offset=offset,
            reason=reason,
        )

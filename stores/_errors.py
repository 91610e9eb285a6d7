"""The store error tree: torch's names and shape, our richer classes inside it.

torch's tree is ``DistError(RuntimeError)`` with ``DistStoreError`` and ``DistNetworkError``
under it and ``QueueEmptyError`` under ``DistStoreError``; the same four classes are defined
here (ours, not torch's: ``import stores`` never imports torch), so code written as
``except dist.QueueEmptyError`` catches our stores' errors when ``dist`` is
``storeharness.stores``.  Our classes sit inside that tree where torch raises the
corresponding error (checked against torch 2.13 in ``tests/stores/test_torch_errors.py``):

* ``StoreError(DistError)``: the root of every error our stores raise on purpose;
* ``StoreTimeout``: a ``DistStoreError`` (torch's timeouts) and a ``TimeoutError``;
* ``QueueEmpty``: a ``QueueEmptyError`` (hence a ``DistStoreError``);
* ``StoreBroken`` (the peer or the shared file went away) and ``StoreBindError`` (a server
  cannot listen): ``DistNetworkError``s, as torch's client and server failures are;
* ``StoreValueError`` a ``ValueError`` (torch's ``stoll`` errors are), ``UnsupportedOperation``
  a ``NotImplementedError`` (torch's unimplemented store methods raise one), ``StoreClosed``
  only a ``StoreError`` (torch has no ``close``).

``StoreError`` is not a ``DistStoreError``: torch code that catches ``DistStoreError`` (a
timeout, say) must not swallow a network failure, which torch never raises as one.

Every error is built from keyword attributes and pickles with them (``__reduce__``): errors
cross process boundaries in the harness and must arrive whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "DistError",
    "DistNetworkError",
    "DistStoreError",
    "QueueEmpty",
    "QueueEmptyError",
    "StoreBindError",
    "StoreBroken",
    "StoreClosed",
    "StoreError",
    "StoreTimeout",
    "StoreValueError",
    "UnsupportedOperation",
]


class DistError(RuntimeError):
    """torch's ``DistError``: the root of distributed errors (same name and base as torch's)."""


class DistStoreError(DistError):
    """torch's ``DistStoreError``: a store operation failed (torch raises it for timeouts)."""


class DistNetworkError(DistError):
    """torch's ``DistNetworkError``: a connection failed, broke, or a server could not listen."""


class QueueEmptyError(DistStoreError):
    """torch's ``QueueEmptyError``: a non-blocking ``queue_pop`` found the queue empty."""


class StoreError(DistError):
    """Root of every error a store raises on purpose (a ``DistError`` and ``RuntimeError``)."""

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


class StoreTimeout(StoreError, DistStoreError, TimeoutError):
    """A blocking operation ran out of time.

    Attributes: ``op`` (the operation), ``keys`` (what it waited for), ``elapsed`` and
    ``timeout`` (seconds; ``timeout`` is the configured limit that applied, never what was left
    of it), ``store`` (a description), ``torch`` (what torch 2.13's store of the same kind says
    for this timeout).  The message starts with ``torch``'s text, then ours.
    """

    op: str
    keys: tuple[str, ...]
    elapsed: float
    timeout: float
    store: str
    torch: str

    def __init__(
        self,
        op: str,
        keys: Sequence[str],
        elapsed: float,
        timeout: float,
        store: str = "",
        detail: str = "",
        torch: str | None = None,
    ) -> None:
        shown = ", ".join(repr(k) for k in keys)
        where = f" on {store}" if store else ""
        ours = f"{op} timeout after {timeout:g} s{where} (waited {elapsed:.3f} s)"
        ours += f" for keys [{shown}]"
        if detail:
            ours += f": {detail}"
        if torch is None:
            torch = torch_timeout_text(op, keys, timeout, store)
        message = f"{torch}; {ours}" if torch else ours
        StoreError.__init__(
            self,
            message,
            op=op,
            keys=tuple(keys),
            elapsed=elapsed,
            timeout=timeout,
            store=store,
            detail=detail,
            torch=torch,
        )


def _millis(seconds: float) -> int:
    """A timeout as torch prints it: whole milliseconds, truncated (``duration_cast``)."""
    return round(seconds * 1e6) // 1000


#: The store kinds whose torch 2.13 timeout text differs, by how our descriptions begin.
_KIND = re.compile(r"(?:TorchStore\()?(TCPStore|FileStore)")


def torch_timeout_text(op: str, keys: Sequence[str], timeout: float, store: str) -> str:
    """What torch 2.13's store of the kind ``store`` describes says when ``op`` times out.

    Measured by running torch's stores (``tests/stores/test_torch_errors.py`` compares):

    * TCPStore: ``wait timeout after 100ms, keys: /a, /b`` for ``get``, ``wait``,
      ``multi_get`` and a blocking ``queue_pop`` (keys as sent on the wire, ``/``-prefixed),
      ``barrier timeout after 100ms, key: b`` for ``barrier``;
    * FileStore: ``Timeout waiting for key: a after 100 ms`` for ``get``/``multi_get`` (the
      first key missing), ``Wait timeout`` otherwise;
    * HashStore (and any other store): ``Wait timeout``.

    Torch's texts name the keys asked for; ours give the keys still missing.  The master's wait
    for its workers (``op="init"``) carries torch's text in its detail, so nothing is added.
    """
    if op == "init":
        return ""
    found = _KIND.match(store)
    kind = found.group(1) if found else ""
    ms = _millis(timeout)
    if kind == "TCPStore":
        if op == "barrier":
            return f"barrier timeout after {ms}ms, key: {keys[0] if keys else ''}"
        return f"wait timeout after {ms}ms, keys: " + ", ".join("/" + k for k in keys)
    if kind == "FileStore" and op in ("get", "multi_get"):
        return f"Timeout waiting for key: {keys[0] if keys else ''} after {ms} ms"
    return "Wait timeout"


class QueueEmpty(StoreError, QueueEmptyError):
    """A non-blocking ``queue_pop`` found the queue empty (torch: ``QueueEmptyError``)."""

    key: str

    def __init__(self, key: str, store: str = "") -> None:
        where = f" on {store}" if store else ""
        super().__init__(f"queue is empty: {key!r}{where}", key=key, store=store)


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


class StoreBroken(StoreError, DistNetworkError, ConnectionError):
    """The other side broke: a server went away, a shared file vanished or became unreadable."""

    def __init__(self, message: str, **attrs: Any) -> None:
        super().__init__(message, **attrs)


class StoreBindError(StoreError, DistNetworkError):
    """A server could not listen: the port is in use, or the address is not this machine's.

    torch raises ``DistNetworkError`` here.  Attributes: ``port``, and ``errno`` (``EADDRINUSE``
    when the port is taken; ``None`` when the address did not resolve).
    """

    port: int
    errno: int | None

    def __init__(self, message: str, *, port: int, errno: int | None = None, **attrs: Any) -> None:
        super().__init__(message, port=port, errno=errno, **attrs)


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

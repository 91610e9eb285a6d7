"""Our Store contract over torch.distributed's stores: the one module that imports torch.

``TorchStore(dist_store)`` lets the conformance suite and the harness drive torch's TCPStore,
FileStore, HashStore and PrefixStore (or a user's store built on them).  torch's errors are
translated here, at one boundary, into ours, with the cause chained.  Imported only on demand:
``import stores`` never imports torch.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch.distributed as _dist

from ._base import Capability, Store
from ._errors import (
    QueueEmpty,
    StoreBroken,
    StoreClosed,
    StoreError,
    StoreTimeout,
    StoreValueError,
    UnsupportedOperation,
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
    check_world_size,
)

__all__ = ["TorchStore", "torch_tcp_client"]

# torch's bindings are not fully typed (pybind); treat the module as dynamic.
dist: Any = _dist

_TIMEOUT_TEXT = re.compile(r"[t -i]imeout")  # torch's own test regex for its timeout errors


def _wire(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _capabilities(store: Any) -> frozenset[Capability]:
    base = store
    while isinstance(base, dist.PrefixStore):
        base = base.underlying_store
    caps = {Capability.LIST_KEYS}
    if isinstance(base, dist.TCPStore):
        caps.add(Capability.CROSS_PROCESS)
        caps.add(Capability.CAS_WAKES)
        if base.libuvBackend:
            caps.add(Capability.QUEUES)
    elif isinstance(base, dist.FileStore):
        caps |= {Capability.CROSS_PROCESS, Capability.ADD_ERRORS, Capability.CAS_WAKES}
    elif isinstance(base, dist.HashStore):
        caps |= {Capability.QUEUES, Capability.ADD_ERRORS, Capability.CAS_WAKES}
    return frozenset(caps)


class TorchStore(Store):
    """A torch.distributed store behind our API and errors.

    ``reopen`` (a zero-argument callable returning another torch store on the same data) serves
    ``clone()`` and cross-process openers; ``on_close`` runs once when this handle closes.
    """

    def __init__(
        self,
        store: Any,
        reopen: Callable[[], Any] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if not isinstance(store, dist.Store):
            raise TypeError(f"TorchStore wraps a torch.distributed.Store, got {type(store)}")
        self._store = store
        self._reopen = reopen
        self._on_close = on_close
        self._timeout = store.timeout.total_seconds()
        self.capabilities = _capabilities(store)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"TorchStore({type(self._store).__name__})"

    @property
    def torch_store(self) -> Any:
        return self._store

    @contextlib.contextmanager
    def _call(self, op: str, keys: Sequence[str] = (), limit: float | None = None) -> Iterator[Any]:
        if self._closed:
            raise StoreClosed(op, repr(self))
        start = time.monotonic()
        try:
            yield self._store
        except dist.QueueEmptyError as exc:
            raise QueueEmpty(keys[0] if keys else "", repr(self)) from exc
        except dist.DistNetworkError as exc:
            raise StoreBroken(f"{op} on {self!r}: {exc}") from exc
        except NotImplementedError as exc:
            raise UnsupportedOperation(repr(self), op, str(exc)) from exc
        except (ValueError, IndexError) as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreValueError(f"{op}({', '.join(map(repr, keys))}) on {self!r}: {exc}") from exc
        except RuntimeError as exc:
            if isinstance(exc, StoreError) or not _TIMEOUT_TEXT.search(str(exc)):
                raise
            spent = time.monotonic() - start
            missing = self._missing(keys) if op != "barrier" else list(keys)
            limit = self._timeout if limit is None else limit
            raise StoreTimeout(op, missing, spent, limit, repr(self), torch=str(exc)) from exc

    def _missing(self, keys: Sequence[str]) -> list[str]:
        try:
            return [k for k in dict.fromkeys(keys) if not self._store.check([_wire(k)])]
        except RuntimeError:
            return list(keys)

    # ----------------------------------------------------------------- core

    def set(self, key: KeyLike, value: ValueLike) -> None:
        k = as_key(key)
        with self._call("set", [k]) as s:
            s.set(_wire(k), as_value(value))

    def get(self, key: KeyLike) -> bytes:
        k = as_key(key)
        with self._call("get", [k]) as s:
            return bytes(s.get(_wire(k)))

    def add(self, key: KeyLike, amount: int) -> int:
        k = as_key(key)
        check_amount(amount, k)
        with self._call("add", [k]) as s:
            return int(s.add(_wire(k), amount))

    def compare_set(self, key: KeyLike, expected: ValueLike, desired: ValueLike) -> bytes:
        k = as_key(key)
        exp, new = as_value(expected, "expected"), as_value(desired, "desired")
        with self._call("compare_set", [k]) as s:
            return bytes(s.compare_set(_wire(k), exp, new))

    def wait(self, keys: Sequence[KeyLike], timeout: TimeoutLike | None = None) -> None:
        names = as_keys(keys)
        limit = self._timeout if timeout is None else as_seconds(timeout)
        with self._call("wait", names, limit) as s:
            s.wait([_wire(k) for k in names], timedelta(seconds=limit))

    def check(self, keys: Sequence[KeyLike]) -> bool:
        names = as_keys(keys)
        with self._call("check", names) as s:
            return bool(s.check([_wire(k) for k in names]))

    def delete_key(self, key: KeyLike) -> bool:
        k = as_key(key)
        with self._call("delete_key", [k]) as s:
            return bool(s.delete_key(_wire(k)))

    def num_keys(self) -> int:
        with self._call("num_keys") as s:
            return int(s.num_keys())

    # ----------------------------------------------------------------- extended

    def has_extended_api(self) -> bool:
        return bool(self._store.has_extended_api())

    def append(self, key: KeyLike, value: ValueLike) -> None:
        k = as_key(key)
        with self._call("append", [k]) as s:
            s.append(_wire(k), as_value(value))

    def multi_get(self, keys: Sequence[KeyLike]) -> list[bytes]:
        names = as_keys(keys)
        if not names:
            return []
        with self._call("multi_get", names) as s:
            return [bytes(v) for v in s.multi_get([_wire(k) for k in names])]

    def multi_set(self, keys: Sequence[KeyLike], values: Sequence[ValueLike]) -> None:
        names, data = self._pairs(keys, values)  # torch's Hash/File stores misbehave on mismatch
        with self._call("multi_set", names) as s:
            s.multi_set([_wire(k) for k in names], data)

    def queue_push(self, key: KeyLike, value: ValueLike) -> None:
        k = as_key(key)
        with self._call("queue_push", [k]) as s:
            s.queue_push(_wire(k), as_value(value))

    def queue_pop(self, key: KeyLike, block: bool = True) -> bytes:
        k = as_key(key)
        with self._call("queue_pop", [k]) as s:
            return bytes(s.queue_pop(_wire(k), block))

    def queue_len(self, key: KeyLike) -> int:
        k = as_key(key)
        with self._call("queue_len", [k]) as s:
            return int(s.queue_len(_wire(k)))

    def list_keys(self) -> list[str]:
        with self._call("list_keys") as s:
            return list(s.list_keys())

    def barrier(self, key: KeyLike, world_size: int, timeout: TimeoutLike | None = None) -> None:
        k = as_key(key)
        check_world_size(k, world_size)
        limit = self._timeout if timeout is None else as_seconds(timeout)
        try:
            with self._call("barrier", [k], limit) as s:
                s.barrier(_wire(k), world_size, timedelta(seconds=limit))
        except StoreTimeout as exc:
            arrived = self._arrived(k)
            raise StoreTimeout(
                "barrier", [k], exc.elapsed, limit, repr(self),
                f"{arrived} of {world_size} participants arrived", torch=exc.torch,
            ) from exc  # fmt: skip

    def _arrived(self, key: str) -> int | str:
        """How many entered barrier ``key`` (torch's TCP counts at the key, others beside it)."""
        base = self._store
        while isinstance(base, dist.PrefixStore):
            base = base.underlying_store
        counter = key if isinstance(base, dist.TCPStore) else f"{key}/num_members"
        try:
            # Read, never write: torch's TCP servers release a barrier's waiters on any write
            # to its counter, so add(counter, 0) would let the others pass as if all arrived.
            if not self._store.check([_wire(counter)]):
                return 0
            return int(self._store.get(_wire(counter)))
        except (RuntimeError, ValueError):
            return "?"

    # ----------------------------------------------------------------- settings, lifecycle

    def set_timeout(self, timeout: TimeoutLike) -> None:
        seconds = as_seconds(timeout)
        with self._call("set_timeout") as s:
            s.set_timeout(timedelta(seconds=seconds))
        self._timeout = seconds

    def clone(self) -> TorchStore:
        with self._call("clone"):
            pass
        if self._reopen is None:
            return TorchStore(self._store.clone())
        clone = TorchStore(self._reopen())
        clone.set_timeout(self._timeout)
        return clone

    def close(self) -> None:
        """Drop our reference to the torch store (torch has no close) and run ``on_close``."""
        if self._closed:
            return
        self._closed = True
        self._store = None
        if self._on_close is not None:
            self._on_close()


def torch_tcp_client(
    host: str,
    port: int,
    timeout: float = DEFAULT_TIMEOUT,
    use_libuv: bool = True,
    on_close: Callable[[], None] | None = None,
) -> TorchStore:
    """A torch ``TCPStore`` client (no world-size handshake) behind our API.

    A module-level function of picklable arguments, so ``functools.partial`` of it opens the
    same store in another process.
    """

    def connect() -> Any:
        limit = timedelta(seconds=timeout)
        return dist.TCPStore(host, port, None, False, limit, use_libuv=use_libuv)

    return TorchStore(connect(), reopen=connect, on_close=on_close)

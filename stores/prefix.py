"""PrefixStore: a namespace inside another store (``prefix/key``), nestable."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from ._base import Capability, Store
from ._types import KeyLike, TimeoutLike, ValueLike, as_key, as_keys, as_value

__all__ = ["PrefixStore"]


class PrefixStore(Store):
    """Every key ``k`` is stored as ``f"{prefix}/{k}"`` in ``store``.

    ``num_keys()`` counts the whole underlying store (as torch does); ``list_keys()`` returns
    only the keys under ``prefix/``, with that stripped (torch matches the prefix without the
    separator, so prefix ``a`` also lists ``ab/x`` as ``/x``).  The timeout is the underlying
    store's, for ``barrier`` too.  Values reach the store beneath as ``bytes``, as torch's do
    (a ``str`` is encoded as UTF-8), so a store of your own sees one type.
    """

    def __init__(self, prefix: str, store: Store, *, _owns_store: bool = False) -> None:
        if store is None:
            raise ValueError("PrefixStore: store argument cannot be None")
        if not isinstance(store, Store):
            raise TypeError(
                "PrefixStore: store must be a storeharness.stores.Store, "
                f"got {type(store).__name__}"
            )
        if not isinstance(prefix, str):
            raise TypeError(f"PrefixStore: prefix must be str, got {type(prefix).__name__}")
        # No super().__init__: the timeout lives in (and is forwarded to) the underlying store.
        self._prefix = prefix
        self._head = prefix + "/"
        self._store = store
        # A clone owns the underlying clone it made, so closing it must close that too.
        self._owns_store = _owns_store

    @property
    def capabilities(self) -> frozenset[Capability]:  # type: ignore[override]
        return self._store.capabilities

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def underlying_store(self) -> Store:
        """The store this one writes into (may itself be a PrefixStore)."""
        return self._store

    @property
    def _underlying_non_prefix_store(self) -> Store:
        """The first store below every PrefixStore layer."""
        store = self._store
        while isinstance(store, PrefixStore):
            store = store._store
        return store

    def __repr__(self) -> str:
        return f"PrefixStore({self._prefix!r}, {self._store!r})"

    def _k(self, key: KeyLike) -> str:
        self._check_open("operation")
        return self._head + (key if type(key) is str else as_key(key))

    def _ks(self, keys: Sequence[KeyLike]) -> list[str]:
        self._check_open("operation")
        head = self._head
        return [head + k for k in as_keys(keys)]

    def set(self, key: KeyLike, value: ValueLike) -> None:
        self._store.set(self._k(key), as_value(value))

    def get(self, key: KeyLike) -> bytes:
        return self._store.get(self._k(key))

    def add(self, key: KeyLike, amount: int) -> int:
        return self._store.add(self._k(key), amount)

    def compare_set(self, key: KeyLike, expected: ValueLike, desired: ValueLike) -> bytes:
        k = self._k(key)
        exp, new = as_value(expected, "expected"), as_value(desired, "desired")
        return self._store.compare_set(k, exp, new)

    def wait(self, keys: Sequence[KeyLike], timeout: TimeoutLike | None = None) -> None:
        self._store.wait(self._ks(keys), timeout)

    def check(self, keys: Sequence[KeyLike]) -> bool:
        return self._store.check(self._ks(keys))

    def delete_key(self, key: KeyLike) -> bool:
        return self._store.delete_key(self._k(key))

    def num_keys(self) -> int:
        self._check_open("num_keys")
        return self._store.num_keys()

    def has_extended_api(self) -> bool:
        return self._store.has_extended_api()

    def append(self, key: KeyLike, value: ValueLike) -> None:
        self._store.append(self._k(key), as_value(value))

    def multi_get(self, keys: Sequence[KeyLike]) -> list[bytes]:
        return self._store.multi_get(self._ks(keys))

    def multi_set(self, keys: Sequence[KeyLike], values: Sequence[ValueLike]) -> None:
        self._store.multi_set(self._ks(keys), [as_value(v, "values[]") for v in values])

    def queue_push(self, key: KeyLike, value: ValueLike) -> None:
        self._store.queue_push(self._k(key), as_value(value))

    def queue_pop(self, key: KeyLike, block: bool = True) -> bytes:
        return self._store.queue_pop(self._k(key), block)

    def queue_len(self, key: KeyLike) -> int:
        return self._store.queue_len(self._k(key))

    def list_keys(self) -> list[str]:
        self._check_open("list_keys")
        head = self._head
        cut = len(head)
        return [k[cut:] for k in self._store.list_keys() if k.startswith(head)]

    def barrier(self, key: KeyLike, world_size: int, timeout: TimeoutLike | None = None) -> None:
        self._store.barrier(self._k(key), world_size, timeout)

    @property
    def timeout(self) -> timedelta:
        return self._store.timeout

    def set_timeout(self, timeout: TimeoutLike) -> None:
        self._store.set_timeout(timeout)

    def clone(self) -> PrefixStore:
        self._check_open("clone")
        return PrefixStore(self._prefix, self._store.clone(), _owns_store=True)

    def close(self) -> None:
        """Close this handle; the underlying store too only if this handle made it (clone)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_store:
            self._store.close()

"""torch's tests of Python Store subclasses (TestPythonStore, PythonStoreTest), on ours and torch's.

Each test runs on our ``Store``/``PrefixStore`` and, as the reference, on torch's
``dist.Store``/``dist.PrefixStore``: the same assertions, so torch passing them shows the mirror
is faithful.  Subclassing with only some methods is torch's behaviour that ours gains on the
compat branch (until it merges those cases are expected failures on ours).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest

from storeharness.harness.targets import torch_missing
from storeharness.stores import PrefixStore, Store

from .test_subclass import CoreOnlyStore

#: ``ours`` waits for the compat branch (partial subclasses); ``torch`` is the reference.
BOTH = ["ours", "torch"]


def api(which: str) -> tuple[type[Any], type[Any]]:
    """The Store base class and PrefixStore of ``which`` (``ours`` or ``torch``)."""
    if which == "ours":
        return Store, PrefixStore
    dist = _torch()
    return dist.Store, dist.PrefixStore


def _torch() -> Any:
    if why := torch_missing():
        pytest.skip(why)
    return importlib.import_module("torch.distributed")


def empty_store(which: str) -> Any:
    """torch's ``TestStore``: a subclass that implements nothing."""
    base, _ = api(which)
    return type("TestStore", (base,), {})()


def dummy_store(which: str) -> Any:
    """torch's ``DummyStore``: only the extended methods, recording their calls."""
    base, _ = api(which)

    class DummyStore(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.appends: list[tuple[str, bytes]] = []
            self.multi_sets: list[tuple[list[str], list[bytes]]] = []
            self.multi_gets: list[list[str]] = []
            self.multi_get_res: list[list[bytes]] = []
            super().__init__()

        def append(self, key: str, value: bytes) -> None:
            self.appends.append((key, value))

        def multi_get(self, keys: list[str]) -> list[bytes]:
            self.multi_gets.append(keys)
            return self.multi_get_res.pop(0)

        def multi_set(self, keys: list[str], values: list[bytes]) -> None:
            self.multi_sets.append((keys, values))

        def has_extended_api(self) -> bool:
            return True

    return DummyStore()


def _not_implemented(store: Any, which: str) -> None:
    # torch says "Not implemented."; ours names the class and the core method the fallback
    # needed (append needs compare_set, multi_get needs get, multi_set needs set), as torch's
    # fallbacks need them.  Both are RuntimeErrors.
    calls: tuple[tuple[Callable[[], object], str], ...] = (
        (lambda: store.append("foo", "bar"), "compare_set"),
        (lambda: store.multi_get(["foo", "bar"]), "get"),
        (lambda: store.multi_set(["foo", "bar"], [b"v", b"v"]), "set"),
    )
    for call, needed in calls:
        message = r"Not implemented\." if which == "torch" else rf"does not support {needed}\(\)"
        with pytest.raises(RuntimeError, match=message):
            call()


@pytest.mark.parametrize("which", BOTH)
def test_optional_methods_fail(which: str) -> None:
    store = empty_store(which)
    assert store.has_extended_api() is False
    _not_implemented(store, which)


@pytest.mark.parametrize("which", BOTH)
def test_has_extended_api_passthrough(which: str) -> None:
    _, prefix_store = api(which)
    store = prefix_store("p", empty_store(which))
    assert store.has_extended_api() is False
    _not_implemented(store, which)


@pytest.mark.parametrize("which", BOTH)
def test_has_extended_api_roundtrip(which: str) -> None:
    _, prefix_store = api(which)
    assert prefix_store("p", dummy_store(which)).has_extended_api() is True


@pytest.mark.parametrize("which", BOTH)
def test_append_roundtrip(which: str) -> None:
    _, prefix_store = api(which)
    store = dummy_store(which)
    prefix_store("p", store).append("foo", "bar")
    assert store.appends == [("p/foo", b"bar")]


@pytest.mark.parametrize("which", BOTH)
def test_multi_get_roundtrip(which: str) -> None:
    _, prefix_store = api(which)
    store = dummy_store(which)
    store.multi_get_res.append([b"x", b"y"])
    assert prefix_store("p", store).multi_get(["foo", "bar"]) == [b"x", b"y"]
    assert store.multi_gets == [["p/foo", "p/bar"]]


@pytest.mark.parametrize("which", BOTH)
def test_multi_set_roundtrip(which: str) -> None:
    _, prefix_store = api(which)
    store = dummy_store(which)
    prefix_store("p", store).multi_set(["foo", "bar"], [b"x", b"y"])
    assert store.multi_sets == [(["p/foo", "p/bar"], [b"x", b"y"])]


def test_extended_methods_fallbacks() -> None:
    # torch's newer test: a PrefixStore over a store without the extended API falls back on
    # the core (append by compare_set, multi_set/multi_get by set/get).  torch 2.13 has no
    # such fallback for Python stores, so only ours runs it.
    store = PrefixStore("p", CoreOnlyStore())
    assert store.has_extended_api() is False
    store.set("foo", "po")
    store.append("foo", "tato")
    store.append("bar", "potato")
    assert store.get("foo") == b"potato" and store.get("bar") == b"potato"
    store.multi_set(["a", "b"], [b"x", b"y"])
    assert store.multi_get(["b", "a"]) == [b"y", b"x"]
    assert store.underlying_store.get("p/a") == b"x"


def _python_store(which: str) -> Any:
    """torch's ``MyPythonStore``: set, get (b"" when absent), add, compare_set, clone."""
    base, _ = api(which)

    class MyPythonStore(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.store: dict[str, bytes] = {}

        def set(self, key: str, value: bytes) -> None:
            assert isinstance(key, str | bytes), "set with a string key"
            self.store[key] = value if isinstance(value, bytes) else value.encode()

        def get(self, key: str) -> bytes:
            return self.store.get(key, b"")

        def add(self, key: str, value: int) -> int:
            new = int(self.store.get(key, b"0") or b"0") + value
            self.set(key, str(new).encode())
            return new

        def compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
            current = self.store.get(key)
            if (current is None and expected) or (current is not None and current != expected):
                return expected if current is None else current
            self.set(key, desired)
            return self.store[key]

        def clone(self) -> Any:
            return self  # as torch's HashStore (a new Python object would die in C++'s hands)

    return MyPythonStore()


@pytest.mark.parametrize("which", BOTH)
def test_python_store_set_get(which: str) -> None:
    # PythonStoreTest.test_set_get: torch drives its store from C++ (_test_python_store); here
    # the same sequence through the Python API of a store that implements only those methods
    if which == "torch":
        _torch()._test_python_store(_python_store(which))
    store = _python_store(which)
    for amount in (1, 2, 3):
        store.add("key", amount)
    store.set("key0", b"value0")
    assert store.get("key") == b"6" and store.get("key0") == b"value0"
    assert store.get("absent") == b""
    assert store.compare_set("key0", b"value0", b"next") == b"next"
    assert store.clone().get("key0") == b"next"

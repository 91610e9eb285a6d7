"""A user's store implementing only the core gets the rest from the base class."""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from storeharness.stores import HashStore, PrefixStore, Store, StoreTimeout, UnsupportedOperation
from storeharness.stores._types import (
    KeyLike,
    TimeoutLike,
    ValueLike,
    as_key,
    as_keys,
    as_seconds,
    as_value,
)
from storeharness.stores.conformance import Backend, check_store

from .backends import torch_missing


class CoreOnlyStore(Store):
    """The smallest honest store: a dict and one condition, only the core methods."""

    def __init__(self, shared: tuple[dict[str, bytes], threading.Condition] | None = None):
        super().__init__()
        self._data, self._cond = shared or ({}, threading.Condition())

    def set(self, key: KeyLike, value: ValueLike) -> None:
        with self._cond:
            self._data[as_key(key)] = as_value(value)
            self._cond.notify_all()

    def get(self, key: KeyLike) -> bytes:
        self.wait([key])
        with self._cond:
            return self._data[as_key(key)]

    def add(self, key: KeyLike, amount: int) -> int:
        with self._cond:
            k = as_key(key)
            total = int(self._data.get(k, b"0")) + amount
            self._data[k] = str(total).encode()
            self._cond.notify_all()
            return total

    def compare_set(self, key: KeyLike, expected: ValueLike, desired: ValueLike) -> bytes:
        with self._cond:
            k, exp, new = as_key(key), as_value(expected), as_value(desired)
            cur = self._data.get(k)
            if (cur is None and exp) or (cur is not None and cur != exp):
                return exp if cur is None else cur
            self._data[k] = new
            self._cond.notify_all()
            return new

    def wait(self, keys: Sequence[KeyLike], timeout: TimeoutLike | None = None) -> None:
        names = as_keys(keys)
        limit = self._timeout if timeout is None else as_seconds(timeout)
        start = time.monotonic()
        with self._cond:
            ok = self._cond.wait_for(lambda: all(k in self._data for k in names), limit or None)
            if not ok:
                missing = [k for k in names if k not in self._data]
                raise StoreTimeout("wait", missing, time.monotonic() - start, limit, "CoreOnly")

    def check(self, keys: Sequence[KeyLike]) -> bool:
        with self._cond:
            return all(k in self._data for k in as_keys(keys))

    def delete_key(self, key: KeyLike) -> bool:
        with self._cond:
            return self._data.pop(as_key(key), None) is not None

    def num_keys(self) -> int:
        with self._cond:
            return len(self._data)

    def clone(self) -> CoreOnlyStore:
        return CoreOnlyStore((self._data, self._cond))


class Partial(Store):
    """set/get/add/compare_set only, as torch allows; values must arrive as bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, bytes] = {}
        self.calls: list[str] = []

    def set(self, key: KeyLike, value: ValueLike) -> None:
        self.calls.append("set")
        self.data[as_key(key)] = as_value(value)

    def get(self, key: KeyLike) -> bytes:
        self.calls.append("get")
        return self.data[as_key(key)]

    def add(self, key: KeyLike, amount: int) -> int:
        self.calls.append("add")
        total = int(self.data.get(as_key(key), b"0")) + amount
        self.data[as_key(key)] = str(total).encode()
        return total

    def compare_set(self, key: KeyLike, expected: ValueLike, desired: ValueLike) -> bytes:
        self.calls.append("compare_set")
        k, exp, new = as_key(key), as_value(expected), as_value(desired)
        cur = self.data.get(k)
        if (cur is None and exp) or (cur is not None and cur != exp):
            return exp if cur is None else cur
        self.data[k] = new
        return new


def test_a_subclass_with_some_methods_is_legal_and_names_each_one_it_lacks() -> None:
    s = Partial()
    s.set("a", "1")
    assert (s.get("a"), s.add("n", 2)) == (b"1", 2)
    lacking = {
        "wait": (["a"],),
        "check": (["a"],),
        "delete_key": ("a",),
        "num_keys": (),
        "queue_push": ("q", "v"),
        "list_keys": (),
    }
    for method, args in lacking.items():
        with pytest.raises(UnsupportedOperation, match=rf"^Partial does not support {method}\(\)"):
            getattr(s, method)(*args)
        with pytest.raises(NotImplementedError):  # as torch code catches it
            getattr(s, method)(*args)
    assert isinstance(Store(), Store)  # like torch's Store(), the base itself can be made


def test_the_extended_fallbacks_need_only_what_torchs_need() -> None:
    s = Partial()
    s.data["xx"] = b"x"
    s.append("ap", "po")  # absent: created
    s.append("ap", "tato")
    s.append("xx", "x")  # torch's fallback leaves "x" here; ours reads first
    assert set(s.calls) == {"compare_set"}, s.calls
    assert (s.data["ap"], s.data["xx"]) == (b"potato", b"xx")
    s.calls.clear()
    s.multi_set(["m1", "m2"], ["a", b"b"])
    assert s.calls == ["set", "set"]
    assert s.multi_get(["m2", "m1"]) == [b"b", b"a"]
    assert s.calls == ["set", "set", "get", "get"]  # no wait: the class has none


def test_append_reads_with_a_compare_set_that_cannot_write() -> None:
    s = Partial()
    s.append("k", "v")
    probes = [c for c in s.calls if c == "compare_set"]
    assert len(probes) == 2 and list(s.data) == ["k"]  # the probe created nothing


@pytest.mark.skipif(torch_missing() is not None, reason=str(torch_missing()))
def test_torchs_store_allows_the_same_partial_subclass() -> None:
    dist: Any = importlib.import_module("torch.distributed")

    class TorchPartial(dist.Store):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.data: dict[str, bytes] = {}

        def set(self, key: str, value: bytes) -> None:
            self.data[key] = value if isinstance(value, bytes) else value.encode()

        def get(self, key: str) -> bytes:
            return self.data[key]

        def compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
            cur = self.data.get(key)
            if (cur is None and expected) or (cur is not None and cur != expected):
                return expected if cur is None else cur
            self.data[key] = desired
            return desired

    t = TorchPartial()
    t.append("ap", "po")
    t.append("ap", "tato")
    t.multi_set(["m1"], ["a"])
    assert (t.data["ap"], t.multi_get(["m1"])) == (b"potato", [b"a"])
    with pytest.raises(RuntimeError, match=r"pure virtual function.*wait"):
        t.wait(["ap"])


def test_conformance_names_every_core_method_a_store_lacks() -> None:
    (outcome,) = check_store(Backend("partial", Partial), ["core_operations"])
    assert outcome.status == "failed"
    assert "Partial does not implement wait(), check(), delete_key(), num_keys()" in outcome.detail


def test_extended_operations_come_from_the_core() -> None:
    s = CoreOnlyStore()
    assert s.has_extended_api() is False
    s.set("ap", "po")
    s.append("ap", "tato")
    s.append("fresh", "x")
    assert s.get("ap") == b"potato" and s.get("fresh") == b"x"
    s.multi_set(["a", "b"], ["1", "2"])
    assert s.multi_get(["b", "a"]) == [b"2", b"1"]
    s.barrier("solo", 1, 1.0)
    assert s.timeout.total_seconds() == 300


@pytest.mark.parametrize("method", ["queue_push", "queue_pop", "queue_len", "list_keys"])
def test_impossible_operations_name_class_and_method(method: str) -> None:
    s = CoreOnlyStore()
    args = {"queue_push": ("q", "v"), "queue_pop": ("q",), "queue_len": ("q",), "list_keys": ()}
    with pytest.raises(UnsupportedOperation, match=f"CoreOnlyStore does not support {method}"):
        getattr(s, method)(*args[method])


def test_clone_unsupported_unless_overridden() -> None:
    class NoClone(CoreOnlyStore):
        clone = Store.clone  # type: ignore[assignment]

    with pytest.raises(UnsupportedOperation, match=r"NoClone does not support clone\(\)"):
        NoClone().clone()


def test_conformance_on_a_user_store_skips_by_capability() -> None:
    outcomes = {o.case: o for o in check_store(Backend("core-only", CoreOnlyStore))}
    failed = {n: o.detail for n, o in outcomes.items() if o.status == "failed"}
    # The minimal store cuts corners the suite must catch: int() instead of stoll, no
    # close() checks, and a get() whose timeout reports the wait it delegates to.  Everything
    # else it implements, and every fallback the base class supplies, must pass.
    expected = {"add_parses_like_stoll", "bad_arguments", "close", "get_timeout"}
    assert set(failed) == expected, failed
    skipped = {n: o.detail for n, o in outcomes.items() if o.status == "skipped"}
    assert "queues" in skipped and "does not offer capability queues" in skipped["queues"]
    assert "list_keys" in skipped
    for name in ["append", "multi_set_get", "barrier_exchange", "barrier_errors", "concurrent_add"]:
        assert outcomes[name].status == "passed", outcomes[name]


def test_append_fallback_survives_a_concurrent_delete() -> None:
    s = PrefixStore("p", CoreOnlyStore())
    s.set("k", "a")
    s.delete_key("k")
    s.append("k", "b")
    assert s.get("k") == b"b"


def test_prefix_over_hash_forwards_extended_api() -> None:
    assert PrefixStore("p", HashStore()).has_extended_api() is True
    assert PrefixStore("p", CoreOnlyStore()).has_extended_api() is False


class BytesOnly(CoreOnlyStore):
    """A store of one's own that insists on bytes values, as torch's PrefixStore gives them."""

    def __init__(self) -> None:
        super().__init__()
        self.pushed: list[bytes] = []

    def set(self, key: KeyLike, value: ValueLike) -> None:
        assert type(value) is bytes, f"set got {type(value).__name__}"
        super().set(key, value)

    def compare_set(self, key: KeyLike, expected: ValueLike, desired: ValueLike) -> bytes:
        assert type(expected) is bytes and type(desired) is bytes, "compare_set got str"
        return super().compare_set(key, expected, desired)

    def append(self, key: KeyLike, value: ValueLike) -> None:
        assert type(value) is bytes, f"append got {type(value).__name__}"
        super().append(key, value)

    def multi_set(self, keys: Sequence[KeyLike], values: Sequence[ValueLike]) -> None:
        assert all(type(v) is bytes for v in values), "multi_set got a non-bytes value"
        super().multi_set(keys, values)

    def queue_push(self, key: KeyLike, value: ValueLike) -> None:
        assert type(value) is bytes, f"queue_push got {type(value).__name__}"
        self.pushed.append(value)


def test_prefix_store_hands_bytes_to_the_store_beneath() -> None:
    inner = BytesOnly()
    p = PrefixStore("p", inner)
    p.set("k", "v")
    assert p.compare_set("k", "v", "w") == b"w"
    p.append("k", "x")
    p.multi_set(["a", "b"], ["1", bytearray(b"2")])
    p.queue_push("q", "item")
    assert inner.multi_get(["p/k", "p/a", "p/b"]) == [b"wx", b"1", b"2"]
    assert inner.pushed == [b"item"]
    nested = PrefixStore("outer", PrefixStore("inner", BytesOnly()))
    nested.set("k", memoryview(b"m"))
    assert nested.get("k") == b"m"

"""torch's ``test/distributed/test_store.py``, case by case, on one store at a time.

Each case is named after torch's test and asserts what torch's asserts, in torch's terms
(torch's errors are ``RuntimeError``s; ours too), so it can run on torch's own stores through
the adapter as well as on ours: the same case passing on both is the evidence that ours behaves
as torch's does.  Two differences, both so the cases run on any store and quickly: key counts
are taken relative to the count at the start (a fresh TCPStore holds torch's ``init/`` key, a
namespaced one more), and timeouts that must fire are short.  Cases that need several ranks
are scenarios (``scenarios/torch_suite.py``); ``docs/scenarios.md`` maps every torch case.
"""

from __future__ import annotations

from datetime import timedelta

from .._base import Capability, Store
from .._errors import QueueEmpty, StoreTimeout
from ..prefix import PrefixStore
from ._core import TORCH_CASES, Context, case, expect, expect_equal, expect_raises

QUEUES = Capability.QUEUES
#: A timeout that must fire: torch's tests use 0.25 s (wait), 10 ms (queue pop) and 2 s (get).
SHORT = 0.25


def _counted(store: Store, start: int, added: int, what: str) -> None:
    expect_equal(store.num_keys(), start + added, f"num_keys {what} (relative to the start)")


@case(into=TORCH_CASES)
def case_set_get_check(ctx: Context) -> None:
    """StoreTestBase.test_set_get_check: adds, sets, counts, check, and a key starting '-'."""
    fs = ctx.store
    start = fs.num_keys()
    for amount in (1, 2, 3):
        fs.add("key", amount)
    fs.set("key0", "value0")
    fs.add("key3", 1)
    fs.set("key1", "value1")
    fs.add("key3", 2)
    fs.set("key2", "value2")
    for amount in (3, 4, 5, 6):
        fs.add("key3", amount)
    _counted(fs, start, 5, "after 5 keys")
    expect_equal(fs.get("key"), b"6", "1+2+3")
    expect_equal(fs.get("key0"), b"value0", "key0")
    expect_equal(fs.get("key1"), b"value1", "key1")
    expect_equal(fs.get("key2"), b"value2", "key2")
    expect_equal(fs.get("key3"), b"21", "1+...+6")
    expect(fs.check(["key3"]) is True, "check(['key3']) is True")
    expect(fs.check(["Randomkey3"]) is False, "check(['Randomkey3']) is False")
    fs.set("-key3", "7")
    expect_equal(fs.get("-key3"), b"7", "a key starting with '-'")
    fs.delete_key("-key3")
    _counted(fs, start, 5, "after deleting '-key3'")


@case(into=TORCH_CASES)
def case_compare_set(ctx: Context) -> None:
    """StoreTestBase.test_compare_set: missing key, mismatch, match, empty expected."""
    store = ctx.store
    got = store.compare_set("cs_key0", "wrong_old_value", "new_value0")
    expect_equal(got, b"wrong_old_value", "missing key: returns the expected value")
    expect(not store.check(["cs_key0"]), "missing key: nothing created")
    store.set("cs_key0", "value0")
    expect_equal(store.compare_set("cs_key0", "wrong_old_value", "new_value0"), b"value0",
                 "mismatch returns the current value")  # fmt: skip
    expect_equal(store.get("cs_key0"), b"value0", "mismatch writes nothing")
    expect_equal(store.compare_set("cs_key0", "value0", "new_value0"), b"new_value0", "match")
    expect_equal(store.get("cs_key0"), b"new_value0", "match writes")
    expect_equal(store.compare_set("cs_key1", "", "new_value1"), b"new_value1",
                 "empty expected on a missing key creates it")  # fmt: skip
    expect_equal(store.get("cs_key1"), b"new_value1", "created")


@case(into=TORCH_CASES)
def case_simple_wait(ctx: Context) -> None:
    """StoreTestBase.test_simple_wait: a 0.25 s wait on a missing key times out, then one works."""
    fs = ctx.store
    expect_raises(RuntimeError, lambda: fs.wait(["bad_key"], timedelta(seconds=SHORT)),
                  "wait on a missing key", match="[t -i]imeout")  # fmt: skip
    fs.add("good_key", 1)
    fs.wait(["good_key"])


@case(into=TORCH_CASES)
def case_append(ctx: Context) -> None:
    """StoreTestBase.test_append: append to an existing key and to a new one."""
    store = ctx.store
    store.set("foo", "po")
    store.append("foo", "tato")
    store.append("bar", "po")
    store.append("bar", "tato")
    expect_equal(store.get("foo"), b"potato", "append to an existing key")
    expect_equal(store.get("bar"), b"potato", "append to a new key, twice")


@case(into=TORCH_CASES)
def case_multi_set(ctx: Context) -> None:
    """StoreTestBase.test_multi_set: two keys in one call, read back one by one."""
    store = ctx.store
    store.multi_set(["foo", "bar"], ["po", "tato"])
    expect_equal(store.get("foo"), b"po", "foo")
    expect_equal(store.get("bar"), b"tato", "bar")


@case(into=TORCH_CASES)
def case_multi_get(ctx: Context) -> None:
    """StoreTestBase.test_multi_get: two keys set one by one, read in one call, in order."""
    store = ctx.store
    store.set("foo", "po")
    store.set("bar", "tato")
    expect_equal(store.multi_get(["foo", "bar"]), [b"po", b"tato"], "multi_get")


@case(QUEUES, into=TORCH_CASES)
def case_queues(ctx: Context) -> None:
    """StoreTestBase.test_queues: lengths, check and wait on a queue, FIFO pops."""
    store = ctx.store
    expect(not store.check(["foo"]), "no queue yet: check is False")
    expect_equal(store.queue_len("foo"), 0, "no queue yet: length 0")
    store.queue_push("foo", "1")
    store.queue_push("foo", "2")
    expect(store.check(["foo"]), "a non-empty queue: check is True")
    expect_equal(store.queue_len("foo"), 2, "length after two pushes")
    store.wait(["foo"], timedelta(seconds=SHORT))  # a non-empty queue satisfies a wait
    expect_equal(store.queue_pop("foo"), b"1", "first in, first out")
    expect_equal(store.queue_pop("foo"), b"2", "then the second")
    expect_equal(store.queue_len("foo"), 0, "empty after two pops")


@case(QUEUES, into=TORCH_CASES)
def case_queues_nonblocking(ctx: Context) -> None:
    """StoreTestBase.test_queues_nonblocking: an empty non-blocking pop raises 'queue is empty'."""
    store = ctx.store
    err = expect_raises(QueueEmpty, lambda: store.queue_pop("foo", block=False),
                        "non-blocking pop on an empty queue", match="empty")  # fmt: skip
    expect(isinstance(err, RuntimeError), "the error is a RuntimeError, as torch's")
    store.queue_push("foo", "a")
    expect_equal(store.queue_pop("foo", block=False), b"a", "non-blocking pop of a value")


@case(QUEUES, into=TORCH_CASES)
def case_queues_timeout(ctx: Context) -> None:
    """StoreTestBase.test_queues_timeout: a blocking pop on an empty queue times out."""
    store = ctx.store
    store.set_timeout(timedelta(milliseconds=10))
    expect_raises(StoreTimeout, lambda: store.queue_pop("non_existant"),
                  "blocking pop on an empty queue", match="timeout")  # fmt: skip


@case(into=TORCH_CASES)
def case_clone(ctx: Context) -> None:
    """StoreTestBase.test_clone: a clone is a Store and sees the original's writes."""
    store = ctx.store
    clone = store.clone()
    try:
        expect(isinstance(clone, Store), f"clone() returned {type(clone).__name__}, not a Store")
        store.set("foo", "bar")
        expect_equal(clone.get("foo"), b"bar", "the clone reads the original's write")
    finally:
        clone.close()


@case(into=TORCH_CASES)
def case_numkeys_delkeys(ctx: Context) -> None:
    """TCPStoreTest.test_numkeys_delkeys: counts follow adds, sets and deletes; a deleted key's
    get times out."""
    fs = ctx.store
    start = fs.num_keys()
    for amount in (1, 2, 3):
        fs.add("key", amount)
    fs.set("key0", "value0")
    fs.add("key3", 1)
    fs.set("key1", "value1")
    _counted(fs, start, 4, "after 4 keys")
    fs.delete_key("key")
    _counted(fs, start, 3, "after a delete")
    fs.set_timeout(timedelta(seconds=SHORT))
    expect_raises(RuntimeError, lambda: fs.get("key"), "get of the deleted key")
    fs.delete_key("key0")
    fs.delete_key("key3")
    _counted(fs, start, 1, "after two more deletes")
    fs.set("key4", "value2")
    _counted(fs, start, 2, "after a set")
    expect_equal(fs.get("key1"), b"value1", "key1")
    expect_equal(fs.get("key4"), b"value2", "key4")


@case(into=TORCH_CASES)
def case_get_underlying_store(ctx: Context) -> None:
    """PrefixStoreTest.test_get_underlying_store: a PrefixStore hands back the store it wraps."""
    prefixed = PrefixStore("prefix", ctx.store)
    expect(prefixed.underlying_store is ctx.store, "underlying_store is the wrapped store")
    expect_raises(ValueError, lambda: PrefixStore("prefix", None),  # type: ignore[arg-type]
                  "PrefixStore over None")  # fmt: skip


@case(into=TORCH_CASES)
def case_underlying_non_prefix_store(ctx: Context) -> None:
    """PrefixTCPStoreTest.test_underlying_non_prefix_store: through one and two PrefixStores."""
    base = ctx.store
    while isinstance(base, PrefixStore):  # a prefix target's store is a PrefixStore already
        base = base.underlying_store
    one = PrefixStore("prefix", ctx.store)
    two = PrefixStore("prefix2", one)
    expect(one._underlying_non_prefix_store is base, "through one PrefixStore")
    expect(two._underlying_non_prefix_store is base, "through two PrefixStores")

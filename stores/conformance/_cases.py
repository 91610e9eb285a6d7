"""The contract, case by case.  Each case gets a fresh store and asserts through ``expect*``.

Workers run by ``ctx.parties`` are module-level functions so that they pickle into processes.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from .._base import Capability, Store
from .._errors import QueueEmpty, StoreClosed, StoreError, StoreTimeout, StoreValueError
from ._core import (
    Context,
    case,
    expect,
    expect_equal,
    expect_raises,
)

QUEUES = Capability.QUEUES
LIST_KEYS = Capability.LIST_KEYS
#: Short limits: long enough never to fire on a loaded 2-core machine when they should not.
SHORT = 0.2
GENEROUS = 30.0


# --------------------------------------------------------------------------- what it implements


@case()
def case_core_operations(ctx: Context) -> None:
    """Every core operation is implemented; the failure names each one the store lacks."""
    s = ctx.store
    s.set_timeout(timedelta(seconds=SHORT))  # a get whose key set() could not write ends soon
    calls: list[tuple[str, Callable[[], object]]] = [
        ("set", lambda: s.set("core/k", "v")),
        ("add", lambda: s.add("core/n", 1)),
        ("get", lambda: s.get("core/k")),
        ("compare_set", lambda: s.compare_set("core/c", "", "v")),
        ("wait", lambda: s.wait(["core/n"], SHORT)),
        ("check", lambda: s.check(["core/k"])),
        ("delete_key", lambda: s.delete_key("core/k")),
        ("num_keys", s.num_keys),
    ]
    missing = []
    for name, call in calls:
        try:
            call()
        except NotImplementedError:  # UnsupportedOperation, or a store's own
            missing.append(f"{name}()")
        except StoreError:
            pass  # implemented (a timeout because another method is missing, say)
    expect(
        not missing,
        f"{type(s).__name__} does not implement {', '.join(missing)}; every case that uses "
        "them fails too (define them in the class)",
    )


# --------------------------------------------------------------------------- values and keys


@case()
def case_set_get(ctx: Context) -> None:
    """set then get returns bytes; str and bytes values; overwrite wins."""
    s = ctx.store
    s.set("key", "value")
    expect_equal(s.get("key"), b"value", "get after set(str)")
    s.set("key", b"\x00\xffraw")
    expect_equal(s.get("key"), b"\x00\xffraw", "get after overwrite with bytes")
    s.set("other", bytearray(b"ba"))
    expect_equal(s.get("other"), b"ba", "bytearray value")
    expect(isinstance(s.get("other"), bytes), "get must return bytes")


@case()
def case_empty_value(ctx: Context) -> None:
    """An empty value is a value: it exists, reads back empty, counts as a key."""
    s = ctx.store
    s.set("empty", b"")
    expect_equal(s.get("empty"), b"", "get of empty value")
    expect(s.check(["empty"]), "check sees an empty value")
    s.wait(["empty"], SHORT)


@case()
def case_unicode_keys(ctx: Context) -> None:
    """Keys are arbitrary text: accents, CJK, emoji, separators, NUL."""
    s = ctx.store
    keys = ["ké", "鍵/サブ", "emoji 🔑", "a/b/c", "nul\x00inside", " "]
    for i, k in enumerate(keys):
        s.set(k, str(i))
    for i, k in enumerate(keys):
        expect_equal(s.get(k), str(i).encode(), f"get({k!r})")
    expect(s.check(keys), "check all unicode keys")


@case()
def case_binary_keys(ctx: Context) -> None:
    """bytes keys work, including undecodable bytes, and equal their UTF-8 str form."""
    s = ctx.store
    s.set(b"\xff\xfe raw", "1")
    expect_equal(s.get(b"\xff\xfe raw"), b"1", "get with the same bytes key")
    s.set(b"caf\xc3\xa9", "2")
    expect_equal(s.get("café"), b"2", "bytes key and its UTF-8 str are the same key")


@case()
def case_bad_arguments(ctx: Context) -> None:
    """Wrong types are rejected with TypeError naming the argument; nothing is written."""
    s = ctx.store
    expect_raises(TypeError, lambda: s.set("k", 5), "set(int value)", match="value")  # type: ignore[arg-type]
    expect_raises(TypeError, lambda: s.set(5, "v"), "set(int key)", match="key")  # type: ignore[arg-type]
    expect_raises(TypeError, lambda: s.check("abc"), "check(str)", match="list of keys")
    expect_raises(TypeError, lambda: s.wait("abc", SHORT), "wait(str)", match="list of keys")
    expect_raises(TypeError, lambda: s.add("k", 2**63), "add amount beyond int64")
    expect_raises(TypeError, lambda: s.add("k", 1.5), "add float amount")  # type: ignore[arg-type]
    expect(not s.check(["k"]), "rejected calls wrote nothing")


# --------------------------------------------------------------------------- counters


@case()
def case_add(ctx: Context) -> None:
    """add creates, increments, goes negative, returns int, stores decimal text."""
    s = ctx.store
    expect_equal(s.add("c", 1), 1, "add on absent key")
    expect_equal(s.add("c", 2), 3, "add")
    expect_equal(s.add("c", 3), 6, "add")
    expect_equal(s.get("c"), b"6", "counter is stored as decimal text")
    expect_equal(s.add("c", -10), -4, "negative add")
    expect_equal(s.add("zero", 0), 0, "add 0 on absent key creates 0")
    expect(s.check(["zero"]), "add 0 created the key")


@case()
def case_add_parses_like_stoll(ctx: Context) -> None:
    """add reads existing text like std::stoll; int64 wraps."""
    s = ctx.store
    for text, start in [(" 12", 12), ("12abc", 12), ("+5", 5), ("-7", -7), ("0x10", 0)]:
        s.set("n", text)
        expect_equal(s.add("n", 1), start + 1, f"add 1 to {text!r}")
    s.set("n", str(2**63 - 1))
    expect_equal(s.add("n", 1), -(2**63), "int64 overflow wraps")


@case(Capability.ADD_ERRORS)
def case_add_rejects_non_integer(ctx: Context) -> None:
    """add on junk raises ValueError naming the key, leaves the value, keeps the store usable."""
    s = ctx.store
    s.set("n", "")
    expect_equal(s.add("n", 1), 1, "an empty value counts as 0")
    s.set("n", "abc")
    err = expect_raises(ValueError, lambda: s.add("n", 1), "add on non-integer", match="n'")
    expect(isinstance(err, StoreError), "non-integer add raises a StoreError")
    expect_equal(s.get("n"), b"abc", "failed add leaves the value alone")
    s.set("n", "99999999999999999999")
    expect_raises(ValueError, lambda: s.add("n", 1), "add on out-of-range text")
    expect_equal(s.add("fine", 2), 2, "the store is still usable")


@case()
def case_compare_set(ctx: Context) -> None:
    """compare_set's four cases, and that only a write changes the store."""
    s = ctx.store
    expect_equal(s.compare_set("cs", "wrong", "new"), b"wrong", "absent + non-empty expected")
    expect(not s.check(["cs"]), "absent + non-empty expected writes nothing")
    expect_equal(s.compare_set("cs", "", "first"), b"first", "absent + empty expected creates")
    expect_equal(s.get("cs"), b"first", "created value")
    expect_equal(s.compare_set("cs", "nope", "x"), b"first", "present + mismatch")
    expect_equal(s.compare_set("cs", "first", "second"), b"second", "present + match")
    expect_equal(s.get("cs"), b"second", "matched value written")
    expect_equal(s.compare_set("cs", "", "x"), b"second", "present + empty expected mismatches")
    s.set("e", b"")
    expect_equal(s.compare_set("e", "", "filled"), b"filled", "present empty + empty expected")


# --------------------------------------------------------------------------- existence and waiting


@case()
def case_check(ctx: Context) -> None:
    """check([]) is True; all keys must exist."""
    s = ctx.store
    expect(s.check([]), "check([]) is True")
    s.set("a", "1")
    expect(s.check(["a"]), "check existing")
    expect(not s.check(["a", "missing"]), "check with one missing key")


@case()
def case_wait_present_and_empty(ctx: Context) -> None:
    """wait([]) and wait on existing keys return at once."""
    s = ctx.store
    s.wait([])
    s.set("a", "1")
    s.set("b", "2")
    s.wait(["a", "b"])
    s.wait(["a"], timedelta(seconds=SHORT))


@case()
def case_wait_timeout(ctx: Context) -> None:
    """A wait that times out raises StoreTimeout naming the key, the limit and time waited."""
    s = ctx.store
    s.set("there", "1")
    start = time.monotonic()
    err = expect_raises(
        StoreTimeout, lambda: s.wait(["there", "bad_key"], SHORT), "wait", match="[t -i]imeout"
    )
    spent = time.monotonic() - start
    expect(spent >= SHORT, f"wait gave up after {spent:.3f} s, before its {SHORT} s limit")
    expect(isinstance(err, TimeoutError) and isinstance(err, RuntimeError), "error bases")
    assert isinstance(err, StoreTimeout)
    _expect_names(err, "bad_key")
    expect_equal(err.timeout, SHORT, "StoreTimeout.timeout")
    expect(err.elapsed >= SHORT, "StoreTimeout.elapsed covers the wait")
    expect("bad_key" in str(err), "message names the key")
    clone = pickle.loads(pickle.dumps(err))
    expect_equal((type(clone), clone.keys, str(clone)), (type(err), err.keys, str(err)), "pickle")
    s.add("good_key", 1)
    s.wait(["good_key"], SHORT)


@case()
def case_get_timeout(ctx: Context) -> None:
    """get on a missing key waits for the store timeout and then raises StoreTimeout."""
    s = ctx.store
    s.set_timeout(timedelta(seconds=SHORT))
    expect_equal(s.timeout, timedelta(seconds=SHORT), "timeout property after set_timeout")
    err = expect_raises(StoreTimeout, lambda: s.get("never"), "get", match="never")
    assert isinstance(err, StoreTimeout)
    expect_equal(err.op, "get", "StoreTimeout.op")
    s.set_timeout(GENEROUS)
    expect_equal(s.timeout, timedelta(seconds=GENEROUS), "set_timeout accepts seconds")
    expect_raises(ValueError, lambda: s.set_timeout(-1), "negative timeout")
    expect_raises(TypeError, lambda: s.set_timeout("1"), "string timeout")  # type: ignore[arg-type]


def _expect_names(err: StoreTimeout, key: str) -> None:
    """The error names exactly the missing key (as stored: a PrefixStore shows its prefix)."""
    expect(
        len(err.keys) == 1 and err.keys[0].endswith(key),
        f"StoreTimeout.keys should name only {key!r}, got {err.keys!r}",
    )


def _set_after_go(opener: Callable[[], Store], go: threading.Event, key: str, how: str) -> None:
    with opener() as peer:
        go.wait(GENEROUS)
        if how == "set":
            peer.set(key, "v")
        elif how == "add":
            peer.add(key, 1)
        elif how == "append":
            peer.append(key, "v")
        elif how == "multi_set":
            peer.multi_set([key], ["v"])
        elif how == "compare_set":
            peer.compare_set(key, "", "v")


@case()
def case_wait_woken_by_every_writer(ctx: Context) -> None:
    """A blocked wait/get returns when another handle creates the key by any write."""
    s = ctx.store
    writers = ["set", "add", "append", "multi_set"]
    if Capability.CAS_WAKES in ctx.capabilities:
        writers.append("compare_set")
    for how in writers:
        key = f"woken_by_{how}"
        go = threading.Event()
        t = threading.Thread(target=_set_after_go, args=(ctx.open_peer, go, key, how))
        t.start()
        go.set()
        s.wait([key], GENEROUS)
        expect(len(s.get(key)) > 0, f"value written by {how} is visible")
        t.join(GENEROUS)


@case()
def case_get_blocks_until_set(ctx: Context) -> None:
    """get on a key another thread sets later returns that value."""
    s = ctx.store
    s.set_timeout(GENEROUS)
    go = threading.Event()
    t = threading.Thread(target=_set_after_go, args=(ctx.open_peer, go, "late", "set"))
    t.start()
    go.set()
    expect_equal(s.get("late"), b"v", "get woken by set")
    t.join(GENEROUS)


# --------------------------------------------------------------------------- deletion and counting


@case()
def case_delete_key(ctx: Context) -> None:
    """delete_key says whether it removed something; the key is then gone."""
    s = ctx.store
    s.set("d", "1")
    expect_equal(s.delete_key("d"), True, "delete existing")
    expect_equal(s.delete_key("d"), False, "delete again")
    expect_equal(s.delete_key("never"), False, "delete absent")
    expect(not s.check(["d"]), "deleted key is gone")
    s.set_timeout(SHORT)
    expect_raises(StoreTimeout, lambda: s.get("d"), "get of deleted key")
    s.set("d", "2")
    expect_equal(s.get("d"), b"2", "re-created after delete")


@case()
def case_num_keys(ctx: Context) -> None:
    """num_keys counts keys holding values, not queues; deletes lower it."""
    s = ctx.store
    base = s.num_keys()
    for i in range(5):
        s.set(f"k{i}", "v")
    expect_equal(s.num_keys(), base + 5, "after 5 sets")
    s.delete_key("k1")
    expect_equal(s.num_keys(), base + 4, "after a delete")
    if QUEUES in s.capabilities:
        s.queue_push("q", "x")
        expect_equal(s.num_keys(), base + 4, "queues are not counted")


@case(LIST_KEYS)
def case_list_keys(ctx: Context) -> None:
    """list_keys returns exactly the keys holding values, as str."""
    s = ctx.store
    before = set(s.list_keys())
    s.set("a", "1")
    s.set("b/c", "2")
    s.add("n", 1)
    s.set("gone", "x")
    s.delete_key("gone")
    expect_equal(set(s.list_keys()) - before, {"a", "b/c", "n"}, "list_keys")
    expect(all(isinstance(k, str) for k in s.list_keys()), "keys are str")


# --------------------------------------------------------------------------- extended operations


@case()
def case_append(ctx: Context) -> None:
    """append creates an absent key and extends an existing one."""
    s = ctx.store
    s.set("ap", "po")
    s.append("ap", "tato")
    expect_equal(s.get("ap"), b"potato", "append to existing")
    s.append("new", "potato")
    expect_equal(s.get("new"), b"potato", "append to absent")
    s.append("new", b"")
    expect_equal(s.get("new"), b"potato", "append empty")
    expect(isinstance(s.has_extended_api(), bool), "has_extended_api is a bool")


@case()
def case_multi_set_get(ctx: Context) -> None:
    """multi_set/multi_get keep order; a length mismatch raises and writes nothing."""
    s = ctx.store
    s.multi_set(["m1", "m2", "m3"], ["a", b"b", ""])
    expect_equal(s.multi_get(["m3", "m1", "m2"]), [b"", b"a", b"b"], "multi_get order")
    expect_equal(s.multi_get([]), [], "multi_get([])")
    err = expect_raises(
        ValueError, lambda: s.multi_set(["x", "y"], ["1"]), "length mismatch", match="2 keys"
    )
    expect(isinstance(err, StoreValueError), "mismatch is a StoreValueError")
    expect(not s.check(["x"]), "mismatched multi_set wrote nothing")
    s.set_timeout(SHORT)
    err = expect_raises(StoreTimeout, lambda: s.multi_get(["m1", "absent"]), "multi_get missing")
    assert isinstance(err, StoreTimeout)
    _expect_names(err, "absent")


# --------------------------------------------------------------------------- queues


@case(QUEUES)
def case_queues(ctx: Context) -> None:
    """FIFO order, lengths, check/wait see a non-empty queue, separate from values."""
    s = ctx.store
    expect_equal(s.queue_len("q"), 0, "unknown queue has length 0")
    expect(not s.check(["q"]), "empty queue does not exist")
    values: list[str | bytes] = ["1", "2", b"3"]
    for v in values:
        s.queue_push("q", v)
    expect_equal(s.queue_len("q"), 3, "length after pushes")
    expect(s.check(["q"]), "non-empty queue exists")
    s.wait(["q"], SHORT)
    s.set("q", "value")
    expect_equal([s.queue_pop("q") for _ in range(3)], [b"1", b"2", b"3"], "FIFO")
    expect_equal(s.queue_len("q"), 0, "empty after pops")
    expect_equal(s.get("q"), b"value", "queue and value namespaces are separate")


@case(QUEUES)
def case_queue_nonblocking(ctx: Context) -> None:
    """A non-blocking pop on an empty queue raises QueueEmpty; a blocking one times out."""
    s = ctx.store
    err = expect_raises(QueueEmpty, lambda: s.queue_pop("e", block=False), "pop", match="empty")
    expect(isinstance(err, StoreError), "QueueEmpty is a StoreError")
    s.queue_push("e", "x")
    expect_equal(s.queue_pop("e", block=False), b"x", "non-blocking pop with a value")
    s.set_timeout(SHORT)
    expect_raises(StoreTimeout, lambda: s.queue_pop("e"), "blocking pop", match="timeout")


def _ping_pong(opener: Callable[[], Store], rank: int, rounds: int) -> list[bytes]:
    mine, theirs = ("a", "b") if rank == 0 else ("b", "a")
    got = []
    with opener() as s:
        s.set_timeout(GENEROUS)
        for i in range(rounds):
            if rank == 0:
                s.queue_push(theirs, str(i))
                got.append(s.queue_pop(mine))
            else:
                got.append(s.queue_pop(mine))
                s.queue_push(theirs, str(i))
    return got


@case(QUEUES)
def case_queues_bidirectional(ctx: Context) -> None:
    """Two parties ping-pong over two queues with blocking pops."""
    results = ctx.parties(_ping_pong, 2, 20)
    expected = [str(i).encode() for i in range(20)]
    expect_equal(results, [expected, expected], "ping-pong transcripts")


def _consume(
    opener: Callable[[], Store], rank: int, producers: int, consumers: int, items: int
) -> list[bytes]:
    with opener() as s:
        s.set_timeout(GENEROUS)
        if rank < producers:
            for i in range(items):
                s.queue_push("work", f"{rank}:{i}")
            # The last producer to finish queues one stop per consumer; FIFO puts them last.
            if s.add("producers_done", 1) == producers:
                for _ in range(consumers):
                    s.queue_push("work", "stop")
            return []
        got = []
        while (value := s.queue_pop("work")) != b"stop":
            got.append(value)
        return got


@case(QUEUES)
def case_queue_each_item_once(ctx: Context) -> None:
    """Concurrent producers and consumers: every item is popped exactly once."""
    producers, consumers, items = 2, 3, 50
    results = ctx.parties(_consume, producers + consumers, producers, consumers, items)
    popped = sorted(v for r in results for v in r)
    expected = sorted(f"{p}:{i}".encode() for p in range(producers) for i in range(items))
    expect_equal(popped, expected, "every item popped exactly once")
    expect_equal(ctx.store.queue_len("work"), 0, "queue drained")


# --------------------------------------------------------------------------- barrier, parties


def _count(opener: Callable[[], Store], rank: int, adds: int) -> int:
    with opener() as s:
        last = 0
        for _ in range(adds):
            last = s.add("counter", 1)
        return last


@case()
def case_concurrent_add(ctx: Context) -> None:
    """Concurrent adds from several parties lose nothing."""
    parties, adds = 4, 200
    ctx.parties(_count, parties, adds)
    expect_equal(ctx.store.add("counter", 0), parties * adds, "final count")


def _exchange(opener: Callable[[], Store], rank: int, world: int) -> list[bytes]:
    with opener() as s:
        s.set_timeout(GENEROUS)
        s.set(f"rank/{rank}", f"hello from {rank}")
        s.barrier("exchange", world)
        return s.multi_get([f"rank/{r}" for r in range(world)])


@case()
def case_barrier_exchange(ctx: Context) -> None:
    """Parties set a key each, meet at a barrier, and all read all."""
    world = 4
    results = ctx.parties(_exchange, world, world)
    expected = [f"hello from {r}".encode() for r in range(world)]
    expect_equal(results, [expected] * world, "every party sees every key")


@case()
def case_barrier_errors(ctx: Context) -> None:
    """A barrier short of participants times out saying how many arrived; bad sizes raise."""
    s = ctx.store
    err = expect_raises(StoreTimeout, lambda: s.barrier("b", 3, SHORT), "barrier", match="1 of 3")
    assert isinstance(err, StoreTimeout)
    expect_equal(err.op, "barrier", "StoreTimeout.op")
    expect_raises(ValueError, lambda: s.barrier("b2", 0), "world_size 0")
    s.barrier("solo", 1, SHORT)
    s.barrier("solo", 1, SHORT)  # single use: a reused key returns at once


# --------------------------------------------------------------------------- handles


@case()
def case_clone_shares_data(ctx: Context) -> None:
    """A clone sees the original's writes and vice versa; closing it leaves the original."""
    s = ctx.store
    s.set("from_original", "1")
    c = s.clone()
    expect_equal(c.get("from_original"), b"1", "clone reads original's write")
    c.set("from_clone", "2")
    expect_equal(s.get("from_clone"), b"2", "original reads clone's write")
    c.close()
    expect_equal(s.get("from_original"), b"1", "original usable after closing the clone")


@case()
def case_close(ctx: Context) -> None:
    """After close every operation raises StoreClosed; close is idempotent."""
    s = ctx.open_peer()
    with s:
        s.set("k", "v")
    expect(s.closed, "context manager closed the store")
    s.close()
    for name, call in [
        ("set", lambda: s.set("k", "v")),
        ("get", lambda: s.get("k")),
        ("add", lambda: s.add("k", 1)),
        ("check", lambda: s.check(["k"])),
        ("wait", lambda: s.wait(["k"], SHORT)),
        ("num_keys", s.num_keys),
    ]:
        expect_raises(StoreClosed, call, f"{name} after close", match="close")
    expect_equal(ctx.store.get("k"), b"v", "other handles unaffected")

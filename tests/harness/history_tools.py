"""Broken stores and workloads for the history checker's tests.

Each broken store wraps a correct one (a HashStore) and breaks one promise of the contract, the
way real stores get it wrong.  Where the bug needs two threads inside an operation at once, the
store itself holds the first thread at its race window until the second arrives (a
``threading.Barrier``), so the interleaving that shows the bug happens on every run.
"""

from __future__ import annotations

import random
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storeharness.harness.history import History, Recorder, RecordingStore, load
from storeharness.stores import HashStore, QueueEmpty, Store, StoreTimeout
from storeharness.stores._types import as_key, as_value


class Wrapper(Store):
    """Forwards everything to ``inner`` (a shared HashStore)."""

    def __init__(self, inner: Store) -> None:
        super().__init__()
        self.inner = inner

    def set(self, key: Any, value: Any) -> None:
        self.inner.set(key, value)

    def get(self, key: Any) -> bytes:
        return self.inner.get(key)

    def add(self, key: Any, amount: int) -> int:
        return self.inner.add(key, amount)

    def compare_set(self, key: Any, expected: Any, desired: Any) -> bytes:
        return self.inner.compare_set(key, expected, desired)

    def wait(self, keys: Any, timeout: Any = None) -> None:
        self.inner.wait(keys, timeout)

    def check(self, keys: Any) -> bool:
        return self.inner.check(keys)

    def delete_key(self, key: Any) -> bool:
        return self.inner.delete_key(key)

    def num_keys(self) -> int:
        return self.inner.num_keys()

    def queue_push(self, key: Any, value: Any) -> None:
        self.inner.queue_push(key, value)

    def queue_pop(self, key: Any, block: bool = True) -> bytes:
        return self.inner.queue_pop(key, block)

    def queue_len(self, key: Any) -> int:
        return self.inner.queue_len(key)

    def clone(self) -> Store:
        return type(self)(self.inner)


class StaleReads(Wrapper):
    """Each handle caches what it read and never invalidates it."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.cache: dict[str, bytes] = {}

    def get(self, key: Any) -> bytes:
        k = as_key(key)
        if k not in self.cache:
            self.cache[k] = self.inner.get(k)
        return self.cache[k]


class _Racy(Wrapper):
    """Two callers of the racy operation meet at its window: the first waits (briefly) for a
    second, so both have read before either writes."""

    lock = threading.Condition()
    waiting: dict[str, int]

    def window(self, key: str) -> None:
        cls = type(self)
        with cls.lock:
            if cls.waiting.get(key):
                cls.waiting[key] -= 1
                cls.lock.notify_all()
                return
            cls.waiting[key] = 1
            if not cls.lock.wait_for(lambda: not cls.waiting[key], timeout=0.05):
                cls.waiting[key] = 0  # nobody came: go on alone


class LostUpdateAdd(_Racy):
    """``add`` reads, then writes the sum: two concurrent adds lose one."""

    lock = threading.Condition()
    waiting: dict[str, int] = {}

    def add(self, key: Any, amount: int) -> int:
        k = as_key(key)
        old = self.inner.get(k) if self.inner.check([k]) else b"0"
        self.window(k)
        total = int(old) + amount
        self.inner.set(k, str(total))
        return total


class NonAtomicCompareSet(_Racy):
    """``compare_set`` compares, then writes: two racing creators both win."""

    lock = threading.Condition()
    waiting: dict[str, int] = {}

    def compare_set(self, key: Any, expected: Any, desired: Any) -> bytes:
        k, e, d = as_key(key), as_value(expected), as_value(desired)
        current = self.inner.get(k) if self.inner.check([k]) else None
        self.window(k)
        if (current is None and e == b"") or current == e:
            self.inner.set(k, d)
            return d
        return e if current is None else current


class DuplicatingQueue(Wrapper):
    """Every second pop hands out the head again without removing it."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.pops = 0

    def queue_pop(self, key: Any, block: bool = True) -> bytes:
        self.pops += 1
        value = self.inner.queue_pop(key, block)
        if self.pops % 2 == 0:
            self.inner.queue_push(key, value)  # "puts it back" (at the tail: also reorders)
        return value


class ReorderingQueue(Wrapper):
    """Pops the newest value first (a stack, not a FIFO)."""

    def queue_pop(self, key: Any, block: bool = True) -> bytes:
        items = []
        while self.inner.queue_len(key):
            items.append(self.inner.queue_pop(key, False))
        if not items:
            if block:
                raise StoreTimeout("queue_pop", [as_key(key)], 0.0, 0.0)
            raise QueueEmpty(as_key(key))
        top = items.pop()
        for item in items:
            self.inner.queue_push(key, item)
        return top


class EarlyWait(Wrapper):
    """``wait`` gives up looking and returns, as if the keys were there."""

    def wait(self, keys: Any, timeout: Any = None) -> None:
        if not self.inner.check(keys):
            return
        self.inner.wait(keys, timeout)


BROKEN: dict[str, type[Wrapper]] = {
    "stale reads": StaleReads,
    "lost update in add": LostUpdateAdd,
    "non-atomic compare_set": NonAtomicCompareSet,
    "queue duplicates": DuplicatingQueue,
    "queue reorders": ReorderingQueue,
    "wait returns early": EarlyWait,
}


def _op(store: Store, rng: random.Random, me: int, n: int, queues: bool) -> None:
    key = rng.choice(["a", "b"])
    roll = rng.random()
    try:
        if roll < 0.2:
            store.set(key, str(rng.randrange(100)))
        elif roll < 0.35:
            store.get(key)
        elif roll < 0.5:
            store.add("n", 1)
        elif roll < 0.6:
            store.compare_set(f"leader/{n // 10}", "", str(me))
        elif roll < 0.7 and queues:
            store.queue_push("q", f"{me}.{n}")
        elif roll < 0.8 and queues:
            store.queue_pop("q", block=False)
        elif roll < 0.9:
            store.wait([f"flag/{n // 5}"], 0.002)
        else:
            store.set(f"flag/{n // 5}", "up")
    except (StoreTimeout, QueueEmpty):
        pass


def workload(
    make: Callable[[], Store], threads: int = 3, ops: int = 120, seed: int = 0, queues: bool = True
) -> History:
    """Run a random mix of operations from ``threads`` handles at once; their history."""
    with tempfile.TemporaryDirectory() as tmp:
        first = make()
        handles = [first] + [first.clone() for _ in range(threads - 1)]
        for handle in handles:
            handle.set_timeout(0.05)  # a get of a key nobody set yet gives up soon
        recorders = [Recorder(Path(tmp, f"{i}.history"), i) for i in range(threads)]
        start = threading.Barrier(threads)

        def run(i: int) -> None:
            rng = random.Random(seed * 100 + i)
            store = RecordingStore(handles[i], recorders[i])
            start.wait()
            for n in range(ops):
                _op(store, rng, i, n, queues)

        workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        for r in recorders:
            r.close()
        return load([(i, str(Path(tmp, f"{i}.history"))) for i in range(threads)])


def broken(kind: type[Wrapper]) -> Callable[[], Store]:
    shared = HashStore(timeout=0.05)  # the broken wrappers block with the shared store's limit
    return lambda: kind(shared)

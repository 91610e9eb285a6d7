"""Random operation sequences on every backend must agree with the reference model.

Two handles on the same data take turns, so FileStore's incremental replay and HashStore's
shared state are exercised too.
"""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from storeharness.harness import targets
from storeharness.stores import QueueEmpty, Store
from storeharness.stores.conformance import ReferenceModel

from . import etcd_support
from .backends import NAMES, make_backend

KEYS = st.sampled_from(["a", "b", "n", "ké", "x/y"])
VALUES = st.binary(max_size=12) | st.sampled_from([b"", b"7", b" 12", b"-3x", b"abc"])
QUEUES = st.sampled_from(["q1", "q2"])


def machine_for(backend_name: str) -> type[RuleBasedStateMachine]:
    class StoreMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.tmp = tempfile.TemporaryDirectory()
            backend = make_backend(backend_name, self.tmp.name)
            self.primary = backend.make()
            self.handles: list[Store] = [self.primary, backend.opener(self.primary)()]
            self.model = ReferenceModel()

        def teardown(self) -> None:
            for h in reversed(self.handles):
                h.close()
            self.tmp.cleanup()

        @rule(h=st.integers(0, 1), key=KEYS, value=VALUES)
        def set(self, h: int, key: str, value: bytes) -> None:
            self.handles[h].set(key, value)
            self.model.set(key, value)

        @rule(h=st.integers(0, 1), key=KEYS)
        def get_existing(self, h: int, key: str) -> None:
            expected = self.model.get(key)
            if expected is not None:
                assert self.handles[h].get(key) == expected

        @rule(h=st.integers(0, 1), key=KEYS, amount=st.integers(-(2**63), 2**63 - 1))
        def add(self, h: int, key: str, amount: int) -> None:
            try:
                expected: int | type[ValueError] = self.model.add(key, amount)
            except ValueError:
                expected = ValueError
            if expected is ValueError:
                with pytest.raises(ValueError):
                    self.handles[h].add(key, amount)
            else:
                assert self.handles[h].add(key, amount) == expected

        @rule(h=st.integers(0, 1), key=KEYS, expected=VALUES, desired=VALUES)
        def compare_set(self, h: int, key: str, expected: bytes, desired: bytes) -> None:
            want = self.model.compare_set(key, expected, desired)
            assert self.handles[h].compare_set(key, expected, desired) == want

        @rule(h=st.integers(0, 1), key=KEYS, value=VALUES)
        def append(self, h: int, key: str, value: bytes) -> None:
            self.handles[h].append(key, value)
            self.model.append(key, value)

        @rule(h=st.integers(0, 1), items=st.dictionaries(KEYS, VALUES, max_size=3))
        def multi_set(self, h: int, items: dict[str, bytes]) -> None:
            self.handles[h].multi_set(list(items), list(items.values()))
            self.model.multi_set(list(items), list(items.values()))

        @rule(h=st.integers(0, 1), key=KEYS)
        def delete_key(self, h: int, key: str) -> None:
            assert self.handles[h].delete_key(key) == self.model.delete_key(key)

        @rule(h=st.integers(0, 1), keys=st.lists(KEYS | QUEUES, max_size=3))
        def check(self, h: int, keys: list[str]) -> None:
            assert self.handles[h].check(keys) == self.model.check(keys)

        @rule(h=st.integers(0, 1), key=QUEUES, value=VALUES)
        def queue_push(self, h: int, key: str, value: bytes) -> None:
            self.handles[h].queue_push(key, value)
            self.model.queue_push(key, value)

        @rule(h=st.integers(0, 1), key=QUEUES)
        def queue_pop_nonblocking(self, h: int, key: str) -> None:
            expected = self.model.queue_pop(key)
            if expected is None:
                with pytest.raises(QueueEmpty):
                    self.handles[h].queue_pop(key, block=False)
            else:
                assert self.handles[h].queue_pop(key, block=False) == expected

        @precondition(lambda self: any(self.model.queues.values()))
        @rule(h=st.integers(0, 1), key=QUEUES)
        def queue_pop_blocking(self, h: int, key: str) -> None:
            if self.model.queue_len(key):
                assert self.handles[h].queue_pop(key) == self.model.queue_pop(key)

        @invariant()
        def counts_agree(self) -> None:
            for h in self.handles:
                assert h.num_keys() == self.model.num_keys()
                assert set(h.list_keys()) == self.model.list_keys()
                for q in ("q1", "q2"):
                    assert h.queue_len(q) == self.model.queue_len(q)

    StoreMachine.__name__ = f"StoreMachine_{backend_name.replace('-', '_')}"
    return StoreMachine


@pytest.mark.parametrize("backend_name", NAMES)
def test_store_agrees_with_model(backend_name: str) -> None:
    if backend_name == "etcd":  # needs the etcd extra; CI installs it and must not skip
        etcd_support.require(targets.get(backend_name).unavailable())
    machine_for(backend_name).TestCase().runTest()

"""HashStore's waiter bookkeeping and PrefixStore's key mapping."""

from __future__ import annotations

import threading

import pytest

from storeharness.stores import FileStore, HashStore, PrefixStore, StoreClosed, StoreTimeout
from storeharness.stores._waiters import Waiter, WaiterTable


def test_a_write_wakes_only_the_waiters_it_satisfies() -> None:
    lock = threading.Lock()
    table = WaiterTable()
    on_a, on_b, on_ab = (Waiter(lock, keys, False) for keys in (["a"], ["b"], ["a", "b"]))
    with lock:  # the table is always used under the owner's lock
        for w in (on_a, on_b, on_ab):
            table.add_key_waiter(w)
        table.created("a")
        assert (on_a.pending, on_b.pending, on_ab.pending) == (0, 1, 1)
        table.created("a")  # registrations were consumed: a second write changes nothing
        assert on_ab.pending == 1
        table.created("b")
    assert (on_b.pending, on_ab.pending) == (0, 0)
    assert not table


def test_a_push_wakes_one_popper_and_get_ignores_queues() -> None:
    lock = threading.Lock()
    table = WaiterTable()
    first, second = Waiter(lock, ["q"], False), Waiter(lock, ["q"], False)
    getter = Waiter(lock, ["q"], data_only=True)
    table.add_popper("q", first)
    table.add_popper("q", second)
    table.add_key_waiter(getter)
    with lock:
        table.pushed("q")
        table.created("q", via_queue=True)
    assert (first.pending, second.pending, getter.pending) == (0, 1, 1)


def test_timed_out_waiters_leave_no_registration() -> None:
    store = HashStore(timeout=0.01)
    for _ in range(3):
        with pytest.raises(StoreTimeout):
            store.wait(["x", "y"], 0.01)
        with pytest.raises(StoreTimeout):
            store.queue_pop("q")
    assert not store._state.waiters


def test_hash_clone_is_a_separate_handle_on_shared_data() -> None:
    store = HashStore()
    clone = store.clone()
    assert clone is not store
    clone.set("k", "v")
    clone.close()
    assert store.get("k") == b"v"


def test_nested_prefixes_compose() -> None:
    base = HashStore()
    inner = PrefixStore("a", base)
    outer = PrefixStore("b", inner)
    outer.set("k", "v")
    assert base.get("a/b/k") == b"v"
    assert outer.underlying_store is inner
    assert outer._underlying_non_prefix_store is base
    assert PrefixStore("", base).prefix == ""
    PrefixStore("", base).set("x", "1")
    assert base.get("/x") == b"1"


def test_prefix_list_keys_respects_the_separator() -> None:
    base = HashStore()
    base.set("a/b/k", "1")
    base.set("ab/x", "2")
    base.set("other", "3")
    prefixed = PrefixStore("a", base)
    assert prefixed.list_keys() == ["b/k"]
    assert prefixed.num_keys() == 3, "num_keys counts the whole underlying store, as torch"


def test_prefix_rejects_missing_store() -> None:
    with pytest.raises(ValueError, match="cannot be None"):
        PrefixStore("p", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"stores\.Store"):
        PrefixStore("p", {})  # type: ignore[arg-type]


def test_prefix_barrier_uses_the_forwarded_timeout() -> None:
    base = HashStore()
    prefixed = PrefixStore("p", base)
    prefixed.set_timeout(0.05)
    assert base.timeout.total_seconds() == 0.05
    with pytest.raises(StoreTimeout, match="1 of 2"):
        prefixed.barrier("b", 2)


def test_closing_a_prefix_clone_closes_only_what_it_made(tmp_path: object) -> None:
    base = FileStore(f"{tmp_path}/fs")
    prefixed = PrefixStore("p", base)
    clone = prefixed.clone()
    clone.close()
    assert isinstance(clone.underlying_store, FileStore) and clone.underlying_store.closed
    prefixed.close()
    assert not base.closed


@pytest.mark.parametrize("op", ["wait", "get", "queue_pop"])
def test_closing_a_handle_wakes_the_calls_blocked_through_it(op: str) -> None:
    # The harness takes a stuck thread rank's store away at its deadline: the blocked call
    # must end with StoreClosed, and other handles on the same data must not notice.
    shared = HashStore(timeout=0)
    mine, other = shared.clone(), shared.clone()
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            if op == "wait":
                mine.wait(["never"])
            elif op == "get":
                mine.get("never")
            else:
                mine.queue_pop("never")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    while not shared._state.waiters:  # registered under the lock: it is asleep
        thread.join(0.001)
    mine.close()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], StoreClosed), errors
    other.set("never", "now")
    assert other.get("never") == b"now"

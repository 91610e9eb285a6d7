"""``etcd://`` rendezvous: every rank counts itself in; rank 0 waits for the whole world."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from storeharness.harness.targets._etcd_server import EtcdCluster
from storeharness.stores import StoreTimeout, rendezvous
from storeharness.stores.etcd import EtcdStore, _watch

from . import etcd_support


@pytest.fixture
def cluster() -> EtcdCluster:
    return etcd_support.cluster()


@pytest.fixture
def store(cluster: EtcdCluster) -> Iterator[EtcdStore]:
    yield from etcd_support.store(cluster)


def _url(store: EtcdStore, rank: int, world_size: int) -> str:
    return f"etcd://{store.endpoints}/{store.prefix}?rank={rank}&world_size={world_size}"


def test_etcd_rendezvous(store: EtcdStore) -> None:
    got, rank, size = next(rendezvous(_url(store, 1, 2), timeout=5))
    try:
        assert (rank, size) == (1, 2)  # a rank other than 0 does not wait for the others
        got.set("via-url", "1")
        assert store.get("via-url") == b"1"
    finally:
        got.close()


def test_rank0_waits_for_the_whole_world_and_names_who_is_missing(store: EtcdStore) -> None:
    next(rendezvous(_url(store, 2, 3), timeout=5))[0].close()
    start = time.monotonic()
    with pytest.raises(StoreTimeout, match=r"2/3 clients joined \(missing: rank 1\)") as err:
        next(rendezvous(_url(store, 0, 3), timeout=timedelta(milliseconds=300)))
    assert time.monotonic() - start < 0.3 + 2.0
    assert err.value.op == "init" and err.value.keys == ("rank 1",)
    assert err.value.timeout == 0.3


def test_rank0_returns_when_the_last_rank_joins(
    store: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiting = threading.Event()
    original = _watch.Watch.next

    def next_event(self: _watch.Watch, deadline: float | None) -> Any:
        waiting.set()  # rank 0 has its watch on the join keys and blocks on it now
        return original(self, deadline)

    monkeypatch.setattr(_watch.Watch, "next", next_event)
    joined: list[Any] = []
    rank0 = threading.Thread(
        target=lambda: joined.append(next(rendezvous(_url(store, 0, 2), timeout=10)))
    )
    rank0.start()
    assert waiting.wait(10), "rank 0 never waited"
    late, _, _ = next(rendezvous(_url(store, 1, 2), timeout=5))
    rank0.join(10)
    assert not rank0.is_alive() and len(joined) == 1
    first, rank, size = joined[0]
    assert (rank, size) == (0, 2)
    assert store.num_keys() == 0, "the join keys are bookkeeping, not the run's keys"
    first.close()
    late.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("etcd:///p?rank=0&world_size=1", "endpoints missing"),
        ("etcd://127.0.0.1:2379?rank=0&world_size=1", "prefix missing"),
        ("etcd://127.0.0.1:2379/p?world_size=1", "rank parameter missing"),
        ("etcd://nohostport/p?rank=0&world_size=1", "not host:port"),
        ("etcd://127.0.0.1:2379/p?rank=2&world_size=2", r"rank 2 is not in 0\.\.1"),
    ],
)
def test_etcd_rendezvous_errors(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        next(rendezvous(url))

"""Our stores as ``torch.distributed.Store``: torch's C++ side, gloo and RPC running over them.

The in-process cases drive the wrapper through torch's C++ ``PrefixStore`` (so every call goes
C++ → pybind11 trampoline → our Python → our store, the path gloo takes) and through gloo
process groups whose ranks are threads over one HashStore.  The two ``init_pg_and_rpc`` cases
are torch's ``test_store.py`` cases of those names, on real multi-process worlds over our
FileStore and our TCPStore (``_torch_world.py``).  Everything but the import checks skips when
torch is not installed.
"""

from __future__ import annotations

import functools
import gc
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from storeharness.stores import (
    FileStore,
    HashStore,
    QueueEmpty,
    Store,
    StoreBroken,
    StoreClosed,
    StoreError,
    StoreTimeout,
    StoreValueError,
    TCPStore,
    UnsupportedOperation,
)
from storeharness.stores.torch_compat import as_torch_store, torch_error, torch_init_method

from .backends import torch_missing

# A backstop, not a sync: importing torch took 52 s on this 2-core machine under load.
pytestmark = pytest.mark.timeout(240)

MS = timedelta(milliseconds=1)


@pytest.fixture(scope="module")
def dist() -> Any:
    reason = torch_missing()
    if reason:
        pytest.skip(reason)
    import torch.distributed

    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    return torch.distributed


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """gloo (its store-taking constructor reads this) and TensorPipe bind loopback only."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("TP_SOCKET_IFNAME", "lo")


@pytest.fixture(scope="module")
def world(dist: Any) -> Iterator[Any]:
    """The process-world helper; its forkserver (torch imported once) stops after the module."""
    from . import _torch_world

    try:
        yield _torch_world
    finally:
        _torch_world.stop_forkserver()


@pytest.fixture(params=["hash", "file", "tcp"])
def ours(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """One of our stores, closed afterwards (a TCPStore master on an ephemeral loopback port)."""
    store: Store
    if request.param == "hash":
        store = HashStore(timeout=10)
    elif request.param == "file":
        store = FileStore(str(tmp_path / "store"), timeout=10)
    else:
        store = TCPStore("127.0.0.1", 0, None, True, 10, wait_for_workers=False)
    try:
        yield store
    finally:
        store.close()


# --------------------------------------------------------------------------- without torch


def test_importing_stores_or_torch_compat_does_not_import_torch() -> None:
    code = (
        "import sys, storeharness.stores, storeharness.stores.torch_compat\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_without_torch_the_error_says_how_to_get_it() -> None:
    code = (
        "import sys; sys.modules['torch'] = None  # as if torch were not installed\n"
        "from storeharness.stores import HashStore\n"
        "from storeharness.stores.torch_compat import as_torch_store\n"
        "as_torch_store(HashStore())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    wanted = "storeharness.stores.torch_compat needs torch: pip install 'storeharness[torch]'"
    assert f"ImportError: {wanted}" in done.stderr, done.stderr


@pytest.mark.parametrize("fn", [as_torch_store, torch_init_method])
def test_refuses_what_is_not_our_store(fn: Any) -> None:
    with pytest.raises(TypeError, match=r"storeharness\.stores\.Store\), got dict"):
        fn({})


# --------------------------------------------------------------------------- the C++ path


def test_cpp_callers_reach_every_forwarded_operation(dist: Any, ours: Store) -> None:
    """Through torch's C++ PrefixStore, each operation lands in our store under the prefix."""
    wrapper = as_torch_store(ours)
    assert isinstance(wrapper, dist.Store)
    assert wrapper.store is ours
    prefixed = dist.PrefixStore("p", wrapper)
    prefixed.set("k", "v")
    assert ours.get("p/k") == b"v"
    assert prefixed.get("k") == b"v"
    assert prefixed.add("n", 5) == 5 and ours.add("p/n", 0) == 5
    assert prefixed.compare_set("k", "v", "w") == b"w" and ours.get("p/k") == b"w"
    assert prefixed.compare_set("k", "nope", "x") == b"w"
    prefixed.wait(["k"])
    prefixed.wait(["k"], timedelta(seconds=1))
    assert prefixed.check(["k", "n"]) and not prefixed.check(["absent"])
    prefixed.append("a", "1")
    prefixed.append("a", "2")
    assert ours.get("p/a") == b"12"
    prefixed.multi_set(["m1", "m2"], ["x", "y"])
    assert prefixed.multi_get(["m1", "m2", "a"]) == [b"x", b"y", b"12"]
    assert ours.multi_get(["p/m1", "p/m2"]) == [b"x", b"y"]
    assert prefixed.num_keys() == ours.num_keys() == 5  # C++ calls getNumKeys
    assert prefixed.delete_key("m2") is True  # C++ calls deleteKey
    assert not ours.check(["p/m2"])
    assert prefixed.delete_key("m2") is False
    assert prefixed.has_extended_api() == ours.has_extended_api()
    prefixed.barrier("b", 1, timedelta(seconds=5))  # C++'s own barrier, from add/set/wait
    assert ours.check(["p/b/last_member"])


@pytest.mark.parametrize("kind", ["hash", "tcp"])
def test_the_conformance_suite_through_torchs_cpp_prefix_store(dist: Any, kind: str) -> None:
    """Our contract, driven through torch_adapter → torch's C++ PrefixStore → the wrapper → ours.

    Every case passes but ``binary_keys``: pybind11 decodes C++ keys as UTF-8 before our Python
    sees them (docs/differences.md).  Queues and list_keys are not offered: C++ does not forward
    them to a Python store.
    """
    from storeharness.stores import Capability
    from storeharness.stores.conformance import Backend, check_store
    from storeharness.stores.torch_adapter import TorchStore

    made: list[Store] = []
    masters: list[TCPStore] = []

    def make() -> Store:
        store: Store
        if kind == "hash":
            store = HashStore()
        else:
            masters.append(TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False))
            store = TCPStore("127.0.0.1", masters[-1].port)
        made.append(store)
        adapted = TorchStore(dist.PrefixStore("p", as_torch_store(store)))
        adapted.capabilities = frozenset({Capability.ADD_ERRORS, Capability.CAS_WAKES})  # type: ignore[misc]
        return adapted

    try:
        outcomes = check_store(Backend(f"{kind}-through-torch", make))
    finally:
        for store in made + masters:
            store.close()
    failed = {o.case: o.detail for o in outcomes if o.status == "failed"}
    assert set(failed) == {"binary_keys"}, failed
    assert "utf-8" in failed["binary_keys"]
    skipped = {o.case for o in outcomes if o.status == "skipped"}
    assert skipped <= {"list_keys", "queues", "queue_nonblocking", "queues_bidirectional",
                       "queue_each_item_once"}, skipped  # fmt: skip
    assert len([o for o in outcomes if o.status == "passed"]) >= 20


def test_torch_runs_its_python_store_check_against_it(dist: Any) -> None:
    """torch's ``PythonStoreTest``: a C++ set/get/add/compare_set sequence through the wrapper."""
    check = getattr(dist, "_test_python_store", None)
    if check is None:
        pytest.skip("this torch has no torch.distributed._test_python_store")
    with HashStore() as store:
        check(as_torch_store(store))
        assert store.num_keys() > 0


def test_clone_is_a_torch_store_on_the_same_data(dist: Any, ours: Store) -> None:
    clone = dist.PrefixStore("p", as_torch_store(ours)).clone()  # C++ calls our clone()
    assert isinstance(clone, dist.Store)
    ours.set("p/seen", "1")
    assert clone.get("seen") == b"1"


def test_python_callers_also_get_queues_list_keys_and_barrier(dist: Any) -> None:
    """C++ does not forward these (torch raises NotImplementedError); direct calls work."""
    with HashStore(timeout=10) as store:
        wrapper = as_torch_store(store)
        wrapper.queue_push("q", "1")
        wrapper.queue_push("q", b"2")
        assert wrapper.queue_len("q") == 2
        assert wrapper.queue_pop("q") == b"1"
        assert wrapper.queue_pop("q", False) == b"2"
        wrapper.set("k", "v")
        assert wrapper.list_keys() == ["k"]
        wrapper.barrier("b", 1)
        assert store.check(["b/last_member"])
        with pytest.raises(NotImplementedError):
            dist.PrefixStore("p", wrapper).queue_push("q", "1")


def test_the_wrapper_outlives_the_callers_reference(dist: Any) -> None:
    """Before the keep-alive: ``fn INTERNAL ASSERT FAILED ... Not implemented`` after gc."""
    with HashStore() as store:
        prefixed = dist.PrefixStore("p", as_torch_store(store))
        gc.collect()
        prefixed.set("k", "v")
        assert prefixed.get("k") == b"v"
        assert as_torch_store(store) is as_torch_store(store)
    # Closing our store releases the wrapper: a new store with the recycled id gets a new one.
    with HashStore() as fresh:
        assert as_torch_store(fresh).store is fresh


# --------------------------------------------------------------------------- errors and timeouts


def test_a_timeout_is_torchs_dist_store_error_in_about_the_limit(dist: Any, ours: Store) -> None:
    prefixed = dist.PrefixStore("p", as_torch_store(ours))
    start = time.monotonic()
    with pytest.raises(dist.DistStoreError, match=r"wait timeout after 200ms, keys: p/absent") as e:
        prefixed.wait(["absent"], 200 * MS)
    elapsed = time.monotonic() - start
    assert 0.19 <= elapsed < 5, elapsed
    assert isinstance(e.value.__cause__, StoreTimeout)
    assert e.value.__cause__.keys == ("p/absent",)


def test_a_timeout_set_through_cpp_bounds_get(dist: Any, ours: Store) -> None:
    """C++ ``PrefixStore.set_timeout`` only sets the C++ member; ``get`` must still honour it."""
    prefixed = dist.PrefixStore("p", as_torch_store(ours))
    prefixed.set_timeout(300 * MS)
    start = time.monotonic()
    with pytest.raises(dist.DistStoreError, match=r"timeout after 300ms"):
        prefixed.get("absent")
    assert time.monotonic() - start < 5  # our store's own timeout is 10 s
    assert ours.timeout == 300 * MS


def test_a_timeout_set_on_our_store_reaches_torch(dist: Any) -> None:
    with HashStore(timeout=10) as store:
        wrapper = as_torch_store(store)
        assert wrapper.timeout == timedelta(seconds=10)
        store.set_timeout(0.25)
        with pytest.raises(dist.DistStoreError, match=r"timeout after 250ms"):
            wrapper.get("absent")
        assert wrapper.timeout == timedelta(seconds=0.25)
        wrapper.set_timeout(timedelta(seconds=7))
        assert store.timeout == timedelta(seconds=7)
    with HashStore(timeout=0.2501) as store:  # C++ keeps whole milliseconds
        wrapper = as_torch_store(store)
        with pytest.raises(dist.DistStoreError):
            wrapper.get("absent")
        assert store.timeout == timedelta(seconds=0.2501)  # not rounded by the reconciling


class _Failing(HashStore):
    """A HashStore whose ``get`` raises the error it is given, to pin the mapping."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def get(self, key: Any) -> bytes:
        raise self.error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (StoreTimeout("get", ["k"], 1.0, 1.0), "DistStoreError"),
        (QueueEmpty("k"), "QueueEmptyError"),
        (StoreBroken("server went away"), "DistNetworkError"),
        (StoreClosed("get", "HashStore()"), "DistStoreError"),
        (StoreError("something else"), "DistStoreError"),
        (StoreValueError("not a number"), "StoreValueError"),
        (UnsupportedOperation("X", "get"), "UnsupportedOperation"),
    ],
)
def test_our_errors_leave_as_torchs(dist: Any, error: StoreError, expected: str) -> None:
    with _Failing(error) as store:
        prefixed = dist.PrefixStore("p", as_torch_store(store))
        with pytest.raises(Exception) as caught:
            prefixed.get("k")
    raised = caught.value
    assert type(raised).__name__ == expected
    if raised is not error:
        assert type(raised) is getattr(dist, expected)
        assert raised.__cause__ is error
        assert str(error) in str(raised)


def test_a_timeout_already_in_torchs_phrasing_is_not_said_twice(dist: Any) -> None:
    phrase = "wait timeout after 100ms, keys: k"
    converted = torch_error(StoreTimeout("wait", ["k"], 0.1, 0.1, detail=phrase))
    assert type(converted) is dist.DistStoreError
    assert str(converted).count(phrase) == 1
    plain = torch_error(StoreTimeout("wait", ["k"], 0.1, 0.1))
    # Ours is kept whole after torch's TCP phrasing (it begins with what torch's store of its
    # kind says, "Wait timeout" for a store with no description).
    assert str(plain).startswith(phrase + " (")
    assert str(plain).endswith(f"({StoreTimeout('wait', ['k'], 0.1, 0.1)})")


def test_errors_from_real_stores(dist: Any) -> None:
    store = HashStore()
    wrapper = as_torch_store(store)
    store.set("text", "abc")
    with pytest.raises(ValueError):
        wrapper.add("text", 1)
    with pytest.raises(dist.QueueEmptyError):
        wrapper.queue_pop("empty", False)
    store.close()
    with pytest.raises(dist.DistStoreError, match="after close") as e:
        dist.PrefixStore("p", wrapper).set("k", "v")
    assert isinstance(e.value.__cause__, StoreClosed)


# --------------------------------------------------------------------------- rendezvous URLs


def test_torch_init_method_hands_torch_rendezvous_our_store(dist: Any) -> None:
    with HashStore() as store:
        url = torch_init_method(store)
        assert url.startswith("storeharness://")
        got, rank, world_size = next(iter(dist.rendezvous(url, rank=1, world_size=2)))
        assert (rank, world_size) == (1, 2)
        assert got is as_torch_store(store)
        rendezvous = dist.rendezvous(url, rank=0, world_size=1)
        next(rendezvous)
        with pytest.raises(RuntimeError, match="re-rendezvous"):
            next(rendezvous)
        with pytest.raises(ValueError, match="rank parameter missing"):
            next(iter(dist.rendezvous(url)))


def test_torch_init_method_of_a_collected_store_says_so(dist: Any) -> None:
    store = HashStore()
    url = torch_init_method(store)
    store.close()
    del store
    gc.collect()
    with pytest.raises(ValueError, match="no live store under this URL"):
        next(iter(dist.rendezvous(url, rank=0, world_size=1)))


# --------------------------------------------------------------------------- gloo, threads as ranks


def _gloo_threads(
    dist: Any, store: Store, world_size: int, ranks: Sequence[int], limit: timedelta
) -> dict[int, Any]:
    """Run ``ranks`` of a gloo group of ``world_size`` as threads; each result or exception."""
    import torch

    results: dict[int, Any] = {}

    def rank_main(rank: int) -> None:
        try:
            group = dist.ProcessGroupGloo(
                dist.PrefixStore("g", as_torch_store(store)), rank, world_size, limit
            )
            tensor = torch.tensor([float(rank + 1)])
            group.allreduce([tensor]).wait()
            group.barrier().wait()
            results[rank] = tensor.item()
        except Exception as exc:
            results[rank] = exc

    threads = [threading.Thread(target=rank_main, args=(r,), daemon=True) for r in ranks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a gloo rank thread did not finish in 60 s"
    return results


def test_gloo_all_reduce_and_barrier_over_hash_store_threads(dist: Any) -> None:
    with HashStore(timeout=30) as store:
        results = _gloo_threads(dist, store, 3, range(3), timedelta(seconds=30))
    assert results == {0: 6.0, 1: 6.0, 2: 6.0}


def test_gloo_times_out_with_torchs_error_when_a_rank_is_missing(dist: Any) -> None:
    with HashStore(timeout=30) as store:
        start = time.monotonic()
        results = _gloo_threads(dist, store, 2, [0], timedelta(seconds=1))
        elapsed = time.monotonic() - start
    error = results[0]
    assert type(error) is dist.DistStoreError, error
    assert isinstance(error.__cause__, StoreTimeout)
    assert 0.9 <= elapsed < 10, elapsed


def test_gloo_setup_gets_torchs_network_error_when_our_server_goes(dist: Any) -> None:
    """Our StoreBroken reaches gloo's caller as DistNetworkError, at once, not at the timeout."""
    master = TCPStore("127.0.0.1", 0, None, True, 30, wait_for_workers=False)
    client = TCPStore("127.0.0.1", master.port, None, False, 30)
    outcome: dict[str, Any] = {}

    def rank0() -> None:
        try:
            dist.ProcessGroupGloo(
                dist.PrefixStore("g", as_torch_store(client)), 0, 2, timedelta(seconds=30)
            )
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=rank0, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + 20
        while not any(k.startswith("g/") for k in master.list_keys()):  # rank 0 is in, waiting
            assert time.monotonic() < deadline, "gloo's rank 0 never wrote its address"
            time.sleep(0.005)
        start = time.monotonic()
        master.close()
        thread.join(20)
        elapsed = time.monotonic() - start
    finally:
        master.close()
        client.close()
    assert not thread.is_alive()
    error = outcome["error"]
    assert type(error) is dist.DistNetworkError, error
    assert isinstance(error.__cause__, StoreBroken)
    assert elapsed < 10, elapsed  # the store timeout is 30 s


# --------------------------------------------------------------------------- processes as ranks


@pytest.mark.slow
def test_run_ranks_names_a_failing_rank_and_kills_a_stuck_one(world: Any, tmp_path: Path) -> None:
    with pytest.raises(world.RankFailed, match=r"rank 1 raised:(.|\n)*ValueError: rank 1 gives up"):
        world.run_ranks(world.gives_up, 2, (), 60)
    with pytest.raises(world.RankFailed, match=r"rank 0 still running after 5 s"):
        world.run_ranks(world.blocks_forever, 1, (str(tmp_path),), 5)
    pid = int((tmp_path / "0").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


# torch's test_store.py: FileStoreTest.test_init_pg_and_rpc_with_same_file and
# TCPStoreTest.test_init_pg_and_rpc_with_same_socket, on worlds of processes over our stores.


def _check_world(results: list[dict[str, Any]], world_size: int) -> None:
    expected = [sum(range(1, world_size + 1)), 10.0 * sum(range(1, world_size + 1))]
    pids = [r["pid"] for r in results]
    for rank, result in enumerate(results):
        assert result["all_reduce"] == expected
        assert result["peer_pid"] == pids[(rank + 1) % world_size]  # RPC reached another process
        assert result["rpc_sum"] == [1.0 + rank] * 2
        keys = result["keys"]
        assert {f"rpc_prefix_0/names/{r}" for r in range(world_size)} <= set(keys)
        assert len([k for k in keys if not k.startswith("rpc_prefix_")]) >= world_size  # gloo's


@pytest.mark.slow
def test_init_pg_and_rpc_with_same_file(world: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "shared-store")
    results = world.run_ranks(
        world.pg_and_rpc, 2, (functools.partial(world.file_stores, path, 2),), 90
    )
    _check_world(results, 2)
    assert all(r["exists_after_pg"] for r in results)  # RPC still held the file
    assert not os.path.exists(path)  # the last of the 4 handles removed it


@pytest.mark.slow
def test_init_pg_and_rpc_with_same_socket(world: Any) -> None:
    port, published = world.context().Value("i", 0), world.context().Event()
    results = world.run_ranks(
        world.pg_and_rpc, 3, (functools.partial(world.tcp_stores, port, published, 3),), 90
    )
    _check_world(results, 3)


@pytest.mark.slow
def test_init_pg_and_rpc_over_hash_store_in_one_process(world: Any) -> None:
    """HashStore lives in one process: a world of one, its process group and RPC sharing it."""
    results = world.run_ranks(world.pg_and_rpc, 1, (world.hash_stores,), 90)
    _check_world(results, 1)


@pytest.mark.slow
def test_init_process_group_times_out_in_its_timeout_when_a_rank_never_comes(world: Any) -> None:
    """gloo's own timeout (init_process_group's ``timeout=``) bounds a wait on our TCPStore."""
    port, published = world.context().Value("i", 0), world.context().Event()
    stores = functools.partial(world.tcp_stores, port, published, 2)
    got = world.run_ranks(world.pg_with_a_missing_rank, 2, (stores, 1.5), 90)[0]
    assert got["error"] == "torch.distributed.DistStoreError", got
    assert got["cause"] == "StoreTimeout"
    assert "timeout after 1500ms" in got["message"]
    assert 1.4 <= got["elapsed"] < 15, got  # the store's own timeout is 30 s

"""torch's error names and hierarchy: code that catches torch's classes catches ours the same way.

One table of (operation that fails, the torch classes that catch it) runs on our stores with our
classes (``import storeharness.stores as dist``) and, where torch is installed, on torch's stores
with torch's classes, so each row shows both catch alike.  The timeout texts are compared the
same way: ours contain torch 2.13's, measured here by running torch's stores.
"""

from __future__ import annotations

import contextlib
import importlib
import pickle
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import storeharness.stores as ours
from storeharness.stores import StoreBindError, StoreTimeout, TCPStore
from storeharness.stores.tcp._accel import speedups

from .backends import torch_missing

SHORT = 0.1


def _torch() -> Any:
    """torch.distributed (its bindings are untyped: treat it as dynamic)."""
    return importlib.import_module("torch.distributed")


NAMES = ("DistError", "DistStoreError", "DistNetworkError", "QueueEmptyError")
STORE = frozenset({"DistError", "DistStoreError"})
EMPTY = STORE | {"QueueEmptyError"}
NETWORK = frozenset({"DistError", "DistNetworkError"})

#: Our stores, by target name; ``tcp`` runs the C client path, ``tcp-pure`` the Python one.
KINDS = ["hash", "file", "tcp", "tcp-pure", "prefix-hash", "prefix-tcp"]


def test_the_tree_is_torchs() -> None:
    assert ours.DistError.__mro__[1:] == (RuntimeError, Exception, BaseException, object)
    for name in ("DistStoreError", "DistNetworkError"):
        assert getattr(ours, name).__mro__[1] is ours.DistError
    assert ours.QueueEmptyError.__mro__[1] is ours.DistStoreError
    assert issubclass(ours.StoreError, ours.DistError)
    assert not issubclass(ours.StoreError, ours.DistStoreError | ours.DistNetworkError)
    assert issubclass(ours.StoreTimeout, ours.DistStoreError)
    assert issubclass(ours.StoreTimeout, TimeoutError)


def test_our_classes_sit_where_torch_raises() -> None:
    caught = {
        ours.StoreTimeout: STORE | {"TimeoutError"},
        ours.QueueEmpty: EMPTY,
        ours.StoreBroken: NETWORK | {"ConnectionError"},
        ours.StoreBindError: NETWORK,
        ours.StoreValueError: {"DistError", "ValueError"},
        ours.UnsupportedOperation: {"DistError", "NotImplementedError"},
        ours.StoreClosed: {"DistError"},
    }
    builtin: dict[str, type[Exception]] = {"TimeoutError": TimeoutError}
    builtin |= {"ConnectionError": ConnectionError, "ValueError": ValueError}
    builtin |= {"NotImplementedError": NotImplementedError}
    for cls, names in caught.items():
        by = {n for n in NAMES if issubclass(cls, getattr(ours, n))}
        by |= {n for n, b in builtin.items() if issubclass(cls, b)}
        assert by == names, cls
        assert issubclass(cls, ours.StoreError) and issubclass(cls, RuntimeError)


@pytest.mark.skipif(torch_missing() is not None, reason=str(torch_missing()))
def test_torchs_tree_is_the_one_we_copied() -> None:
    dist = _torch()

    for name in NAMES:
        mine, theirs = getattr(ours, name), getattr(dist, name)
        assert [c.__name__ for c in mine.__mro__] == [c.__name__ for c in theirs.__mro__]


def test_torch_names_pickle_and_ours_keep_their_attributes() -> None:
    err = ours.StoreBindError("in use", port=5, errno=98)
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.port, back.errno, str(back)) == (type(err), 5, 98, "in use")
    plain = pickle.loads(pickle.dumps(ours.QueueEmptyError("queue is empty")))
    assert type(plain) is ours.QueueEmptyError and str(plain) == "queue is empty"


# --------------------------------------------------------------------------- the table


@contextlib.contextmanager
def our_store(kind: str, tmp: Path) -> Iterator[Any]:
    """One of our stores with a SHORT timeout."""
    if kind.endswith("hash"):
        store: Any = ours.HashStore()
    elif kind == "file":
        store = ours.FileStore(str(tmp / "store"), 1)
    else:
        accelerate = kind != "tcp-pure"
        if accelerate and speedups(None, "test") is None:
            pytest.skip("the C speedups are not built (or STOREHARNESS_PURE_PYTHON is set)")
        store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=30,
                         accelerate=accelerate)  # fmt: skip
    store.set_timeout(SHORT)
    try:
        yield ours.PrefixStore("pre", store) if kind.startswith("prefix") else store
    finally:
        store.close()


@contextlib.contextmanager
def torch_store(kind: str, tmp: Path) -> Iterator[Any]:
    """torch's store of the same kind, with the same timeout."""
    dist = _torch()

    t = timedelta(seconds=SHORT)
    if kind.endswith("hash"):
        store: Any = dist.HashStore()
        store.set_timeout(t)
    elif kind == "file":
        store = dist.FileStore(str(tmp / "torch-store"), 1)
        store.set_timeout(t)
    else:
        store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=t)
    yield dist.PrefixStore("pre", store) if kind.startswith("prefix") else store


Op = Callable[[Any, ModuleType], object]
#: (name, the operation, the classes that catch it, the kinds it applies to)
TABLE: list[tuple[str, Op, frozenset[str], tuple[str, ...]]] = [
    ("get_timeout", lambda s, d: s.get("k"), STORE, tuple(KINDS)),
    ("wait_timeout", lambda s, d: s.wait(["k"]), STORE, tuple(KINDS)),
    ("multi_get_timeout", lambda s, d: s.multi_get(["k"]), STORE, tuple(KINDS)),
    ("queue_pop_empty", lambda s, d: s.queue_pop("q", False), EMPTY, tuple(KINDS)),
    ("queue_pop_timeout", lambda s, d: s.queue_pop("q", True), STORE, tuple(KINDS)),
    ("barrier_timeout", lambda s, d: s.barrier("b", 2, timedelta(seconds=SHORT)), STORE,
     tuple(KINDS)),
    ("bind_in_use", lambda s, d: d.TCPStore("127.0.0.1", s.port, is_master=True,
                                            timeout=timedelta(seconds=1)), NETWORK,
     ("tcp", "tcp-pure")),
    ("connect_refused", lambda s, d: d.TCPStore("127.0.0.1", _free_port(),
                                                timeout=timedelta(seconds=0.3)), NETWORK,
     ("tcp", "tcp-pure")),
]  # fmt: skip

#: Where torch's store raises something else than our row says, and why we differ.
TORCH_DIFFERS: dict[tuple[str, str], frozenset[str]] = {
    # torch's FileStore raises plain RuntimeError for its timeouts; ours are DistStoreErrors
    # like every other store's (a RuntimeError still catches both).
    ("file", "get_timeout"): frozenset(),
    ("file", "wait_timeout"): frozenset(),
    ("file", "multi_get_timeout"): frozenset(),
    ("file", "barrier_timeout"): frozenset(),
}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ROWS = [(name, kind) for name, _, _, kinds in TABLE for kind in kinds]
#: torch's FileStore has no queues (NotImplementedError); ours has.
TORCH_ROWS = [(n, k) for n, k in ROWS if not (k == "file" and n.startswith("queue"))]


def _caught_by(exc: BaseException, dist: Any) -> frozenset[str]:
    return frozenset(n for n in NAMES if isinstance(exc, getattr(dist, n)))


def _row(name: str) -> tuple[Op, frozenset[str]]:
    for row_name, op, caught, _ in TABLE:
        if row_name == name:
            return op, caught
    raise KeyError(name)


@pytest.mark.parametrize(("name", "kind"), ROWS, ids=[f"{n}-{k}" for n, k in ROWS])
def test_our_errors_are_caught_as_torchs(name: str, kind: str, tmp_path: Path) -> None:
    op, caught = _row(name)
    with our_store(kind, tmp_path) as s, pytest.raises(ours.DistError) as info:
        op(s, ours)
    assert _caught_by(info.value, ours) == caught, repr(info.value)
    assert isinstance(info.value, RuntimeError)


@pytest.mark.skipif(torch_missing() is not None, reason=str(torch_missing()))
@pytest.mark.parametrize(("name", "kind"), TORCH_ROWS, ids=[f"{n}-{k}" for n, k in TORCH_ROWS])
def test_torchs_errors_are_caught_the_same_way(name: str, kind: str, tmp_path: Path) -> None:
    dist = _torch()

    op, caught = _row(name)
    kind = kind.replace("-pure", "")
    with torch_store(kind, tmp_path) as s, pytest.raises(RuntimeError) as info:
        op(s, dist)
    assert _caught_by(info.value, dist) == TORCH_DIFFERS.get((kind, name), caught), info.value


@pytest.mark.parametrize("kind", ["tcp", "tcp-pure"])
def test_a_server_gone_is_a_network_error(kind: str, tmp_path: Path) -> None:
    with our_store(kind, tmp_path) as s:
        peer = TCPStore("127.0.0.1", s.port, timeout=5, accelerate=kind == "tcp")
        s.close()
        with peer, pytest.raises(ours.DistNetworkError) as info:
            peer.get("k")
        assert _caught_by(info.value, ours) == NETWORK


@pytest.mark.skipif(torch_missing() is not None, reason=str(torch_missing()))
def test_torchs_server_gone_is_a_network_error() -> None:
    dist = _torch()

    master = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                           timeout=timedelta(seconds=5))  # fmt: skip
    peer = dist.TCPStore("127.0.0.1", master.port, timeout=timedelta(seconds=5))
    del master  # torch stops its server when the master is destroyed
    with pytest.raises(dist.DistNetworkError) as info:
        peer.get("k")
    assert _caught_by(info.value, dist) == NETWORK


def test_address_in_use_is_a_bind_error_naming_the_port() -> None:
    m = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=5)
    with m, pytest.raises(StoreBindError) as info:
        TCPStore("127.0.0.1", m.port, is_master=True, timeout=5)
    assert info.value.port == m.port and info.value.errno == 98
    assert isinstance(info.value, ours.DistNetworkError) and str(m.port) in str(info.value)


# --------------------------------------------------------------------------- timeout texts


TIMED: list[tuple[str, Callable[[Any], object], tuple[str, ...]]] = [
    ("get", lambda s: s.get("the_key"), tuple(KINDS)),
    ("wait", lambda s: s.wait(["the_key", "b"]), tuple(KINDS)),
    ("wait_explicit", lambda s: s.wait(["the_key"], timedelta(seconds=0.05)), tuple(KINDS)),
    ("multi_get", lambda s: s.multi_get(["the_key"]), tuple(KINDS)),
    ("queue_pop", lambda s: s.queue_pop("q"), tuple(KINDS)),
    ("barrier", lambda s: s.barrier("bar", 2, timedelta(seconds=SHORT)),
     ("hash", "file", "tcp", "tcp-pure", "prefix-hash")),
]  # fmt: skip
TIMED_ROWS = [(name, kind) for name, _, kinds in TIMED for kind in kinds]
#: torch's FileStore has no queues.
TORCH_TIMED_ROWS = [(n, k) for n, k in TIMED_ROWS if (n, k) != ("queue_pop", "file")]
LIMITS = {"wait_explicit": 0.05}


def _timed(name: str) -> Callable[[Any], object]:
    return next(fn for n, fn, _ in TIMED if n == name)


def _our_timeout(name: str, kind: str, tmp: Path) -> StoreTimeout:
    with our_store(kind, tmp) as s, pytest.raises(StoreTimeout) as info:
        _timed(name)(s)
    return info.value


@pytest.mark.parametrize(("name", "kind"), TIMED_ROWS, ids=[f"{n}-{k}" for n, k in TIMED_ROWS])
def test_a_timeout_reports_the_configured_limit(name: str, kind: str, tmp_path: Path) -> None:
    err = _our_timeout(name, kind, tmp_path)
    assert err.timeout == LIMITS.get(name, SHORT), err
    assert err.elapsed >= err.timeout
    assert str(err).startswith(err.torch + "; ") and err.torch


@pytest.mark.skipif(torch_missing() is not None, reason=str(torch_missing()))
@pytest.mark.parametrize(
    ("name", "kind"), TORCH_TIMED_ROWS, ids=[f"{n}-{k}" for n, k in TORCH_TIMED_ROWS]
)
def test_a_timeout_says_what_torch_says(name: str, kind: str, tmp_path: Path) -> None:
    err = _our_timeout(name, kind, tmp_path)
    with torch_store(kind.replace("-pure", ""), tmp_path) as s, pytest.raises(RuntimeError) as t:
        _timed(name)(s)
    assert str(t.value) in str(err), (str(t.value), str(err))


def test_texts_measured_from_torch_2_13() -> None:
    """The texts the comparison above checks, written out (they hold without torch too)."""
    cases = {
        ("get", ("the_key",), 0.1, "TCPStore(x)"): "wait timeout after 100ms, keys: /the_key",
        ("wait", ("a", "b"), 0.2909, "TCPStore(x)"): "wait timeout after 290ms, keys: /a, /b",
        ("barrier", ("bar",), 0.1, "TCPStore(x)"): "barrier timeout after 100ms, key: bar",
        ("get", ("k",), 1.5, "FileStore('/f')"): "Timeout waiting for key: k after 1500 ms",
        ("wait", ("k",), 1.5, "FileStore('/f')"): "Wait timeout",
        ("queue_pop", ("q",), 0.1, "HashStore(keys=0)"): "Wait timeout",
        ("get", ("k",), 0.1, "TorchStore(TCPStore)"): "wait timeout after 100ms, keys: /k",
    }
    for (op, keys, limit, store), want in cases.items():
        err = ours.StoreTimeout(op, keys, limit, limit, store)
        assert err.torch == want and str(err).startswith(want + "; ")
        assert pickle.loads(pickle.dumps(err)).torch == want


@pytest.mark.skipif(torch_missing() is not None, reason=str(torch_missing()))
@pytest.mark.parametrize("kind", ["hash", "file", "tcp"])
def test_the_torch_adapter_keeps_torchs_text_and_the_limit(kind: str) -> None:
    from storeharness.stores.torch_adapter import TorchStore

    with tempfile.TemporaryDirectory() as tmp, torch_store(kind, Path(tmp)) as raw:
        store = TorchStore(raw)
        for call in (lambda: store.get("k"), lambda: store.wait(["k"])):
            with pytest.raises(ours.DistStoreError) as info:
                call()
            err = info.value
            assert isinstance(err, StoreTimeout) and err.timeout == SHORT
            assert str(err).startswith(err.torch + "; ") and err.torch
            if kind != "file":
                assert err.torch.lower().startswith("wait timeout")

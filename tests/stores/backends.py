"""The backends every contract test runs on, by name."""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable

from storeharness.stores import Capability, FileStore, HashStore, PrefixStore, Store, TCPStore
from storeharness.stores.conformance import Backend

from .parties import process_parties

NAMES = ["hash", "file", "tcp", "tcp-pure", "prefix-hash", "prefix-file", "prefix-tcp"]
#: Interoperability pairings; they need torch (``pip install torch==2.13.0``).
TORCH_NAMES = ["torch-client-on-ours", "ours-on-torch-libuv", "ours-on-torch-legacy"]


def torch_missing() -> str | None:
    """Why the torch pairings cannot run here, or ``None``."""
    try:
        import torch.distributed  # noqa: F401
    except ImportError:
        return "torch is not installed (pip install torch==2.13.0, or tox -e interop)"
    return None


def _file_opener(store: Store) -> Callable[[], Store]:
    assert isinstance(store, FileStore)
    return functools.partial(FileStore, store.path)


def _prefix_file_opener(store: Store) -> Callable[[], Store]:
    assert isinstance(store, PrefixStore)
    base = store.underlying_store
    assert isinstance(base, FileStore)
    return functools.partial(_open_prefixed, store.prefix, base.path)


def _open_prefixed(prefix: str, path: str) -> Store:
    return PrefixStore(prefix, FileStore(path), _owns_store=True)


def _tcp_opener(store: Store) -> Callable[[], Store]:
    assert isinstance(store, TCPStore)
    return functools.partial(TCPStore, "127.0.0.1", store.port, timeout=60)


def _tcp_pure_opener(store: Store) -> Callable[[], Store]:
    assert isinstance(store, TCPStore)
    return functools.partial(TCPStore, "127.0.0.1", store.port, timeout=60, accelerate=False)


def _open_prefixed_tcp(prefix: str, port: int) -> Store:
    return PrefixStore(prefix, TCPStore("127.0.0.1", port, timeout=60), _owns_store=True)


def _prefix_tcp_opener(store: Store) -> Callable[[], Store]:
    assert isinstance(store, PrefixStore)
    base = store.underlying_store
    assert isinstance(base, TCPStore)
    return functools.partial(_open_prefixed_tcp, store.prefix, base.port)


def _tcp_master() -> TCPStore:
    return TCPStore("127.0.0.1", 0, is_master=True, timeout=60)


def _torch_client_on_ours() -> Store:
    from storeharness.stores.tcp import ServerProcess, bind_listener
    from storeharness.stores.torch_adapter import torch_tcp_client

    # Our server in its own process: torch's client holds the GIL during list_keys/queue_len.
    server = ServerProcess(bind_listener(0))
    try:
        return torch_tcp_client("127.0.0.1", server.port, 60, on_close=server.stop)
    except BaseException:
        server.stop()
        raise


def _torch_client_opener(store: Store) -> Callable[[], Store]:
    from storeharness.stores.torch_adapter import TorchStore, torch_tcp_client

    assert isinstance(store, TorchStore)
    return functools.partial(torch_tcp_client, "127.0.0.1", store.torch_store.port, 60)


def _ours_on_torch(use_libuv: bool, keep: list[object]) -> Store:
    from datetime import timedelta

    import torch.distributed as dist

    master = dist.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=60), use_libuv=use_libuv)
    keep.append(master)  # torch's server lives as long as this object
    return TCPStore("127.0.0.1", master.port, timeout=60, use_libuv=use_libuv)


def _ours_opener(store: Store) -> Callable[[], Store]:
    assert isinstance(store, TCPStore)
    return functools.partial(
        TCPStore, "127.0.0.1", store.port, timeout=60, use_libuv=store.libuvBackend
    )


def make_backend(name: str, tmp_dir: str) -> Backend:
    """Backend ``name`` whose files live in ``tmp_dir``; file-backed parties are processes."""
    counter = itertools.count()

    def path() -> str:
        return os.path.join(tmp_dir, f"store-{next(counter)}")

    if name == "hash":
        return Backend(name, HashStore)
    if name == "file":
        return Backend(name, lambda: FileStore(path()), _file_opener, process_parties)
    if name == "tcp":
        return Backend(name, _tcp_master, _tcp_opener, process_parties)
    if name == "tcp-pure":  # the Python server and client, without the C speedups
        master = functools.partial(TCPStore, "127.0.0.1", 0, is_master=True, timeout=60)
        return Backend(name, functools.partial(master, accelerate=False), _tcp_pure_opener,
                       process_parties)  # fmt: skip
    if name == "prefix-tcp":
        return Backend(
            name,
            lambda: PrefixStore("pre", _tcp_master(), _owns_store=True),
            _prefix_tcp_opener,
            process_parties,
        )
    if name == "torch-client-on-ours":
        return Backend(name, _torch_client_on_ours, _torch_client_opener, process_parties)
    if name in ("ours-on-torch-libuv", "ours-on-torch-legacy"):
        legacy = name.endswith("legacy")
        masters: list[object] = []
        return Backend(
            name,
            functools.partial(_ours_on_torch, not legacy, masters),
            _ours_opener,
            process_parties,
            # torch's legacy server does not wake waiters when compare_set creates a key.
            lacks=frozenset({Capability.CAS_WAKES}) if legacy else frozenset(),
        )
    if name == "prefix-hash":
        return Backend(name, lambda: PrefixStore("pre", HashStore(), _owns_store=True))
    if name == "prefix-file":
        return Backend(
            name,
            lambda: _open_prefixed("pre", path()),
            _prefix_file_opener,
            process_parties,
        )
    raise ValueError(f"unknown backend {name!r}; choose from {NAMES}")

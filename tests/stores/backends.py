"""The backends every contract test runs on, by name."""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable

from stores import FileStore, HashStore, PrefixStore, Store, TCPStore
from stores.conformance import Backend

from .parties import process_parties

NAMES = ["hash", "file", "tcp", "prefix-hash", "prefix-file", "prefix-tcp"]


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


def _open_prefixed_tcp(prefix: str, port: int) -> Store:
    return PrefixStore(prefix, TCPStore("127.0.0.1", port, timeout=60), _owns_store=True)


def _prefix_tcp_opener(store: Store) -> Callable[[], Store]:
    assert isinstance(store, PrefixStore)
    base = store.underlying_store
    assert isinstance(base, TCPStore)
    return functools.partial(_open_prefixed_tcp, store.prefix, base.port)


def _tcp_master() -> TCPStore:
    return TCPStore("127.0.0.1", 0, is_master=True, timeout=60)


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
    if name == "prefix-tcp":
        return Backend(
            name,
            lambda: PrefixStore("pre", _tcp_master(), _owns_store=True),
            _prefix_tcp_opener,
            process_parties,
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

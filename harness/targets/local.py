"""Targets without a server: an in-memory store shared by thread ranks, or a store in a file.

The endpoint makes one store in the runner's process (an in-memory store must live somewhere,
and a file store's first handle creates the file); ranks open their own handles on it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from ...stores import FileStore, HashStore, Store
from ...stores.conformance import Backend
from .._parties import process_parties
from ._base import Endpoint, Target, TargetSpec

__all__ = ["LocalEndpoint", "LocalTarget", "file_target", "hash_target"]

#: ``make(workdir, timeout)`` → the run's store, opened in the runner's process.
Make = Callable[[Path, float], Store]
#: ``reopen(store, workdir, timeout)`` → how a rank opens its own handle on that store.
Reopen = Callable[[Store, Path, float], Callable[[], Store]]


class LocalTarget(Target):
    """A store made in the runner's process, with handles for the ranks."""

    def __init__(
        self,
        spec: TargetSpec,
        make: Make,
        reopen: Reopen,
        unavailable: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.spec, self.make, self.reopen = spec, make, reopen
        self._unavailable = unavailable

    def unavailable(self) -> str | None:
        return self._unavailable()

    def start(
        self, workdir: Path, *, timeout: float, proxy: bool = False, prefix: str | None = None
    ) -> Endpoint:
        return LocalEndpoint(self, workdir, timeout=timeout, proxy=proxy, prefix=prefix)

    def backend(self, workdir: Path) -> Backend:
        count = iter(range(1 << 62))
        dirs: dict[int, Path] = {}

        def make() -> Store:
            where = workdir / f"conformance-{next(count)}"
            where.mkdir(parents=True)
            store = self.make(where, 60.0)
            dirs[id(store)] = where
            return store

        def opener(store: Store) -> Callable[[], Store]:
            return self.reopen(store, dirs[id(store)], 60.0)

        cross = "process" in self.spec.workers
        return Backend(self.spec.name, make, opener, process_parties if cross else None)


class LocalEndpoint(Endpoint):
    target: LocalTarget
    local: Store | None = None

    def _start(self) -> None:
        self.local = self.target.make(self.workdir, self.timeout)

    def _raw(self, address: tuple[str, int] | None, timeout: float) -> Callable[[], Store]:
        assert self.local is not None, "the endpoint is closed"
        return self.target.reopen(self.local, self.workdir, timeout)

    def _stop(self) -> None:
        if self.local is not None:
            self.local.close()
            self.local = None


def _clone(store: Store, workdir: Path, timeout: float) -> Callable[[], Store]:
    return store.clone


def _file_path(workdir: Path) -> str:
    return str(workdir / "store")


def _make_file(workdir: Path, timeout: float) -> Store:
    return FileStore(_file_path(workdir), -1, timeout)


def _reopen_file(store: Store, workdir: Path, timeout: float) -> Callable[[], Store]:
    return functools.partial(FileStore, _file_path(workdir), -1, timeout)


def hash_target() -> LocalTarget:
    return LocalTarget(
        TargetSpec(
            "hash", "our HashStore (in memory; thread ranks)", ("thread",),
            HashStore.capabilities,
        ),
        lambda workdir, timeout: HashStore(timeout=timeout),
        _clone,
    )  # fmt: skip


def file_target() -> LocalTarget:
    return LocalTarget(
        TargetSpec(
            "file", "our FileStore in the run's temporary directory", ("process", "thread"),
            FileStore.capabilities,
        ),
        _make_file,
        _reopen_file,
    )  # fmt: skip

"""A PrefixStore over another target: the same store, every key under a prefix.

``prefix`` is a PrefixStore over our TCPStore (its historical name); ``prefix-hash`` and
``prefix-file`` wrap the others.  Everything but the opened handles is the base target's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...stores import PrefixStore, Store
from ...stores.conformance import Backend
from ._base import Endpoint, Target, TargetSpec, prefixed

__all__ = ["PrefixTarget"]

PREFIX = "user"


class PrefixTarget(Target):
    """``base`` with every handle wrapped in ``PrefixStore(prefix, ...)``."""

    def __init__(self, name: str, base: Target, prefix: str = PREFIX) -> None:
        self.base, self.prefix = base, prefix
        self.spec = TargetSpec(
            name,
            f"a PrefixStore over {base.spec.help}",
            base.spec.workers,
            base.spec.capabilities,
            server=base.spec.server,
            network=base.spec.network,
            kind=base.spec.kind,
            spans_hosts=base.spec.spans_hosts,
        )

    def unavailable(self) -> str | None:
        return self.base.unavailable()

    def start(
        self, workdir: Path, *, timeout: float, proxy: bool = False, prefix: str | None = None
    ) -> Endpoint:
        inner = self.prefix if prefix is None else f"{prefix}/{self.prefix}"
        endpoint = self.base.start(workdir, timeout=timeout, proxy=proxy, prefix=inner)
        endpoint.spec = self.spec
        return endpoint

    def start_on(
        self, agent: Any, workdir: Path, *, timeout: float, prefix: str | None = None
    ) -> Endpoint:
        inner = self.prefix if prefix is None else f"{prefix}/{self.prefix}"
        endpoint = self.base.start_on(agent, workdir, timeout=timeout, prefix=inner)
        endpoint.spec = self.spec
        return endpoint

    def backend(self, workdir: Path) -> Backend:
        base = self.base.backend(workdir)

        def make() -> Store:
            return PrefixStore(self.prefix, base.make(), _owns_store=True)

        def opener(store: Store) -> Callable[[], Store]:
            assert isinstance(store, PrefixStore)
            return functools.partial(prefixed, self.prefix, base.opener(store.underlying_store))

        def release(store: Store) -> None:
            assert isinstance(store, PrefixStore)
            if base.release is not None:
                base.release(store.underlying_store)

        return Backend(self.spec.name, make, opener, base.parties, base.lacks, release)

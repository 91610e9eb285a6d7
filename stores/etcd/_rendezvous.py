"""``etcd://host:port[,host:port]/prefix?rank=R&world_size=W``: rendezvous on an etcd cluster.

Registered with :func:`~storeharness.stores.register_rendezvous_handler` beside ``tcp://``,
``file://`` and ``env://``, parsed and failing as they do (torch's messages).  Every rank opens an
:class:`EtcdStore` on the same endpoints and prefix and counts itself in; rank 0 returns once all
``world_size`` ranks have, as the master of ``tcp://`` does (``_join.py``), the others at once.
``timeout=`` (default 30 min, as ``tcp://``) is the store's, and bounds rank 0's wait.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from .._base import Store
from .._rendezvous import (
    DEFAULT_PG_TIMEOUT,
    _node_params,
    _query_to_dict,
    _rendezvous_error,
    register_rendezvous_handler,
)
from .._types import TimeoutLike
from ._join import join_world
from ._layout import parse_endpoints
from .store import EtcdStore

__all__ = ["etcd_rendezvous_handler"]


def etcd_rendezvous_handler(
    url: str, timeout: TimeoutLike = DEFAULT_PG_TIMEOUT, **kwargs: Any
) -> Iterator[tuple[Store, int, int]]:
    """Yield ``(EtcdStore, rank, world_size)`` once for an ``etcd://`` URL, then raise."""
    parts = urlparse(url)
    if not parts.netloc:
        raise _rendezvous_error("etcd", "endpoints missing (etcd://host:port[,host:port]/prefix)")
    try:
        endpoints = parse_endpoints(parts.netloc)
    except ValueError as exc:
        raise _rendezvous_error("etcd", str(exc)) from exc
    prefix = parts.path.strip("/")
    if not prefix:
        raise _rendezvous_error("etcd", "prefix missing (etcd://host:port/prefix)")
    rank, world_size = _node_params("etcd", _query_to_dict("etcd", parts.query))
    if not 0 <= rank < world_size:
        raise _rendezvous_error("etcd", f"rank {rank} is not in 0..{world_size - 1} (world_size)")
    store = EtcdStore(endpoints, prefix=prefix, timeout=timeout)
    try:
        join_world(store, rank, world_size)
    except BaseException:
        store.close()
        raise
    yield (store, rank, world_size)
    raise RuntimeError("Unable to perform re-rendezvous using etcd:// method")


register_rendezvous_handler("etcd", etcd_rendezvous_handler)

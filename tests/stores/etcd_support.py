"""What the etcd tests share: skip without etcd here, but never in CI (``CI=true``: fail)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from storeharness.harness.targets._etcd_server import EtcdCluster, etcd_missing, shared_cluster
from storeharness.stores.etcd import EtcdStore


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(why: str | None) -> None:
    """Skip when ``why`` says something is missing, except in CI, where that is a failure."""
    if why is None:
        return
    if in_ci():
        pytest.fail(f"CI must run the etcd tests, but: {why} (.ci/run installs storeharness[etcd])")
    pytest.skip(why)


def cluster() -> EtcdCluster:
    """This process's shared single-member etcd (skipped or failed, as above, without one)."""
    require(etcd_missing())
    return shared_cluster()


def store(cluster: EtcdCluster) -> Iterator[EtcdStore]:
    """A store under a fresh prefix of ``cluster`` (timeout 10 s), destroyed afterwards."""
    s = EtcdStore(cluster.endpoints, prefix=f"test/{uuid.uuid4().hex}", timeout=10)
    yield s
    if not s.closed:
        s.destroy()

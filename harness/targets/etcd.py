"""etcd targets: our EtcdStore (``etcd``) and torch's v2 EtcdStore (``torch-etcd``).

Both run on this process's one single-member etcd on loopback (``_etcd_server.shared_cluster``,
started on first use, stopped at exit), each run in a key prefix of its own that the endpoint
deletes when the run ends; scenarios that kill or restart etcd start a cluster of their own
(:class:`~._etcd_server.EtcdCluster`).  ``torch-etcd`` drives
``torch.distributed.elastic.rendezvous.etcd_store.EtcdStore`` through python-etcd against the
same etcd with its v2 API enabled (etcd 3.4/3.5's ``--enable-v2``): torch's store implements five
operations (set, get, add, wait, check), and the rest report :class:`UnsupportedOperation`.

When a world spans hosts, ``start_on`` has the store host's agent start a single member of the
run's own on that host's data address instead (:class:`~.hosted.HostedEtcdEndpoint`).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import importlib.util
import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from ...stores import Capability, Store, StoreTimeout, UnsupportedOperation
from ...stores.conformance import Backend
from .._parties import process_parties
from ._base import MARK, SETUP_TIMEOUT, Endpoint, Target, TargetSpec
from ._etcd_server import EtcdCluster, etcd_missing, shared_cluster
from .torch import torch_missing

__all__ = ["EtcdTarget", "TorchEtcdTarget", "etcd_targets", "put_under", "torch_etcd_store"]

#: How long a run's own handles take to give up on an unavailable cluster in setup/teardown.
_SETUP = 60.0


def _etcd_store(endpoints: str, prefix: str, timeout: float) -> Store:
    from ...stores.etcd import EtcdStore

    return EtcdStore(endpoints, prefix=prefix, timeout=timeout)


def _destroy(endpoints: str, prefix: str) -> None:
    from ...stores.etcd import EtcdStore

    EtcdStore(endpoints, prefix=prefix, timeout=_SETUP).destroy()


def _gateway(endpoints: str, path: str, body: dict[str, str]) -> None:
    """One request to etcd's JSON gateway (``/v3/kv/...``), bytes fields in base64.

    The controller writes and deletes a run's keys this way, not through gRPC: a process that
    has loaded gRPC (its threads, its fork handlers) cannot safely fork the ranks, and a rank
    forked mid-call hung in gRPC's fork hook, deaf to SIGTERM.
    """
    host = endpoints.split(",")[0]
    fields = {k: base64.b64encode(v.encode("utf-8", "surrogateescape")).decode() for k, v in
              body.items()}  # fmt: skip
    request = urllib.request.Request(
        f"http://{host}{path}", data=json.dumps(fields).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=SETUP_TIMEOUT) as reply:
        reply.read()


def put_under(endpoints: str, root: str, key: str, value: str) -> None:
    """Set ``key`` as our EtcdStore under ``root`` sees it, through the JSON gateway (no gRPC
    here): how the controller, or a host's agent, writes a run's mark."""
    from ...stores.etcd._layout import Layout  # pure Python: no gRPC in this process

    full = Layout(root).key(key).decode("utf-8", "surrogateescape")
    _gateway(endpoints, "/v3/kv/put", {"key": full, "value": value})


class EtcdTarget(Target):
    """Our EtcdStore, each run (and each conformance store) under a prefix of its own."""

    spec = TargetSpec(
        "etcd",
        "our EtcdStore on a single-member etcd (v3) on loopback (needs storeharness[etcd])",
        ("process", "thread"),
        frozenset(
            {Capability.QUEUES, Capability.LIST_KEYS, Capability.CROSS_PROCESS,
             Capability.ADD_ERRORS, Capability.CAS_WAKES}
        ),
        spans_hosts=True,
    )  # fmt: skip
    #: Whether the store speaks etcd's v2 API (torch's), which the server must enable.
    v2 = False

    def unavailable(self) -> str | None:
        return etcd_missing()

    def start(
        self, workdir: Path, *, timeout: float, proxy: bool = False, prefix: str | None = None
    ) -> Endpoint:
        return EtcdEndpoint(self, workdir, timeout=timeout, proxy=proxy, prefix=prefix)

    def start_on(
        self, agent: Any, workdir: Path, *, timeout: float, prefix: str | None = None
    ) -> Endpoint:
        """An etcd member of the run's own on ``agent``'s host, at its data address."""
        from .hosted import HostedEtcdEndpoint

        return HostedEtcdEndpoint(self, agent, workdir, timeout=timeout, prefix=prefix)

    def client(self, endpoint: str, root: str, timeout: float) -> Callable[[], Store]:
        """How a rank opens the store under ``root`` on etcd at ``endpoint`` (picklable)."""
        return functools.partial(_etcd_store, endpoint, root, timeout)

    def backend(self, workdir: Path) -> Backend:
        cluster = shared_cluster()
        roots: dict[int, str] = {}

        def make() -> Store:
            root = f"storeharness-conformance/{uuid.uuid4().hex}"
            store = _etcd_store(cluster.endpoints, root, 60.0)
            roots[id(store)] = root
            return store

        def opener(store: Store) -> Callable[[], Store]:
            return functools.partial(_etcd_store, cluster.endpoints, roots[id(store)], 60.0)

        def release(store: Store) -> None:
            root = roots.pop(id(store), None)
            if root is not None:
                _destroy(cluster.endpoints, root)

        return Backend(self.spec.name, make, opener, process_parties, release=release)


class EtcdEndpoint(Endpoint):
    """A run's prefix on the shared etcd; closing deletes the run's keys."""

    target: EtcdTarget
    cluster: EtcdCluster | None = None
    root: str = ""

    def _start(self) -> None:
        self.cluster = shared_cluster(enable_v2=self.target.v2)
        self.root = f"storeharness-run/{uuid.uuid4().hex}"

    def _raw(self, address: tuple[str, int] | None, timeout: float) -> Callable[[], Store]:
        assert self.cluster is not None, "the endpoint is closed"
        return functools.partial(_etcd_store, self.cluster.endpoints, self.root, timeout)

    def _mark(self) -> None:
        if self.target.v2 or self.prefix is not None:
            super()._mark()  # torch's v2 store speaks HTTP already; a prefix wraps the store
            return
        assert self.cluster is not None, "the endpoint is closed"
        put_under(self.cluster.endpoints, self.root, f"{self.namespace}/{MARK}", self.token)

    def _stop(self) -> None:
        cluster, self.cluster = self.cluster, None
        if cluster is None:
            return
        with contextlib.suppress(Exception):  # the cluster is gone: nothing left to delete
            if not self.target.v2:
                from ...stores.etcd._layout import Layout, range_end

                root = Layout(self.root).root
                _gateway(cluster.endpoints, "/v3/kv/deleterange",
                         {"key": root.decode(), "range_end": range_end(root).decode()})  # fmt: skip
            else:  # torch's v2 keys: v2's own HTTP API, recursively
                host = cluster.endpoints.split(",")[0]
                request = urllib.request.Request(
                    f"http://{host}/v2/keys/{self.root}?recursive=true", method="DELETE"
                )
                with urllib.request.urlopen(request, timeout=SETUP_TIMEOUT) as reply:
                    reply.read()


# ------------------------------------------------------------------ torch's v2 EtcdStore


def _torch_missing() -> str | None:
    why = torch_missing() or etcd_missing()
    if why is None and importlib.util.find_spec("etcd") is None:
        why = "python-etcd (torch's v2 etcd client) is not installed (pip install python-etcd)"
    return why


def torch_etcd_store(endpoint: str, prefix: str, timeout: float) -> Store:
    """torch's own EtcdStore (v2 API, through python-etcd) behind our API."""
    import etcd  # python-etcd
    from torch.distributed.elastic.rendezvous.etcd_store import EtcdStore as TorchEtcd

    host, port = endpoint.rsplit(":", 1)

    def connect() -> Any:
        client = etcd.Client(host=host, port=int(port), protocol="http", read_timeout=5)
        return TorchEtcd(client, f"/{prefix}", timedelta(seconds=timeout))

    adapter: Any = _torch_etcd_adapter()
    store: Store = adapter(connect(), reopen=connect)
    return store


@functools.cache
def _torch_etcd_adapter() -> type[Store]:
    from ...stores.torch_adapter import TorchStore

    class TorchEtcdStore(TorchStore):
        """torch's v2 EtcdStore: its timeouts (``LookupError``) and the operations it lacks
        (the C++ base's "pure virtual" / "Not implemented") translated into our errors."""

        capabilities = frozenset({Capability.CROSS_PROCESS})

        def __repr__(self) -> str:
            return "TorchStore(torch EtcdStore, v2 API)"

        @contextlib.contextmanager
        def _call(
            self, op: str, keys: Sequence[str] = (), limit: float | None = None
        ) -> Iterator[Any]:
            start = time.monotonic()
            try:
                with super()._call(op, keys, limit) as store:
                    yield store
            except LookupError as exc:
                raise StoreTimeout(op, list(keys), time.monotonic() - start,
                                   self._timeout if limit is None else limit, repr(self),
                                   str(exc)) from exc  # fmt: skip
            except RuntimeError as exc:
                text = str(exc)
                if "pure virtual" not in text and "Not implemented" not in text:
                    raise
                raise UnsupportedOperation(
                    repr(self), op,
                    "torch's v2 EtcdStore implements only set, get, add, wait and check",
                ) from exc  # fmt: skip

    return TorchEtcdStore


class TorchEtcdTarget(EtcdTarget):
    spec = TargetSpec(
        "torch-etcd",
        "torch's v2 EtcdStore (python-etcd) on etcd with --enable-v2 (needs torch, "
        "storeharness[etcd] and python-etcd)",
        ("process", "thread"),
        frozenset({Capability.CROSS_PROCESS}),
        kind="torch",
        spans_hosts=True,
    )
    v2 = True

    def unavailable(self) -> str | None:
        return _torch_missing()

    def client(self, endpoint: str, root: str, timeout: float) -> Callable[[], Store]:
        return functools.partial(torch_etcd_store, endpoint, root, timeout)

    def start(
        self, workdir: Path, *, timeout: float, proxy: bool = False, prefix: str | None = None
    ) -> Endpoint:
        return TorchEtcdEndpoint(self, workdir, timeout=timeout, proxy=proxy, prefix=prefix)

    def backend(self, workdir: Path) -> Backend:
        cluster = shared_cluster(enable_v2=True)
        endpoint = cluster.members[0].endpoint

        def make() -> Store:
            return torch_etcd_store(endpoint, f"storeharness-conformance/{uuid.uuid4().hex}", 60)

        def opener(store: Store) -> Callable[[], Store]:
            prefix = store.torch_store.prefix.strip("/")  # type: ignore[attr-defined]
            return functools.partial(torch_etcd_store, endpoint, prefix, 60.0)

        return Backend(self.spec.name, make, opener, process_parties,
                       lacks=frozenset(Capability) - self.spec.capabilities)  # fmt: skip


class TorchEtcdEndpoint(EtcdEndpoint):
    def _raw(self, address: tuple[str, int] | None, timeout: float) -> Callable[[], Store]:
        assert self.cluster is not None, "the endpoint is closed"
        endpoint = self.cluster.members[0].endpoint
        return functools.partial(torch_etcd_store, endpoint, self.root, timeout)

    def _stop(self) -> None:
        self.cluster = None  # v2 keys live in a store of their own; the server goes at exit


def etcd_targets() -> list[Target]:
    return [EtcdTarget(), TorchEtcdTarget()]

"""What every target is: a spec known without starting anything, and a live endpoint per run.

A :class:`Target` is a strategy (pytest-xdist's ``scheduler/*`` shape): its :class:`TargetSpec`
says what it can take (worker kinds, store capabilities, server and network faults), ``start``
brings up a live :class:`Endpoint` for one run in that run's working directory, and ``backend``
hands the conformance suite fresh stores.  One module per kind of target implements it; the
registry in ``targets/__init__.py`` is the one place that chooses.

Every run gets its own key namespace and a mark inside it, so a rank that reaches a store that
is not its run's (a stale address, a reused port, another run on a shared server) fails at
once, naming what it found.
"""

from __future__ import annotations

import abc
import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ...stores import Capability, PrefixStore, Store, StoreError, StoreTimeout
from ...stores.conformance import Backend
from .. import faults as F
from ..proxy import ProxyProcess

__all__ = [
    "MARK",
    "Endpoint",
    "RunNamespace",
    "Target",
    "TargetSpec",
    "open_checked",
    "prefixed",
]

#: The key, inside a run's namespace, that holds the run's token.
MARK = "storeharness/endpoint"
#: How long the harness's own connection (writing the mark) waits for a store to answer.
SETUP_TIMEOUT = 60.0
WORKERS = ("process", "thread")


@dataclass(frozen=True)
class TargetSpec:
    """What a target is and what it can take (known without starting or importing anything).

    ``kind`` groups targets: ``ours`` (our stores), ``torch`` (torch's stores), ``interop``
    (torch's client with our server or the other way round), ``user`` (``module:factory``, an
    entry point) and ``remote`` (``tcp://host:port``, a server someone else runs).
    """

    name: str
    help: str
    workers: tuple[str, ...]
    capabilities: frozenset[Capability]
    server: bool = False  # a server process that faults can kill and restart
    network: bool = False  # ranks can reach it through the fault proxy
    kind: str = "ours"
    #: Ranks on several hosts can share it (a store reached over the network).  A file store
    #: could only with a directory every host shares, which the harness cannot declare yet.
    spans_hosts: bool = False

    def lacks(self, needs: frozenset[Capability]) -> frozenset[Capability]:
        """Which of ``needs`` this target does not offer."""
        return needs - self.capabilities

    @property
    def torch(self) -> bool:
        """Whether it needs torch installed."""
        return self.kind in ("torch", "interop")

    @property
    def whole_contract(self) -> bool:
        """Whether a missing operation is a failure (our stores, and ours paired with torch's)
        rather than a gap reported as unsupported (torch's stores, a user's, a remote one)."""
        return self.kind in ("ours", "interop")


class Target(abc.ABC):
    """A kind of store the harness can run worlds against."""

    spec: TargetSpec

    def unavailable(self) -> str | None:
        """Why this target cannot run here (torch missing, ...), or ``None`` when it can."""
        return None

    @abc.abstractmethod
    def start(
        self, workdir: Path, *, timeout: float, proxy: bool = False, prefix: str | None = None
    ) -> Endpoint:
        """Bring up a live store for one run in ``workdir`` (the run's own, empty directory).

        ``timeout`` is every store operation's timeout; ``proxy=True`` puts the fault proxy
        between ranks and the server; ``prefix`` opens every handle as a PrefixStore under it.
        Raises ``ValueError`` when the target cannot take the proxy, and :class:`StoreError`
        when its store cannot start.
        """

    def start_on(
        self, agent: Any, workdir: Path, *, timeout: float, prefix: str | None = None
    ) -> Endpoint:
        """Bring up a live store for a world that spans hosts, on ``agent``'s host (the one
        with the ``store`` role), reachable at its data-plane address from the others.

        Raises ``ValueError`` when this target cannot do that (yet), naming why.
        """
        if not self.spec.spans_hosts:
            raise ValueError(f"store {self.spec.name!r} cannot span hosts")
        raise ValueError(
            f"store {self.spec.name!r} can span hosts, but starting its server on a host through "
            "the agent is not built for it"
        )

    def backend(self, workdir: Path) -> Backend:
        """The conformance suite's view: a fresh, empty store per case, and peers on it.

        The default starts an endpoint per store in a new directory under ``workdir``; kinds
        with a cheaper way to make an empty store override this.
        """
        return endpoint_backend(self, workdir)

    def __repr__(self) -> str:
        return f"<target {self.spec.name}: {self.spec.help}>"


def endpoint_backend(target: Target, workdir: Path, timeout: float = 60.0) -> Backend:
    """A :class:`Backend` whose stores are raw handles on endpoints started one per store."""
    from .._parties import process_parties

    live: dict[int, Endpoint] = {}
    count = iter(range(1 << 62))

    def make() -> Store:
        endpoint = target.start(workdir / f"conformance-{next(count)}", timeout=timeout)
        try:
            store = endpoint.raw()()
        except BaseException:
            endpoint.close()
            raise
        live[id(store)] = endpoint
        return store

    def opener(store: Store) -> Callable[[], Store]:
        return live[id(store)].raw()

    def release(store: Store) -> None:
        endpoint = live.pop(id(store), None)
        if endpoint is not None:
            endpoint.close()

    cross = "process" in target.spec.workers and Capability.CROSS_PROCESS in (
        target.spec.capabilities
    )
    return Backend(
        target.spec.name,
        make,
        opener,
        process_parties if cross else None,
        # what a store class declares but this setup cannot deliver (our client on torch's
        # legacy server, say) does not count
        lacks=frozenset(Capability) - target.spec.capabilities,
        release=release,
    )


def prefixed(prefix: str, open_base: Callable[[], Store]) -> Store:
    """``open_base()`` seen through ``PrefixStore(prefix, ...)``, which owns it."""
    return PrefixStore(prefix, open_base(), _owns_store=True)


def open_checked(raw: Callable[[], Store], token: str, namespace: str) -> Store:
    """Open the raw store, prove it is this run's, and return this run's namespace in it.

    Raises :class:`StoreError` when the store answers but is not the one the run set up.
    """
    store = raw()
    mark = f"{namespace}/{MARK}"
    try:
        found = store.get(mark) if store.check([mark]) else None
    except BaseException:
        store.close()
        raise
    if found != token.encode():
        store.close()
        what = "has no mark of this run" if found is None else f"holds {found.decode()!r}"
        raise StoreError(
            f"{store!r} is not the store this run set up: it {what}, this run is {token!r} "
            "(a stale address, or a port another run reused?)"
        )
    return RunNamespace(namespace, store, _owns_store=True)


class RunNamespace(PrefixStore):
    """A run's own key namespace, whose timeouts name keys as the scenario wrote them.

    The namespace (``run-1a2b3c4d/``) is the harness's business: a rank that waited for
    ``"go"`` is told it timed out waiting for ``'go'``.
    """

    def _as_written(self, exc: StoreTimeout) -> StoreTimeout:
        cut = f"{self.prefix}/"
        keys = [k.split(cut, 1)[1] if cut in k else k for k in exc.keys]
        detail = str(getattr(exc, "detail", "") or "")
        return StoreTimeout(exc.op, keys, exc.elapsed, exc.timeout, exc.store, detail)


def _keys_as_written(name: str) -> Callable[..., Any]:
    base = getattr(PrefixStore, name)

    def method(self: RunNamespace, *args: Any, **kwargs: Any) -> Any:
        try:
            return base(self, *args, **kwargs)
        except StoreTimeout as exc:
            raise self._as_written(exc) from exc

    method.__name__ = method.__qualname__ = name
    method.__doc__ = base.__doc__
    return method


for _name in ("get", "wait", "multi_get", "barrier", "queue_pop", "add", "set", "compare_set"):
    setattr(RunNamespace, _name, _keys_as_written(_name))


class Endpoint:
    """A live store of one target for one run, with the controls its faults act on.

    Subclasses start what the store needs (a server, a file, an in-memory store) in
    :meth:`_start`, say how a rank opens it in :meth:`_raw`, and stop it in :meth:`_stop`.
    """

    def __init__(
        self,
        target: Target,
        workdir: Path,
        *,
        timeout: float,
        proxy: bool = False,
        prefix: str | None = None,
    ) -> None:
        self.target, self.spec, self.prefix = target, target.spec, prefix
        if proxy and not self.spec.network:
            raise ValueError(
                f"network faults need a store reached over TCP; {self.spec.name!r} is not"
            )
        self.workdir, self.timeout = Path(workdir), timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token = uuid.uuid4().hex
        self.namespace = f"run-{self.token[:8]}"
        self.proxy: ProxyProcess | None = None
        try:
            self._start()
            if proxy:
                host, port = self._upstream()
                self.proxy = ProxyProcess(host, port)
                # A no-op round trip: the child answers only once its proxy is serving, so no
                # rank's first connect races the proxy process's start-up.
                self.proxy.command("heal")
            self._mark()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name!r}, {str(self.workdir)!r})"

    # ------------------------------------------------------------------- subclass hooks

    def _start(self) -> None:
        """Start what the store needs; raise :class:`StoreError` if it cannot start."""

    @abc.abstractmethod
    def _raw(self, address: tuple[str, int] | None, timeout: float) -> Callable[[], Store]:
        """How to open the store (no namespace) with operation ``timeout``; ``address``
        replaces the server's own."""

    def _upstream(self) -> tuple[str, int]:
        """The address the fault proxy forwards to."""
        raise ValueError(f"{self.spec.name!r} has no network address for the fault proxy")

    def _stop(self) -> None:
        """Stop what :meth:`_start` started."""

    # ---------------------------------------------------------------------------- public

    def raw(self) -> Callable[[], Store]:
        """Open the store itself, outside any run's namespace (picklable where it can be)."""
        return self._handle(None, self.timeout)

    def _handle(self, address: tuple[str, int] | None, timeout: float) -> Callable[[], Store]:
        raw = self._raw(address, timeout)
        return raw if self.prefix is None else functools.partial(prefixed, self.prefix, raw)

    def _mark(self) -> None:
        # The harness's own connection waits for a server that is still starting (a loaded
        # machine), whatever the scenario's operation timeout: that is the ranks' business.
        with self._handle(None, max(self.timeout, SETUP_TIMEOUT))() as store:
            store.set(f"{self.namespace}/{MARK}", self.token)

    def opener(self) -> Callable[[], Store]:
        """What each rank calls to open its store (picklable for cross-process targets)."""
        address = ("127.0.0.1", self.proxy.port) if self.proxy is not None else None
        raw = self._handle(address, self.timeout)
        return functools.partial(open_checked, raw, self.token, self.namespace)

    # ------------------------------------------------------------------- fault controls

    def kill_server(self) -> str:
        """SIGKILL the store's server (its endpoint stays bound); returns the event text."""
        raise ValueError(f"store {self.spec.name!r} has no server to kill")

    def restart_server(self) -> str:
        """Start the store's server again on the same endpoint; returns the event text."""
        raise ValueError(f"store {self.spec.name!r} has no server to restart")

    def network(self, fault: F.Fault) -> str:
        """Apply a proxy fault (delay, drop, black hole, heal); returns the event text."""
        if self.proxy is None:
            raise ValueError(f"{fault}: this run has no proxy (network faults need a TCP store)")
        if isinstance(fault, F.Delay):
            self.proxy.command(f"delay {fault.seconds}")
            return f"network: delay {fault.seconds:g} s"
        if isinstance(fault, F.Drop):
            dropped = self.proxy.command("drop").split()[1]
            return f"network: {dropped} connection(s) reset"
        if isinstance(fault, F.Blackhole):
            self.proxy.command("blackhole")
            return "network: black hole (traffic swallowed)"
        self.proxy.command("heal")
        return "network: healed"

    def inherited_fds(self) -> list[int]:
        """The endpoint's fds that forked ranks must close (a listening socket, say)."""
        return []

    # -------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Stop the proxy and whatever the endpoint started; safe to call twice."""
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        self._stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

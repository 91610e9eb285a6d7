"""Registry, runner and assertion helpers of the conformance suite (no pytest needed)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .._base import Capability, Store

__all__ = [
    "CASES",
    "TORCH_CASES",
    "Backend",
    "Case",
    "CaseSkipped",
    "ConformanceFailure",
    "Context",
    "Outcome",
    "case",
    "check_store",
    "expect",
    "expect_raises",
    "thread_parties",
]

_T = TypeVar("_T")

#: ``parties(worker, n, args)`` runs ``worker(open_store, rank, *args)`` on ``n`` parties at
#: once and returns their results in rank order, raising the first failure.
Parties = Callable[[Callable[..., Any], int, tuple[Any, ...]], list[Any]]


class ConformanceFailure(AssertionError):
    """A store broke the contract; the message says which expectation failed."""


class CaseSkipped(Exception):
    """The backend lacks a capability the case needs (``reason`` says which)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Backend:
    """How the suite gets stores: a fresh one, and other handles on the same data.

    ``make`` returns a new, empty store.  ``opener(store)`` returns a zero-argument callable that
    opens another handle on ``store``'s data; it must pickle when ``parties`` runs processes.
    The default opener is ``store.clone``.
    """

    name: str
    make: Callable[[], Store]
    opener: Callable[[Store], Callable[[], Store]] = field(default=lambda s: s.clone)
    parties: Parties | None = None
    #: Capabilities the store declares but this setup cannot deliver (e.g. our client against
    #: torch's legacy server, which does not wake waiters on compare_set).
    lacks: frozenset[Capability] = frozenset()
    #: Called with each store from ``make`` after the case closed it (to stop what ``make``
    #: started for it: a server, say).
    release: Callable[[Store], None] | None = None


@dataclass
class Context:
    """What a case gets: the store under test, a way to open peers, a way to run parties."""

    store: Store
    backend: Backend

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset(self.store.capabilities) - self.backend.lacks

    def open_peer(self) -> Store:
        return self.backend.opener(self.store)()

    def parties(self, worker: Callable[..., _T], n: int, *args: Any) -> list[_T]:
        run = self.backend.parties or thread_parties
        return run(worker, n, (self.backend.opener(self.store), *args))


@dataclass(frozen=True)
class Case:
    """One contract check: a function of a :class:`Context` and the capabilities it needs."""

    name: str
    fn: Callable[[Context], None]
    requires: frozenset[Capability]
    doc: str

    def run(self, backend: Backend) -> None:
        """Run on a fresh store from ``backend``; raises :class:`CaseSkipped` or a failure."""
        store = backend.make()
        try:
            ctx = Context(store, backend)
            missing = self.requires - ctx.capabilities
            if missing:
                names = ", ".join(sorted(missing))
                raise CaseSkipped(f"{backend.name} does not offer capability {names}")
            self.fn(ctx)
        finally:
            store.close()
            if backend.release is not None:
                backend.release(store)


#: The contract, case by case.
CASES: list[Case] = []
#: torch's own ``test/distributed/test_store.py``, case by case, as torch asserts it (named
#: after torch's tests; see ``_torch_suite.py``).
TORCH_CASES: list[Case] = []


def case(
    *requires: Capability, into: list[Case] | None = None
) -> Callable[[Callable[[Context], None]], Callable[[Context], None]]:
    """Register a conformance case that needs ``requires`` (in :data:`CASES`, or ``into``)."""
    registry = CASES if into is None else into

    def register(fn: Callable[[Context], None]) -> Callable[[Context], None]:
        name = fn.__name__.removeprefix("case_")
        if any(c.name == name for c in registry):
            raise ValueError(f"conformance case {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        registry.append(Case(name, fn, frozenset(requires), doc))
        return fn

    return register


@dataclass(frozen=True)
class Outcome:
    """One case's result on one backend: ``passed``, ``failed`` (with the error) or ``skipped``."""

    case: str
    status: str
    detail: str = ""


def check_store(
    backend: Backend, names: Iterable[str] | None = None, cases: Iterable[Case] | None = None
) -> list[Outcome]:
    """Run the suite (or the named cases) on ``backend`` and return every outcome.

    ``cases``: another suite (:data:`TORCH_CASES`, torch's own tests) instead of the contract.
    """
    wanted = None if names is None else set(names)
    outcomes = []
    for c in CASES if cases is None else cases:
        if wanted is not None and c.name not in wanted:
            continue
        try:
            c.run(backend)
        except CaseSkipped as skip:
            outcomes.append(Outcome(c.name, "skipped", skip.reason))
        except Exception as exc:
            outcomes.append(Outcome(c.name, "failed", f"{type(exc).__name__}: {exc}"))
        else:
            outcomes.append(Outcome(c.name, "passed"))
    return outcomes


# --------------------------------------------------------------------------- helpers


def expect(condition: object, message: str) -> None:
    """Fail the case with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConformanceFailure(message)


def expect_equal(actual: object, expected: object, what: str) -> None:
    if actual != expected:
        raise ConformanceFailure(f"{what}: expected {expected!r}, got {actual!r}")


def expect_raises(
    kind: type[BaseException] | tuple[type[BaseException], ...],
    fn: Callable[[], object],
    what: str,
    match: str | None = None,
) -> BaseException:
    """Call ``fn``; fail unless it raises ``kind`` (whose text matches ``match``); return it."""
    try:
        result = fn()
    except kind as exc:
        if match is not None and not re.search(match, str(exc)):
            raise ConformanceFailure(
                f"{what}: error text {str(exc)!r} does not match {match!r}"
            ) from exc
        return exc
    except Exception as exc:
        raise ConformanceFailure(
            f"{what}: expected {_names(kind)}, got {type(exc).__name__}: {exc}"
        ) from exc
    raise ConformanceFailure(f"{what}: expected {_names(kind)}, but it returned {result!r}")


def _names(kind: type[BaseException] | tuple[type[BaseException], ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def thread_parties(
    worker: Callable[..., _T], n: int, args: tuple[Any, ...], timeout: float = 60.0
) -> list[_T]:
    """Run ``worker(*args[:1], rank, *args[1:])`` on ``n`` threads; return results by rank."""
    opener, *rest = args
    results: list[Any] = [None] * n
    errors: list[BaseException | None] = [None] * n

    def target(rank: int) -> None:
        try:
            results[rank] = worker(opener, rank, *rest)
        except BaseException as exc:
            errors[rank] = exc

    threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    for rank, t in enumerate(threads):
        t.join(timeout)
        if t.is_alive():
            raise ConformanceFailure(f"party {rank} of {n} still running after {timeout} s")
    for rank, err in enumerate(errors):
        if err is not None:
            raise ConformanceFailure(f"party {rank} of {n} failed: {err!r}") from err
    return results

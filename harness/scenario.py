"""Scenario authoring: a decorator that turns a rank function into a checked, runnable scenario.

::

    from storeharness import scenario, after, Signal, raises, returns
    from storeharness.stores import StoreTimeout

    @scenario(world_size=[2, 8], workers="process", expect={-1: raises(StoreTimeout)})
    def last_rank_times_out(ctx):
        ...

A scenario is data (a frozen record): its world size (a number, a list of sizes, or
:class:`NonFixed`), worker kind, the capabilities it needs from a store, its faults, the
outcome expected of each rank, and its time limits.  Every definition is checked when the
decorator runs, so a bad one fails at import (and so at collection) with a message saying how to
fix it.  :meth:`Scenario.cases` expands it over stores x worker kinds x world sizes in a fixed
order, so every pytest-xdist worker collects the same items.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, overload

from ..stores import Capability
from . import faults as F
from . import targets
from .context import RankContext
from .expect import (
    Expect,
    NeverStarts,
    Returns,
    WorldCheck,
    all_agree,
    exactly_one,
    killed,
    never_starts,
    raises,
    returns,
    times_out,
)
from .history import wants_history
from .launch._placement import Placement, check_placement
from .targets import TargetSpec

__all__ = [
    "Case",
    "Expect",
    "NonFixed",
    "Scenario",
    "ScenarioError",
    "WorldCheck",
    "all_agree",
    "exactly_one",
    "killed",
    "never_starts",
    "raises",
    "returns",
    "scenario",
    "times_out",
]

WORKERS = ("process", "thread")


class ScenarioError(ValueError):
    """A scenario definition is wrong; the message says what and how to fix it."""


# ---------------------------------------------------------------------------- world sizes


@dataclass(frozen=True)
class NonFixed:
    """A non-fixed world of ``slots`` ranks; rank ``r`` in ``late`` starts when ``late[r]`` fires.

    Ranks leave by returning.  ``ctx.world_size`` is ``None``; ranks take ids from the store.
    """

    slots: int
    late: Mapping[int, F.Trigger] = field(default_factory=dict)

    def faults(self) -> tuple[F.Fault, ...]:
        return tuple(F.Late(rank, point) for rank, point in sorted(self.late.items()))


WorldSize: TypeAlias = int | Sequence[int] | NonFixed


# ------------------------------------------------------------------------------- scenario


@dataclass(frozen=True)
class Case:
    """One runnable combination: a scenario on a store, with a worker kind and a world size."""

    scenario: Scenario
    target: str
    workers: str
    world_size: int
    #: Why this case is expected to fail (the scenario's ``xfail=`` for its store), or None.
    xfail: str | None = None

    @property
    def id(self) -> str:
        size = f"nonfixed{self.world_size}" if self.scenario.nonfixed else str(self.world_size)
        return f"{self.target}-{self.workers}-{size}"

    @property
    def nodeid(self) -> str:
        return f"{self.scenario.name}[{self.id}]"


@dataclass(eq=False)
class Scenario:
    """A checked scenario definition (made by :func:`scenario`); treat it as read-only.

    Not a frozen dataclass, only so that a pytest mark can be applied above ``@scenario``
    (pytest stores it as a ``pytestmark`` attribute); :attr:`marks` sees both placements.
    """

    fn: Callable[[RankContext], Any]
    name: str
    doc: str
    world_sizes: tuple[int, ...]
    nonfixed: bool
    workers: tuple[str, ...]
    needs: frozenset[Capability]
    stores: tuple[str, ...] | None
    faults: tuple[F.Fault, ...]
    expect: Mapping[int | str | F.AnyRank, Expect]
    time_limit: float
    op_timeout: float | None
    rank_budget: float | None
    module: str
    file: str
    checks: tuple[WorldCheck, ...] = ()
    xfail: Mapping[str, str] = field(default_factory=dict)
    #: Record every store operation and hold the run to :func:`~.history.linearizable`.
    history: bool = False
    #: ``slow=True``: left out of default runs (``storeharness run --slow``, ``pytest -m slow``).
    slow_declared: bool = False
    #: How many hosts its ranks span (``None``: host-agnostic, it runs wherever it is put).
    hosts: int | None = None
    #: ``"spread"``, ``"pack"`` or ``{rank: host name or index}`` (see ``launch._placement``).
    placement: Placement = "spread"

    @property
    def slow(self) -> bool:
        """Whether default runs leave it out: ``slow=True``, or a pytest ``slow`` mark."""
        return self.slow_declared or any(getattr(m, "name", None) == "slow" for m in self.marks)

    @property
    def __name__(self) -> str:  # so pytest treats a scenario as a test function for marks
        return self.name

    @property
    def marks(self) -> list[Any]:
        """pytest marks applied below ``@scenario`` (to the function) or above it."""
        return [*getattr(self.fn, "pytestmark", []), *getattr(self, "pytestmark", [])]

    def xfail_for(self, target: str) -> str | None:
        """The reason a case on ``target`` is expected to fail (``xfail=``), or ``None``."""
        for pattern, reason in self.xfail.items():
            if fnmatch.fnmatchcase(target, pattern):
                return reason
        return None

    def __call__(self, ctx: RankContext) -> Any:
        return self.fn(ctx)

    @property
    def uses_network(self) -> bool:
        return any(isinstance(f, F.PROXY_FAULTS) for f in self.faults)

    @property
    def uses_server(self) -> bool:
        return any(isinstance(f, F.SERVER_FAULTS) for f in self.faults)

    @property
    def uses_host_faults(self) -> bool:
        return any(isinstance(f, F.HOST_FAULTS) for f in self.faults)

    @property
    def uses_signals(self) -> bool:
        return any(isinstance(f, F.Signal) for f in self.faults)

    def why_not(
        self, spec: TargetSpec, workers: str | None = None, spanning: bool = False
    ) -> str | None:
        """Why this scenario cannot run on ``spec`` (with ``workers``; ``spanning``: with its
        ranks on hosts), or ``None`` if it can."""
        why = self._why_not_hosts(spec, workers, spanning)
        if why is not None:
            return why
        if self.stores is not None and spec.name not in self.stores:
            return f"the scenario names its stores: {', '.join(self.stores)}"
        lacking = spec.lacks(self.needs)
        if lacking == {Capability.CROSS_PROCESS}:  # one wording with the workers check below
            return f"{spec.name} cannot be shared by process ranks (it lacks cross_process)"
        if lacking:
            return f"{spec.name} lacks {', '.join(sorted(lacking))}"
        if self.uses_server and not spec.server:
            if spec.kind == "remote":
                return f"the server at {spec.name} is not the harness's to kill or restart"
            return f"{spec.name} has no server process to kill or restart"
        if self.uses_network and not spec.network:
            return f"{spec.name} is not reached over TCP, so network faults cannot apply"
        if workers is not None and workers not in spec.workers:
            if workers == "process":
                return f"{spec.name} cannot be shared by process ranks (it lacks cross_process)"
            return f"{spec.name} cannot be shared by {workers} ranks"
        if workers == "thread" and self.uses_signals:
            return "signals cannot target thread ranks"
        return None

    def _why_not_hosts(self, spec: TargetSpec, workers: str | None, spanning: bool) -> str | None:
        if not spanning:
            if self.hosts is not None:
                return (
                    f"it spans hosts={self.hosts}: run it with --hosts (netns:{self.hosts} "
                    "builds them on this machine)"
                )
            if self.uses_host_faults:
                return (
                    "its faults act between hosts: run it with --hosts (netns:3 builds them on "
                    "this machine)"
                )
            return None
        if workers == "thread":
            return "thread ranks cannot span hosts"
        if not spec.spans_hosts:
            extra = " (a file store would need a directory every host shares)"
            return f"{spec.name} cannot span hosts{extra if spec.name.endswith('file') else ''}"
        if self.uses_network:
            return (
                "its proxy faults act on one machine's loopback; between hosts use host-level "
                "network faults"
            )
        return None

    def why_no_case(self, target: str, spanning: bool = False) -> str:
        """Why this scenario has no case on store ``target``: its reasons per worker kind."""
        spec = targets.get(target).spec
        why = (self.why_not(spec, kind, spanning) or "no world size fits" for kind in self.workers)
        return "; ".join(dict.fromkeys(why))

    def cases(
        self,
        stores: Iterable[str],
        workers: str | None = None,
        world_sizes: Sequence[int] | None = None,
        spanning: bool = False,
    ) -> list[Case]:
        """Every runnable combination over the ``stores`` named, in a fixed order
        (``spanning``: with ranks on hosts)."""
        out = []
        for target in stores:
            spec = targets.get(target).spec
            for kind in self.workers:
                if workers not in (None, kind) or self.why_not(spec, kind, spanning) is not None:
                    continue
                for size in world_sizes or self.world_sizes:
                    if self.fits(size):
                        out.append(Case(self, target, kind, size, self.xfail_for(target)))
        return out

    def fits(self, world_size: int) -> bool:
        """Whether every rank the faults and expectations name exists in ``world_size``."""
        if self.nonfixed and world_size != self.world_sizes[0]:
            return False  # a schedule is written for its number of slots
        try:
            self.plan(world_size, 0)
        except ValueError:
            return False
        return all(not isinstance(k, int) or -world_size <= k < world_size for k in self.expect)

    def plan(self, world_size: int, seed: int) -> tuple[F.Fault, ...]:
        return F.resolve(self.faults, world_size, seed)

    @property
    def tags(self) -> tuple[str, ...]:
        """The ``AnyRank`` tags ``expect`` keys on (resolved with the fault plan's)."""
        return tuple(k.tag for k in self.expect if isinstance(k, F.AnyRank))

    def expectation(
        self,
        rank: int,
        world_size: int,
        plan: Sequence[F.Fault],
        tags: Mapping[str, int] | None = None,
    ) -> Expect:
        """What rank ``rank`` of a world of ``world_size`` is expected to do.

        ``tags`` maps each ``AnyRank`` tag to the rank the run's plan resolved it to.
        """
        for key, expect in self.expect.items():
            if isinstance(key, F.AnyRank) and (tags or {}).get(key.tag) == rank:
                return expect
        for key, expect in self.expect.items():
            if isinstance(key, int) and key % world_size == rank:
                return expect
        if any(isinstance(f, F.Missing) and f.rank == rank for f in plan):
            return NeverStarts()
        return self.expect.get("*", Returns())


@overload
def scenario(fn: Callable[[RankContext], Any], /) -> Scenario: ...


@overload
def scenario(
    fn: None = None,
    /,
    *,
    world_size: WorldSize = 4,
    workers: str = "process",
    needs: Iterable[Capability | str] = (),
    stores: Iterable[str] | None = None,
    faults: Iterable[F.Fault] = (),
    expect: Mapping[int | str | F.AnyRank, Expect] | None = None,
    time_limit: float = 30.0,
    op_timeout: float | None = 10.0,
    rank_budget: float | None = None,
    name: str | None = None,
    check: WorldCheck | Iterable[WorldCheck] = (),
    xfail: str | Mapping[str, str] | None = None,
    history: bool = False,
    slow: bool = False,
    hosts: int | None = None,
    placement: Placement = "spread",
) -> Callable[[Callable[[RankContext], Any]], Scenario]: ...


def scenario(
    fn: Callable[[RankContext], Any] | None = None,
    /,
    *,
    world_size: WorldSize = 4,
    workers: str = "process",
    needs: Iterable[Capability | str] = (),
    stores: Iterable[str] | None = None,
    faults: Iterable[F.Fault] = (),
    expect: Mapping[int | str | F.AnyRank, Expect] | None = None,
    time_limit: float = 30.0,
    op_timeout: float | None = 10.0,
    rank_budget: float | None = None,
    name: str | None = None,
    check: WorldCheck | Iterable[WorldCheck] = (),
    xfail: str | Mapping[str, str] | None = None,
    history: bool = False,
    slow: bool = False,
    hosts: int | None = None,
    placement: Placement = "spread",
) -> Scenario | Callable[[Callable[[RankContext], Any]], Scenario]:
    """Declare a scenario: ``fn(ctx)`` runs on every rank (use as ``@scenario(...)``).

    ``world_size``: an int, a list of ints (one case each) or :class:`NonFixed`.
    ``workers``: ``"process"``, ``"thread"`` or ``"both"``.  ``needs``: store capabilities.
    ``stores``: restrict to these targets.  ``faults``: from :mod:`storeharness.harness.faults`.
    ``expect``: rank → expectation (negative ranks count from the end; ``AnyRank("tag")`` is
    the rank the seeded plan picks for that tag; ``"*"`` for the rest; the default is
    :func:`returns`).  ``check``: world-level checks that see every rank's fate and value
    (:func:`exactly_one`, :func:`all_agree`, or your own).  ``time_limit`` bounds the world,
    ``rank_budget`` each rank, ``op_timeout`` each store operation.  ``xfail``: the reason the
    scenario is known to fail, or ``{store pattern: reason}`` (fnmatch: ``"torch-*"``).
    ``history``: record every store operation and check the history is linearizable (as
    ``check=linearizable()`` does; see ``docs/histories.md``).  ``slow=True`` leaves it out of
    default runs (``storeharness run --slow`` and ``pytest -m slow`` include it).  ``hosts``:
    its ranks span this many hosts (``--hosts`` gives them; ``ctx.host``, ``ctx.address``
    say where a rank is), placed by ``placement``: ``"spread"`` (round robin), ``"pack"``
    (fill each host's slots) or ``{rank: host name or index}``.  Raises
    :class:`ScenarioError` for a bad definition.
    """

    def wrap(f: Callable[[RankContext], Any]) -> Scenario:
        return _build(f, name, world_size, workers, needs, stores, faults, expect or {},
                      time_limit, op_timeout, rank_budget, check, xfail, history, slow,
                      hosts, placement)  # fmt: skip

    return wrap if fn is None else wrap(fn)


def _build(
    fn: Callable[[RankContext], Any],
    name: str | None,
    world_size: WorldSize,
    workers: str,
    needs: Iterable[Capability | str],
    stores: Iterable[str] | None,
    faults: Iterable[F.Fault],
    expect: Mapping[int | str | F.AnyRank, Expect],
    time_limit: float,
    op_timeout: float | None,
    rank_budget: float | None,
    check: WorldCheck | Iterable[WorldCheck] = (),
    xfail: str | Mapping[str, str] | None = None,
    history: bool = False,
    slow: bool = False,
    hosts: int | None = None,
    placement: Placement = "spread",
) -> Scenario:
    label: str = name or str(getattr(fn, "__name__", repr(fn)))

    def fail(problem: str) -> ScenarioError:
        return ScenarioError(f"scenario {label!r}: {problem}")

    if not callable(fn):
        raise fail(f"@scenario decorates a function of one argument (ctx), got {fn!r}")
    try:
        inspect.signature(fn).bind(None)
    except TypeError:
        raise fail("its function must take exactly one argument, the rank's ctx") from None
    except ValueError:
        pass  # a builtin without a signature: let it run
    sizes, nonfixed, extra = _sizes(world_size, fail)
    kinds = {"process": ("process",), "thread": ("thread",), "both": WORKERS}.get(workers)
    if kinds is None:
        raise fail(f"workers={workers!r}; use 'process', 'thread' or 'both'")
    caps = frozenset(_capability(c, fail) for c in needs)
    names = None if stores is None else tuple(stores)
    known = targets.names()
    for store in names or ():
        if store not in known and ":" not in store:
            raise fail(
                f"stores names {store!r}; known stores are {', '.join(known)} (or your own as "
                "module.path:factory, or tcp://HOST:PORT)"
            )
    fault_list = (*extra, *faults)
    problems = F.check(fault_list)
    if problems:
        raise fail("; ".join(problems))
    for size in sizes:
        try:
            F.resolve(fault_list, size, 0)
        except ValueError as exc:
            raise fail(f"with world size {size}: {exc}") from None
    if kinds == ("thread",) and any(isinstance(f, F.Signal) for f in fault_list):
        raise fail("signal faults need process ranks; set workers='process' (or 'both')")
    _check_expect(expect, sizes, fail)
    for label_, value in (("time_limit", time_limit), ("op_timeout", op_timeout),
                          ("rank_budget", rank_budget)):  # fmt: skip
        if value is not None and not (isinstance(value, int | float) and value > 0):
            raise fail(f"{label_}={value!r}; give a number of seconds > 0")
    if time_limit is None:
        raise fail("time_limit=None; every scenario needs a time limit in seconds")
    if not isinstance(slow, bool):
        raise fail(f"slow={slow!r}; give True or False")
    checks = (check,) if callable(check) else tuple(check)
    for each in checks:
        if not callable(each):
            raise fail(f"check={each!r}; give a function of the world result, or a list of them")
    if not isinstance(history, bool):
        raise fail(f"history={history!r}; give True (record and check) or False")
    if hosts is not None and (type(hosts) is not int or hosts < 1):
        raise fail(f"hosts={hosts!r}; give the number of hosts its ranks span (>= 1), or None")
    problem = check_placement(placement, hosts)
    if problem:
        raise fail(problem)
    if not isinstance(placement, str) and hosts is None:
        raise fail("placement names hosts; say how many with hosts=N")
    if hosts is not None and kinds != ("process",):
        raise fail("ranks on hosts are processes; set workers='process'")
    built = Scenario(
        fn, label, inspect.getdoc(fn) or "", sizes, nonfixed, kinds, caps, names, fault_list,
        dict(expect), float(time_limit), op_timeout, rank_budget,
        getattr(fn, "__module__", "") or "", inspect.getsourcefile(fn) or "",
        checks, _xfail(xfail, fail), history or wants_history(checks), slow, hosts,
        placement if isinstance(placement, str) else dict(placement),
    )  # fmt: skip
    if names is not None:
        for store in (n for n in names if n in known):
            why = built.why_not(targets.get(store).spec)
            if why:
                raise fail(f"it cannot run on the store it names, {store!r}: {why}")
    return built


def _sizes(
    world_size: WorldSize, fail: Callable[[str], ScenarioError]
) -> tuple[tuple[int, ...], bool, tuple[F.Fault, ...]]:
    if isinstance(world_size, NonFixed):
        slots = world_size.slots
        if not isinstance(slots, int) or slots < 1:
            raise fail(f"NonFixed(slots={slots!r}); slots must be an int >= 1")
        for rank, point in world_size.late.items():
            if not isinstance(point, F.Trigger):
                raise fail(f"NonFixed late[{rank}] must be after(rank, 'point'), got {point!r}")
        return (slots,), True, world_size.faults()
    sizes = (world_size,) if isinstance(world_size, int) else tuple(world_size)
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
        raise fail(f"world_size={world_size!r}; give an int, a list of ints, or NonFixed(...)")
    if min(sizes) < 1:
        raise fail(f"world_size={world_size!r}; every world size must be >= 1")
    return sizes, False, ()


def _capability(value: Capability | str, fail: Callable[[str], ScenarioError]) -> Capability:
    try:
        return Capability(value)
    except ValueError:
        known = ", ".join(c.value for c in Capability)
        raise fail(f"needs {value!r}, which is not a capability; use one of {known}") from None


def _check_expect(
    expect: Mapping[int | str | F.AnyRank, Expect],
    sizes: Sequence[int],
    fail: Callable[[str], ScenarioError],
) -> None:
    if not isinstance(expect, Mapping):
        raise fail(f"expect={expect!r}; give a dict of rank -> returns()/raises(...)/...")
    for key, value in expect.items():
        if not isinstance(value, Expect):
            raise fail(
                f"expect[{key!r}] = {value!r}; use returns(), raises(Error), killed(), "
                "times_out() or never_starts() from storeharness"
            )
        if key == "*":
            continue
        if isinstance(key, F.AnyRank):
            if not key.tag:
                raise fail(
                    "expect keys on ANY; give it a tag, AnyRank('winner'), and use the same "
                    "tag in the fault it names"
                )
            continue
        if not isinstance(key, int) or isinstance(key, bool):
            raise fail(
                f"expect key {key!r}; use a rank number (negative from the end), "
                "AnyRank('tag') or '*'"
            )
        for size in sizes:
            if not -size <= key < size:
                raise fail(f"expect names rank {key}, outside a world of {size}")


def _xfail(
    xfail: str | Mapping[str, str] | None, fail: Callable[[str], ScenarioError]
) -> dict[str, str]:
    if xfail is None:
        return {}
    if isinstance(xfail, str):
        return {"*": xfail}
    if not isinstance(xfail, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in xfail.items()
    ):
        raise fail(
            f"xfail={xfail!r}; give the reason, or a dict of store pattern -> reason "
            "(e.g. {'torch-*': \"torch's wait defers the handler\"})"
        )
    return dict(xfail)

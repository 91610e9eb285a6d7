"""Run one scenario case end to end and judge it: endpoint, world, faults, expectations, report.

The command line and the pytest plugin both come through :func:`run_case`, so a failure reads
the same in both and says how to replay it.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pkgutil
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ..stores import UnsupportedOperation
from . import report as _report
from . import targets
from ._keyword import compile_keyword
from .expect import run_checks
from .history import TIMELINE, linearizable, wants_history, write_timeline
from .hosts.inventory import Host
from .launch.session import HostSession
from .scenario import Case, Expect, Scenario
from .world import WorldResult, run_world

__all__ = [
    "CaseResult",
    "default_seed",
    "judge",
    "keyword_match",
    "load_package",
    "load_scenarios",
    "marked_skip",
    "marked_xfail",
    "run_case",
]


def default_seed(case: Case) -> int:
    """The seed a case runs with unless told otherwise: stable across runs and machines."""
    return zlib.crc32(f"{case.scenario.name}[{case.id}]".encode())


@dataclass(frozen=True)
class CaseResult:
    """A judged run: did every rank do what the scenario expected, and what happened."""

    case: Case
    passed: bool
    seed: int
    elapsed: float
    world: WorldResult | None = None
    expected: dict[int, Expect] = field(default_factory=dict)  # each rank's expectation
    problems: dict[int, str] = field(default_factory=dict)
    error: str = ""  # the run could not happen (the store would not start, ...)
    #: What is wrong with the world as a whole: a fault that never fired, a failed world check.
    world_problems: tuple[str, ...] = ()
    #: Why the case was expected to fail (``xfail=``, or a pytest xfail mark), or "".
    xfail: str = ""
    #: Whether an expected failure that passes fails the run (pytest's ``xfail_strict``).
    xfail_strict: bool = False
    #: The HTML timeline of the run's history, written when a recorded case failed.
    timeline: str = ""
    #: Why the hosts cannot run the case at all (a fault between them needs a tool, a
    #: privilege or a kernel feature they lack, e.g. netem): the case is skipped, naming it.
    cannot_run: str = ""

    @property
    def outcome(self) -> str:
        """``pass``, ``FAIL``, ``ERROR``, ``skip`` (a store not ours lacks an operation the
        case needs, or the hosts lack what a fault needs: :attr:`unsupported`), or for an
        expected failure ``xfail`` / ``XPASS``."""
        if self.cannot_run:  # the case never ran: an xfail= for it says nothing
            return "skip"
        if self.xfail:
            return "XPASS" if self.passed else "xfail"
        if not self.passed and not self.error and self.unsupported:
            return "skip"
        return "pass" if self.passed else ("ERROR" if self.error else "FAIL")

    @property
    def ok(self) -> bool:
        """Whether this result lets the run succeed: it passed, or failed as expected (xfail);
        an expected failure that passes fails the run when :attr:`xfail_strict` is set."""
        if self.xfail and not self.cannot_run:
            return not (self.passed and self.xfail_strict)
        return self.passed or self.outcome == "skip"

    @property
    def unsupported(self) -> str:
        """Why the store cannot run this case at all, or "": a failed case in which a rank hit
        :class:`UnsupportedOperation` (torch's v2 EtcdStore has no ``compare_set``, say).  Only for
        stores not ours (torch's, a user's, a remote one): ours claim the whole contract."""
        if self.cannot_run:
            return self.cannot_run
        if self.passed or self.world is None:
            return ""
        if targets.get(self.case.target).spec.whole_contract:
            return ""  # our stores keep the whole contract: a gap there is a failure
        for rank in self.world:
            if isinstance(rank.exception, UnsupportedOperation):
                return f"rank {rank.rank}: {rank.exception}"
        return ""

    def replay(self, nodeid: str | None = None) -> str:
        """The command that runs exactly this case again, faults and seed included.

        ``nodeid`` (under pytest, the item's node id) makes it a pytest command.
        """
        return _report.replay_command(self, nodeid)

    def report(self, nodeid: str | None = None) -> str:
        """Every rank's fate against its expectation, the faults applied, and how to replay."""
        return _report.render(self, nodeid)

    def logs(self) -> dict[int, str]:
        """The tail of each rank's log (for failure reports)."""
        if self.world is None:
            return {}
        return {r.rank: r.log for r in self.world if r.log.strip()}


def run_case(
    case: Case,
    seed: int | None = None,
    tmp_root: str | None = None,
    start_method: str = "fork",
    time_scale: float = 1.0,
    log_dir: str | None = None,
    xfail_strict: bool = False,
    history: bool = False,
    hosts: HostSession | None = None,
) -> CaseResult:
    """Run ``case`` in a temporary directory of its own (under ``tmp_root``) and judge it.

    ``history`` (or the scenario's own ``history=True``) records every store operation and
    holds the run to :func:`~.history.linearizable`; when such a case fails and ``log_dir`` is
    given, the history's HTML timeline is written beside the rank logs.

    ``time_scale`` multiplies the scenario's time limits (a slow machine).  Rank logs live in
    the temporary directory, or with ``log_dir`` in a directory of the case's own under it
    (:func:`~storeharness.harness.report.case_log_dir`), where they stay.

    ``hosts``: run the ranks on these hosts (the scenario's ``hosts=N`` first ones, all when it
    does not say), the store's server on the first with the ``store`` role.
    """
    sc: Scenario = case.scenario
    seed = default_seed(case) if seed is None else seed
    start = time.monotonic()
    time_limit = sc.time_limit * time_scale
    rank_budget = None if sc.rank_budget is None else sc.rank_budget * time_scale
    # Every store operation's timeout reaches the ranks one way: the store they open.
    op_timeout = time_limit if sc.op_timeout is None else sc.op_timeout * time_scale
    with tempfile.TemporaryDirectory(prefix="storeharness-", dir=tmp_root) as tmp:
        workdir, logs = Path(tmp, "store"), Path(tmp, "logs")
        if log_dir is not None:  # kept: a fresh directory for this case (ranks append)
            logs = _report.case_log_dir(log_dir, case)
            shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
        try:
            target = targets.get(case.target)
            spread: dict[str, Any] = {}
            if hosts is not None:
                used = _hosts_for(sc, hosts)
                why = hosts.cannot_apply(sc.faults, used)
                if why is not None:  # these hosts lack a tool or kernel feature: a skip
                    return CaseResult(case, False, seed, time.monotonic() - start,
                                      cannot_run=why)  # fmt: skip
                store_host = next((h for h in used if "store" in h.roles), used[0])
                endpoint = target.start_on(hosts.agent(store_host), workdir, timeout=op_timeout)
                port = getattr(endpoint, "port", 0)
                spread = {"hosts": used, "placement": sc.placement, "connect": hosts.agent,
                          "store_ports": [port] if port else []}  # fmt: skip
            else:
                endpoint = target.start(workdir, timeout=op_timeout, proxy=sc.uses_network)
            with endpoint:
                world = run_world(
                    sc.fn,
                    case.world_size,
                    endpoint.opener(),
                    case.workers,
                    time_limit,
                    fixed=not sc.nonfixed,
                    faults=sc.faults,
                    seed=seed,
                    rank_budget=rank_budget,
                    tags=sc.tags,
                    controls=endpoint,
                    log_dir=str(logs),
                    start_method=start_method,
                    history=history or sc.history,
                    **spread,
                )
        except Exception as exc:
            spent = time.monotonic() - start
            error = f"{type(exc).__name__}: {exc}"
            return CaseResult(
                case, False, seed, spent, error=error,
                xfail=case.xfail or marked_xfail(sc.marks) or "", xfail_strict=xfail_strict,
            )  # fmt: skip
        result = judge(case, seed, time.monotonic() - start, world, xfail_strict)
        if world.history is not None and not result.passed and log_dir is not None:
            page = write_timeline(world.history, logs / TIMELINE, title=case.nodeid)
            result = dataclasses.replace(result, timeline=str(page))
    return result


def _hosts_for(sc: Scenario, session: HostSession) -> list[Host]:
    """The hosts a case of ``sc`` runs on: its ``hosts=N`` first ones, or all of them."""
    hosts = session.hosts()
    if sc.hosts is not None and sc.hosts > len(hosts):
        raise ValueError(
            f"{sc.name} spans hosts={sc.hosts} but --hosts {session.spec} gives {len(hosts)}"
        )
    return hosts[: sc.hosts or len(hosts)]


def judge(
    case: Case, seed: int, elapsed: float, world: WorldResult, xfail_strict: bool = False
) -> CaseResult:
    """Hold ``world`` to ``case``'s scenario: each rank, every fault fired, the world checks."""
    sc = case.scenario
    tags = dict(world.tags)
    expected = {r.rank: sc.expectation(r.rank, case.world_size, world.plan, tags) for r in world}
    problems = {}
    for rank in world:
        problem = expected[rank.rank].problem(rank)
        if problem is not None:
            problems[rank.rank] = problem
    checks = sc.checks
    if world.history is not None and not wants_history(checks):
        checks = (*checks, linearizable())  # a recorded run is held to its history
    world_problems = (*world.unfired(), *run_checks(checks, world))
    passed = not problems and not world_problems
    xfail = case.xfail or marked_xfail(sc.marks) or ""
    return CaseResult(
        case, passed, seed, elapsed, world, expected, problems,
        world_problems=world_problems, xfail=xfail, xfail_strict=xfail_strict,
    )  # fmt: skip


def marked_xfail(marks: Iterable[Any]) -> str | None:
    """The reason of an unconditional (or true-conditioned) pytest ``xfail`` mark, if any."""
    for mark in marks:
        if getattr(mark, "name", None) != "xfail":
            continue
        condition = mark.args[0] if mark.args else mark.kwargs.get("condition", True)
        if condition is True or (isinstance(condition, bool | int) and condition):
            return str(mark.kwargs.get("reason") or "marked xfail")
    return None


def marked_skip(marks: Iterable[Any]) -> str | None:
    """The reason of a pytest ``skip`` (or true ``skipif``) mark, if any (for the CLI)."""
    for mark in marks:
        name = getattr(mark, "name", None)
        if name == "skip":
            return str(mark.kwargs.get("reason") or (mark.args[0] if mark.args else "skipped"))
        if name == "skipif":
            condition = mark.args[0] if mark.args else mark.kwargs.get("condition", False)
            if condition is True or (isinstance(condition, bool | int) and condition):
                return str(mark.kwargs.get("reason") or "skipped")
    return None


# ------------------------------------------------------------------------------ loading


def scenarios_in(module: ModuleType) -> list[Scenario]:
    """The scenarios a module defines, in definition order."""
    return [obj for obj in vars(module).values() if isinstance(obj, Scenario)]


def load_package(name: str) -> list[Scenario]:
    """The scenarios of every public module of package ``name`` (the bundled library, say)."""
    package = importlib.import_module(name)
    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            found += scenarios_in(importlib.import_module(f"{name}.{info.name}"))
    return found


def package_dir(name: str) -> Path | None:
    """Where package ``name`` lives (resolved), without importing it; ``None`` if absent."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def load_scenarios(paths: Sequence[str], library: str | None = None) -> list[Scenario]:
    """Scenarios from files, and from the ``scenario_*.py`` files of directories (sorted).

    A file is imported as pytest's prepend import mode imports a test module: its package
    root (the first directory up without ``__init__.py``) goes first on ``sys.path``, so it
    imports the modules beside it.  A directory that is package ``library`` (the bundled
    library), or a file in it, loads as that package.  Raises ``FileNotFoundError`` for a path
    that does not exist, ``ImportError`` when another file of the same module name was imported
    already, and whatever a scenario file raises on import (a bad definition raises
    :class:`~storeharness.harness.scenario.ScenarioError`).
    """
    home = package_dir(library) if library else None
    found = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"no such scenario file or directory: {raw}")
        if library and home is not None and path.resolve() in (home, *home.glob("*.py")):
            if path.is_dir():
                found += load_package(library)
            elif not path.name.startswith("_"):
                found += scenarios_in(importlib.import_module(f"{library}.{path.stem}"))
            continue
        files = sorted(path.rglob("scenario_*.py")) if path.is_dir() else [path]
        for file in files:
            found += scenarios_in(_import_file(file.resolve()))
    return found


def _import_file(path: Path) -> ModuleType:
    """Import a file as pytest's ``prepend`` import mode does (see :func:`load_scenarios`)."""
    root = path.parent
    while (root / "__init__.py").exists():
        root = root.parent
    parts = path.relative_to(root).with_suffix("").parts
    if not all(p.isidentifier() for p in parts):
        return _import_unnamed(path)  # no module name reaches it; pytest would refuse it
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module(".".join(parts))
    where = Path(module.__file__ or "").resolve()
    if where != path:
        raise ImportError(
            f"import file mismatch: {path} would be module {module.__name__!r}, which was "
            f"imported from {where}; rename one of them (or make its directory a package)"
        )
    return module


def _import_unnamed(path: Path) -> ModuleType:
    name = f"storeharness_scenarios.{path.stem}_{zlib.crc32(str(path).encode()):08x}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import scenario file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def keyword_match(expr: str, text: str) -> bool:
    """pytest's ``-k``: words match as case-insensitive substrings, with and/or/not/parentheses.

    Raises ``ValueError`` for a malformed expression (see :mod:`._keyword`).
    """
    return compile_keyword(expr)(text)


def select(cases: Iterable[Case], keyword: str | None) -> list[Case]:
    """The cases whose ids (``scenario[store-workers-size]``) match ``keyword``.

    The expression is checked even when there is no case: raises ``ValueError`` if malformed.
    """
    if keyword is None:
        return list(cases)
    matches = compile_keyword(keyword)
    return [c for c in cases if matches(c.nodeid)]

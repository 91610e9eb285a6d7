"""The pytest plugin (entry point ``pytest11``): hooks and fixtures only; the work is in harness.

- Scenarios are collected as ordinary items: from files named ``scenario_*.py``, the bundled
  library's files, and any test module that defines one; no other file is imported.  Each
  scenario becomes one item per store x worker kind x world size, in a fixed order (identical
  on every xdist worker).
- ``--store NAME`` (repeatable) picks the stores; the default is our own (hash, file, tcp,
  prefix); torch's (torch-tcp, torch-file, torch-hash) run when asked for and torch is installed.
- Fixtures: ``store_target`` (the store's name; tests using it are parametrized over the
  stores), ``store_endpoint``, ``store`` (a handle, closed afterwards) and ``world`` (runs a
  function on N ranks against the store).  Markers: ``stores(*names)``, ``needs(*capabilities)``,
  ``scenario`` (set on scenario items).
- A failing scenario or world attaches each rank's log to its report.  Every endpoint and rank
  is owned and reaped by the harness, also when pytest-timeout interrupts a test.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import os
from collections.abc import Generator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ..stores import Capability, Store
from . import targets
from ._settings import INI, SettingError, Settings, resolve
from .launch.session import HostSession
from .run import CaseResult, package_dir, run_case
from .scenario import Case, Scenario
from .targets import Endpoint
from .world import RankFn, WorldResult, run_world

_RESULTS = pytest.StashKey[list[WorldResult]]()
_SETTINGS = pytest.StashKey[Settings]()
_HOSTS = pytest.StashKey[HostSession]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("storeharness", "storeharness: stores under test")
    group.addoption(
        "--store",
        action="append",
        dest="storeharness_stores",
        metavar="NAME",
        help=f"store to test against (repeatable): {', '.join(targets.names())}, all, your "
        "own as module.path:factory, or a running server as tcp://HOST:PORT; "
        f"default: {', '.join(targets.DEFAULT)}",
    )
    group.addoption(
        "--harness-seed",
        dest="storeharness_seed",
        default=None,
        help="seed for scenario fault plans (default: a stable seed per case)",
    )
    group.addoption(
        "--time-scale",
        dest="storeharness_time_scale",
        default=None,
        metavar="FACTOR",
        help="multiply every time limit by FACTOR (a slow machine: 2, 3, ...)",
    )
    group.addoption(
        "--history",
        dest="storeharness_history",
        action="store_true",
        default=False,
        help="record every store operation of scenario runs and check the history is linearizable",
    )
    group.addoption(
        "--hosts",
        dest="storeharness_hosts",
        default=None,
        metavar="HOSTS",
        help="run scenario worlds across hosts: netns:N (network namespaces built for the "
        "session; as root, else in a user namespace), local, ssh:h1,h2 or a hosts.toml",
    )
    parser.addini(INI["hosts"], "hosts for scenario worlds (as --hosts)")
    parser.addini(INI["stores"], "stores to test against (as --store)", type="args")
    parser.addini(INI["seed"], "seed for scenario fault plans (as --harness-seed)")
    parser.addini(INI["time_scale"], "multiply every time limit (as --time-scale)")


def _resolve(config: pytest.Config, marker: dict[str, object] | None = None) -> Settings:
    cli = {
        "stores": ("--store", config.getoption("storeharness_stores")),
        "seed": ("--harness-seed", config.getoption("storeharness_seed")),
        "time_scale": ("--time-scale", config.getoption("storeharness_time_scale")),
        "hosts": ("--hosts", config.getoption("storeharness_hosts")),
    }
    where = str(config.inipath or "ini")
    ini = {name: (where, config.getini(INI[name])) for name in INI}
    return resolve(marker=marker, cli=cli, ini=ini)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "stores(*names): run this test only against these stores (see --store)"
    )
    config.addinivalue_line(
        "markers",
        "needs(*capabilities): only stores with these storeharness.stores.Capability values",
    )
    config.addinivalue_line(
        "markers", "storeharness(time_scale=None, seed=None): settings for this test"
    )
    config.addinivalue_line("markers", "scenario: a storeharness scenario case")
    config.addinivalue_line(
        "markers", "slow: a long scenario, skipped unless selected with -m slow (or -m '...slow')"
    )
    try:
        settings = _resolve(config)
        stores, _ = targets.expand(settings.stores or ())
    except (SettingError, ValueError) as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_SETTINGS] = Settings(
        tuple(stores), settings.seed, settings.time_scale, settings.hosts
    )
    if settings.hosts is not None:  # built on first use: an xdist controller never builds
        config.stash[_HOSTS] = HostSession(settings.hosts)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_HOSTS, None)
    if session is not None:
        session.close()  # agents, and the namespaces it built


def _settings(config: pytest.Config, node: pytest.Item | None = None) -> Settings:
    settings = config.stash[_SETTINGS]
    marker = node.get_closest_marker("storeharness") if node is not None else None
    if marker is None:
        return settings
    if marker.args:
        raise pytest.UsageError(
            f"{node.nodeid if node else ''}: @pytest.mark.storeharness takes keyword "
            "arguments only (time_scale=..., seed=...)"
        )
    try:
        found = _resolve(config, dict(marker.kwargs))
    except SettingError as exc:
        raise pytest.UsageError(str(exc)) from None
    return Settings(settings.stores, found.seed, found.time_scale, settings.hosts)


def _stores(config: pytest.Config) -> list[str]:
    return list(config.stash[_SETTINGS].stores or targets.DEFAULT)


# ------------------------------------------------------------------------- collection


#: The bundled scenario library, by package name (collected as data, never imported here).
LIBRARY = f"{(__package__ or '').rpartition('.')[0]}.scenarios"


@functools.cache
def _bundled_library() -> Path | None:
    return package_dir(LIBRARY)


def _python_collects(file_path: Path, parent: pytest.Collector) -> bool:
    """Whether pytest's own python plugin makes a module of this file (then we must not)."""
    if parent.session.isinitpath(file_path):
        return True
    patterns = parent.config.getini("python_files")
    return any(fnmatch.fnmatch(file_path.name, pattern) for pattern in patterns)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Scenario files: ``scenario_*.py`` and the bundled library; nothing else is imported.

    Test modules (and any file named on the command line) are pytest's own; scenarios they
    define become items through :func:`pytest_pycollect_makeitem`.
    """
    if file_path.suffix != ".py" or file_path.name.startswith("_"):
        return None
    if _python_collects(file_path, parent):
        return None
    if file_path.name.startswith("scenario_") or file_path.resolve().parent == _bundled_library():
        module: pytest.Module = parent.ihook.pytest_pycollect_makemodule(
            module_path=file_path, parent=parent
        )
        return module
    return None


class LibraryModule(pytest.Module):
    """A file of the bundled library, imported under its one name (storeharness.scenarios.*)."""

    def _getobj(self) -> ModuleType:
        return importlib.import_module(
            f"{__package__.rpartition('.')[0]}.scenarios.{self.path.stem}"
        )


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(
    module_path: Path, parent: pytest.Collector
) -> pytest.Module | None:
    if module_path.resolve().parent == _bundled_library() and module_path.name != "__init__.py":
        return LibraryModule.from_parent(parent, path=module_path)
    return None


def pytest_pycollect_makeitem(
    collector: pytest.Collector, name: str, obj: object
) -> list[pytest.Item] | None:
    """A scenario becomes one item per store x worker kind x world size: ``name[tcp-process-8]``.

    A selected store that cannot take it gets one skipped item, ``name[store]``, whose reason
    says why (the capability it lacks, say): nothing is left out silently.
    """
    if not isinstance(obj, Scenario) or name.startswith("_"):
        return None  # a private scenario is a test's own material, not an item
    stores = _stores(collector.config)
    spanning = collector.config.stash[_SETTINGS].hosts is not None
    cases = obj.cases(stores, spanning=spanning)
    items: list[pytest.Item] = [
        ScenarioItem.from_parent(collector, name=f"{name}[{c.id}]", case=c, why="") for c in cases
    ]
    covered = {c.target for c in cases}
    for store in (s for s in stores if s not in covered):
        why = f"{obj.name} cannot run on {store}: {obj.why_no_case(store, spanning)}"
        items.append(ScenarioItem.from_parent(collector, name=f"{name}[{store}]", case=None,
                                              why=why))  # fmt: skip
    return items


class ScenarioFailed(Exception):
    def __init__(self, result: CaseResult) -> None:
        super().__init__(result.report())
        self.result = result


class ScenarioItem(pytest.Item):
    """One scenario case; it fails with the scenario's report when a rank misbehaves."""

    def __init__(self, *, case: Case | None, why: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.why = why
        self.add_marker("scenario")
        if self.config.stash[_SETTINGS].hosts is not None:
            self.add_marker("multihost")  # so -m multihost --hosts ... selects scenarios too
        if case is not None:
            # pytest marks written above or below @scenario, and xfail= for this store
            for mark in case.scenario.marks:
                self.add_marker(getattr(pytest.mark, mark.name)(*mark.args, **mark.kwargs))
            if case.xfail is not None:
                self.add_marker(pytest.mark.xfail(reason=case.xfail))
            if case.scenario.slow:
                self.add_marker("slow")
                if "slow" not in (self.config.getoption("markexpr", "") or ""):
                    self.add_marker(pytest.mark.skip(
                        reason="slow scenario: select it with -m slow (storeharness run --slow)"
                    ))  # fmt: skip

    def runtest(self) -> None:
        if self.case is None:
            pytest.skip(self.why)
        settings = _settings(self.config, self)
        hosts = self.config.stash.get(_HOSTS, None)
        if hosts is not None and hosts.unavailable:
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):  # CI must not skip them
                pytest.fail(f"CI asked for --hosts, but: {hosts.unavailable}")
            pytest.skip(hosts.unavailable)
        result = run_case(
            self.case,
            seed=settings.seed,
            time_scale=settings.time_scale,
            history=bool(self.config.getoption("storeharness_history")),
            hosts=hosts,
        )
        if result.cannot_run:  # the hosts lack a tool or kernel feature a fault needs
            pytest.skip(result.cannot_run)
        if result.unsupported:  # a gap of the store's, reported as such (not as a crash)
            pytest.skip(f"unsupported by store {self.case.target}: {result.unsupported}")
        if not result.passed:
            for rank, log in result.logs().items():
                self.add_report_section("call", f"rank {rank} log", log)
            raise ScenarioFailed(result)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, ScenarioFailed):  # its replay hint: this node id
            return excinfo.value.result.report(nodeid=self.nodeid)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        code = getattr(self.case.scenario.fn if self.case else None, "__code__", None)
        return self.path, (code.co_firstlineno - 1) if code else None, self.name


# -------------------------------------------------------------------------- fixtures


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_target" not in metafunc.fixturenames:
        return
    names = _stores(metafunc.config)
    marker = metafunc.definition.get_closest_marker("stores")
    if marker is not None:
        names = [n for n in names if n in marker.args]
    need = metafunc.definition.get_closest_marker("needs")
    caps = frozenset(Capability(c) for c in need.args) if need is not None else frozenset()
    params = []
    for name in names:  # a store lacking what the test needs is skipped, saying what it lacks
        lacking = ", ".join(sorted(targets.get(name).spec.lacks(caps)))
        marks = [pytest.mark.skip(reason=f"{name} lacks {lacking}")] if lacking else []
        params.append(pytest.param(name, marks=marks, id=name))
    metafunc.parametrize("store_target", params)


@pytest.fixture
def store_endpoint(
    request: pytest.FixtureRequest, store_target: str, tmp_path: Path
) -> Iterator[Endpoint]:
    """The live store of the current ``store_target``, in this test's temporary directory."""
    scale = _settings(request.config, request.node).time_scale
    with targets.get(store_target).start(tmp_path / "store", timeout=30 * scale) as endpoint:
        yield endpoint


@pytest.fixture
def store(store_endpoint: Endpoint) -> Iterator[Store]:
    """A handle on the store under test (its own namespace), closed after the test."""
    handle = store_endpoint.opener()()
    try:
        yield handle
    finally:
        handle.close()


#: A world's time limit when the test gives none (run_world's own default), before scaling.
_WORLD_TIME_LIMIT = 60.0
#: The options of :func:`run_world` that are durations, scaled by the time_scale setting.
_TIME_LIMITS = ("time_limit", "rank_budget", "op_timeout")


class WorldRunner:
    """``world(fn, world_size, workers="process", check=True, **run_world_options)``."""

    def __init__(
        self, endpoint: Endpoint, log_root: Path, results: list[WorldResult], settings: Settings
    ) -> None:
        self.endpoint = endpoint
        self.log_root = log_root
        self.results = results
        self.settings = settings

    def __call__(
        self,
        fn: RankFn,
        world_size: int,
        workers: str = "process",
        *,
        check: bool = True,
        **options: Any,
    ) -> WorldResult:
        """Run ``fn`` on ``world_size`` ranks; raise :class:`WorldFailed` unless every rank
        returned (``check=False`` returns the result as it is, for tests that expect failures).
        """
        spec = self.endpoint.spec
        if workers not in spec.workers:
            pytest.skip(f"store {spec.name} cannot be shared by {workers} ranks")
        logs = self.log_root / f"world-{len(self.results)}"
        logs.mkdir(parents=True)
        options.setdefault("controls", self.endpoint)
        if self.settings.seed is not None:
            options.setdefault("seed", self.settings.seed)
        options.setdefault("time_limit", _WORLD_TIME_LIMIT)
        for limit in _TIME_LIMITS:
            if options.get(limit) is not None:
                options[limit] = options[limit] * self.settings.time_scale
        result = run_world(
            fn, world_size, self.endpoint.opener(), workers, log_dir=str(logs), **options
        )
        self.results.append(result)
        return result.check() if check else result


@pytest.fixture
def world(request: pytest.FixtureRequest, store_endpoint: Endpoint, tmp_path: Path) -> WorldRunner:
    """Run a function on N ranks (processes or threads) against the store under test."""
    results: list[WorldResult] = []
    request.node.stash[_RESULTS] = results
    settings = _settings(request.config, request.node)
    return WorldRunner(store_endpoint, tmp_path / "worlds", results, settings)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        worlds: list[WorldResult] = item.stash.get(_RESULTS, [])
        for i, world in enumerate(worlds):
            for rank in world:
                if rank.log.strip():
                    report.sections.append((f"world {i} rank {rank.rank} log", rank.log))
                if rank.where:
                    report.sections.append((f"world {i} rank {rank.rank} stuck in", rank.where))

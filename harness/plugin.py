"""The pytest plugin (entry point ``pytest11``): hooks and fixtures only; the work is in harness.

- Scenarios are collected as ordinary items: from files named ``scenario_*.py``, files in a
  directory named ``scenarios``, and any test module that defines one.  Each scenario becomes
  one item per store x worker kind x world size, in a fixed order (identical on every xdist
  worker).
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

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..stores import Capability, Store
from .run import CaseResult, run_case
from .scenario import Case, Scenario
from .targets import DEFAULT_TARGETS, TARGETS, Endpoint, torch_missing
from .world import RankFn, WorldResult, run_world

_RESULTS = pytest.StashKey[list[WorldResult]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("storeharness", "storeharness: stores under test")
    group.addoption(
        "--store",
        action="append",
        dest="storeharness_stores",
        choices=list(TARGETS),
        metavar="NAME",
        help=f"store to test against (repeatable): {', '.join(TARGETS)}; "
        f"default: {', '.join(DEFAULT_TARGETS)}",
    )
    group.addoption(
        "--harness-seed",
        type=int,
        default=None,
        help="seed for scenario fault plans (default: a stable seed per case)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "stores(*names): run this test only against these stores (see --store)"
    )
    config.addinivalue_line(
        "markers", "needs(*capabilities): only stores with these stores.Capability values"
    )
    config.addinivalue_line("markers", "scenario: a storeharness scenario case")
    stores = config.getoption("storeharness_stores") or []
    torch_asked = [s for s in stores if TARGETS[s].torch]
    if torch_asked and (why := torch_missing()):
        raise pytest.UsageError(f"--store {' '.join(torch_asked)}: {why}")


def _stores(config: pytest.Config) -> list[str]:
    return list(config.getoption("storeharness_stores") or DEFAULT_TARGETS)


# ------------------------------------------------------------------------- collection


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    name = file_path.name
    if file_path.suffix != ".py" or name.startswith(("_", "test_")) or name.endswith("_test.py"):
        return None  # test modules are pytest's own; their scenarios come through makeitem
    if name.startswith("scenario_") or file_path.parent.name == "scenarios":
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_pycollect_makeitem(
    collector: pytest.Collector, name: str, obj: object
) -> list[pytest.Item] | None:
    """A scenario becomes one item per store x worker kind x world size: ``name[tcp-process-8]``."""
    if not isinstance(obj, Scenario) or name.startswith("_"):
        return None  # a private scenario is a test's own material, not an item
    stores = _stores(collector.config)
    cases = obj.cases(stores)
    if not cases:
        why = "; ".join(f"{s}: {obj.why_not(TARGETS[s]) or 'no worker kind fits'}" for s in stores)
        return [ScenarioItem.from_parent(collector, name=name, case=None, why=why)]
    return [
        ScenarioItem.from_parent(collector, name=f"{name}[{c.id}]", case=c, why="") for c in cases
    ]


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

    def runtest(self) -> None:
        if self.case is None:
            pytest.skip(f"no selected store can run this scenario ({self.why})")
        result = run_case(self.case, seed=self.config.getoption("harness_seed"))
        if not result.passed:
            for rank, log in result.logs().items():
                self.add_report_section("call", f"rank {rank} log", log)
            raise ScenarioFailed(result)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, ScenarioFailed):
            return str(excinfo.value)
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
    if need is not None:
        caps = frozenset(Capability(c) for c in need.args)
        names = [n for n in names if not TARGETS[n].lacks(caps)]
    metafunc.parametrize("store_target", names, ids=names)


@pytest.fixture
def store_endpoint(store_target: str, tmp_path: Path) -> Iterator[Endpoint]:
    """The live store of the current ``store_target``, in this test's temporary directory."""
    with Endpoint(store_target, str(tmp_path), timeout=30) as endpoint:
        yield endpoint


@pytest.fixture
def store(store_endpoint: Endpoint) -> Iterator[Store]:
    """A handle on the store under test (its own namespace), closed after the test."""
    handle = store_endpoint.opener()()
    try:
        yield handle
    finally:
        handle.close()


class WorldRunner:
    """``world(fn, world_size, workers="process", **run_world_options)`` → :class:`WorldResult`."""

    def __init__(self, endpoint: Endpoint, log_root: Path, results: list[WorldResult]) -> None:
        self.endpoint = endpoint
        self.log_root = log_root
        self.results = results

    def __call__(
        self, fn: RankFn, world_size: int, workers: str = "process", **options: Any
    ) -> WorldResult:
        spec = self.endpoint.spec
        if workers not in spec.workers:
            pytest.skip(f"store {spec.name} cannot be shared by {workers} ranks")
        logs = self.log_root / f"world-{len(self.results)}"
        logs.mkdir()
        options.setdefault("controls", self.endpoint)
        result = run_world(
            fn, world_size, self.endpoint.opener(), workers, log_dir=str(logs), **options
        )
        self.results.append(result)
        return result


@pytest.fixture
def world(request: pytest.FixtureRequest, store_endpoint: Endpoint, tmp_path: Path) -> WorldRunner:
    """Run a function on N ranks (processes or threads) against the store under test."""
    results: list[WorldResult] = []
    request.node.stash[_RESULTS] = results
    return WorldRunner(store_endpoint, tmp_path, results)


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

"""Runs scenarios against stores: worlds of ranks, faults at named points, reports.

Write a scenario::

    from storeharness import scenario, Signal, after, returns

    @scenario(world_size=8, faults=[Signal(SIGINT, 3, after(3, "waiting"), blocked=True)])
    def my_scenario(ctx): ...

and run it with ``pytest`` (the plugin collects it) or ``storeharness run FILE``.
"""

from . import targets
from ._messages import Event, EventKind
from .context import RankContext, RankStopped
from .faults import (
    ANY,
    AnyRank,
    Blackhole,
    Delay,
    Drop,
    Heal,
    KillServer,
    Late,
    Missing,
    Point,
    RestartServer,
    Signal,
    after,
)
from .run import CaseResult, load_scenarios, run_case
from .scenario import (
    Case,
    NonFixed,
    Scenario,
    ScenarioError,
    killed,
    never_starts,
    raises,
    returns,
    scenario,
    times_out,
)
from .targets import Endpoint, Target, TargetSpec
from .world import Fate, RankFn, RankResult, WorldResult, run_world

__all__ = [
    "ANY",
    "AnyRank",
    "Blackhole",
    "Case",
    "CaseResult",
    "Delay",
    "Drop",
    "Endpoint",
    "Event",
    "EventKind",
    "Fate",
    "Heal",
    "KillServer",
    "Late",
    "Missing",
    "NonFixed",
    "Point",
    "RankContext",
    "RankFn",
    "RankResult",
    "RankStopped",
    "RestartServer",
    "Scenario",
    "ScenarioError",
    "Signal",
    "Target",
    "TargetSpec",
    "WorldResult",
    "after",
    "killed",
    "load_scenarios",
    "never_starts",
    "raises",
    "returns",
    "run_case",
    "run_world",
    "scenario",
    "targets",
    "times_out",
]

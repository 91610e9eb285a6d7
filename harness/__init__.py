"""Runs scenarios against stores: worlds of ranks, faults at named points, reports.

Write a scenario::

    from storeharness import scenario, Signal, after, returns

    @scenario(world_size=8, faults=[Signal(SIGINT, 3, after(3, "waiting"), blocked=True)])
    def my_scenario(ctx): ...

and run it with ``pytest`` (the plugin collects it) or ``storeharness run FILE``.
"""

from . import targets
from ._messages import Event, EventKind
from ._results import WorldFailed
from .context import RankContext, RankStopped
from .expect import all_agree, exactly_one, killed, never_starts, raises, returns, times_out
from .faults import (
    ANY,
    AnyRank,
    Blackhole,
    Delay,
    Drop,
    Heal,
    HealNetwork,
    Isolate,
    KillHost,
    KillServer,
    Late,
    Latency,
    Loss,
    Missing,
    Partition,
    PauseHost,
    Point,
    Rate,
    RestartServer,
    ResumeHost,
    Signal,
    Trigger,
    after,
)
from .history import linearizable
from .run import CaseResult, load_scenarios, run_case
from .scenario import Case, NonFixed, Scenario, ScenarioError, scenario
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
    "HealNetwork",
    "Isolate",
    "KillHost",
    "KillServer",
    "Late",
    "Latency",
    "Loss",
    "Missing",
    "NonFixed",
    "Partition",
    "PauseHost",
    "Point",
    "RankContext",
    "RankFn",
    "RankResult",
    "RankStopped",
    "Rate",
    "RestartServer",
    "ResumeHost",
    "Scenario",
    "ScenarioError",
    "Signal",
    "Target",
    "TargetSpec",
    "Trigger",
    "WorldFailed",
    "WorldResult",
    "after",
    "all_agree",
    "exactly_one",
    "killed",
    "linearizable",
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

"""storeharness: prove that a rendezvous store works under concurrency, faults and signals.

One import namespace for everything installed (a wheel that installed top-level ``stores`` or
``harness`` packages would shadow, or be shadowed by, a user's own)::

    storeharness.stores      the store family (Store, HashStore, FileStore, PrefixStore, TCPStore)
    storeharness.harness     worlds, faults, scenarios, targets, the CLI and the pytest plugin
    storeharness.scenarios   the bundled scenario library (data)

The names most code needs are re-exported here::

    from storeharness import scenario, Signal, after, returns, TCPStore, StoreTimeout

They are imported on first use, so ``import storeharness.stores`` (a store server, a rank)
does not pay for the harness, and the harness does not pay for what it does not touch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_WHERE = {
    **dict.fromkeys(
        ("Capability", "Store"), "stores._base"),
    **dict.fromkeys(
        ("DistError", "DistNetworkError", "DistStoreError", "QueueEmpty", "QueueEmptyError",
         "StoreBindError", "StoreBroken", "StoreClosed", "StoreCorrupt", "StoreError",
         "StoreTimeout", "StoreValueError", "UnsupportedOperation"), "stores._errors"),
    "EtcdStore": "stores.etcd",
    "FileStore": "stores.file",
    "HashStore": "stores.hash",
    "PrefixStore": "stores.prefix",
    "TCPStore": "stores.tcp.store",
    **dict.fromkeys(("RankContext", "RankStopped"), "harness.context"),
    **dict.fromkeys(
        ("ANY", "AnyRank", "Blackhole", "Delay", "Drop", "Heal", "KillServer", "Late", "Missing",
         "Point", "RestartServer", "Signal", "after", "HealNetwork", "Isolate", "KillHost",
         "Latency", "Loss", "Partition", "PauseHost", "Rate", "ResumeHost"), "harness.faults"),
    **dict.fromkeys(("NonFixed", "Scenario", "ScenarioError", "scenario"), "harness.scenario"),
    **dict.fromkeys(
        ("WorldFailed",), "harness._results"),
    **dict.fromkeys(
        ("all_agree", "exactly_one", "killed", "never_starts", "raises", "returns",
         "times_out"), "harness.expect"),
    **dict.fromkeys(("CaseResult", "run_case"), "harness.run"),
    "linearizable": "harness.history",
    **dict.fromkeys(("Fate", "RankResult", "WorldResult", "run_world"), "harness.world"),
}  # fmt: skip

__all__ = [
    "ANY",
    "AnyRank",
    "Blackhole",
    "Capability",
    "CaseResult",
    "Delay",
    "DistError",
    "DistNetworkError",
    "DistStoreError",
    "Drop",
    "EtcdStore",
    "Fate",
    "FileStore",
    "HashStore",
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
    "PrefixStore",
    "QueueEmpty",
    "QueueEmptyError",
    "RankContext",
    "RankResult",
    "RankStopped",
    "Rate",
    "RestartServer",
    "ResumeHost",
    "Scenario",
    "ScenarioError",
    "Signal",
    "Store",
    "StoreBindError",
    "StoreBroken",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreTimeout",
    "StoreValueError",
    "TCPStore",
    "UnsupportedOperation",
    "WorldFailed",
    "WorldResult",
    "__version__",
    "after",
    "all_agree",
    "exactly_one",
    "killed",
    "linearizable",
    "never_starts",
    "raises",
    "returns",
    "run_case",
    "run_world",
    "scenario",
    "times_out",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'storeharness' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value  # once imported, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


if TYPE_CHECKING:
    from .harness.context import RankContext, RankStopped
    from .harness.faults import (
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
        after,
    )
    from .harness.run import CaseResult, run_case
    from .harness.scenario import (
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
    from .harness.world import Fate, RankResult, WorldResult, run_world
    from .stores._base import Capability, Store
    from .stores._errors import (
        DistError,
        DistNetworkError,
        DistStoreError,
        QueueEmpty,
        QueueEmptyError,
        StoreBindError,
        StoreBroken,
        StoreClosed,
        StoreCorrupt,
        StoreError,
        StoreTimeout,
        StoreValueError,
        UnsupportedOperation,
    )
    from .stores.etcd import EtcdStore
    from .stores.file import FileStore
    from .stores.hash import HashStore
    from .stores.prefix import PrefixStore
    from .stores.tcp.store import TCPStore

"""The reusable conformance suite: run the whole Store contract against any backend.

No pytest needed::

    from storeharness.stores.conformance import Backend, check_store
    for outcome in check_store(Backend("mine", make=MyStore)):
        print(outcome)

``Backend.opener`` and ``Backend.parties`` let a runner put the parties of multi-party cases in
separate processes (the test suite does so for FileStore).  A case needing a capability the
store does not declare is reported as skipped with that reason, never silently passed.  The
first case, ``core_operations``, names every core method the store does not implement (a
``Store`` subclass may define only some, as torch's may).
``check_store(backend, cases=TORCH_CASES)`` runs torch's own ``test_store.py`` cases instead, as
torch asserts them (``docs/scenarios.md`` maps each).
"""

from . import _cases as _cases  # registers the cases
from . import _torch_suite as _torch_suite  # registers torch's own tests
from ._core import (
    CASES,
    TORCH_CASES,
    Backend,
    Case,
    CaseSkipped,
    ConformanceFailure,
    Context,
    Outcome,
    Parties,
    check_store,
    thread_parties,
)
from ._model import ReferenceModel

__all__ = [
    "CASES",
    "TORCH_CASES",
    "Backend",
    "Case",
    "CaseSkipped",
    "ConformanceFailure",
    "Context",
    "Outcome",
    "Parties",
    "ReferenceModel",
    "check_store",
    "thread_parties",
]

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
"""

from . import _cases as _cases  # registers the cases
from ._core import (
    CASES,
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

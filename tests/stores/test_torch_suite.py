"""torch's own test_store.py cases (stores.conformance.TORCH_CASES) on every store the harness has.

Every target of the registry, torch's own stores included: a case passing on torch's store is
the evidence that it mirrors torch's test; passing on ours, that ours behaves as torch's does.
A store lacking a capability a case needs is skipped naming it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from storeharness.harness import targets
from storeharness.stores import UnsupportedOperation
from storeharness.stores.conformance import TORCH_CASES, Case, CaseSkipped

#: Every store of the registry (ours, torch's, the interop pairings).
ALL = targets.names()


@pytest.mark.parametrize("backend_name", ALL)
@pytest.mark.parametrize("case", TORCH_CASES, ids=[c.name for c in TORCH_CASES])
def test_torch_case(case: Case, backend_name: str, tmp_path: Path) -> None:
    target = targets.get(backend_name)
    if why := target.unavailable():
        pytest.skip(why)
    backend = target.backend(tmp_path)
    try:
        case.run(backend)
    except CaseSkipped as skip:
        pytest.skip(skip.reason)
    except UnsupportedOperation as gap:
        if target.spec.whole_contract:
            raise  # ours claim the whole contract
        pytest.skip(f"unsupported by store {backend_name}: {gap}")  # torch's v2 EtcdStore, say


def test_every_case_names_the_torch_test_it_mirrors() -> None:
    for case in TORCH_CASES:  # "TCPStoreTest.test_numkeys_delkeys: ..."
        assert re.match(rf"\w+Test\w*\.test_{case.name}:", case.doc), f"{case.name}: {case.doc!r}"

"""The whole Store contract (stores.conformance) on every bundled backend."""

from __future__ import annotations

import pytest

from stores.conformance import CASES, Case, CaseSkipped

from .backends import NAMES, make_backend


@pytest.mark.parametrize("backend_name", NAMES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_contract(case: Case, backend_name: str, tmp_path: object) -> None:
    backend = make_backend(backend_name, str(tmp_path))
    try:
        case.run(backend)
    except CaseSkipped as skip:
        pytest.skip(skip.reason)

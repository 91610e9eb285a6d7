"""The whole Store contract (stores.conformance) on every bundled backend."""

from __future__ import annotations

import pytest

from storeharness.harness import targets
from storeharness.stores.conformance import CASES, Case, CaseSkipped

from . import etcd_support
from .backends import NAMES, TORCH_NAMES, make_backend, torch_missing


@pytest.mark.parametrize("backend_name", NAMES + TORCH_NAMES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_contract(case: Case, backend_name: str, tmp_path: object) -> None:
    if backend_name in TORCH_NAMES and (why := torch_missing()):
        pytest.skip(why)
    if backend_name == "etcd":  # needs the etcd extra; CI installs it and must not skip
        etcd_support.require(targets.get(backend_name).unavailable())
    backend = make_backend(backend_name, str(tmp_path))
    try:
        case.run(backend)
    except CaseSkipped as skip:
        pytest.skip(skip.reason)

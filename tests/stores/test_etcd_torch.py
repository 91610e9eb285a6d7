"""torch's own v2 EtcdStore (target ``torch-etcd``) against our contract: its gaps are reported.

torch's store implements five operations (set, get, add, wait, check); the others must come out
as :class:`UnsupportedOperation` naming the operation, never as a crash of the harness.  The full
conformance table, with the cases that time out on torch's store, is in docs/differences.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from storeharness.harness import targets
from storeharness.stores.conformance import check_store

from . import etcd_support

WORKS = ["set_get", "add", "concurrent_add", "barrier_exchange"]
UNSUPPORTED = ["compare_set", "delete_key", "num_keys", "append"]


@pytest.fixture
def backend(tmp_path: Path) -> object:
    target = targets.get("torch-etcd")
    etcd_support.require(target.unavailable())
    return target.backend(tmp_path)


def test_torch_v2_store_passes_its_five_operations_and_reports_the_rest(backend: object) -> None:
    outcomes = {o.case: o for o in check_store(backend, WORKS + UNSUPPORTED)}  # type: ignore[arg-type]
    for name in WORKS:
        assert outcomes[name].status == "passed", outcomes[name]
    for name in UNSUPPORTED:
        found = outcomes[name]
        assert found.status == "failed", found
        assert found.detail.startswith("UnsupportedOperation"), found.detail
        assert f"does not support {name}()" in found.detail, found.detail

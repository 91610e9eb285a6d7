"""docs/scenarios.md maps every case of torch's test_store.py, and cannot drift from the code."""

from __future__ import annotations

import re

import pytest

from storeharness.harness.run import load_package
from storeharness.stores.conformance import TORCH_CASES

from .torch_suite_map import ROOT, ROWS, Ref, render

DOC = ROOT / "docs" / "scenarios.md"

#: Issue 12's list of torch's case names, every one of which the table must map.
ISSUE_NAMES = """
set_get_check compare_set simple_wait wait append multi_set multi_get numkeys_delkeys queues
queues_bidirectional queues_nonblocking queues_timeout clone refcount get_underlying_store
underlying_non_prefix_store address_already_in_use multitenancy repr take_over_listen_socket
agent_store multi_worker_with_fixed_world_size multi_worker_with_nonfixed_world_size
store_timeout_on_missing_clients tcp_store_timeout_set tcp_store_timeout_doest_break_client
interrupt_doesnt_break_wait dns_timeout client_connect world_size_0_raises unknown_handler
url_with_node_params with_env_var with_url_param common_errors nominal tcp_store_url_with_libuv
extended_methods_fallbacks has_extended_api_passthrough has_extended_api_roundtrip
append_roundtrip multi_get_roundtrip multi_set_roundtrip optional_methods_fail
init_pg_and_rpc_with_same_file init_pg_and_rpc_with_same_socket
""".split()  # noqa: SIM905 (the issue's text, as written)


def test_the_doc_is_the_rendered_map() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/scenarios.md is out of date: run `python -m tests.torch_suite_map > "
        "docs/scenarios.md`"
    )


def test_every_name_of_the_issue_has_a_row() -> None:
    rows = {r.name for r in ROWS}
    assert [n for n in ISSUE_NAMES if n not in rows] == []
    text = DOC.read_text(encoding="utf-8")
    for name in ISSUE_NAMES:
        assert re.search(rf"^\| `{name}` \|", text, re.M), f"{name} has no row in the doc"
    assert all(r.refs for r in ROWS), [r.name for r in ROWS if not r.refs]


def _exists(ref: Ref) -> bool:
    if ref.kind == "case":
        return any(c.name == ref.name for c in TORCH_CASES)
    if ref.kind == "scenario":
        library = load_package("storeharness.scenarios")
        return any(sc.name == ref.name and sc.file.endswith(ref.path) for sc in library)
    path = ROOT / ref.path
    return path.exists() and f"def {ref.name}(" in path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "ref", [ref for r in ROWS for ref in r.refs], ids=lambda ref: f"{ref.path}::{ref.name}"
)
def test_every_reference_exists(ref: Ref) -> None:
    assert _exists(ref), f"{ref.label()} does not exist"


def test_every_torch_case_and_torch_scenario_is_in_the_map() -> None:
    refs = {(ref.kind, ref.name) for r in ROWS for ref in r.refs}
    assert [c.name for c in TORCH_CASES if ("case", c.name) not in refs] == []
    ours = [
        sc for sc in load_package("storeharness.scenarios") if sc.file.endswith("torch_suite.py")
    ]
    assert ours, "scenarios/torch_suite.py has no scenarios"
    assert [sc.name for sc in ours if ("scenario", sc.name) not in refs] == []
